//! The shape server-side apply sees a value through: which parts are
//! owned whole (scalars, atomic lists, maps and structs) and how list items
//! are identified — kube-openapi's schema conversion rules, applied to the
//! built-in kinds' Go markers (`src/api/proto/schema.txt`) or to a custom
//! resource's OpenAPI schema.
use serde_json::Value;

use crate::api::proto::schema::{self, Field, ListType, Type};

/// How a list's items are told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// By their value (`+listType=set`).
    Set,
    /// By these key fields (`+listType=map`, or a merge key).
    Map(Vec<String>, Vec<Option<String>>),
}

/// A value's shape.
#[derive(Debug, Clone)]
pub enum Ty {
    /// Owned whole: a scalar, or an atomic list, map or struct.
    Leaf,
    /// A struct of a built-in kind: a protobuf message.
    Message(&'static str),
    /// A map whose entries are owned one by one.
    Map(Box<Ty>),
    /// A list whose items are owned one by one.
    List(Box<Ty>, ListKind),
    /// A custom resource's schema node.
    Schema(Value),
    /// No schema (`x-kubernetes-preserve-unknown-fields`): maps are
    /// separable, lists atomic, as upstream deduces.
    Deduced,
}

/// How a value is taken apart.
pub enum Shape {
    Leaf,
    /// Named fields (a struct, or a map: `fields` then gives each entry's type).
    Fields,
    List(ListKind),
}

/// Messages with their own JSON form, owned whole.
fn special(name: &str) -> bool {
    matches!(
        name.rsplit('.').next(),
        Some(
            "Time"
                | "MicroTime"
                | "Duration"
                | "IntOrString"
                | "Quantity"
                | "RawExtension"
                | "FieldsV1"
                | "JSON"
                | "JSONSchemaPropsOrArray"
                | "JSONSchemaPropsOrBool"
                | "JSONSchemaPropsOrStringArray"
                | "ExtraValue"
        )
    )
}

fn of_type(t: &Type) -> Ty {
    match t {
        Type::Scalar(_) => Ty::Leaf,
        Type::Message(m) if special(m) => Ty::Leaf,
        Type::Message(m) if schema::message(m).is_some_and(|msg| msg.atomic) => Ty::Leaf,
        Type::Message(m) => Ty::Message(m),
        Type::Map(_, v) => Ty::Map(Box::new(of_type(v))),
    }
}

/// A field's type, by kube-openapi's rules: a list without `+listType` is
/// keyed by its `patchMergeKey` under `patchStrategy: merge`, a set of
/// scalars under merge without a key, atomic otherwise.
fn of_field(f: &Field) -> Ty {
    if f.merge.atomic {
        return Ty::Leaf;
    }
    let item = of_type(&f.ty);
    if !f.repeated {
        return item;
    }
    let merge = f.merge.patch_strategy.contains(&"merge");
    let kind = match (&f.merge.list, f.merge.merge_key) {
        (Some(ListType::Atomic), _) => return Ty::Leaf,
        (Some(ListType::Set), _) => ListKind::Set,
        (Some(ListType::Map(keys)), _) => {
            ListKind::Map(keys.iter().map(|k| (*k).to_owned()).collect(), Vec::new())
        }
        (None, Some(key)) if merge => ListKind::Map(vec![key.to_owned()], Vec::new()),
        (None, None) if merge => ListKind::Set,
        (None, _) => return Ty::Leaf,
    };
    let kind = match (kind, &item) {
        // Key fields a client may leave out take their `+default`.
        (ListKind::Map(keys, _), Ty::Message(m)) => {
            let defaults = keys
                .iter()
                .map(|k| {
                    schema::message(m)
                        .and_then(|msg| field_of(msg, k))
                        .and_then(|f| f.merge.default)
                        .map(str::to_owned)
                })
                .collect();
            ListKind::Map(keys, defaults)
        }
        (kind, _) => kind,
    };
    Ty::List(Box::new(item), kind)
}

/// A message's field by JSON name, looking into inline (embedded) structs.
fn field_of(msg: &'static schema::Message, name: &str) -> Option<&'static Field> {
    if let Some(f) = msg.by_json(name) {
        return (!f.inline).then_some(f);
    }
    msg.fields
        .iter()
        .filter(|f| f.inline)
        .find_map(|f| match &f.ty {
            Type::Message(m) => field_of(schema::message(m)?, name),
            _ => None,
        })
}

impl Ty {
    /// The type of a built-in kind, by its protobuf message.
    pub fn of_kind(api_version: &str, kind: &str) -> Option<Ty> {
        let name = crate::api::proto::message_name(api_version, kind)?;
        schema::interned(&name).map(Ty::Message)
    }

    /// The type of any served resource's objects: a built-in kind's, or a
    /// custom resource's schema with `metadata` typed as `ObjectMeta`.
    pub fn of_resource(res: &crate::api::resources::Resource) -> Option<Ty> {
        if !res.custom {
            return Self::of_kind(&res.api_version(), res.kind);
        }
        let mut schema = (*crate::api::crd::schema_of(res)?).clone();
        let props = schema
            .as_object_mut()?
            .entry("properties")
            .or_insert_with(|| Value::Object(Default::default()));
        props["metadata"] = serde_json::json!({OBJECT_META: true});
        props["apiVersion"] = serde_json::json!({"type": "string"});
        props["kind"] = serde_json::json!({"type": "string"});
        Some(Ty::Schema(schema))
    }

    pub fn shape(&self) -> Shape {
        match self {
            Self::Leaf => Shape::Leaf,
            Self::Message(_) | Self::Map(_) | Self::Deduced => Shape::Fields,
            Self::List(_, kind) => Shape::List(kind.clone()),
            Self::Schema(s) => schema_shape(s),
        }
    }

    /// The type of a field (or map entry) named `name`; `None` for a field
    /// the struct does not have.
    pub fn field(&self, name: &str) -> Option<Ty> {
        match self {
            Self::Message(m) => schema::message(m)
                .and_then(|msg| field_of(msg, name))
                .map(of_field),
            Self::Map(v) => Some((**v).clone()),
            Self::Deduced => Some(Self::Deduced),
            Self::Schema(s) => schema_field(s, name),
            Self::Leaf | Self::List(..) => None,
        }
    }

    /// Whether `name` is a declared field (not a map entry): a declared
    /// field holding an empty object is owned as itself, an undeclared
    /// entry always is.
    pub fn declares(&self, name: &str) -> bool {
        match self {
            Self::Message(m) => schema::message(m)
                .and_then(|msg| field_of(msg, name))
                .is_some(),
            Self::Schema(s) => s.get("properties").and_then(|p| p.get(name)).is_some(),
            _ => false,
        }
    }

    /// What a field of a struct holds in Go's zero value of the struct, as
    /// JSON, when Go writes it at all: non-pointer structs are `{}`, other
    /// fields without `omitempty` `null`. Fields written in the zero value
    /// exist before anyone sets them, so setting them does not make them
    /// members of an owner's set (upstream's `.` entries).
    pub fn zero(&self, name: &str) -> Option<Value> {
        let Self::Message(m) = self else {
            return None;
        };
        let f = schema::message(m).and_then(|msg| field_of(msg, name))?;
        match (&f.ty, f.repeated, f.pointer) {
            (Type::Message(_), false, false) => Some(Value::Object(serde_json::Map::new())),
            _ if f.always => Some(Value::Null),
            _ => None,
        }
    }

    pub fn item(&self) -> Ty {
        match self {
            Self::List(item, _) => (**item).clone(),
            Self::Schema(s) => s.get("items").cloned().map_or(Self::Deduced, Self::Schema),
            _ => Self::Deduced,
        }
    }
}

fn schema_shape(s: &Value) -> Shape {
    let ext = |k: &str| s.get(k).and_then(Value::as_str);
    if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return Shape::Leaf;
    }
    match s.get("type").and_then(Value::as_str) {
        Some("array") => match ext("x-kubernetes-list-type") {
            Some("set") => Shape::List(ListKind::Set),
            Some("map") => Shape::List(ListKind::Map(
                s.get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| {
                        k.iter()
                            .filter_map(|k| k.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                Vec::new(),
            )),
            _ => Shape::Leaf,
        },
        Some("object") if ext("x-kubernetes-map-type") == Some("atomic") => Shape::Leaf,
        Some("object") => Shape::Fields,
        None if s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) => {
            Shape::Fields
        }
        _ => Shape::Leaf,
    }
}

/// Marks the `metadata` of a custom resource's root schema: typed as the
/// built-in `ObjectMeta`, as upstream's field manager sees it.
const OBJECT_META: &str = "x-switchyard-object-meta";

fn schema_field(s: &Value, name: &str) -> Option<Ty> {
    if let Some(p) = s.get("properties").and_then(|p| p.get(name)) {
        if p.get(OBJECT_META).is_some() {
            return schema::interned("k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta")
                .map(Ty::Message);
        }
        return Some(Ty::Schema(p.clone()));
    }
    match s.get("additionalProperties") {
        Some(a @ Value::Object(_)) => Some(Ty::Schema(a.clone())),
        _ if s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) => {
            Some(Ty::Deduced)
        }
        Some(Value::Bool(true)) => Some(Ty::Deduced),
        _ => None,
    }
}
