//! A container's environment as kubelet makes it
//! (`pkg/kubelet/kubelet_pods.go` `makeEnvironmentVariables`, and
//! `pkg/kubelet/envvars` for the Service variables): `envFrom`, then
//! `env` in order with `$(VAR)` expansion, then the Service variables,
//! which never override a variable the pod set.
use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Container, Pod, Service};

/// The ConfigMaps' and Secrets' data a pod's env refers to, fetched
/// beforehand (`name → key → value`; Secrets already decoded).
#[derive(Debug, Default)]
pub struct Sources {
    pub config_maps: HashMap<String, BTreeMap<String, String>>,
    pub secrets: HashMap<String, BTreeMap<String, String>>,
}

/// The ConfigMap and Secret names a container's env refers to.
pub fn referenced(c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for e in c.env_from.iter().flatten() {
        if let Some(r) = &e.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &e.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &from.secret_key_ref {
            secrets.push(r.name.clone());
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// `{NAME}` of a Service: upper case, `-` → `_` (upstream's rule; dots
/// and leading digits are left as they are, as upstream does).
fn env_name(svc: &str) -> String {
    svc.to_uppercase().replace('-', "_")
}

/// The Service variables of `services` (the pod's namespace's and
/// `default/kubernetes`), for Services with a ClusterIP; a Service of the
/// pod's namespace beats `default/kubernetes` of the same name. Without
/// `enableServiceLinks` only `default/kubernetes` counts.
pub fn service_env(
    pod_ns: &str,
    enable_links: bool,
    services: &[Service],
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for s in services {
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        let name = s.metadata.name.clone().unwrap_or_default();
        let Some(ip) = s.spec.as_ref().and_then(|sp| sp.cluster_ip.as_deref()) else {
            continue;
        };
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let master = ns == "default" && name == "kubernetes";
        if ns == pod_ns && (enable_links || master) {
            chosen.insert(name, s);
        } else if master {
            chosen.entry(name).or_insert(s);
        }
    }
    let mut out = Vec::new();
    for (name, s) in chosen {
        let spec = s.spec.as_ref().expect("filtered above");
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let n = env_name(&name);
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.clone()
        };
        out.push((format!("{n}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{n}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|x| !x.is_empty()) {
                out.push((
                    format!("{n}_SERVICE_PORT_{}", env_name(pn)),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.as_deref().unwrap_or("TCP").to_owned()
        };
        out.push((
            format!("{n}_PORT"),
            format!("{}://{host}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in &ports {
            let pr = proto(p);
            let prefix = format!("{n}_PORT_{}_{}", p.port, pr.to_uppercase());
            out.push((
                prefix.clone(),
                format!("{}://{host}:{}", pr.to_lowercase(), p.port),
            ));
            out.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

/// Expands `$(VAR)` from `lookup`; `$$` is a literal `$`; an unknown
/// `$(VAR)` stays as written (upstream's `third_party/forked/golang/expansion`).
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A `fieldRef` path's value (`metadata.name`, `metadata.labels['k']`,
/// `status.podIP`, …); an unsupported path is an error naming it.
pub fn field_ref(pod: &Pod, path: &str, pod_ips: &[String], host_ip: &str) -> Result<String> {
    let md = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", md.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", md.annotations.as_ref()) {
        return Ok(v);
    }
    let map_lines = |m: Option<&BTreeMap<String, String>>| {
        m.map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
    };
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_lines(md.labels.as_ref()),
        "metadata.annotations" => map_lines(md.annotations.as_ref()),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_owned(),
        "status.podIP" => pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => pod_ips.join(","),
        other => bail!("fieldRef `{other}` is not supported"),
    })
}

/// The environment of container `c` of `pod`, in order, without the
/// image's (the caller puts those underneath). Errors name the missing
/// ConfigMap, Secret or key (kubelet's `CreateContainerConfigError`).
pub fn container_env(
    pod: &Pod,
    c: &Container,
    sources: &Sources,
    service_vars: &[(String, String)],
    pod_ips: &[String],
    host_ip: &str,
) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |out: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = out.iter_mut().find(|(n, _)| *n == k) {
            slot.1 = v;
        } else {
            out.push((k, v));
        }
    };
    for ef in c.env_from.iter().flatten() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        let (data, what, name, optional) = if let Some(r) = &ef.config_map_ref {
            (
                sources.config_maps.get(&r.name),
                "configmap",
                &r.name,
                r.optional == Some(true),
            )
        } else if let Some(r) = &ef.secret_ref {
            (
                sources.secrets.get(&r.name),
                "secret",
                &r.name,
                r.optional == Some(true),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(&mut out, format!("{prefix}{k}"), v.clone());
                }
            }
            None if optional => {}
            None => bail!("{what} \"{name}\" not found"),
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                match sources.config_maps.get(&r.name).and_then(|d| d.get(&r.key)) {
                    Some(v) => v.clone(),
                    None if r.optional == Some(true) => continue,
                    None if sources.config_maps.contains_key(&r.name) => {
                        bail!("couldn't find key {} in ConfigMap {}", r.key, r.name)
                    }
                    None => bail!("configmap \"{}\" not found", r.name),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match sources.secrets.get(&r.name).and_then(|d| d.get(&r.key)) {
                    Some(v) => v.clone(),
                    None if r.optional == Some(true) => continue,
                    None if sources.secrets.contains_key(&r.name) => {
                        bail!("couldn't find key {} in Secret {}", r.key, r.name)
                    }
                    None => bail!("secret \"{}\" not found", r.name),
                }
            } else if let Some(r) = &from.field_ref {
                field_ref(pod, &r.field_path, pod_ips, host_ip)?
            } else if let Some(r) = &from.resource_field_ref {
                bail!(
                    "env {}: resourceFieldRef {} is not supported",
                    e.name,
                    r.resource
                )
            } else {
                continue;
            }
        } else {
            let known: HashMap<String, String> = out
                .iter()
                .cloned()
                .chain(service_vars.iter().cloned())
                .collect();
            expand(e.value.as_deref().unwrap_or(""), &|n| known.get(n).cloned())
        };
        set(&mut out, e.name.clone(), value);
    }
    for (k, v) in service_vars {
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .unwrap()
    }

    #[test]
    fn service_variables_as_kubelet_names_them() {
        let s = [
            svc(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443}]),
            ),
            svc(
                "web",
                "backend-service",
                "10.96.0.20",
                json!([
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"port": 53, "protocol": "UDP"}]),
            ),
            svc("web", "headless", "None", json!([{"port": 80}])),
            svc("other", "elsewhere", "10.96.0.30", json!([{"port": 80}])),
        ];
        let env: HashMap<_, _> = service_env("web", true, &s).into_iter().collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP"], "tcp://10.96.0.1:443");
        assert_eq!(env["BACKEND_SERVICE_SERVICE_HOST"], "10.96.0.20");
        assert_eq!(env["BACKEND_SERVICE_SERVICE_PORT"], "80");
        assert_eq!(env["BACKEND_SERVICE_SERVICE_PORT_HTTP"], "80");
        assert_eq!(env["BACKEND_SERVICE_PORT"], "tcp://10.96.0.20:80");
        assert_eq!(env["BACKEND_SERVICE_PORT_53_UDP"], "udp://10.96.0.20:53");
        assert_eq!(env["BACKEND_SERVICE_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(env["BACKEND_SERVICE_PORT_53_UDP_PORT"], "53");
        assert_eq!(env["BACKEND_SERVICE_PORT_53_UDP_ADDR"], "10.96.0.20");
        assert!(
            !env.keys()
                .any(|k| k.starts_with("HEADLESS") || k.starts_with("ELSEWHERE"))
        );
        let off: HashMap<_, _> = service_env("web", false, &s).into_iter().collect();
        assert!(off.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!off.contains_key("BACKEND_SERVICE_SERVICE_HOST"));
    }

    #[test]
    fn expansion_follows_upstream() {
        let l = |n: &str| (n == "A").then(|| "x".to_owned());
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &l), "x-$(B)-$(A)-$");
    }

    #[test]
    fn env_order_refs_and_precedence() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "web", "labels": {"app": "a"}},
            "spec": {"nodeName": "node-1", "containers": []}
        }))
        .unwrap();
        let c: Container = serde_json::from_value(json!({
            "name": "c",
            "env": [
                {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MIX", "value": "$(CM)+$(X_SERVICE_HOST)"},
                {"name": "X_SERVICE_PORT", "value": "mine"}
            ]
        }))
        .unwrap();
        let mut src = Sources::default();
        src.config_maps
            .insert("cm".into(), [("k".into(), "v".into())].into());
        src.secrets
            .insert("s".into(), [("pw".into(), "hunter2".into())].into());
        let svc = vec![
            ("X_SERVICE_HOST".to_owned(), "10.0.0.1".to_owned()),
            ("X_SERVICE_PORT".to_owned(), "80".to_owned()),
        ];
        let env =
            container_env(&pod, &c, &src, &svc, &["10.244.1.2".into()], "192.168.0.11").unwrap();
        let m: HashMap<_, _> = env.into_iter().collect();
        assert_eq!(m["CM"], "v");
        assert_eq!(m["S"], "hunter2");
        assert_eq!(m["NODE"], "node-1");
        assert_eq!(m["APP"], "a");
        assert_eq!(m["IP"], "10.244.1.2");
        assert_eq!(m["MIX"], "v+10.0.0.1");
        assert_eq!(m["X_SERVICE_PORT"], "mine");
        let missing = Sources::default();
        let e = container_env(&pod, &c, &missing, &svc, &[], "").unwrap_err();
        assert_eq!(e.to_string(), "configmap \"cm\" not found");
    }
}
