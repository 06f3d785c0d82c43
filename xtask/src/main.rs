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
    /// Build in release mode and run the dataplane benchmarks (root).
    Bench {
        /// Extra arguments for bench-dataplane.
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

fn release_bin(name: &str, args: &[String]) -> Result<()> {
    exec(Command::new("cargo").args(["build", "--release", "--bins"]))?;
    exec(Command::new(format!("target/release/{name}")).args(args))
}

fn main() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    std::env::set_current_dir(root)?;
    match Cli::parse().cmd {
        Cmd::Demo => release_bin("demo", &[]),
        Cmd::Bench { args } => release_bin("bench-dataplane", &args),
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
