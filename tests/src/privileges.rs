//! Privileged tests need root and BPF. When they cannot run they fail with
//! the reason — they never pass without having run.
use std::path::Path;

/// Panics with the reason if this process cannot create namespaces and load
/// eBPF programs.
pub fn require() {
    if let Err(reason) = check() {
        panic!("privileged test cannot run here: {reason}");
    }
}

fn check() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root (network namespaces, cgroups and BPF need it)".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err("the kernel exposes no BTF at /sys/kernel/btf/vmlinux".into());
    }
    for tool in ["ip", "mount"] {
        if which(tool).is_none() {
            return Err(format!("`{tool}` is not installed (run scripts/setup.sh)"));
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}
