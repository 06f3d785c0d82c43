use proxy_common::map_names as names;

/// Map capacities, fixed when the maps are created (pinned maps keep theirs).
///
/// The services map holds a master entry per frontend plus one entry per
/// backend slot, so it is sized `frontends + backend_slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub frontends: u32,
    pub backends: u32,
    /// Sum over frontends of their backend counts.
    pub backend_slots: u32,
    pub conntrack: u32,
    pub affinity: u32,
    /// Reverse-translation entries of the socket path, one per connected socket.
    pub sockets: u32,
}

impl Default for MapSizes {
    /// At least 64k frontends, 256k backends and 1M conntrack entries.
    fn default() -> Self {
        Self {
            frontends: 65_536,
            backends: 262_144,
            backend_slots: 262_144,
            conntrack: 1_048_576,
            affinity: 262_144,
            sockets: 262_144,
        }
    }
}

impl MapSizes {
    /// Small maps for tests and demos.
    pub const fn small() -> Self {
        Self {
            frontends: 1024,
            backends: 4096,
            backend_slots: 4096,
            conntrack: 16_384,
            affinity: 4096,
            sockets: 4096,
        }
    }

    pub const fn capacity(&self) -> super::Capacity {
        super::Capacity {
            services: self.frontends + self.backend_slots,
            backends: self.backends,
            aff_match: self.backend_slots,
        }
    }

    /// `max_entries` of every map, by map name.
    pub fn max_entries(&self) -> [(&'static str, u32); 7] {
        [
            (names::LB4_SERVICES, self.frontends + self.backend_slots),
            (names::LB4_BACKENDS, self.backends),
            (names::LB4_AFF_MATCH, self.backend_slots),
            (names::LB4_AFFINITY, self.affinity),
            (names::CT4, self.conntrack),
            (names::SOCK4_REVNAT, self.sockets),
            (names::SOCK4_FWD, self.sockets),
        ]
    }
}
