//! Reading a write's body into its kind, as upstream's decoder does: fields
//! the kind does not have are dropped (Go decodes into typed structs), and
//! `fieldValidation` says whether they and duplicate fields are ignored
//! (`Ignore`), reported as `Warning` headers (`Warn`, the default) or
//! refused (`Strict`); a value of the wrong JSON type is always refused.
//! The write options themselves (`fieldValidation`, `dryRun`,
//! `fieldManager`, `force`) are checked as upstream's
//! `ValidateCreateOptions`/`ValidateUpdateOptions`/`ValidatePatchOptions`.
use serde_json::Value;

use super::{
    Request, media,
    resources::Resource,
    schemas,
    status::{ApiError, ApiResult},
    strict_json,
    validation::{Errors, quote},
};

/// `fieldValidation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    Ignore,
    Warn,
    Strict,
}

/// Which write the options belong to (upstream names them in refusals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Options {
    Create,
    Update,
    /// `apply` tells server-side apply from the other patch types.
    Patch {
        apply: bool,
    },
}

impl Options {
    fn kind(self) -> &'static str {
        match self {
            Self::Create => "CreateOptions",
            Self::Update => "UpdateOptions",
            Self::Patch { .. } => "PatchOptions",
        }
    }
}

/// Checks the write options of `req`; returns its `fieldValidation`.
pub fn options(req: &Request, which: Options) -> ApiResult<Directive> {
    let mut e = Errors::default();
    let manager = req.query.get("fieldManager").unwrap_or_default();
    if manager.len() > 128 {
        e.too_long("fieldManager", 128);
    } else if !manager.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        e.invalid_str(
            "fieldManager",
            manager,
            "must only contain printable characters",
        );
    }
    if let Options::Patch { apply } = which {
        if apply && manager.is_empty() {
            e.required("fieldManager", "is required for apply patch");
        }
        if !apply && req.query.get("force").is_some() {
            e.forbidden("force", "may not be specified for non-apply patch");
        }
    }
    let dry_run = req.query.all("dryRun");
    if dry_run.iter().any(|d| *d != "All") {
        e.not_supported(
            "dryRun",
            &Value::Array(dry_run.iter().map(|d| Value::from(*d)).collect()),
            &["All"],
        );
    }
    let directive = match req.query.get("fieldValidation").unwrap_or_default() {
        "" | "Warn" => Directive::Warn,
        "Ignore" => Directive::Ignore,
        "Strict" => Directive::Strict,
        other => {
            e.not_supported(
                "fieldValidation",
                &Value::from(other),
                &["", "Ignore", "Strict", "Warn"],
            );
            Directive::Warn
        }
    };
    if !e.0.is_empty() {
        return Err(ApiError::invalid_in("meta.k8s.io", which.kind(), "", e.0));
    }
    Ok(directive)
}

/// The object a create or update sends, for `res`.
pub fn object(req: &Request, res: &Resource, directive: Directive) -> ApiResult<Value> {
    let content_type = req.content_type();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let (mut obj, duplicates) = match media {
        "" | "application/json" | "*/*" if !req.body.is_empty() => strict_json::parse(&req.body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?,
        _ => (media::object_body(content_type, &req.body)?, Vec::new()),
    };
    let what = cannot_handle(res);
    let mut problems: Vec<String> = duplicates
        .iter()
        .map(|p| format!("duplicate field {}", quote(p)))
        .collect();
    if let Some(found) = check_schema(res, &mut obj) {
        if let Some(t) = found.type_error {
            return Err(ApiError::bad_request(format!("{what}: {t}")));
        }
        problems.extend(
            found
                .unknown
                .iter()
                .map(|p| format!("unknown field {}", quote(p))),
        );
    }
    report(req, directive, &problems, |joined| {
        ApiError::bad_request(format!("{what}: strict decoding error: {joined}"))
    })?;
    Ok(obj)
}

/// `Service in version "v1" cannot be handled as a Service`.
fn cannot_handle(res: &Resource) -> String {
    format!(
        "{} in version {} cannot be handled as a {}",
        res.kind,
        quote(res.version),
        res.kind
    )
}

/// Checks `obj` against `res`'s schema, removing unknown fields; `None` for
/// kinds without one.
pub fn check_schema(res: &Resource, obj: &mut Value) -> Option<schemas::Findings> {
    if res.custom {
        // A custom resource's unknown fields are what its schema prunes.
        let schema = super::crd::schema_of(res)?;
        let mut found = schemas::Findings::default();
        super::crd::schema::prune(&schema, obj, &mut found.unknown);
        return Some(found);
    }
    let name = schemas::registry().kind(&res.api_version(), res.kind)?;
    Some(schemas::check(name, obj))
}

/// Acts on strict-decoding problems as `directive` says: warnings, or the
/// refusal `strict` builds from them joined.
pub fn report(
    req: &Request,
    directive: Directive,
    problems: &[String],
    strict: impl FnOnce(&str) -> ApiError,
) -> ApiResult<()> {
    if problems.is_empty() {
        return Ok(());
    }
    match directive {
        Directive::Ignore => Ok(()),
        Directive::Warn => {
            for p in problems {
                req.warn(p);
            }
            Ok(())
        }
        Directive::Strict => Err(strict(&problems.join(", "))),
    }
}

/// Duplicate keys of a JSON patch body, as strict-decoding problems.
pub fn patch_duplicates(body: &[u8]) -> Vec<String> {
    strict_json::parse(body)
        .map(|(_, d)| d)
        .unwrap_or_default()
        .iter()
        .map(|p| format!("duplicate field {}", quote(p)))
        .collect()
}

/// Checks a patched object against `res`'s schema: unknown fields are
/// removed and reported as `directive` says. Upstream refuses them as a 422
/// on the `patch` field whose value is `shown` (the patched object for JSON
/// and merge patches, the patch for strategic ones).
pub fn patched(
    req: &Request,
    res: &Resource,
    directive: Directive,
    obj: &mut Value,
    mut problems: Vec<String>,
    shown: impl FnOnce(&Value) -> String,
) -> ApiResult<()> {
    let Some(found) = check_schema(res, obj) else {
        return Ok(());
    };
    if let Some(t) = found.type_error {
        return Err(ApiError::invalid_in(
            "",
            "",
            "",
            vec![invalid_patch(&shown(obj), &t.to_string())],
        ));
    }
    problems.extend(
        found
            .unknown
            .iter()
            .map(|p| format!("unknown field {}", quote(p))),
    );
    let shown = shown(obj);
    report(req, directive, &problems, |joined| {
        ApiError::invalid_in(
            "",
            "",
            "",
            vec![invalid_patch(
                &shown,
                &format!("strict decoding error: {joined}"),
            )],
        )
    })
}

fn invalid_patch(shown: &str, detail: &str) -> super::status::Cause {
    let mut e = Errors::default();
    e.invalid_str("patch", shown, detail);
    e.0.remove(0)
}

/// Go's `%+v` of a decoded JSON value (`map[spec:map[selectr:map[app:web]]]`),
/// as upstream shows a strategic merge patch in a refusal.
pub fn go_print(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(go_print).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", go_print(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn go_prints_maps_like_fmt() {
        assert_eq!(
            go_print(&json!({"spec": {"selectr": {"app": "web"}, "ports": [1, 2]}})),
            "map[spec:map[ports:[1 2] selectr:map[app:web]]]"
        );
    }
}
