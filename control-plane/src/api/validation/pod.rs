//! Pods and pod templates: kubernetes' `ValidatePodSpec`, containers,
//! volumes, probes, resources and the pod update rule
//! (`pkg/apis/core/validation`).
use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::{
    Errors, child, dns1123_label, dns1123_subdomain, index, labels, list, obj, port_name,
    port_number, qualified_name, service::port_num_or_name, text,
};

/// Every volume source a Volume may name (exactly one).
const VOLUME_SOURCES: [&str; 30] = [
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];
const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
const HANDLERS: [&str; 4] = ["exec", "httpGet", "tcpSocket", "grpc"];

pub fn pod(e: &mut Errors, pod: &Value, old: Option<&Value>) {
    let spec = pod.get("spec").cloned().unwrap_or_default();
    pod_spec(e, "spec", &spec);
    if let Some(old) = old {
        update_rule(e, old, pod);
    }
}

/// A `PodTemplateSpec` at `path` (`spec.template`).
pub fn template(e: &mut Errors, path: &str, t: &Value) {
    let meta = t.get("metadata").cloned().unwrap_or_default();
    labels(
        e,
        &child(&child(path, "metadata"), "labels"),
        meta.get("labels"),
    );
    let spec = t.get("spec").cloned().unwrap_or_default();
    pod_spec(e, &child(path, "spec"), &spec);
}

pub fn pod_spec(e: &mut Errors, path: &str, spec: &Value) {
    let at = |f: &str| child(path, f);
    let volumes = volumes(e, &at("volumes"), list(spec, "volumes"));
    let mut names = BTreeSet::new();
    if list(spec, "containers").is_empty() {
        e.required(at("containers"), "");
    }
    for key in ["initContainers", "containers"] {
        for (i, c) in list(spec, key).iter().enumerate() {
            container(
                e,
                &index(&at(key), i),
                c,
                &volumes,
                &mut names,
                key == "initContainers",
            );
        }
    }
    match text(spec, "restartPolicy") {
        "" => e.required(at("restartPolicy"), ""),
        "Always" | "OnFailure" | "Never" => {}
        other => e.not_supported(
            at("restartPolicy"),
            &Value::from(other),
            &["Always", "OnFailure", "Never"],
        ),
    }
    match text(spec, "dnsPolicy") {
        "" => e.required(at("dnsPolicy"), ""),
        "None" if spec.get("dnsConfig").is_none_or(Value::is_null) => e.required(
            at("dnsConfig"),
            "must provide `dnsConfig` when `dnsPolicy` is None",
        ),
        "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None" => {}
        other => e.not_supported(
            at("dnsPolicy"),
            &Value::from(other),
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        ),
    }
    for f in ["serviceAccountName", "nodeName"] {
        let v = text(spec, f);
        if !v.is_empty() {
            e.each(&at(f), v, dns1123_subdomain(v));
        }
    }
    for f in ["hostname", "subdomain"] {
        let v = text(spec, f);
        if !v.is_empty() {
            e.each(&at(f), v, dns1123_label(v));
        }
    }
    labels(e, &at("nodeSelector"), spec.get("nodeSelector"));
    if let Some(g) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        && g < 0
    {
        e.invalid(
            at("terminationGracePeriodSeconds"),
            &Value::from(g),
            "must be greater than or equal to 0",
        );
    }
    if let Some(d) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64)
        && !(1..=i64::from(i32::MAX)).contains(&d)
    {
        e.invalid(
            at("activeDeadlineSeconds"),
            &Value::from(d),
            "must be between 1 and 2147483647, inclusive",
        );
    }
    for (i, t) in list(spec, "tolerations").iter().enumerate() {
        let tat = index(&at("tolerations"), i);
        let op = text(t, "operator");
        if !["", "Exists", "Equal"].contains(&op) {
            e.not_supported(
                child(&tat, "operator"),
                &Value::from(op),
                &["Equal", "Exists"],
            );
        }
        if op == "Exists" && !text(t, "value").is_empty() {
            e.invalid(
                child(&tat, "operator"),
                &Value::from(op),
                "value must be empty when `operator` is 'Exists'",
            );
        }
        let effect = text(t, "effect");
        if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            e.not_supported(
                child(&tat, "effect"),
                &Value::from(effect),
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            );
        }
        let key = text(t, "key");
        if !key.is_empty() {
            e.each(&child(&tat, "key"), key, qualified_name(key));
        }
    }
}

