//! Shared informers: one watch and one cache per resource type, fanned out
//! to every controller that needs it (client-go's SharedInformerFactory, on
//! kube-rs' `watcher` and `reflector::Store`).
//!
//! kube-rs' own shared streams (`reflect_shared`) pass on applied objects
//! only; controllers here also need deletions (a deleted pod must wake its
//! ReplicaSet), so each subscriber gets every *touched* object: applied,
//! deleted, and — after a re-list — those that vanished while the watch was
//! down (client-go's `DeletedFinalStateUnknown`).
//!
//! Objects reach subscribers only after the cache holds the change, so a
//! reconcile triggered by an event always finds at least that state.
use std::{
    collections::HashSet,
    fmt::Debug,
    sync::{Arc, Mutex},
};

use futures::{Stream, StreamExt as _, channel::mpsc};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::warn;

type Subscribers<K> = Arc<Mutex<Vec<mpsc::UnboundedSender<Result<K, watcher::Error>>>>>;

/// One resource type's watch, cache and subscribers.
pub struct Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store: Store<K>,
    subscribers: Subscribers<K>,
    /// True once the first list is in. (kube-rs' `Store::wait_until_ready`
    /// wakes only the last of several concurrent waiters.)
    listed: tokio::sync::watch::Receiver<bool>,
}

impl<K> Clone for Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            subscribers: Arc::clone(&self.subscribers),
            listed: self.listed.clone(),
        }
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching `api` (with `config`'s selectors) on the current
    /// tokio runtime. The watch retries with kube-rs' default backoff and
    /// runs for as long as the runtime does.
    pub fn spawn(api: Api<K>, config: watcher::Config) -> Self {
        let (store, mut writer) = reflector::store::<K>();
        let subscribers: Subscribers<K> = Arc::default();
        let subs = Arc::clone(&subscribers);
        let reader = store.clone();
        let kind = K::kind(&()).into_owned();
        let (listed_tx, listed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().boxed();
            // A re-list's objects, held until the cache swaps them in.
            let mut relist: Vec<K> = Vec::new();
            while let Some(event) = events.next().await {
                let event = match event {
                    // No controller reads managedFields; they are about half
                    // of an object's allocations in every clone below.
                    Ok(e) => e.modify(|o| o.meta_mut().managed_fields = None),
                    Err(e) => {
                        warn!(kind = %kind, error = %e, "watch failed; retrying");
                        continue;
                    }
                };
                tracing::trace!(kind = %kind, event = ?std::mem::discriminant(&event), "informer event");
                let mut touched: Vec<K> = Vec::new();
                match &event {
                    watcher::Event::Init => relist.clear(),
                    watcher::Event::InitApply(o) => relist.push(o.clone()),
                    watcher::Event::InitDone => {
                        let keep: HashSet<ObjectRef<K>> =
                            relist.iter().map(ObjectRef::from_obj).collect();
                        // Gone while the watch was down: their last state.
                        touched.extend(
                            reader
                                .state()
                                .into_iter()
                                .filter(|o| !keep.contains(&ObjectRef::from_obj(o.as_ref())))
                                .map(|o| o.as_ref().clone()),
                        );
                        touched.append(&mut relist);
                    }
                    watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                        tracing::debug!(kind = %kind, name = ?o.meta().name, "informer change");
                        touched.push(o.clone())
                    }
                }
                // Under the lock: a new subscriber sees either the state
                // before this event and then the event, or the state after.
                let mut subs = subs.lock().expect("informer subscribers");
                writer.apply_watcher_event(&event);
                if matches!(event, watcher::Event::InitDone) {
                    listed_tx.send_replace(true);
                }
                subs.retain(|tx| !tx.is_closed());
                for obj in touched {
                    for tx in subs.iter() {
                        let _ = tx.unbounded_send(Ok(obj.clone()));
                    }
                }
            }
        });
        Self {
            store,
            subscribers,
            listed,
        }
    }

    /// The cache (possibly behind the server; never ahead of it).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Waits for the first complete list.
    pub async fn ready(&self) {
        let mut listed = self.listed.clone();
        let _ = listed.wait_for(|l| *l).await;
    }

    /// Every object the cache holds now, then every touched object from
    /// here on (applied, deleted, or vanished during a re-list).
    pub fn subscribe(&self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded();
        let mut subs = self.subscribers.lock().expect("informer subscribers");
        for obj in self.store.state() {
            let _ = tx.unbounded_send(Ok(obj.as_ref().clone()));
        }
        subs.push(tx);
        rx
    }
}
