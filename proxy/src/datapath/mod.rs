//! The kernel seam: everything the reconciler writes or reads goes through
//! [`LbMaps`], with a real implementation on the pinned eBPF maps
//! ([`AyaLbMaps`]) and an in-memory one for tests ([`FakeLbMaps`],
//! [`FaultyLbMaps`]). Depending on the trait rather than on aya lets the
//! reconciler be tested without root, with injected failures.
use std::collections::BTreeSet;

use proxy_common::{
    config::Node4Config,
    lb::{Lb4Backend, Lb4Key, Lb4MemberKey, Lb4Service},
};

use crate::model::{BackendId, FrontendId, Ipv4Cidr};

mod aya_maps;
#[allow(unsafe_code)]
mod batch;
pub mod conntrack;
pub mod drops;
mod fake;
pub mod loader;
pub mod lock;
pub mod migrate;
mod sizes;
pub mod sockets;

pub use aya_maps::AyaLbMaps;
pub use fake::{FakeLbMaps, FaultyLbMaps, Inconsistency};
pub use sizes::{MapSizeArgs, MapSizes};

/// A failed map operation, naming the map and the entry.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// An update or delete failed.
    #[error("failed to {op} `{map}` entry {key}")]
    Write {
        /// `update`, `delete`, `flush` or `unpin`.
        op: &'static str,
        /// The map's pinned name.
        map: &'static str,
        /// The entry, as `Debug` prints it.
        key: String,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// Reading (iterating) a map failed.
    #[error("failed to read `{map}`")]
    Read {
        /// The map's pinned name.
        map: &'static str,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The map is neither in the object nor pinned.
    #[error("map `{map}` is missing from the eBPF object or pin directory")]
    Missing {
        /// The map's pinned name.
        map: &'static str,
    },
    /// Every ID of a map's ID space is taken (4 billion: a corrupt map).
    #[error("no free ID is left for `{map}`")]
    IdsExhausted {
        /// The map whose IDs ran out.
        map: &'static str,
    },
    /// The map's type, key or value size is not this version's.
    #[error("map `{map}` does not have the layout this version expects")]
    Layout {
        /// The map's pinned name.
        map: &'static str,
        /// What aya said.
        #[source]
        source: aya::maps::MapError,
    },
}

/// Result of map operations.
pub type Result<T, E = MapError> = std::result::Result<T, E>;

/// One `loadBalancerSourceRanges` entry: a frontend ID and a CIDR.
pub type SourceRange = (FrontendId, Ipv4Cidr);

/// The load-balancing maps as the reconciler sees them.
///
/// Deletes of absent keys succeed, so every operation can be retried.
pub trait LbMaps {
    /// Writes backend `id`.
    fn update_backend(&mut self, id: BackendId, backend: &Lb4Backend) -> Result<()>;
    /// Deletes backend `id`.
    fn delete_backend(&mut self, id: BackendId) -> Result<()>;
    /// Writes one frontend slot (or its master entry).
    fn update_service(&mut self, key: &Lb4Key, value: &Lb4Service) -> Result<()>;
    /// Deletes one frontend slot (or its master entry).
    fn delete_service(&mut self, key: &Lb4Key) -> Result<()>;
    /// Records that a backend belongs to a frontend, in the slot ranges
    /// `ranges` (`MEMBER_*` bits).
    fn update_member(&mut self, key: &Lb4MemberKey, ranges: u8) -> Result<()>;
    /// Forgets that a backend belongs to a frontend.
    fn delete_member(&mut self, key: &Lb4MemberKey) -> Result<()>;
    /// Allows a source network to use a frontend.
    fn update_source_range(&mut self, range: &SourceRange) -> Result<()>;
    /// Withdraws a source network from a frontend.
    fn delete_source_range(&mut self, range: &SourceRange) -> Result<()>;
    /// Writes what the programs know of the node.
    fn set_node(&mut self, node: &Node4Config) -> Result<()>;

    /// Writes backends in order, as one `BPF_MAP_UPDATE_BATCH` where the
    /// maps have it (the default writes them one by one). Returns how many
    /// were written: on an error, those before it and none after.
    fn update_backends(&mut self, entries: &[(BackendId, Lb4Backend)]) -> (usize, Result<()>) {
        one_by_one(entries, |(id, b)| self.update_backend(*id, b))
    }
    /// Writes frontend slots and master entries in order, as
    /// [`Self::update_backends`] does backends.
    fn update_services(&mut self, entries: &[(Lb4Key, Lb4Service)]) -> (usize, Result<()>) {
        one_by_one(entries, |(k, v)| self.update_service(k, v))
    }
    /// Writes memberships in order, as [`Self::update_backends`] does
    /// backends.
    fn update_members(&mut self, entries: &[(Lb4MemberKey, u8)]) -> (usize, Result<()>) {
        one_by_one(entries, |(k, bits)| self.update_member(k, *bits))
    }

    /// Forgets the UDP flows the per-packet paths track from
    /// a frontend to a backend, for each (frontend, backend) pair: a UDP
    /// client whose backend left moves on with its next datagram, as
    /// kube-proxy's conntrack flush makes it. Returns how many conntrack
    /// entries went; a scan that cannot finish is an error (the pairs are
    /// then flushed again by the next pass).
    fn flush_udp_flows(&mut self, pairs: &BTreeSet<(FrontendId, BackendId)>) -> Result<usize>;

    /// Every frontend slot.
    fn dump_services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>>;
    /// Every backend.
    fn dump_backends(&self) -> Result<Vec<(BackendId, Lb4Backend)>>;
    /// Every membership, with its `MEMBER_*` bits.
    fn dump_members(&self) -> Result<Vec<(Lb4MemberKey, u8)>>;
    /// Every source range.
    fn dump_source_ranges(&self) -> Result<Vec<SourceRange>>;
    /// The node entry.
    fn node(&self) -> Result<Node4Config>;

    /// How many entries the maps the reconciler writes can hold.
    fn capacity(&self) -> Capacity;
}

/// Applies `write` to each entry until one fails: how many succeeded, and
/// the failure.
pub fn one_by_one<T>(
    entries: &[T],
    mut write: impl FnMut(&T) -> Result<()>,
) -> (usize, Result<()>) {
    for (done, e) in entries.iter().enumerate() {
        if let Err(err) = write(e) {
            return (done, Err(err));
        }
    }
    (entries.len(), Ok(()))
}

/// `max_entries` of the maps the reconciler writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Frontend master entries plus backend slots.
    pub services: u32,
    /// Backends.
    pub backends: u32,
    /// (frontend, backend) memberships.
    pub members: u32,
    /// `loadBalancerSourceRanges` entries.
    pub source_ranges: u32,
}

/// Opens map `name` pinned in `pin_dir`.
fn open_pinned(pin_dir: &std::path::Path, name: &'static str) -> Result<aya::maps::Map> {
    let data = aya::maps::MapData::from_pin(pin_dir.join(name))
        .map_err(|_| MapError::Missing { map: name })?;
    aya::maps::Map::from_map_data(data).map_err(|source| MapError::Layout { map: name, source })
}
