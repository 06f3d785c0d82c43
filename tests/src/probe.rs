//! What a `netprobe` client saw, as JSON between the probe and the tests.
use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Outcome {
    /// Who answered each successful attempt, in order.
    pub answers: Vec<String>,
    /// Failed attempts by kind (`refused`, `timeout`, `unreachable`, …).
    pub errors: BTreeMap<String, usize>,
    /// Attempts where `getpeername`/`recvfrom` showed another address than
    /// the one the client asked for (the frontend).
    pub peer_mismatch: usize,
    /// Slowest failure, in milliseconds: a refusal must be immediate.
    pub slowest_error_ms: u64,
    /// Slowest successful connect/exchange, in milliseconds.
    pub slowest_ok_ms: u64,
    /// With `--whoami`: the client address each server saw, in order.
    #[serde(default)]
    pub seen_as: Vec<String>,
    /// What each failed attempt was doing when it failed: the phase, the
    /// addresses, how long it had run and when (Unix milliseconds), so a
    /// failure can be laid beside the logs of the components in the path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// One attempt of a `netprobe udp-stream`, printed as a JSON line.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct StreamEvent {
    /// Milliseconds since the stream started.
    pub t_ms: u64,
    /// Who answered, if anyone did.
    pub answer: Option<String>,
    /// The error kind otherwise (as in [`Outcome::errors`]).
    pub error: Option<String>,
}

/// The kind of a failed attempt: `refused`, `unreachable`, `eperm`,
/// `aborted`, `timeout`, or `other: …`.
pub fn error_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".to_owned(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => "unreachable".to_owned(),
        Some(libc::EPERM) => "eperm".to_owned(),
        Some(libc::ECONNABORTED) => "aborted".to_owned(),
        _ if matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) =>
        {
            "timeout".to_owned()
        }
        _ => format!("other: {e}"),
    }
}

impl Outcome {
    pub fn answer(&mut self, name: &str) {
        self.answers.push(name.to_owned());
    }

    pub fn note_latency(&mut self, d: Duration) {
        self.slowest_ok_ms = self.slowest_ok_ms.max(d.as_millis() as u64);
    }

    pub fn error(&mut self, e: &std::io::Error, took: Duration) {
        *self.errors.entry(error_kind(e)).or_default() += 1;
        self.slowest_error_ms = self.slowest_error_ms.max(took.as_millis() as u64);
    }

    /// Like [`Outcome::error`], and records `what` the attempt was doing.
    pub fn error_in(&mut self, e: &std::io::Error, took: Duration, what: &str) {
        self.error(e, took);
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.failures.push(format!(
            "{what}: {} after {} ms (at unix {unix_ms} ms)",
            error_kind(e),
            took.as_millis()
        ));
    }

    /// Answers per responder.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for a in &self.answers {
            *m.entry(a.clone()).or_default() += 1;
        }
        m
    }

    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }
}
