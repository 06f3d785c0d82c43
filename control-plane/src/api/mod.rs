//! The Kubernetes REST API over a [`Store`]: discovery, OpenAPI, and
//! get/list/watch/create/update/patch/delete on the served resources.
//!
//! Every request goes through [`handle`], which parses the path into a
//! [`path::Route`] and dispatches on method and target; refusals are
//! `Status` objects ([`status::ApiError`]).
use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use crate::store::Store;

pub mod auth;
pub mod authz;
pub mod clock;
pub mod crd;
mod decode;
pub mod defaults;
mod discovery;
mod gc;
mod graceful;
mod kinds;
pub mod kubernetes_service;
pub mod list_options;
pub mod media;
pub mod objects;
mod openapi;
pub mod patch;
pub mod path;
pub mod pod_proxy;
pub mod proto;
pub mod rbac;
mod read;
pub mod resources;
mod reviews;
pub mod schemas;
pub mod selectors;
pub mod services;
pub mod ssa;
pub mod status;
mod strict_json;
mod table;
pub mod tokens;
pub mod validation;
mod write;

use path::{Query, Route, Target};
use status::{ApiError, ApiResult};

/// Upstream's limit on request bodies (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// What the API server needs besides its store.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often an idle watch with `allowWatchBookmarks` gets a bookmark.
    pub bookmark_interval: Duration,
    /// Version reported by `/version` (kubectl's dispatcher picks its binary by the minor).
    pub minor_version: u32,
    /// `--service-cluster-ip-range`.
    pub service_cidr: (std::net::Ipv4Addr, u8),
    /// `--service-node-port-range`.
    pub node_ports: std::ops::RangeInclusive<u16>,
    /// Where in-cluster clients reach this server: the endpoints of the
    /// `default/kubernetes` Service (none without it).
    pub advertise: Option<std::net::SocketAddr>,
    /// The bearer token presented to node agents for `pods/log` and
    /// `pods/exec` (identity [`crate::pki::KUBELET_CLIENT`]); none: no
    /// `Authorization` header.
    pub kubelet_client_token: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(30),
            minor_version: 33,
            service_cidr: (std::net::Ipv4Addr::new(10, 96, 0, 0), 12),
            node_ports: 30_000..=32_767,
            advertise: None,
            kubelet_client_token: None,
        }
    }
}

pub struct ApiServer<S> {
    pub store: Arc<S>,
    pub settings: Settings,
    pub auth: auth::Auth,
    /// The RBAC objects authorization reads.
    pub authz: authz::Authorizer,
    /// Held across choosing a Service's IP and ports and writing the Service.
    alloc: Arc<tokio::sync::Mutex<services::Allocations>>,
}

impl<S: Store> ApiServer<S> {
    pub fn new(store: Arc<S>, settings: Settings, auth: auth::Auth) -> Arc<Self> {
        Arc::new(Self {
            store,
            settings,
            auth,
            authz: authz::Authorizer::default(),
            alloc: Arc::default(),
        })
    }

    /// An axum router serving everything.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .fallback(handle::<S>)
            .with_state(Arc::clone(self))
    }

    /// Creates what is missing of the initial namespaces, the bootstrap
    /// RBAC policy ([`rbac::bootstrap`]), and the `default/kubernetes`
    /// Service with its endpoints (see [`kubernetes_service`]).
    pub async fn bootstrap(&self) -> ApiResult<()> {
        let rbac = |plural| resources::Resource::find("rbac.authorization.k8s.io", "v1", plural);
        let namespaces = resources::INITIAL_NAMESPACES.iter().map(|ns| {
            (
                Some(resources::Resource::namespaces()),
                serde_json::json!({"metadata": {"name": ns}}),
            )
        });
        let roles = rbac::bootstrap::cluster_roles()
            .into_iter()
            .map(|r| (rbac("clusterroles"), r));
        let bindings = rbac::bootstrap::cluster_role_bindings()
            .into_iter()
            .map(|b| (rbac("clusterrolebindings"), b));
        for (res, mut obj) in namespaces.chain(roles).chain(bindings) {
            let res = res.ok_or_else(|| ApiError::internal("a bootstrap kind is not served"))?;
            match write::create_object(self, res, None, &mut obj, &write::Owner::Server).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        crd::load(&*self.store)
            .await
            .map_err(|e| ApiError::from_store(e, "customresourcedefinitions", ""))?;
        kubernetes_service::reconcile(self).await
    }
}

