#!/usr/bin/env bash
# The README's main command: set up a fresh machine, build, and run the
# ClusterIP demo (a node namespace, a client pod, three backend pods).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --bins
exec ./target/release/demo
