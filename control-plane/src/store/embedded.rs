//! The default store: one redb file. Every commit is fsynced before the
//! write is acknowledged; the change log is a table written in the same
//! transaction as the object, so it survives crashes with it.
//!
//! Tables:
//! - `objects`: key → `create_rev (u64 BE) | mod_rev (u64 BE) | value`
//! - `log`: revision → encoded [`Event`]
//! - `meta`: `"revision"` (last committed), `"compacted"` (log forgotten
//!   through this revision)
use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use futures::StreamExt as _;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use super::{
    Error, Event, EventKind, EventStream, KeyValue, Page, Result, Revision, Store, WatchItem,
};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// Live events buffered per watcher before it is considered lagging.
const LIVE_BUFFER: usize = 16_384;

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Serialises commit + publish, so live events go out in revision order.
    writer: Arc<Mutex<()>>,
    live: broadcast::Sender<Arc<Event>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(OBJECTS).map_err(backend)?;
            txn.open_table(LOG).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Ok(Self {
            db: Arc::new(db),
            writer: Arc::new(Mutex::new(())),
            live,
        })
    }

    /// Runs a read-modify-write of one key in a single transaction on a
    /// blocking thread: `f` sees the current value and the next revision and
    /// returns the event to commit.
    async fn write<F>(&self, key: &str, f: F) -> Result<KeyValue>
    where
        F: FnOnce(Option<KeyValue>, Revision) -> Result<Event> + Send + 'static,
    {
        let (db, writer, live, key) = (
            Arc::clone(&self.db),
            Arc::clone(&self.writer),
            self.live.clone(),
            key.to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            let _serial = writer.lock().map_err(backend)?;
            let txn = db.begin_write().map_err(backend)?;
            let event = {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let rev = meta
                    .get(META_REVISION)
                    .map_err(backend)?
                    .map_or(0, |v| v.value())
                    + 1;
                let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
                let current = objects
                    .get(key.as_str())
                    .map_err(backend)?
                    .map(|v| decode_object(&key, v.value()))
                    .transpose()?;
                // What an update or delete replaced, for reading old revisions.
                let prev_mod_rev = current.as_ref().map(|kv| kv.mod_rev);
                let event = f(current, rev)?;
                match event.kind {
                    EventKind::Put => {
                        objects
                            .insert(key.as_str(), encode_object(&event.kv).as_slice())
                            .map_err(backend)?;
                    }
                    EventKind::Delete => {
                        objects.remove(key.as_str()).map_err(backend)?;
                    }
                }
                txn.open_table(LOG)
                    .map_err(backend)?
                    .insert(rev, encode_event(&event, prev_mod_rev).as_slice())
                    .map_err(backend)?;
                meta.insert(META_REVISION, rev).map_err(backend)?;
                event
            };
            txn.commit().map_err(backend)?;
            let kv = event.kv.clone();
            // No receiver is fine: nobody is watching.
            let _ = live.send(Arc::new(event));
            Ok(kv)
        })
        .await
        .map_err(backend)?
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T>> + Send {
        let db = Arc::clone(&self.db);
        async move {
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_read().map_err(backend)?;
                f(&txn)
            })
            .await
            .map_err(backend)?
        }
    }
}

fn meta_value(txn: &redb::ReadTransaction, name: &str) -> Result<u64> {
    let meta = txn.open_table(META).map_err(backend)?;
    Ok(meta.get(name).map_err(backend)?.map_or(0, |v| v.value()))
}

