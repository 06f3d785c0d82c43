//! The daemon's Prometheus metrics, through the `prometheus-client` crate
//! (OpenMetrics text). kube-proxy's names where a metric means the same
//! (`kubeproxy_sync_proxy_rules_*`, `kubeproxy_network_programming_*`),
//! `switchyard_*` for the rest. Counters get the `_total` suffix from the
//! crate; the datapath's drop counters are read from the kernel at each
//! scrape.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64},
    },
    time::{Duration, SystemTime},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::datapath::drops::DropCounters;

/// A label set of one label, `name="value"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficPolicy {
    traffic_policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Resource {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectKind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapName {
    map: &'static str,
}

/// A gauge holding a float (seconds since the epoch).
type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the daemon exports, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    programming_latency: Histogram,
    last_sync: FloatGauge,
    no_local_endpoints: Family<TrafficPolicy, Gauge<i64, AtomicI64>>,
    syncs: Counter,
    sync_errors: Counter,
    watch_errors: Family<Resource, Counter>,
    frontends: Gauge<i64, AtomicI64>,
    backends: Gauge<i64, AtomicI64>,
    invalid_objects: Family<ObjectKind, Gauge<i64, AtomicI64>>,
    not_programmed: Family<Reason, Gauge<i64, AtomicI64>>,
    udp_flows_flushed: Counter,
    conntrack_expired: Counter,
    interfaces_not_attached: Gauge<i64, AtomicI64>,
    endpoints_held_back: Gauge<i64, AtomicI64>,
    socket_close_failures: Counter,
    map_entries: Family<MapName, Gauge<i64, AtomicI64>>,
    map_max_entries: Family<MapName, Gauge<i64, AtomicI64>>,
    drops: Arc<DropCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            // kube-proxy's buckets: 1 ms doubling (~16 s and ~524 s).
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            programming_latency: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            last_sync: FloatGauge::default(),
            no_local_endpoints: Family::default(),
            syncs: Counter::default(),
            sync_errors: Counter::default(),
            watch_errors: Family::default(),
            frontends: Gauge::default(),
            backends: Gauge::default(),
            invalid_objects: Family::default(),
            not_programmed: Family::default(),
            udp_flows_flushed: Counter::default(),
            conntrack_expired: Counter::default(),
            interfaces_not_attached: Gauge::default(),
            endpoints_held_back: Gauge::default(),
            socket_close_failures: Counter::default(),
            map_entries: Family::default(),
            map_max_entries: Family::default(),
            drops: Arc::default(),
        };
        m.register();
        m
    }
}

/// What one sync did, for the metrics.
#[derive(Debug, Default, Clone)]
pub struct SyncRecord {
    /// Recompute and reconcile, wall time.
    pub duration: Duration,
    /// Every frontend was written.
    pub ok: bool,
    /// Frontends in the maps after the sync.
    pub frontends: usize,
    /// Distinct backends in the maps after the sync.
    pub backends: usize,
    /// Frontends without local endpoints: (internal, external) policy.
    pub no_local_endpoints: (usize, usize),
    /// Services skipped as invalid.
    pub skipped_services: usize,
    /// EndpointSlices skipped as invalid.
    pub skipped_slices: usize,
    /// Frontends left out because the maps are full.
    pub left_out: usize,
    /// UDP conntrack entries the sync itself flushed (0 when deferred).
    pub udp_flows_flushed: usize,
    /// Trigger-to-programmed latencies of the EndpointSlices this sync applied.
    pub programming_latencies: Vec<Duration>,
}

