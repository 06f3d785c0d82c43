//! One sync: snapshot → desired table (pure) → fit to the maps → reconcile,
//! with what it did recorded for logs, metrics and health.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use proxy_common::map_names as names;
use tracing::{debug, info, warn};

use super::metrics::{Metrics, SyncRecord};
use crate::{
    datapath::{AyaLbMaps, LbMaps as _},
    desired::{self, HealthCheck, Kind, NodeContext},
    reconcile::{self, Reconciler},
};

/// Set by the EndpointSlice controller: when the change that produced this
/// slice happened. Programmed-minus-this is kube-proxy's network programming
/// latency.
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

pub struct Syncer {
    reconciler: Reconciler<AyaLbMaps>,
    metrics: Arc<Metrics>,
    /// Skipped objects already warned about: warn once per problem.
    warned: BTreeSet<String>,
    left_out: Vec<String>,
    /// resourceVersion of every slice as last programmed.
    slice_versions: BTreeMap<String, String>,
    /// Trigger times before this are not ours to measure (kube-proxy's rule).
    started: jiff::Timestamp,
    /// The reconciler has just read the maps; the first sync need not.
    just_restored: bool,
}

/// What the daemon loop needs to know after a sync.
pub struct Done {
    pub ok: bool,
    /// Frontends newly left out because the maps are full (for an Event).
    pub newly_left_out: Option<Vec<String>>,
    /// Health-check servers the node must run.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

impl Syncer {
    pub fn new(reconciler: Reconciler<AyaLbMaps>, metrics: Arc<Metrics>) -> Self {
        Self {
            reconciler,
            metrics,
            warned: BTreeSet::new(),
            left_out: Vec::new(),
            slice_versions: BTreeMap::new(),
            started: jiff::Timestamp::now(),
            just_restored: true,
        }
    }

    /// Memberships removed since the last call (failed syncs included),
    /// whose UDP conntrack entries and connected sockets are still to go.
    pub fn take_departed(&mut self) -> crate::reconcile::Departures {
        self.reconciler.take_departed()
    }

    /// The addresses of the backends the maps hold now.
    pub fn backend_ips(&self) -> std::collections::HashSet<std::net::Ipv4Addr> {
        self.reconciler.backend_ips()
    }

    /// Frontends the maps hold now.
    pub fn programmed_frontends(&self) -> usize {
        self.reconciler.frontend_count()
    }

    pub fn sync(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        node: &NodeContext,
        full: bool,
    ) -> Done {
        let started = Instant::now();
        // Re-read the maps on a full sync (repairs anything changed behind
        // our back), except right after `Reconciler::restore` read them.
        let just_restored = std::mem::replace(&mut self.just_restored, false);
        if full
            && !just_restored
            && let Err(e) = self.reconciler.refresh()
        {
            warn!(error = %e, "cannot re-read the maps");
        }
        let outcome = desired::compute(services, slices, node);
        for s in &outcome.skipped {
            let line = s.to_string();
            if !self.warned.contains(&line) {
                warn!(kind = s.kind.as_str(), object = %s.object, reason = %s.reason, "skipping invalid object");
            }
        }
        self.warned = outcome.skipped.iter().map(ToString::to_string).collect();
        let fitted =
            desired::fit_to_capacity(outcome.table, self.reconciler.maps().capacity(), |k| {
                self.reconciler.programmed_spec(k)
            });
        if !fitted.kept_previous.is_empty() {
            warn!(frontends = ?fitted.kept_previous, "maps are full: frontends keep their previous endpoints");
        }
        let newly_left_out = (fitted.left_out != self.left_out && !fitted.left_out.is_empty())
            .then(|| fitted.left_out.clone());
        if let Some(names) = &newly_left_out {
            warn!(count = names.len(), frontends = ?names, "maps are full: frontends not programmed");
        }
        self.left_out = fitted.left_out;
        let result = self
            .reconciler
            .apply_with_retry(&fitted.table, 3, Duration::from_millis(20));
        let ok = result.is_ok();
        let mut record = SyncRecord {
            ok,
            frontends: self.reconciler.frontend_count(),
            backends: self.reconciler.backend_count(),
            no_local_endpoints: outcome.no_local_endpoints,
            skipped_services: outcome
                .skipped
                .iter()
                .filter(|s| s.kind == Kind::Service)
                .count(),
            skipped_slices: outcome
                .skipped
                .iter()
                .filter(|s| s.kind == Kind::EndpointSlice)
                .count(),
            left_out: self.left_out.len(),
            ..SyncRecord::default()
        };
        match result {
            Ok(report) => {
                record.udp_flows_flushed = report.flushed_flows;
                record.programming_latencies = self.programming_latencies(slices);
                if report.writes + report.deletes > 0 || full {
                    info!(
                        frontends = record.frontends,
                        backends = record.backends,
                        writes = report.writes,
                        deletes = report.deletes,
                        flushed_udp_flows = report.flushed_flows,
                        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                        full,
                        "maps synced"
                    );
                } else {
                    debug!("maps already in sync");
                }
            }
            Err(reconcile::Error::Incomplete { failed }) => {
                for (name, e) in &failed {
                    warn!(frontend = %name, error = %e, "frontend not written; will retry");
                }
            }
            Err(e) => warn!(error = %e, "sync failed; will retry"),
        }
        record.duration = started.elapsed();
        self.metrics.record_sync(&record);
        if full {
            self.record_occupancy();
        }
        Done {
            ok,
            newly_left_out,
            health_checks: outcome.health_checks,
        }
    }

    /// Latencies of slices changed since the last sync that carry a trigger
    /// time; remembers what is programmed now.
    fn programming_latencies(&mut self, slices: &[Arc<EndpointSlice>]) -> Vec<Duration> {
        let now = jiff::Timestamp::now();
        let mut seen = BTreeMap::new();
        let mut latencies = Vec::new();
        for s in slices {
            let (Some(uid), Some(rv)) = (&s.metadata.uid, &s.metadata.resource_version) else {
                continue;
            };
            if self.slice_versions.get(uid) != Some(rv) {
                let trigger = s
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TRIGGER_TIME))
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok());
                if let Some(t) = trigger.filter(|t| *t >= self.started) {
                    let d = now.duration_since(t);
                    if let Ok(d) = Duration::try_from(d) {
                        latencies.push(d);
                    }
                }
            }
            seen.insert(uid.clone(), rv.clone());
        }
        self.slice_versions = seen;
        latencies
    }

    fn record_occupancy(&mut self) {
        let cap = self.reconciler.maps().capacity();
        let counts = self.reconciler.entry_counts();
        self.metrics
            .set_map(names::LB4_SERVICES, counts.services, cap.services);
        self.metrics
            .set_map(names::LB4_BACKENDS, counts.backends, cap.backends);
        self.metrics
            .set_map(names::LB4_MEMBERS, counts.members, cap.members);
        self.metrics.set_map(
            names::LB4_SOURCE_RANGES,
            counts.source_ranges,
            cap.source_ranges,
        );
        // Conntrack occupancy comes from its garbage collector, off this
        // thread: a walk of up to a million entries must not hold up syncs.
    }
}

/// The Node's InternalIP addresses (IPv4): its primary addresses.
pub fn internal_ips(node: Option<&Node>) -> Vec<std::net::Ipv4Addr> {
    node.and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Whether the Node asks proxies to stop taking traffic (being deleted, or
/// tainted for deletion by the cluster autoscaler), as kube-proxy checks.
pub fn node_ineligible(node: Option<&Node>) -> bool {
    node.is_some_and(|n| {
        n.metadata.deletion_timestamp.is_some()
            || n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"))
    })
}
