//! structured-merge-diff's operations on values, through their [`Ty`]:
//! the set of fields a value sets (`ToFieldSet`), what changed between two
//! values (`Compare`), merging an applied configuration into a live object
//! (`Merge`), and removing fields (`RemoveItems`).
use serde_json::{Map, Value};

use super::{
    fieldset::{Elem, Path, Set},
    types::{ListKind, Shape, Ty},
};

/// How the walker sees a value: its shape, when the value has that shape.
enum View<'a> {
    Leaf,
    Fields(&'a Map<String, Value>),
    List(&'a [Value], ListKind),
}

fn view<'a>(ty: &Ty, v: &'a Value) -> View<'a> {
    match (ty.shape(), v) {
        (Shape::Fields, Value::Object(m)) => View::Fields(m),
        (Shape::List(kind), Value::Array(a)) => View::List(a, kind),
        _ => View::Leaf,
    }
}

/// The path element of a list item: its key fields (defaults filling
/// missing ones) or its value.
pub fn item_elem(kind: &ListKind, item: &Value) -> Elem {
    match kind {
        ListKind::Set => Elem::Value(item.to_string()),
        ListKind::Map(keys, defaults) => {
            let mut pairs: Vec<(String, String)> =
                keys.iter()
                    .enumerate()
                    .filter_map(|(i, k)| {
                        let v =
                            item.get(k).filter(|v| !v.is_null()).cloned().or_else(|| {
                                defaults.get(i).cloned().flatten().map(Value::String)
                            })?;
                        Some((k.clone(), v.to_string()))
                    })
                    .collect();
            pairs.sort();
            Elem::Key(pairs)
        }
    }
}

/// `ToFieldSet`: every field `v` sets. List items and undeclared map
/// entries are members themselves; a declared field holding null or `{}`
/// is a member.
pub fn to_set(ty: &Ty, v: &Value) -> Set {
    let mut set = Set::default();
    walk_set(ty, v, &mut Vec::new(), &mut set);
    set
}

fn walk_set(ty: &Ty, v: &Value, path: &mut Path, set: &mut Set) {
    match view(ty, v) {
        View::Leaf => set.insert(path),
        View::Fields(m) => {
            for (k, child) in m {
                let Some(child_ty) = ty.field(k) else {
                    continue;
                };
                path.push(Elem::Field(k.clone()));
                walk_set(&child_ty, child, path, set);
                let empty = child.is_null() || child.as_object().is_some_and(Map::is_empty);
                if empty || !ty.declares(k) {
                    set.insert(path);
                }
                path.pop();
            }
        }
        View::List(items, kind) => {
            let item_ty = ty.item();
            for item in items {
                path.push(item_elem(&kind, item));
                walk_set(&item_ty, item, path, set);
                set.insert(path);
                path.pop();
            }
        }
    }
}

/// What changed from `old` to `new`, as upstream's `Compare`: fields only
/// in `old`, in both with different values, only in `new`.
#[derive(Debug, Default)]
pub struct Comparison {
    pub removed: Set,
    pub modified: Set,
    pub added: Set,
}

pub fn compare(ty: &Ty, old: &Value, new: &Value) -> Comparison {
    let mut c = Comparison::default();
    walk_compare(ty, old, new, &mut Vec::new(), &mut c);
    c
}

fn subtree(ty: &Ty, v: &Value, path: &mut Path, into: &mut Set, member: bool) {
    let mut s = Set::default();
    walk_set(ty, v, &mut path.clone(), &mut s);
    if member {
        s.insert(path);
    }
    *into = into.union(&s);
}

