//! Kubernetes Events about this node (core/v1, which every API server
//! serves), so `kubectl describe node` shows what Switchyard could not do.
use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{Api, Client, api::PostParams};
use tracing::warn;

#[derive(Clone)]
pub struct NodeEvents {
    api: Api<Event>,
    node: String,
}

impl NodeEvents {
    pub fn new(client: Client, node: &str) -> Self {
        Self {
            // Node events live in `default`, as kubelet's do.
            api: Api::namespaced(client, "default"),
            node: node.to_owned(),
        }
    }

    /// Posts a Warning event; failures are logged, never fatal.
    pub async fn warn(&self, node_uid: Option<String>, reason: &str, message: String) {
        let now = jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", self.node, now.as_nanosecond())),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node.clone()),
                uid: node_uid,
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some("Warning".into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some("switchyard".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("switchyard".into()),
            reporting_instance: Some(self.node.clone()),
            ..Event::default()
        };
        if let Err(e) = self.api.create(&PostParams::default(), &event).await {
            warn!(reason, error = %e, "cannot post node event");
        }
    }
}