/// Volume names and sources; returns the names, which mounts must use.
fn volumes(e: &mut Errors, path: &str, volumes: &[Value]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let at = index(path, i);
        let name = text(v, "name");
        if name.is_empty() {
            e.required(child(&at, "name"), "");
        } else {
            e.each(&child(&at, "name"), name, dns1123_label(name));
        }
        if !name.is_empty() && !names.insert(name.to_owned()) {
            e.duplicate(child(&at, "name"), &Value::from(name));
        }
        let sources: Vec<&str> = VOLUME_SOURCES
            .iter()
            .copied()
            .filter(|s| v.get(*s).is_some_and(|x| !x.is_null()))
            .collect();
        match sources.as_slice() {
            [] => e.required(&at, "must specify a volume type"),
            [_, extra @ ..] => {
                for s in extra {
                    e.forbidden(child(&at, s), "may not specify more than 1 volume type");
                }
            }
        }
        let required = [
            ("secret", "secretName"),
            ("hostPath", "path"),
            ("persistentVolumeClaim", "claimName"),
            ("nfs", "server"),
            ("nfs", "path"),
        ];
        for (source, field) in required {
            if let Some(s) = v.get(source).filter(|s| s.is_object())
                && text(s, field).is_empty()
            {
                e.required(child(&child(&at, source), field), "");
            }
        }
        for source in ["secret", "configMap", "downwardAPI", "projected"] {
            if let Some(mode) = v
                .get(source)
                .and_then(|s| s.get("defaultMode"))
                .and_then(Value::as_i64)
                && !(0..=0o777).contains(&mode)
            {
                e.invalid(
                    child(&child(&at, source), "defaultMode"),
                    &Value::from(mode),
                    "must be a number between 0 and 0777 (octal), both inclusive",
                );
            }
        }
    }
    names
}

fn container(
    e: &mut Errors,
    at: &str,
    c: &Value,
    volumes: &BTreeSet<String>,
    names: &mut BTreeSet<String>,
    init: bool,
) {
    let name = text(c, "name");
    if name.is_empty() {
        e.required(child(at, "name"), "");
    } else {
        e.each(&child(at, "name"), name, dns1123_label(name));
    }
    if !name.is_empty() && !names.insert(name.to_owned()) {
        e.duplicate(child(at, "name"), &Value::from(name));
    }
    if text(c, "image").is_empty() {
        e.required(child(at, "image"), "");
    }
    match text(c, "imagePullPolicy") {
        "" => e.required(child(at, "imagePullPolicy"), ""),
        "Always" | "IfNotPresent" | "Never" => {}
        other => e.not_supported(
            child(at, "imagePullPolicy"),
            &Value::from(other),
            &["Always", "IfNotPresent", "Never"],
        ),
    }
    match text(c, "terminationMessagePolicy") {
        "" => e.required(child(at, "terminationMessagePolicy"), "cannot be empty"),
        "File" | "FallbackToLogsOnError" => {}
        other => e.not_supported(
            child(at, "terminationMessagePolicy"),
            &Value::from(other),
            &["File", "FallbackToLogsOnError"],
        ),
    }
    ports(e, &child(at, "ports"), list(c, "ports"));
    env(e, &child(at, "env"), list(c, "env"));
    let mut mount_paths = BTreeSet::new();
    for (i, m) in list(c, "volumeMounts").iter().enumerate() {
        let mat = index(&child(at, "volumeMounts"), i);
        let vol = text(m, "name");
        if vol.is_empty() {
            e.required(child(&mat, "name"), "");
        } else if !volumes.contains(vol) {
            e.not_found(child(&mat, "name"), &Value::from(vol));
        }
        let path = text(m, "mountPath");
        if path.is_empty() {
            e.required(child(&mat, "mountPath"), "");
        } else if path.contains(':') {
            e.invalid_str(child(&mat, "mountPath"), path, "must not contain ':'");
        }
        if !path.is_empty() && !mount_paths.insert(path.to_owned()) {
            e.invalid_str(child(&mat, "mountPath"), path, "must be unique");
        }
    }
    let restarts_always = text(c, "restartPolicy") == "Always";
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(p) = c.get(probe).filter(|p| p.is_object()) else {
            continue;
        };
        let pat = child(at, probe);
        if init && !restarts_always {
            e.forbidden(
                &pat,
                "may not be set for init containers without restartPolicy=Always",
            );
            continue;
        }
        handler(e, &pat, p);
        for f in [
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ] {
            if let Some(n) = p.get(f).and_then(Value::as_i64)
                && n < 0
            {
                e.invalid(
                    child(&pat, f),
                    &Value::from(n),
                    "must be greater than or equal to 0",
                );
            }
        }
        if probe != "readinessProbe"
            && let Some(n) = p.get("successThreshold").and_then(Value::as_i64)
            && n != 1
        {
            e.invalid(
                child(&pat, "successThreshold"),
                &Value::from(n),
                "must be 1",
            );
        }
    }
    if let Some(lifecycle) = c.get("lifecycle").filter(|l| l.is_object()) {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = lifecycle.get(hook).filter(|h| h.is_object()) {
                handler(e, &child(&child(at, "lifecycle"), hook), h);
            }
        }
    }
    resources(e, &child(at, "resources"), c.get("resources"));
}

