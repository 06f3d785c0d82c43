//! The EndpointSlice controller (upstream's `endpointslice-controller`):
//! every Service with a selector gets EndpointSlices listing the pods it
//! selects — their IPs, nodes, zones, ready/serving/terminating conditions,
//! and the container ports its (possibly named) target ports resolve to.
//!
//! A `runtime::Controller<Service>` whose triggers are the Service itself,
//! the pods it selects (before and after a label change), and its slices
//! (a slice deleted or edited by someone else is put back). Services
//! without a selector, and `ExternalName` ones, are left to their owners;
//! a deleted Service's slices go with it through their ownerReference.
//!
//! Our own writes reach the cache later than we make them: the controller
//! remembers which slices it wrote (with their generations) or deleted, and
//! refuses to plan on a cache that does not show them yet (upstream's
//! "stale informer cache" check), retrying shortly.
pub mod endpoint;
pub mod plan;
mod triggers;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, PostParams},
    core::SelectorExt as _,
    runtime::{
        controller::{Action, Config, Controller},
        reflector::{ObjectRef, Store},
    },
};
use tracing::info;

use self::{
    plan::{
        ANNOTATION_TRIGGER_TIME, CONTROLLER_NAME, Desired, LABEL_MANAGED_BY, LABEL_SERVICE_NAME,
    },
    triggers::TriggerTimes,
};
use super::{Backoff, Error, Result, Shared, pods};
use crate::client::{
    self,
    events::{EventType, Recorder},
};

/// Settings (upstream's flag names in the comments).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--max-endpoints-per-slice` (100).
    pub max_endpoints_per_slice: usize,
    /// `--concurrent-service-endpoint-syncs` (5).
    pub concurrent_syncs: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_endpoints_per_slice: 100,
            concurrent_syncs: 5,
        }
    }
}

/// What we wrote and have not yet seen in the cache, per Service uid.
#[derive(Default)]
struct Written {
    /// slice name → generation written.
    present: HashMap<String, i64>,
    /// slice names deleted.
    absent: HashSet<String>,
    since: Option<Instant>,
}

/// How long a write may stay unseen before we stop waiting for it (someone
/// else may have deleted or rewritten the slice).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

struct Ctx {
    shared: Arc<Shared>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    settings: Settings,
    recorder: Recorder,
    written: Mutex<HashMap<String, Written>>,
    triggers: Mutex<TriggerTimes>,
    backoff: Backoff<ObjectRef<Service>>,
}

/// The Services in `pod`'s namespace whose selector matches its labels.
fn services_selecting(services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let ns = pod.namespace();
    let labels = pods::labels(pod);
    services
        .state()
        .into_iter()
        .filter(|s| s.metadata.namespace == ns)
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.selector.as_ref())
                .is_some_and(|sel| pods::map_selector(sel).matches(labels))
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// What of a pod its endpoints are made of, beyond its immutable spec (the
/// inputs upstream's `podEndpointsChanged` compares): IPs, readiness,
/// deletion, phase, node, hostname and subdomain.
#[derive(Clone, PartialEq)]
struct EndpointInputs {
    ips: Vec<String>,
    ready: bool,
    deleting: bool,
    terminal: bool,
    node: Option<String>,
    hostname: Option<String>,
    subdomain: Option<String>,
}

impl EndpointInputs {
    fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let mut ips: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|l| l.iter().map(|p| p.ip.clone()).collect())
            .unwrap_or_default();
        ips.extend(status.and_then(|s| s.pod_ip.clone()));
        let spec = pod.spec.as_ref();
        Self {
            ips,
            ready: pods::is_ready(pod),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            terminal: pods::is_terminal(pod),
            node: pods::node_name(pod).map(str::to_owned),
            hostname: spec.and_then(|s| s.hostname.clone()),
            subdomain: spec.and_then(|s| s.subdomain.clone()),
        }
    }
}

