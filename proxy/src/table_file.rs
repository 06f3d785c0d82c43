//! The desired-table file read by `switchyard apply-file`: a stand-in source
//! for the Kubernetes watch, with the same validation promise — every bad
//! entry is reported by index, name and field, and nothing of a file with
//! any error is applied.
//!
//! ```yaml
//! node:                             # optional
//!   address: 192.168.0.11           # source NAT to other nodes' backends, and hairpin
//!   localEndpoints: [10.244.1.2]    # endpoints on this node: reached without source NAT
//! frontends:
//!   - name: default/web:http        # optional, for logs and `inspect`
//!     address: 10.96.0.10
//!     port: 80
//!     protocol: TCP                 # TCP (default) or UDP
//!     kind: ClusterIP               # ClusterIP (default), NodePort, ExternalIP, LoadBalancer
//!     sessionAffinity: ClientIP     # None (default) or ClientIP
//!     affinityTimeoutSeconds: 10800 # optional, 1..=86400
//!     backends: [10.244.1.2:8080, 10.244.1.3:8080]
//!     localBackends: [10.244.1.2:8080]  # external kinds: externalTrafficPolicy Local
//!     sourceRanges: [192.0.2.0/24]  # LoadBalancer: loadBalancerSourceRanges
//!     dropWhenEmpty: false          # no backends: drop (true) or reject (false, default)
//! ```
use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::Path};

use serde::Deserialize;

use crate::model::{
    BackendAddr, DEFAULT_AFFINITY_TIMEOUT_S, DesiredTable, FrontendKey, FrontendKind, FrontendSpec,
    Ipv4Cidr, MAX_AFFINITY_TIMEOUT_S, NodeDataplane, Protocol,
};

/// Most backends one frontend can have (the slot count is a `u16`).
pub const MAX_BACKENDS_PER_FRONTEND: usize = crate::model::MAX_SLOTS_PER_FRONTEND;

/// Why a table file was not applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read `{path}`")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape.
    #[error("`{path}` is not a valid table file: {source}")]
    Syntax {
        /// The file.
        path: String,
        /// What the YAML parser said, with the line.
        #[source]
        source: serde_yaml::Error,
    },
    /// Entries have invalid fields; nothing was applied.
    #[error("`{path}` has {} invalid entr{}, nothing was applied:\n{}", .problems.len(),
        if .problems.len() == 1 { "y" } else { "ies" }, Problems(.problems))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// Index of [`Problem::index`] for a problem in the top-level `node` section.
pub const NODE_SECTION: usize = usize::MAX;

/// One invalid field of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Index of the entry under `frontends` ([`NODE_SECTION`] for `node`).
    pub index: usize,
    /// The entry's `name`, if it has one.
    pub name: Option<String>,
    /// Field path inside the entry, e.g. `backends[2]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == NODE_SECTION {
            return write!(f, "node.{}: {}", self.field, self.message);
        }
        write!(f, "frontends[{}]", self.index)?;
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        write!(f, ".{}: {}", self.field, self.message)
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    node: Option<NodeEntry>,
    #[serde(default)]
    frontends: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NodeEntry {
    address: Option<serde_yaml::Value>,
    #[serde(default)]
    local_endpoints: Vec<serde_yaml::Value>,
}

/// An entry as written: every field a string or number to validate here,
/// so a bad value is reported with its entry instead of failing the parse.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    name: Option<String>,
    address: Option<serde_yaml::Value>,
    port: Option<serde_yaml::Value>,
    protocol: Option<String>,
    kind: Option<String>,
    session_affinity: Option<String>,
    affinity_timeout_seconds: Option<serde_yaml::Value>,
    #[serde(default)]
    backends: Vec<serde_yaml::Value>,
    local_backends: Option<Vec<serde_yaml::Value>>,
    #[serde(default)]
    source_ranges: Vec<serde_yaml::Value>,
    #[serde(default)]
    drop_when_empty: bool,
}

/// Reads and validates a table file.
pub fn load(path: &Path) -> Result<DesiredTable, Error> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: display.clone(),
        source,
    })?;
    parse(&text).map_err(|e| e.with_path(&display))
}

