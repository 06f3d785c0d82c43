//! Which controllers run, with what settings (kube-controller-manager's
//! `--controllers` and per-controller flags), and running them side by side.
use std::{sync::Arc, time::Duration};

use anyhow::{Result, bail};
use tokio::task::JoinSet;
use tracing::{error, info};

use super::{
    Shared, daemonset, deployment, endpoints, endpointslice, gc, job, mirroring, namespace,
    nodeipam, nodelifecycle, replicaset, serviceaccount,
};

/// Every controller this manager has, by upstream's name.
pub const ALL: &[&str] = &[
    "endpoint",
    "endpointslice",
    "endpointslicemirroring",
    "replicaset",
    "replicationcontroller",
    "deployment",
    "daemonset",
    "job",
    "garbagecollector",
    "namespace",
    "nodelifecycle",
    "nodeipam",
    "serviceaccount",
];

/// Settings for every controller.
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpointslice: endpointslice::Settings,
    /// `--concurrent-replicaset-syncs` / `--concurrent-rc-syncs` (5).
    pub replicaset_workers: u16,
    /// `--concurrent-job-syncs` (5).
    pub job_workers: u16,
    /// `--concurrent-gc-syncs`: objects synced at once per resource (5).
    pub gc_workers: u16,
    /// `--concurrent-namespace-syncs` (10).
    pub namespace_workers: u16,
    pub mirroring: mirroring::Settings,
    pub nodelifecycle: nodelifecycle::Settings,
    /// `None` unless `--allocate-node-cidrs` (then nodeipam does nothing).
    pub nodeipam: Option<nodeipam::Settings>,
    /// `--root-ca-file`'s PEM, published as `kube-root-ca.crt`.
    pub root_ca: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            endpointslice: endpointslice::Settings::default(),
            replicaset_workers: 5,
            job_workers: 5,
            gc_workers: 5,
            namespace_workers: 10,
            mirroring: mirroring::Settings::default(),
            nodelifecycle: nodelifecycle::Settings::default(),
            nodeipam: None,
            root_ca: None,
        }
    }
}

/// The controllers `--controllers` selects, upstream's way: `*` turns on
/// every controller, `name` one, `-name` turns one off (the later entry
/// wins). An unknown name is an error naming it.
pub fn select(spec: &[String]) -> Result<Vec<&'static str>> {
    let mut on: Vec<&'static str> = Vec::new();
    for item in spec.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if item == "*" {
            for c in ALL {
                if !on.contains(c) {
                    on.push(c);
                }
            }
            continue;
        }
        let (off, name) = match item.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, item),
        };
        let Some(known) = ALL.iter().find(|c| **c == name) else {
            bail!(
                "--controllers: unknown controller {name:?}; known: {}",
                ALL.join(", ")
            );
        };
        if off {
            on.retain(|c| c != known);
        } else if !on.contains(known) {
            on.push(known);
        }
    }
    if on.is_empty() {
        bail!("--controllers selects no controller");
    }
    Ok(on)
}

/// Go's duration syntax, as upstream's flags take it: `15s`, `1m30s`,
/// `500ms`, `2h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Ok(Duration::from_secs_f64(n));
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| anyhow::anyhow!("duration {s:?} lacks a unit"))?;
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid duration {s:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => bail!("invalid unit {unit:?} in duration {s:?}"),
        };
        total += n * secs;
        rest = next;
    }
    Ok(Duration::from_secs_f64(total))
}

/// Runs the selected controllers until one of them fails (an error naming
/// it) or the process ends.
pub async fn run(shared: Arc<Shared>, names: &[&'static str], settings: Settings) -> Result<()> {
    let mut set = JoinSet::new();
    for &name in names {
        let shared = Arc::clone(&shared);
        let settings = settings.clone();
        info!(controller = name, "starting");
        set.spawn(async move {
            let r = match name {
                "endpoint" => endpoints::run(shared, settings.endpointslice.concurrent_syncs).await,
                "endpointslice" => endpointslice::run(shared, settings.endpointslice).await,
                "endpointslicemirroring" => mirroring::run(shared, settings.mirroring).await,
                "replicaset" => {
                    replicaset::run_replica_sets(shared, settings.replicaset_workers).await
                }
                "replicationcontroller" => {
                    replicaset::run_replication_controllers(shared, settings.replicaset_workers)
                        .await
                }
                "deployment" => deployment::run(shared, settings.replicaset_workers).await,
                "daemonset" => daemonset::run(shared, settings.replicaset_workers).await,
                "job" => job::run(shared, settings.job_workers).await,
                "garbagecollector" => gc::run(shared, settings.gc_workers).await,
                "namespace" => namespace::run(shared, settings.namespace_workers).await,
                "nodelifecycle" => nodelifecycle::run(shared, settings.nodelifecycle).await,
                "serviceaccount" => serviceaccount::run(shared, settings.root_ca).await,
                "nodeipam" => match settings.nodeipam {
                    Some(s) => nodeipam::run(shared, s).await,
                    None => {
                        info!("nodeipam: --allocate-node-cidrs is off; nothing to do");
                        Ok(())
                    }
                },
                other => Err(anyhow::anyhow!("no such controller {other}")),
            };
            (name, r)
        });
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok((name, Ok(()))) => info!(controller = name, "stopped"),
            Ok((name, Err(e))) => {
                error!(controller = name, error = %e, "controller failed");
                return Err(e.context(format!("controller {name}")));
            }
            Err(e) => bail!("a controller task panicked: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_flag() {
        let s = |v: &[&str]| select(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["*"]).unwrap().len(), ALL.len());
        assert_eq!(s(&["*", "-replicaset"]).unwrap().len(), ALL.len() - 1);
        assert_eq!(s(&["endpointslice"]).unwrap(), vec!["endpointslice"]);
        let e = s(&["endpointslices"]).unwrap_err().to_string();
        assert!(e.contains("unknown controller \"endpointslices\""), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3x").is_err());
    }
}
