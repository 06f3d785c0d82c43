//! Upstream's validation of the built-in kinds (kubernetes'
//! `pkg/apis/*/validation` and apimachinery's name, label and IP rules),
//! run on every create and update after defaulting. Every problem becomes a
//! field cause of one 422 `Invalid`, worded as upstream words it, and
//! nothing is written.
use std::{collections::BTreeSet, net::IpAddr};

use serde_json::{Map, Value};

use super::status::Cause;

mod config;
mod meta;
mod network;
mod pod;
mod rbac;
mod service;
mod workloads;

pub use meta::{metadata, name_problems};
pub use service::service;

/// Problems found so far, as upstream's `field.ErrorList`.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<Cause>);

/// Go's `%#v`-like rendering of a bad value in `Invalid value: …`.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        Value::Null => "null".into(),
        Value::Object(m) if m.values().all(Value::is_string) => format!(
            "map[string]string{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}:{}", quote(k), quote(v.as_str().unwrap_or_default())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(a) if a.iter().all(Value::is_string) => format!(
            "[]string{{{}}}",
            a.iter()
                .map(|v| quote(v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// Go's `%q`.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

impl Errors {
    pub fn push(&mut self, reason: &'static str, field: impl Into<String>, message: String) {
        self.0.push(Cause {
            reason,
            field: field.into(),
            message,
        });
    }

    pub fn required(&mut self, field: impl Into<String>, detail: &str) {
        let message = if detail.is_empty() {
            "Required value".to_owned()
        } else {
            format!("Required value: {detail}")
        };
        self.push("FieldValueRequired", field, message);
    }

    pub fn invalid(&mut self, field: impl Into<String>, value: &Value, detail: &str) {
        let mut message = format!("Invalid value: {}", show(value));
        if !detail.is_empty() {
            message = format!("{message}: {detail}");
        }
        self.push("FieldValueInvalid", field, message);
    }

    /// `Invalid` with the value already in Go's `%#v` form (a struct).
    pub fn invalid_raw(&mut self, field: impl Into<String>, go_value: &str, detail: &str) {
        self.push(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {go_value}: {detail}"),
        );
    }

    pub fn invalid_str(&mut self, field: impl Into<String>, value: &str, detail: &str) {
        self.invalid(field, &Value::String(value.to_owned()), detail);
    }

    pub fn not_supported(&mut self, field: impl Into<String>, value: &Value, supported: &[&str]) {
        let list = supported
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ");
        self.push(
            "FieldValueNotSupported",
            field,
            format!(
                "Unsupported value: {}: supported values: {list}",
                show(value)
            ),
        );
    }

    pub fn duplicate(&mut self, field: impl Into<String>, value: &Value) {
        self.duplicate_raw(field, &show(value));
    }

    /// `Duplicate` with the value already in Go's `%#v` form.
    pub fn duplicate_raw(&mut self, field: impl Into<String>, go_value: &str) {
        self.push(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {go_value}"),
        );
    }

    pub fn forbidden(&mut self, field: impl Into<String>, detail: &str) {
        self.push("FieldValueForbidden", field, format!("Forbidden: {detail}"));
    }

    pub fn not_found(&mut self, field: impl Into<String>, value: &Value) {
        self.push(
            "FieldValueNotFound",
            field,
            format!("Not found: {}", show(value)),
        );
    }

    pub fn too_long(&mut self, field: impl Into<String>, max: usize) {
        self.push(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be more than {max} bytes"),
        );
    }

    pub fn too_many(&mut self, field: impl Into<String>, actual: usize, max: usize) {
        self.push(
            "FieldValueTooMany",
            field,
            format!("Too many: {actual}: must have at most {max} items"),
        );
    }

    /// A field that may not change on update.
    pub fn immutable(&mut self, field: impl Into<String>, new: &Value) {
        self.invalid(field, new, "field is immutable");
    }

    /// Each message of a name rule as an `Invalid` of `value`.
    pub fn each(&mut self, field: &str, value: &str, messages: Vec<String>) {
        for m in messages {
            self.invalid_str(field, value, &m);
        }
    }
}

/// Joins a field path: `spec` + `ports` → `spec.ports`.
pub fn child(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Object fields and list items, as the validators read them.
pub fn obj<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key)?.as_object()
}

pub fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

// ---- apimachinery's rules (`pkg/util/validation`) ----

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let examples = examples
        .iter()
        .map(|e| format!("'{e}', "))
        .collect::<Vec<_>>()
        .join(" or ");
    format!("{msg} (e.g. {examples}regex used for validation is '{fmt}')")
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_label_chars(s: &str, first: impl Fn(u8) -> bool, mid: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && first(b[0])
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter().all(|c| mid(*c))
}

/// `IsDNS1123Label`.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(max_len_error(63));
    }
    let lower_alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !is_label_chars(s, lower_alnum, |c| lower_alnum(c) || c == b'-') {
        if dns1123_subdomain(s).is_empty() {
            out.push("must not contain dots".into());
        } else {
            out.push(regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    out
}

/// `IsDNS1123Subdomain`.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push(max_len_error(253));
    }
    let lower_alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !s.is_empty()
        && s.split('.')
            .all(|l| is_label_chars(l, lower_alnum, |c| lower_alnum(c) || c == b'-'));
    if !ok {
        out.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            &format!("{DNS1123_LABEL_FMT}(\\.{DNS1123_LABEL_FMT})*"),
            &["example.com"],
        ));
    }
    out
}