/// Parses and validates table-file text.
pub fn parse(text: &str) -> Result<DesiredTable, Error> {
    let file: File = serde_yaml::from_str(text).map_err(|source| Error::Syntax {
        path: String::new(),
        source,
    })?;
    let mut problems = Vec::new();
    let mut table = DesiredTable::default();
    if let Some(node) = file.node {
        let mut check = Checker {
            index: NODE_SECTION,
            name: None,
            problems: &mut problems,
        };
        table.node = check.node(node);
    }
    let mut seen: BTreeMap<FrontendKey, usize> = BTreeMap::new();
    for (index, entry) in file.frontends.into_iter().enumerate() {
        let mut check = Checker {
            index,
            name: entry.name.clone(),
            problems: &mut problems,
        };
        let Some((key, spec)) = check.entry(entry) else {
            continue;
        };
        if let Some(first) = seen.insert(key, index) {
            check.problem(
                "address",
                format!("duplicate frontend {key}, first defined by frontends[{first}]"),
            );
            continue;
        }
        table.frontends.insert(key, spec);
    }
    if problems.is_empty() {
        Ok(table)
    } else {
        Err(Error::Invalid {
            path: String::new(),
            problems,
        })
    }
}

impl Error {
    fn with_path(self, p: &str) -> Self {
        match self {
            Self::Syntax { source, .. } => Self::Syntax {
                path: p.to_owned(),
                source,
            },
            Self::Invalid { problems, .. } => Self::Invalid {
                path: p.to_owned(),
                problems,
            },
            e @ Self::Read { .. } => e,
        }
    }
}

