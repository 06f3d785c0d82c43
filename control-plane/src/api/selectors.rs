//! Label and field selectors, as the `labelSelector` and `fieldSelector`
//! query parameters spell them.
use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector`: every requirement must hold (comma = AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct ParseError(pub String);

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(k: &str) -> bool {
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    !name.is_empty()
        && name.len() <= 63
        && k.len() <= 253 + 1 + 63
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl LabelSelector {
    /// Selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(Self::requirement(part)?);
        }
        Ok(Self(reqs))
    }

    fn requirement(p: &str) -> Result<Requirement, ParseError> {
        let err = || ParseError(p.to_owned());
        let key_ok = |k: &str| {
            if valid_key(k) {
                Ok(k.to_owned())
            } else {
                Err(err())
            }
        };
        let val_ok = |v: &str| {
            if valid_value(v) {
                Ok(v.trim().to_owned())
            } else {
                Err(err())
            }
        };
        if let Some(k) = p.strip_prefix('!') {
            return Ok(Requirement::DoesNotExist(key_ok(k.trim())?));
        }
        for (op, set) in [(" notin ", false), (" in ", true)] {
            if let Some((k, rest)) = p.split_once(op) {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(err)?;
                let values = inner
                    .split(',')
                    .map(|v| val_ok(v.trim()))
                    .collect::<Result<Vec<_>, _>>()?;
                let k = key_ok(k.trim())?;
                return Ok(if set {
                    Requirement::In(k, values)
                } else {
                    Requirement::NotIn(k, values)
                });
            }
        }
        if let Some((k, v)) = p.split_once("!=") {
            return Ok(Requirement::NotEquals(key_ok(k.trim())?, val_ok(v.trim())?));
        }
        if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            return Ok(Requirement::Equals(key_ok(k.trim())?, val_ok(v.trim())?));
        }
        Ok(Requirement::Exists(key_ok(p)?))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0.is_empty() || self.matches(&labels_of(obj))
    }
}

pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A parsed `fieldSelector`: `field=value`, `field==value`, `field!=value`,
/// comma = AND, over the fields the object's kind supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// `supported` are the field paths the kind can be selected by.
    pub fn parse(s: &str, supported: &[&str]) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                let list = supported
                    .iter()
                    .map(|f| format!("\"{f}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(format!(
                    "\"{field}\" is not a known field selector: only {list}"
                ));
            }
            reqs.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(reqs))
    }

    /// The value `field` must equal, if the selector requires one.
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, equal, _)| f == field && *equal)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn equality_and_set_based_label_selectors() {
        let o = obj(json!({"app": "web", "tier": "fe"}));
        let yes = [
            "",
            "app=web",
            "app==web,tier=fe",
            "app!=db",
            "tier in (fe,be)",
            "env notin (prod)",
            "app",
            "!env",
        ];
        let no = [
            "app=db",
            "app!=web",
            "tier in (be)",
            "tier notin (fe)",
            "env",
            "!app",
            "app=web,env",
        ];
        for s in yes {
            assert!(
                LabelSelector::parse(s).unwrap().matches_object(&o),
                "{s} should match"
            );
        }
        for s in no {
            assert!(
                !LabelSelector::parse(s).unwrap().matches_object(&o),
                "{s} should not match"
            );
        }
    }

    #[test]
    fn kube_proxy_selector_parses() {
        let s = LabelSelector::parse(
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
        )
        .unwrap();
        assert!(s.matches_object(&obj(json!({"app": "web"}))));
        assert!(!s.matches_object(&obj(json!({"service.kubernetes.io/headless": ""}))));
    }

    #[test]
    fn malformed_label_selectors_are_errors() {
        for bad in ["app in fe", "a b", "app=(x)", "=web"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors_check_the_field_is_supported() {
        let f = ["metadata.name", "metadata.namespace", "spec.nodeName"];
        let o = obj(json!({}));
        assert!(
            FieldSelector::parse("metadata.name=web,spec.nodeName==n1", &f)
                .unwrap()
                .matches_object(&o)
        );
        assert!(
            !FieldSelector::parse("spec.nodeName!=n1", &f)
                .unwrap()
                .matches_object(&o)
        );
        let err = FieldSelector::parse("status.phase=Running", &f).unwrap_err();
        assert!(
            err.contains("\"status.phase\" is not a known field selector"),
            "{err}"
        );
    }
}
