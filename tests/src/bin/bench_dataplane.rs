//! `bench-dataplane`: the dataplane's per-packet and per-connection costs,
//! each as a ratio against a baseline measured in the same run.
//!
//! 1. TC path, BPF_PROG_TEST_RUN with `--repeat` (default 1M) runs per
//!    measurement: an established flow's DNAT, and non-Service traffic passing
//!    through, against an empty TC program.
//! 2. `connect()` latency to a ClusterIP through the socket hook, against
//!    `connect()` straight to the backend, from a pod in a node namespace.
//!
//! Run as root: `cargo run --release -p switchyard-tests --bin bench-dataplane`.
use std::{net::SocketAddrV4, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    EbpfLoader,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use clap::Parser;
use proxy_common::{
    ct::{CT_FLAG_NAT, CT_STATE_OPENED, CT_STATE_REPLIED, Ct4Key, Ct4Value},
    program_names,
};
use switchyard::{
    datapath::{MapSizes, loader::Dataplane},
    reconcile::Reconciler,
    table_file,
};
use testbed::{
    lab::{ClientPlacement, Testbed},
    netns::InNetns,
    packet::{Builder, TCP_ACK},
};

#[derive(Parser)]
struct Args {
    /// BPF_PROG_TEST_RUN repetitions per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Measurements per program (the median is reported).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// connect() calls per round and per target.
    #[arg(long, default_value_t = 2000)]
    connects: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tc = tc_path(&args)?;
    let sock = connect_latency(&args)?;
    println!("| measurement | Switchyard | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| TC path, established flow DNAT (ns/packet) | {:.1} | {:.1} (empty TC program) | {:.2}x |",
        tc.established,
        tc.empty,
        tc.established / tc.empty
    );
    println!(
        "| TC path, non-Service packet (ns/packet) | {:.1} | {:.1} (empty TC program) | {:.2}x |",
        tc.passthrough,
        tc.empty,
        tc.passthrough / tc.empty
    );
    println!(
        "| connect() to a ClusterIP via socket hook, p50 (µs) | {:.1} | {:.1} (connect() to the backend) | {:.2}x |",
        sock.via_hook.0,
        sock.direct.0,
        sock.via_hook.0 / sock.direct.0
    );
    println!(
        "| connect() to a ClusterIP via socket hook, p99 (µs) | {:.1} | {:.1} (connect() to the backend) | {:.2}x |",
        sock.via_hook.1,
        sock.direct.1,
        sock.via_hook.1 / sock.direct.1
    );
    Ok(())
}

struct TcFigures {
    empty: f64,
    established: f64,
    passthrough: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ns_per_run(prog: &mut SchedClassifier, pkt: &[u8], repeat: u32) -> Result<f64> {
    let mut out = vec![0u8; pkt.len() + 64];
    let opts = TestRunOptions {
        data_in: Some(pkt),
        data_out: Some(&mut out),
        repeat,
        ..TestRunOptions::default()
    };
    let r = prog.test_run(opts)?;
    Ok(r.duration.as_nanos() as f64)
}

fn tc_path(args: &Args) -> Result<TcFigures> {
    let mut baseline = EbpfLoader::new().load(switchyard::BASELINE_OBJECT)?;
    let empty: &mut SchedClassifier = baseline
        .program_mut("sy_tc_baseline")
        .context("baseline program")?
        .try_into()?;
    empty.load()?;

    let mut dp = Dataplane::load(None, &MapSizes::small())?;
    let mut reconciler = Reconciler::restore(dp.lb_maps()?)?;
    let table = "frontends:\n  - {address: 10.96.0.10, port: 80, backends: [10.244.1.11:8080, 10.244.1.12:8080]}\n";
    reconciler.apply(&table_file::parse(table)?)?;
    let client: SocketAddrV4 = "10.244.1.10:40000".parse()?;
    let vip: SocketAddrV4 = "10.96.0.10:80".parse()?;
    let backend: SocketAddrV4 = "10.244.1.11:8080".parse()?;
    // Repeated runs see the packet the previous run left. Two forward
    // entries (VIP -> backend, backend -> VIP) make every run an established
    // flow's full rewrite, alternating direction, at a steady state.
    let ct = reconciler.maps_mut().conntrack_mut();
    for (from, to) in [(vip, backend), (backend, vip)] {
        let key = Ct4Key {
            saddr_be: u32::from_ne_bytes(client.ip().octets()),
            daddr_be: u32::from_ne_bytes(from.ip().octets()),
            sport_be: client.port().to_be(),
            dport_be: from.port().to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let value = Ct4Value {
            saddr_be: key.saddr_be,
            daddr_be: u32::from_ne_bytes(to.ip().octets()),
            sport_be: key.sport_be,
            dport_be: to.port().to_be(),
            backend_id: 1,
            frontend_id: 1,
            // An established flow that never expires during the run.
            expires_s: u32::MAX,
            flags: CT_FLAG_NAT,
            state: CT_STATE_OPENED | CT_STATE_REPLIED,
            ..Ct4Value::default()
        };
        ct.insert(&key, &value)?;
    }
    let lb: &mut SchedClassifier = dp
        .ebpf_mut()
        .program_mut(program_names::TC_INGRESS)
        .context("tc program")?
        .try_into()?;
    let mut established_pkt = Builder::tcp(client, vip, TCP_ACK);
    established_pkt.payload = vec![0; 64];
    let established_pkt = established_pkt.build();
    let passthrough_pkt = Builder::tcp(client, "10.244.1.99:8080".parse()?, TCP_ACK).build();

    let (mut e, mut l, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        e.push(ns_per_run(empty, &established_pkt, args.repeat)?);
        l.push(ns_per_run(lb, &established_pkt, args.repeat)?);
        p.push(ns_per_run(lb, &passthrough_pkt, args.repeat)?);
    }
    Ok(TcFigures {
        empty: median(e),
        established: median(l),
        passthrough: median(p),
    })
}

struct SockFigures {
    /// (p50, p99) in microseconds.
    via_hook: (f64, f64),
    direct: (f64, f64),
}

fn percentiles(mut ns: Vec<u64>) -> (f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

fn connect_latency(args: &Args) -> Result<SockFigures> {
    let bed = Testbed::new(1)?;
    let mut dp = Dataplane::load(None, &MapSizes::small())?;
    {
        let _in = InNetns::enter(&bed.topo.node)?;
        for iface in bed.topo.host_ifs() {
            dp.attach_tc(iface)?;
        }
    }
    dp.attach_cgroup(bed.cgroup.path())?;
    let mut reconciler = Reconciler::restore(dp.lb_maps()?)?;
    let table = format!(
        "frontends:\n  - {{address: 10.96.0.10, port: 80, backends: [{}]}}\n",
        bed.backend(1)
    );
    reconciler.apply(&table_file::parse(&table)?)?;
    let count = args.connects.to_string();
    let run = |target: &str| -> Result<Vec<u64>> {
        let out = bed
            .spawn_client(
                ClientPlacement::InNodeCgroup,
                &["connect-latency", "--target", target, "--count", &count],
            )?
            .finish()?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        Ok(serde_json::from_value(v["connect_ns"].clone())?)
    };
    let direct_target = bed.backend(1);
    let (mut hook, mut direct) = (Vec::new(), Vec::new());
    // Interleaved rounds, so drift on a noisy machine hits both alike.
    for _ in 0..args.rounds {
        hook.extend(run("10.96.0.10:80")?);
        direct.extend(run(&direct_target)?);
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(SockFigures {
        via_hook: percentiles(hook),
        direct: percentiles(direct),
    })
}