fn encode_object(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + kv.value.len());
    out.extend_from_slice(&kv.create_rev.to_be_bytes());
    out.extend_from_slice(&kv.mod_rev.to_be_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode_object(key: &str, raw: &[u8]) -> Result<KeyValue> {
    if raw.len() < 16 {
        return Err(Error::Backend(format!("object `{key}` is truncated")));
    }
    let rev = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    Ok(KeyValue {
        key: key.to_owned(),
        create_rev: rev(&raw[..8]),
        mod_rev: rev(&raw[8..16]),
        value: raw[16..].to_vec(),
    })
}

/// `kind (1) | key length (u32 BE) | key | [prev mod_rev (u64 BE)] |
/// prev length (u32 BE, u32::MAX for none) | prev | object encoding`.
/// Kinds 2 (put) and 3 (delete) carry the replaced value's `mod_rev`, which
/// [`Store::list_at`] needs; 0 and 1 are the older form without it.
fn encode_event(e: &Event, prev_mod_rev: Option<Revision>) -> Vec<u8> {
    let mut out = vec![match e.kind {
        EventKind::Put => 2,
        EventKind::Delete => 3,
    }];
    out.extend_from_slice(&(e.kv.key.len() as u32).to_be_bytes());
    out.extend_from_slice(e.kv.key.as_bytes());
    // 0: none (a create); revisions start at 1.
    out.extend_from_slice(&prev_mod_rev.unwrap_or(0).to_be_bytes());
    match &e.prev_value {
        Some(p) => {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        }
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
    out.extend_from_slice(&encode_object(&e.kv));
    out
}

/// An event and, for the newer form, the `mod_rev` of what it replaced.
fn decode_event(raw: &[u8]) -> Result<(Event, Option<Revision>)> {
    let bad = || Error::Backend("log entry is corrupt".into());
    let (kind, has_prev_rev) = match raw.first() {
        Some(0) => (EventKind::Put, false),
        Some(1) => (EventKind::Delete, false),
        Some(2) => (EventKind::Put, true),
        Some(3) => (EventKind::Delete, true),
        _ => return Err(bad()),
    };
    let u32_at = |at: usize| -> Result<u32> {
        let bytes = raw.get(at..at + 4).ok_or_else(bad)?;
        Ok(u32::from_be_bytes(bytes.try_into().map_err(|_| bad())?))
    };
    let len = u32_at(1)? as usize;
    let key = std::str::from_utf8(raw.get(5..5 + len).ok_or_else(bad)?).map_err(|_| bad())?;
    let mut at = 5 + len;
    let mut prev_mod_rev = None;
    if has_prev_rev {
        let bytes = raw.get(at..at + 8).ok_or_else(bad)?;
        let r = u64::from_be_bytes(bytes.try_into().map_err(|_| bad())?);
        prev_mod_rev = (r > 0).then_some(r);
        at += 8;
    }
    let prev_len = u32_at(at)?;
    at += 4;
    let prev_value = if prev_len == u32::MAX {
        None
    } else {
        let prev = raw
            .get(at..at + prev_len as usize)
            .ok_or_else(bad)?
            .to_vec();
        at += prev.len();
        Some(prev)
    };
    let kv = decode_object(key, raw.get(at..).ok_or_else(bad)?)?;
    Ok((
        Event {
            kind,
            kv,
            prev_value,
        },
        prev_mod_rev,
    ))
}

/// A page of the keys as they are in `txn`.
fn list_now(
    txn: &redb::ReadTransaction,
    prefix: &str,
    start_after: Option<&str>,
    limit: Option<usize>,
) -> Result<Page> {
    let revision = meta_value(txn, META_REVISION)?;
    let objects = txn.open_table(OBJECTS).map_err(backend)?;
    let end = prefix_end(prefix);
    let start = start_after.unwrap_or(prefix);
    let mut items = Vec::new();
    let mut more = false;
    for entry in objects.range(start..end.as_str()).map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        let key = k.value();
        if start_after == Some(key) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            more = true;
            break;
        }
        items.push(decode_object(key, v.value())?);
    }
    Ok(Page {
        items,
        revision,
        more,
    })
}

/// The smallest string greater than every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10ffff}")
}

