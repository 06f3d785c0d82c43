//! The garbage collector (upstream's `garbage-collector-controller`): keeps
//! `ownerReferences` true for every resource the API server serves.
//!
//! Discovery (repeated every 30 s, so new CRDs are picked up) finds every
//! resource that can be listed, watched, patched and deleted (Events left
//! out, as upstream does); each gets a watch whose objects, reduced to
//! their metadata, feed one shared [`graph::Graph`] (who owns whom, by uid)
//! and a kube-rs `runtime::Controller` for that resource. A change in the
//! graph wakes the objects it concerns in whatever resource they live:
//! an object gone wakes its dependents and the owners waiting for it; an
//! owner entering foreground deletion wakes its dependents.
//!
//! A reconcile of one object does upstream's work:
//! - **orphan** (`orphan` finalizer on an object being deleted, from
//!   `propagationPolicy: Orphan`): its uid is removed from each dependent's
//!   `ownerReferences`, then the finalizer;
//! - **foreground** (`foregroundDeletion` finalizer): the finalizer is
//!   removed once no dependent with `blockOwnerDeletion` is left; the
//!   dependents themselves are deleted by their own reconcile;
//! - **dependents**: an object whose owners are all gone (checked with a
//!   live read, as the graph may lag) or waiting is deleted — in the
//!   foreground when an owner waits for it and it has dependents of its
//!   own, else in the background; one that still has a live owner only
//!   loses its references to the gone or waiting ones.
//!
//! Nothing is synced until every watched resource has delivered its first
//! full list (or [`FIRST_LIST_GRACE`] has passed): a graph missing
//! dependents would orphan too few of them and let foreground owners go
//! first.
//!
//! The API server only records the policy (finalizers, deletionTimestamp);
//! everything above happens here.
pub mod graph;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt as _, channel::mpsc};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, Preconditions},
    discovery::{ApiResource, Discovery, Scope, verbs},
    runtime::{
        WatchStreamExt as _,
        controller::{Action, Config, Controller},
        reflector::{ObjectRef, store::Writer},
        watcher,
    },
};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use self::graph::{FOREGROUND, Graph, Node, ORPHAN, OwnerState, Verdict};
use super::{Backoff, Error, Result, Shared};
use crate::client;

/// How often discovery runs again to find new resources (upstream's
/// garbage collector re-syncs its monitors every 30 s).
const DISCOVERY_PERIOD: Duration = Duration::from_secs(30);

/// How long a resource whose first list keeps failing may hold back every
/// sync (upstream also gives up waiting for its monitors after a while).
const FIRST_LIST_GRACE: Duration = Duration::from_secs(60);

/// A resource the API server serves: how to reach it, whether namespaced.
#[derive(Clone, Debug)]
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

struct Gc {
    client: Client,
    graph: Mutex<Graph>,
    /// (apiVersion, kind) → resource, every served version.
    kinds: RwLock<HashMap<(String, String), Kind>>,
    /// Wakes an object in its resource's Controller.
    triggers: Mutex<HashMap<ApiResource, mpsc::UnboundedSender<ObjectRef<DynamicObject>>>>,
    backoff: Backoff<(String, String)>,
    workers: u16,
    /// Watches that have not delivered their first full list. Until they
    /// have, the graph may miss dependents: orphaning would skip them (and
    /// they would then be deleted as dangling) and a foreground owner
    /// could go before them. So nothing is synced meanwhile, as upstream's
    /// collector waits for every monitor's cache.
    unsynced: AtomicUsize,
}

