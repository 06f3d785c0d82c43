//! When the table does not fit the maps: choose the frontends that do,
//! whole, and name the rest. The reconciler refuses a table that cannot fit,
//! so the daemon fits it first and reports what was left out.
use std::collections::BTreeSet;

use crate::{
    datapath::Capacity,
    model::{DesiredTable, FrontendKey},
};

/// A table that fits, and the names of the frontends left out of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fitted {
    pub table: DesiredTable,
    pub left_out: Vec<String>,
}

/// Frontends already programmed (`is_programmed`) go first, so a new
/// Service never evicts a running one; then the others in key order. Each
/// frontend is taken with all its backends or not at all.
pub fn fit_to_capacity(
    desired: DesiredTable,
    capacity: Capacity,
    is_programmed: impl Fn(&FrontendKey) -> bool,
) -> Fitted {
    let (programmed, new): (Vec<_>, Vec<_>) = desired
        .frontends
        .into_iter()
        .partition(|(k, _)| is_programmed(k));
    let mut fitted = Fitted::default();
    let (mut services, mut aff_match) = (0usize, 0usize);
    let mut backends = BTreeSet::new();
    for (key, spec) in programmed.into_iter().chain(new) {
        let slots = spec.backends.len();
        let new_backends = spec
            .backends
            .iter()
            .filter(|b| !backends.contains(*b))
            .collect::<BTreeSet<_>>()
            .len();
        let fits = services + 1 + slots <= capacity.services as usize
            && aff_match + slots <= capacity.aff_match as usize
            && backends.len() + new_backends <= capacity.backends as usize;
        if fits {
            services += 1 + slots;
            aff_match += slots;
            backends.extend(spec.backends.iter().copied());
            fitted.table.frontends.insert(key, spec);
        } else {
            fitted.left_out.push(spec.name);
        }
    }
    fitted
}