/// Probes and hooks: exactly one handler, each valid.
fn handler(e: &mut Errors, at: &str, h: &Value) {
    let set: Vec<&str> = HANDLERS
        .iter()
        .chain(["sleep"].iter())
        .copied()
        .filter(|k| h.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    match set.as_slice() {
        [] => e.required(at, "must specify a handler type"),
        [_, extra @ ..] => {
            for k in extra {
                e.forbidden(child(at, k), "may not specify more than 1 handler type");
            }
        }
    }
    if let Some(exec) = h.get("exec").filter(|x| x.is_object())
        && list(exec, "command").is_empty()
    {
        e.required(child(&child(at, "exec"), "command"), "");
    }
    if let Some(get) = h.get("httpGet").filter(|x| x.is_object()) {
        let gat = child(at, "httpGet");
        if text(get, "path").is_empty() {
            e.required(child(&gat, "path"), "");
        }
        port_num_or_name(
            e,
            &child(&gat, "port"),
            get.get("port").unwrap_or(&Value::Null),
        );
        let scheme = text(get, "scheme");
        if !["HTTP", "HTTPS"].contains(&scheme) {
            e.not_supported(
                child(&gat, "scheme"),
                &Value::from(scheme),
                &["HTTP", "HTTPS"],
            );
        }
    }
    if let Some(tcp) = h.get("tcpSocket").filter(|x| x.is_object()) {
        port_num_or_name(
            e,
            &child(&child(at, "tcpSocket"), "port"),
            tcp.get("port").unwrap_or(&Value::Null),
        );
    }
    if let Some(grpc) = h.get("grpc").filter(|x| x.is_object()) {
        let port = grpc.get("port").cloned().unwrap_or(Value::from(0));
        if let Some(m) = port_number(&port) {
            e.invalid(child(&child(at, "grpc"), "port"), &port, &m);
        }
    }
}

fn ports(e: &mut Errors, path: &str, ports: &[Value]) {
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = index(path, i);
        let name = text(p, "name");
        if !name.is_empty() {
            e.each(&child(&at, "name"), name, port_name(name));
            if !names.insert(name.to_owned()) {
                e.duplicate(child(&at, "name"), &Value::from(name));
            }
        }
        let cp = p.get("containerPort").cloned().unwrap_or(Value::from(0));
        if cp.as_i64() == Some(0) {
            e.required(child(&at, "containerPort"), "");
        } else if let Some(m) = port_number(&cp) {
            e.invalid(child(&at, "containerPort"), &cp, &m);
        }
        if let Some(hp) = p
            .get("hostPort")
            .filter(|h| h.as_i64().is_some_and(|n| n != 0))
            && let Some(m) = port_number(hp)
        {
            e.invalid(child(&at, "hostPort"), hp, &m);
        }
        match text(p, "protocol") {
            "" => e.required(child(&at, "protocol"), ""),
            proto if !PROTOCOLS.contains(&proto) => {
                e.not_supported(child(&at, "protocol"), &Value::from(proto), &PROTOCOLS);
            }
            _ => {}
        }
    }
}