struct Checker<'a> {
    index: usize,
    name: Option<String>,
    problems: &'a mut Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            index: self.index,
            name: self.name.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn node(&mut self, n: NodeEntry) -> NodeDataplane {
        let address = n
            .address
            .as_ref()
            .and_then(|a| self.address_at("address", a));
        let local_endpoints = n
            .local_endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, a)| self.address_at(&format!("localEndpoints[{i}]"), a))
            .collect();
        NodeDataplane {
            address,
            local_endpoints,
        }
    }

    fn entry(&mut self, e: Entry) -> Option<(FrontendKey, FrontendSpec)> {
        let before = self.problems.len();
        let addr = self.address(e.address.as_ref());
        let port = self.port("port", e.port.as_ref());
        let proto = self.protocol(e.protocol.as_deref());
        let kind = self.kind(e.kind.as_deref());
        let affinity = self.affinity(
            e.session_affinity.as_deref(),
            e.affinity_timeout_seconds.as_ref(),
        );
        let backends = self.backends("backends", &e.backends, proto);
        let local_backends = e
            .local_backends
            .as_ref()
            .map(|l| self.backends("localBackends", l, proto));
        if local_backends.is_some() && kind.is_some_and(|k| !k.is_external()) {
            self.problem(
                "localBackends",
                "only external kinds (NodePort, ExternalIP, LoadBalancer) have an external traffic policy",
            );
        }
        let mut source_ranges = Vec::new();
        for (i, r) in e.source_ranges.iter().enumerate() {
            match scalar(r).parse::<Ipv4Cidr>() {
                Ok(c) => source_ranges.push(c),
                Err(err) => self.problem(format!("sourceRanges[{i}]"), err.to_string()),
            }
        }
        if !source_ranges.is_empty() && kind != Some(FrontendKind::LoadBalancer) {
            self.problem(
                "sourceRanges",
                "only LoadBalancer frontends have source ranges",
            );
        }
        if self.problems.len() != before {
            return None;
        }
        let key = FrontendKey {
            addr: addr?,
            port: port?,
            proto: proto?,
        };
        let name = e.name.unwrap_or_else(|| key.to_string());
        Some((
            key,
            FrontendSpec {
                name,
                kind: kind?,
                backends,
                local_backends,
                affinity_timeout_s: affinity?,
                drop_when_empty: e.drop_when_empty,
                source_ranges,
            },
        ))
    }

    fn backends(
        &mut self,
        field: &str,
        list: &[serde_yaml::Value],
        proto: Option<Protocol>,
    ) -> Vec<BackendAddr> {
        let mut backends = Vec::with_capacity(list.len());
        for (i, b) in list.iter().enumerate() {
            if let (Some(b), Some(proto)) = (self.backend(field, i, b), proto) {
                let b = BackendAddr {
                    addr: b.0,
                    port: b.1,
                    proto,
                };
                // Duplicate endpoints are merged, as kube-proxy merges them.
                if !backends.contains(&b) {
                    backends.push(b);
                }
            }
        }
        if backends.len() > MAX_BACKENDS_PER_FRONTEND {
            self.problem(
                field,
                format!(
                    "{} backends, at most {MAX_BACKENDS_PER_FRONTEND} are supported",
                    backends.len()
                ),
            );
        }
        backends
    }

    fn kind(&mut self, v: Option<&str>) -> Option<FrontendKind> {
        match v.unwrap_or("ClusterIP") {
            "ClusterIP" => Some(FrontendKind::ClusterIp),
            "NodePort" => Some(FrontendKind::NodePort),
            "ExternalIP" => Some(FrontendKind::ExternalIp),
            "LoadBalancer" => Some(FrontendKind::LoadBalancer),
            other => {
                self.problem(
                    "kind",
                    format!(
                        "`{other}` is not one of ClusterIP, NodePort, ExternalIP, LoadBalancer"
                    ),
                );
                None
            }
        }
    }

    fn address(&mut self, v: Option<&serde_yaml::Value>) -> Option<Ipv4Addr> {
        let Some(v) = v else {
            self.problem("address", "missing");
            return None;
        };
        self.address_at("address", v)
    }

    fn address_at(&mut self, field: &str, v: &serde_yaml::Value) -> Option<Ipv4Addr> {
        let text = scalar(v);
        match text.parse::<Ipv4Addr>() {
            Ok(a) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
                self.problem(field, format!("`{text}` cannot be a Service address"));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(field, format!("`{text}` is not an IPv4 address"));
                None
            }
        }
    }

    fn port(&mut self, field: &str, v: Option<&serde_yaml::Value>) -> Option<u16> {
        let Some(v) = v else {
            self.problem(field, "missing");
            return None;
        };
        let text = scalar(v);
        match text.parse::<u16>() {
            Ok(0) => {
                self.problem(field, "port 0 is not a valid port (1-65535)");
                None
            }
            Ok(p) => Some(p),
            Err(_) => {
                self.problem(field, format!("`{text}` is not a port number (1-65535)"));
                None
            }
        }
    }

    fn protocol(&mut self, v: Option<&str>) -> Option<Protocol> {
        match v.map_or(Ok(Protocol::Tcp), str::parse) {
            Ok(Protocol::Sctp) => {
                self.problem("protocol", "SCTP is not supported by this dataplane yet");
                None
            }
            Ok(p) => Some(p),
            Err(e) => {
                self.problem("protocol", e.to_string());
                None
            }
        }
    }

    fn affinity(
        &mut self,
        mode: Option<&str>,
        timeout: Option<&serde_yaml::Value>,
    ) -> Option<Option<u32>> {
        let on = match mode.unwrap_or("None") {
            "None" => false,
            "ClientIP" => true,
            other => {
                self.problem(
                    "sessionAffinity",
                    format!("`{other}` is not one of None, ClientIP"),
                );
                return None;
            }
        };
        let Some(t) = timeout else {
            return Some(on.then_some(DEFAULT_AFFINITY_TIMEOUT_S));
        };
        let text = scalar(t);
        match text.parse::<u32>() {
            Ok(s) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&s) => {
                if !on {
                    self.problem(
                        "affinityTimeoutSeconds",
                        "set, but sessionAffinity is not ClientIP",
                    );
                    return None;
                }
                Some(Some(s))
            }
            _ => {
                self.problem(
                    "affinityTimeoutSeconds",
                    format!("`{text}` is not within 1..={MAX_AFFINITY_TIMEOUT_S}"),
                );
                None
            }
        }
    }

    fn backend(&mut self, list: &str, i: usize, v: &serde_yaml::Value) -> Option<(Ipv4Addr, u16)> {
        let field = format!("{list}[{i}]");
        let text = scalar(v);
        let Some((addr, port)) = text.rsplit_once(':') else {
            self.problem(field, format!("`{text}` is not ADDRESS:PORT"));
            return None;
        };
        let addr = match addr.parse::<Ipv4Addr>() {
            Ok(a) if !(a.is_unspecified() || a.is_broadcast() || a.is_multicast()) => Some(a),
            _ => {
                self.problem(
                    field.clone(),
                    format!("`{addr}` is not a valid backend IPv4 address"),
                );
                None
            }
        };
        let port = self.port(&field, Some(&serde_yaml::Value::String(port.to_owned())));
        Some((addr?, port?))
    }
}

fn scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

#[cfg(test)]
mod tests;
