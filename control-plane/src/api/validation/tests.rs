//! Each rule against upstream's wording: field path and message.
use serde_json::{Value, json};

use super::*;
use crate::api::defaults;

/// `(field, message)` of every cause for a defaulted object of `kind`.
fn causes(kind: &str, group: &str, mut obj: Value) -> Vec<(String, String)> {
    defaults::apply(kind, &mut obj);
    if kind == "Service" {
        crate::api::services::default_ip_families(&mut obj);
    }
    create(kind, group, &obj)
        .into_iter()
        .map(|c| (c.field, c.message))
        .collect()
}

fn has(found: &[(String, String)], field: &str, message: &str) -> bool {
    found.iter().any(|(f, m)| f == field && m.contains(message))
}

fn slice(address: &str) -> Value {
    json!({"metadata": {"name": "web-1", "namespace": "default"}, "addressType": "IPv4",
           "endpoints": [{"addresses": [address]}], "ports": [{"port": 80}]})
}

#[test]
fn endpoint_slice_addresses_as_upstream() {
    let at = "endpoints[0].addresses[0]";
    let link_local = causes("EndpointSlice", "discovery.k8s.io", slice("169.254.1.1"));
    assert_eq!(
        link_local,
        [(
            at.to_owned(),
            "Invalid value: \"169.254.1.1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)".to_owned()
        )]
    );
    let loopback = causes("EndpointSlice", "discovery.k8s.io", slice("127.0.0.1"));
    assert!(
        has(
            &loopback,
            at,
            "may not be in the loopback range (127.0.0.0/8, ::1/128)"
        ),
        "{loopback:?}"
    );
    let garbage = causes("EndpointSlice", "discovery.k8s.io", slice("not-an-ip"));
    assert!(
        has(
            &garbage,
            at,
            "Invalid value: \"not-an-ip\": must be a valid IPv4 address"
        ),
        "{garbage:?}"
    );
    assert!(has(&garbage, at, "must be a valid IP address"));
    assert!(causes("EndpointSlice", "discovery.k8s.io", slice("10.0.0.1")).is_empty());
    let v6 = causes("EndpointSlice", "discovery.k8s.io", slice("fd00::1"));
    assert!(
        has(&v6, at, "must be a valid IPv4 address"),
        "a v6 address in a v4 slice"
    );
    let mut bad_type = slice("10.0.0.1");
    bad_type["addressType"] = json!("IPv5");
    assert!(has(
        &causes("EndpointSlice", "discovery.k8s.io", bad_type),
        "addressType",
        "Unsupported value: \"IPv5\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
    ));
    let mut dup_ports = slice("10.0.0.1");
    dup_ports["ports"] = json!([{"name": "a", "port": 1}, {"name": "a", "port": 2}]);
    assert!(has(
        &causes("EndpointSlice", "discovery.k8s.io", dup_ports),
        "ports[1].name",
        "Duplicate value: \"a\""
    ));
    let mut old = slice("10.0.0.1");
    defaults::apply("EndpointSlice", &mut old);
    let mut new = old.clone();
    new["addressType"] = json!("FQDN");
    new["endpoints"] = json!([{"addresses": ["web.example.com"]}]);
    let changed = update("EndpointSlice", "discovery.k8s.io", &old, &new);
    assert!(
        changed.iter().any(|c| c.field == "addressType"
            && c.message == "Invalid value: \"FQDN\": field is immutable"),
        "{changed:?}"
    );
}

#[test]
fn endpoints_refuse_special_addresses() {
    let ep = json!({"metadata": {"name": "web"}, "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 80}]}]});
    assert!(has(
        &causes("Endpoints", "", ep),
        "subsets[0].addresses[0].ip",
        "may not be in the loopback range"
    ));
    let empty = json!({"metadata": {"name": "web"}, "subsets": [{"ports": [{"port": 80}]}]});
    assert!(has(
        &causes("Endpoints", "", empty),
        "subsets[0]",
        "Required value: must specify `addresses` or `notReadyAddresses`"
    ));
}

fn deployment(selector: Value, labels: Value) -> Value {
    json!({"metadata": {"name": "web"}, "spec": {"selector": selector, "template": {
        "metadata": {"labels": labels}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
}

#[test]
fn workloads_must_select_their_templates() {
    let found = causes(
        "Deployment",
        "apps",
        deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "api"}),
        ),
    );
    assert_eq!(
        found,
        [(
            "spec.template.metadata.labels".to_owned(),
            "Invalid value: map[string]string{\"app\":\"api\"}: `selector` does not match template `labels`".to_owned()
        )]
    );
    let empty = causes(
        "Deployment",
        "apps",
        deployment(json!({}), json!({"app": "web"})),
    );
    assert!(has(
        &empty,
        "spec.selector",
        "empty selector is invalid for deployment"
    ));
    let mut never = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web"}),
    );
    never["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    never["spec"]["replicas"] = json!(-1);
    let found = causes("Deployment", "apps", never);
    assert!(has(
        &found,
        "spec.template.spec.restartPolicy",
        "Unsupported value: \"Never\": supported values: \"Always\""
    ));
    assert!(has(
        &found,
        "spec.replicas",
        "Invalid value: -1: must be greater than or equal to 0"
    ));
    let mut no_surge = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web"}),
    );
    no_surge["spec"]["strategy"] = json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}});
    assert!(has(
        &causes("Deployment", "apps", no_surge),
        "spec.strategy.rollingUpdate.maxUnavailable",
        "may not be 0 when `maxSurge` is 0"
    ));
    let mut old = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web", "v": "1"}),
    );
    defaults::apply("Deployment", &mut old);
    let mut new = old.clone();
    new["spec"]["selector"] = json!({"matchLabels": {"v": "1"}});
    assert!(
        update("Deployment", "apps", &old, &new)
            .iter()
            .any(|c| c.field == "spec.selector" && c.message.ends_with("field is immutable"))
    );
    let job = json!({"metadata": {"name": "j"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
        "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Always"}}}});
    assert!(has(
        &causes("Job", "batch", job),
        "spec.template.spec.restartPolicy",
        "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
    ));
}

