//! Compiles proxy-ebpf for the BPF target and leaves the objects in OUT_DIR,
//! where `lib.rs` embeds them. Set `AYA_BUILD_SKIP=1` to skip (check/clippy
//! without bpf-linker); the embedded objects are then empty.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("proxy has no parent directory"))?
        .join("proxy-ebpf");
    // aya-build watches proxy-ebpf; the shared ABI crate must trigger a rebuild too.
    println!(
        "cargo:rerun-if-changed={}",
        root.with_file_name("proxy-common").display()
    );
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
