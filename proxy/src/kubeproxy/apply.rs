//! The I/O seam of the kube-proxy modes: runs `iptables-restore`,
//! `iptables` and `nft`, inside the node's network namespace when one is
//! named (`ip netns exec`), and remembers what it wrote.
use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{RuleConfig, ServicePort, iptables, nftables};

/// Which iptables binaries to run: `iptables-restore` and `iptables` as
/// installed (`auto`), or the legacy or nf_tables variant by name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IptablesVariant {
    /// `iptables`, whatever the alternatives system points it at.
    #[default]
    Auto,
    /// `iptables-legacy` (the x_tables kernel interface).
    Legacy,
    /// `iptables-nft` (iptables rules stored as nf_tables objects).
    Nft,
}

impl std::str::FromStr for IptablesVariant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "legacy" => Ok(Self::Legacy),
            "nft" => Ok(Self::Nft),
            o => Err(format!("`{o}` (expected auto, legacy or nft)")),
        }
    }
}

impl IptablesVariant {
    fn binary(self, tool: &str) -> String {
        match self {
            Self::Auto => tool.to_owned(),
            Self::Legacy => tool.replacen("iptables", "iptables-legacy", 1),
            Self::Nft => tool.replacen("iptables", "iptables-nft", 1),
        }
    }

    /// Whether this variant's `iptables-restore` is iptables-nft (for
    /// `Auto`, what `iptables-restore --version` says: `(nf_tables)` or
    /// `(legacy)`), whose large restores go faster with a listing first
    /// ([`iptables::listing_first`]).
    ///
    /// # Errors
    /// When `iptables-restore --version` cannot be run.
    pub fn is_nft(self, netns: Option<&str>) -> Result<bool> {
        match self {
            Self::Legacy => Ok(false),
            Self::Nft => Ok(true),
            Self::Auto => {
                let version = run(netns, "iptables-restore", &["--version"], None)?;
                Ok(version.contains("nf_tables"))
            }
        }
    }
}