#[test]
fn pod_specs_containers_volumes_probes() {
    let pod = json!({"metadata": {"name": "p"}, "spec": {
        "containers": [
            {"name": "Web", "ports": [{"containerPort": 70000, "name": "http"}, {"containerPort": 80, "name": "http"}],
             "volumeMounts": [{"name": "missing", "mountPath": "/data"}],
             "readinessProbe": {"periodSeconds": 5},
             "livenessProbe": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}},
             "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
             "env": [{"name": "A", "value": "x", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
            {"name": "Web", "image": "i"}],
        "volumes": [{"name": "v"}, {"name": "v", "emptyDir": {}, "secret": {"secretName": "s"}}]}});
    let found = causes("Pod", "", pod);
    let c0 = "spec.containers[0]";
    for (field, message) in [
        (
            format!("{c0}.name"),
            "a lowercase RFC 1123 label must consist of",
        ),
        (format!("{c0}.image"), "Required value"),
        (
            format!("{c0}.ports[0].containerPort"),
            "Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        (format!("{c0}.ports[1].name"), "Duplicate value: \"http\""),
        (
            format!("{c0}.volumeMounts[0].name"),
            "Not found: \"missing\"",
        ),
        (
            format!("{c0}.readinessProbe"),
            "Required value: must specify a handler type",
        ),
        (
            format!("{c0}.livenessProbe.tcpSocket"),
            "Forbidden: may not specify more than 1 handler type",
        ),
        (
            format!("{c0}.resources.requests.cpu"),
            "Invalid value: \"2\": must be less than or equal to cpu limit of 1",
        ),
        (
            format!("{c0}.env[0].valueFrom"),
            "may not be specified when `value` is not empty",
        ),
        (
            "spec.containers[1].name".to_owned(),
            "Duplicate value: \"Web\"",
        ),
        ("spec.volumes[1].name".to_owned(), "Duplicate value: \"v\""),
        (
            "spec.volumes[1].secret".to_owned(),
            "Forbidden: may not specify more than 1 volume type",
        ),
    ] {
        assert!(
            has(&found, &field, message),
            "{field}: {message} in {found:#?}"
        );
    }
    assert!(
        !has(&found, "spec.volumes[0]", "must specify a volume type"),
        "no source defaults to emptyDir"
    );
    let no_containers = causes("Pod", "", json!({"metadata": {"name": "p"}, "spec": {}}));
    assert!(has(&no_containers, "spec.containers", "Required value"));
}

#[test]
fn pods_may_change_only_images_and_a_few_fields() {
    let mut old =
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
    defaults::apply("Pod", &mut old);
    let mut image = old.clone();
    image["spec"]["containers"][0]["image"] = json!("b");
    assert!(update("Pod", "", &old, &image).is_empty());
    let mut restart = old.clone();
    restart["spec"]["restartPolicy"] = json!("Never");
    let found = update("Pod", "", &old, &restart);
    assert!(found.iter().any(|c| {
        c.field == "spec"
            && c.message
                .starts_with("Forbidden: pod updates may not change fields")
    }));
}

fn service(spec: Value) -> Value {
    json!({"metadata": {"name": "web"}, "spec": spec})
}

#[test]
fn services_as_upstream() {
    let found = causes(
        "Service",
        "",
        service(
            json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30000}, {"port": 80}]}),
        ),
    );
    assert!(has(
        &found,
        "spec.ports[0].nodePort",
        "Forbidden: may not be used when `type` is 'ClusterIP'"
    ));
    assert!(
        has(&found, "spec.ports[0].name", "Required value"),
        "names are required with more than one port"
    );
    assert!(has(
        &found,
        "spec.ports[1]",
        "Duplicate value: core.ServicePort{"
    ));
    let ext = causes("Service", "", service(json!({"type": "ExternalName"})));
    assert!(has(&ext, "spec.externalName", "Required value"));
    let headless_np = causes(
        "Service",
        "",
        service(json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]})),
    );
    assert!(has(
        &headless_np,
        "spec.clusterIPs[0]",
        "may not be set to 'None' for NodePort services"
    ));
    let affinity = causes(
        "Service",
        "",
        service(
            json!({"ports": [{"port": 80}], "sessionAffinity": "ClientIP",
                       "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
        ),
    );
    assert!(has(
        &affinity,
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        "Invalid value: 0: must be greater than 0 and less than 86400"
    ));
    let port_name = causes(
        "Service",
        "",
        service(json!({"ports": [{"port": 80, "targetPort": "no_underscores"}]})),
    );
    assert!(has(
        &port_name,
        "spec.ports[0].targetPort",
        "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
    ));
    let name = causes(
        "Service",
        "",
        json!({"metadata": {"name": "1web"}, "spec": {"ports": [{"port": 80}]}}),
    );
    assert_eq!(
        name,
        [(
            "metadata.name".to_owned(),
            "Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".to_owned()
        )]
    );
}

#[test]
fn config_maps_secrets_and_metadata() {
    let cm = json!({"metadata": {"name": "c", "labels": {"bad key!": "v"}, "annotations": {"a": "x".repeat(300 * 1024)}},
                    "data": {"bad/key": "1", "k": "2"}, "binaryData": {"k": "AA=="}});
    let found = causes("ConfigMap", "", cm);
    assert!(has(
        &found,
        "data[bad/key]",
        "a valid config key must consist of alphanumeric characters"
    ));
    assert!(has(
        &found,
        "data[k]",
        "duplicate of key present in binaryData"
    ));
    assert!(has(
        &found,
        "metadata.labels",
        "Invalid value: \"bad key!\": name part must consist of alphanumeric characters"
    ));
    assert!(has(
        &found,
        "metadata.annotations",
        "Too long: may not be more than 262144 bytes"
    ));
    let tls = causes(
        "Secret",
        "",
        json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "AA=="}}),
    );
    assert_eq!(
        tls,
        [("data[tls.key]".to_owned(), "Required value".to_owned())]
    );
    let mut old = json!({"metadata": {"name": "c"}, "data": {"a": "1"}, "immutable": true});
    defaults::apply("ConfigMap", &mut old);
    let mut new = old.clone();
    new["data"]["a"] = json!("2");
    let found = update("ConfigMap", "", &old, &new);
    assert!(found.iter().any(|c| c.field == "data"
        && c.message == "Forbidden: field is immutable when `immutable` is set"));
    let owners = causes(
        "ConfigMap",
        "",
        json!({"metadata": {"name": "c", "ownerReferences": [
        {"apiVersion": "v1", "kind": "A", "name": "a", "uid": "1", "controller": true},
        {"apiVersion": "v1", "kind": "B", "name": "b", "uid": "2", "controller": true}]}}),
    );
    assert!(has(
        &owners,
        "metadata.ownerReferences",
        "Only one reference can have Controller set to true. Found \"true\" in references for A/a and B/b"
    ));
}

