//! Upstream's defaults for the built-in kinds (`SetDefaults_*` in
//! kubernetes' `pkg/apis/{core,apps,batch,discovery,rbac}/v1/defaults.go`),
//! applied to every object written, so clients read back what a Kubernetes
//! API server would have stored.
//!
//! In Go an unset non-pointer field and its zero value are the same thing,
//! so a default replaces both (`protocol: ""` becomes `TCP`); a pointer
//! field is defaulted only when absent (`replicas: 0` stays).
use serde_json::{Map, Value, json};

/// Sets `key` when absent or null.
fn default_ptr(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_owned(), value);
    }
}

/// Sets `key` when absent, null or the zero value (`""`, `0`).
fn default_value(obj: &mut Map<String, Value>, key: &str, value: Value) {
    let unset = match obj.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        _ => false,
    };
    if unset {
        obj.insert(key.to_owned(), value);
    }
}

/// The object at `key`, made an empty object when absent or not an object.
fn child<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let v = obj.entry(key).or_insert_with(|| json!({}));
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("an object")
}

fn objects_in<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    obj.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// What Go's decoding into the kind's type drops (see
/// [`crate::api::proto::omit`]), for a built-in kind.
fn omit_unset(obj: &mut Value) {
    let (Some(api_version), Some(kind)) = (
        obj.get("apiVersion").and_then(Value::as_str),
        obj.get("kind").and_then(Value::as_str),
    ) else {
        return;
    };
    if let Some(message) = crate::api::proto::message_name(api_version, kind) {
        crate::api::proto::omit::drop_unset(&message, obj);
    }
}

