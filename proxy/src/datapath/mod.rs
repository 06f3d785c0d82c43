//! The kernel seam: everything the reconciler writes or reads goes through
//! [`LbMaps`], with a real implementation on the pinned eBPF maps
//! ([`AyaLbMaps`]) and an in-memory one for tests ([`FakeLbMaps`],
//! [`FaultyLbMaps`]). Depending on the trait rather than on aya lets the
//! reconciler be tested without root, with injected failures.
use std::collections::BTreeSet;

use proxy_common::lb::{Lb4AffMatchKey, Lb4Backend, Lb4Key, Lb4Service};

mod aya_maps;
mod fake;
pub mod loader;
mod sizes;

pub use aya_maps::AyaLbMaps;
pub use fake::{FakeLbMaps, FaultyLbMaps, Inconsistency};
pub use sizes::{MapSizeArgs, MapSizes};

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("failed to {op} `{map}` entry {key}")]
    Write {
        op: &'static str,
        map: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read `{map}`")]
    Read {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("map `{map}` is missing from the eBPF object or pin directory")]
    Missing { map: &'static str },
    #[error("map `{map}` does not have the layout this version expects")]
    Layout {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

pub type Result<T, E = MapError> = std::result::Result<T, E>;

/// The load-balancing maps as the reconciler sees them.
///
/// Deletes of absent keys succeed, so every operation can be retried.
pub trait LbMaps {
    fn update_backend(&mut self, id: u32, backend: &Lb4Backend) -> Result<()>;
    fn delete_backend(&mut self, id: u32) -> Result<()>;
    fn update_service(&mut self, key: &Lb4Key, value: &Lb4Service) -> Result<()>;
    fn delete_service(&mut self, key: &Lb4Key) -> Result<()>;
    fn update_aff_match(&mut self, key: &Lb4AffMatchKey) -> Result<()>;
    fn delete_aff_match(&mut self, key: &Lb4AffMatchKey) -> Result<()>;

    /// Forgets the UDP flows the TC path tracks from frontend `rev_nat_id`
    /// to backend `backend_id`, for each pair: a UDP client whose backend
    /// left moves on with its next datagram, as kube-proxy's conntrack flush
    /// makes it. Returns how many conntrack entries went.
    fn flush_udp_flows(&mut self, pairs: &BTreeSet<(u32, u32)>) -> Result<usize>;

    fn dump_services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>>;
    fn dump_backends(&self) -> Result<Vec<(u32, Lb4Backend)>>;
    fn dump_aff_match(&self) -> Result<Vec<Lb4AffMatchKey>>;

    /// How many entries the maps the reconciler writes can hold.
    fn capacity(&self) -> Capacity;
}

/// `max_entries` of the maps the reconciler writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub services: u32,
    pub backends: u32,
    pub aff_match: u32,
}
