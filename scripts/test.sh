#!/usr/bin/env bash
# The README's test command (and exactly what .ci/run calls): set up a fresh
# machine, build every binary the tests drive, and run the whole suite.
# Privileged tests need root; without it they fail and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
