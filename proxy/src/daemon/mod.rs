//! The daemon: watch the API server, compute the desired table, keep the
//! pinned maps equal to it.
//!
//! ```text
//!  API server ─watch─▶ reflector stores (Service, EndpointSlice, Node)
//!                         │ change → debounce (min sync period)
//!                         ▼
//!                  desired::compute (pure) → fit_to_capacity → Reconciler ─▶ maps
//! ```
//! Nothing is written before every store has its initial list. A full
//! resync (maps re-read, occupancy measured) runs every sync period. On
//! SIGTERM/SIGINT the daemon exits leaving maps and program links pinned:
//! traffic keeps flowing, and the next daemon adopts them.
use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use kube::{Client, Config, config::KubeConfigOptions};
use tokio::{signal::unix::SignalKind, sync::Notify};
use tracing::{info, warn};

use crate::{attach::load_and_attach, desired::NodeContext, reconcile::Reconciler};

pub mod config;
mod events;
pub mod health;
mod http;
pub mod metrics;
mod sync;
mod watch;

pub use config::{DaemonArgs, Settings};

use self::{events::NodeEvents, health::Health, metrics::Metrics, sync::Syncer};

/// Delay before retrying a sync that left something unwritten.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> Result<()> {
    for key in &settings.ignored_keys {
        warn!(key, "configuration key not used by switchyard");
    }
    let mut dataplane = load_and_attach(&settings.pin_root, &settings.sizes, &settings.hooks)?;
    let reconciler =
        Reconciler::restore(dataplane.lb_maps()?).context("cannot read the pinned maps")?;
    info!(
        node = %settings.node_name,
        adopted_frontends = reconciler.frontend_count(),
        pin_root = %settings.pin_root.display(),
        "dataplane ready"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(settings, reconciler));
    // Keep the loaded object alive until the loop is done: links are
    // pinned, so dropping it detaches nothing.
    drop(dataplane);
    result
}

async fn client(s: &Settings) -> Result<Client> {
    let config = match &s.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig `{}`", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig `{}`", path.display()))?
        }
        None => Config::infer()
            .await
            .context("no --kubeconfig, and neither in-cluster config nor $KUBECONFIG")?,
    };
    Ok(Client::try_from(config)?)
}

async fn serve(
    settings: Settings,
    reconciler: Reconciler<crate::datapath::AyaLbMaps>,
) -> Result<()> {
    let health = Arc::new(Health::new(settings.sync_period));
    let metrics = Arc::new(Metrics::default());
    http::serve(
        settings.healthz,
        settings.metrics,
        Arc::clone(&health),
        Arc::clone(&metrics),
    )
    .await?;
    let client = client(&settings).await?;
    let changed = Arc::new(Notify::new());
    let stores = watch::start(&client, &settings.node_name, &changed, &health, &metrics);
    let events = NodeEvents::new(client, &settings.node_name);
    let node = NodeContext {
        name: Some(settings.node_name.clone()),
        ..NodeContext::default()
    };
    let mut syncer = Syncer::new(reconciler, node, Arc::clone(&metrics));

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let stop = async {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    let mut stop = std::pin::pin!(stop);

    tokio::select! {
        r = stores.wait_until_ready() => r?,
        signal = &mut stop => {
            info!(signal, "stopping before the first sync; maps and links stay pinned");
            return Ok(());
        }
    }
    info!(
        services = stores.services.state().len(),
        endpointslices = stores.slices.state().len(),
        "initial lists received"
    );
    let mut resync = tokio::time::interval(settings.sync_period);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The first tick fires at once: the first sync is a full one.
        let full = tokio::select! {
            biased;
            _ = resync.tick() => true,
            _ = changed.notified() => false,
            signal = &mut stop => {
                info!(signal, frontends = syncer.programmed_frontends(), "stopping; maps and links stay pinned");
                return Ok(());
            }
        };
        // Coalesce a burst of changes into one recompute.
        tokio::time::sleep(settings.min_sync_period).await;
        let node_obj = stores.node.state().into_iter().next();
        health.set_node_ineligible(sync::node_ineligible(node_obj.as_deref()));
        health.sync_started();
        let (services, slices) = (stores.services.state(), stores.slices.state());
        let done = tokio::task::block_in_place(|| syncer.sync(&services, &slices, full));
        health.sync_finished(done.ok);
        if let Some(left_out) = done.newly_left_out {
            let shown: Vec<&str> = left_out.iter().take(10).map(String::as_str).collect();
            let more = left_out.len().saturating_sub(shown.len());
            let message = format!(
                "{} frontend(s) not programmed: the eBPF maps are full (raise --max-frontends/--max-backends): {}{}",
                left_out.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
            let uid = node_obj.as_ref().and_then(|n| n.metadata.uid.clone());
            let events = events.clone();
            tokio::spawn(async move { events.warn(uid, "FrontendsNotProgrammed", message).await });
        }
        if !done.ok {
            let changed = Arc::clone(&changed);
            tokio::spawn(async move {
                tokio::time::sleep(RETRY_AFTER).await;
                changed.notify_one();
            });
        }
    }
}