/// Maps pod events to Services, remembering each pod's last set so that a
/// label change also wakes the Services the pod left. An event that changes
/// neither the set nor the pod's [`EndpointInputs`] (a scheduling or an
/// unrelated status write) wakes none: each wake costs a Service's full
/// reconcile over its pods.
pub(crate) fn pod_to_services(
    services: Store<Service>,
    pods: Store<Pod>,
) -> impl Fn(Pod) -> Vec<ObjectRef<Service>> + Send + Sync + 'static {
    type Seen = (Vec<ObjectRef<Service>>, EndpointInputs);
    let last: Mutex<HashMap<ObjectRef<Pod>, Seen>> = Mutex::default();
    move |pod: Pod| {
        let key = ObjectRef::from_obj(&pod);
        let gone = pods.get(&key).is_none();
        let now = if gone {
            Vec::new()
        } else {
            services_selecting(&services, &pod)
        };
        let inputs = EndpointInputs::of(&pod);
        let mut last = last.lock().expect("pod index");
        let before = if gone {
            last.remove(&key)
        } else {
            last.insert(key, (now.clone(), inputs.clone()))
        };
        let unchanged = |(services, was): &Seen| *services == now && *was == inputs;
        if !gone && before.as_ref().is_some_and(unchanged) {
            return Vec::new();
        }
        let mut all: Vec<ObjectRef<Service>> = before
            .into_iter()
            .flat_map(|(services, _)| services)
            .collect();
        all.extend(now);
        if gone {
            all.extend(services_selecting(&services, &pod));
        }
        let mut seen = HashSet::new();
        all.retain(|r| seen.insert(r.clone()));
        all
    }
}

/// Runs the controller until the process ends.
pub async fn run(shared: Arc<Shared>, settings: Settings) -> anyhow::Result<()> {
    let services = shared.services();
    let pods = shared.pods();
    let slices = shared.endpoint_slices();
    let nodes = shared.nodes();
    services.ready().await;
    pods.ready().await;
    slices.ready().await;
    nodes.ready().await;
    let ctx = Arc::new(Ctx {
        recorder: shared.recorder("endpointslice-controller"),
        shared: Arc::clone(&shared),
        pods: pods.store(),
        slices: slices.store(),
        nodes: nodes.store(),
        settings: settings.clone(),
        written: Mutex::default(),
        triggers: Mutex::default(),
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(1000)),
    });
    let svc_store = services.store();
    Controller::for_stream(services.subscribe(), services.store())
        .watches_stream(pods.subscribe(), pod_to_services(svc_store, pods.store()))
        .watches_stream(slices.subscribe(), |slice: EndpointSlice| {
            let managed =
                slice.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(CONTROLLER_NAME);
            let name = slice.labels().get(LABEL_SERVICE_NAME).cloned();
            let ns = slice.namespace().unwrap_or_default();
            name.filter(|_| managed)
                .map(|n| ObjectRef::<Service>::new(&n).within(&ns))
        })
        .with_config(Config::default().concurrency(settings.concurrent_syncs))
        .run(reconcile, error_policy, ctx)
        .pipe(|s| super::drive("endpointslice", s))
        .await;
    Ok(())
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<S> Pipe for S {}