impl Gc {
    /// Counts one watch's first list as done (once per `flag`).
    fn first_list_done(&self, flag: &AtomicBool) {
        if !flag.swap(true, Ordering::SeqCst) {
            self.unsynced.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

struct Ctx {
    gc: Arc<Gc>,
    kind: Kind,
}

/// Runs the garbage collector with `workers` concurrent syncs per resource
/// (`--concurrent-gc-syncs`).
pub async fn run(shared: Arc<Shared>, workers: u16) -> anyhow::Result<()> {
    let gc = Arc::new(Gc {
        client: shared.client.clone(),
        graph: Mutex::default(),
        kinds: RwLock::default(),
        triggers: Mutex::default(),
        backoff: Backoff::new(Duration::from_millis(5), Duration::from_secs(300)),
        workers: workers.max(1),
        unsynced: AtomicUsize::new(0),
    });
    let mut started: HashSet<ApiResource> = HashSet::new();
    loop {
        match discover(&gc.client).await {
            Ok((all, watchable)) => {
                *gc.kinds.write().expect("kinds") = all;
                for kind in watchable {
                    if started.insert(kind.resource.clone()) {
                        gc.unsynced.fetch_add(1, Ordering::SeqCst);
                        debug!(resource = %kind.resource.plural, group = %kind.resource.group, "garbage collector: watching");
                        tokio::spawn(watch(Arc::clone(&gc), kind));
                    }
                }
            }
            Err(e) => warn!(error = %e, "garbage collector: discovery failed; retrying"),
        }
        tokio::time::sleep(DISCOVERY_PERIOD).await;
    }
}

/// Every served (apiVersion, kind), and the resources to watch (each
/// group's preferred version).
async fn discover(client: &Client) -> anyhow::Result<(HashMap<(String, String), Kind>, Vec<Kind>)> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut all = HashMap::new();
    let mut watchable = Vec::new();
    for group in discovery.groups() {
        for version in group.versions() {
            for (ar, caps) in group.versioned_resources(version) {
                let kind = Kind {
                    namespaced: caps.scope == Scope::Namespaced,
                    resource: ar.clone(),
                };
                all.insert((ar.api_version.clone(), ar.kind.clone()), kind);
            }
        }
        for (ar, caps) in group.recommended_resources() {
            let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE, verbs::PATCH]
                .iter()
                .all(|v| caps.supports_operation(v));
            if !usable || ar.plural == "events" {
                continue;
            }
            watchable.push(Kind {
                namespaced: caps.scope == Scope::Namespaced,
                resource: ar,
            });
        }
    }
    Ok((all, watchable))
}

fn object_ref(node: &Node) -> ObjectRef<DynamicObject> {
    let r = ObjectRef::new_with(&node.name, node.resource.clone());
    match &node.namespace {
        Some(ns) => r.within(ns),
        None => r,
    }
}

impl Gc {
    /// Wakes `nodes` in their resources' Controllers.
    fn wake<'a>(&self, nodes: impl IntoIterator<Item = &'a Node>) {
        let triggers = self.triggers.lock().expect("triggers");
        for n in nodes {
            if let Some(tx) = triggers.get(&n.resource) {
                let _ = tx.unbounded_send(object_ref(n));
            }
        }
    }

    /// Records an applied object and wakes what its change concerns.
    fn applied(&self, node: Node) {
        let mut g = self.graph.lock().expect("graph");
        let prev = g.upsert(node.clone());
        let mut wake: Vec<Node> = Vec::new();
        if node.waits_for_dependents() && !prev.as_ref().is_some_and(Node::waits_for_dependents) {
            wake.extend(g.dependents(&node.uid).into_iter().cloned());
        }
        // Owners waiting for this object (or that it no longer names).
        let owner_uids = node
            .owners
            .iter()
            .chain(prev.iter().flat_map(|p| p.owners.iter()))
            .map(|o| o.uid.clone())
            .collect::<HashSet<_>>();
        wake.extend(
            owner_uids
                .iter()
                .filter_map(|u| g.get(u))
                .filter(|o| o.deleting)
                .cloned(),
        );
        drop(g);
        self.wake(wake.iter());
    }

