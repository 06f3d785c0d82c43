//! Entering a network namespace for a moment (to attach TC programs to
//! interfaces that live there) without moving the whole process.
use std::{fs::File, path::PathBuf};

use anyhow::{Context as _, Result};
use nix::sched::{CloneFlags, setns};

/// `/run/netns/NAME` for a bare name, the path itself otherwise.
pub fn path_of(ns: &str) -> PathBuf {
    if ns.contains('/') {
        PathBuf::from(ns)
    } else {
        PathBuf::from("/run/netns").join(ns)
    }
}

/// Runs `f` with the calling thread in network namespace `ns`, then moves
/// the thread back, whatever `f` returned.
pub fn with_netns<T>(ns: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let path = path_of(ns);
    let target = File::open(&path)
        .with_context(|| format!("cannot open network namespace `{}`", path.display()))?;
    let home =
        File::open("/proc/thread-self/ns/net").context("cannot open own network namespace")?;
    setns(&target, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter network namespace `{}`", path.display()))?;
    let result = f();
    // Failing to return would leave this thread in the wrong namespace for
    // everything that follows: that is not recoverable.
    setns(&home, CloneFlags::CLONE_NEWNET)
        .expect("cannot return to the original network namespace");
    result
}
