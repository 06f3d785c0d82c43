//! Named network namespaces (`ip netns`) and entering one from a thread.
use std::{fs::File, marker::PhantomData};

use anyhow::{Context as _, Result};

use crate::cmd::{ip_in, run};

/// A network namespace made for a test, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Self> {
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ip_in(name, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// While alive, the current thread is inside a network namespace; the
/// previous one is restored on drop. Not `Send`: namespaces are per thread.
pub struct InNetns {
    previous: File,
    _not_send: PhantomData<*const ()>,
}

impl InNetns {
    pub fn enter(ns: &Netns) -> Result<Self> {
        let previous = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(format!("/run/netns/{}", ns.name()))
            .with_context(|| format!("no netns `{}`", ns.name()))?;
        nix::sched::setns(target, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(Self {
            previous,
            _not_send: PhantomData,
        })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(&self.previous, nix::sched::CloneFlags::CLONE_NEWNET)
            && !std::thread::panicking()
        {
            panic!("cannot return to the previous network namespace: {e}");
        }
    }
}
