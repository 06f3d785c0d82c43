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
    /// What to program.
    pub table: DesiredTable,
    /// Frontends not programmed at all.
    pub left_out: Vec<String>,
    /// Programmed frontends whose new endpoints do not fit: they keep the
    /// endpoints they have.
    pub kept_previous: Vec<String>,
}

/// Entries one frontend needs: (service entries, memberships, backends,
/// source ranges).
fn needs(spec: &FrontendSpec) -> [usize; 4] {
    let members = spec.all_backends().count();
    [
        1 + spec.slot_count(),
        members,
        members,
        spec.source_ranges.len(),
    ]
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
        .fold([0; 4], |a, n| std::array::from_fn(|i| a[i].max(n[i])));
    let room = [
        (capacity.services as usize).saturating_sub(reserve[0]),
        (capacity.members as usize).saturating_sub(reserve[1]),
        (capacity.backends as usize).saturating_sub(reserve[2]),
        (capacity.source_ranges as usize).saturating_sub(reserve[3]),
    ];
    // The usual case, every sync: the whole table fits, and no frontend's
    // programmed state needs looking up.
    if desired.frontends.len() + desired.slot_count() <= room[0]
        && desired.member_count() <= room[1]
        && desired.backend_count() <= room[2]
        && desired.source_range_count() <= room[3]
    {
        return Fitted {
            table: desired,
            ..Fitted::default()
        };
    }
    let node = desired.node;
    let (programmed, new): (Vec<_>, Vec<_>) = desired
        .frontends
        .into_iter()
        .map(|(k, spec)| {
            let prev = previous(&k);
            (k, spec, prev)
        })
        .partition(|(_, _, prev)| prev.is_some());
    let mut fitted = Fitted::default();
    fitted.table.node = node;
    let (mut services, mut members, mut ranges) = (0usize, 0usize, 0usize);
    let mut backends = BTreeSet::new();
    let mut fits = |spec: &FrontendSpec| {
        let [s, m, _, r] = needs(spec);
        let added = spec
            .all_backends()
            .filter(|b| !backends.contains(*b))
            .count();
        if services + s <= room[0]
            && members + m <= room[1]
            && backends.len() + added <= room[2]
            && ranges + r <= room[3]
        {
            services += s;
            members += m;
            ranges += r;
            backends.extend(spec.all_backends().copied());
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