fn walk_compare(ty: &Ty, old: &Value, new: &Value, path: &mut Path, c: &mut Comparison) {
    // `null` (a field Go writes unset) compares as an empty list or map.
    let empty_like = |v: &Value, other: &Value| match (v, other) {
        (Value::Null, Value::Array(_)) => Value::Array(Vec::new()),
        (Value::Null, Value::Object(_)) => Value::Object(Map::new()),
        _ => v.clone(),
    };
    let (old, new) = (&empty_like(old, new), &empty_like(new, old));
    match (view(ty, old), view(ty, new)) {
        (View::Fields(a), View::Fields(b)) => {
            for (k, av) in a {
                let Some(child_ty) = ty.field(k) else {
                    continue;
                };
                path.push(Elem::Field(k.clone()));
                match (b.get(k), ty.zero(k)) {
                    (Some(bv), _) => walk_compare(&child_ty, av, bv, path, c),
                    // Back to Go's zero value: its parts, not it, are removed.
                    (None, Some(zero)) => walk_compare(&child_ty, av, &zero, path, c),
                    (None, None) => subtree(&child_ty, av, path, &mut c.removed, true),
                }
                path.pop();
            }
            for (k, bv) in b {
                if a.contains_key(k) {
                    continue;
                }
                let Some(child_ty) = ty.field(k) else {
                    continue;
                };
                path.push(Elem::Field(k.clone()));
                match ty.zero(k) {
                    Some(zero) => walk_compare(&child_ty, &zero, bv, path, c),
                    None => subtree(&child_ty, bv, path, &mut c.added, true),
                }
                path.pop();
            }
        }
        (View::List(a, kind), View::List(b, _)) => {
            let item_ty = ty.item();
            let keyed = |items: &[Value]| -> Vec<(Elem, Value)> {
                items
                    .iter()
                    .map(|i| (item_elem(&kind, i), i.clone()))
                    .collect()
            };
            let (a, b) = (keyed(a), keyed(b));
            for (e, av) in &a {
                path.push(e.clone());
                match b.iter().find(|(f, _)| f == e) {
                    Some((_, bv)) => walk_compare(&item_ty, av, bv, path, c),
                    None => subtree(&item_ty, av, path, &mut c.removed, true),
                }
                path.pop();
            }
            for (e, bv) in &b {
                if a.iter().any(|(f, _)| f == e) {
                    continue;
                }
                path.push(e.clone());
                subtree(&item_ty, bv, path, &mut c.added, true);
                path.pop();
            }
        }
        _ if old == new => {}
        _ => c.modified.insert(path),
    }
}

