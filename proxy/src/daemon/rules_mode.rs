//! The daemon in kube-proxy's own modes (`--proxy-mode iptables|nftables`):
//! the same watches, the same pure `desired::compute`, health and metrics,
//! but each sync renders kube-proxy's rule layout and applies it with
//! `iptables-restore` or `nft` instead of writing maps. No eBPF program is
//! loaded. Used as the benchmarks' baseline and as a fallback for kernels
//! without the eBPF features.
use std::{sync::Arc, time::Instant};

use anyhow::Result;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    Settings, client,
    health::Health,
    healthcheck::HealthCheckServers,
    http, interfaces,
    metrics::{Metrics, SyncRecord},
    pacer, runtime, stop_signal, sync, watch,
};
use crate::{
    desired::{self, NodeContext},
    kubeproxy::{
        ProxyMode, RuleConfig,
        apply::{IptablesRules, NftablesRules},
    },
    node::{self, NodePortAddresses},
};

/// How often a sync is a full one at the latest (kube-proxy's
/// `FullSyncPeriod`).
const FULL_SYNC_PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);

enum Rules {
    Iptables(IptablesRules),
    Nftables(NftablesRules),
}

/// Runs the daemon in `settings.proxy_mode` (iptables or nftables) until
/// SIGTERM or SIGINT. The rules stay in place when it stops, as
/// kube-proxy's do; `switchyard cleanup --proxy-mode …` removes them.
pub fn run(settings: Settings) -> Result<()> {
    let netns = settings.hooks.tc_netns.clone();
    let rules = match settings.proxy_mode {
        ProxyMode::Iptables => {
            Rules::Iptables(IptablesRules::new(netns, settings.iptables_variant)?)
        }
        ProxyMode::Nftables => Rules::Nftables(NftablesRules::new(netns)),
        ProxyMode::Ebpf => unreachable!("the eBPF mode is daemon::run's"),
    };
    let runtime = runtime()?;
    runtime.block_on(serve(settings, rules))
}

async fn serve(settings: Settings, mut rules: Rules) -> Result<()> {
    let health = Arc::new(Health::new(settings.sync_period));
    let metrics = Arc::new(Metrics::default());
    http::serve(
        settings.healthz,
        settings.metrics,
        Arc::clone(&health),
        Arc::clone(&metrics),
    )
    .await?;
    let netns = settings.hooks.tc_netns.clone();
    let mut ifaces = interfaces::watch(netns.as_deref()).await?;
    let client = client(&settings).await?;
    let changed = Arc::new(Notify::new());
    let stores = watch::start(&client, &settings.node_name, &changed, &health, &metrics);
    let mut health_checks = HealthCheckServers::new(netns, Arc::clone(&health));
    let mut stop = std::pin::pin!(stop_signal()?);
    tokio::select! {
        r = stores.wait_until_ready() => r?,
        signal = &mut stop => {
            info!(signal, "stopping before the first sync");
            return Ok(());
        }
    }
    let mode = settings.proxy_mode.as_str();
    info!(mode, "initial lists received; kube-proxy rule layout");
    let mut resync = tokio::time::interval(settings.sync_period);
    let mut pacer = pacer::SyncPacer::new(settings.min_sync_period, pacer::BURST, Instant::now());
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = resync.tick() => {}
            _ = changed.notified() => {}
            Ok(()) = ifaces.changed() => {}
            signal = &mut stop => {
                info!(signal, mode, "stopping; the rules stay in place");
                return Ok(());
            }
        }
        // kube-proxy: a full sync at start, after a failure (the rule sets
        // see to both) and once an hour; every other sync is partial.
        let full = last_full.is_none_or(|t| t.elapsed() >= FULL_SYNC_PERIOD);
        // kube-proxy's pacing: at once if a token is left, else every
        // change until the next token shares one sync.
        pacer::wait_for_token(&mut pacer).await;
        let node_obj = stores.node.state().into_iter().next();
        let snapshot = ifaces.borrow_and_update().clone();
        let addressing = node::select(
            &settings.nodeport_addresses,
            &snapshot.addrs,
            &sync::internal_ips(node_obj.as_deref()),
        );
        health.set_node_ineligible(sync::node_ineligible(node_obj.as_deref()));
        health.sync_started();
        let started = Instant::now();
        let node_ctx = NodeContext {
            name: Some(settings.node_name.clone()),
            nodeport_addresses: addressing.nodeport.clone(),
            address: addressing.snat,
        };
        let (services, slices) = (stores.services.state(), stores.slices.state());
        let outcome = desired::compute(&services, &slices, &node_ctx);
        let cfg = RuleConfig {
            masquerade_all: settings.masquerade_all,
            local_detector: settings.cluster_cidrs.first().copied(),
            nodeport_addresses: match settings.nodeport_addresses {
                NodePortAddresses::All => None,
                _ => Some(addressing.nodeport.clone()),
            },
            localhost_nodeports: false,
            node_ip: addressing.snat,
            ..RuleConfig::default()
        };
        let result = tokio::task::block_in_place(|| match &mut rules {
            Rules::Iptables(r) => r.sync(&outcome.service_ports, &cfg, full),
            Rules::Nftables(r) => r.sync(&outcome.service_ports, &cfg, full),
        });
        let ok = result.is_ok();
        if ok && full {
            last_full = Some(Instant::now());
        }
        match &result {
            Ok(applied) => info!(
                mode,
                service_ports = outcome.service_ports.len(),
                rules = applied.objects,
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                partial = applied.partial,
                "rules synced"
            ),
            Err(e) => warn!(mode, error = %format!("{e:#}"), "sync failed; will retry"),
        }
        health.sync_finished(ok);
        metrics.record_sync(&SyncRecord {
            duration: started.elapsed(),
            ok,
            frontends: outcome.table.frontends.len(),
            backends: outcome.table.backend_count(),
            no_local_endpoints: outcome.no_local_endpoints,
            ..SyncRecord::default()
        });
        health_checks.update(&outcome.health_checks);
        if !ok {
            let changed = Arc::clone(&changed);
            tokio::spawn(async move {
                tokio::time::sleep(settings.sync_period.min(std::time::Duration::from_secs(1)))
                    .await;
                changed.notify_one();
            });
        }
    }
}