fn error_policy(svc: Arc<Service>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = ObjectRef::from_obj(svc.as_ref());
    match err {
        Error::Stale(_) => Action::requeue(Duration::from_millis(200)),
        _ => Action::requeue(ctx.backoff.next(key)),
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action> {
    let key = ObjectRef::from_obj(svc.as_ref());
    let result = sync(&svc, &ctx).await;
    match &result {
        Ok(_) => ctx.backoff.reset(&key),
        Err(Error::Stale(_)) => {}
        Err(e) => ctx.recorder.publish(
            svc.as_ref(),
            EventType::Warning,
            "FailedToUpdateEndpointSlices",
            format!(
                "Error updating Endpoint Slices for Service {}/{}: {e}",
                svc.namespace().unwrap_or_default(),
                svc.name_any()
            ),
        ),
    }
    result
}

/// Whether the cache shows every write we made for this Service.
fn check_fresh(ctx: &Ctx, uid: &str, existing: &[EndpointSlice]) -> Result<()> {
    let mut written = ctx.written.lock().expect("written");
    let Some(w) = written.get(uid) else {
        return Ok(());
    };
    if w.since.is_some_and(|s| s.elapsed() > EXPECTATION_TIMEOUT) {
        written.remove(uid);
        return Ok(());
    }
    let by_name: HashMap<&str, &EndpointSlice> = existing
        .iter()
        .filter_map(|s| Some((s.metadata.name.as_deref()?, s)))
        .collect();
    for (name, generation) in &w.present {
        let seen = by_name
            .get(name.as_str())
            .and_then(|s| s.metadata.generation)
            .unwrap_or(-1);
        if seen < *generation {
            return Err(Error::Stale(format!(
                "EndpointSlice {name} not yet at generation {generation}"
            )));
        }
    }
    if let Some(name) = w.absent.iter().find(|n| by_name.contains_key(n.as_str())) {
        return Err(Error::Stale(format!(
            "deleted EndpointSlice {name} still cached"
        )));
    }
    written.remove(uid);
    Ok(())
}

async fn sync(svc: &Service, ctx: &Ctx) -> Result<Action> {
    let spec = svc.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.as_ref() else {
        return Ok(Action::await_change());
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let uid = svc.uid().unwrap_or_default();
    let existing: Vec<EndpointSlice> = ctx
        .slices
        .state()
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|s| {
            s.labels().get(LABEL_SERVICE_NAME) == Some(&name)
                && s.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(CONTROLLER_NAME)
                && s.metadata.deletion_timestamp.is_none()
        })
        .map(|s| s.as_ref().clone())
        .collect();
    check_fresh(ctx, &uid, &existing)?;

    let selector = pods::map_selector(selector);
    let selected: Vec<Arc<Pod>> = ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str()) && selector.matches(pods::labels(p))
    });
    let families = endpoint::address_types(svc);
    let mut desired = Desired::default();
    let mut missing_nodes = BTreeSet::new();
    for pod in &selected {
        if !endpoint::wants_endpoint(pod) {
            continue;
        }
        let zone = match pods::node_name(pod) {
            Some(node) => match ctx.nodes.get(&ObjectRef::new(node)) {
                Some(n) => n.labels().get("topology.kubernetes.io/zone").cloned(),
                None if endpoint::publish_not_ready(svc) => None,
                None => {
                    missing_nodes.insert(node.to_owned());
                    continue;
                }
            },
            None => None,
        };
        let ports = endpoint::endpoint_ports(svc, pod);
        for family in &families {
            if let Some(ep) = endpoint::endpoint_for(svc, pod, family, zone.as_deref()) {
                desired.add(family, ports.clone(), ep);
            }
        }
    }
    let mut plan = plan::plan(
        svc,
        desired,
        &existing,
        ctx.settings.max_endpoints_per_slice,
    );
    let trigger = ctx
        .triggers
        .lock()
        .expect("trigger times")
        .compute(svc, &selected);
    if svc.metadata.deletion_timestamp.is_some() {
        plan.create.clear();
    }
    let api: Api<EndpointSlice> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let mut w = Written::default();
    for mut slice in plan.create.into_iter().chain(plan.update) {
        let annotations = slice
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        match trigger {
            Some(t) => {
                annotations.insert(ANNOTATION_TRIGGER_TIME.into(), format_trigger_time(t));
            }
            None => {
                annotations.remove(ANNOTATION_TRIGGER_TIME);
            }
        }
        let written = if slice.metadata.name.is_none() {
            match api.create(&PostParams::default(), &slice).await {
                Ok(s) => s,
                Err(e) if client::is_namespace_terminating(&e) => continue,
                Err(e) => {
                    record(ctx, &uid, w);
                    return Err(Error::api(format!(
                        "creating an EndpointSlice for Service {ns}/{name}"
                    ))(e));
                }
            }
        } else {
            let slice_name = slice.name_any();
            match api
                .replace(&slice_name, &PostParams::default(), &slice)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    record(ctx, &uid, w);
                    return Err(Error::api(format!(
                        "updating EndpointSlice {ns}/{slice_name}"
                    ))(e));
                }
            }
        };
        w.present
            .insert(written.name_any(), written.metadata.generation.unwrap_or(0));
    }
    for slice in plan.delete {
        let slice_name = slice.name_any();
        match api.delete(&slice_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if client::is_not_found(&e) => {}
            Err(e) => {
                record(ctx, &uid, w);
                return Err(Error::api(format!(
                    "deleting EndpointSlice {ns}/{slice_name}"
                ))(e));
            }
        }
        w.absent.insert(slice_name);
    }
    record(ctx, &uid, w);
    if !missing_nodes.is_empty() {
        info!(service = %format!("{ns}/{name}"), nodes = ?missing_nodes, "pods on unknown nodes skipped");
        return Err(Error::Waiting(format!(
            "skipped pods of Service {ns}/{name} on nodes not (yet) known: {}",
            missing_nodes.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(Action::await_change())
}

fn record(ctx: &Ctx, uid: &str, w: Written) {
    if w.present.is_empty() && w.absent.is_empty() {
        return;
    }
    let mut written = ctx.written.lock().expect("written");
    let entry = written.entry(uid.to_owned()).or_default();
    entry.present.extend(w.present);
    entry.absent.extend(w.absent);
    entry.since = Some(Instant::now());
}

/// RFC 3339 with nanoseconds when there are any, in UTC (Go's RFC3339Nano).
fn format_trigger_time(t: k8s_openapi::jiff::Timestamp) -> String {
    t.to_string()
}
