#!/usr/bin/env python3
"""Writes src/api/proto/schema.txt: the protobuf layout of the kinds the API
server serves, for its table-driven protobuf <-> JSON codec.

Inputs are upstream's own sources at one release (the one /version reports):

    git clone --depth 1 -b kubernetes-1.33.13 https://github.com/kubernetes/api
    git clone --depth 1 -b kubernetes-1.33.13 https://github.com/kubernetes/apimachinery
    git clone --depth 1 -b kubernetes-1.33.13 https://github.com/kubernetes/apiextensions-apiserver
    tools/proto_schema.py SRC > src/api/proto/schema.txt     # SRC holds the three clones

- `generated.proto` gives each message's fields: number, name (the JSON
  name), type, repeated or map;
- the Go types (`types*.go`) say which scalar fields are pointers. gogo
  protobuf writes a non-pointer field even when it holds its zero value, so a
  zero there means "unset"; a pointer field is written only when set, so its
  zero is a value (`replicas: 0`);
- the Go markers and tags say how values merge (server-side apply and
  strategic merge patch): `+listType`, `+listMapKey`, `+mapType`,
  `+structType`, `patchStrategy`/`patchMergeKey`, and `+default` of fields.

Only messages reachable from ROOTS are written.
"""
import os
import re
import sys

PACKAGES = [
    "api/core/v1", "api/apps/v1", "api/batch/v1", "api/discovery/v1",
    "api/coordination/v1", "api/rbac/v1", "api/authorization/v1",
    "api/authentication/v1", "api/autoscaling/v1", "api/policy/v1",
    "apimachinery/pkg/apis/meta/v1", "apimachinery/pkg/runtime",
    "apimachinery/pkg/runtime/schema", "apimachinery/pkg/util/intstr",
    "apimachinery/pkg/api/resource",
    "apiextensions-apiserver/pkg/apis/apiextensions/v1",
]

CORE = "k8s.io.api.core.v1."
META = "k8s.io.apimachinery.pkg.apis.meta.v1."
ROOTS = [CORE + k for k in [
    "Namespace", "Pod", "Service", "Endpoints", "Node", "ReplicationController",
    "ConfigMap", "Secret", "ServiceAccount", "Event", "Binding", "PodTemplate",
    "LimitRange", "ResourceQuota", "PersistentVolume", "PersistentVolumeClaim",
]] + [
    "k8s.io.api.apps.v1." + k for k in ["Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "ControllerRevision"]
] + [
    "k8s.io.api.batch.v1.Job", "k8s.io.api.batch.v1.CronJob",
    "k8s.io.api.discovery.v1.EndpointSlice", "k8s.io.api.coordination.v1.Lease",
    "k8s.io.api.policy.v1.Eviction", "k8s.io.api.autoscaling.v1.Scale",
] + ["k8s.io.api.rbac.v1." + k for k in ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]] + [
    "k8s.io.api.authorization.v1." + k for k in [
        "SubjectAccessReview", "SelfSubjectAccessReview", "LocalSubjectAccessReview", "SelfSubjectRulesReview"]
] + ["k8s.io.api.authentication.v1." + k for k in ["TokenRequest", "TokenReview", "SelfSubjectReview"]] + [
    "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
    META + "Status", META + "DeleteOptions", META + "WatchEvent", META + "List",
    "k8s.io.apimachinery.pkg.runtime.Unknown",
]
# Every stored kind also has a `<Kind>List`.
SINGLE = ("Review", "Eviction", "Scale", "TokenRequest", ".Binding", "Status", "Options", "Event", ".List", "Unknown")
ROOTS += [r + "List" for r in ROOTS if not r.endswith(SINGLE) or r.endswith("v1.Event")]

SCALARS = {"string", "bytes", "bool", "int32", "int64", "double", "float"}

message_re = re.compile(r"^message (\w+) \{")
field_re = re.compile(r"^\s+(optional|repeated)?\s*([\w.<>, ]+?)\s+(\w+) = (\d+);")
map_re = re.compile(r"map<(\S+), (\S+)>")


def proto_messages(src):
    """{full name: [(number, name, type, repeated)]} from every package's proto."""
    out = {}
    for pkg in PACKAGES:
        path = os.path.join(src, pkg, "generated.proto")
        package, current = None, None
        for line in open(path):
            if line.startswith("package "):
                package = line.split()[1].rstrip(";")
            m = message_re.match(line)
            if m:
                current = f"{package}.{m.group(1)}"
                out[current] = []
                continue
            if line.startswith("}"):
                current = None
                continue
            f = field_re.match(line)
            if current and f:
                label, ty, name, num = f.groups()
                out[current].append((int(num), name, resolve(ty.strip(), package), label == "repeated"))
    return out


def resolve(ty, package):
    m = map_re.match(ty)
    if m:
        return "map:" + resolve(m.group(1), package) + ":" + resolve(m.group(2), package)
    if ty in SCALARS:
        return ty
    return ty.lstrip(".") if ty.startswith(".") else f"{package}.{ty}"


