#!/usr/bin/env bash
# The README's main command: set up a fresh machine, build, and run the demo:
# our API server, a node namespace (a client pod, three backend pods) and the
# switchyard daemon watching the server; the sample app examples/demo-app.yaml
# is applied with kubectl and traffic to its ClusterIP is shown.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --bins
exec ./target/release/demo
