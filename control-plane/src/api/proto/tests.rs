//! The table-driven codec checked against k8s-pb's generated messages: what
//! a Go client would write decodes to upstream's JSON, and what we write
//! decodes as k8s-pb (hence Go) reads it.
use k8s_pb::{
    api::{apps::v1 as apps, core::v1 as core, discovery::v1 as discovery},
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, Time},
        util::intstr::IntOrString,
    },
};
use prost::Message as _;
use serde_json::{Value, json};

use super::*;

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

/// What gogo protobuf writes for a Go `ObjectMeta{Name: name}`: every
/// non-pointer field, zero or not, and an empty creation timestamp.
fn go_meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(""),
        self_link: s(""),
        uid: s(""),
        resource_version: s(""),
        generation: Some(0),
        creation_timestamp: Some(Time::default()),
        ..Default::default()
    }
}

fn decode_as(name: &str, bytes: &[u8]) -> Value {
    codec::decode(name, bytes).unwrap().unwrap()
}

#[test]
fn a_go_client_config_map_decodes_to_upstream_json() {
    let cm = core::ConfigMap {
        metadata: Some(go_meta("c")),
        data: [("a".to_owned(), "1".to_owned())].into(),
        binary_data: [("b".to_owned(), vec![0, 255])].into(),
        immutable: Some(false),
    };
    let json = decode_as("k8s.io.api.core.v1.ConfigMap", &cm.encode_to_vec());
    assert_eq!(
        json,
        json!({
            "metadata": {"name": "c"},
            "data": {"a": "1"},
            "binaryData": {"b": "AP8="},
            "immutable": false,
        }),
        "unset non-pointer fields are left out; a pointer's false stays"
    );
}

#[test]
fn pointer_zeros_stay_and_special_messages_take_their_json_form() {
    let container = core::Container {
        name: s("web"),
        image: s("nginx"),
        ports: vec![core::ContainerPort {
            container_port: Some(80),
            host_port: Some(0),
            protocol: s("TCP"),
            name: s(""),
            host_ip: s(""),
        }],
        resources: Some(core::ResourceRequirements {
            limits: [("cpu".to_owned(), Quantity { string: s("500m") })].into(),
            ..Default::default()
        }),
        stdin: Some(false),
        ..Default::default()
    };
    let deploy = apps::Deployment {
        metadata: Some(go_meta("web")),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            min_ready_seconds: Some(0),
            selector: Some(LabelSelector {
                match_labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: [("app".to_owned(), "web".to_owned())].into(),
                    creation_timestamp: Some(Time::default()),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(0),
                        str_val: s(""),
                    }),
                    max_surge: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: s("25%"),
                    }),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let json = decode_as("k8s.io.api.apps.v1.Deployment", &deploy.encode_to_vec());
    let spec = &json["spec"];
    assert_eq!(spec["replicas"], 0, "*int32 zero is a value");
    assert!(spec.get("minReadySeconds").is_none(), "int32 zero is unset");
    assert_eq!(
        spec["strategy"]["rollingUpdate"],
        json!({"maxUnavailable": 0, "maxSurge": "25%"})
    );
    let c = &spec["template"]["spec"]["containers"][0];
    assert_eq!(
        c["ports"],
        json!([{"containerPort": 80, "protocol": "TCP"}])
    );
    assert_eq!(c["resources"], json!({"limits": {"cpu": "500m"}}));
    assert!(c.get("stdin").is_none());
    assert_eq!(
        spec["template"]["metadata"],
        json!({"labels": {"app": "web"}})
    );
}

