//! Services: kubernetes' `ValidateService` and `ValidateServiceUpdate`
//! (`pkg/apis/core/validation`).
use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    Errors, child, dns1123_label, dns1123_subdomain, index, labels, list, non_special_ip, parse_ip,
    port_name, port_number, qualified_name, text,
};

const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
/// The kubelet's port, which a LoadBalancer may not expose.
const KUBELET_PORT: i64 = 10_250;
const MAX_AFFINITY_SECONDS: i64 = 86_400;

/// `targetPort` and container-port references: a port number or an IANA name.
pub fn port_num_or_name(e: &mut Errors, field: &str, v: &Value) {
    match v {
        Value::Number(_) => {
            if let Some(m) = port_number(v) {
                e.invalid(field, v, &m);
            }
        }
        Value::String(s) => e.each(field, s, port_name(s)),
        other => e.invalid(field, other, "must contain an int or string"),
    }
}

fn is_headless(spec: &Value) -> bool {
    spec.get("clusterIP") == Some(&Value::from("None"))
}

/// Go's `%#v` of the `ServicePort{Protocol, Port}` key a duplicate is reported with.
fn port_key(protocol: &str, port: &Value) -> String {
    format!(
        "core.ServicePort{{Name:\"\", Protocol:\"{protocol}\", AppProtocol:(*string)(nil), Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}"
    )
}

