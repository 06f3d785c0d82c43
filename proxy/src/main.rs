//! The `switchyard` command line.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::{
    attach::{HookArgs, load_and_attach},
    daemon::{self, DaemonArgs, Settings},
    datapath::{
        AyaLbMaps, MapSizeArgs,
        loader::{self, DEFAULT_PIN_ROOT},
        lock::PinRootLock,
    },
    inspect,
    kubeproxy::{self, ProxyMode},
    reconcile::Reconciler,
    table_file,
};
use tracing::info;

/// Without a subcommand, `switchyard` is the daemon: a drop-in for
/// kube-proxy, taking its flags.
#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Kubernetes Service load balancing in eBPF"
)]
struct Cli {
    /// bpffs directory holding Switchyard's pinned maps and links.
    #[arg(long, global = true, default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load the programs (adopting pinned maps) and attach them; links are
    /// pinned, so they stay attached after this command exits.
    Attach(AttachArgs),
    /// Make the maps hold exactly the frontends of a table file.
    ApplyFile {
        /// YAML table (see docs/development.md).
        file: PathBuf,
    },
    /// Print what the pinned maps hold.
    Inspect {
        what: Inspect,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Detach every program and remove every pin Switchyard made; with
    /// `--proxy-mode iptables|nftables` (given before the subcommand),
    /// remove that mode's kube-proxy rules instead (from `--tc-netns` when
    /// given), as `kube-proxy --cleanup` does.
    Cleanup,
}

#[derive(Clone, Copy, ValueEnum)]
enum Inspect {
    Services,
    Backends,
    Conntrack,
    Affinity,
}

#[derive(clap::Args)]
struct AttachArgs {
    #[command(flatten)]
    hooks: HookArgs,
    #[command(flatten)]
    sizes: MapSizeArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let Some(command) = cli.command else {
        let settings = Settings::resolve(&cli.daemon, cli.pin_root)?;
        return daemon::run(settings);
    };
    match command {
        Command::Attach(args) => attach(&cli.pin_root, &args),
        Command::ApplyFile { file } => apply_file(&cli.pin_root, &file),
        Command::Inspect { what, json } => print_inspect(&cli.pin_root, what, json),
        Command::Cleanup if cli.daemon.proxy_mode.is_some_and(|m| m != ProxyMode::Ebpf) => {
            let mode = cli.daemon.proxy_mode.unwrap_or_default();
            kubeproxy::apply::cleanup(
                cli.daemon.hooks.tc_netns.as_deref(),
                mode,
                cli.daemon.iptables_variant.unwrap_or_default(),
            )?;
            info!(mode = mode.as_str(), "kube-proxy rules removed");
            Ok(())
        }
        Command::Cleanup => {
            let _lock = PinRootLock::acquire(&cli.pin_root, Duration::ZERO)?;
            let removed = loader::cleanup(&cli.pin_root)?;
            info!(links = removed.links, maps = removed.maps, pin_root = %cli.pin_root.display(), "cleaned up");
            Ok(())
        }
    }
}

fn attach(pin_root: &Path, args: &AttachArgs) -> Result<()> {
    if args.hooks.is_empty() {
        bail!("nothing to attach: give --cgroup-path and/or --tc-iface");
    }
    let _lock = PinRootLock::acquire(pin_root, Duration::ZERO)?;
    // Links are pinned: the programs stay attached when this process exits.
    load_and_attach(pin_root, &args.sizes.into(), &args.hooks)?;
    Ok(())
}

fn apply_file(pin_root: &Path, file: &Path) -> Result<()> {
    // Validate everything before touching a map: a bad file applies nothing.
    let desired = table_file::load(file)?;
    if !pin_root.join("maps").is_dir() {
        bail!(
            "no Switchyard maps under `{}`: run `switchyard attach` first",
            pin_root.display()
        );
    }
    let _lock = PinRootLock::acquire(pin_root, Duration::ZERO)?;
    let maps = AyaLbMaps::from_pins(&pin_root.join("maps")).with_context(|| {
        format!(
            "no Switchyard maps under `{}`: run `switchyard attach` first",
            pin_root.display()
        )
    })?;
    let mut reconciler = Reconciler::restore(maps)?;
    let report = reconciler.apply_with_retry(&desired, 5, Duration::from_millis(50))?;
    info!(
        frontends = desired.frontends.len(),
        writes = report.writes,
        deletes = report.deletes,
        "table applied"
    );
    Ok(())
}

fn print_inspect(pin_root: &Path, what: Inspect, json: bool) -> Result<()> {
    let dir = pin_root.join("maps");
    let mut out = std::io::stdout().lock();
    macro_rules! emit {
        ($rows:expr, $header:expr, $fmt:expr) => {{
            let rows = $rows;
            if json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", $header)?;
                for r in &rows {
                    writeln!(out, "{}", $fmt(r))?;
                }
            }
        }};
    }
    match what {
        Inspect::Services => emit!(
            inspect::services(&dir)?,
            format!(
                "{:<24} {:<12} {:>6} {:>10}  BACKENDS",
                "FRONTEND", "KIND", "ID", "AFFINITY"
            ),
            |r: &inspect::ServiceRow| {
                let mut line = format!(
                    "{:<24} {:<12} {:>6} {:>10}  {}",
                    r.frontend,
                    r.kind,
                    r.id,
                    r.affinity_timeout_s
                        .map_or_else(|| "-".into(), |t| format!("{t}s")),
                    if r.backends.is_empty() {
                        format!("(none: {})", r.when_empty)
                    } else {
                        r.backends.join(", ")
                    }
                );
                if let Some(local) = &r.local_backends {
                    line.push_str(&format!(
                        "\n{:<55}external traffic (Local): {}",
                        "",
                        if local.is_empty() {
                            "(none: drop)".to_owned()
                        } else {
                            local.join(", ")
                        }
                    ));
                }
                if !r.source_ranges.is_empty() {
                    line.push_str(&format!(
                        "\n{:<55}sources: {}",
                        "",
                        r.source_ranges.join(", ")
                    ));
                }
                line
            }
        ),
        Inspect::Backends => emit!(
            inspect::backends(&dir)?,
            format!("{:>6}  {:<24} LOCAL", "ID", "BACKEND"),
            |r: &inspect::BackendRow| format!(
                "{:>6}  {:<24} {}",
                r.id,
                r.backend,
                if r.local { "yes" } else { "-" }
            )
        ),
        Inspect::Conntrack => emit!(
            inspect::conntrack(&dir)?,
            format!(
                "{:<5} {:<22} {:<22} {:<22} {:<22} {:<5} {:<12} {:>8}",
                "PROTO", "CLIENT", "FRONTEND", "SOURCE-SEEN", "BACKEND", "PATH", "STATE", "EXPIRES"
            ),
            |r: &inspect::ConntrackRow| format!(
                "{:<5} {:<22} {:<22} {:<22} {:<22} {:<5} {:<12} {:>7}s",
                r.protocol,
                r.client,
                r.frontend,
                if r.snat {
                    format!("{} (snat)", r.source_seen)
                } else {
                    r.source_seen.clone()
                },
                r.backend,
                r.path,
                r.state,
                r.expires_in_s
            )
        ),
        Inspect::Affinity => emit!(
            inspect::affinity(&dir)?,
            format!(
                "{:<28} {:>11} {:>10} {:>8}",
                "CLIENT", "FRONTEND-ID", "BACKEND-ID", "IDLE"
            ),
            |r: &inspect::AffinityRow| format!(
                "{:<28} {:>11} {:>10} {:>7}s",
                r.client,
                r.frontend_id,
                r.backend_id,
                r.idle_ms / 1000
            )
        ),
    }
    Ok(())
}
