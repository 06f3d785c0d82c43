//! `bench-reconcile`: what one reconcile pass costs on the kernel's maps,
//! against the floor of writing the same entries with no reconciler at all.
//!
//! Per N (Services × `--endpoints` endpoints, each its own backends):
//! - **from empty**: `Reconciler::apply` of the whole table onto empty maps;
//! - **floor**: the same backend, membership and service entries written
//!   straight into fresh maps of the same sizes with one
//!   `BPF_MAP_UPDATE_BATCH` per map, no diff and no bookkeeping — what any
//!   writer of these maps pays the kernel;
//! - **one endpoint change**: the next pass after the last Service lost an
//!   endpoint, with everything else unchanged.
//!
//! Medians of `--rounds`. Loads the programs (not attached): run as root,
//! `cargo run --release -p switchyard-tests --bin bench-reconcile`.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use proxy_common::lb::{Lb4MemberKey, Lb4Service, MASTER_SLOT, MEMBER_CLUSTER};
use switchyard::{
    datapath::{LbMaps, MapSizes, loader::Dataplane},
    model::{BackendAddr, BackendId, DesiredTable, FrontendKey, FrontendSpec, Protocol},
    reconcile::Reconciler,
};

#[derive(Parser)]
struct Args {
    /// Table sizes (Services), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000])]
    services: Vec<usize>,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Passes per figure (the median is reported).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!(
        "| Services × {} endpoints | reconciler, from empty (s) | floor: the same entries, one batch per map (s) | ratio | one endpoint change (s) |",
        args.endpoints
    );
    println!("|---|---|---|---|---|");
    for &n in &args.services {
        let table = table_with_last(n, args.endpoints, args.endpoints);
        let changed = table_with_last(n, args.endpoints, args.endpoints - 1);
        let sizes = sizes(n, args.endpoints);
        let mut dp = Dataplane::load(None, &sizes).context("load the dataplane")?;
        let mut r = Reconciler::restore(dp.lb_maps()?)?;
        // The first pass after `restore` sweeps the maps in full: not timed.
        r.apply(&DesiredTable::default())?;
        let (mut program, mut change, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            program.push(timed(|| r.apply(&table).map(drop))?);
            change.push(timed(|| r.apply(&changed).map(drop))?);
            r.apply(&DesiredTable::default())?;
            floor.push(floor_pass(&table, &sizes)?);
        }
        let (p, f, c) = (median(program), median(floor), median(change));
        println!(
            "| {n} | {:.3} | {:.3} | {:.2}x | {:.4} |",
            p.as_secs_f64(),
            f.as_secs_f64(),
            p.as_secs_f64() / f.as_secs_f64(),
            c.as_secs_f64()
        );
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<(), switchyard::reconcile::Error>) -> Result<Duration> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sizes(n: usize, m: usize) -> MapSizes {
    let fit = |v: usize| u32::try_from(v + 1024).unwrap_or(u32::MAX);
    MapSizes {
        frontends: fit(n),
        backends: fit(n * m),
        backend_slots: fit(n * m),
        ..MapSizes::default()
    }
}

/// `n` ClusterIP Services on port 80 from 10.96.1.0 up, `m` endpoints each
/// (the last one `last`), every endpoint its own address in 10.128.0.0/10.
fn table_with_last(n: usize, m: usize, last: usize) -> DesiredTable {
    let mut t = DesiredTable::default();
    for i in 0..n {
        let count = if i + 1 == n { last } else { m };
        let backends = (0..count)
            .map(|j| BackendAddr {
                addr: Ipv4Addr::from(0x0a80_0001 + (i * m + j) as u32),
                port: 8080,
                proto: Protocol::Tcp,
            })
            .collect();
        let key = FrontendKey {
            addr: Ipv4Addr::from(0x0a60_0100 + i as u32),
            port: 80,
            proto: Protocol::Tcp,
        };
        let spec = FrontendSpec {
            name: format!("bench/svc-{i}:http"),
            backends,
            ..FrontendSpec::default()
        };
        t.frontends.insert(key, spec);
    }
    t
}

/// Writes `table`'s entries into fresh maps, one batch per map, with IDs
/// numbered in table order; returns the time of the writes alone.
fn floor_pass(table: &DesiredTable, sizes: &MapSizes) -> Result<Duration> {
    let mut dp = Dataplane::load(None, sizes).context("load the dataplane")?;
    let mut maps = dp.lb_maps()?;
    let (mut backends, mut members, mut services) = (Vec::new(), Vec::new(), Vec::new());
    let mut next_backend = 0u32;
    for (f, (key, spec)) in table.frontends.iter().enumerate() {
        let frontend_id = f as u32 + 1;
        for (slot, b) in (1u16..).zip(&spec.backends) {
            next_backend += 1;
            backends.push((BackendId(next_backend), b.lb4_backend(false)));
            let member = Lb4MemberKey {
                backend_id: next_backend,
                frontend_id,
            };
            members.push((member, MEMBER_CLUSTER));
            let value = Lb4Service {
                backend_id: next_backend,
                frontend_id,
                ..Lb4Service::default()
            };
            services.push((key.lb4_key(slot), value));
        }
        let master = Lb4Service {
            frontend_id,
            count: spec.backends.len() as u16,
            ..Lb4Service::default()
        };
        services.push((key.lb4_key(MASTER_SLOT), master));
    }
    let started = Instant::now();
    for (what, (written, result)) in [
        ("backends", maps.update_backends(&backends)),
        ("memberships", maps.update_members(&members)),
        ("services", maps.update_services(&services)),
    ] {
        result.with_context(|| format!("batch write of {what} stopped after {written}"))?;
    }
    Ok(started.elapsed())
}