pub fn service(e: &mut Errors, obj: &Value, old: Option<&Value>) {
    let spec = obj.get("spec").cloned().unwrap_or_default();
    let at = |f: &str| child("spec", f);
    let ty = text(&spec, "type");
    let ports = list(&spec, "ports");
    if ports.is_empty() && !is_headless(&spec) && ty != "ExternalName" {
        e.required(at("ports"), "");
    }
    match ty {
        "LoadBalancer" | "NodePort" if is_headless(&spec) => e.invalid_str(
            index(&at("clusterIPs"), 0),
            "None",
            &format!("may not be set to 'None' for {ty} services"),
        ),
        "ExternalName" => {
            for (f, v) in [("clusterIPs", "clusterIPs"), ("ipFamilies", "ipFamilies")] {
                if !list(&spec, v).is_empty() {
                    e.forbidden(at(f), "may not be set for ExternalName services");
                }
            }
            if spec.get("ipFamilyPolicy").is_some_and(|p| !p.is_null()) {
                e.forbidden(
                    at("ipFamilyPolicy"),
                    "may not be set for ExternalName services",
                );
            }
            // A CNAME may end with a dot to say it is fully qualified.
            let cname = text(&spec, "externalName").trim_end_matches('.');
            if cname.is_empty() {
                e.required(at("externalName"), "");
            } else {
                e.each(&at("externalName"), cname, dns1123_subdomain(cname));
            }
        }
        _ => {}
    }
    if ty == "LoadBalancer" {
        for (i, p) in ports.iter().enumerate() {
            if p.get("port").and_then(Value::as_i64) == Some(KUBELET_PORT) {
                e.invalid(
                    index(&at("ports"), i),
                    &Value::from(KUBELET_PORT),
                    &format!(
                        "may not expose port {KUBELET_PORT} externally since it is used by kubelet"
                    ),
                );
            }
        }
    }

    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pat = index(&at("ports"), i);
        let name = text(p, "name");
        if ports.len() > 1 && name.is_empty() {
            e.required(child(&pat, "name"), "");
        } else if !name.is_empty() {
            e.each(&child(&pat, "name"), name, dns1123_label(name));
            if !names.insert(name.to_owned()) {
                e.duplicate(child(&pat, "name"), &Value::from(name));
            }
        }
        let port = p.get("port").cloned().unwrap_or(Value::from(0));
        if let Some(m) = port_number(&port) {
            e.invalid(child(&pat, "port"), &port, &m);
        }
        match text(p, "protocol") {
            "" => e.required(child(&pat, "protocol"), ""),
            proto if !PROTOCOLS.contains(&proto) => {
                e.not_supported(child(&pat, "protocol"), &Value::from(proto), &PROTOCOLS);
            }
            _ => {}
        }
        port_num_or_name(
            e,
            &child(&pat, "targetPort"),
            p.get("targetPort").unwrap_or(&Value::Null),
        );
        if let Some(app) = p.get("appProtocol").and_then(Value::as_str) {
            e.each(&child(&pat, "appProtocol"), app, qualified_name(app));
        }
    }
    if spec.get("selector").is_some() {
        labels(e, &at("selector"), spec.get("selector"));
    }

    match text(&spec, "sessionAffinity") {
        "" => e.required(at("sessionAffinity"), ""),
        "ClientIP" => {
            let t = spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds");
            let field = child(&at("sessionAffinityConfig"), "clientIP.timeoutSeconds");
            match t.and_then(Value::as_i64) {
                None => e.required(field, ""),
                Some(t) if !(1..=MAX_AFFINITY_SECONDS).contains(&t) => e.invalid(
                    field,
                    &Value::from(t),
                    &format!("must be greater than 0 and less than {MAX_AFFINITY_SECONDS}"),
                ),
                Some(_) => {}
            }
        }
        "None"
            if spec
                .get("sessionAffinityConfig")
                .is_some_and(|c| !c.is_null()) =>
        {
            e.forbidden(
                at("sessionAffinityConfig"),
                "must not be set when session affinity is None",
            );
        }
        "None" => {}
        other => e.not_supported(
            at("sessionAffinity"),
            &Value::from(other),
            &["ClientIP", "None"],
        ),
    }

    cluster_ips(e, &spec);

    for (i, ip) in list(&spec, "externalIPs").iter().enumerate() {
        non_special_ip(
            e,
            &index(&at("externalIPs"), i),
            ip.as_str().unwrap_or_default(),
        );
    }

    match ty {
        "" => e.required(at("type"), ""),
        t if !TYPES.contains(&t) => e.not_supported(at("type"), &Value::from(t), &TYPES),
        _ => {}
    }
    if ty == "ClusterIP" {
        for (i, p) in ports.iter().enumerate() {
            if p.get("nodePort")
                .and_then(Value::as_i64)
                .is_some_and(|n| n != 0)
            {
                e.forbidden(
                    child(&index(&at("ports"), i), "nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                );
            }
        }
    }
    let mut node_ports = BTreeSet::new();
    let mut port_keys = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pat = index(&at("ports"), i);
        let proto = text(p, "protocol").to_owned();
        if let Some(n) = p
            .get("nodePort")
            .and_then(Value::as_i64)
            .filter(|n| *n != 0)
            && !node_ports.insert((proto.clone(), n))
        {
            e.duplicate(child(&pat, "nodePort"), &Value::from(n));
        }
        let port = p.get("port").cloned().unwrap_or(Value::Null);
        if !port_keys.insert((proto.clone(), port.to_string())) {
            e.duplicate_raw(&pat, &port_key(&proto, &port));
        }
    }
    traffic_policies(e, &spec);

    if let Some(old) = old {
        let old_spec = old.get("spec").cloned().unwrap_or_default();
        // The IPs may not change, except to or from ExternalName.
        let changes_type = text(&old_spec, "type") == "ExternalName" || ty == "ExternalName";
        let old_ips = list(&old_spec, "clusterIPs");
        let new_ips = list(&spec, "clusterIPs");
        if !changes_type && !old_ips.is_empty() && old_ips.first() != new_ips.first() {
            e.invalid(
                index(&at("clusterIPs"), 0),
                spec.get("clusterIPs").unwrap_or(&Value::Null),
                "may not change once set",
            );
        }
        if let (Some(a), Some(b)) = (
            old_spec.get("loadBalancerClass"),
            spec.get("loadBalancerClass"),
        ) && a != b
            && old_spec.get("type") == spec.get("type")
        {
            e.immutable(at("loadBalancerClass"), b);
        }
    }
}