    /// Forgets an object that is gone and wakes its dependents and owners.
    fn gone(&self, uid: &str) {
        let mut g = self.graph.lock().expect("graph");
        let Some(node) = g.remove(uid) else {
            return;
        };
        let mut wake: Vec<Node> = g.dependents(uid).into_iter().cloned().collect();
        wake.extend(
            node.owners
                .iter()
                .filter_map(|o| g.get(&o.uid))
                .filter(|o| o.deleting)
                .cloned(),
        );
        drop(g);
        self.wake(wake.iter());
    }

    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }
}

/// Only what the graph and the reconcile need of an object.
fn strip(obj: &mut DynamicObject) {
    obj.data = Value::Null;
    obj.metadata = ObjectMeta {
        name: obj.metadata.name.take(),
        namespace: obj.metadata.namespace.take(),
        uid: obj.metadata.uid.take(),
        resource_version: obj.metadata.resource_version.take(),
        owner_references: obj.metadata.owner_references.take(),
        finalizers: obj.metadata.finalizers.take(),
        deletion_timestamp: obj.metadata.deletion_timestamp.take(),
        ..ObjectMeta::default()
    };
}

/// One resource's watch (feeding the graph and the cache) and Controller.
async fn watch(gc: Arc<Gc>, kind: Kind) {
    let ar = kind.resource.clone();
    let api: Api<DynamicObject> = Api::all_with(gc.client.clone(), &ar);
    let mut writer = Writer::<DynamicObject>::new(ar.clone());
    let reader = writer.as_reader();
    let (objects_tx, objects_rx) = mpsc::unbounded::<Result<DynamicObject, watcher::Error>>();
    let (wake_tx, wake_rx) = mpsc::unbounded::<ObjectRef<DynamicObject>>();
    gc.triggers
        .lock()
        .expect("triggers")
        .insert(ar.clone(), wake_tx);
    let ctx = Arc::new(Ctx {
        gc: Arc::clone(&gc),
        kind: kind.clone(),
    });
    let controller = Controller::for_stream_with(objects_rx, reader, ar.clone())
        .reconcile_on(wake_rx)
        .with_config(Config::default().concurrency(gc.workers))
        .run(reconcile, error_policy, ctx);
    tokio::spawn(super::drive("garbagecollector", controller));

    let listed = Arc::new(AtomicBool::new(false));
    {
        let (gc, listed, plural) = (Arc::clone(&gc), Arc::clone(&listed), ar.plural.clone());
        tokio::spawn(async move {
            tokio::time::sleep(FIRST_LIST_GRACE).await;
            if !listed.load(Ordering::SeqCst) {
                warn!(resource = %plural, "garbage collector: no first list yet; syncing without it");
                gc.first_list_done(&listed);
            }
        });
    }
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Vec<DynamicObject> = Vec::new();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e.modify(strip),
            Err(e) => {
                debug!(resource = %ar.plural, error = %e, "garbage collector: watch failed; retrying");
                continue;
            }
        };
        let mut touched: Vec<DynamicObject> = Vec::new();
        match &event {
            watcher::Event::Init => relist.clear(),
            watcher::Event::InitApply(o) => relist.push(o.clone()),
            watcher::Event::InitDone => {
                let keep: HashSet<String> = relist
                    .iter()
                    .filter_map(|o| o.metadata.uid.clone())
                    .collect();
                let known = gc.graph.lock().expect("graph").uids_of(&ar);
                for uid in known.iter().filter(|u| !keep.contains(*u)) {
                    gc.gone(uid);
                }
                for o in &relist {
                    if let Some(n) = Node::of(o, &ar) {
                        gc.applied(n);
                    }
                }
                touched.append(&mut relist);
                gc.first_list_done(&listed);
            }
            watcher::Event::Apply(o) => {
                if let Some(n) = Node::of(o, &ar) {
                    gc.applied(n);
                }
                touched.push(o.clone());
            }
            watcher::Event::Delete(o) => {
                if let Some(uid) = &o.metadata.uid {
                    gc.gone(uid);
                }
            }
        }
        writer.apply_watcher_event(&event);
        for o in touched {
            // Only objects with owners or a GC finalizer need a reconcile.
            let relevant = o
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|r| !r.is_empty())
                || (o.metadata.deletion_timestamp.is_some()
                    && o.finalizers()
                        .iter()
                        .any(|f| f == FOREGROUND || f == ORPHAN));
            if relevant {
                let _ = objects_tx.unbounded_send(Ok(o));
            }
        }
    }
}

