//! Switchyard's companion control plane: a Kubernetes-compatible API server
//! over a pluggable store.
//!
//! ```text
//!  kubectl / client-go / kube-rs / Python client
//!        │ HTTP, JSON, watch streams
//!        ▼
//!  api::ApiServer ── path → Route → handler (read / write / discovery / openapi)
//!        │ objects as JSON; resourceVersion = store revision
//!        ▼
//!  store::Store ── EmbeddedStore (redb file) │ etcd
//! ```
//!
//! Beside it, clients of that API as upstream's are: [`controllers`] (the
//! controller manager), [`scheduler`], and the [`client`] plumbing they
//! share (shared watch caches, Events, Lease-based leader election).
pub mod api;
pub mod client;
pub mod controllers;
pub mod dns;
pub mod hollow_node;
pub mod local_etcd;
pub mod node_agent;
pub mod pki;
pub mod scheduler;
pub mod serve;
pub mod store;
