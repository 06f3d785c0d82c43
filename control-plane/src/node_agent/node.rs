//! The agent's Node and its Lease, as kubelet keeps them: the Node is
//! registered (or taken over) with its labels, addresses, capacity,
//! allocatable, node info and kubelet endpoint; its conditions are posted
//! every `status_interval`; the Lease in `kube-node-lease` (owned by the
//! Node) is renewed every `lease_interval` (kubelet: 40 s lease, renewed
//! every 10 s).
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result};
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Node, NodeCondition},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tracing::warn;

/// What the agent says of its node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    /// `InternalIP`s (the node namespace's addresses).
    pub addresses: Vec<String>,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    pub labels: BTreeMap<String, String>,
    /// Where the API server reaches the agent's log/exec endpoint.
    pub endpoint_host: String,
    pub endpoint_port: u16,
    pub lease_duration_seconds: i32,
}

/// The annotation telling the API server where to reach this agent
/// (`host:port`) when the node's `InternalIP` is not reachable from the
/// API server (agents of a one-machine cluster each in a network
/// namespace serve on the machine's loopback).
pub const ENDPOINT_ANNOTATION: &str = "node.switchyard.io/agent-endpoint";

fn condition(ty: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> NodeCondition {
    NodeCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The Node's status as JSON (conditions all healthy: the agent only
/// runs when it can).
pub fn status(info: &NodeInfo, now: Timestamp) -> serde_json::Value {
    let res = json!({
        "cpu": info.cpu, "memory": info.memory, "pods": info.max_pods.to_string(),
        "ephemeral-storage": "10Gi",
    });
    let mut addresses: Vec<serde_json::Value> = info
        .addresses
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": info.name}));
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    json!({
        "capacity": res, "allocatable": res,
        "addresses": addresses,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": info.endpoint_port}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": kernel, "osImage": "Debian GNU/Linux",
            "containerRuntimeVersion": "runc://1", "kubeletVersion": "v1.33.0-switchyard",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available", now),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", now),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available", now),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", now),
        ],
    })
}

/// Registers the Node (409: takes it over), posts its status, and returns
/// its UID.
pub async fn register(client: &Client, info: &NodeInfo) -> Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = info.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), info.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    let annotations: BTreeMap<String, String> = [(
        ENDPOINT_ANNOTATION.to_owned(),
        format!("{}:{}", info.endpoint_host, info.endpoint_port),
    )]
    .into();
    let node = Node {
        metadata: ObjectMeta {
            name: Some(info.name.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(e) if crate::client::is_conflict(&e) => {
            nodes
                .patch(
                    &info.name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"labels": labels, "annotations": annotations}}),
                    ),
                )
                .await
                .with_context(|| format!("updating node {}", info.name))?;
        }
        Err(e) => return Err(e).with_context(|| format!("registering node {}", info.name)),
    }
    let n = nodes
        .patch_status(
            &info.name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": status(info, Timestamp::now())})),
        )
        .await
        .with_context(|| format!("posting the status of node {}", info.name))?;
    n.metadata.uid.context("node without uid")
}

/// Renews (or creates) the node's Lease.
pub async fn renew_lease(client: &Client, info: &NodeInfo, node_uid: &str) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(Timestamp::now());
    match leases.get_opt(&info.name).await? {
        Some(mut l) => {
            let spec = l.spec.get_or_insert_with(LeaseSpec::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(info.name.clone());
            spec.lease_duration_seconds = Some(info.lease_duration_seconds);
            leases
                .replace(&info.name, &PostParams::default(), &l)
                .await?;
        }
        None => {
            let l = Lease {
                metadata: ObjectMeta {
                    name: Some(info.name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: info.name.clone(),
                        uid: node_uid.to_owned(),
                        ..OwnerReference::default()
                    }]),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(info.name.clone()),
                    lease_duration_seconds: Some(info.lease_duration_seconds),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            leases.create(&PostParams::default(), &l).await?;
        }
    }
    Ok(())
}

/// Renews the Lease every `lease_interval` and posts the Node's status
/// every `status_interval`, forever.
pub async fn heartbeat(
    client: Client,
    info: NodeInfo,
    node_uid: String,
    lease_interval: Duration,
    status_interval: Duration,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut last_status = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(lease_interval).await;
        if let Err(e) = renew_lease(&client, &info, &node_uid).await {
            warn!(node = %info.name, error = %e, "lease renewal failed");
        }
        if last_status.elapsed() >= status_interval {
            last_status = tokio::time::Instant::now();
            let patch =
                json!({"status": {"conditions": status(&info, Timestamp::now())["conditions"]}});
            if let Err(e) = nodes
                .patch_status(
                    &info.name,
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
            {
                warn!(node = %info.name, error = %e, "node status update failed");
            }
        }
    }
}
