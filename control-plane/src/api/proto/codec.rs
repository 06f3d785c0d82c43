//! Protobuf wire bytes ↔ the JSON the API server works on, driven by the
//! message table ([`super::schema`]).
//!
//! JSON follows upstream's Go encoding, not proto3's JSON mapping:
//! `int64` are numbers, `bytes` are base64, and a few messages have their own
//! JSON form (`Time` is an RFC 3339 string, `IntOrString` a number or a
//! string, `Quantity` a string, `RawExtension` embedded JSON, …). A scalar
//! holding its zero value in a non-pointer field is left out, as Go's
//! `omitempty` would, since gogo protobuf writes such fields even when unset.
use base64::Engine as _;
use serde_json::{Map, Number, Value};

use super::{
    schema::{self, Field, Scalar, Type},
    wire::{Reader, WireType, Writer},
};

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.";
const EXTENSIONS: &str = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.";

/// Messages whose JSON form is not an object of their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    /// `{seconds, nanos}` ↔ RFC 3339 (`Time`: whole seconds; `MicroTime`: µs).
    Time { micros: bool },
    /// `{type, intVal, strVal}` ↔ a number or a string.
    IntOrString,
    /// `{string}` ↔ a string.
    Quantity,
    /// `{raw}` ↔ the JSON value `raw` holds (`RawExtension`, `FieldsV1`,
    /// apiextensions' `JSON`).
    RawJson,
    /// `{items}` ↔ an array of strings (`ExtraValue`).
    StringList,
    /// `{schema, jSONSchemas}` ↔ a schema object or an array of them.
    SchemaOrArray,
    /// `{allows, schema}` ↔ a boolean or a schema object.
    SchemaOrBool,
    /// `{schema, property}` ↔ a schema object or an array of strings.
    SchemaOrStringArray,
}

fn special(name: &str) -> Option<Special> {
    let meta = name.strip_prefix(META);
    let ext = name.strip_prefix(EXTENSIONS);
    Some(match (meta, ext) {
        (Some("Time"), _) => Special::Time { micros: false },
        (Some("MicroTime"), _) => Special::Time { micros: true },
        (Some("FieldsV1"), _) | (_, Some("JSON")) => Special::RawJson,
        (_, Some("JSONSchemaPropsOrArray")) => Special::SchemaOrArray,
        (_, Some("JSONSchemaPropsOrBool")) => Special::SchemaOrBool,
        (_, Some("JSONSchemaPropsOrStringArray")) => Special::SchemaOrStringArray,
        _ => match name {
            "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => Special::IntOrString,
            "k8s.io.apimachinery.pkg.api.resource.Quantity" => Special::Quantity,
            "k8s.io.apimachinery.pkg.runtime.RawExtension" => Special::RawJson,
            _ if name.ends_with(".ExtraValue") => Special::StringList,
            _ => return None,
        },
    })
}

/// What is wrong with bytes or a value, with the field path it was found at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct Error {
    pub path: String,
    pub problem: String,
}

