//! `meta.k8s.io/v1` Tables, which `kubectl get` asks for: a few columns per
//! kind, Name and Age for the rest.
use serde_json::{Value, json};

use super::{clock, objects, resources::Resource};

fn column(name: &str, format: &str) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": "", "priority": 0})
}

fn s(obj: &Value, pointer: &str) -> String {
    match obj.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn service_ports(obj: &Value) -> String {
    let ports = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() {
        return "<none>".into();
    }
    ports
        .iter()
        .map(|p| {
            let node = p
                .get("nodePort")
                .and_then(Value::as_u64)
                .map(|n| format!(":{n}"))
                .unwrap_or_default();
            format!(
                "{}{node}/{}",
                s(p, "/port"),
                p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Extra columns (after Name) and their cells, per kind.
fn columns(res: &Resource) -> Vec<&'static str> {
    if res.custom {
        return vec![];
    }
    match res.kind {
        "Service" => vec!["Type", "Cluster-IP", "External-IP", "Port(s)"],
        "Pod" => vec!["Status", "Node"],
        "Deployment" | "ReplicaSet" | "ReplicationController" => vec!["Ready", "Up-to-date"],
        "Namespace" | "Node" => vec!["Status"],
        "RoleBinding" | "ClusterRoleBinding" => vec!["Role"],
        _ => vec![],
    }
}

fn cells(res: &Resource, obj: &Value) -> Vec<String> {
    let or_none = |v: String| if v.is_empty() { "<none>".to_owned() } else { v };
    if res.custom {
        return vec![];
    }
    match res.kind {
        "Service" => vec![
            or_none(s(obj, "/spec/type")),
            or_none(s(obj, "/spec/clusterIP")),
            or_none(s(obj, "/status/loadBalancer/ingress/0/ip")),
            service_ports(obj),
        ],
        "Pod" => vec![
            or_none(s(obj, "/status/phase")),
            or_none(s(obj, "/spec/nodeName")),
        ],
        "Deployment" | "ReplicaSet" | "ReplicationController" => {
            let ready = obj
                .pointer("/status/readyReplicas")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let want = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let updated = obj
                .pointer("/status/updatedReplicas")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            vec![format!("{ready}/{want}"), updated.to_string()]
        }
        "Namespace" => vec![or_none(s(obj, "/status/phase"))],
        "Node" => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .is_some_and(|c| c["status"] == "True");
            vec![if ready { "Ready" } else { "NotReady" }.to_owned()]
        }
        // Upstream's `ClusterRole/name`.
        "RoleBinding" | "ClusterRoleBinding" => vec![format!(
            "{}/{}",
            s(obj, "/roleRef/kind"),
            s(obj, "/roleRef/name")
        )],
        _ => vec![],
    }
}

pub fn table(res: &Resource, items: &[Value], metadata: Value, include_object: bool) -> Value {
    let mut defs = vec![column("Name", "name")];
    defs.extend(columns(res).into_iter().map(|c| column(c, "")));
    defs.push(column("Age", ""));
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut c = vec![json!(objects::name_of(obj).unwrap_or_default())];
            c.extend(cells(res, obj).into_iter().map(Value::String));
            let age = objects::meta_str(obj, "creationTimestamp").and_then(clock::parse).map(clock::age);
            c.push(json!(age.unwrap_or_else(|| "<unknown>".into())));
            let object = if include_object {
                obj.clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata")})
            };
            json!({"cells": c, "object": object})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": defs, "rows": rows})
}