/// `ValidateServiceClusterIPsRelatedFields`, for the single-stack IPv4
/// clusters this server runs.
fn cluster_ips(e: &mut Errors, spec: &Value) {
    let at = |f: &str| child("spec", f);
    if text(spec, "type") == "ExternalName" {
        return;
    }
    match text(spec, "ipFamilyPolicy") {
        "" => e.required(at("ipFamilyPolicy"), ""),
        "SingleStack" | "PreferDualStack" | "RequireDualStack" => {}
        other => e.not_supported(
            at("ipFamilyPolicy"),
            &Value::from(other),
            &["PreferDualStack", "RequireDualStack", "SingleStack"],
        ),
    }
    for (i, fam) in list(spec, "ipFamilies").iter().enumerate() {
        let fam = fam.as_str().unwrap_or_default();
        if !["IPv4", "IPv6"].contains(&fam) {
            e.not_supported(
                index(&at("ipFamilies"), i),
                &Value::from(fam),
                &["IPv4", "IPv6"],
            );
        }
    }
    let ips = list(spec, "clusterIPs");
    let first = ips.first().and_then(Value::as_str).unwrap_or_default();
    let ip = text(spec, "clusterIP");
    if !ips.is_empty() && first != ip {
        e.invalid(
            at("clusterIPs"),
            spec.get("clusterIPs").unwrap_or(&Value::Null),
            "first value must match `clusterIP`",
        );
    }
    for (i, v) in ips.iter().enumerate() {
        let s = v.as_str().unwrap_or_default();
        if s == "None" {
            if i > 0 || ips.len() > 1 {
                e.invalid_str(
                    index(&at("clusterIPs"), i),
                    s,
                    "'None' must be the first and only value",
                );
            }
        } else if parse_ip(s).is_none() {
            e.invalid_str(
                index(&at("clusterIPs"), i),
                s,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            );
        }
    }
    if text(spec, "ipFamilyPolicy") == "SingleStack" && ips.len() > 1 {
        e.invalid(
            at("clusterIPs"),
            spec.get("clusterIPs").unwrap_or(&Value::Null),
            "must be at most 1 entry when `ipFamilyPolicy` is 'SingleStack'",
        );
    }
}

/// External and internal traffic policies and the health-check port.
fn traffic_policies(e: &mut Errors, spec: &Value) {
    let at = |f: &str| child("spec", f);
    let ty = text(spec, "type");
    let external = matches!(ty, "NodePort" | "LoadBalancer")
        || (ty == "ClusterIP" && !list(spec, "externalIPs").is_empty());
    let etp = text(spec, "externalTrafficPolicy");
    if !external {
        if !etp.is_empty() {
            e.invalid_str(
                at("externalTrafficPolicy"),
                etp,
                "may only be set for externally-accessible services",
            );
        }
    } else if etp.is_empty() {
        e.required(at("externalTrafficPolicy"), "");
    } else if !["Cluster", "Local"].contains(&etp) {
        e.not_supported(
            at("externalTrafficPolicy"),
            &Value::from(etp),
            &["Cluster", "Local"],
        );
    }
    if let Some(hc) = spec
        .get("healthCheckNodePort")
        .and_then(Value::as_i64)
        .filter(|p| *p != 0)
    {
        if ty != "LoadBalancer" || etp != "Local" {
            e.invalid(
                at("healthCheckNodePort"),
                &Value::from(hc),
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            );
        } else if !(1..=65_535).contains(&hc) {
            e.invalid(
                at("healthCheckNodePort"),
                &Value::from(hc),
                "must be between 1 and 65535, inclusive",
            );
        }
    }
    if ty != "ExternalName" {
        match text(spec, "internalTrafficPolicy") {
            "" => e.required(at("internalTrafficPolicy"), ""),
            "Cluster" | "Local" => {}
            other => e.not_supported(
                at("internalTrafficPolicy"),
                &Value::from(other),
                &["Cluster", "Local"],
            ),
        }
    }
}
