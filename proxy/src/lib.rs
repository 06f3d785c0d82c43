//! Switchyard: a Kubernetes Service dataplane in eBPF.
//!
//! ```text
//!  desired table (file today, Kubernetes watch later)   pure: model, table_file
//!        │
//!        ▼
//!  reconcile::Reconciler ── ordered, idempotent writes ──▶ datapath::LbMaps
//!        ▲                                                  │ AyaLbMaps (pinned eBPF maps)
//!        └────────── restore (IDs, observed state) ◀────────┘ FakeLbMaps (tests)
//! ```
//!
//! The eBPF object itself (proxy-ebpf) is compiled by `build.rs` and embedded
//! here; [`datapath::loader`] loads, attaches and pins it.
#![forbid(unsafe_code)]

pub mod attach;
pub mod daemon;
pub mod datapath;
pub mod desired;
pub mod inspect;
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
