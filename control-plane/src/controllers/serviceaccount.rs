//! The ServiceAccount controller and the root-CA publisher (upstream's
//! `serviceaccount-controller` and `root-ca-certificate-publisher`): every
//! active namespace has a ServiceAccount `default` (put back when deleted)
//! and, when `--root-ca-file` is given, a ConfigMap `kube-root-ca.crt`
//! whose `ca.crt` is that bundle — what in-cluster clients verify the API
//! server with. Namespaces being deleted are left alone; a create refused
//! because the namespace is terminating, or because the object already
//! exists, is not an error.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::{
    Api, ResourceExt as _,
    api::{ObjectMeta, PostParams},
    runtime::{
        controller::{Action, Controller},
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use super::{Backoff, Error, Result, Shared};
use crate::client::{self, informer::Informer};

/// The ConfigMap the root CA is published in.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Upstream's description annotation on it.
pub const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Ctx {
    shared: Arc<Shared>,
    accounts: Store<ServiceAccount>,
    root_cas: Store<ConfigMap>,
    root_ca: Option<String>,
    backoff: Backoff<ObjectRef<Namespace>>,
}

/// Runs both; `root_ca` is the PEM bundle to publish (none: only the
/// ServiceAccounts).
pub async fn run(shared: Arc<Shared>, root_ca: Option<String>) -> anyhow::Result<()> {
    let namespaces = shared.namespaces();
    let accounts = shared.service_accounts();
    // Only the CA ConfigMaps, not every ConfigMap of the cluster.
    let root_cas = Informer::spawn(
        Api::<ConfigMap>::all(shared.client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}")),
    );
    namespaces.ready().await;
    accounts.ready().await;
    root_cas.ready().await;
    let ctx = Arc::new(Ctx {
        shared: Arc::clone(&shared),
        accounts: accounts.store(),
        root_cas: root_cas.store(),
        root_ca,
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(60)),
    });
    let results = Controller::for_stream(namespaces.subscribe(), namespaces.store())
        .watches_stream(accounts.subscribe(), |sa: ServiceAccount| {
            (sa.name_any() == "default")
                .then(|| sa.namespace())
                .flatten()
                .map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .watches_stream(root_cas.subscribe(), |cm: ConfigMap| {
            cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .run(
            reconcile,
            |ns: Arc<Namespace>, _e: &Error, ctx: Arc<Ctx>| {
                Action::requeue(ctx.backoff.next(ObjectRef::from_obj(ns.as_ref())))
            },
            ctx,
        );
    super::drive("serviceaccount", results).await;
    Ok(())
}

/// Creates `obj`; an existing one or a terminating namespace is fine.
async fn ensure<K>(api: Api<K>, obj: &K, what: String) -> Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(e) if client::is_conflict(&e) || client::is_namespace_terminating(&e) => Ok(()),
        Err(e) => Err(Error::api(what)(e)),
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = ns.name_any();
    let active = ns.metadata.deletion_timestamp.is_none()
        && ns
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_none_or(|p| p == "Active");
    if !active {
        return Ok(Action::await_change());
    }
    let client = ctx.shared.client.clone();
    if ctx
        .accounts
        .get(&ObjectRef::new("default").within(&name))
        .is_none()
    {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                namespace: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        ensure(
            Api::namespaced(client.clone(), &name),
            &sa,
            format!("creating ServiceAccount {name}/default"),
        )
        .await?;
    }
    if let Some(ca) = ctx.root_ca.as_ref() {
        let current = ctx
            .root_cas
            .get(&ObjectRef::new(ROOT_CA_CONFIGMAP).within(&name));
        let want: BTreeMap<String, String> = [("ca.crt".to_owned(), ca.clone())].into();
        match current {
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ROOT_CA_CONFIGMAP.into()),
                        namespace: Some(name.clone()),
                        annotations: Some(
                            [(
                                "kubernetes.io/description".to_owned(),
                                ROOT_CA_DESCRIPTION.to_owned(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    data: Some(want),
                    ..ConfigMap::default()
                };
                ensure(
                    Api::namespaced(client, &name),
                    &cm,
                    format!("creating ConfigMap {name}/{ROOT_CA_CONFIGMAP}"),
                )
                .await?;
            }
            Some(cm) if cm.data.as_ref() != Some(&want) => {
                let mut fixed = cm.as_ref().clone();
                fixed.data = Some(want);
                let api: Api<ConfigMap> = Api::namespaced(client, &name);
                api.replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &fixed)
                    .await
                    .map_err(Error::api(format!(
                        "updating ConfigMap {name}/{ROOT_CA_CONFIGMAP}"
                    )))?;
            }
            Some(_) => {}
        }
    }
    ctx.backoff.reset(&ObjectRef::from_obj(ns.as_ref()));
    Ok(Action::await_change())
}
