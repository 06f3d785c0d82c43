//! The daemon's conntrack work, on a thread of its own with its own file
//! descriptor on the map, so that neither ever holds up a sync (a change's
//! way to the maps) or shutdown:
//! - the UDP flush of memberships a sync removed (kube-proxy's conntrack
//!   cleanup), done as soon as they arrive and retried every second until
//!   a scan completes;
//! - garbage collection of dead flows every `every`, which also measures
//!   the map's occupancy.
use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use tracing::{debug, warn};

use super::metrics::Metrics;
use crate::{
    datapath::{
        MapError,
        conntrack::{Conntrack, now_s},
    },
    model::{BackendId, FrontendId},
};

/// Departed (frontend, backend) memberships.
pub type Departed = BTreeSet<(FrontendId, BackendId)>;

/// A failed flush is tried again after this long.
const RETRY: Duration = Duration::from_secs(1);

/// The handle the sync loop sends departed memberships through.
pub struct ConntrackWorker {
    tx: mpsc::Sender<Departed>,
}

impl ConntrackWorker {
    /// Starts the thread on the conntrack map pinned in `maps_dir`.
    ///
    /// # Errors
    /// The map cannot be opened: without the flush, UDP clients would keep
    /// sending to departed backends, so the daemon must not run without it.
    pub fn start(
        maps_dir: &Path,
        every: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, MapError> {
        let ct = Conntrack::from_pins(maps_dir)?;
        let (tx, rx) = mpsc::channel::<Departed>();
        std::thread::Builder::new()
            .name("conntrack".into())
            .spawn(move || run(ct, &rx, every, &metrics))
            .expect("spawn the conntrack thread");
        Ok(Self { tx })
    }

    /// Queues the UDP flows of `departed` memberships for flushing.
    pub fn flush(&self, departed: Departed) {
        if !departed.is_empty() {
            // The thread only ends with the process.
            let _ = self.tx.send(departed);
        }
    }
}

fn run(mut ct: Conntrack, rx: &mpsc::Receiver<Departed>, every: Duration, metrics: &Metrics) {
    let mut pending = Departed::new();
    let mut next_gc = Instant::now() + every;
    loop {
        let wait = if pending.is_empty() {
            next_gc.saturating_duration_since(Instant::now())
        } else {
            RETRY
        };
        match rx.recv_timeout(wait) {
            Ok(d) => pending.extend(d),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(d) = rx.try_recv() {
            pending.extend(d);
        }
        if !pending.is_empty() {
            match ct.flush_udp(&pending) {
                Ok(n) => {
                    metrics.udp_flows_flushed(n);
                    debug!(
                        flows = n,
                        pairs = pending.len(),
                        "UDP flows of departed backends flushed"
                    );
                    pending.clear();
                }
                Err(e) => warn!(error = %e, "UDP conntrack flush failed; retrying"),
            }
        }
        if Instant::now() >= next_gc {
            match ct.collect_garbage(now_s()) {
                Ok(r) => {
                    metrics.set_map(
                        proxy_common::map_names::CT4,
                        r.scanned - r.removed,
                        ct.capacity(),
                    );
                    metrics.conntrack_collected(r.removed);
                }
                Err(e) => warn!(error = %e, "conntrack garbage collection failed; retrying"),
            }
            next_gc = Instant::now() + every;
        }
    }
}
