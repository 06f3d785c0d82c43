//! The store on etcd v3, for users who outgrow one machine: etcd's own
//! revision is the resourceVersion, writes are transactions comparing the
//! key's revision, and watches are etcd watches with previous values and
//! progress notifications. Keys live under a prefix of our own; never share
//! it with a real API server's keys.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, KvClient, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt as _;

use super::{
    Error, Event, EventKind, EventStream, KeyValue, Page, Result, Revision, Store, WatchItem,
};

/// Keys read per etcd range request.
const ETCD_BATCH: usize = 500;
/// Largest response accepted: a batch of objects at etcd's 1.5 MiB request cap.
const MAX_RESPONSE: usize = ETCD_BATCH * 3 * 1024 * 1024 / 2;

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(format!("etcd: {e}"))
}

pub struct EtcdStore {
    client: Client,
    /// Reads and transactions, with responses allowed past gRPC's 4 MiB.
    kv_client: KvClient,
    /// Prepended to every key in etcd.
    prefix: String,
    /// Highest revision this process compacted through (etcd does not say).
    compacted: Arc<AtomicU64>,
}

/// The first key after every key starting with `p`.
fn range_end(p: &str) -> Vec<u8> {
    let mut end = p.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn rev(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

impl EtcdStore {
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        let client = Client::connect(endpoints, None).await.map_err(backend)?;
        let kv_client = client.kv_client().max_decoding_message_size(MAX_RESPONSE);
        Ok(Self {
            client,
            kv_client,
            prefix: prefix.trim_end_matches('/').to_owned(),
            compacted: Arc::default(),
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn ours(&self, raw: &[u8]) -> String {
        String::from_utf8_lossy(raw)
            .strip_prefix(&self.prefix)
            .unwrap_or_default()
            .to_owned()
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: self.ours(kv.key()),
            value: kv.value().to_vec(),
            create_rev: rev(kv.create_revision()),
            mod_rev: rev(kv.mod_revision()),
        }
    }

    /// Runs `then` if `key` passes `guard`, else reads it to say why not.
    async fn guarded(
        &self,
        key: &str,
        guard: Compare,
        then: TxnOp,
    ) -> Result<std::result::Result<(Revision, TxnOpResponse), Option<KeyValue>>> {
        let k = self.key(key);
        let txn = Txn::new()
            .when([guard])
            .and_then([then])
            .or_else([TxnOp::get(k, None)]);
        let resp = self.kv_client.clone().txn(txn).await.map_err(backend)?;
        let revision = rev(resp
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision));
        let mut ops = resp.op_responses().into_iter();
        if resp.succeeded() {
            return Ok(Ok((
                revision,
                ops.next()
                    .ok_or_else(|| backend("empty transaction response"))?,
            )));
        }
        let current = match ops.next() {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| self.kv(kv)),
            _ => None,
        };
        Ok(Err(current))
    }

    /// Keys under `prefix` after `start_after`, at most `limit`, read at
    /// revision `at` (0: the current one), in batches all at one revision.
    async fn list_from(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Revision,
    ) -> Result<Page> {
        let full = self.key(prefix);
        let mut start = match start_after {
            Some(s) => format!("{}\0", self.key(s)),
            None => full.clone(),
        };
        // gRPC caps a response at 4 MiB: read at most a batch per request,
        // every batch at the first one's revision, until `limit` or the end.
        let mut page = Page {
            items: Vec::new(),
            revision: at,
            more: false,
        };
        loop {
            let want = limit.map_or(ETCD_BATCH, |l| (l - page.items.len()).min(ETCD_BATCH));
            let mut opts = GetOptions::new()
                .with_range(range_end(&full))
                .with_limit(want as i64);
            if page.revision > 0 {
                opts = opts.with_revision(page.revision as i64);
            }
            let resp = self
                .kv_client
                .clone()
                .get(start.clone(), Some(opts))
                .await
                .map_err(backend)?;
            if page.revision == 0 {
                page.revision = rev(resp
                    .header()
                    .map_or(0, etcd_client::ResponseHeader::revision));
            }
            page.items.extend(resp.kvs().iter().map(|kv| self.kv(kv)));
            page.more = resp.more();
            let Some(last) = resp.kvs().last() else {
                return Ok(page);
            };
            if !page.more || limit.is_some_and(|l| page.items.len() >= l) {
                return Ok(page);
            }
            start = format!("{}\0", String::from_utf8_lossy(last.key()));
        }
    }

    fn precondition(&self, key: &str, expected: Option<Revision>) -> Compare {
        let k = self.key(key);
        match expected {
            Some(r) => Compare::mod_revision(k, CompareOp::Equal, r as i64),
            None => Compare::create_revision(k, CompareOp::Greater, 0),
        }
    }

    fn refusal(key: &str, expected: Option<Revision>, current: Option<KeyValue>) -> Error {
        match current {
            None => Error::NotFound {
                key: key.to_owned(),
            },
            Some(kv) => Error::Conflict {
                key: key.to_owned(),
                expected: expected.unwrap_or(0),
                actual: kv.mod_rev,
            },
        }
    }
}

impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision> {
        let opts = GetOptions::new().with_count_only();
        let resp = self
            .kv_client
            .clone()
            .get(self.key("/"), Some(opts))
            .await
            .map_err(backend)?;
        Ok(rev(resp
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision)))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .kv_client
            .clone()
            .get(self.key(key), None)
            .await
            .map_err(backend)?;
        Ok(resp.kvs().first().map(|kv| self.kv(kv)))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page> {
        self.list_from(prefix, start_after, limit, 0).await
    }

    async fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Revision,
    ) -> Result<Page> {
        match self.list_from(prefix, start_after, limit, at).await {
            Err(Error::Backend(e)) if e.contains("required revision has been compacted") => {
                Err(Error::Compacted {
                    requested: at,
                    oldest: self.compacted.load(Ordering::Relaxed),
                })
            }
            Err(Error::Backend(e)) if e.contains("required revision is a future revision") => {
                Err(Error::FutureRevision {
                    requested: at,
                    current: self.current_revision().await?,
                })
            }
            other => other,
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let guard = Compare::create_revision(self.key(key), CompareOp::Equal, 0);
        match self
            .guarded(key, guard, TxnOp::put(self.key(key), value.clone(), None))
            .await?
        {
            Ok((r, _)) => Ok(KeyValue {
                key: key.to_owned(),
                value,
                create_rev: r,
                mod_rev: r,
            }),
            Err(_) => Err(Error::AlreadyExists {
                key: key.to_owned(),
            }),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<KeyValue> {
        let put = TxnOp::put(
            self.key(key),
            value.clone(),
            Some(PutOptions::new().with_prev_key()),
        );
        match self
            .guarded(key, self.precondition(key, expected), put)
            .await?
        {
            Ok((r, TxnOpResponse::Put(p))) => {
                let create_rev = p.prev_key().map_or(r, |kv| rev(kv.create_revision()));
                Ok(KeyValue {
                    key: key.to_owned(),
                    value,
                    create_rev,
                    mod_rev: r,
                })
            }
            Ok(_) => Err(backend("unexpected transaction response")),
            Err(current) => Err(Self::refusal(key, expected, current)),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let del = TxnOp::delete(self.key(key), Some(DeleteOptions::new().with_prev_key()));
        match self
            .guarded(key, self.precondition(key, expected), del)
            .await?
        {
            Ok((r, TxnOpResponse::Delete(d))) => {
                let prev =
                    d.prev_kvs()
                        .first()
                        .map(|kv| self.kv(kv))
                        .ok_or_else(|| Error::NotFound {
                            key: key.to_owned(),
                        })?;
                Ok(KeyValue { mod_rev: r, ..prev })
            }
            Ok(_) => Err(backend("unexpected transaction response")),
            Err(current) => Err(Self::refusal(key, expected, current)),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after as i64 + 1)
            .with_prev_key()
            .with_progress_notify();
        let mut stream = self
            .client
            .clone()
            .watch(self.key(prefix), Some(opts))
            .await
            .map_err(backend)?;
        // The first response says whether the start revision is still there.
        if let Some(first) = stream.message().await.map_err(backend)?
            && first.canceled()
            && first.compact_revision() > 0
        {
            return Err(Error::Compacted {
                requested: after,
                oldest: rev(first.compact_revision()),
            });
        }
        let this = Self {
            client: self.client.clone(),
            kv_client: self.kv_client.clone(),
            prefix: self.prefix.clone(),
            compacted: Arc::clone(&self.compacted),
        };
        let items = stream.flat_map(move |resp| {
            let out: Vec<Result<WatchItem>> = match resp {
                Err(e) => vec![Err(backend(e))],
                Ok(r) if r.canceled() && r.compact_revision() > 0 => {
                    vec![Err(Error::Compacted {
                        requested: after,
                        oldest: rev(r.compact_revision()),
                    })]
                }
                Ok(r) if r.events().is_empty() => {
                    vec![Ok(WatchItem::Progress(rev(r
                        .header()
                        .map_or(0, etcd_client::ResponseHeader::revision))))]
                }
                Ok(r) => r
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let kv = e.kv()?;
                        let prev = e.prev_kv().map(|p| this.kv(p));
                        let event = match e.event_type() {
                            EventType::Put => Event {
                                kind: EventKind::Put,
                                kv: this.kv(kv),
                                prev_value: prev.map(|p| p.value),
                            },
                            EventType::Delete => {
                                let last = prev?;
                                Event {
                                    kind: EventKind::Delete,
                                    kv: KeyValue {
                                        mod_rev: rev(kv.mod_revision()),
                                        ..last
                                    },
                                    prev_value: None,
                                }
                            }
                        };
                        Some(Ok(WatchItem::Event(Arc::new(event))))
                    })
                    .collect(),
            };
            futures::stream::iter(out)
        });
        Ok(Box::pin(items))
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.compacted.load(Ordering::Relaxed))
    }

    async fn compact(&self, through: Revision) -> Result<()> {
        if through <= self.compacted.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.client.clone().compact(through as i64, None).await {
            Ok(_) => {}
            // Already compacted further (by us or an operator): fine.
            Err(e) if e.to_string().contains("compacted") => {}
            Err(e) => return Err(backend(e)),
        }
        self.compacted.fetch_max(through, Ordering::Relaxed);
        Ok(())
    }
}
