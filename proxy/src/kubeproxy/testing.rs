//! Shared by the renderers' tests: ServicePorts from real YAML under
//! `proxy/testdata/`, through the same `desired::compute` the daemon runs.
use std::path::Path;

use crate::desired::{self, NodeContext, ServicePort};

/// The ServicePorts of `file`, computed for node `node`.
pub fn ports(file: &str, node: Option<&str>) -> Vec<ServicePort> {
    let (services, slices) = desired::tests::load(file);
    desired::compute(
        &services,
        &slices,
        &NodeContext {
            name: node.map(str::to_owned),
            ..NodeContext::default()
        },
    )
    .service_ports
}

/// The text of a golden file under `proxy/testdata/`.
pub fn golden(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// kube-proxy's NodePort example (`ns1/svc1:p80`) and a second Service
/// like it (`ns2/svc2:p80`, 172.30.0.42, NodePort 30081): for partial syncs.
pub fn two_example_services() -> Vec<ServicePort> {
    let mut ports = ports("kube-proxy/nodeport-example.yaml", None);
    let mut other = ports[0].clone();
    other.name = "ns2/svc2:p80".to_owned();
    other.cluster_ip = "172.30.0.42".parse().unwrap();
    other.node_port = Some(30081);
    ports.push(other);
    ports
}
