//! Endpoints (`pkg/apis/core/validation`) and EndpointSlices
//! (`pkg/apis/discovery/validation`).
use std::{collections::BTreeSet, net::IpAddr};

use serde_json::Value;

use super::{
    Errors, child, dns1123_label, dns1123_subdomain, index, labels, list, non_special_ip, parse_ip,
    port_number, qualified_name, text,
};

const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
const MAX_PORTS: usize = 100;
const MAX_TOPOLOGY_LABELS: usize = 16;

fn protocol(e: &mut Errors, field: String, p: Option<&Value>) {
    match p.and_then(Value::as_str) {
        None | Some("") => e.required(field, ""),
        Some(v) if !PROTOCOLS.contains(&v) => e.not_supported(field, &Value::from(v), &PROTOCOLS),
        Some(_) => {}
    }
}

pub fn endpoints(e: &mut Errors, obj: &Value) {
    for (i, subset) in list(obj, "subsets").iter().enumerate() {
        let at = index("subsets", i);
        let (ready, not_ready) = (list(subset, "addresses"), list(subset, "notReadyAddresses"));
        if ready.is_empty() && not_ready.is_empty() {
            e.required(&at, "must specify `addresses` or `notReadyAddresses`");
        }
        for (key, addresses) in [("addresses", ready), ("notReadyAddresses", not_ready)] {
            for (j, a) in addresses.iter().enumerate() {
                let aat = index(&child(&at, key), j);
                let ip = text(a, "ip");
                if parse_ip(ip).is_none() {
                    e.invalid_str(
                        child(&aat, "ip"),
                        ip,
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    );
                    continue;
                }
                let host = text(a, "hostname");
                if !host.is_empty() {
                    e.each(&child(&aat, "hostname"), host, dns1123_label(host));
                }
                if let Some(node) = a.get("nodeName").and_then(Value::as_str) {
                    e.each(&child(&aat, "nodeName"), node, dns1123_subdomain(node));
                }
                non_special_ip(e, &child(&aat, "ip"), ip);
            }
        }
        let ports = list(subset, "ports");
        for (j, p) in ports.iter().enumerate() {
            let pat = index(&child(&at, "ports"), j);
            let name = text(p, "name");
            if ports.len() > 1 && name.is_empty() {
                e.required(child(&pat, "name"), "");
            } else if !name.is_empty() {
                e.each(&child(&pat, "name"), name, dns1123_label(name));
            }
            let port = p.get("port").cloned().unwrap_or(Value::from(0));
            if let Some(m) = port_number(&port) {
                e.invalid(child(&pat, "port"), &port, &m);
            }
            protocol(e, child(&pat, "protocol"), p.get("protocol"));
            if let Some(app) = p.get("appProtocol").and_then(Value::as_str) {
                e.each(&child(&pat, "appProtocol"), app, qualified_name(app));
            }
        }
    }
}

pub fn endpoint_slice(e: &mut Errors, obj: &Value, old: Option<&Value>) {
    let ty = text(obj, "addressType");
    // `IP` is deprecated: kept by updates of old slices, refused on create.
    let mut types = vec!["FQDN", "IPv4", "IPv6"];
    if old.is_some() {
        types.insert(1, "IP");
    }
    if ty.is_empty() {
        e.required("addressType", "");
    } else if !types.contains(&ty) {
        e.not_supported("addressType", &Value::from(ty), &types);
    }
    let endpoints = list(obj, "endpoints");
    if endpoints.len() > MAX_ENDPOINTS {
        e.too_many("endpoints", endpoints.len(), MAX_ENDPOINTS);
    } else {
        for (i, ep) in endpoints.iter().enumerate() {
            let at = index("endpoints", i);
            let addresses = list(ep, "addresses");
            let aat = child(&at, "addresses");
            if addresses.is_empty() {
                e.required(&aat, "must contain at least 1 address");
            } else if addresses.len() > MAX_ADDRESSES {
                e.too_many(&aat, addresses.len(), MAX_ADDRESSES);
            }
            for (j, a) in addresses.iter().enumerate() {
                let field = index(&aat, j);
                let a = a.as_str().unwrap_or_default();
                match ty {
                    "IPv4" | "IPv6" => {
                        let family_ok = match a.parse::<IpAddr>() {
                            Ok(IpAddr::V4(_)) => ty == "IPv4",
                            Ok(IpAddr::V6(_)) => ty == "IPv6",
                            Err(_) => false,
                        };
                        if !family_ok {
                            e.invalid_str(&field, a, &format!("must be a valid {ty} address"));
                        }
                        non_special_ip(e, &field, a);
                    }
                    "IP" if parse_ip(a).is_none() => {
                        e.invalid_str(
                            &field,
                            a,
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        );
                    }
                    "FQDN" => fqdn(e, &field, a),
                    _ => {}
                }
            }
            let topology = ep.get("deprecatedTopology");
            let count = topology.and_then(Value::as_object).map_or(0, |m| m.len());
            if count > MAX_TOPOLOGY_LABELS {
                e.too_many(child(&at, "deprecatedTopology"), count, MAX_TOPOLOGY_LABELS);
            }
            labels(e, &child(&at, "deprecatedTopology"), topology);
            if let Some(h) = ep.get("hostname").and_then(Value::as_str) {
                e.each(&child(&at, "hostname"), h, dns1123_label(h));
            }
            if let Some(n) = ep.get("nodeName").and_then(Value::as_str) {
                e.each(&child(&at, "nodeName"), n, dns1123_subdomain(n));
            }
        }
    }
    let ports = list(obj, "ports");
    if ports.len() > MAX_PORTS {
        e.too_many("ports", ports.len(), MAX_PORTS);
    } else {
        let mut names = BTreeSet::new();
        for (i, p) in ports.iter().enumerate() {
            let at = index("ports", i);
            let name = text(p, "name");
            if !name.is_empty() {
                e.each(&child(&at, "name"), name, dns1123_label(name));
            }
            if !names.insert(name.to_owned()) {
                e.duplicate(child(&at, "name"), &Value::from(name));
            }
            protocol(e, child(&at, "protocol"), p.get("protocol"));
            if let Some(app) = p.get("appProtocol").and_then(Value::as_str) {
                e.each(&child(&at, "appProtocol"), app, qualified_name(app));
            }
        }
    }
    if let Some(old) = old
        && old.get("addressType") != obj.get("addressType")
    {
        e.immutable(
            "addressType",
            obj.get("addressType").unwrap_or(&Value::Null),
        );
    }
}

/// `IsFullyQualifiedDomainName`: at least two labels, a trailing dot allowed.
fn fqdn(e: &mut Errors, field: &str, name: &str) {
    let name = name.trim_end_matches('.');
    if name.is_empty() {
        e.required(field, "");
        return;
    }
    if name.split('.').count() < 2 {
        e.invalid_str(
            field,
            name,
            "should be a domain with at least two segments separated by dots",
        );
        return;
    }
    for m in dns1123_subdomain(name) {
        e.invalid_str(field, name, &m);
    }
}
