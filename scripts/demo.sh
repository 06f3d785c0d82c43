#!/usr/bin/env bash
# The README's main command: set up a fresh machine, build, bring a
# three-node cluster up with sy-cluster (docs/cluster.md), run the seed's
# application on it (examples/frontend-backend/: a front end and a back
# end), and bring the cluster down again, whatever happens.
#
# Shown: requests from outside the cluster (a NodePort) answered by
# different front-end and back-end pods; the back end found by DNS name
# and by Service variables; a back-end pod killed and replaced by its
# ReplicationController with no failed request; a scale-up; a rolling
# update of the front end with no failed request.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SKIP_SETUP:-}" != 1 ]; then
  ./scripts/setup.sh
  cargo build --release --bins
fi
BIN=${BIN:-target/release}
PREFIX=sydemo
STATE=$(mktemp -d /tmp/sy-demo.XXXXXX)
KUBECTL=${KUBECTL:-$HOME/.local/share/switchyard/venv/bin/kubectl}
export KUBECONFIG=$STATE/kubeconfig
EXT=$PREFIX-ext
APP=examples/frontend-backend

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
k() { echo "\$ kubectl $*"; "$KUBECTL" "$@"; }
down() {
  step "sy-cluster down"
  "$BIN/sy-cluster" --state-dir "$STATE" down
  rmdir "$STATE" 2>/dev/null || true
}
trap down EXIT

# Requests from the external namespace to NODE:PORT: who answered, counted.
ask() {
  ip netns exec "$EXT" "$BIN/netprobe" tcp --target "$1" --count "$2" ${3:+--interval-ms $3}
}
summarize() {
  python3 -c '
import collections, json, sys
d = json.load(sys.stdin)
for who, n in sorted(collections.Counter(d["answers"]).items()):
    print(f"  {n:3d}  {who}")
ok, failed = len(d["answers"]), sum(d["errors"].values())
print(f"  {ok} answered, {failed} failed", d["errors"] or "")
'
}
wait_ready() { # label selector, count
  for _ in $(seq 180); do
    n=$("$KUBECTL" get pods -l "$1" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{" "}{end}' | tr ' ' '\n' | grep -c True || true)
    [ "$n" = "$2" ] && return 0
    sleep 0.5
  done
  echo "pods $1 did not become $2 Ready" >&2; "$KUBECTL" get pods -o wide >&2; return 1
}

step "sy-cluster up --nodes 3"
rmdir "$STATE"
"$BIN/sy-cluster" --state-dir "$STATE" up --nodes 3 --prefix "$PREFIX"

step "the back end: a ReplicationController and backend-service; then the front end with a NodePort"
k apply -f $APP/backend.yaml
wait_ready tier=backend 3
k apply -f $APP/frontend.yaml
k rollout status deployment/frontend --timeout=90s
k get pods -o wide
k get services

step "from outside the cluster (netns $EXT), NodePort 30080 on node-1: front end > back end found by DNS name"
ask 192.168.0.11:30080 12 | summarize
step "NodePort 30081 on node-3: the front end's second container finds the back end by Service variables"
ask 192.168.0.13:30081 6 | summarize
echo "\$ ip netns exec $EXT curl http://192.168.0.12:30080/"
ip netns exec "$EXT" curl -s http://192.168.0.12:30080/

step "a back-end pod killed while requests flow: the ReplicationController replaces it"
ask 192.168.0.12:30080 60 100 > "$STATE/kill.json" &
probe=$!
sleep 2
victim=$("$KUBECTL" get pods -l tier=backend -o jsonpath='{.items[0].metadata.name}')
k delete pod "$victim" --wait=false
wait_ready tier=backend 3
wait $probe
summarize < "$STATE/kill.json"
k get pods -l tier=backend -o wide

step "scale the back end to 5"
k scale rc backend --replicas=5
wait_ready tier=backend 5
ask 192.168.0.11:30080 20 | summarize

step "rolling update of the front end (VERSION=v2) while requests flow"
ask 192.168.0.13:30080 100 100 > "$STATE/roll.json" &
probe=$!
sleep 1
k set env deployment/frontend VERSION=v2
k rollout status deployment/frontend --timeout=120s
wait $probe
python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
a = d["answers"]
v1 = sum(x.startswith("v1/") for x in a)
v2 = sum(x.startswith("v2/") for x in a)
failed = sum(d["errors"].values())
last_v1 = max((i for i, x in enumerate(a) if x.startswith("v1/")), default=None)
print(f"  {len(a)} answered ({v1} by v1 front ends, {v2} by v2), {failed} failed; the last v1 answer was request {last_v1}")
' "$STATE/roll.json"
ask 192.168.0.11:30080 6 | summarize

step "sy-cluster status"
"$BIN/sy-cluster" --state-dir "$STATE" status