impl Metrics {
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds: one recompute and map reconcile",
            self.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "From an EndpointSlice's last-change-trigger-time to its endpoints being in the maps",
            self.programming_latency.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time the maps were successfully synced",
            self.last_sync.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Frontends with a Local traffic policy and no local endpoints",
            self.no_local_endpoints.clone(),
        );
        r.register(
            "switchyard_syncs",
            "Recompute-and-reconcile passes",
            self.syncs.clone(),
        );
        r.register(
            "switchyard_sync_errors",
            "Passes that left some frontend unwritten (retried)",
            self.sync_errors.clone(),
        );
        r.register(
            "switchyard_watch_errors",
            "Errors of the API watches, by resource (each is retried)",
            self.watch_errors.clone(),
        );
        r.register(
            "switchyard_programmed_frontends",
            "Frontends (address:port/protocol) in the maps",
            self.frontends.clone(),
        );
        r.register(
            "switchyard_programmed_backends",
            "Distinct backends in the maps",
            self.backends.clone(),
        );
        r.register(
            "switchyard_invalid_objects",
            "Objects skipped because of an invalid address, port, protocol or affinity",
            self.invalid_objects.clone(),
        );
        r.register(
            "switchyard_frontends_not_programmed",
            "Frontends left out because the maps are full",
            self.not_programmed.clone(),
        );
        r.register(
            "switchyard_udp_flows_flushed",
            "Conntrack entries of UDP flows whose backend went away",
            self.udp_flows_flushed.clone(),
        );
        r.register(
            "switchyard_conntrack_expired",
            "Conntrack entries of idle flows removed by garbage collection",
            self.conntrack_expired.clone(),
        );
        r.register(
            "switchyard_interfaces_not_attached",
            "Pod- or node-facing interfaces the TC programs could not be attached to (retried every second and on every interface change)",
            self.interfaces_not_attached.clone(),
        );
        r.register(
            "switchyard_endpoints_held_back",
            "Endpoints left out of the maps at the last sync because the per-packet program is not yet on their pod's interface",
            self.endpoints_held_back.clone(),
        );
        r.register(
            "switchyard_udp_socket_close_failures",
            "Network namespaces whose sockets connected to a departed UDP backend could not be closed",
            self.socket_close_failures.clone(),
        );
        r.register(
            "switchyard_map_entries",
            "Entries in each eBPF map",
            self.map_entries.clone(),
        );
        r.register(
            "switchyard_map_max_entries",
            "Capacity of each eBPF map",
            self.map_max_entries.clone(),
        );
        r.register_collector(Box::new(Arc::clone(&self.drops)));
    }

    /// Records one sync: its duration and outcome, and the gauges it set.
    pub fn record_sync(&self, r: &SyncRecord) {
        self.sync_duration.observe(r.duration.as_secs_f64());
        self.syncs.inc();
        if r.ok {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_sync.set(now);
        } else {
            self.sync_errors.inc();
        }
        for l in &r.programming_latencies {
            self.programming_latency.observe(l.as_secs_f64());
        }
        self.frontends.set(r.frontends as i64);
        self.backends.set(r.backends as i64);
        for (policy, n) in [
            ("internal", r.no_local_endpoints.0),
            ("external", r.no_local_endpoints.1),
        ] {
            self.no_local_endpoints
                .get_or_create(&TrafficPolicy {
                    traffic_policy: policy,
                })
                .set(n as i64);
        }
        for (kind, n) in [
            ("Service", r.skipped_services),
            ("EndpointSlice", r.skipped_slices),
        ] {
            self.invalid_objects
                .get_or_create(&ObjectKind { kind })
                .set(n as i64);
        }
        self.not_programmed
            .get_or_create(&Reason { reason: "map_full" })
            .set(r.left_out as i64);
        self.udp_flows_flushed.inc_by(r.udp_flows_flushed as u64);
    }

    /// Counts an error of the watch of `resource` (`services`, …).
    pub fn watch_error(&self, resource: &'static str) {
        self.watch_errors
            .get_or_create(&Resource { resource })
            .inc();
    }

    /// Conntrack entries of UDP flows of departed backends, flushed.
    pub fn udp_flows_flushed(&self, n: usize) {
        self.udp_flows_flushed.inc_by(n as u64);
    }

    /// Expired conntrack entries the garbage collector removed.
    pub fn conntrack_collected(&self, n: usize) {
        self.conntrack_expired.inc_by(n as u64);
    }

    /// Exports the per-packet paths' drop counters from now on.
    pub fn set_drop_counters(&self, drops: DropCounters) {
        *self
            .drops
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(drops);
    }

    /// Interfaces that want programs but could not get them, as of the last
    /// attempt.
    pub fn set_interfaces_not_attached(&self, n: usize) {
        self.interfaces_not_attached.set(n as i64);
    }

    /// Endpoints the last sync left out, waiting for their pod interface's
    /// program (`holdback`).
    pub fn set_endpoints_held_back(&self, n: usize) {
        self.endpoints_held_back.set(n as i64);
    }

    /// Network namespaces whose departed UDP sockets could not be closed.
    pub fn socket_close_failed(&self, namespaces: usize) {
        self.socket_close_failures.inc_by(namespaces as u64);
    }

    /// Sets the occupancy of map `name`: entries held and capacity.
    pub fn set_map(&self, name: &'static str, entries: usize, max_entries: u32) {
        let label = MapName { map: name };
        self.map_entries.get_or_create(&label).set(entries as i64);
        self.map_max_entries
            .get_or_create(&label)
            .set(i64::from(max_entries));
    }

    /// The exposition text (OpenMetrics 1.0, which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a collector's error shows as
        // a truncated scrape, which Prometheus reports.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads [`DropCounters`] at each scrape, once the datapath is loaded.
#[derive(Debug, Default)]
struct DropCollector(Mutex<Option<DropCounters>>);

impl Collector for DropCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(counts) = guard.as_ref().and_then(|d| d.read().ok()) else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "switchyard_datapath_dropped_packets",
            "Packets the per-packet paths dropped or rejected, by reason",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, n) in counts {
            let labels = Reason { reason };
            let sample = family.encode_family(&labels)?;
            ConstCounter::new(n).encode(sample)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_the_text_is_well_formed() {
        let m = Metrics::default();
        m.record_sync(&SyncRecord {
            duration: Duration::from_millis(3),
            ok: true,
            frontends: 2,
            skipped_slices: 1,
            ..SyncRecord::default()
        });
        m.record_sync(&SyncRecord {
            duration: Duration::from_millis(100),
            ok: false,
            frontends: 2,
            skipped_slices: 1,
            ..SyncRecord::default()
        });
        m.watch_error("services");
        m.set_map("SY_CT4_V2", 10, 100);
        let text = m.render();
        let value = |sample: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no `{sample}` in\n{text}"))
                .parse()
                .unwrap()
        };
        let h = "kubeproxy_sync_proxy_rules_duration_seconds";
        assert_eq!(value(&format!("{h}_bucket{{le=\"0.004\"}}")), 1.0);
        assert_eq!(value(&format!("{h}_bucket{{le=\"+Inf\"}}")), 2.0);
        assert_eq!(value(&format!("{h}_count")), 2.0);
        assert_eq!(value("switchyard_syncs_total"), 2.0);
        assert_eq!(value("switchyard_sync_errors_total"), 1.0);
        assert_eq!(
            value("switchyard_invalid_objects{kind=\"EndpointSlice\"}"),
            1.0
        );
        assert_eq!(
            value("switchyard_watch_errors_total{resource=\"services\"}"),
            1.0
        );
        assert_eq!(
            value("switchyard_map_max_entries{map=\"SY_CT4_V2\"}"),
            100.0
        );
        assert!(value("kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 1.7e9);
        // Every sample line is `name{labels} value` with a numeric value,
        // and the text ends as OpenMetrics requires.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "bad sample line `{l}`");
        }
        assert_eq!(text.lines().last(), Some("# EOF"));
    }
}
