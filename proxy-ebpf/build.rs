//! Rebuilds the eBPF object when bpf-linker changes: cargo cannot see the
//! linker as a dependency, so without this an upgraded linker would not
//! trigger a rebuild.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