/// A request, as the handlers need it.
pub struct Request {
    pub method: Method,
    pub query: Query,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Who asks (absent on public paths).
    pub user: Option<crate::pki::Identity>,
    /// Warnings for the client, sent as `Warning` headers with the answer.
    warnings: std::sync::Mutex<Vec<String>>,
    /// The connection's upgrade, for `pods/exec` to take.
    upgrade: std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>,
}

impl Request {
    /// A GET with only a query, for unit tests of parameter handling.
    #[cfg(test)]
    pub fn for_query(query: Query) -> Self {
        Self {
            method: Method::GET,
            query,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            user: None,
            warnings: std::sync::Mutex::default(),
            upgrade: std::sync::Mutex::default(),
        }
    }

    /// The connection's switch to another protocol, once (see `pod_proxy`).
    pub fn take_upgrade(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.upgrade.lock().ok()?.take()
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
    }

    pub fn accepts_table(&self) -> bool {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| {
                a.split(',')
                    .next()
                    .is_some_and(|first| first.contains("as=Table"))
            })
    }

    /// A body holding an object: JSON, YAML (as `kubectl --raw` may send)
    /// or protobuf (kubectl's typed generators). CBOR is 415.
    pub fn object_body(&self) -> ApiResult<Value> {
        media::object_body(self.content_type(), &self.body)
    }

    /// A patch body (JSON, or YAML for apply patches).
    pub fn patch_body(&self) -> ApiResult<Value> {
        media::text_body(&self.body)
    }

    /// The encodings the client accepts, in its order of preference.
    pub fn accepted(&self) -> Vec<media::Encoding> {
        media::accepted(
            self.headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        )
    }

    /// `value` in the encoding the client prefers among those that can carry
    /// it, with the request's warnings.
    pub fn reply(&self, code: axum::http::StatusCode, value: &Value) -> Response {
        let mut response = media::respond(&self.accepted(), code, value);
        let warnings = self.warnings.lock().map(|w| w.clone()).unwrap_or_default();
        for w in warnings {
            // Upstream's form: code 299, no agent, the text quoted.
            let header = format!("299 - {}", validation::quote(&w));
            if let Ok(v) = axum::http::HeaderValue::from_str(&header) {
                response.headers_mut().append(header::WARNING, v);
            }
        }
        response
    }

    /// Adds a warning for the client (deduplicated, as upstream does).
    pub fn warn(&self, text: &str) {
        if let Ok(mut w) = self.warnings.lock()
            && !w.iter().any(|x| x == text)
        {
            w.push(text.to_owned());
        }
    }
}

pub fn json_response(code: axum::http::StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The connection's upgrade, when hyper offers one (taken from the
/// request's extensions, as axum's WebSocket extractor does).
struct Upgrade(Option<hyper::upgrade::OnUpgrade>);

impl<St: Send + Sync> axum::extract::FromRequestParts<St> for Upgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &St,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.remove::<hyper::upgrade::OnUpgrade>()))
    }
}

