//! Packet counters of the per-packet paths: why a packet was dropped or
//! rejected there. [`crate::map_names::STATS4`] is a per-CPU array of `u64`
//! indexed by the `STAT_*` values; a reader sums each index over the CPUs.
//! (Cilium exports the same idea as `cilium_drop_count_total{reason}`.)

/// A new flow was dropped: no free reply tuple (every source-NAT port tried
/// was taken by a live flow).
pub const STAT_NO_FREE_TUPLE: u32 = 0;
/// A new flow to a backend on another node was dropped: the kernel has no
/// route to it.
pub const STAT_NO_ROUTE_TO_BACKEND: u32 = 1;
/// A new flow was dropped by `loadBalancerSourceRanges`.
pub const STAT_SOURCE_RANGE_DENIED: u32 = 2;
/// A new flow was rejected (ICMP port unreachable): the Service has no
/// endpoints.
pub const STAT_NO_ENDPOINTS: u32 = 3;
/// A new flow was dropped: the Service has endpoints, but its traffic
/// policy allows none of them for this packet.
pub const STAT_NO_ALLOWED_ENDPOINTS: u32 = 4;
/// A new flow was dropped: a slot named no backend (maps mid-update by a
/// writer that died).
pub const STAT_SLOT_WITHOUT_BACKEND: u32 = 5;
/// A packet could not be rewritten (the kernel refused the store).
pub const STAT_REWRITE_FAILED: u32 = 6;
/// Counters the array holds.
pub const STAT_COUNT: u32 = 7;

/// Each counter's name (the daemon's `reason` label), by index.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "no_free_tuple",
    "no_route_to_backend",
    "source_range_denied",
    "no_endpoints",
    "no_allowed_endpoints",
    "slot_without_backend",
    "rewrite_failed",
];
