//! The daemon: watch the API server and the node's interfaces, compute the
//! desired table, keep the pinned maps equal to it.
//!
//! ```text
//!  API server ─watch─▶ reflector stores (Service, EndpointSlice, Node)
//!  rtnetlink ─notify─▶ the node's interfaces, addresses, routes
//!                         │           └─▶ Attacher (TC programs; own task,
//!                         │                 wakes a sync after each attachment)
//!                         │ change → paced (min sync period, burst 2)
//!                         ▼
//!                  endpoints behind a pod interface still waiting for its
//!                  program held back (holdback) → desired::compute (pure)
//!                  → fit_to_capacity → Reconciler ─▶ maps
//!                         │
//!                         ├─▶ health-check servers (healthCheckNodePort)
//!                         └─▶ connected UDP sockets of departed backends closed
//!  conntrack GC (own thread) ─▶ expired flows removed, occupancy measured
//! ```
//! Nothing is written before every store has its initial list. A full
//! resync (maps re-read, occupancy measured) runs every sync period. On
//! SIGTERM/SIGINT the daemon exits leaving maps and program links pinned:
//! traffic keeps flowing, and the next daemon adopts them.
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use kube::{Client, Config, config::KubeConfigOptions};
use tokio::{signal::unix::SignalKind, sync::Notify};
use tracing::{info, warn};

use crate::{
    datapath::{loader::Dataplane, lock::PinRootLock, sockets},
    desired::NodeContext,
    node,
    reconcile::Reconciler,
};

mod attacher;
pub mod config;
mod conntrack_worker;
mod events;
pub mod health;
mod healthcheck;
mod holdback;
mod http;
mod interfaces;
pub mod metrics;
mod pacer;
mod rules_mode;
mod sync;
mod watch;

pub use config::{DaemonArgs, Settings};

use self::{
    attacher::Attacher, conntrack_worker::ConntrackWorker, events::NodeEvents, health::Health,
    healthcheck::HealthCheckServers, metrics::Metrics, sync::Syncer,
};

/// Delay before retrying a sync that left something unwritten.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> Result<()> {
    for key in &settings.ignored_keys {
        warn!(key, "configuration key not used by switchyard");
    }
    if settings.proxy_mode != crate::kubeproxy::ProxyMode::Ebpf {
        return rules_mode::run(settings);
    }
    // One writer per pin root; a daemon being replaced gets its grace period.
    let _lock = PinRootLock::acquire(&settings.pin_root, Duration::from_secs(30))?;
    let mut dataplane = Dataplane::load_with(
        Some(&settings.pin_root),
        &settings.sizes,
        &settings.datapath,
    )?;
    if let Some(cg) = &settings.hooks.cgroup_path {
        dataplane.attach_cgroup(cg)?;
        info!(cgroup = %cg.display(), "socket hooks attached");
    }
    let reconciler = Reconciler::restore(dataplane.lb_maps()?)
        .context("cannot read the pinned maps")?
        .defer_conntrack_flush();
    info!(
        node = %settings.node_name,
        adopted_frontends = reconciler.frontend_count(),
        pin_root = %settings.pin_root.display(),
        nodeport_addresses = %settings.nodeport_addresses,
        "dataplane ready"
    );
    let runtime = runtime()?;
    // The loaded object lives in the attacher until the loop is done: links
    // are pinned, so dropping it then detaches nothing.
    runtime.block_on(serve(settings, reconciler, dataplane))
}

/// The API client, as kube-proxy finds its server: `--kubeconfig` (its
/// server replaced by `--master` when given), else `--master` alone, else
/// the in-cluster service account. `$KUBECONFIG` is not read.
async fn client(s: &Settings) -> Result<Client> {
    let mut config = match (&s.kubeconfig, &s.master) {
        (Some(path), _) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig `{}`", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig `{}`", path.display()))?
        }
        (None, Some(master)) => Config::new(
            master
                .parse()
                .with_context(|| format!("--master `{master}` is not a URL"))?,
        ),
        (None, None) => Config::incluster().context(
            "no --kubeconfig or --master, and no in-cluster service account \
             (KUBERNETES_SERVICE_HOST and /var/run/secrets/kubernetes.io/serviceaccount)",
        )?,
    };
    if let Some(master) = &s.master {
        config.cluster_url = master
            .parse()
            .with_context(|| format!("--master `{master}` is not a URL"))?;
    }
    Ok(Client::try_from(config)?)
}

