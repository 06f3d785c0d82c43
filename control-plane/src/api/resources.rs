//! The kinds this API server serves, and what clients need to know of each
//! (discovery, paths, storage keys, field selectors).

/// A subresource path under an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Status,
    Scale,
    Binding,
    /// `serviceaccounts/<name>/token`: a TokenRequest.
    Token,
    /// `pods/<name>/log`: the container's log, from its node agent.
    Log,
    /// `pods/<name>/exec`: a command in a container, over WebSocket.
    Exec,
    /// `namespaces/<name>/finalize`: the only way to change a Namespace's
    /// `spec.finalizers` (the namespace controller removes `kubernetes`).
    Finalize,
}

impl Sub {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Scale => "scale",
            Self::Binding => "binding",
            Self::Token => "token",
            Self::Log => "log",
            Self::Exec => "exec",
            Self::Finalize => "finalize",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// API group; `""` is the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural lower-case name used in paths.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub subresources: &'static [Sub],
    /// Field selectors beyond `metadata.name` and `metadata.namespace`.
    pub extra_fields: &'static [&'static str],
    /// Only `create` is served and nothing is stored: a review that answers
    /// with its `status` (SubjectAccessReview, TokenReview, …).
    pub review: bool,
    /// Defined by a CustomResourceDefinition (see [`super::crd`]).
    pub custom: bool,
}

const NONE: &[&str] = &[];

macro_rules! resource {
    ($group:literal, $version:literal, $plural:literal, $singular:literal, $kind:literal, $namespaced:literal,
     short: $short:expr, subs: $subs:expr, fields: $fields:expr) => {
        Resource {
            group: $group,
            version: $version,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $namespaced,
            short_names: $short,
            subresources: $subs,
            extra_fields: $fields,
            review: false,
            custom: false,
        }
    };
}

/// A create-only review kind.
macro_rules! review {
    ($group:literal, $plural:literal, $singular:literal, $kind:literal, $namespaced:literal) => {
        Resource {
            group: $group,
            version: "v1",
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $namespaced,
            short_names: NONE,
            subresources: &[],
            extra_fields: NONE,
            review: true,
            custom: false,
        }
    };
}

/// Every resource served, in discovery order.
pub const RESOURCES: &[Resource] = &[
    resource!("", "v1", "namespaces", "namespace", "Namespace", false, short: &["ns"], subs: &[Sub::Status, Sub::Finalize], fields: &["status.phase"]),
    resource!("", "v1", "pods", "pod", "Pod", true, short: &["po"], subs: &[Sub::Status, Sub::Binding, Sub::Log, Sub::Exec],
        fields: &["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "status.phase", "status.podIP"]),
    resource!("", "v1", "services", "service", "Service", true, short: &["svc"], subs: &[Sub::Status], fields: NONE),
    resource!("", "v1", "endpoints", "endpoints", "Endpoints", true, short: &["ep"], subs: &[], fields: NONE),
    resource!("", "v1", "nodes", "node", "Node", false, short: &["no"], subs: &[Sub::Status], fields: &["spec.unschedulable"]),
    resource!("", "v1", "replicationcontrollers", "replicationcontroller", "ReplicationController", true, short: &["rc"],
        subs: &[Sub::Status, Sub::Scale], fields: &["status.replicas"]),
    resource!("", "v1", "configmaps", "configmap", "ConfigMap", true, short: &["cm"], subs: &[], fields: NONE),
    resource!("", "v1", "secrets", "secret", "Secret", true, short: NONE, subs: &[], fields: &["type"]),
    resource!("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, short: &["sa"], subs: &[Sub::Token], fields: NONE),
    resource!("", "v1", "events", "event", "Event", true, short: &["ev"], subs: &[],
        fields: &["involvedObject.kind", "involvedObject.name", "involvedObject.namespace", "involvedObject.uid", "reason", "type"]),
    resource!("apps", "v1", "deployments", "deployment", "Deployment", true, short: &["deploy"], subs: &[Sub::Status, Sub::Scale], fields: NONE),
    resource!("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true, short: &["rs"], subs: &[Sub::Status, Sub::Scale], fields: &["status.replicas"]),
    resource!("apps", "v1", "daemonsets", "daemonset", "DaemonSet", true, short: &["ds"], subs: &[Sub::Status, Sub::Scale], fields: NONE),
    resource!("batch", "v1", "jobs", "job", "Job", true, short: NONE, subs: &[Sub::Status], fields: &["status.successful"]),
    resource!("batch", "v1", "cronjobs", "cronjob", "CronJob", true, short: &["cj"], subs: &[Sub::Status], fields: NONE),
    resource!("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", true, short: NONE, subs: &[], fields: NONE),
    resource!("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, short: NONE, subs: &[], fields: NONE),
    // RBAC objects: what authorization reads (see api::authz).
    resource!("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", true, short: NONE, subs: &[], fields: NONE),
    resource!("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", true, short: NONE, subs: &[], fields: NONE),
    resource!("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", false, short: NONE, subs: &[], fields: NONE),
    resource!("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", false, short: NONE, subs: &[], fields: NONE),
    resource!("apiextensions.k8s.io", "v1", "customresourcedefinitions", "customresourcedefinition", "CustomResourceDefinition", false,
        short: &["crd", "crds"], subs: &[Sub::Status], fields: NONE),
    review!(
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false
    ),
    review!(
        "authorization.k8s.io",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false
    ),
    review!(
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        "LocalSubjectAccessReview",
        true
    ),
    review!(
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        "SelfSubjectRulesReview",
        false
    ),
    review!(
        "authentication.k8s.io",
        "selfsubjectreviews",
        "selfsubjectreview",
        "SelfSubjectReview",
        false
    ),
    review!(
        "authentication.k8s.io",
        "tokenreviews",
        "tokenreview",
        "TokenReview",
        false
    ),
];

/// Every resource served now: the built-in ones, then the custom ones.
pub fn all() -> Vec<&'static Resource> {
    RESOURCES.iter().chain(super::crd::all()).collect()
}

/// The namespaces that exist from the start.
pub const INITIAL_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

impl Resource {
    /// A built-in resource, or a custom one a CRD serves.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Self> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .or_else(|| super::crd::find(group, version, plural))
    }

    pub fn namespaces() -> &'static Self {
        &RESOURCES[0]
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has(&self, sub: Sub) -> bool {
        self.subresources.contains(&sub)
    }

    /// Group-qualified name for messages: `services`, `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Storage key prefix of all objects (`ns = None`) or one namespace's.
    pub fn key_prefix(&self, ns: Option<&str>) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match ns {
            Some(ns) => format!("/{group}/{}/{ns}/", self.plural),
            None => format!("/{group}/{}/", self.plural),
        }
    }

    /// Storage key of one object; cluster-scoped objects have an empty namespace.
    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.key_prefix(Some(ns.unwrap_or(""))))
    }

    pub fn field_selectors(&self) -> Vec<&'static str> {
        let mut f = vec!["metadata.name", "metadata.namespace"];
        f.extend_from_slice(self.extra_fields);
        f
    }
}
