//! CustomResourceDefinitions: a CRD with an OpenAPI schema makes a new
//! resource that kubectl 1.33 and 1.37 and kube-rs use like a built-in one,
//! on both stores — discovery, `explain`, pruning and defaults, upstream's
//! validation messages, strict fields, the status subresource,
//! server-side apply, watches, and a deleted CRD taking its objects along.
mod common;

use std::time::Duration;

use common::{Backend, Kubectl, Server, kubectl_dispatcher, kubectl_newest};
use futures::StreamExt as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Config,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::{Value, json};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, description: How many.}
              color: {type: string, enum: [red, blue], default: red}
              ports:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items: {type: object, required: [name], properties: {name: {type: string}, port: {type: integer}}}
          status:
            type: object
            properties:
              ready: {type: boolean}
"#;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn widget(name: &str, spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

fn with_kubectl(bin: std::path::PathBuf, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let k = Kubectl::new(bin, &server, &dir.path().join("home"));

    // A CRD without a schema is refused as upstream refuses it.
    let schemaless = CRD.split("    schema:").next().unwrap();
    let out = k.run_stdin(&["apply", "-f", "-"], schemaless);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains(
            "spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required"
        ),
        "{err}"
    );

    k.ok_stdin(&["apply", "-f", "-"], CRD);
    k.ok(&[
        "wait",
        "--for",
        "condition=established",
        "crd/widgets.example.com",
        "--timeout=10s",
    ]);
    let crd = k.json(&["get", "crd", "widgets.example.com"]);
    assert_eq!(crd["status"]["acceptedNames"]["listKind"], "WidgetList");
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));

    // Discovery and the schema, as kubectl finds them.
    let explained = k.ok(&["explain", "widget.spec.size"]);
    assert!(
        explained.contains("How many.") && explained.contains("<integer>"),
        "{explained}"
    );

    // Created with its default, read back by any of its names.
    k.ok_stdin(
        &["apply", "-f", "-"],
        &widget("w1", "{size: 2, ports: [{name: a, port: 1}]}"),
    );
    let w = k.json(&["get", "wd", "w1"]);
    assert_eq!(
        w["spec"],
        json!({"size": 2, "color": "red", "ports": [{"name": "a", "port": 1}]})
    );
    assert!(k.ok(&["get", "widgets.example.com"]).contains("w1"));

    // Upstream's refusals: schema violations (422), unknown fields (strict).
    let out = k.run_stdin(
        &["create", "-f", "-"],
        &widget("bad", "{size: 0, color: pink}"),
    );
    let err = stderr_of(&out);
    assert!(
        err.contains(r#"spec.color: Unsupported value: "pink": supported values: "red", "blue""#)
            && err.contains("spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"),
        "{err}"
    );
    let out = k.run_stdin(&["apply", "-f", "-"], &widget("bad", "{size: two}"));
    assert!(
        stderr_of(&out).contains(r#"spec.size: Invalid value: "string": spec.size in body must be of type integer: "string""#),
        "{}",
        stderr_of(&out)
    );
    let out = k.run_stdin(&["apply", "-f", "-"], &widget("bad", "{size: 1, sise: 2}"));
    assert!(
        stderr_of(&out).contains(r#"strict decoding error: unknown field "spec.sise""#),
        "{}",
        stderr_of(&out)
    );
    assert!(
        !k.ok(&["get", "wd", "-o", "name"]).contains("bad"),
        "nothing refused was stored"
    );

    // The status subresource: /status writes only status, the object only the rest.
    k.ok(&[
        "patch",
        "wd",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"ready":true}}"#,
    ]);
    k.ok(&[
        "patch",
        "wd",
        "w1",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":3},"status":{"ready":false}}"#,
    ]);
    let w = k.json(&["get", "wd", "w1"]);
    assert_eq!(
        (w["spec"]["size"].clone(), w["status"]["ready"].clone()),
        (json!(3), json!(true))
    );

    // Server-side apply owns list items by their keys; a conflict names them.
    k.ok_stdin(
        &["apply", "--server-side", "--field-manager=a", "-f", "-"],
        &widget("w2", "{size: 1, ports: [{name: x, port: 1}]}"),
    );
    let out = k.run_stdin(
        &["apply", "--server-side", "--field-manager=b", "-f", "-"],
        &widget("w2", "{size: 1, ports: [{name: x, port: 2}]}"),
    );
    assert!(
        stderr_of(&out).contains(r#"conflict with "a": .spec.ports[name="x"].port"#),
        "{}",
        stderr_of(&out)
    );

    // A deleted CRD takes its objects and its API along.
    k.ok(&["delete", "crd", "widgets.example.com"]);
    let out = k.run(&["get", "--raw", "/apis/example.com/v1"]);
    assert!(
        !out.status.success() && stderr_of(&out).contains("NotFound"),
        "{}",
        stderr_of(&out)
    );
    k.ok_stdin(&["apply", "-f", "-"], CRD);
    k.ok(&[
        "wait",
        "--for",
        "condition=established",
        "crd/widgets.example.com",
        "--timeout=10s",
    ]);
    assert_eq!(
        k.ok(&["get", "wd", "-o", "name"]).trim(),
        "",
        "the old objects are gone"
    );
}

#[test]
fn kubectl_1_33_custom_resources() {
    with_kubectl(kubectl_dispatcher(), Backend::Embedded);
}

#[test]
fn kubectl_1_33_custom_resources_on_etcd() {
    with_kubectl(kubectl_dispatcher(), Backend::Etcd);
}

#[test]
fn kubectl_1_37_custom_resources() {
    with_kubectl(kubectl_newest(), Backend::Embedded);
}

#[test]
fn kubectl_1_37_custom_resources_on_etcd() {
    with_kubectl(kubectl_newest(), Backend::Etcd);
}

async fn client(server: &Server) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn with_kube_rs(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let client = client(&server).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_yaml::from_str(CRD).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();

    // kube-rs discovers the new kind like any other.
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let (resource, caps) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    assert_eq!(resource.plural, "widgets");
    assert!(
        caps.subresources.iter().any(|(s, _)| s.plural == "status"),
        "{caps:?}"
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);

    let events = watcher(widgets.clone(), watcher::Config::default()).applied_objects();
    let mut events = Box::pin(events);

    let mut w = DynamicObject::new("w1", &resource);
    w.data = json!({"spec": {"size": 2}});
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.data["spec"]["color"], "red", "the schema's default");
    let seen = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.metadata.name.as_deref(), Some("w1"));

    // Status through its subresource; the watch sees the change.
    let patched = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["ready"], true);
    let seen = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.data["status"]["ready"], true);

    // A schema violation is a 422 with the field named.
    let mut bad = DynamicObject::new("bad", &resource);
    bad.data = json!({"spec": {"size": -1}});
    match widgets.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message
                    .contains("spec.size in body should be greater than or equal to 1"),
                "{}",
                s.message
            );
        }
        other => panic!("a refusal, got {other:?}"),
    }
    let list = widgets.list(&Default::default()).await.unwrap();
    let names: Vec<Option<String>> = list.items.iter().map(|w| w.metadata.name.clone()).collect();
    assert_eq!(names, [Some("w1".to_owned())]);
    let _: Value = serde_json::to_value(&list.items[0]).unwrap();
}

#[tokio::test]
async fn kube_rs_custom_resources() {
    with_kube_rs(Backend::Embedded).await;
}

#[tokio::test]
async fn kube_rs_custom_resources_on_etcd() {
    with_kube_rs(Backend::Etcd).await;
}
