//! The finalizers a delete's `propagationPolicy` is recorded with. The API
//! server only records it (the object gets a deletionTimestamp and the
//! finalizer, upstream's `deletionFinalizersForGarbageCollection`); the
//! garbage-collector controller (`controllers::gc`) does the work:
//!
//! - `Background` (the default): the owner goes at once; its dependents
//!   are deleted once the collector sees them without a live owner;
//! - `Foreground`: the owner waits with [`FOREGROUND`] until its dependents
//!   with `blockOwnerDeletion` are gone;
//! - `Orphan`: the owner waits with [`ORPHAN`] until its dependents no
//!   longer name it.

/// Upstream's `metav1.FinalizerDeleteDependents`.
pub(super) const FOREGROUND: &str = "foregroundDeletion";
/// Upstream's `metav1.FinalizerOrphanDependents`.
pub(super) const ORPHAN: &str = "orphan";
