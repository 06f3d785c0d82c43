//! Events as kube-controller-manager writes them: core/v1 `Event`s naming
//! the object they are about (`kubectl describe` and `kubectl get events`
//! show them), repeated ones folded into one whose `count` rises (client-go's
//! event correlator, without its spam filter).
//!
//! Writes go out on a background task: a controller never waits for, or
//! fails because of, its Events.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tracing::debug;

/// `Normal` or `Warning`, as in an Event's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// How long a repeat is folded into the earlier Event (client-go keeps its
/// correlation cache for ten minutes).
const FOLD_WINDOW: Duration = Duration::from_secs(600);
/// Correlation entries kept at most (client-go's LRU holds 4096).
const FOLD_ENTRIES: usize = 4096;

/// Writes Events for one component (`source.component`, e.g.
/// `replicaset-controller`).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
    /// (involved uid, type, reason, message) → (event name, count, first seen).
    seen: Arc<Mutex<HashMap<FoldKey, Folded>>>,
}

/// What folds events into one: (involved uid, type, reason, message).
type FoldKey = (String, String, String, String);

#[derive(Clone)]
struct Folded {
    name: String,
    count: i32,
    at: Instant,
}

impl Recorder {
    /// A recorder for `component`; `host` goes into `source.host` (the
    /// scheduler and controllers leave it empty, kubelets set their node).
    pub fn new(client: Client, component: &str, host: Option<&str>) -> Self {
        Self {
            client,
            component: component.to_owned(),
            host: host.map(str::to_owned),
            seen: Arc::default(),
        }
    }

    /// The component name Events carry.
    pub fn component(&self) -> &str {
        &self.component
    }

    /// Records an Event about `obj` (in its namespace; `default` for
    /// cluster-scoped objects, as upstream).
    pub fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let reference = object_reference(obj);
        self.publish_ref(reference, kind, reason, message.into());
    }

    /// Records an Event about the object `reference` names.
    pub fn publish_ref(
        &self,
        reference: ObjectReference,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        let this = self.clone();
        let reason = reason.to_owned();
        tokio::spawn(async move {
            if let Err(e) = this.write(reference, kind, &reason, &message).await {
                debug!(reason, error = %e, "event not written");
            }
        });
    }

    async fn write(
        &self,
        reference: ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> kube::Result<()> {
        let now = Timestamp::now();
        let namespace = reference
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let key = (
            reference.uid.clone().unwrap_or_default(),
            kind.as_str().to_owned(),
            reason.to_owned(),
            message.to_owned(),
        );
        let repeat = {
            let mut seen = self.seen.lock().expect("event cache");
            seen.retain(|_, f| f.at.elapsed() < FOLD_WINDOW);
            match seen.get_mut(&key) {
                Some(f) => {
                    f.count += 1;
                    Some(f.clone())
                }
                None => None,
            }
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(f) = repeat {
            let patch = json!({"count": f.count, "lastTimestamp": Time(now)});
            match api
                .patch(&f.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if super::is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let name = format!(
            "{}.{:016x}",
            reference.name.clone().unwrap_or_default(),
            uuid::Uuid::new_v4().as_u128() as u64
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: reference,
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(kind.as_str().to_owned()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Event::default()
        };
        api.create(&PostParams::default(), &event).await?;
        let mut seen = self.seen.lock().expect("event cache");
        if seen.len() >= FOLD_ENTRIES {
            seen.clear();
        }
        seen.insert(
            key,
            Folded {
                name,
                count: 1,
                at: Instant::now(),
            },
        );
        Ok(())
    }
}

/// An `ObjectReference` to `obj` (kind, apiVersion, namespace, name, uid,
/// resourceVersion), as Events and bindings name objects.
pub fn object_reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        namespace: obj.namespace(),
        name: Some(obj.name_any()),
        uid: obj.uid(),
        resource_version: obj.resource_version(),
        field_path: None,
    }
}
