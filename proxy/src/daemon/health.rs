//! `/healthz` and `/livez` as kube-proxy's proxy health server answers them:
//! 200 with `{"lastUpdated", "currentTime", "nodeEligible"}` while changes
//! reach the maps in time; 503 once a change has waited longer than
//! 2 × syncPeriod. `/healthz` (readiness) is also 503 before the first sync
//! and while this node is being deleted or drained for deletion; `/livez`
//! is not: a daemon waiting for an unreachable API server is alive, and
//! restarting it would not help.
use std::{
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

#[derive(Debug, Default)]
struct Inner {
    last_updated: Option<SystemTime>,
    /// The oldest change not yet taken by a sync.
    pending: Option<Instant>,
    /// The oldest change the running sync is applying.
    in_flight: Option<Instant>,
    node_ineligible: bool,
}

/// The daemon's health as kube-proxy's `/healthz` reports it: when the
/// last sync finished, whether a change is waiting too long, whether the
/// Node is being removed. Shared between the sync loop and the HTTP server.
#[derive(Debug)]
pub struct Health {
    inner: Mutex<Inner>,
    timeout: Duration,
}

/// What a probe gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status: 200 or 503.
    pub status: u16,
    /// The JSON body.
    pub body: String,
}

impl Health {
    /// Unhealthy until the first sync; then unhealthy whenever a change has
    /// waited more than twice `sync_period` (kube-proxy's rule).
    pub fn new(sync_period: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            timeout: sync_period.saturating_mul(2),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A change arrived that the maps do not reflect yet.
    pub fn queued(&self) {
        let mut h = self.lock();
        h.pending.get_or_insert_with(Instant::now);
    }

    /// A sync starts: it takes every change queued so far.
    pub fn sync_started(&self) {
        let mut h = self.lock();
        h.in_flight = h.pending.take().or(h.in_flight);
    }

    /// The sync ended; on failure its changes count as still pending.
    pub fn sync_finished(&self, ok: bool) {
        let mut h = self.lock();
        let taken = h.in_flight.take();
        if ok {
            h.last_updated = Some(SystemTime::now());
        } else if let Some(t) = taken {
            h.pending = Some(h.pending.map_or(t, |p| p.min(t)));
        }
    }

    /// The Node object is being deleted or carries the autoscaler's
    /// deletion taint: load balancers should stop sending here.
    pub fn set_node_ineligible(&self, ineligible: bool) {
        self.lock().node_ineligible = ineligible;
    }

    /// Whether `/healthz` answers 200: kube-proxy's `serviceProxyHealthy`.
    pub fn is_healthy(&self) -> bool {
        self.answer(true).status == 200
    }

    /// `/healthz` (`check_node`) or `/livez`.
    pub fn answer(&self, check_node: bool) -> Answer {
        let h = self.lock();
        let now = Instant::now();
        let waiting = [h.pending, h.in_flight]
            .into_iter()
            .flatten()
            .min()
            .is_some_and(|t| now.duration_since(t) > self.timeout);
        let synced = h.last_updated.is_some();
        let eligible = !h.node_ineligible;
        let healthy = !waiting && (!check_node || (synced && eligible));
        let stamp = |t: SystemTime| {
            jiff::Timestamp::try_from(t).map_or_else(|_| String::new(), |t| t.to_string())
        };
        let mut body = serde_json::json!({
            "lastUpdated": h.last_updated.map(stamp).unwrap_or_default(),
            "currentTime": stamp(SystemTime::now()),
        });
        if check_node {
            body["nodeEligible"] = eligible.into();
        }
        Answer {
            status: if healthy { 200 } else { 503 },
            body: body.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_the_first_sync_and_unhealthy_while_changes_wait_too_long() {
        let h = Health::new(Duration::from_millis(20));
        assert_eq!(h.answer(true).status, 503);
        assert_eq!(
            h.answer(false).status,
            200,
            "alive while waiting for the API"
        );
        h.queued();
        h.sync_started();
        h.sync_finished(true);
        let a = h.answer(true);
        assert_eq!(a.status, 200, "{}", a.body);
        let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(body["nodeEligible"], true);
        assert!(body["lastUpdated"].as_str().unwrap().ends_with('Z'));
        // A change that no sync takes within 2 × syncPeriod.
        h.queued();
        assert_eq!(h.answer(true).status, 200);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(h.answer(true).status, 503);
        // A failed sync keeps it pending; a good one clears it.
        h.sync_started();
        h.sync_finished(false);
        assert_eq!(h.answer(false).status, 503);
        h.sync_started();
        h.sync_finished(true);
        assert_eq!(h.answer(false).status, 200);
        h.set_node_ineligible(true);
        assert_eq!(h.answer(true).status, 503);
        assert_eq!(h.answer(false).status, 200, "livez ignores the node");
    }
}
