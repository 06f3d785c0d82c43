"""The official Python `kubernetes` client against sy-apiserver.

Run by tests/python_client.rs with the kubeconfig path as argument; prints
one line per check and exits non-zero on the first failure.
"""
import json
import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    v1 = client.CoreV1Api()

    # create
    for name, tier in [("web", "fe"), ("api", "be"), ("db", "data")]:
        body = client.V1Service(
            metadata=client.V1ObjectMeta(name=name, labels={"app": "shop", "tier": tier}),
            spec=client.V1ServiceSpec(selector={"app": name}, ports=[client.V1ServicePort(port=80, target_port=8080)]),
        )
        created = v1.create_namespaced_service("default", body)
        check(f"create {name}", created.spec.cluster_ip and created.metadata.uid, created.spec)

    # list with a selector (the typed model must deserialize strictly)
    svcs = v1.list_namespaced_service("default", label_selector="tier in (fe,be),app=shop")
    names = sorted(s.metadata.name for s in svcs.items)
    check("list with set-based selector", names == ["api", "web"], names)
    list_rv = svcs.metadata.resource_version

    # watch, resuming from the list's resourceVersion: sees only later changes
    v1.patch_namespaced_service("web", "default", {"metadata": {"labels": {"changed": "yes"}}})
    w = watch.Watch()
    seen = []
    for event in w.stream(v1.list_namespaced_service, "default", resource_version=list_rv,
                          allow_watch_bookmarks=True, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 1:
            v1.delete_namespaced_service("db", "default")
        if len(seen) == 2:
            w.stop()
    check("watch resumes from a resourceVersion", seen == [("MODIFIED", "web"), ("DELETED", "db")], seen)

    # replace with a stale resourceVersion -> 409
    current = v1.read_namespaced_service("web", "default")
    v1.patch_namespaced_service("web", "default", {"metadata": {"labels": {"again": "1"}}})
    current.metadata.labels["stale"] = "yes"
    try:
        v1.replace_namespaced_service("web", "default", current)
        check("stale replace conflicts", False, "replace succeeded")
    except ApiException as e:
        check("stale replace conflicts", e.status == 409 and "Conflict" in e.body, (e.status, e.body))

    # a list page's continue token with a resourceVersion: upstream's 400
    page = v1.list_namespaced_service("default", limit=1)
    try:
        v1.list_namespaced_service("default", limit=1, _continue=page.metadata._continue, resource_version="5")
        check("continue with resourceVersion refused", False, "listed")
    except ApiException as e:
        check("continue with resourceVersion refused",
              e.status == 400 and "specifying resource version is not allowed when using continue" in e.body,
              (e.status, e.body))

    # not found is a 404 ApiException
    try:
        v1.read_namespaced_service("nope", "default")
        check("missing object is 404", False)
    except ApiException as e:
        check("missing object is 404", e.status == 404, e.status)

    # EndpointSlices deserialize (strict pydantic models)
    d1 = client.DiscoveryV1Api()
    slice_body = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.11"], "conditions": {"ready": True}}],
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
    }
    d1.create_namespaced_endpoint_slice("default", slice_body)
    slices = d1.list_namespaced_endpoint_slice("default", label_selector="kubernetes.io/service-name=web")
    check("endpointslices round-trip", slices.items[0].endpoints[0].addresses == ["10.244.1.11"], slices)

    # upstream's refusals: a link-local endpoint address (422 naming the field) ...
    bad_slice = dict(slice_body, metadata={"name": "web-bad"},
                     endpoints=[{"addresses": ["169.254.1.1"]}])
    try:
        d1.create_namespaced_endpoint_slice("default", bad_slice)
        check("link-local endpoint refused", False, "created")
    except ApiException as e:
        causes = json.loads(e.body)["details"]["causes"]
        check("link-local endpoint refused",
              e.status == 422 and causes[0]["field"] == "endpoints[0].addresses[0]", (e.status, causes))

    # ... and a Deployment whose selector does not select its template.
    apps = client.AppsV1Api()
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "odd"},
              "spec": {"selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "api"}},
                                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}
    try:
        apps.create_namespaced_deployment("default", deploy)
        check("selector mismatch refused", False, "created")
    except ApiException as e:
        causes = json.loads(e.body)["details"]["causes"]
        check("selector mismatch refused",
              e.status == 422 and causes[0]["field"] == "spec.template.metadata.labels"
              and "`selector` does not match template `labels`" in causes[0]["message"], (e.status, causes))

    # server-side apply: ownership, a 409 naming field and manager, force
    cfg = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}}
    v1.patch_namespaced_config_map("applied", "default", cfg, field_manager="first",
                                   _content_type="application/apply-patch+yaml")
    mine = dict(cfg, data={"a": "2"})
    try:
        v1.patch_namespaced_config_map("applied", "default", mine, field_manager="second",
                                       _content_type="application/apply-patch+yaml")
        check("apply conflict", False, "applied")
    except ApiException as e:
        body = json.loads(e.body)
        check("apply conflict", e.status == 409 and body["details"]["causes"] == [
            {"reason": "FieldManagerConflict", "message": 'conflict with "first"', "field": ".data.a"}], (e.status, body))
    forced = v1.patch_namespaced_config_map("applied", "default", mine, field_manager="second", force=True,
                                            _content_type="application/apply-patch+yaml")
    owners = [(m.manager, m.operation) for m in forced.metadata.managed_fields]
    check("forced apply takes the field", forced.data == {"a": "2"} and owners == [("second", "Apply")], owners)

if __name__ == "__main__":
    main(sys.argv[1])
