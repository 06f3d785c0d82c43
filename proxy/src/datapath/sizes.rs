use proxy_common::map_names as names;

/// Interfaces [`names::IF_REDIRECT`] can name (pod interfaces that are
/// bridge ports).
pub const IF_REDIRECT_ENTRIES: u32 = 16 * 1024;

/// Map capacities, fixed when the maps are created (pinned maps keep theirs).
///
/// The services map holds a master entry per frontend plus one entry per
/// backend slot, so it is sized `frontends + backend_slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Frontends (Service IP, port, protocol).
    pub frontends: u32,
    /// Distinct backends (endpoint address, port, protocol).
    pub backends: u32,
    /// Sum over frontends of their backend counts (both slot ranges).
    pub backend_slots: u32,
    /// Conntrack entries (two per flow).
    pub conntrack: u32,
    /// Session-affinity entries (one per client and frontend).
    pub affinity: u32,
    /// Reverse-translation entries of the socket path, one per connected socket.
    pub sockets: u32,
    /// `loadBalancerSourceRanges` entries (one per frontend and CIDR).
    pub source_ranges: u32,
    /// Fragmented datagrams in flight.
    pub fragments: u32,
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
            source_ranges: 65_536,
            fragments: 8_192,
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
            source_ranges: 1024,
            fragments: 1024,
        }
    }

    /// What the reconciler may write.
    pub const fn capacity(&self) -> super::Capacity {
        super::Capacity {
            services: self.frontends + self.backend_slots,
            backends: self.backends,
            members: self.backend_slots,
            source_ranges: self.source_ranges,
        }
    }

    /// `max_entries` of every map, by map name (the node map always has one, the counters one per `STAT_*`).
    pub fn max_entries(&self) -> [(&'static str, u32); 12] {
        [
            (names::LB4_SERVICES, self.frontends + self.backend_slots),
            (names::LB4_BACKENDS, self.backends),
            (names::LB4_MEMBERS, self.backend_slots),
            (names::LB4_AFFINITY, self.affinity),
            (names::LB4_SOURCE_RANGES, self.source_ranges),
            (names::CT4, self.conntrack),
            (names::FRAG4, self.fragments),
            (names::NODE4, 1),
            (names::SOCK4_REVNAT, self.sockets),
            (names::SOCK4_FWD, self.sockets),
            (names::IF_REDIRECT, IF_REDIRECT_ENTRIES),
            (names::STATS4, proxy_common::stats::STAT_COUNT),
        ]
    }
}

/// The map-size flags of `switchyard attach` and the daemon.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct MapSizeArgs {
    /// Frontends the maps hold (Service IP, port and protocol each).
    #[arg(long, default_value_t = MapSizes::default().frontends)]
    pub max_frontends: u32,
    /// Distinct backends the maps hold.
    #[arg(long, default_value_t = MapSizes::default().backends)]
    pub max_backends: u32,
    /// Backend slots over all frontends.
    #[arg(long, default_value_t = MapSizes::default().backend_slots)]
    pub max_backend_slots: u32,
    /// Conntrack entries of the per-packet paths (two per flow).
    #[arg(long, default_value_t = MapSizes::default().conntrack)]
    pub max_conntrack: u32,
    /// Session-affinity entries.
    #[arg(long, default_value_t = MapSizes::default().affinity)]
    pub max_affinity: u32,
    /// Sockets the socket path remembers.
    #[arg(long, default_value_t = MapSizes::default().sockets)]
    pub max_sockets: u32,
    /// `loadBalancerSourceRanges` entries.
    #[arg(long, default_value_t = MapSizes::default().source_ranges)]
    pub max_source_ranges: u32,
    /// Fragmented datagrams tracked at once.
    #[arg(long, default_value_t = MapSizes::default().fragments)]
    pub max_fragments: u32,
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
            max_source_ranges: s.source_ranges,
            max_fragments: s.fragments,
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
            source_ranges: a.max_source_ranges,
            fragments: a.max_fragments,
        }
    }
}
