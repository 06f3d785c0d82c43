//! Prometheus metrics in the text exposition format (version 0.0.4).
//! kube-proxy's names where a metric means the same
//! (`kubeproxy_sync_proxy_rules_*`, `kubeproxy_network_programming_*`),
//! `switchyard_*` for the rest. A handful of metrics does not need a crate.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use crate::datapath::drops::DropCounters;

/// A histogram with fixed upper bounds (seconds).
#[derive(Debug, Clone)]
struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// `start * factor^i` for `n` buckets, as Prometheus' ExponentialBuckets.
    fn exponential(start: f64, factor: f64, n: usize) -> Self {
        let bounds: Vec<f64> = (0..n).map(|i| start * factor.powi(i as i32)).collect();
        Self {
            counts: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    sync_duration: Histogram,
    programming_latency: Histogram,
    last_sync: Option<SystemTime>,
    syncs: u64,
    sync_errors: u64,
    watch_errors: BTreeMap<&'static str, u64>,
    udp_flows_flushed: u64,
    conntrack_collected: u64,
    frontends: usize,
    backends: usize,
    /// Frontends without local endpoints: (internal, external) policy.
    no_local_endpoints: (usize, usize),
    skipped: BTreeMap<&'static str, usize>,
    left_out: usize,
    /// Map name → (entries, max_entries).
    maps: BTreeMap<&'static str, (usize, u32)>,
    /// The datapath's drop counters, read at each scrape.
    drops: Option<DropCounters>,
    socket_close_failures: u64,
    interfaces_not_attached: usize,
}

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics(Mutex<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self(Mutex::new(Inner {
            // kube-proxy's buckets: 1 ms doubling fifteen times (~16 s).
            sync_duration: Histogram::exponential(0.001, 2.0, 15),
            programming_latency: Histogram::exponential(0.001, 2.0, 20),
            last_sync: None,
            syncs: 0,
            sync_errors: 0,
            watch_errors: BTreeMap::new(),
            udp_flows_flushed: 0,
            conntrack_collected: 0,
            frontends: 0,
            backends: 0,
            no_local_endpoints: (0, 0),
            skipped: BTreeMap::new(),
            left_out: 0,
            maps: BTreeMap::new(),
            drops: None,
            socket_close_failures: 0,
            interfaces_not_attached: 0,
        }))
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one sync: its duration and outcome, and the gauges it set.
    pub fn record_sync(&self, r: &SyncRecord) {
        let mut m = self.lock();
        m.sync_duration.observe(r.duration.as_secs_f64());
        m.syncs += 1;
        if r.ok {
            m.last_sync = Some(SystemTime::now());
        } else {
            m.sync_errors += 1;
        }
        for l in &r.programming_latencies {
            m.programming_latency.observe(l.as_secs_f64());
        }
        m.frontends = r.frontends;
        m.backends = r.backends;
        m.no_local_endpoints = r.no_local_endpoints;
        m.skipped.insert("Service", r.skipped_services);
        m.skipped.insert("EndpointSlice", r.skipped_slices);
        m.left_out = r.left_out;
        m.udp_flows_flushed += r.udp_flows_flushed as u64;
    }

    /// Counts an error of the watch of `resource` (`services`, …).
    pub fn watch_error(&self, resource: &'static str) {
        *self.lock().watch_errors.entry(resource).or_default() += 1;
    }

    /// Conntrack entries of UDP flows of departed backends, flushed.
    pub fn udp_flows_flushed(&self, n: usize) {
        self.lock().udp_flows_flushed += n as u64;
    }

    /// Expired conntrack entries the garbage collector removed.
    pub fn conntrack_collected(&self, n: usize) {
        self.lock().conntrack_collected += n as u64;
    }

    /// Exports the per-packet paths' drop counters from now on.
    pub fn set_drop_counters(&self, drops: DropCounters) {
        self.lock().drops = Some(drops);
    }

    /// Interfaces that want programs but could not get them, as of the last
    /// attempt.
    pub fn set_interfaces_not_attached(&self, n: usize) {
        self.lock().interfaces_not_attached = n;
    }

    /// Network namespaces whose departed UDP sockets could not be closed.
    pub fn socket_close_failed(&self, namespaces: usize) {
        self.lock().socket_close_failures += namespaces as u64;
    }

    /// Sets the occupancy of map `name`: entries held and capacity.
    pub fn set_map(&self, name: &'static str, entries: usize, max_entries: u32) {
        self.lock().maps.insert(name, (entries, max_entries));
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        let name = "kubeproxy_sync_proxy_rules_duration_seconds";
        head(
            &mut out,
            name,
            "histogram",
            "SyncProxyRules latency in seconds: one recompute and map reconcile",
        );
        m.sync_duration.render(&mut out, name);
        let name = "kubeproxy_network_programming_duration_seconds";
        head(
            &mut out,
            name,
            "histogram",
            "From an EndpointSlice's last-change-trigger-time to its endpoints being in the maps",
        );
        m.programming_latency.render(&mut out, name);
        let last_sync = m
            .last_sync
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let one = |v: f64| vec![(String::new(), v)];
        let labelled = |label: &str, values: Vec<(&str, f64)>| {
            values
                .into_iter()
                .map(|(l, v)| (format!("{{{label}=\"{l}\"}}"), v))
                .collect::<Vec<_>>()
        };
        let families = [
            (
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "gauge",
                "The last time the maps were successfully synced",
                one(last_sync),
            ),
            (
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "gauge",
                "Frontends with a Local traffic policy and no local endpoints",
                labelled(
                    "traffic_policy",
                    vec![
                        ("internal", m.no_local_endpoints.0 as f64),
                        ("external", m.no_local_endpoints.1 as f64),
                    ],
                ),
            ),
            (
                "switchyard_syncs_total",
                "counter",
                "Recompute-and-reconcile passes",
                one(m.syncs as f64),
            ),
            (
                "switchyard_sync_errors_total",
                "counter",
                "Passes that left some frontend unwritten (retried)",
                one(m.sync_errors as f64),
            ),
            (
                "switchyard_watch_errors_total",
                "counter",
                "Errors of the API watches, by resource (each is retried)",
                labelled(
                    "resource",
                    m.watch_errors
                        .iter()
                        .map(|(r, n)| (*r, *n as f64))
                        .collect(),
                ),
            ),
            (
                "switchyard_programmed_frontends",
                "gauge",
                "Frontends (ClusterIP:port/protocol) in the maps",
                one(m.frontends as f64),
            ),
            (
                "switchyard_programmed_backends",
                "gauge",
                "Distinct backends in the maps",
                one(m.backends as f64),
            ),
            (
                "switchyard_invalid_objects",
                "gauge",
                "Objects skipped because of an invalid address, port, protocol or affinity",
                labelled(
                    "kind",
                    m.skipped.iter().map(|(k, n)| (*k, *n as f64)).collect(),
                ),
            ),
            (
                "switchyard_frontends_not_programmed",
                "gauge",
                "Frontends left out because the maps are full",
                labelled("reason", vec![("map_full", m.left_out as f64)]),
            ),
            (
                "switchyard_udp_flows_flushed_total",
                "counter",
                "Conntrack entries of UDP flows whose backend went away",
                one(m.udp_flows_flushed as f64),
            ),
            (
                "switchyard_conntrack_expired_total",
                "counter",
                "Conntrack entries of idle flows removed by garbage collection",
                one(m.conntrack_collected as f64),
            ),
            (
                "switchyard_datapath_dropped_packets_total",
                "counter",
                "Packets the per-packet paths dropped or rejected, by reason",
                labelled(
                    "reason",
                    m.drops
                        .as_ref()
                        .and_then(|d| d.read().ok())
                        .map(|all| all.iter().map(|(r, n)| (*r, *n as f64)).collect())
                        .unwrap_or_default(),
                ),
            ),
            (
                "switchyard_interfaces_not_attached",
                "gauge",
                "Pod- or node-facing interfaces the TC programs could not be attached to (retried on every interface change)",
                one(m.interfaces_not_attached as f64),
            ),
            (
                "switchyard_udp_socket_close_failures_total",
                "counter",
                "Network namespaces whose sockets connected to a departed UDP backend could not be closed",
                one(m.socket_close_failures as f64),
            ),
            (
                "switchyard_map_entries",
                "gauge",
                "Entries in each eBPF map",
                labelled(
                    "map",
                    m.maps.iter().map(|(k, (n, _))| (*k, *n as f64)).collect(),
                ),
            ),
            (
                "switchyard_map_max_entries",
                "gauge",
                "Capacity of each eBPF map",
                labelled(
                    "map",
                    m.maps
                        .iter()
                        .map(|(k, (_, max))| (*k, f64::from(*max)))
                        .collect(),
                ),
            ),
        ];
        for (name, kind, help, samples) in families {
            head(&mut out, name, kind, help);
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        out
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
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
        let text = m.render();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no `{prefix}` in\n{text}"))
                .to_owned()
        };
        let h = "kubeproxy_sync_proxy_rules_duration_seconds";
        assert_eq!(
            line(&format!("{h}_bucket{{le=\"0.004\"}}")),
            format!("{h}_bucket{{le=\"0.004\"}} 1")
        );
        assert_eq!(
            line(&format!("{h}_bucket{{le=\"+Inf\"}}")),
            format!("{h}_bucket{{le=\"+Inf\"}} 2")
        );
        assert_eq!(
            line("switchyard_sync_errors_total "),
            "switchyard_sync_errors_total 1"
        );
        assert_eq!(
            line("switchyard_invalid_objects{kind=\"EndpointSlice\"}"),
            "switchyard_invalid_objects{kind=\"EndpointSlice\"} 1"
        );
        // Every sample line is `name{labels} value` with a numeric value.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line `{l}`");
        }
    }
}
