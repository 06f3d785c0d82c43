//! Switchyard: a Kubernetes Service dataplane in eBPF.
//!
//! ```text
//!  Kubernetes API (daemon/watch)        a table file (table_file)
//!  + node interfaces (daemon/interfaces)        │
//!        │                                      │
//!        ▼                                      ▼
//!  desired::compute, node::select       table_file::parse     pure: model, desired, node
//!        └──────────────┬───────────────────────┘
//!                       ▼ DesiredTable
//!  reconcile::Reconciler ── ordered, idempotent writes ──▶ datapath::LbMaps
//!        ▲                                                  │ AyaLbMaps (pinned eBPF maps)
//!        └────────── restore (IDs, observed state) ◀────────┘ FakeLbMaps (tests)
//! ```
//!
//! `switchyard` with no subcommand is the daemon ([`daemon`]): it watches
//! the API server and the node's interfaces and keeps the maps equal to the
//! desired table. The subcommands (`attach`, `apply-file`, `inspect`,
//! `cleanup`) work on the same pinned state from a table file. The eBPF
//! object itself (proxy-ebpf) is compiled by `build.rs` and embedded here;
//! [`datapath::loader`] loads, attaches and pins it.
// One module may call what aya does not wrap (`datapath::batch`, the
// `bpf(2)` batch update); nothing else is unsafe.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod attach;
pub mod daemon;
pub mod datapath;
pub mod desired;
pub mod inspect;
pub mod kubeproxy;
pub mod model;
pub mod netns;
pub mod node;
pub mod reconcile;
pub mod table_file;

/// The compiled eBPF object with every Switchyard program and map.
pub const EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane"));

/// A TC program that returns `TC_ACT_OK` at once: the baseline benchmarks
/// compare the load balancer against.
pub const BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline"));
