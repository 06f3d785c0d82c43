//! `cargo xtask`: orchestration around cargo. The normal build needs none of
//! it (`proxy/build.rs` compiles the eBPF object).
#![forbid(unsafe_code)]

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build in release mode and run the ClusterIP demo (root).
    Demo,
    /// Build in release mode and run the side-by-side benchmark (root):
    /// Switchyard against kube-proxy's iptables (legacy, nft) and nftables
    /// modes with N Services (bench-services), a NodePort from outside
    /// (bench-nodeport), the TC path's per-packet cost (bench-dataplane)
    /// and one reconcile pass against raw batch writes (bench-reconcile). Writes CSVs and PNGs under docs/bench/ and the
    /// tables into docs/benchmarks.md.
    Bench {
        /// Add 50,000 Services.
        #[arg(long)]
        full: bool,
        /// Extra arguments for bench-services (e.g. `--services 1,1000`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Clippy over the host crates and, for the BPF target, the eBPF crate.
    Clippy,
}

/// Runs a command, failing with the exact command line if it fails.
fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn release_bin(name: &str) -> Result<()> {
    exec(Command::new("cargo").args(["build", "--release", "--bins"]))?;
    exec(&mut Command::new(format!("target/release/{name}")))
}

/// Output of a command, failing with its command line.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const BEGIN: &str = "<!-- cargo xtask bench: begin -->";
const END: &str = "<!-- cargo xtask bench: end -->";

/// The machine, as the tables' heading states it.
fn machine() -> String {
    let first = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!(
        "{} ({} CPUs: {cpu}), kernel {}, {}, {}, {}",
        first(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
        first(&["nproc"]),
        first(&["uname", "-r"]),
        first(&["iptables-legacy", "--version"]),
        first(&["iptables-nft", "--version"]),
        first(&["nft", "--version"]),
    )
}

fn bench(full: bool, extra: &[String]) -> Result<()> {
    // Only what the benchmarks run: the proxy and the test bed's binaries.
    exec(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "switchyard",
        "-p",
        "switchyard-tests",
        "--bins",
    ]))?;
    let bin = |name: &str| {
        let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
        format!("{dir}/release/{name}")
    };
    let mut services = Command::new(bin("bench-services"));
    services.args(["--out", "docs/bench"]);
    if full {
        services.arg("--full");
    }
    services.args(extra);
    let services = output(&mut services)?;
    let dataplane = output(Command::new(bin("bench-dataplane")).args(["--rounds", "5"]))?;
    let nodeport = output(&mut Command::new(bin("bench-nodeport")))?;
    let reconcile = output(&mut Command::new(bin("bench-reconcile")))?;
    let section = format!(
        "{BEGIN}\n## Side by side: `cargo xtask bench`\n\nWritten by `cargo xtask bench` (do not edit by hand). Machine and run: {}.\nCSVs and plots: `docs/bench/`.\n\n![New connections/s against the number of Services](bench/services-conns-per-s.png)\n\n![connect() p99](bench/services-connect-p99.png)\n\n![Pod-to-pod connections/s with N Services](bench/services-pod-to-pod.png)\n\n![NodePort connections/s from outside with N Services](bench/services-nodeport.png)\n\n{services}\n#### NodePort across nodes and throughput (bench-nodeport: one Service, a two-node box)\n\n{nodeport}\n#### TC path and socket hook (bench-dataplane, medians of 5 rounds)\n\n{dataplane}\n#### One reconcile pass on the kernel's maps (bench-reconcile, medians of 7)\n\n{reconcile}{END}\n",
        machine()
    );
    let path = "docs/benchmarks.md";
    let doc = std::fs::read_to_string(path)?;
    let doc = match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => format!(
            "{}{section}{}",
            &doc[..b],
            doc[e + END.len()..].trim_start_matches('\n')
        ),
        _ => {
            // First run: right after the introduction.
            let at = doc.find("\n## ").map_or(doc.len(), |i| i + 1);
            format!("{}{section}\n{}", &doc[..at], &doc[at..])
        }
    };
    std::fs::write(path, doc)?;
    eprintln!("wrote docs/bench/ and the tables in {path}");
    Ok(())
}

fn main() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    std::env::set_current_dir(root)?;
    match Cli::parse().cmd {
        Cmd::Demo => release_bin("demo"),
        Cmd::Bench { full, args } => bench(full, &args),
        Cmd::Clippy => {
            exec(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
            exec(Command::new("cargo").current_dir("proxy-ebpf").args([
                "+nightly",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ]))
        }
    }
}
