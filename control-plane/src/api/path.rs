//! Request paths and query strings, as real clients send them.
use std::collections::HashMap;

use super::{
    resources::{Resource, Sub},
    status::{ApiError, ApiResult},
};

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Version,
    Health,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/apps`
    Group(String),
    /// `/api/v1`, `/apis/apps/v1`
    GroupVersion {
        group: String,
        version: String,
    },
    /// `/openapi/v3`
    OpenApiIndex,
    /// `/openapi/v3/api/v1`, `/openapi/v3/apis/apps/v1`
    OpenApiDoc {
        group: String,
        version: String,
    },
    Object(Target),
    /// The deprecated `/api/v1/watch/…` form of a watch.
    Watch(Target),
}

/// A collection, an object or an object's subresource.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<Sub>,
}

pub fn parse(path: &str) -> ApiResult<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let not_found = || ApiError::path_not_found(path);
    Ok(match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["openapi", "v3"] => Route::OpenApiIndex,
        ["openapi", "v3", "api", v] => Route::OpenApiDoc {
            group: String::new(),
            version: (*v).to_owned(),
        },
        ["openapi", "v3", "apis", g, v] => Route::OpenApiDoc {
            group: (*g).to_owned(),
            version: (*v).to_owned(),
        },
        ["api", v] => Route::GroupVersion {
            group: String::new(),
            version: (*v).to_owned(),
        },
        ["apis", g] => Route::Group((*g).to_owned()),
        ["apis", g, v] => Route::GroupVersion {
            group: (*g).to_owned(),
            version: (*v).to_owned(),
        },
        ["api", v, "watch", rest @ ..] => Route::Watch(target("", v, rest).ok_or_else(not_found)?),
        ["apis", g, v, "watch", rest @ ..] => {
            Route::Watch(target(g, v, rest).ok_or_else(not_found)?)
        }
        ["api", v, rest @ ..] => Route::Object(target("", v, rest).ok_or_else(not_found)?),
        ["apis", g, v, rest @ ..] => Route::Object(target(g, v, rest).ok_or_else(not_found)?),
        _ => return Err(not_found()),
    })
}

fn sub(name: &str, res: &Resource) -> Option<Sub> {
    [
        Sub::Status,
        Sub::Scale,
        Sub::Binding,
        Sub::Token,
        Sub::Finalize,
        Sub::Log,
        Sub::Exec,
    ]
    .into_iter()
    .find(|s| s.name() == name && res.has(*s))
}

fn target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let find = |plural: &str| Resource::find(group, version, plural);
    let object = |res: &'static Resource, ns: Option<&str>, tail: &[&str]| -> Option<Target> {
        let (name, sub) = match tail {
            [] => (None, None),
            [name] => (Some((*name).to_owned()), None),
            [name, s] => (Some((*name).to_owned()), Some(sub(s, res)?)),
            _ => return None,
        };
        Some(Target {
            res,
            namespace: ns.map(str::to_owned),
            name,
            sub,
        })
    };
    match rest {
        // `/api/v1/namespaces/{name}[/status|/finalize]` is a Namespace object…
        ["namespaces", tail @ ..]
            if tail.len() <= 1 || (tail.len() == 2 && matches!(tail[1], "status" | "finalize")) =>
        {
            object(find("namespaces")?, None, tail)
        }
        // …while `/api/v1/namespaces/{ns}/{plural}…` is inside it.
        ["namespaces", ns, plural, tail @ ..] => {
            let res = find(plural)?;
            res.namespaced.then_some(())?;
            object(res, Some(ns), tail)
        }
        [plural, tail @ ..] => object(find(plural)?, None, tail),
        [] => None,
    }
}

/// Query parameters, decoded. Tolerates the `?&limit=500` kube-rs sends.
/// A repeated parameter means its first value, as Go's `url.Values.Get`.
#[derive(Debug, Default)]
pub struct Query {
    first: HashMap<String, String>,
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let mut first = HashMap::new();
        for (k, v) in &pairs {
            first.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Self { first, pairs }
    }

    /// The parameter's value when sent and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.raw(key).filter(|v| !v.is_empty())
    }

    /// The parameter's value when sent, even empty.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.first.get(key).map(String::as_str)
    }

    /// Every value of a repeatable parameter (`dryRun=All&dryRun=All`).
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A boolean as upstream's parameter decoding reads it: sent and not
    /// `0` or `false` (any case) is true (the Python client sends `True`).
    pub fn flag(&self, key: &str) -> bool {
        self.raw(key)
            .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
    }

    /// An optional boolean: unset, or [`Self::flag`].
    pub fn optional_flag(&self, key: &str) -> Option<bool> {
        self.raw(key).map(|_| self.flag(key))
    }

    /// An integer, when sent; anything else is upstream's 400.
    pub fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        self.raw(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "strconv.ParseInt: parsing {}: invalid syntax",
                        super::validation::quote(v)
                    ))
                })
            })
            .transpose()
    }

    /// A non-negative integer (a grace period); negative ones are 400.
    pub fn number(&self, key: &str) -> ApiResult<Option<u64>> {
        match self.int(key)? {
            Some(n) if n < 0 => Err(ApiError::bad_request(format!(
                "invalid {key} {n}: must not be negative"
            ))),
            other => Ok(other.map(|n| n as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(path: &str) -> Target {
        match parse(path).unwrap() {
            Route::Object(t) => t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths_map_to_targets() {
        let t = object("/api/v1/namespaces/default/services/web");
        assert_eq!(
            (t.res.kind, t.namespace.as_deref(), t.name.as_deref(), t.sub),
            ("Service", Some("default"), Some("web"), None)
        );
        let t = object("/api/v1/services");
        assert_eq!((t.res.kind, t.namespace, t.name), ("Service", None, None));
        let t = object("/api/v1/namespaces/kube-system");
        assert_eq!(
            (t.res.kind, t.namespace, t.name.as_deref()),
            ("Namespace", None, Some("kube-system"))
        );
        let t = object("/api/v1/namespaces/kube-system/status");
        assert_eq!((t.res.kind, t.sub), ("Namespace", Some(Sub::Status)));
        let t = object("/apis/apps/v1/namespaces/default/deployments/web/scale");
        assert_eq!((t.res.kind, t.sub), ("Deployment", Some(Sub::Scale)));
        let t = object("/api/v1/nodes/n1/status");
        assert_eq!(
            (t.res.kind, t.name.as_deref(), t.sub),
            ("Node", Some("n1"), Some(Sub::Status))
        );
        assert_eq!(
            parse("/apis/rbac.authorization.k8s.io").unwrap(),
            Route::Group("rbac.authorization.k8s.io".into())
        );
        let t = object("/apis/rbac.authorization.k8s.io/v1/clusterroles/system:node-proxier");
        assert_eq!(
            (t.res.kind, t.namespace, t.name.as_deref()),
            ("ClusterRole", None, Some("system:node-proxier"))
        );
        let t = object("/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings");
        assert_eq!(
            (t.res.kind, t.namespace.as_deref()),
            ("RoleBinding", Some("default"))
        );
        assert_eq!(
            parse("/apis/apps/v1").unwrap(),
            Route::GroupVersion {
                group: "apps".into(),
                version: "v1".into()
            }
        );
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for p in [
            "/api/v1/widgets",
            "/api/v2/pods",
            "/api/v1/namespaces/default/nodes",
            "/api/v1/namespaces/default/services/web/scale",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/clusterroles",
            "/nope",
        ] {
            assert!(parse(p).is_err(), "{p}");
        }
    }

    #[test]
    fn query_tolerates_empty_pairs_and_python_booleans() {
        let q = Query::parse(Some(
            "&limit=500&watch=True&labelSelector=app%3Dweb&limit=1",
        ));
        assert_eq!(q.int("limit").unwrap(), Some(500), "the first value");
        assert!(q.flag("watch"));
        assert_eq!(q.get("labelSelector"), Some("app=web"));
        assert_eq!(
            Query::parse(Some("limit=x"))
                .int("limit")
                .unwrap_err()
                .message,
            "strconv.ParseInt: parsing \"x\": invalid syntax"
        );
        for (q, watch) in [
            ("watch=0", false),
            ("watch=FALSE", false),
            ("watch=yes", true),
            ("watch=", true),
            ("", false),
        ] {
            assert_eq!(Query::parse(Some(q)).flag("watch"), watch, "{q}");
        }
    }
}