struct_re = re.compile(r"^type (\w+) struct \{")
marker_re = re.compile(r"^\s*// \+(listType|listMapKey|mapType|structType|default)=(.*)$")
patch_re = re.compile(r'patchStrategy:"([^"]*)"')
merge_key_re = re.compile(r'patchMergeKey:"([^"]*)"')
go_field_re = re.compile(r"^\s+\w+\s+(\*?)\S+\s+`json:\"([^,\"]*)([^\"]*)\"[^`]*protobuf:\"[^\"]*name=(\w+)")
go_inline_re = re.compile(r"^\s+\*?[\w.]+\s+`json:\",inline\"[^`]*protobuf:\"[^\"]*name=(\w+)")


def go_fields(src):
    """{(package dir, struct): ({pointer fields}, {inline fields}, {proto name: JSON name},
    {proto name: [merge flags]}, [struct flags])}, by proto name. An inline (embedded)
    struct's fields are the parent's in JSON; a few JSON names differ from the
    proto's (`$ref`, `x-kubernetes-*`, `uid`)."""
    out = {}
    for pkg in PACKAGES:
        d = os.path.join(src, pkg)
        for f in sorted(os.listdir(d)):
            if not f.endswith(".go") or f.endswith("_test.go") or f.startswith("zz_") or f.endswith(".pb.go"):
                continue
            current = None
            markers = []
            for line in open(os.path.join(d, f)):
                mk = marker_re.match(line)
                if mk:
                    markers.append((mk.group(1), mk.group(2).strip()))
                    continue
                m = struct_re.match(line)
                if m:
                    current = m.group(1)
                    entry = out.setdefault((pkg, current), (set(), set(), {}, {}, []))
                    if ("structType", "atomic") in markers or ("mapType", "atomic") in markers:
                        entry[4].append("atomic")
                    markers = []
                    continue
                if line.startswith("}"):
                    current = None
                    markers = []
                    continue
                g = go_field_re.match(line)
                if current and g:
                    proto_name = g.group(4)
                    if g.group(1) == "*":
                        out[(pkg, current)][0].add(proto_name)
                    out[(pkg, current)][2][proto_name] = g.group(2)
                    flags = merge_flags(markers, line)
                    # A field Go's JSON writes even when unset (no omitempty).
                    if "omitempty" not in g.group(3):
                        flags.append("always")
                    out[(pkg, current)][3][proto_name] = flags
                    markers = []
                elif not line.strip().startswith("//"):
                    markers = []
                i = go_inline_re.match(line)
                if current and i:
                    out[(pkg, current)][1].add(i.group(1))
    return out


def merge_flags(markers, line):
    """How a field merges: `list=map:k1,k2`, `list=set`, `list=atomic`,
    `map=atomic`, `patch=merge|retainKeys|replace`, `mergekey=k`, `default=v`."""
    flags = []
    kinds = dict(markers)
    keys = [v for k, v in markers if k == "listMapKey"]
    if "listType" in kinds:
        flags.append("list=map:" + ",".join(keys) if kinds["listType"] == "map" else "list=" + kinds["listType"])
    if kinds.get("mapType") == "atomic" or kinds.get("structType") == "atomic":
        flags.append("map=atomic")
    p = patch_re.search(line)
    if p:
        flags.append("patch=" + p.group(1).replace(",", "+"))
    k = merge_key_re.search(line)
    if k:
        flags.append("mergekey=" + k.group(1))
    if "default" in kinds:
        d = kinds["default"]
        if d.startswith('"') and d.endswith('"'):
            flags.append("default=" + d[1:-1])
    return flags


def package_dir(full):
    for pkg in PACKAGES:
        if full.startswith("k8s.io." + pkg.replace("/", ".").replace("-", "_") + "."):
            return pkg
    for pkg in PACKAGES:
        if full.rsplit(".", 1)[0] == "k8s.io." + pkg.replace("/", ".").replace("-", "_"):
            return pkg
    return None


def main(src):
    msgs = proto_messages(src)
    go = go_fields(src)
    seen, todo = [], list(ROOTS)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in msgs:
            sys.exit(f"no message {name}")
        seen.append(name)
        for _, _, ty, _ in msgs[name]:
            for part in ty.split(":"):
                if part not in SCALARS and part != "map":
                    todo.append(part)
    print("# Generated by tools/proto_schema.py from Kubernetes 1.33.13's generated.proto")
    print("# files and Go types; do not edit. Per message: `message NAME`, then one line")
    print("# per field: NUMBER JSON-NAME TYPE [repeated] [pointer] [inline], how it merges")
    print("# (list=, map=, patch=, mergekey=, default=), and `always` when Go's JSON writes it")
    print("# even unset. `message NAME atomic`: a struct replaced whole by server-side apply.")
    for name in sorted(seen):
        pointers, inline, json_names, merges, struct_flags = go.get(
            (package_dir(name), name.rsplit(".", 1)[1]), (set(), set(), {}, {}, []))
        print(f"message {name}" + "".join(" " + f for f in struct_flags))
        for num, field, ty, rep in msgs[name]:
            json_name = json_names.get(field) or field
            flags = (" repeated" if rep else "") + (" pointer" if field in pointers and not rep else "")
            flags += " inline" if field in inline else ""
            flags += "".join(" " + f for f in merges.get(field, []))
            print(f"{num} {json_name} {ty}{flags}")


if __name__ == "__main__":
    main(sys.argv[1])