/// Applies the defaults of `kind` to `obj` (a whole object), after
/// dropping what Go's decoding would.
pub fn apply(kind: &str, obj: &mut Value) {
    omit_unset(obj);
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match kind {
        "Pod" => {
            let spec = child(root, "spec");
            pod_spec(spec);
            pod_only(spec);
        }
        "PodTemplate" => template(child(root, "template")),
        "ReplicationController" => {
            let spec = child(root, "spec");
            default_ptr(spec, "replicas", json!(1));
            if let Some(t) = spec.get_mut("template").and_then(Value::as_object_mut) {
                template(t);
            }
            // The selector and the object's labels come from the template's labels.
            if let Some(labels) = template_labels(spec) {
                if spec
                    .get("selector")
                    .and_then(Value::as_object)
                    .is_none_or(Map::is_empty)
                {
                    spec.insert("selector".into(), labels.clone());
                }
                default_labels(root, labels);
            }
        }
        "Deployment" => {
            let spec = child(root, "spec");
            default_ptr(spec, "replicas", json!(1));
            let strategy = child(spec, "strategy");
            default_value(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = child(strategy, "rollingUpdate");
                default_ptr(rolling, "maxUnavailable", json!("25%"));
                default_ptr(rolling, "maxSurge", json!("25%"));
            }
            default_ptr(spec, "revisionHistoryLimit", json!(10));
            default_ptr(spec, "progressDeadlineSeconds", json!(600));
            template(child(spec, "template"));
        }
        "ReplicaSet" => {
            let spec = child(root, "spec");
            default_ptr(spec, "replicas", json!(1));
            template(child(spec, "template"));
        }
        "DaemonSet" => {
            let spec = child(root, "spec");
            let strategy = child(spec, "updateStrategy");
            default_value(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = child(strategy, "rollingUpdate");
                default_ptr(rolling, "maxUnavailable", json!(1));
                default_ptr(rolling, "maxSurge", json!(0));
            }
            default_ptr(spec, "revisionHistoryLimit", json!(10));
            template(child(spec, "template"));
        }
        "Job" => {
            let spec = child(root, "spec");
            job_spec(spec);
            // The object's labels come from the template's when it has none.
            if let Some(labels) = template_labels(spec) {
                default_labels(root, labels);
            }
        }
        "CronJob" => {
            let spec = child(root, "spec");
            default_value(spec, "concurrencyPolicy", json!("Allow"));
            default_ptr(spec, "suspend", json!(false));
            default_ptr(spec, "successfulJobsHistoryLimit", json!(3));
            default_ptr(spec, "failedJobsHistoryLimit", json!(1));
            job_spec(child(child(spec, "jobTemplate"), "spec"));
        }
        "Service" => service(child(root, "spec")),
        "Secret" => default_value(root, "type", json!("Opaque")),
        "Namespace" => {
            let name = root
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_owned);
            if let Some(name) = name {
                let labels = child(child(root, "metadata"), "labels");
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
        "Endpoints" => {
            for subset in objects_in(root, "subsets") {
                for port in objects_in(subset, "ports") {
                    default_value(port, "protocol", json!("TCP"));
                }
            }
        }
        "EndpointSlice" => {
            for port in objects_in(root, "ports") {
                default_ptr(port, "name", json!(""));
                default_ptr(port, "protocol", json!("TCP"));
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            // A ServiceAccount's group is the core group, "", which JSON omits.
            for subject in objects_in(root, "subjects") {
                if matches!(
                    subject.get("kind").and_then(Value::as_str),
                    Some("User" | "Group")
                ) {
                    default_value(subject, "apiGroup", json!("rbac.authorization.k8s.io"));
                }
            }
        }
        "Node" => {
            let status = child(root, "status");
            if status.get("allocatable").is_none()
                && let Some(capacity) = status.get("capacity").cloned()
            {
                status.insert("allocatable".into(), capacity);
            }
        }
        _ => {}
    }
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` default (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u64 = 10_800;

/// `SetDefaults_Service`, and the IP family fields upstream's allocator
/// fills for the single-stack IPv4 cluster this server runs.
fn service(spec: &mut Map<String, Value>) {
    default_value(spec, "type", json!("ClusterIP"));
    default_value(spec, "sessionAffinity", json!("None"));
    let ty = spec["type"].as_str().unwrap_or_default().to_owned();
    match spec["sessionAffinity"].as_str() {
        Some("None") => {
            spec.remove("sessionAffinityConfig");
        }
        Some("ClientIP")
            if spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.pointer("/clientIP/timeoutSeconds"))
                .is_none_or(Value::is_null) =>
        {
            spec.insert(
                "sessionAffinityConfig".into(),
                json!({"clientIP": {"timeoutSeconds": DEFAULT_AFFINITY_TIMEOUT_S}}),
            );
        }
        _ => {}
    }
    // Go's zero values mean unset: `protocol: ""`, `targetPort: 0` or `""`.
    for p in objects_in(spec, "ports") {
        default_value(p, "protocol", json!("TCP"));
        let port = p.get("port").cloned().unwrap_or(Value::Null);
        default_value(p, "targetPort", port);
    }
    let externally_accessible = matches!(ty.as_str(), "NodePort" | "LoadBalancer")
        || (ty == "ClusterIP"
            && spec
                .get("externalIPs")
                .and_then(Value::as_array)
                .is_some_and(|ips| !ips.is_empty()));
    if externally_accessible {
        default_value(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    // The IP families are the allocator's (`services::allocate`), as
    // upstream's REST layer sets them after defaulting.
    if ty != "ExternalName" {
        default_ptr(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        default_ptr(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
}

/// A workload's template labels, when it has some.
fn template_labels(spec: &Map<String, Value>) -> Option<Value> {
    spec.get("template")
        .and_then(|t| t.pointer("/metadata/labels"))
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
        .cloned()
}

/// Gives the object `labels` when it has none.
fn default_labels(root: &mut Map<String, Value>, labels: Value) {
    let meta = child(root, "metadata");
    if meta
        .get("labels")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty)
    {
        meta.insert("labels".into(), labels);
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec.insert("completions".into(), json!(1));
    }
    default_ptr(spec, "parallelism", json!(1));
    default_ptr(spec, "backoffLimit", json!(6));
    default_ptr(spec, "completionMode", json!("NonIndexed"));
    default_ptr(spec, "suspend", json!(false));
    if spec.get("podFailurePolicy").is_none_or(Value::is_null) {
        default_ptr(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    }
    template(child(spec, "template"));
}

/// A `PodTemplateSpec`.
fn template(t: &mut Map<String, Value>) {
    pod_spec(child(t, "spec"));
}

/// `SetDefaults_PodSpec` and what it reaches (containers, probes, volumes).
fn pod_spec(spec: &mut Map<String, Value>) {
    default_value(spec, "dnsPolicy", json!("ClusterFirst"));
    default_value(spec, "restartPolicy", json!("Always"));
    default_ptr(spec, "securityContext", json!({}));
    default_ptr(spec, "terminationGracePeriodSeconds", json!(30));
    default_value(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in objects_in(spec, list) {
            container(c);
        }
    }
    for v in objects_in(spec, "volumes") {
        volume(v);
    }
}

fn pod_only(spec: &mut Map<String, Value>) {
    default_ptr(spec, "enableServiceLinks", json!(true));
    let host_network = spec.get("hostNetwork") == Some(&json!(true));
    for list in ["containers", "initContainers"] {
        for c in objects_in(spec, list) {
            // Requests default to limits.
            let resources = child(c, "resources");
            if let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() {
                let requests = child(resources, "requests");
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
            if host_network {
                for p in objects_in(c, "ports") {
                    let container_port = p.get("containerPort").cloned().unwrap_or(json!(0));
                    default_value(p, "hostPort", container_port);
                }
            }
        }
    }
}

/// The tag of an image reference: after the last `:` that follows the last
/// `/` (a registry port is not a tag), and not in a digest reference.
fn image_tag(image: &str) -> Option<&str> {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rsplit_once(':').map(|(_, tag)| tag)
}

fn container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    // `Always` for `:latest` (or no tag, which means latest), `IfNotPresent` otherwise.
    let digest = image.contains('@');
    let policy = match image_tag(image) {
        _ if digest => "IfNotPresent",
        None | Some("latest") => "Always",
        Some(_) => "IfNotPresent",
    };
    default_value(c, "imagePullPolicy", json!(policy));
    default_value(c, "terminationMessagePath", json!("/dev/termination-log"));
    default_value(c, "terminationMessagePolicy", json!("File"));
    default_ptr(c, "resources", json!({}));
    for p in objects_in(c, "ports") {
        default_value(p, "protocol", json!("TCP"));
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default_value(p, "timeoutSeconds", json!(1));
            default_value(p, "periodSeconds", json!(10));
            default_value(p, "successThreshold", json!(1));
            default_value(p, "failureThreshold", json!(3));
            if let Some(get) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                default_value(get, "path", json!("/"));
                default_value(get, "scheme", json!("HTTP"));
            }
        }
    }
    for env in objects_in(c, "env") {
        if let Some(field_ref) = env
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .and_then(Value::as_object_mut)
        {
            default_value(field_ref, "apiVersion", json!("v1"));
        }
    }
}

/// Volume sources' defaults; a volume with no source is an `emptyDir`.
fn volume(v: &mut Map<String, Value>) {
    let has_source = v.iter().any(|(k, val)| k != "name" && !val.is_null());
    if !has_source {
        v.insert("emptyDir".into(), json!({}));
    }
    // 0644, upstream's default mode for projected files.
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
            default_ptr(s, "defaultMode", json!(420));
        }
    }
    if let Some(h) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        default_ptr(h, "type", json!(""));
    }
}

/// Whether upstream tracks `metadata.generation` for `kind`: set to 1 on
/// create and bumped when the spec changes. Other kinds have none.
pub fn tracks_generation(kind: &str) -> bool {
    matches!(
        kind,
        "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
            | "ReplicationController"
            | "Job"
            | "CronJob"
            | "EndpointSlice"
            | "CustomResourceDefinition"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_get_upstream_defaults_and_keep_a_zero_replicas() {
        let mut d = json!({"spec": {"replicas": 0, "template": {"spec": {"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80, "protocol": ""}]},
            {"name": "b", "image": "registry:5000/app:1.2"},
            {"name": "c", "image": "app@sha256:abc"},
        ]}}}});
        apply("Deployment", &mut d);
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 0);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(
            (
                spec["revisionHistoryLimit"].as_u64(),
                spec["progressDeadlineSeconds"].as_u64()
            ),
            (Some(10), Some(600))
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(
            (
                pod["restartPolicy"].as_str(),
                pod["dnsPolicy"].as_str(),
                pod["terminationGracePeriodSeconds"].as_u64()
            ),
            (Some("Always"), Some("ClusterFirst"), Some(30))
        );
        let c = &pod["containers"];
        assert_eq!(c[0]["imagePullPolicy"], "Always", "no tag is latest");
        assert_eq!(
            c[1]["imagePullPolicy"], "IfNotPresent",
            "a registry port is not a tag"
        );
        assert_eq!(c[2]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            c[0]["ports"][0]["protocol"], "TCP",
            "an empty string is unset"
        );
        assert!(pod.get("enableServiceLinks").is_none(), "only Pods get it");
    }

    #[test]
    fn jobs_secrets_namespaces_and_probes() {
        let mut job = json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "busybox:1", "readinessProbe": {"httpGet": {"port": 80}}}]}}}});
        apply("Job", &mut job);
        assert_eq!(
            (
                job["spec"]["completions"].as_u64(),
                job["spec"]["parallelism"].as_u64(),
                job["spec"]["backoffLimit"].as_u64()
            ),
            (Some(1), Some(1), Some(6))
        );
        assert_eq!(job["metadata"]["labels"], json!({"a": "b"}));
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
        let probe = &job["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
        assert_eq!(
            probe["httpGet"],
            json!({"port": 80, "path": "/", "scheme": "HTTP"})
        );
        assert_eq!(probe["failureThreshold"], 3);
        let mut secret = json!({"type": ""});
        apply("Secret", &mut secret);
        assert_eq!(secret["type"], "Opaque");
        let mut ns = json!({"metadata": {"name": "x"}});
        apply("Namespace", &mut ns);
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
        let mut rb = json!({"subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s", "namespace": "d"}]});
        apply("RoleBinding", &mut rb);
        assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
        assert!(rb["subjects"][1].get("apiGroup").is_none());
    }
}