#[test]
fn rbac_rules_and_bindings() {
    let role = causes(
        "Role",
        "rbac.authorization.k8s.io",
        json!({"metadata": {"name": "r"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"]}, {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]}),
    );
    assert!(has(
        &role,
        "rules[0].verbs",
        "Required value: verbs must contain at least one value"
    ));
    assert!(has(
        &role,
        "rules[1].nonResourceURLs",
        "namespaced rules cannot apply to non-resource URLs"
    ));
    let binding = json!({"metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
                         "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "Robot", "name": "x"}]});
    let found = causes(
        "ClusterRoleBinding",
        "rbac.authorization.k8s.io",
        binding.clone(),
    );
    assert!(has(
        &found,
        "roleRef.kind",
        "Unsupported value: \"Role\": supported values: \"ClusterRole\""
    ));
    assert!(has(&found, "subjects[0].namespace", "Required value"));
    assert!(has(
        &found,
        "subjects[1].kind",
        "Unsupported value: \"Robot\""
    ));
    let mut old = binding.clone();
    defaults::apply("RoleBinding", &mut old);
    let mut new = old.clone();
    new["roleRef"]["name"] = json!("other");
    let changed = update("RoleBinding", "rbac.authorization.k8s.io", &old, &new);
    assert!(
        changed
            .iter()
            .any(|c| c.field == "roleRef" && c.message.ends_with("cannot change roleRef"))
    );
}

#[test]
fn names_and_labels_rules() {
    assert!(dns1123_label("web-1").is_empty());
    assert_eq!(dns1123_label("a.b"), ["must not contain dots"]);
    assert!(!dns1123_subdomain("a..b").is_empty());
    assert!(qualified_name("example.com/MyName").is_empty());
    assert_eq!(qualified_name("/x"), ["prefix part must be non-empty"]);
    assert!(label_value("").is_empty());
    assert!(!label_value("-x").is_empty());
    assert_eq!(port_name("a--b"), ["must not contain consecutive hyphens"]);
    assert!(
        meta::name_problems(
            "ClusterRole",
            "rbac.authorization.k8s.io",
            "system:node-proxier"
        )
        .is_empty()
    );
    assert_eq!(
        meta::name_problems("ClusterRole", "rbac.authorization.k8s.io", "a/b"),
        ["may not contain '/'"]
    );
}
