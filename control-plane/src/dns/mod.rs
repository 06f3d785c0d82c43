//! Cluster DNS (`sy-dns`): the Kubernetes DNS-based service discovery
//! specification as CoreDNS' `kubernetes` plugin serves it, on
//! hickory-server, as a client of the API server.
//!
//! ```text
//!  API server ── watch Namespaces, Services, EndpointSlices (kube-rs reflectors)
//!       │  watch::run rebuilds a Snapshot after each batch of changes
//!       ▼
//!  Snapshot (indexed, immutable, swapped whole)
//!       │  lookup::resolve(snapshot, zone, name, type) → Resolution (pure)
//!       ▼
//!  server::ClusterDnsHandler on hickory-server (UDP + TCP): SOA on NXDOMAIN/NODATA,
//!  other names relayed to --upstream or REFUSED
//! ```
//!
//! [`resolv_conf()`] forms a pod's `/etc/resolv.conf` as the kubelet does
//! (for the node agent). See docs/dns.md.
pub mod health;
pub mod lookup;
pub mod resolv_conf;
pub mod server;
pub mod snapshot;
pub mod watch;

pub use resolv_conf::{PodDnsInput, PodResolvConf, ResolvConfError, resolv_conf};

/// The DNS Service's usual address: the tenth of the default Service range
/// 10.96.0.0/12 (kubeadm's `GetDNSIP`).
pub const DEFAULT_DNS_SERVICE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 10);
/// The usual cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
