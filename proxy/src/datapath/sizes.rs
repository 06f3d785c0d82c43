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

/// The map-size flags of `switchyard attach` and the daemon.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct MapSizeArgs {
    #[arg(long, default_value_t = MapSizes::default().frontends)]
    pub max_frontends: u32,
    #[arg(long, default_value_t = MapSizes::default().backends)]
    pub max_backends: u32,
    #[arg(long, default_value_t = MapSizes::default().backend_slots)]
    pub max_backend_slots: u32,
    #[arg(long, default_value_t = MapSizes::default().conntrack)]
    pub max_conntrack: u32,
    #[arg(long, default_value_t = MapSizes::default().affinity)]
    pub max_affinity: u32,
    #[arg(long, default_value_t = MapSizes::default().sockets)]
    pub max_sockets: u32,
}

impl Default for MapSizeArgs {
    fn default() -> Self {
        MapSizes::default().into()
    }
}

impl From<MapSizes> for MapSizeArgs {
    fn from(s: MapSizes) -> Self {
        Self {
            max_frontends: s.frontends,
            max_backends: s.backends,
            max_backend_slots: s.backend_slots,
            max_conntrack: s.conntrack,
            max_affinity: s.affinity,
            max_sockets: s.sockets,
        }
    }
}

impl From<MapSizeArgs> for MapSizes {
    fn from(a: MapSizeArgs) -> Self {
        Self {
            frontends: a.max_frontends,
            backends: a.max_backends,
            backend_slots: a.max_backend_slots,
            conntrack: a.max_conntrack,
            affinity: a.max_affinity,
            sockets: a.max_sockets,
        }
    }
}