async fn handle<S: Store>(
    State(api): State<Arc<ApiServer<S>>>,
    peer: Option<axum::Extension<auth::PeerIdentity>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Upgrade(upgrade): Upgrade,
    body: Body,
) -> Response {
    let peer = peer.map(|axum::Extension(p)| p).unwrap_or_default();
    let parsed = path::parse(uri.path());
    let identity = match parsed {
        // Probes and the version are public, as upstream.
        Ok(Route::Health | Route::Version) => None,
        _ => match auth::authenticate(&api, &headers, &peer).await {
            Ok(id) => Some(id),
            Err(e) => return e.into_response(),
        },
    };
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return ApiError::too_large(MAX_BODY).into_response(),
    };
    let req = Request {
        method,
        query: Query::parse(uri.query()),
        headers,
        body,
        user: identity,
        warnings: std::sync::Mutex::default(),
        upgrade: std::sync::Mutex::new(upgrade),
    };
    if let Err(e) = authorize(&api, &req, uri.path(), &parsed).await {
        return e.into_response();
    }
    match route(&api, uri.path(), req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Authorizes a request: resource requests by their verb and target (and
/// nodes' writes by NodeRestriction), the discovery and OpenAPI paths as
/// non-resource requests.
async fn authorize<S: Store>(
    api: &ApiServer<S>,
    req: &Request,
    raw_path: &str,
    parsed: &ApiResult<Route>,
) -> ApiResult<()> {
    let Some(id) = &req.user else {
        return Ok(());
    };
    match parsed {
        Ok(Route::Object(t) | Route::Watch(t)) => {
            let watch = matches!(parsed, Ok(Route::Watch(_))) || req.query.flag("watch");
            // Exec is `create` whichever method carries the upgrade (upstream
            // checks it for WebSocket GETs too).
            let verb = if t.sub == Some(resources::Sub::Exec) {
                "create"
            } else {
                auth::verb(&req.method, t, watch)
            };
            authz::authorize(api, id, &authz::resource_attributes(verb, t)).await?;
            if matches!(t.res.kind, "Node" | "Lease") {
                let name = match &t.name {
                    Some(n) => n.clone(),
                    // A create names the object in its body.
                    None => req
                        .object_body()
                        .ok()
                        .and_then(|b| objects::name_of(&b).map(str::to_owned))
                        .unwrap_or_default(),
                };
                auth::node_restriction(id, verb, t, &name)?;
            }
            Ok(())
        }
        Ok(Route::Health | Route::Version) => Ok(()),
        // A path that is no resource (discovery, OpenAPI, or one that is not found).
        _ => {
            let a = rbac::Attributes {
                verb: auth::non_resource_verb(&req.method),
                path: raw_path.to_owned(),
                ..rbac::Attributes::default()
            };
            authz::authorize(api, id, &a).await.map(drop)
        }
    }
}

async fn route<S: Store>(api: &ApiServer<S>, path: &str, req: Request) -> ApiResult<Response> {
    match path::parse(path)? {
        Route::Health => Ok((axum::http::StatusCode::OK, "ok").into_response()),
        Route::Version => Ok(discovery::version(api)),
        Route::CoreVersions => Ok(discovery::core_versions()),
        Route::Groups => Ok(discovery::groups()),
        Route::Group(group) => discovery::group(&group),
        Route::GroupVersion { group, version } => discovery::resource_list(&group, &version),
        Route::OpenApiIndex => Ok(openapi::index()),
        Route::OpenApiDoc { group, version } => openapi::document(&group, &version),
        Route::Object(target) => object(api, target, req).await,
        Route::Watch(target) if req.method == Method::GET && target.sub.is_none() => {
            read::watch(api, &target, &req).await
        }
        Route::Watch(target) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            req.method,
            target.res.qualified()
        ))),
    }
}

async fn object<S: Store>(api: &ApiServer<S>, t: Target, req: Request) -> ApiResult<Response> {
    use resources::Sub;
    let m = req.method.clone();
    if t.res.review {
        return match (m.as_str(), t.name.is_some()) {
            ("POST", false) => reviews::create(api, &t, &req).await,
            (method, _) => Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} {})",
                t.res.qualified()
            ))),
        };
    }
    match (m.as_str(), t.name.is_some(), t.sub) {
        ("POST", true, Some(Sub::Token)) => reviews::token_request(api, &t, &req).await,
        ("GET", _, None) if req.query.flag("watch") => read::watch(api, &t, &req).await,
        ("GET", false, None) => read::list(api, &t, &req).await,
        ("GET", true, None | Some(Sub::Status)) => read::get(api, &t, &req).await,
        ("GET", true, Some(Sub::Scale)) => read::get_scale(api, &t, &req).await,
        ("POST", false, None) => write::create(api, &t, &req).await,
        ("POST", true, Some(Sub::Binding)) => write::bind(api, &t, &req).await,
        ("GET", true, Some(Sub::Log)) => pod_proxy::log(api, &t, &req).await,
        ("GET" | "POST", true, Some(Sub::Exec)) => pod_proxy::exec(api, &t, &req).await,
        ("PUT", true, None | Some(Sub::Status | Sub::Finalize)) => {
            write::update(api, &t, &req).await
        }
        ("PUT", true, Some(Sub::Scale)) => write::put_scale(api, &t, &req).await,
        ("PATCH", true, None | Some(Sub::Status)) => write::patch(api, &t, &req).await,
        ("PATCH", true, Some(Sub::Scale)) => write::patch_scale(api, &t, &req).await,
        ("DELETE", true, None) => write::delete(api, &t, &req).await,
        ("DELETE", false, None) => write::delete_collection(api, &t, &req).await,
        (method, _, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            t.res.qualified()
        ))),
    }
}
