//! Switchyard's test bed: real network namespaces, veth pairs, a cgroup v2
//! subtree and a private bpffs, each behind a guard that cleans up on drop —
//! including when a test panics. Nothing is created in the root network
//! namespace: veth pairs are created directly inside the namespaces.
//!
//! Used by the integration tests, the demo and the benchmarks.
pub mod cluster;
pub mod cmd;
pub mod fs;
pub mod kmem;
pub mod lab;
pub mod multinode;
pub mod netns;
pub mod packet;
pub mod plot;
pub mod privileges;
pub mod probe;
pub mod proc;
pub mod prog_test;
pub mod relay;
pub mod topology;

pub mod sweep;

use std::sync::{
    Once,
    atomic::{AtomicU32, Ordering},
};

/// A name prefix unique to this process and call, short enough for
/// namespace names: `sy<pid>x<n>`. The first call also removes what test
/// processes that were killed (and so could not clean up) left behind.
pub fn unique_prefix() -> String {
    static SWEEP: Once = Once::new();
    static N: AtomicU32 = AtomicU32::new(0);
    SWEEP.call_once(sweep::stale);
    format!(
        "sy{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
