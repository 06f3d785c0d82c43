//! API-client plumbing shared by the controllers, the scheduler and the
//! hollow nodes: connecting, shared watch caches ([`informer`]), Events
//! ([`events`]) and Lease-based leader election ([`leader`]).
//!
//! Everything here talks to the API server only through its public REST
//! API (kube-rs), so the components work unchanged against a real
//! Kubernetes API server too.
use std::path::Path;

use anyhow::{Context as _, Result};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

pub mod events;
pub mod informer;
pub mod leader;

/// A client from `--kubeconfig` when given, else kube-rs' inference
/// (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster ServiceAccount).
///
/// Errors name the kubeconfig that could not be read or used.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("no --kubeconfig and no inferable client configuration")?,
    };
    Client::try_from(config).context("building the API client")
}

/// Whether an API error is a 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether an API error is a 409 (conflict or already exists).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether a create was refused because its namespace is terminating
/// (upstream's controllers drop such work silently).
pub fn is_namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("being terminated"))
        || matches!(e, kube::Error::Api(s) if s.reason == "NamespaceTerminating")
}
