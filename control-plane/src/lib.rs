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
pub mod api;
pub mod local_etcd;
pub mod pki;
pub mod serve;
pub mod store;