async fn serve(
    settings: Settings,
    reconciler: Reconciler<crate::datapath::AyaLbMaps>,
    dataplane: Dataplane,
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
    let netns = settings.hooks.tc_netns.clone();
    let mut ifaces = interfaces::watch(netns.as_deref())
        .await
        .context("cannot follow the node's interfaces")?;
    let attacher = Arc::new(Mutex::new(Attacher::new(dataplane, settings.hooks.clone())));
    let maps_dir = settings.pin_root.join("maps");

    // Interfaces first: programs on every pod- and node-facing interface
    // that exists, before the first sync. A named --tc-iface that is not
    // there is a mistake worth stopping for.
    let snapshot = ifaces.borrow_and_update().clone();
    let mut addressing = node::select(&settings.nodeport_addresses, &snapshot.addrs, &[]);
    let failures = reattach(
        &attacher,
        &snapshot,
        &addressing.node_ifaces,
        &metrics,
        || {},
    )
    .await;
    let failed = failures.all();
    let missing: Vec<&String> = settings
        .hooks
        .tc_ifaces
        .iter()
        .filter(|i| !snapshot.links.values().any(|l| l.name == **i))
        .collect();
    if !missing.is_empty() || !failed.is_empty() && !settings.hooks.tc_ifaces.is_empty() {
        bail!(
            "cannot attach to --tc-iface {missing:?}: {}",
            if failed.is_empty() {
                "no such interface".to_owned()
            } else {
                failed.join("; ")
            }
        );
    }
    match lock(&attacher).dataplane_mut().remove_obsolete_maps() {
        Ok(0) => {}
        Ok(n) => info!(maps = n, "removed the pins of an older version's maps"),
        Err(e) => warn!(error = %e, "cannot remove an older version's map pins"),
    }
    match lock(&attacher).dataplane_mut().drop_counters() {
        Ok(d) => metrics.set_drop_counters(d),
        Err(e) => warn!(error = %e, "datapath drop counters are not exported"),
    }
    let conntrack = ConntrackWorker::start(&maps_dir, settings.sync_period, Arc::clone(&metrics))
        .context("cannot open the conntrack map")?;

    let client = client(&settings).await?;
    let changed = Arc::new(Notify::new());
    // From here on, attachments follow the interfaces in a task of their
    // own, so that a burst of new pod interfaces (each attachment 20–150 ms
    // under load) does not hold up the syncs; see `holdback`.
    let attached = lock(&attacher).view();
    let attach_requests = spawn_attacher(
        &attacher,
        (snapshot, addressing.node_ifaces.clone()),
        !failures.failed.is_empty(),
        &changed,
        &metrics,
    );
    let stores = watch::start(&client, &settings.node_name, &changed, &health, &metrics);
    let events = NodeEvents::new(client, &settings.node_name);
    let mut syncer = Syncer::new(reconciler, Arc::clone(&metrics));
    let mut health_checks = HealthCheckServers::new(netns.clone(), Arc::clone(&health));

    let mut stop = std::pin::pin!(stop_signal()?);

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
    let mut pacer = pacer::SyncPacer::new(settings.min_sync_period, pacer::BURST, Instant::now());
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The first tick fires at once: the first sync is a full one.
        let full = tokio::select! {
            biased;
            _ = resync.tick() => true,
            _ = changed.notified() => false,
            Ok(()) = ifaces.changed() => {
                // Interfaces or addresses changed: NodePort frontends and
                // attachments follow (below, with the node's addresses).
                health.queued();
                false
            }
            signal = &mut stop => {
                info!(signal, frontends = syncer.programmed_frontends(), "stopping; maps and links stay pinned");
                return Ok(());
            }
        };
        // kube-proxy's pacing: at once if a token is left, else every
        // change until the next token shares one sync.
        pacer::wait_for_token(&mut pacer).await;
        let node_obj = stores.node.state().into_iter().next();
        let snapshot = ifaces.borrow_and_update().clone();
        let now = node::select(
            &settings.nodeport_addresses,
            &snapshot.addrs,
            &sync::internal_ips(node_obj.as_deref()),
        );
        if now != addressing || full {
            if now.nodeport != addressing.nodeport {
                info!(addresses = ?now.nodeport, snat = ?now.snat, "NodePort addresses");
            }
            addressing = now;
        }
        // A full resync reconciles the attachments too (the redirect map is
        // rewritten, and failures get another try).
        let request = (snapshot.clone(), addressing.node_ifaces.clone());
        attach_requests.send_if_modified(|r| {
            let new = full || *r != request;
            *r = request;
            new
        });
        let waiting = holdback::waiting_pod_ifaces(
            &snapshot,
            &settings.hooks,
            &addressing.node_ifaces,
            &attached
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let slices = stores.slices.state();
        let (slices, held) = if waiting.is_empty() {
            (slices, 0)
        } else {
            let programmed = std::cell::OnceCell::new();
            holdback::without_held(&slices, &settings.node_name, |ip| {
                holdback::is_held(&snapshot, &waiting, ip, || {
                    programmed
                        .get_or_init(|| syncer.backend_ips())
                        .contains(&ip)
                })
            })
        };
        metrics.set_endpoints_held_back(held);
        health.set_node_ineligible(sync::node_ineligible(node_obj.as_deref()));
        health.sync_started();
        let node_ctx = NodeContext {
            name: Some(settings.node_name.clone()),
            nodeport_addresses: addressing.nodeport.clone(),
            address: addressing.snat,
        };
        let services = stores.services.state();
        let done = tokio::task::block_in_place(|| syncer.sync(&services, &slices, &node_ctx, full));
        health.sync_finished(done.ok);
        let departed = syncer.take_departed();
        conntrack.flush(departed.memberships);
        health_checks.update(&done.health_checks);
        if !departed.udp_backends.is_empty()
            && let Some(cgroup) = settings.hooks.cgroup_path.clone()
        {
            let dir = maps_dir.clone();
            let departed: Vec<_> = departed.udp_backends.into_iter().collect();
            let metrics = Arc::clone(&metrics);
            tokio::task::spawn_blocking(move || {
                match sockets::close_departed(&dir, &cgroup, &departed) {
                    Ok(closed) => {
                        if closed.sockets > 0 {
                            info!(
                                sockets = closed.sockets,
                                "closed connected UDP sockets of departed backends"
                            );
                        }
                        for (netns, error) in &closed.failed {
                            warn!(netns = %netns.display(), %error, "cannot close sockets of departed backends in a namespace");
                        }
                        metrics.socket_close_failed(closed.failed.len());
                    }
                    Err(e) => {
                        metrics.socket_close_failed(1);
                        warn!(error = %format!("{e:#}"), "cannot close sockets of departed backends")
                    }
                }
            });
        }
        if let Some(left_out) = done.newly_left_out {
            let shown: Vec<&str> = left_out.iter().take(10).map(String::as_str).collect();
            let more = left_out.len().saturating_sub(shown.len());
            let message = format!(
                "{} frontend(s) not programmed: the eBPF maps are full (larger --max-frontends/--max-backends/--max-backend-slots take effect once the pinned maps are recreated with `switchyard cleanup`): {}{}",
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

fn lock(a: &Mutex<Attacher>) -> std::sync::MutexGuard<'_, Attacher> {
    a.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the attacher task is asked to follow: the interfaces and the
/// node-facing interface names.
type AttachRequest = (interfaces::Snapshot, BTreeSet<String>);

/// Starts the attacher task: it brings the attachments in line with the
/// latest request (`first` is already done, `first_failed` if partly;
/// failures are retried every [`RETRY_AFTER`]), and wakes a sync through `changed` after every new
/// attachment, for the endpoints held back until then.
fn spawn_attacher(
    attacher: &Arc<Mutex<Attacher>>,
    first: AttachRequest,
    first_failed: bool,
    changed: &Arc<Notify>,
    metrics: &Arc<Metrics>,
) -> tokio::sync::watch::Sender<AttachRequest> {
    let (tx, mut rx) = tokio::sync::watch::channel(first);
    let (attacher, changed, metrics) = (
        Arc::clone(attacher),
        Arc::clone(changed),
        Arc::clone(metrics),
    );
    tokio::spawn(async move {
        let mut failed = first_failed;
        loop {
            // A failed attachment is retried after a while even if nothing
            // changes: its pod's endpoints are held back meanwhile.
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep(RETRY_AFTER), if failed => {}
            }
            let (snapshot, node_ifaces) = rx.borrow_and_update().clone();
            let wake = Arc::clone(&changed);
            failed = !reattach(&attacher, &snapshot, &node_ifaces, &metrics, move || {
                wake.notify_one();
            })
            .await
            .failed
            .is_empty();
        }
    });
    tx
}

/// The daemon's runtime: two workers (syncs block one of them).
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Resolves to the name of the first SIGTERM or SIGINT; the handlers are
/// installed when it is called, so a signal before the first poll counts.
fn stop_signal() -> Result<impl std::future::Future<Output = &'static str>> {
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    })
}

/// Brings the TC attachments in line with the interfaces (off the async
/// threads: attaching enters the node's namespace), calling `on_attached`
/// after each new attachment.
async fn reattach(
    attacher: &Arc<Mutex<Attacher>>,
    snapshot: &interfaces::Snapshot,
    node_ifaces: &BTreeSet<String>,
    metrics: &Metrics,
    on_attached: impl Fn() + Send + 'static,
) -> attacher::Failures {
    let (a, s, n) = (Arc::clone(attacher), snapshot.clone(), node_ifaces.clone());
    let failures = tokio::task::spawn_blocking(move || lock(&a).reconcile(&s, &n, &on_attached))
        .await
        .unwrap_or_else(|e| attacher::Failures {
            failed: vec![format!("attacher task: {e}")],
            ..Default::default()
        });
    metrics.set_interfaces_not_attached(failures.refused.len() + failures.failed.len());
    failures
}
