//! Compiles proxy-ebpf for the BPF target and leaves the objects in OUT_DIR,
//! where `lib.rs` embeds them. Set `AYA_BUILD_SKIP=1` to skip (check/clippy
//! without bpf-linker); the embedded objects are then empty.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Prints `rerun-if-changed` for every file under `dir` (but `target/`).
fn watch(dir: &std::path::Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                watch(&path)?;
            }
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("proxy has no parent directory"))?
        .join("proxy-ebpf");
    // Every source file of the eBPF crate and of the shared ABI crate, named
    // one by one: a directory given to rerun-if-changed did not always make
    // cargo rerun this script (a stale object got embedded).
    for dir in [root.clone(), root.with_file_name("proxy-common")] {
        watch(&dir)?;
    }
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    let skip = std::env::var_os("AYA_BUILD_SKIP")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = std::env::var("OUT_DIR")?;
        for name in ["dataplane", "baseline"] {
            std::fs::write(std::path::Path::new(&out).join(name), [])?;
        }
    }
    aya_build::build_ebpf(
        [Package {
            name: "proxy-ebpf",
            root_dir: root,
            ..Package::default()
        }],
        Toolchain::default(),
    )
}
