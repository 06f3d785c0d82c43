#!/usr/bin/env bash
# The README's test command (and exactly what .ci/run calls): set up a fresh
# machine, build every binary the tests drive, and run the whole suite.
# Privileged tests need root; without it they fail and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Default members only: proxy-ebpf builds for the BPF target, through proxy/build.rs.
cargo build --bins
cargo test --no-fail-fast