fn err(path: &str, problem: impl Into<String>) -> Error {
    Error {
        path: if path.is_empty() {
            "<root>".into()
        } else {
            path.to_owned()
        },
        problem: problem.into(),
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Decodes the message `name` from `bytes` into JSON. `None` for a value Go
/// reads as unset (a zero `Time`, an empty `RawExtension`).
pub fn decode(name: &str, bytes: &[u8]) -> Result<Option<Value>, Error> {
    decode_at(name, bytes, "")
}

fn decode_at(name: &str, bytes: &[u8], path: &str) -> Result<Option<Value>, Error> {
    if let Some(s) = special(name) {
        return decode_special(s, name, bytes, path);
    }
    let msg = schema::message(name).ok_or_else(|| err(path, format!("no message {name}")))?;
    let mut out = Map::new();
    let mut r = Reader::new(bytes);
    while !r.done() {
        let (number, wire) = r.key().map_err(|e| err(path, e))?;
        let Some(field) = msg.by_number(number) else {
            r.skip(wire).map_err(|e| err(path, e))?;
            continue;
        };
        let here = join(path, field.json);
        match &field.ty {
            Type::Map(k, v) => {
                let entry = r.bytes_field(wire).map_err(|e| err(&here, e))?;
                let (key, value) = decode_entry(*k, v, entry, &here)?;
                let map = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let (Some(m), Some(value)) = (map.as_object_mut(), value) {
                    m.insert(key, value);
                }
            }
            Type::Scalar(s) if field.repeated && wire == WireType::Len && s.packable() => {
                // Packed numbers: one length-delimited run.
                let run = r.bytes_field(wire).map_err(|e| err(&here, e))?;
                let mut inner = Reader::new(run);
                let list = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Array(Vec::new()));
                while !inner.done() {
                    let v = read_scalar(&mut inner, *s, s.wire(), &here)?;
                    list.as_array_mut().expect("array").push(v);
                }
            }
            ty => {
                let value = read_value(&mut r, ty, wire, &here)?;
                if field.repeated {
                    let list = out
                        .entry(field.json)
                        .or_insert_with(|| Value::Array(Vec::new()));
                    list.as_array_mut()
                        .expect("array")
                        .push(value.unwrap_or(Value::Null));
                } else {
                    match value {
                        Some(v) => out.insert(field.json.to_owned(), v),
                        None => out.remove(field.json),
                    };
                }
            }
        }
    }
    for field in &msg.fields {
        if field.inline {
            if let Some(Value::Object(inner)) = out.remove(field.json) {
                out.extend(inner);
            }
        } else if !field.repeated
            && !field.pointer
            && matches!(field.ty, Type::Scalar(_))
            && out.get(field.json).is_some_and(is_zero)
        {
            out.remove(field.json);
        }
    }
    Ok(Some(Value::Object(out)))
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn read_value(
    r: &mut Reader<'_>,
    ty: &Type,
    wire: WireType,
    path: &str,
) -> Result<Option<Value>, Error> {
    match ty {
        Type::Scalar(s) => read_scalar(r, *s, wire, path).map(Some),
        Type::Message(name) => {
            let bytes = r.bytes_field(wire).map_err(|e| err(path, e))?;
            decode_at(name, bytes, path)
        }
        Type::Map(..) => unreachable!("maps are read entry by entry"),
    }
}

fn read_scalar(r: &mut Reader<'_>, s: Scalar, wire: WireType, path: &str) -> Result<Value, Error> {
    if wire != s.wire() {
        return Err(err(
            path,
            format!("wire type {wire:?} where {s:?} was expected"),
        ));
    }
    let e = |m: String| err(path, m);
    Ok(match s {
        Scalar::String => {
            let b = r.len_delimited().map_err(e)?;
            Value::String(
                std::str::from_utf8(b)
                    .map_err(|_| err(path, "a string that is not UTF-8"))?
                    .to_owned(),
            )
        }
        Scalar::Bytes => Value::String(
            base64::engine::general_purpose::STANDARD.encode(r.len_delimited().map_err(e)?),
        ),
        Scalar::Bool => Value::Bool(r.varint().map_err(e)? != 0),
        // Negative int32s are sign-extended to 64 bits on the wire.
        Scalar::Int32 => Value::from(r.varint().map_err(e)? as i64 as i32),
        Scalar::Int64 => Value::from(r.varint().map_err(e)? as i64),
        Scalar::Double => number(f64::from_bits(r.fixed64().map_err(e)?)),
        Scalar::Float => number(f64::from(f32::from_bits(r.fixed32().map_err(e)?))),
    })
}

fn number(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn decode_entry(
    k: Scalar,
    v: &Type,
    bytes: &[u8],
    path: &str,
) -> Result<(String, Option<Value>), Error> {
    let mut r = Reader::new(bytes);
    let (mut key, mut value) = (String::new(), None);
    while !r.done() {
        let (n, wire) = r.key().map_err(|e| err(path, e))?;
        match n {
            1 => {
                key = match read_scalar(&mut r, k, wire, path)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                }
            }
            2 => value = read_value(&mut r, v, wire, &format!("{path}[{key}]"))?,
            _ => r.skip(wire).map_err(|e| err(path, e))?,
        }
    }
    // A missing value is the value type's zero.
    let value = value.or_else(|| match v {
        Type::Scalar(Scalar::String | Scalar::Bytes) => Some(Value::String(String::new())),
        _ => None,
    });
    Ok((key, value))
}

/// The fields of a small message as `(number, wire type, raw)` tuples, for
/// the special forms.
fn fields_of<'a>(bytes: &'a [u8], path: &str) -> Result<Vec<(u32, Raw<'a>)>, Error> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while !r.done() {
        let (n, wire) = r.key().map_err(|e| err(path, e))?;
        let raw = match wire {
            WireType::Varint => Raw::Varint(r.varint().map_err(|e| err(path, e))?),
            WireType::Len => Raw::Bytes(r.len_delimited().map_err(|e| err(path, e))?),
            other => {
                r.skip(other).map_err(|e| err(path, e))?;
                continue;
            }
        };
        out.push((n, raw));
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

impl<'a> Raw<'a> {
    fn int(self) -> i64 {
        match self {
            Self::Varint(v) => v as i64,
            Self::Bytes(_) => 0,
        }
    }

    fn bytes(self) -> &'a [u8] {
        match self {
            Self::Bytes(b) => b,
            Self::Varint(_) => &[],
        }
    }

    fn text(self, path: &str) -> Result<String, Error> {
        std::str::from_utf8(self.bytes())
            .map(str::to_owned)
            .map_err(|_| err(path, "a string that is not UTF-8"))
    }
}

fn decode_special(
    s: Special,
    name: &str,
    bytes: &[u8],
    path: &str,
) -> Result<Option<Value>, Error> {
    let fields = fields_of(bytes, path)?;
    let get = |n: u32| fields.iter().rev().find(|(f, _)| *f == n).map(|(_, r)| *r);
    let all = |n: u32| fields.iter().filter(move |(f, _)| *f == n).map(|(_, r)| *r);
    let schema_props = format!("{EXTENSIONS}JSONSchemaProps");
    Ok(match s {
        Special::Time { micros } => {
            if bytes.is_empty() {
                return Ok(None);
            }
            let secs = get(1).map_or(0, Raw::int);
            let nanos = get(2).map_or(0, Raw::int) as i32;
            Some(Value::String(crate::api::clock::format_unix(
                secs, nanos, micros,
            )))
        }
        Special::IntOrString => Some(if get(1).map_or(0, Raw::int) == 1 {
            Value::String(
                get(3)
                    .map(|r| r.text(path))
                    .transpose()?
                    .unwrap_or_default(),
            )
        } else {
            Value::from(get(2).map_or(0, Raw::int) as i32)
        }),
        Special::Quantity => Some(Value::String(
            get(1)
                .map(|r| r.text(path))
                .transpose()?
                .unwrap_or_default(),
        )),
        Special::RawJson => match get(1).map(Raw::bytes) {
            None | Some([]) => None,
            Some(raw) => Some(
                serde_json::from_slice(raw)
                    .map_err(|e| err(path, format!("{name} does not hold JSON: {e}")))?,
            ),
        },
        Special::StringList => Some(Value::Array(
            all(1)
                .map(|r| r.text(path).map(Value::String))
                .collect::<Result<_, _>>()?,
        )),
        Special::SchemaOrArray => {
            let list: Vec<Value> = all(2)
                .map(|r| decode_at(&schema_props, r.bytes(), path).map(Option::unwrap_or_default))
                .collect::<Result<_, _>>()?;
            if list.is_empty() {
                get(1)
                    .map(|r| decode_at(&schema_props, r.bytes(), path))
                    .transpose()?
                    .flatten()
            } else {
                Some(Value::Array(list))
            }
        }
        Special::SchemaOrBool => match get(2) {
            Some(r) => decode_at(&schema_props, r.bytes(), path)?,
            None => Some(Value::Bool(get(1).map_or(0, Raw::int) != 0)),
        },
        Special::SchemaOrStringArray => {
            let list: Vec<Value> = all(2)
                .map(|r| r.text(path).map(Value::String))
                .collect::<Result<_, _>>()?;
            if list.is_empty() {
                get(1)
                    .map(|r| decode_at(&schema_props, r.bytes(), path))
                    .transpose()?
                    .flatten()
            } else {
                Some(Value::Array(list))
            }
        }
    })
}

/// Encodes `value` as the message `name`. Fields the message does not have
/// are left out, as a Go client decoding them would drop them.
pub fn encode(name: &str, value: &Value) -> Result<Vec<u8>, Error> {
    let mut w = Writer::default();
    encode_into(&mut w, name, value, "")?;
    Ok(w.into_bytes())
}

fn encode_into(w: &mut Writer, name: &str, value: &Value, path: &str) -> Result<(), Error> {
    if let Some(s) = special(name) {
        return encode_special(w, s, value, path);
    }
    let msg = schema::message(name).ok_or_else(|| err(path, format!("no message {name}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| err(path, format!("expected an object, got {value}")))?;
    for field in &msg.fields {
        if field.inline {
            // The embedded message's fields sit in this object.
            let mut inner = Writer::default();
            if let Type::Message(target) = &field.ty {
                encode_into(&mut inner, target, value, path)?;
            }
            w.len_field(field.number, &inner.into_bytes());
            continue;
        }
        let Some(v) = obj.get(field.json).filter(|v| !v.is_null()) else {
            continue;
        };
        encode_field(w, field, v, &join(path, field.json))?;
    }
    Ok(())
}

fn encode_field(w: &mut Writer, field: &Field, v: &Value, path: &str) -> Result<(), Error> {
    match &field.ty {
        Type::Map(k, vt) => {
            let map = v
                .as_object()
                .ok_or_else(|| err(path, format!("expected an object, got {v}")))?;
            // Go writes map entries in key order; serde_json's map is sorted.
            for (key, val) in map {
                let mut entry = Writer::default();
                write_scalar(&mut entry, 1, *k, &key_value(*k, key, path)?, path)?;
                if !val.is_null() {
                    write_value(&mut entry, 2, vt, val, &format!("{path}[{key}]"))?;
                }
                w.len_field(field.number, &entry.into_bytes());
            }
            Ok(())
        }
        ty if field.repeated => {
            let list = v
                .as_array()
                .ok_or_else(|| err(path, format!("expected an array, got {v}")))?;
            for (i, item) in list.iter().enumerate() {
                write_value(w, field.number, ty, item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        ty => write_value(w, field.number, ty, v, path),
    }
}

fn key_value(k: Scalar, key: &str, path: &str) -> Result<Value, Error> {
    Ok(match k {
        Scalar::String => Value::String(key.to_owned()),
        _ => serde_json::from_str(key)
            .map_err(|_| err(path, format!("map key `{key}` is not a {k:?}")))?,
    })
}

fn write_value(w: &mut Writer, number: u32, ty: &Type, v: &Value, path: &str) -> Result<(), Error> {
    match ty {
        Type::Scalar(s) => write_scalar(w, number, *s, v, path),
        Type::Message(name) => {
            let mut inner = Writer::default();
            encode_into(&mut inner, name, v, path)?;
            w.len_field(number, &inner.into_bytes());
            Ok(())
        }
        Type::Map(..) => Err(err(path, "a map inside a list")),
    }
}

fn write_scalar(
    w: &mut Writer,
    number: u32,
    s: Scalar,
    v: &Value,
    path: &str,
) -> Result<(), Error> {
    let wrong = || err(path, format!("expected {s:?}, got {v}"));
    match s {
        Scalar::String => w.len_field(number, v.as_str().ok_or_else(wrong)?.as_bytes()),
        Scalar::Bytes => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().ok_or_else(wrong)?)
                .map_err(|_| err(path, "bytes that are not base64"))?;
            w.len_field(number, &raw);
        }
        Scalar::Bool => w.varint_field(number, u64::from(v.as_bool().ok_or_else(wrong)?)),
        Scalar::Int32 | Scalar::Int64 => {
            let n = v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .ok_or_else(wrong)?;
            w.varint_field(number, n as u64);
        }
        Scalar::Double => w.fixed64_field(number, v.as_f64().ok_or_else(wrong)?.to_bits()),
        Scalar::Float => w.fixed32_field(number, (v.as_f64().ok_or_else(wrong)? as f32).to_bits()),
    }
    Ok(())
}

fn encode_special(w: &mut Writer, s: Special, v: &Value, path: &str) -> Result<(), Error> {
    let schema_props = format!("{EXTENSIONS}JSONSchemaProps");
    let wrong = |what: &str| err(path, format!("expected {what}, got {v}"));
    match s {
        Special::Time { .. } => {
            let text = v.as_str().ok_or_else(|| wrong("an RFC 3339 time"))?;
            let (secs, nanos) =
                crate::api::clock::parse_unix(text).ok_or_else(|| wrong("an RFC 3339 time"))?;
            w.varint_field(1, secs as u64);
            if nanos != 0 {
                w.varint_field(2, nanos as i64 as u64);
            }
        }
        Special::IntOrString => match v {
            Value::String(t) => {
                w.varint_field(1, 1);
                w.len_field(3, t.as_bytes());
            }
            Value::Number(n) => {
                w.varint_field(1, 0);
                let n = n.as_i64().ok_or_else(|| wrong("an integer or a string"))?;
                w.varint_field(2, n as u64);
            }
            _ => return Err(wrong("an integer or a string")),
        },
        Special::Quantity => {
            let text = match v {
                Value::String(t) => t.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(wrong("a quantity")),
            };
            w.len_field(1, text.as_bytes());
        }
        Special::RawJson => {
            w.len_field(1, &serde_json::to_vec(v).expect("a JSON value serializes"));
        }
        Special::StringList => {
            for item in v.as_array().ok_or_else(|| wrong("an array of strings"))? {
                w.len_field(
                    1,
                    item.as_str()
                        .ok_or_else(|| wrong("an array of strings"))?
                        .as_bytes(),
                );
            }
        }
        Special::SchemaOrArray => match v {
            Value::Array(list) => {
                for (i, item) in list.iter().enumerate() {
                    let mut inner = Writer::default();
                    encode_into(&mut inner, &schema_props, item, &format!("{path}[{i}]"))?;
                    w.len_field(2, &inner.into_bytes());
                }
            }
            _ => {
                let mut inner = Writer::default();
                encode_into(&mut inner, &schema_props, v, path)?;
                w.len_field(1, &inner.into_bytes());
            }
        },
        Special::SchemaOrBool => match v {
            Value::Bool(b) => w.varint_field(1, u64::from(*b)),
            _ => {
                w.varint_field(1, 1);
                let mut inner = Writer::default();
                encode_into(&mut inner, &schema_props, v, path)?;
                w.len_field(2, &inner.into_bytes());
            }
        },
        Special::SchemaOrStringArray => match v {
            Value::Array(list) => {
                for item in list {
                    w.len_field(
                        2,
                        item.as_str()
                            .ok_or_else(|| wrong("an array of strings"))?
                            .as_bytes(),
                    );
                }
            }
            _ => {
                let mut inner = Writer::default();
                encode_into(&mut inner, &schema_props, v, path)?;
                w.len_field(1, &inner.into_bytes());
            }
        },
    }
    Ok(())
}