/// Runs `program args…` (in `netns` if set) with `stdin`; its stdout, or
/// an error holding its stderr.
fn run(netns: Option<&str>, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{program}`"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to `{program}`"))?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names the input line an `iptables-restore` error points at, with the
/// lines around it (kube-proxy logs the same).
fn with_failing_line(err: anyhow::Error, payload: &str) -> anyhow::Error {
    let msg = format!("{err:#}");
    // iptables-legacy-restore says "line 12", iptables-nft-restore "line: 12".
    let line = msg
        .split("line")
        .skip(1)
        .map(|s| s.trim_start_matches([':', ' ']))
        .find_map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<usize>()
                .ok()
        });
    match line {
        Some(n) if n > 0 => {
            let lines: Vec<&str> = payload.lines().collect();
            let from = n.saturating_sub(2);
            let around: Vec<String> = (from..(n + 1).min(lines.len()))
                .map(|i| format!("{:>6}: {}", i + 1, lines[i]))
                .collect();
            err.context(format!("around input line {n}:\n{}", around.join("\n")))
        }
        _ => err,
    }
}

/// Outcome of one sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rules (and, for nftables, map elements) in kube-proxy's chains
    /// once the sync is applied.
    pub objects: usize,
    /// Whether it was a partial sync (unchanged Services' chains left as
    /// they were).
    pub partial: bool,
}

/// kube-proxy's iptables mode, applied.
pub struct IptablesRules {
    netns: Option<String>,
    variant: IptablesVariant,
    /// What earlier syncs left in the kernel.
    previous: iptables::Previous,
    /// Jump rules verified since start.
    jumps_ensured: bool,
    /// Full syncs go with a listing first (iptables-nft).
    lists_first: bool,
}

impl IptablesRules {
    /// For the namespace `netns` (`None`: the daemon's own); reads which
    /// service chains an earlier run left.
    pub fn new(netns: Option<String>, variant: IptablesVariant) -> Result<Self> {
        let save = run(
            netns.as_deref(),
            &variant.binary("iptables-save"),
            &["-t", "nat"],
            None,
        )?;
        Ok(Self {
            previous: iptables::Previous::chains_in_kernel(iptables::service_chains_in(&save)),
            lists_first: variant.is_nft(netns.as_deref())?,
            netns,
            variant,
            jumps_ensured: false,
        })
    }

    /// Whether full syncs are sent with a `-S` line first in `*nat`
    /// ([`iptables::listing_first`]): on iptables-nft, where kube-proxy's
    /// payload as it is takes minutes from 2,000 Services up. The rules
    /// are the same; partial syncs, which name few chains, go as they are.
    pub fn lists_first(&self) -> bool {
        self.lists_first
    }

    fn iptables(&self, args: &[&str]) -> Result<String> {
        run(
            self.netns.as_deref(),
            &self.variant.binary("iptables"),
            args,
            None,
        )
    }

    /// Creates the top-level chains and the jumps into them when missing
    /// (`-C`, else `-I … 1`), as kube-proxy does on a full sync.
    fn ensure_jumps(&self) -> Result<()> {
        for j in iptables::jumps() {
            if self
                .iptables(&["-w", "5", "-t", j.table, "-L", j.target, "-n"])
                .is_err()
            {
                self.iptables(&["-w", "5", "-t", j.table, "-N", j.target])?;
            }
            let args: Vec<&str> = j.args.iter().map(String::as_str).collect();
            let mut check = vec!["-w", "5", "-t", j.table, "-C", j.chain];
            check.extend(&args);
            if self.iptables(&check).is_err() {
                let mut insert = vec!["-w", "5", "-t", j.table, "-I", j.chain, "1"];
                insert.extend(&args);
                self.iptables(&insert)?;
            }
        }
        Ok(())
    }

    /// One sync: jumps ensured (`full`, or never yet), then one
    /// `iptables-restore --noflush --counters` of both tables — a full
    /// sync when `full` is asked for, at the first sync and after a
    /// failed one, else a partial one (kube-proxy's `needFullSync`).
    pub fn sync(&mut self, ports: &[ServicePort], cfg: &RuleConfig, full: bool) -> Result<Applied> {
        if full || !self.jumps_ensured {
            self.ensure_jumps()?;
            self.jumps_ensured = true;
        }
        if full {
            self.previous = std::mem::take(&mut self.previous).for_full_sync();
        }
        let payload = iptables::render(ports, cfg, &self.previous);
        let listed;
        let text = if self.lists_first && !payload.partial {
            listed = iptables::listing_first(&payload.text);
            &listed
        } else {
            &payload.text
        };
        if let Err(e) = run(
            self.netns.as_deref(),
            &self.variant.binary("iptables-restore"),
            &["-w", "5", "--noflush", "--counters"],
            Some(text),
        ) {
            // A failed restore changed nothing; what it was meant to
            // change is rewritten by the full sync that follows.
            self.previous = std::mem::take(&mut self.previous).for_full_sync();
            return Err(with_failing_line(e, text));
        }
        self.previous = payload.next;
        Ok(Applied {
            objects: payload.rules,
            partial: payload.partial,
        })
    }
}

/// kube-proxy's nftables mode, applied.
pub struct NftablesRules {
    netns: Option<String>,
    previous: nftables::Previous,
}

impl NftablesRules {
    /// For the namespace `netns` (`None`: the daemon's own).
    pub fn new(netns: Option<String>) -> Self {
        Self {
            netns,
            previous: nftables::Previous::default(),
        }
    }

    /// One sync: one atomic `nft -f -` transaction — a full sync when
    /// `full` is asked for, at the first sync and after a failed one (which
    /// also rebuilds the table from scratch), else a partial one.
    pub fn sync(&mut self, ports: &[ServicePort], cfg: &RuleConfig, full: bool) -> Result<Applied> {
        if full {
            self.previous = std::mem::take(&mut self.previous).for_full_sync();
        }
        let script = nftables::render(ports, cfg, &self.previous);
        if let Err(e) = run(
            self.netns.as_deref(),
            "nft",
            &["-f", "-"],
            Some(&script.text),
        ) {
            self.previous = nftables::Previous::default();
            return Err(with_failing_line(e, &script.text));
        }
        self.previous = script.next;
        Ok(Applied {
            objects: script.objects,
            partial: script.partial,
        })
    }
}

/// Removes kube-proxy's iptables chains and jumps, or its nftables table,
/// from `netns` (`switchyard cleanup --proxy-mode …`). Missing pieces are
/// not errors; a chain that cannot be deleted (still referenced from
/// outside kube-proxy's chains) is, and then none is removed.
pub fn cleanup(
    netns: Option<&str>,
    mode: super::ProxyMode,
    variant: IptablesVariant,
) -> Result<()> {
    match mode {
        super::ProxyMode::Ebpf => Ok(()),
        super::ProxyMode::Nftables => {
            let _ = run(
                netns,
                "nft",
                &["delete", "table", "ip", nftables::TABLE],
                None,
            );
            Ok(())
        }
        super::ProxyMode::Iptables => {
            let ipt = variant.binary("iptables");
            for j in iptables::jumps() {
                let mut del = vec!["-w", "5", "-t", j.table, "-D", j.chain];
                del.extend(j.args.iter().map(String::as_str));
                let _ = run(netns, &ipt, &del, None);
            }
            let save = run(
                netns,
                &variant.binary("iptables-save"),
                &["-t", "nat"],
                None,
            )?;
            let mut nat: Vec<String> = iptables::service_chains_in(&save).into_iter().collect();
            nat.extend(iptables::NAT_CHAINS.map(str::to_owned));
            let mut filter: Vec<String> = iptables::FILTER_CHAINS.map(str::to_owned).to_vec();
            filter.push(iptables::FIREWALL_CHAIN.to_owned());
            // One transaction (tens of thousands of chains at 10,000
            // Services: one `iptables` run per chain took minutes).
            let mut payload = iptables::cleanup_payload(&[("nat", &nat), ("filter", &filter)]);
            if variant.is_nft(netns)? {
                payload = iptables::listing_first(&payload);
            }
            run(
                netns,
                &variant.binary("iptables-restore"),
                &["-w", "5", "--noflush"],
                Some(&payload),
            )
            .map_err(|e| with_failing_line(e, &payload))
            .context("removing kube-proxy's chains")?;
            Ok(())
        }
    }
}