/// `IsDNS1035Label`.
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(max_len_error(63));
    }
    let lower_alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !is_label_chars(
        s,
        |c| c.is_ascii_lowercase(),
        |c| lower_alnum(c) || c == b'-',
    ) {
        out.push(regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    out
}

fn qualified_name_part(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

/// `IsQualifiedName`: label and annotation keys, finalizers.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let name_rule = || {
        regex_error(
            "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            QUALIFIED_NAME_FMT,
            &["MyName", "my.name", "123-abc"],
        )
    };
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                out.push("prefix part must be non-empty".into());
            } else {
                out.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            name
        }
        _ => {
            out.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                name_rule()
            ));
            return out;
        }
    };
    if name.is_empty() {
        out.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        out.push(format!("name part {}", max_len_error(63)));
    }
    if !qualified_name_part(name) {
        out.push(format!("name part {}", name_rule()));
    }
    out
}

/// `IsValidLabelValue`.
pub fn label_value(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(max_len_error(63));
    }
    if !s.is_empty() && !qualified_name_part(s) {
        out.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            &format!("({QUALIFIED_NAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    out
}

/// `IsValidPortName` (an IANA service name).
pub fn port_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 15 {
        out.push(max_len_error(15));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        out.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        out.push("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") {
        out.push("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        out.push("must not begin or end with a hyphen".into());
    }
    out
}

/// `IsValidPortNum`.
pub fn port_number(v: &Value) -> Option<String> {
    (!v.as_i64().is_some_and(|n| (1..=65_535).contains(&n)))
        .then(|| "must be between 1 and 65535, inclusive".to_owned())
}

/// An IP address in Go's `netip` form (no leading zeros in IPv4 octets).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let ip: IpAddr = s.parse().ok()?;
    // Rust accepts nothing Go refuses here except IPv4-mapped forms, which Go
    // also takes; leading zeros are refused by both.
    Some(ip)
}

/// `ValidateNonSpecialIP`: addresses an endpoint may not have.
pub fn non_special_ip(e: &mut Errors, field: &str, s: &str) {
    let Some(ip) = parse_ip(s) else {
        e.invalid_str(field, s, "must be a valid IP address");
        return;
    };
    if ip.is_unspecified() {
        e.invalid_str(field, s, &format!("may not be unspecified ({s})"));
    }
    if ip.is_loopback() {
        e.invalid_str(
            field,
            s,
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        );
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        e.invalid_str(
            field,
            s,
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        );
    }
    let link_local_multicast = match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => (v6.segments()[0] & 0xff0f) == 0xff02,
    };
    if link_local_multicast {
        e.invalid_str(
            field,
            s,
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        );
    }
}