#[test]
fn what_we_encode_k8s_pb_reads_back() {
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "uid": "u-1",
                     "creationTimestamp": "2026-11-22T01:02:03Z", "labels": {"app": "web"}},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
                 "selector": {"app": "web"}},
        "status": {"loadBalancer": {}},
    });
    let bytes = encode_object(&svc).unwrap().unwrap();
    let unknown = Unknown::decode(&bytes[4..]).unwrap();
    assert_eq!(&bytes[..4], b"k8s\0");
    assert_eq!(
        unknown.type_meta.unwrap(),
        TypeMeta {
            api_version: s("v1"),
            kind: s("Service")
        }
    );
    let typed = core::Service::decode(unknown.raw.unwrap().as_slice()).unwrap();
    let meta = typed.metadata.unwrap();
    assert_eq!(
        meta.creation_timestamp.unwrap().seconds,
        Some(1_795_305_600 + 3_723)
    );
    assert_eq!(meta.labels["app"], "web");
    let spec = typed.spec.unwrap();
    assert_eq!(spec.cluster_ips, ["10.96.0.10"]);
    assert_eq!(
        spec.ports[0].target_port,
        Some(IntOrString {
            r#type: Some(1),
            int_val: None,
            str_val: s("http")
        })
    );
    assert!(typed.status.unwrap().load_balancer.is_some());
    // And back: the same JSON.
    assert_eq!(decode_object(&bytes).unwrap(), svc);
}

#[test]
fn objects_round_trip_through_protobuf() {
    let cases = [
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-1", "namespace": "default"}, "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true}}],
               "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque",
               "data": {"k": "dmFsdWU="}}),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "n1"},
               "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40,
                        "renewTime": "2026-11-22T01:02:03.123456Z"}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p",
                 "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:containers": {}}},
                                    "time": "2026-11-22T01:02:03Z"}]},
               "spec": {"containers": [{"name": "c", "image": "i", "command": ["sh", "-c", "true"],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 5},
                        "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}],
                        "volumes": [{"name": "v", "emptyDir": {}}], "terminationGracePeriodSeconds": 0}}),
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "widgets.example.com"},
               "spec": {"group": "example.com", "scope": "Namespaced",
                        "names": {"plural": "widgets", "kind": "Widget"},
                        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                            "type": "object", "properties": {"spec": {"type": "object",
                                "x-kubernetes-preserve-unknown-fields": true,
                                "properties": {"size": {"x-kubernetes-int-or-string": true},
                                               "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                                               "tags": {"type": "array", "items": {"type": "string"}},
                                               "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                               "free": {"type": "object", "additionalProperties": true}},
                                "required": ["size"]}}}}}]}}),
    ];
    for case in cases {
        let bytes = encode_object(&case).unwrap().unwrap();
        assert_eq!(decode_object(&bytes).unwrap(), case);
    }
}

#[test]
fn bad_bodies_are_refused_with_a_reason() {
    let no_magic = decode_object(b"{\"kind\":\"ConfigMap\"}").unwrap_err();
    assert_eq!(no_magic.code.as_u16(), 400);
    assert!(no_magic.message.contains("magic"), "{}", no_magic.message);
    let widget = envelope("example.com/v1", "Widget", vec![]);
    assert!(
        decode_object(&widget)
            .unwrap_err()
            .message
            .contains("Widget")
    );
    let truncated = envelope("v1", "ConfigMap", vec![0x0a, 0x05, b'a']);
    let e = decode_object(&truncated).unwrap_err();
    assert!(e.message.contains("metadata"), "{}", e.message);
    assert_eq!(
        message_name("rbac.authorization.k8s.io/v1", "ClusterRole").as_deref(),
        Some("k8s.io.api.rbac.v1.ClusterRole")
    );
    assert_eq!(
        message_name("apps/v1", "DeleteOptions").as_deref(),
        Some("k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions")
    );
}

#[test]
fn slices_with_false_conditions_keep_them() {
    let slice = discovery::EndpointSlice {
        metadata: Some(go_meta("s")),
        address_type: s("IPv4"),
        endpoints: vec![discovery::Endpoint {
            addresses: vec!["10.0.0.1".into()],
            conditions: Some(discovery::EndpointConditions {
                ready: Some(false),
                serving: None,
                terminating: None,
            }),
            ..Default::default()
        }],
        ports: vec![],
    };
    let json = decode_as(
        "k8s.io.api.discovery.v1.EndpointSlice",
        &slice.encode_to_vec(),
    );
    assert_eq!(json["endpoints"][0]["conditions"], json!({"ready": false}));
}