fn error_policy(obj: Arc<DynamicObject>, _err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = (
        ctx.kind.resource.plural.clone(),
        obj.uid().unwrap_or_default(),
    );
    Action::requeue(ctx.gc.backoff.next(key))
}

fn describe(node: &Node) -> String {
    match &node.namespace {
        Some(ns) => format!("{} {ns}/{}", node.resource.kind, node.name),
        None => format!("{} {}", node.resource.kind, node.name),
    }
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action> {
    let Some(node) = Node::of(&obj, &ctx.kind.resource) else {
        return Ok(Action::await_change());
    };
    let r = sync(&ctx.gc, &node).await;
    if r.is_ok() {
        ctx.gc
            .backoff
            .reset(&(ctx.kind.resource.plural.clone(), node.uid.clone()));
    }
    r
}

async fn sync(gc: &Gc, node: &Node) -> Result<Action> {
    if gc.unsynced.load(Ordering::SeqCst) > 0 {
        debug!(object = %describe(node), "waiting for every resource's first list");
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    if node.orphaning() {
        return orphan(gc, node).await;
    }
    if node.waits_for_dependents() {
        let blocking = gc
            .graph
            .lock()
            .expect("graph")
            .blocking_dependents(&node.uid)
            .len();
        if blocking == 0 {
            remove_finalizer(gc, node, FOREGROUND).await?;
        } else {
            debug!(object = %describe(node), blocking, "waiting for dependents");
        }
        return Ok(Action::await_change());
    }
    if node.deleting || node.owners.is_empty() {
        return Ok(Action::await_change());
    }
    let mut states = Vec::with_capacity(node.owners.len());
    for owner in &node.owners {
        states.push((owner, owner_state(gc, node, owner).await?));
    }
    let has_dependents = !gc
        .graph
        .lock()
        .expect("graph")
        .dependents(&node.uid)
        .is_empty();
    match graph::verdict(&states, has_dependents) {
        Verdict::Keep => {}
        Verdict::RemoveRefs(uids) => {
            edit_meta(gc, node, |m| {
                let refs = m.owner_references.clone().unwrap_or_default();
                let rest: Vec<_> = refs.iter().filter(|r| !uids.contains(&r.uid)).collect();
                (rest.len() != refs.len()).then(|| owner_refs_patch(&rest))
            })
            .await?;
        }
        Verdict::Delete(policy) => {
            info!(object = %describe(node), ?policy, "deleting: its owners are gone");
            let dp = DeleteParams {
                propagation_policy: Some(policy),
                preconditions: Some(Preconditions {
                    uid: Some(node.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let api = gc.api(&node.resource, node.namespace.as_deref());
            match api.delete(&node.name, &dp).await {
                Ok(_) => {}
                Err(e) if client::is_not_found(&e) || client::is_conflict(&e) => {}
                Err(e) => {
                    return Err(Error::api(format!("deleting {}", describe(node)))(e));
                }
            }
        }
    }
    Ok(Action::await_change())
}

/// How the owner named by `owner` stands: from the graph when it is
/// there, else from a live read (the graph may not have seen it yet).
async fn owner_state(
    gc: &Gc,
    node: &Node,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<OwnerState> {
    if let Some(o) = gc.graph.lock().expect("graph").get(&owner.uid) {
        return Ok(if o.waits_for_dependents() {
            OwnerState::Waiting
        } else {
            OwnerState::Solid
        });
    }
    let kind = gc
        .kinds
        .read()
        .expect("kinds")
        .get(&(owner.api_version.clone(), owner.kind.clone()))
        .cloned();
    let Some(kind) = kind else {
        // A kind the server does not serve (yet): never delete on a guess.
        debug!(object = %describe(node), owner = %owner.kind, "owner kind unknown; kept");
        return Ok(OwnerState::Solid);
    };
    let ns = if kind.namespaced {
        match node.namespace.as_deref() {
            Some(ns) => Some(ns),
            // A cluster-scoped object cannot be owned by a namespaced one.
            None => return Ok(OwnerState::Dangling),
        }
    } else {
        None
    };
    let live = gc
        .api(&kind.resource, ns)
        .get_opt(&owner.name)
        .await
        .map_err(Error::api(format!(
            "reading {} {}, owner of {}",
            owner.kind,
            owner.name,
            describe(node)
        )))?;
    Ok(match live {
        Some(o) if o.uid().as_deref() == Some(owner.uid.as_str()) => {
            let waiting = o.metadata.deletion_timestamp.is_some()
                && o.finalizers().iter().any(|f| f == FOREGROUND);
            if waiting {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            }
        }
        _ => OwnerState::Dangling,
    })
}

fn owner_refs_patch<T: serde::Serialize>(rest: &[T]) -> Value {
    if rest.is_empty() {
        json!({"ownerReferences": null})
    } else {
        json!({"ownerReferences": rest})
    }
}

/// Releases the dependents of an owner deleted with `Orphan`, then lets
/// the owner go.
async fn orphan(gc: &Gc, node: &Node) -> Result<Action> {
    let dependents: Vec<Node> = gc
        .graph
        .lock()
        .expect("graph")
        .dependents(&node.uid)
        .into_iter()
        .cloned()
        .collect();
    for d in &dependents {
        edit_meta(gc, d, |m| {
            let refs = m.owner_references.clone().unwrap_or_default();
            let rest: Vec<_> = refs.iter().filter(|r| r.uid != node.uid).collect();
            (rest.len() != refs.len()).then(|| owner_refs_patch(&rest))
        })
        .await?;
    }
    remove_finalizer(gc, node, ORPHAN).await?;
    Ok(Action::await_change())
}

async fn remove_finalizer(gc: &Gc, node: &Node, finalizer: &str) -> Result<()> {
    edit_meta(gc, node, |m| {
        let f = m.finalizers.clone().unwrap_or_default();
        let rest: Vec<&String> = f.iter().filter(|x| *x != finalizer).collect();
        (rest.len() != f.len()).then(|| {
            if rest.is_empty() {
                json!({"finalizers": null})
            } else {
                json!({"finalizers": rest})
            }
        })
    })
    .await
}

/// A metadata change computed from the live object (`change` returns the
/// `metadata` fields to merge, or `None` when nothing is to change), written
/// as a merge patch guarded by its resourceVersion; a conflict reads again.
/// An object gone, or replaced under another uid, is left alone.
async fn edit_meta(
    gc: &Gc,
    node: &Node,
    change: impl Fn(&ObjectMeta) -> Option<Value>,
) -> Result<()> {
    let api = gc.api(&node.resource, node.namespace.as_deref());
    let what = || format!("updating the metadata of {}", describe(node));
    for _ in 0..5 {
        let Some(live) = api.get_opt(&node.name).await.map_err(Error::api(what()))? else {
            return Ok(());
        };
        if live.uid().as_deref() != Some(node.uid.as_str()) {
            return Ok(());
        }
        let Some(mut meta) = change(&live.metadata) else {
            return Ok(());
        };
        meta["resourceVersion"] = json!(live.resource_version());
        let patch = json!({ "metadata": meta });
        match api
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if client::is_not_found(&e) => return Ok(()),
            Err(e) if client::is_conflict(&e) => continue,
            Err(e) => return Err(Error::api(what())(e)),
        }
    }
    Err(Error::Waiting(format!("{}: kept conflicting", what())))
}