fn env(e: &mut Errors, path: &str, vars: &[Value]) {
    for (i, v) in vars.iter().enumerate() {
        let at = index(path, i);
        let name = text(v, "name");
        if name.is_empty() {
            e.required(child(&at, "name"), "");
        } else if name.contains('=') || !name.bytes().all(|b| (32..127).contains(&b)) {
            e.invalid_str(
                child(&at, "name"),
                name,
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            );
        }
        let Some(from) = v.get("valueFrom").filter(|f| f.is_object()) else {
            continue;
        };
        let fat = child(&at, "valueFrom");
        if !text(v, "value").is_empty() {
            e.invalid_str(&fat, "", "may not be specified when `value` is not empty");
        }
        let sources: Vec<&str> = [
            "fieldRef",
            "resourceFieldRef",
            "configMapKeyRef",
            "secretKeyRef",
            "fileKeyRef",
        ]
        .into_iter()
        .filter(|s| from.get(*s).is_some_and(|x| !x.is_null()))
        .collect();
        match sources.len() {
            0 => e.invalid_str(&fat, "", "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"),
            1 => {}
            _ => e.invalid_str(&fat, "", "may not have more than one field specified at a time"),
        }
        for source in ["configMapKeyRef", "secretKeyRef"] {
            if let Some(r) = from.get(source).filter(|r| r.is_object()) {
                if text(r, "key").is_empty() {
                    e.required(child(&child(&fat, source), "key"), "");
                }
                if text(r, "name").is_empty() {
                    e.required(child(&child(&fat, source), "name"), "");
                }
            }
        }
        if let Some(r) = from.get("fieldRef").filter(|r| r.is_object())
            && text(r, "fieldPath").is_empty()
        {
            e.required(child(&child(&fat, "fieldRef"), "fieldPath"), "");
        }
    }
}

/// A Kubernetes quantity's value (`500m` → 0.5, `1Gi` → 1073741824), for comparisons.
pub fn quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * scale)
}

fn quantity_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn resources(e: &mut Errors, path: &str, r: Option<&Value>) {
    let Some(r) = r else {
        return;
    };
    let empty = Map::new();
    let limits = obj(r, "limits").unwrap_or(&empty);
    let requests = obj(r, "requests").unwrap_or(&empty);
    for (key, list) in [("limits", limits), ("requests", requests)] {
        for (name, q) in list {
            let at = child(&child(path, key), name);
            if quantity(&quantity_text(q)).is_none() {
                e.invalid(
                    &at,
                    q,
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                );
            } else if quantity(&quantity_text(q)).is_some_and(|n| n < 0.0) {
                e.invalid(&at, q, "must be greater than or equal to 0");
            }
        }
    }
    for (name, req) in requests {
        let Some(limit) = limits.get(name) else {
            continue;
        };
        if let (Some(r), Some(l)) = (
            quantity(&quantity_text(req)),
            quantity(&quantity_text(limit)),
        ) && r > l
        {
            e.invalid(
                child(&child(path, "requests"), name),
                &Value::from(quantity_text(req)),
                &format!(
                    "must be less than or equal to {name} limit of {}",
                    quantity_text(limit)
                ),
            );
        }
    }
}

/// `ValidatePodUpdate`: only images, the active deadline, added
/// tolerations and a grace period may change.
fn update_rule(e: &mut Errors, old: &Value, new: &Value) {
    let strip = |p: &Value| {
        let mut spec = p.get("spec").cloned().unwrap_or_default();
        if let Some(m) = spec.as_object_mut() {
            for key in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            ] {
                m.remove(key);
            }
            for list in ["containers", "initContainers", "ephemeralContainers"] {
                if let Some(cs) = m.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
            // Binding a pod sets its node through the binding subresource.
            m.remove("nodeName");
        }
        spec
    };
    if strip(old) != strip(new) {
        e.forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        );
    }
    let old_tolerations = list(old.get("spec").unwrap_or(&Value::Null), "tolerations");
    let new_tolerations = list(new.get("spec").unwrap_or(&Value::Null), "tolerations");
    if old_tolerations.iter().any(|t| !new_tolerations.contains(t)) {
        e.forbidden(
            "spec.tolerations",
            "existing toleration can not be modified except its tolerationSeconds",
        );
    }
    let old_node = text(old.get("spec").unwrap_or(&Value::Null), "nodeName");
    let new_node = text(new.get("spec").unwrap_or(&Value::Null), "nodeName");
    if !old_node.is_empty() && old_node != new_node {
        e.forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)");
    }
}
