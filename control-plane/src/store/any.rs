//! One type for whichever backend the server was started with.
use super::{EmbeddedStore, EtcdStore, EventStream, KeyValue, Page, Result, Revision, Store};

pub enum AnyStore {
    Embedded(EmbeddedStore),
    Etcd(Box<EtcdStore>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Embedded($s) => $call.await,
            AnyStore::Etcd($s) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn current_revision(&self) -> Result<Revision> {
        delegate!(self, s => s.current_revision())
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        delegate!(self, s => s.get(key))
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page> {
        delegate!(self, s => s.list(prefix, start_after, limit))
    }
    async fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Revision,
    ) -> Result<Page> {
        delegate!(self, s => s.list_at(prefix, start_after, limit, at))
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        delegate!(self, s => s.create(key, value))
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<KeyValue> {
        delegate!(self, s => s.update(key, value, expected))
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        delegate!(self, s => s.delete(key, expected))
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream> {
        delegate!(self, s => s.watch(prefix, after))
    }
    async fn compacted_revision(&self) -> Result<Revision> {
        delegate!(self, s => s.compacted_revision())
    }
    async fn compact(&self, through: Revision) -> Result<()> {
        delegate!(self, s => s.compact(through))
    }
}