/// Values seen twice in a list, by a key of each item.
pub fn duplicates<'a>(items: impl Iterator<Item = &'a str>) -> Vec<(usize, &'a str)> {
    let mut seen = BTreeSet::new();
    items
        .enumerate()
        .filter(|(_, v)| !seen.insert(*v))
        .collect()
}

/// `metav1validation.ValidateLabels`: keys and values of a label map.
pub fn labels(e: &mut Errors, field: &str, labels: Option<&Value>) {
    let Some(map) = labels.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in map {
        e.each(field, k, qualified_name(k));
        if let Some(v) = v.as_str() {
            e.each(field, v, label_value(v));
        }
    }
}

/// `metav1validation.ValidateLabelSelector`.
pub fn label_selector(e: &mut Errors, field: &str, sel: &Value) {
    labels(e, &child(field, "matchLabels"), sel.get("matchLabels"));
    for (i, req) in list(sel, "matchExpressions").iter().enumerate() {
        let at = index(&child(field, "matchExpressions"), i);
        let op = text(req, "operator");
        let values = list(req, "values");
        match op {
            "In" | "NotIn" if values.is_empty() => e.required(
                child(&at, "values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            "In" | "NotIn" => {}
            "Exists" | "DoesNotExist" if !values.is_empty() => e.forbidden(
                child(&at, "values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            "Exists" | "DoesNotExist" => {}
            other => e.invalid_str(
                child(&at, "operator"),
                other,
                "not a valid selector operator",
            ),
        }
        let key = text(req, "key");
        e.each(&child(&at, "key"), key, qualified_name(key));
    }
}

/// Whether a label selector (`matchLabels` + `matchExpressions`) selects
/// `labels`.
pub fn selector_matches(sel: &Value, labels: &Map<String, Value>) -> bool {
    let match_labels =
        obj(sel, "matchLabels").is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    match_labels
        && list(sel, "matchExpressions").iter().all(|req| {
            let key = text(req, "key");
            let values: Vec<&str> = list(req, "values")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let have = labels.get(key).and_then(Value::as_str);
            match text(req, "operator") {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// What is wrong with a new object of `kind` (already defaulted).
pub fn create(kind: &str, group: &str, obj: &Value) -> Vec<Cause> {
    let mut e = Errors::default();
    kind_rules(&mut e, kind, group, obj, None);
    e.0
}

/// What is wrong with an update of `old` to `new`: the new object's own
/// problems and changes upstream forbids.
pub fn update(kind: &str, group: &str, old: &Value, new: &Value) -> Vec<Cause> {
    let mut e = Errors::default();
    kind_rules(&mut e, kind, group, new, Some(old));
    e.0
}

fn kind_rules(e: &mut Errors, kind: &str, group: &str, obj: &Value, old: Option<&Value>) {
    meta::metadata(e, kind, group, obj, old);
    match kind {
        "Pod" => pod::pod(e, obj, old),
        "Service" => service::service(e, obj, old),
        "Endpoints" => network::endpoints(e, obj),
        "EndpointSlice" => network::endpoint_slice(e, obj, old),
        "ConfigMap" => config::config_map(e, obj, old),
        "Secret" => config::secret(e, obj, old),
        "Namespace" => config::namespace(e, obj),
        "Node" => config::node(e, obj),
        "ServiceAccount" | "Event" => {}
        "Lease" => config::lease(e, obj),
        "Deployment" | "ReplicaSet" | "DaemonSet" | "ReplicationController" => {
            workloads::workload(e, kind, obj, old);
        }
        "Job" => workloads::job(e, obj, old),
        "CronJob" => workloads::cron_job(e, obj),
        "Role" | "ClusterRole" => rbac::role(e, kind, obj),
        "RoleBinding" | "ClusterRoleBinding" => rbac::binding(e, kind, obj, old),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
