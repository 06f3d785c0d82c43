//! Running Switchyard's TC programs on crafted packets (BPF_PROG_TEST_RUN,
//! v4.12+), with the maps programmed through the real reconciler as the
//! daemon would. Each harness has a network namespace of its own, with a
//! veth to a node at 192.168.0.12 that owns 10.244.2.0/24, so the programs'
//! FIB lookups (source NAT to another node's backend) see a real route.
use std::net::SocketAddrV4;

use anyhow::Result;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use proxy_common::{
    config::DatapathConfig,
    ct::{Ct4Key, Ct4Value},
    program_names,
};
use switchyard::{
    datapath::{AyaLbMaps, MapSizes, drops::DropCounters, loader::Dataplane},
    reconcile::Reconciler,
    table_file,
};

use crate::{
    cmd::ip_in,
    netns::{InNetns, Netns},
    packet::{View, checksum},
    unique_prefix,
};

/// `TC_ACT_OK`: the packet goes on.
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`: dropped.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`: sent out of another (or the same) interface.
pub const TC_ACT_REDIRECT: u32 = 7;

/// The node's address in the harness namespace.
pub const NODE_ADDR: &str = "192.168.0.11";

/// Which program runs.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// Ingress of a pod-facing interface.
    Pod,
    /// Ingress of a node-facing interface.
    NodeIn,
    /// Egress of a pod- or node-facing interface.
    Egress,
}

impl Hook {
    fn program(self) -> &'static str {
        match self {
            Self::Pod => program_names::TC_INGRESS,
            Self::NodeIn => program_names::TC_NODE_INGRESS,
            Self::Egress => program_names::TC_EGRESS,
        }
    }
}

/// A loaded object, its maps, and the namespace its programs run in.
pub struct Harness {
    reconciler: Reconciler<AyaLbMaps>,
    drops: DropCounters,
    dp: Dataplane,
    netns: Netns,
}

impl Harness {
    /// Loads the object with `config` and applies the table file `yaml`.
    pub fn with_config(yaml: &str, config: &DatapathConfig) -> Result<Self> {
        let netns = Netns::new(&format!("{}-ptr", unique_prefix()))?;
        let n = netns.name();
        // A node forwards for its pods; the programs' FIB lookups rely on it.
        crate::cmd::sysctl_in(n, "net.ipv4.ip_forward", "1")?;
        ip_in(
            n,
            &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        )?;
        ip_in(n, &["addr", "add", "192.168.0.11/24", "dev", "v0"])?;
        ip_in(n, &["link", "set", "v0", "up"])?;
        ip_in(n, &["link", "set", "v1", "up"])?;
        ip_in(n, &["route", "add", "10.244.2.0/24", "via", "192.168.0.12"])?;
        let mut dp = Dataplane::load_with(None, &MapSizes::small(), config)?;
        let mut reconciler = Reconciler::restore(dp.lb_maps()?)?;
        reconciler.apply(&table_file::parse(yaml)?)?;
        Ok(Self {
            reconciler,
            drops: dp.drop_counters()?,
            dp,
            netns,
        })
    }

    /// [`Self::with_config`] with the default configuration.
    pub fn new(yaml: &str) -> Self {
        crate::privileges::require();
        Self::with_config(yaml, &DatapathConfig::DEFAULT).expect("build the harness")
    }

    /// Applies another table file.
    pub fn apply(&mut self, yaml: &str) {
        self.reconciler
            .apply(&table_file::parse(yaml).expect("valid table"))
            .expect("apply");
    }

    /// Runs the pod-facing ingress program once: its verdict and the packet
    /// it left.
    pub fn run(&mut self, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.run_on(Hook::Pod, pkt)
    }

    /// Runs the program of `hook` once, on a packet the node itself sent
    /// (for egress) or received (for ingress).
    pub fn run_on(&mut self, hook: Hook, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.run_with(hook, pkt, 0)
    }

    /// Runs the program of `hook` once on a packet the node forwards, as
    /// if it had entered through interface `ingress_ifindex`.
    pub fn run_forwarded(
        &mut self,
        hook: Hook,
        pkt: &[u8],
        ingress_ifindex: u32,
    ) -> (u32, Vec<u8>) {
        self.run_with(hook, pkt, ingress_ifindex)
    }

    fn run_with(&mut self, hook: Hook, pkt: &[u8], ingress_ifindex: u32) -> (u32, Vec<u8>) {
        // The head of a `struct __sk_buff`, up to `ifindex`: the kernel
        // takes `ingress_ifindex` (offset 36) as the skb's input interface.
        let mut skb = [0u8; 44];
        skb[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let _inside = InNetns::enter(&self.netns).expect("enter the harness namespace");
        let prog: &mut SchedClassifier = self
            .dp
            .ebpf_mut()
            .program_mut(hook.program())
            .expect("program in the object")
            .try_into()
            .expect("a TC program");
        let mut out = vec![0u8; pkt.len() + 512];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ctx_in: (ingress_ifindex != 0).then_some(&skb[..]),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {} bytes: {e:?}", pkt.len()));
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// Every conntrack entry.
    pub fn conntrack(&mut self) -> Vec<(Ct4Key, Ct4Value)> {
        self.reconciler
            .maps_mut()
            .conntrack_mut()
            .entries()
            .expect("read conntrack")
    }

    /// The conntrack entry keyed by a packet's tuple.
    pub fn entry_of(&mut self, pkt: &[u8]) -> Option<Ct4Value> {
        let key = key_of(pkt);
        self.reconciler.maps_mut().conntrack_mut().get(&key)
    }

    /// Rewrites every conntrack entry with `edit` (tests age flows with it).
    pub fn edit_conntrack(&mut self, edit: impl Fn(&mut Ct4Value)) {
        let ct = self.reconciler.maps_mut().conntrack_mut();
        for (k, mut v) in ct.entries().expect("read conntrack") {
            edit(&mut v);
            ct.insert(&k, &v).expect("write conntrack");
        }
    }

    /// Packets the programs counted under drop `reason`
    /// (`proxy_common::stats::STAT_NAMES`).
    pub fn drops(&self, reason: &str) -> u64 {
        self.drops.get(reason).expect("read the drop counters")
    }

    /// The reconciler (for garbage collection and map reads).
    pub fn reconciler(&mut self) -> &mut Reconciler<AyaLbMaps> {
        &mut self.reconciler
    }
}

/// The conntrack key of a TCP/UDP packet as built by `packet::Builder`.
pub fn key_of(pkt: &[u8]) -> Ct4Key {
    let v = View::new(pkt);
    let (s, d) = (v.src(), v.dst());
    Ct4Key {
        saddr_be: u32::from_ne_bytes(s.ip().octets()),
        daddr_be: u32::from_ne_bytes(d.ip().octets()),
        sport_be: s.port().to_be(),
        dport_be: d.port().to_be(),
        proto: v.proto(),
        _pad: [0; 3],
    }
}

/// `a.b.c.d:port`.
pub fn sa(s: &str) -> SocketAddrV4 {
    s.parse().expect("an IPv4 socket address")
}

/// Panics unless the IPv4 and transport checksums of `pkt` are right.
pub fn assert_checksums(pkt: &[u8]) {
    let v = View::new(pkt);
    assert!(
        v.ip_checksum_ok(),
        "IPv4 header checksum invalid: {pkt:02x?}"
    );
    assert!(v.l4_checksum_ok(), "L4 checksum invalid: {pkt:02x?}");
    assert_eq!(checksum(v.ip()), 0);
}
