//! ConfigMaps, Secrets, Namespaces, Nodes and Leases
//! (`pkg/apis/{core,coordination}/validation`).
use base64::Engine as _;
use serde_json::{Map, Value};

use super::{Errors, child, qualified_name, text};

/// Upstream's cap on the data of one ConfigMap or Secret (1 MiB).
const MAX_DATA_BYTES: usize = 1024 * 1024;

/// `IsConfigMapKey`: ConfigMap and Secret keys.
fn config_key(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    if key.len() > 253 {
        out.push("must be no more than 253 characters".into());
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        out.push("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".into());
    }
    match key {
        "." => out.push("must not be '.'".into()),
        ".." => out.push("must not be '..'".into()),
        _ if key.starts_with("..") => out.push("must not start with '..'".into()),
        _ => {}
    }
    out
}

fn map(v: &Value, key: &str) -> Map<String, Value> {
    v.get(key)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Keys of `data` and `binaryData` (or a Secret's `data`), their overlap, and
/// the total size, `decoded` telling base64 values from plain ones.
fn keys_and_size(e: &mut Errors, bags: &[(&str, Map<String, Value>, bool)]) {
    let mut total = 0;
    for (i, (name, bag, decoded)) in bags.iter().enumerate() {
        for (key, value) in bag {
            let field = format!("{name}[{key}]");
            for m in config_key(key) {
                e.invalid_str(&field, key, &m);
            }
            for (j, (other, other_bag, _)) in bags.iter().enumerate() {
                if i != j && other_bag.contains_key(key) {
                    e.invalid_str(&field, key, &format!("duplicate of key present in {other}"));
                }
            }
            let text = value.as_str().unwrap_or_default();
            total += if *decoded {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_or(text.len(), |b| b.len())
            } else {
                text.len()
            };
        }
    }
    if total > MAX_DATA_BYTES {
        e.too_long(if bags.len() == 1 { "data" } else { "" }, MAX_DATA_BYTES);
    }
}

/// `immutable: true` freezes the data and itself.
fn immutable_data(e: &mut Errors, new: &Value, old: &Value, fields: &[&str]) {
    if old.get("immutable") != Some(&Value::Bool(true)) {
        return;
    }
    if new.get("immutable") != Some(&Value::Bool(true)) {
        e.forbidden("immutable", "field is immutable when `immutable` is set");
    }
    for f in fields {
        if map(new, f) != map(old, f) {
            e.forbidden(*f, "field is immutable when `immutable` is set");
        }
    }
}

pub fn config_map(e: &mut Errors, cm: &Value, old: Option<&Value>) {
    keys_and_size(
        e,
        &[
            ("data", map(cm, "data"), false),
            ("binaryData", map(cm, "binaryData"), true),
        ],
    );
    if let Some(old) = old {
        immutable_data(e, cm, old, &["data", "binaryData"]);
    }
}

pub fn secret(e: &mut Errors, s: &Value, old: Option<&Value>) {
    let data = map(s, "data");
    keys_and_size(e, &[("data", data.clone(), true)]);
    let has = |k: &str| data.contains_key(k);
    let need = |e: &mut Errors, k: &str| {
        if !has(k) {
            e.required(format!("data[{k}]"), "");
        }
    };
    match text(s, "type") {
        "kubernetes.io/service-account-token"
            if s.pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .is_none() =>
        {
            e.required(
                "metadata.annotations[kubernetes.io/service-account.name]",
                "",
            );
        }
        "kubernetes.io/dockercfg" => need(e, ".dockercfg"),
        "kubernetes.io/dockerconfigjson" => need(e, ".dockerconfigjson"),
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            e.required("data[username]", "");
            e.required("data[password]", "");
        }
        "kubernetes.io/ssh-auth" => need(e, "ssh-privatekey"),
        "kubernetes.io/tls" => {
            need(e, "tls.crt");
            need(e, "tls.key");
        }
        _ => {}
    }
    if let Some(old) = old {
        if old.get("type") != s.get("type") {
            e.immutable("type", s.get("type").unwrap_or(&Value::Null));
        }
        immutable_data(e, s, old, &["data"]);
    }
}

pub fn namespace(e: &mut Errors, ns: &Value) {
    for (i, f) in super::list(ns.get("spec").unwrap_or(&Value::Null), "finalizers")
        .iter()
        .enumerate()
    {
        let f = f.as_str().unwrap_or_default();
        let field = format!("spec.finalizers[{i}]");
        if f != "kubernetes" && !f.contains('/') {
            e.invalid_str(
                &field,
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            );
        } else {
            e.each(&field, f, qualified_name(f));
        }
    }
}

pub fn node(e: &mut Errors, node: &Value) {
    let spec = node.get("spec").cloned().unwrap_or_default();
    for (i, t) in super::list(&spec, "taints").iter().enumerate() {
        let at = format!("spec.taints[{i}]");
        let key = text(t, "key");
        e.each(&child(&at, "key"), key, qualified_name(key));
        let effect = text(t, "effect");
        if effect.is_empty() {
            e.required(child(&at, "effect"), "");
        } else if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            e.not_supported(
                child(&at, "effect"),
                &Value::from(effect),
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            );
        }
    }
    let cidrs = std::iter::once(text(&spec, "podCIDR")).chain(
        super::list(&spec, "podCIDRs")
            .iter()
            .filter_map(Value::as_str),
    );
    for cidr in cidrs.filter(|c| !c.is_empty()) {
        let ok = cidr.split_once('/').is_some_and(|(ip, len)| {
            super::parse_ip(ip).is_some() && len.parse::<u8>().is_ok_and(|l| l <= 128)
        });
        if !ok {
            e.invalid_str(
                "spec.podCIDRs",
                cidr,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            );
        }
    }
}

pub fn lease(e: &mut Errors, lease: &Value) {
    let spec = lease.get("spec").cloned().unwrap_or_default();
    if let Some(d) = spec.get("leaseDurationSeconds").and_then(Value::as_i64)
        && d <= 0
    {
        e.invalid(
            "spec.leaseDurationSeconds",
            &Value::from(d),
            "must be greater than 0",
        );
    }
    if let Some(t) = spec.get("leaseTransitions").and_then(Value::as_i64)
        && t < 0
    {
        e.invalid(
            "spec.leaseTransitions",
            &Value::from(t),
            "must be greater than or equal to 0",
        );
    }
}