impl Store for EmbeddedStore {
    async fn current_revision(&self) -> Result<Revision> {
        self.read(|txn| meta_value(txn, META_REVISION)).await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.read(move |txn| {
            let objects = txn.open_table(OBJECTS).map_err(backend)?;
            let value = objects.get(key.as_str()).map_err(backend)?;
            value.map(|v| decode_object(&key, v.value())).transpose()
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page> {
        let (prefix, start_after) = (prefix.to_owned(), start_after.map(str::to_owned));
        self.read(move |txn| list_now(txn, &prefix, start_after.as_deref(), limit))
            .await
    }

    async fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Revision,
    ) -> Result<Page> {
        let (prefix, start_after) = (prefix.to_owned(), start_after.map(str::to_owned));
        self.read(move |txn| {
            let current = meta_value(txn, META_REVISION)?;
            let compacted = meta_value(txn, META_COMPACTED)?;
            if at > current {
                return Err(Error::FutureRevision {
                    requested: at,
                    current,
                });
            }
            if at < compacted {
                return Err(Error::Compacted {
                    requested: at,
                    oldest: compacted,
                });
            }
            if at == current {
                return list_now(txn, &prefix, start_after.as_deref(), limit);
            }
            let in_range =
                |k: &str| k.starts_with(&prefix) && start_after.as_deref().is_none_or(|s| k > s);
            // The keys now, with every change after `at` undone, newest first.
            let objects = txn.open_table(OBJECTS).map_err(backend)?;
            let end = prefix_end(&prefix);
            let mut state = std::collections::BTreeMap::new();
            for entry in objects
                .range(start_after.as_deref().unwrap_or(&prefix)..end.as_str())
                .map_err(backend)?
            {
                let (k, v) = entry.map_err(backend)?;
                if in_range(k.value()) {
                    state.insert(k.value().to_owned(), decode_object(k.value(), v.value())?);
                }
            }
            let log = txn.open_table(LOG).map_err(backend)?;
            for entry in log.range(at + 1..).map_err(backend)?.rev() {
                let (rev, raw) = entry.map_err(backend)?;
                let (event, prev_mod_rev) = decode_event(raw.value())?;
                if !in_range(&event.kv.key) {
                    continue;
                }
                if event.is_create() {
                    state.remove(&event.kv.key);
                    continue;
                }
                // Log entries of the older form cannot be undone.
                let (Some(mod_rev), Some(value)) = (
                    prev_mod_rev,
                    match event.kind {
                        EventKind::Put => event.prev_value.clone(),
                        EventKind::Delete => Some(event.kv.value.clone()),
                    },
                ) else {
                    return Err(Error::Compacted {
                        requested: at,
                        oldest: rev.value(),
                    });
                };
                let kv = KeyValue {
                    key: event.kv.key.clone(),
                    value,
                    create_rev: event.kv.create_rev,
                    mod_rev,
                };
                state.insert(event.kv.key, kv);
            }
            let total = state.len();
            let items: Vec<KeyValue> = state
                .into_values()
                .take(limit.unwrap_or(usize::MAX))
                .collect();
            Ok(Page {
                more: items.len() < total,
                items,
                revision: at,
            })
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let owned = key.to_owned();
        self.write(key, move |current, rev| match current {
            Some(kv) => Err(Error::AlreadyExists { key: kv.key }),
            None => Ok(Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: owned,
                    value,
                    create_rev: rev,
                    mod_rev: rev,
                },
                prev_value: None,
            }),
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<KeyValue> {
        let owned = key.to_owned();
        self.write(key, move |current, rev| {
            let current = current.ok_or_else(|| Error::NotFound { key: owned.clone() })?;
            check_expected(&current, expected)?;
            Ok(Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: owned,
                    value,
                    create_rev: current.create_rev,
                    mod_rev: rev,
                },
                prev_value: Some(current.value),
            })
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let owned = key.to_owned();
        self.write(key, move |current, rev| {
            let current = current.ok_or_else(|| Error::NotFound { key: owned.clone() })?;
            check_expected(&current, expected)?;
            Ok(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    mod_rev: rev,
                    ..current
                },
                prev_value: None,
            })
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream> {
        // Subscribe before reading the log, so nothing falls between them.
        let live = BroadcastStream::new(self.live.subscribe());
        let replay_prefix = prefix.to_owned();
        let backlog = self
            .read(move |txn| {
                let compacted = meta_value(txn, META_COMPACTED)?;
                if after < compacted {
                    return Err(Error::Compacted {
                        requested: after,
                        oldest: compacted,
                    });
                }
                let log = txn.open_table(LOG).map_err(backend)?;
                let mut events = Vec::new();
                for entry in log.range(after + 1..).map_err(backend)? {
                    let (_, raw) = entry.map_err(backend)?;
                    let (event, _) = decode_event(raw.value())?;
                    events.push(if event.kv.key.starts_with(&replay_prefix) {
                        WatchItem::Event(Arc::new(event))
                    } else {
                        WatchItem::Progress(event.revision())
                    });
                }
                Ok(events)
            })
            .await?;
        let replayed_through = backlog.last().map_or(after, |i| match i {
            WatchItem::Event(e) => e.revision(),
            WatchItem::Progress(r) => *r,
        });
        let prefix = prefix.to_owned();
        let live = live.filter_map(move |item| {
            let out = match item {
                Ok(e) if e.revision() <= replayed_through => None,
                Ok(e) if e.kv.key.starts_with(&prefix) => Some(Ok(WatchItem::Event(e))),
                Ok(e) => Some(Ok(WatchItem::Progress(e.revision()))),
                // The watcher re-watches from its last revision and gets the
                // rest from the log.
                Err(BroadcastStreamRecvError::Lagged(_)) => Some(Err(Error::WatchLagged)),
            };
            std::future::ready(out)
        });
        Ok(Box::pin(
            futures::stream::iter(backlog.into_iter().map(Ok)).chain(live),
        ))
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.read(|txn| meta_value(txn, META_COMPACTED)).await
    }

    async fn compact(&self, through: Revision) -> Result<()> {
        let (db, writer) = (Arc::clone(&self.db), Arc::clone(&self.writer));
        tokio::task::spawn_blocking(move || {
            let _serial = writer.lock().map_err(backend)?;
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let already = meta
                    .get(META_COMPACTED)
                    .map_err(backend)?
                    .map_or(0, |v| v.value());
                if through <= already {
                    return Ok(());
                }
                let mut log = txn.open_table(LOG).map_err(backend)?;
                log.retain_in(..=through, |_, _| false).map_err(backend)?;
                meta.insert(META_COMPACTED, through).map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await
        .map_err(backend)?
    }
}

fn check_expected(current: &KeyValue, expected: Option<Revision>) -> Result<()> {
    match expected {
        Some(rev) if rev != current.mod_rev => Err(Error::Conflict {
            key: current.key.clone(),
            expected: rev,
            actual: current.mod_rev,
        }),
        _ => Ok(()),
    }
}
