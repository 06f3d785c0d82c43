//! Storage for the API server, shaped like etcd's MVCC key-value API so that
//! the embedded backend and etcd are interchangeable:
//!
//! - one global, monotonic revision: every committed write gets the next one,
//!   and an object's `resourceVersion` is the revision of its last write;
//! - writes are compare-and-swap on that revision (optimistic concurrency);
//! - a change log replayable from any revision not yet compacted, which
//!   feeds watches; asking for a compacted revision is [`Error::Compacted`]
//!   (HTTP 410 `Expired` upstream).
//!
//! Values are opaque bytes (the API layer stores JSON); the store never
//! parses them.
use std::{future::Future, pin::Pin, sync::Arc};

use futures::Stream;

mod any;
mod embedded;
mod etcd;

pub use any::AnyStore;
pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

/// A global store revision; `resourceVersion` on the wire.
pub type Revision = u64;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("key `{key}` already exists")]
    AlreadyExists { key: String },
    #[error("key `{key}` not found")]
    NotFound { key: String },
    #[error("key `{key}` is at revision {actual}, not {expected}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("revision {requested} has been compacted (oldest available: {oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("revision {requested} is in the future (current: {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("watch fell too far behind the store and was ended")]
    WatchLagged,
    #[error("storage backend: {0}")]
    Backend(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stored value and the revisions that describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_rev: Revision,
    /// Revision of the last write to the key.
    pub mod_rev: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created (`create_rev == mod_rev`) or updated.
    Put,
    /// The key was deleted; the event carries its last value.
    Delete,
}

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For `Put`, the new value; for `Delete`, the last value before the
    /// delete, with `mod_rev` set to the delete's revision (what a watcher
    /// resumes from).
    pub kv: KeyValue,
    /// For an update, the value it replaced: a watch with a selector needs it
    /// to tell an object leaving the selection from one that never was in it.
    pub prev_value: Option<Vec<u8>>,
}

/// What a watch stream yields.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// A change under the watched prefix.
    Event(Arc<Event>),
    /// The store has committed through this revision with nothing more under
    /// the prefix: a safe resume point (a bookmark).
    Progress(Revision),
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_rev
    }

    pub fn is_create(&self) -> bool {
        self.kind == EventKind::Put && self.kv.create_rev == self.kv.mod_rev
    }
}

/// A page of keys under a prefix, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<KeyValue>,
    /// The store revision the page was read at.
    pub revision: Revision,
    /// Whether keys remain after the last item.
    pub more: bool,
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<WatchItem>> + Send>>;

/// The storage seam. Implementations: [`EmbeddedStore`] (one redb file) and,
/// for users who outgrow one machine, etcd.
pub trait Store: Send + Sync + 'static {
    fn current_revision(&self) -> impl Future<Output = Result<Revision>> + Send;

    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>>> + Send;

    /// Keys under `prefix` in key order, starting after `start_after`, at
    /// most `limit` of them (all when `None`).
    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> impl Future<Output = Result<Page>> + Send;

    /// Like [`Store::list`], as the keys were at revision `at`: a consistent
    /// page of an older state. [`Error::Compacted`] if that revision's
    /// history is gone, [`Error::FutureRevision`] if it is not reached yet.
    fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Revision,
    ) -> impl Future<Output = Result<Page>> + Send;

    /// Creates `key`; [`Error::AlreadyExists`] if it exists.
    fn create(&self, key: &str, value: Vec<u8>) -> impl Future<Output = Result<KeyValue>> + Send;

    /// Replaces `key`'s value if its `mod_rev` is `expected` (any, if `None`).
    fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> impl Future<Output = Result<KeyValue>> + Send;

    /// Deletes `key` if its `mod_rev` is `expected` (any, if `None`);
    /// returns the deleted value with `mod_rev` = the delete's revision.
    fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> impl Future<Output = Result<KeyValue>> + Send;

    /// Every change under `prefix` with a revision above `after`, in order:
    /// first from the log, then live, with [`WatchItem::Progress`] for
    /// commits elsewhere. If changes after `after` are no longer all in the
    /// log, fails with [`Error::Compacted`] — at once, or (etcd) as the
    /// stream's first item.
    fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> impl Future<Output = Result<EventStream>> + Send;

    /// The revision through which the change log has been forgotten.
    fn compacted_revision(&self) -> impl Future<Output = Result<Revision>> + Send;

    /// Forgets the change log up to and including `through`.
    fn compact(&self, through: Revision) -> impl Future<Output = Result<()>> + Send;
}
