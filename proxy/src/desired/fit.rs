//! When the table does not fit the maps: choose the frontends that do,
//! whole, and name the rest. The reconciler refuses a table that cannot fit,
//! so the daemon fits it first and reports what was left out.
//!
//! Headroom: the reconciler writes a frontend's new entries before it
//! removes its stale ones, so a change needs room for the old and the new
//! version of one frontend at a time. The table is fitted into the capacity
//! minus the largest frontend's needs; a full map can then still change.
use std::collections::BTreeSet;

use crate::{
    datapath::Capacity,
    model::{DesiredTable, FrontendKey, FrontendSpec},
};

/// A table that fits, and what had to give.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fitted {
    pub table: DesiredTable,
    /// Frontends not programmed at all.
    pub left_out: Vec<String>,
    /// Programmed frontends whose new endpoints do not fit: they keep the
    /// endpoints they have.
    pub kept_previous: Vec<String>,
}

/// Entries one frontend needs: (service entries, affinity-match entries,
/// backends).
fn needs(spec: &FrontendSpec) -> (usize, usize, usize) {
    let slots = spec.backends.len();
    (1 + slots, slots, slots)
}

/// Frontends already programmed (`previous` knows their current spec) go
/// first, so a new Service never evicts a running one; a programmed one
/// whose new spec does not fit keeps its current one. Then the others in
/// key order. Each frontend is taken with all its backends or not at all.
pub fn fit_to_capacity(
    desired: DesiredTable,
    capacity: Capacity,
    previous: impl Fn(&FrontendKey) -> Option<FrontendSpec>,
) -> Fitted {
    let reserve = desired
        .frontends
        .values()
        .map(needs)
        .fold((0, 0, 0), |a, n| (a.0.max(n.0), a.1.max(n.1), a.2.max(n.2)));
    let room = (
        (capacity.services as usize).saturating_sub(reserve.0),
        (capacity.aff_match as usize).saturating_sub(reserve.1),
        (capacity.backends as usize).saturating_sub(reserve.2),
    );
    // The usual case, every sync: the whole table fits, and no frontend's
    // programmed state needs looking up.
    let slots = desired.slot_count();
    if desired.frontends.len() + slots <= room.0
        && slots <= room.1
        && desired.backend_count() <= room.2
    {
        return Fitted {
            table: desired,
            ..Fitted::default()
        };
    }
    let (programmed, new): (Vec<_>, Vec<_>) = desired
        .frontends
        .into_iter()
        .map(|(k, spec)| {
            let prev = previous(&k);
            (k, spec, prev)
        })
        .partition(|(_, _, prev)| prev.is_some());
    let mut fitted = Fitted::default();
    let (mut services, mut aff_match) = (0usize, 0usize);
    let mut backends = BTreeSet::new();
    let mut fits = |spec: &FrontendSpec| {
        let (s, a, _) = needs(spec);
        let added = spec
            .backends
            .iter()
            .filter(|b| !backends.contains(*b))
            .count();
        if services + s <= room.0 && aff_match + a <= room.1 && backends.len() + added <= room.2 {
            services += s;
            aff_match += a;
            backends.extend(spec.backends.iter().copied());
            true
        } else {
            false
        }
    };
    for (key, spec, prev) in programmed.into_iter().chain(new) {
        if fits(&spec) {
            fitted.table.frontends.insert(key, spec);
        } else if let Some(prev) = prev.filter(|p| fits(p)) {
            fitted.kept_previous.push(spec.name.clone());
            fitted.table.frontends.insert(
                key,
                FrontendSpec {
                    name: spec.name,
                    ..prev
                },
            );
        } else {
            fitted.left_out.push(spec.name);
        }
    }
    fitted
}
