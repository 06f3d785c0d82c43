//! The demo behind the README's first command: a node namespace with a client
//! pod and three backend pods, Switchyard attached and programmed through its
//! own command line, and 30 connections to the ClusterIP, each printed with
//! the backend that answered. Everything is removed at the end.
use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use testbed::{
    fs::PrivateBpffs,
    lab::{ClientPlacement, Testbed},
    proc::sibling_binary,
};

const VIP: &str = "10.96.0.10:80";

fn main() -> Result<()> {
    let bed = Testbed::new(3).context("building the node and pods (needs root)")?;
    let bpffs = PrivateBpffs::new(&bed.prefix)?;
    let pin_root = bpffs.path().join("switchyard");
    let switchyard = sibling_binary("switchyard")?;
    let sy = |args: &[&str]| -> Result<String> {
        let out = Command::new(&switchyard)
            .arg("--pin-root")
            .arg(&pin_root)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "switchyard {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    println!("node namespace {} with pods:", bed.topo.node.name());
    println!("  client {}", bed.topo.client.ip);
    for b in &bed.topo.backends {
        println!("  {:<6} {}", b.name, b.ip);
    }
    let mut attach = vec![
        "attach",
        "--cgroup",
        bed.cgroup.path().to_str().context("path")?,
        "--netns",
        bed.topo.node.name(),
    ];
    for iface in bed.topo.host_ifs() {
        attach.extend(["--tc-iface", iface]);
    }
    attach.extend(["--max-conntrack", "65536"]);
    sy(&attach)?;

    let table = std::env::temp_dir().join(format!("{}-table.yaml", bed.prefix));
    std::fs::write(
        &table,
        format!(
            "frontends:\n  - name: default/web:http\n    address: 10.96.0.10\n    port: 80\n    backends: [{}, {}, {}]\n",
            bed.backend(1),
            bed.backend(2),
            bed.backend(3)
        ),
    )?;
    let applied = sy(&["apply-file", path(&table)?]);
    let _ = std::fs::remove_file(&table);
    applied?;
    println!(
        "\n$ switchyard inspect services\n{}",
        sy(&["inspect", "services"])?
    );

    let out = bed.client(
        ClientPlacement::InNodeCgroup,
        &["tcp", "--target", VIP, "--count", "30"],
    )?;
    println!("30 connections from the client pod to ClusterIP {VIP}:");
    for (i, who) in out.answers.iter().enumerate() {
        println!("  connection {:>2} -> {who}", i + 1);
    }
    let counts: BTreeMap<_, _> = out.counts();
    println!(
        "answers per backend: {counts:?}; failed connections: {}",
        out.error_count()
    );
    sy(&["cleanup"])?;
    if out.error_count() > 0 || counts.len() != 3 {
        bail!("the ClusterIP did not balance over all three backends");
    }
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}