/// `Merge`: `config` laid over `live`. Scalars and atomic values are
/// replaced; fields and map entries merge one by one; list items merge by
/// their keys (new ones appended, in the configuration's order).
pub fn merge(ty: &Ty, live: &Value, config: &Value) -> Value {
    match (view(ty, live), view(ty, config)) {
        (View::Fields(a), View::Fields(b)) => {
            let mut out = a.clone();
            for (k, bv) in b {
                let merged = match (a.get(k), ty.field(k)) {
                    (Some(av), Some(child_ty)) => merge(&child_ty, av, bv),
                    _ => bv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (View::List(a, kind), View::List(b, _)) => {
            let item_ty = ty.item();
            let mut out: Vec<Value> = a.to_vec();
            for bv in b {
                let e = item_elem(&kind, bv);
                match out.iter().position(|av| item_elem(&kind, av) == e) {
                    Some(i) => out[i] = merge(&item_ty, &out[i], bv),
                    None => out.push(bv.clone()),
                }
            }
            Value::Array(out)
        }
        _ => config.clone(),
    }
}

/// `RemoveItems`: removes what `set` names from `v` — members whole, other
/// nodes by their children — except where `keep` owns something at or
/// below (other managers' fields stay, and so do the items holding them).
pub fn remove(ty: &Ty, v: &mut Value, set: &Set, keep: Option<&Set>) {
    match (ty.shape(), v) {
        (Shape::Fields, Value::Object(m)) => {
            for (elem, child_set) in set.children() {
                let Elem::Field(k) = elem else { continue };
                let Some(child_ty) = ty.field(k) else {
                    continue;
                };
                let child_keep = keep.and_then(|s| s.at(std::slice::from_ref(elem)));
                if child_set.is_member() && child_keep.is_none_or(Set::is_empty) {
                    m.remove(k);
                } else if let Some(child) = m.get_mut(k) {
                    remove(&child_ty, child, child_set, child_keep);
                }
            }
        }
        (Shape::List(kind), Value::Array(items)) => {
            let item_ty = ty.item();
            let mut kept = Vec::with_capacity(items.len());
            for mut item in items.drain(..) {
                let e = item_elem(&kind, &item);
                let item_keep = keep.and_then(|s| s.at(std::slice::from_ref(&e)));
                match set.at(std::slice::from_ref(&e)) {
                    Some(s) if s.is_member() && item_keep.is_none_or(Set::is_empty) => continue,
                    Some(s) => {
                        // A kept item keeps the fields that identify it.
                        let mut s = s.clone();
                        if let ListKind::Map(keys, _) = &kind {
                            let mut key_fields = Set::default();
                            for k in keys {
                                key_fields.insert(&[Elem::Field(k.clone())]);
                            }
                            s = s.difference(&key_fields);
                        }
                        remove(&item_ty, &mut item, &s, item_keep);
                    }
                    None => {}
                }
                kept.push(item);
            }
            *items = kept;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::ssa::fieldset::display;

    fn svc() -> Ty {
        Ty::of_kind("v1", "Service").unwrap()
    }

    fn printed(s: &Set) -> Vec<String> {
        s.paths().iter().map(|p| display(p)).collect()
    }

    #[test]
    fn field_sets_name_list_items_by_their_keys() {
        let v = json!({"metadata": {"labels": {"app": "web"}}, "spec": {
            "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"}, "clusterIPs": ["10.0.0.1"]}});
        assert_eq!(
            printed(&to_set(&svc(), &v)),
            [
                ".metadata.labels.app",
                ".spec.clusterIPs",
                ".spec.ports[port=80,protocol=\"TCP\"]",
                ".spec.ports[port=80,protocol=\"TCP\"].port",
                ".spec.ports[port=80,protocol=\"TCP\"].targetPort",
                ".spec.selector",
            ],
            "protocol's default completes the key; the selector is atomic"
        );
    }

    #[test]
    fn compare_merge_and_remove() {
        let old = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}, {"port": 81, "protocol": "TCP"}], "type": "ClusterIP"}});
        let new = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}, {"port": 82, "protocol": "TCP"}], "type": "ClusterIP"}});
        let c = compare(&svc(), &old, &new);
        assert_eq!(
            printed(&c.modified),
            [".spec.ports[port=80,protocol=\"TCP\"].targetPort"]
        );
        assert_eq!(
            printed(&c.removed),
            [
                ".spec.ports[port=81,protocol=\"TCP\"]",
                ".spec.ports[port=81,protocol=\"TCP\"].port",
                ".spec.ports[port=81,protocol=\"TCP\"].protocol"
            ]
        );
        assert_eq!(printed(&c.added).len(), 3);
        let merged = merge(
            &svc(),
            &old,
            &json!({"spec": {"ports": [{"port": 81, "targetPort": 9}], "selector": {"a": "b"}}}),
        );
        assert_eq!(
            merged["spec"],
            json!({"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}, {"port": 81, "protocol": "TCP", "targetPort": 9}], "type": "ClusterIP", "selector": {"a": "b"}})
        );
        let mut v = merged.clone();
        let gone = to_set(
            &svc(),
            &json!({"spec": {"ports": [{"port": 81}], "selector": {}}}),
        );
        remove(&svc(), &mut v, &gone, None);
        assert_eq!(
            v["spec"],
            json!({"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}], "type": "ClusterIP"})
        );
        // An item someone else owns a field of stays.
        let mut v = merged;
        let mut keep = Set::default();
        keep.insert(&[
            Elem::Field("spec".into()),
            Elem::Field("ports".into()),
            item_elem(
                &ListKind::Map(vec!["port".into(), "protocol".into()], vec![]),
                &json!({"port": 81, "protocol": "TCP"}),
            ),
            Elem::Field("targetPort".into()),
        ]);
        remove(&svc(), &mut v, &gone, Some(&keep));
        assert_eq!(v["spec"]["ports"][1]["targetPort"], 9);
    }
}
