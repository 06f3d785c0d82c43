//! Sets of field paths, as structured-merge-diff keeps them per manager and
//! `managedFields` stores them (`FieldsV1`): a tree whose nodes name a
//! field (`f:spec`), a list item by its keys (`k:{"port":80,"protocol":"TCP"}`),
//! a set item by its value (`v:"a"`) or an index (`i:0`); a node may itself
//! be a member of the set (`.` in `FieldsV1`) as well as hold children.
use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    Field(String),
    /// A list item identified by its key fields: `(name, JSON value)`,
    /// sorted by name.
    Key(Vec<(String, String)>),
    /// A set item, by its JSON value.
    Value(String),
    Index(usize),
}

impl Elem {
    fn encode(&self) -> String {
        match self {
            Self::Field(f) => format!("f:{f}"),
            Self::Key(k) => {
                let fields: Vec<String> = k
                    .iter()
                    .map(|(n, v)| format!("{}:{v}", serde_json::to_string(n).expect("a string")))
                    .collect();
                format!("k:{{{}}}", fields.join(","))
            }
            Self::Value(v) => format!("v:{v}"),
            Self::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let (kind, rest) = s.split_once(':')?;
        Some(match kind {
            "f" => Self::Field(rest.to_owned()),
            "k" => {
                let obj: Map<String, Value> = serde_json::from_str(rest).ok()?;
                Self::Key(obj.into_iter().map(|(k, v)| (k, v.to_string())).collect())
            }
            "v" => Self::Value(serde_json::from_str::<Value>(rest).ok()?.to_string()),
            "i" => Self::Index(rest.parse().ok()?),
            _ => return None,
        })
    }

    /// structured-merge-diff's path syntax: `.spec`, `[port=80,protocol="TCP"]`,
    /// `[=value]`, `[0]`.
    fn display(&self) -> String {
        match self {
            Self::Field(f) => format!(".{f}"),
            Self::Key(k) => format!(
                "[{}]",
                k.iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Self::Value(v) => format!("[={v}]"),
            Self::Index(i) => format!("[{i}]"),
        }
    }
}

/// A path from the object's root.
pub type Path = Vec<Elem>;

pub fn display(path: &[Elem]) -> String {
    path.iter().map(Elem::display).collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    /// The node itself is in the set.
    member: bool,
    children: BTreeMap<Elem, Set>,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    pub fn insert(&mut self, path: &[Elem]) {
        match path.split_first() {
            None => self.member = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    /// The node at `path`, if the set reaches it.
    pub fn at(&self, path: &[Elem]) -> Option<&Set> {
        match path.split_first() {
            None => Some(self),
            Some((first, rest)) => self.children.get(first)?.at(rest),
        }
    }

    /// Whether `path` itself is in the set.
    pub fn has(&self, path: &[Elem]) -> bool {
        self.at(path).is_some_and(Set::is_member)
    }

    pub fn is_member(&self) -> bool {
        self.member
    }

    pub fn children(&self) -> impl Iterator<Item = (&Elem, &Set)> {
        self.children.iter()
    }

    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.member |= other.member;
        for (k, v) in &other.children {
            let merged = match out.children.get(k) {
                Some(mine) => mine.union(v),
                None => v.clone(),
            };
            out.children.insert(k.clone(), merged);
        }
        out
    }

    /// Members of `self` that are not members of `other`.
    pub fn difference(&self, other: &Set) -> Set {
        let mut out = Set {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            let d = match other.children.get(k) {
                Some(o) => v.difference(o),
                None => v.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    /// Members of both.
    pub fn intersection(&self, other: &Set) -> Set {
        let mut out = Set {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            if let Some(o) = other.children.get(k) {
                let i = v.intersection(o);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// `self` without the whole subtrees under `prefixes` (each a member of
    /// `prefixes` removes everything at and below it).
    pub fn without_subtrees(&self, prefixes: &Set) -> Set {
        if prefixes.member {
            return Set::default();
        }
        let mut out = Set {
            member: self.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            let kept = match prefixes.children.get(k) {
                Some(p) => v.without_subtrees(p),
                None => v.clone(),
            };
            if !kept.is_empty() {
                out.children.insert(k.clone(), kept);
            }
        }
        out
    }

    /// Only the subtrees under `prefixes`.
    pub fn only_subtrees(&self, prefixes: &Set) -> Set {
        if prefixes.member {
            return self.clone();
        }
        let mut out = Set::default();
        for (k, p) in &prefixes.children {
            if let Some(v) = self.children.get(k) {
                let kept = v.only_subtrees(p);
                if !kept.is_empty() {
                    out.children.insert(k.clone(), kept);
                }
            }
        }
        out
    }

    /// Every member path, depth first.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (k, v) in &self.children {
            prefix.push(k.clone());
            v.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The `FieldsV1` form.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, v) in &self.children {
            m.insert(k.encode(), v.to_fields_v1());
        }
        Value::Object(m)
    }

    /// Reads `FieldsV1`; `None` if it is not well formed.
    pub fn from_fields_v1(v: &Value) -> Option<Set> {
        Self::read(v, true)
    }

    fn read(v: &Value, root: bool) -> Option<Set> {
        let m = v.as_object()?;
        let mut out = Set {
            // A leaf (`{}`) is a member; so is a node with a `.` entry.
            member: !root && (m.is_empty() || m.contains_key(".")),
            children: BTreeMap::new(),
        };
        for (k, child) in m {
            if k == "." {
                continue;
            }
            out.children
                .insert(Elem::decode(k)?, Self::read(child, false)?);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn f(n: &str) -> Elem {
        Elem::Field(n.into())
    }

    #[test]
    fn fields_v1_round_trips_and_paths_print_as_upstream() {
        let v = json!({"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}, "f:replicas": {}},
                       "f:metadata": {"f:finalizers": {"v:\"a\"": {}}}});
        let set = Set::from_fields_v1(&v).unwrap();
        assert_eq!(set.to_fields_v1(), v);
        let printed: Vec<String> = set.paths().iter().map(|p| display(p)).collect();
        assert_eq!(
            printed,
            [
                ".metadata.finalizers[=\"a\"]",
                ".spec.ports[port=80,protocol=\"TCP\"]",
                ".spec.ports[port=80,protocol=\"TCP\"].port",
                ".spec.replicas"
            ]
        );
    }

    #[test]
    fn set_algebra() {
        let mut a = Set::default();
        a.insert(&[f("spec"), f("replicas")]);
        a.insert(&[f("spec"), f("paused")]);
        let mut b = Set::default();
        b.insert(&[f("spec"), f("replicas")]);
        b.insert(&[f("status"), f("ready")]);
        assert_eq!(a.intersection(&b).paths(), [vec![f("spec"), f("replicas")]]);
        assert_eq!(a.difference(&b).paths(), [vec![f("spec"), f("paused")]]);
        assert_eq!(a.union(&b).paths().len(), 3);
        let mut status = Set::default();
        status.insert(&[f("status")]);
        assert_eq!(
            b.without_subtrees(&status).paths(),
            [vec![f("spec"), f("replicas")]]
        );
        assert_eq!(
            b.only_subtrees(&status).paths(),
            [vec![f("status"), f("ready")]]
        );
    }
}
