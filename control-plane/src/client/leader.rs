//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` package does it, so that of several copies of a
//! component only one acts.
//!
//! - Acquire: every `retry_period` (with up to 20 % jitter), read the Lease;
//!   create it if missing; take it over when its holder has not renewed it
//!   within `leaseDurationSeconds` — measured on *our* clock from when we
//!   last saw the record change, never from the remote timestamps (clock
//!   skew does no harm). Writes are compare-and-swap on the
//!   resourceVersion, so two candidates never both win.
//! - Renew: every `retry_period`; a leader that has not renewed within
//!   `renew_deadline` has lost, and the component stops acting (upstream
//!   components exit).
//! - Release on shutdown: the holder is cleared and the duration set to
//!   one second, so a successor need not wait out the lease.
//!
//! Upstream defaults for kube-controller-manager and kube-scheduler: 15 s
//! lease, 10 s renew deadline, 2 s retry.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tracing::{info, warn};

/// Where and how long to hold the Lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's namespace (`kube-system` upstream).
    pub namespace: String,
    /// The Lease's name (`kube-controller-manager`, `kube-scheduler`).
    pub name: String,
    /// This candidate's identity (`<hostname>_<uuid>` upstream).
    pub identity: String,
    /// How long a holder's claim lasts without renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it gives up.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Upstream's durations (15 s / 10 s / 2 s) with a fresh identity.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Upstream's rule: lease duration > renew deadline > 1.2 × retry period.
    pub fn validate(&self) -> Result<()> {
        if self.lease_duration <= self.renew_deadline {
            bail!(
                "leaseDuration ({:?}) must be greater than renewDeadline ({:?})",
                self.lease_duration,
                self.renew_deadline
            );
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            bail!(
                "renewDeadline ({:?}) must be greater than 1.2 × retryPeriod ({:?})",
                self.renew_deadline,
                self.retry_period
            );
        }
        if self.identity.is_empty() {
            bail!("leader election identity must not be empty");
        }
        Ok(())
    }
}

/// `<hostname>_<uuid>`, upstream's form.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

/// One candidate's view of the Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The record last read, and when (our clock) it last changed.
    observed: Option<(LeaseSpec, Instant)>,
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease now.
    Leading,
    /// Someone else holds a valid Lease.
    Following(String),
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// One `tryAcquireOrRenew`.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt> {
        let now = MicroTime(Timestamp::now());
        let me = self.config.identity.clone();
        let seconds = self.config.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            let created = self.api.create(&PostParams::default(), &lease).await?;
            self.observed = Some((created.spec.unwrap_or_default(), Instant::now()));
            return Ok(Attempt::Leading);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != spec) {
            self.observed = Some((spec.clone(), Instant::now()));
        }
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let observed_at = self.observed.as_ref().map_or_else(Instant::now, |o| o.1);
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        if !holder.is_empty() && holder != me && observed_at.elapsed() < duration {
            return Ok(Attempt::Following(holder));
        }
        let mut next = spec.clone();
        if holder == me {
            next.acquire_time = spec.acquire_time.clone().or(Some(now.clone()));
        } else {
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(me);
        next.lease_duration_seconds = Some(seconds);
        next.renew_time = Some(now);
        lease.spec = Some(next);
        // resourceVersion kept: a concurrent writer makes this a 409.
        let updated = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        self.observed = Some((updated.spec.unwrap_or_default(), Instant::now()));
        Ok(Attempt::Leading)
    }

    /// Clears the holder (only if it is us), so that another candidate
    /// takes over at once.
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        lease.spec = Some(spec);
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }

    /// Blocks until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        let mut last_holder = String::new();
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    return;
                }
                Ok(Attempt::Following(holder)) => {
                    if holder != last_holder {
                        info!(lease = %self.config.name, %holder, "waiting for the current leader");
                        last_holder = holder;
                    }
                }
                Err(e) => {
                    warn!(lease = %self.config.name, error = %e, "acquiring the lease failed")
                }
            }
            tokio::time::sleep(jittered(self.config.retry_period)).await;
        }
    }

    /// Renews every retry period; returns when a renewal has not succeeded
    /// within the renew deadline (leadership lost).
    pub async fn keep_renewing(&mut self) -> anyhow::Error {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew())
                .await
            {
                Ok(Ok(Attempt::Leading)) => last_ok = Instant::now(),
                Ok(Ok(Attempt::Following(holder))) => {
                    return anyhow::anyhow!("lease {} taken over by {holder}", self.config.name);
                }
                Ok(Err(e)) => {
                    warn!(lease = %self.config.name, error = %e, "renewing the lease failed")
                }
                Err(_) => warn!(lease = %self.config.name, "renewing the lease timed out"),
            }
            if last_ok.elapsed() >= self.config.renew_deadline {
                return anyhow::anyhow!(
                    "lease {} not renewed within the renew deadline ({:?})",
                    self.config.name,
                    self.config.renew_deadline
                );
            }
        }
    }
}

/// `d` plus up to 20 % (client-go's JitterFactor 1.2).
fn jittered(d: Duration) -> Duration {
    let frac = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    d.mul_f64(1.0 + 0.2 * frac)
}

/// Runs `work` while this process leads: waits to acquire the Lease, then
/// runs `work` until it ends, leadership is lost (an error), or `shutdown`
/// resolves (the Lease is then released).
pub async fn run_leading<W, S>(
    client: Client,
    config: LeaseConfig,
    work: W,
    shutdown: S,
) -> Result<()>
where
    W: Future<Output = Result<()>>,
    S: Future<Output = ()>,
{
    config.validate()?;
    let mut elector = Elector::new(client, config);
    tokio::pin!(shutdown);
    tokio::select! {
        () = elector.acquire() => {}
        () = &mut shutdown => return Ok(()),
    }
    tokio::pin!(work);
    enum End {
        Work(Result<()>),
        Lost(anyhow::Error),
        Shutdown,
    }
    let end = tokio::select! {
        r = &mut work => End::Work(r),
        e = elector.keep_renewing() => End::Lost(e),
        () = &mut shutdown => End::Shutdown,
    };
    match end {
        End::Work(r) => r,
        End::Lost(e) => Err(e.context("leaderelection lost")),
        End::Shutdown => {
            if let Err(e) = elector.release().await {
                warn!(error = %e, "releasing the lease failed");
            }
            Ok(())
        }
    }
}
