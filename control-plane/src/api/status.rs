//! Errors as Kubernetes `Status` objects: every refusal names its reason, and
//! `Invalid` carries field-level causes.
use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::store;

/// One field-level cause of an `Invalid` refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`, …
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The optional parts of a Status: `details` and `metadata.continue`.
#[derive(Debug, Clone, Default)]
pub struct About {
    pub kind: Option<String>,
    pub name: Option<String>,
    /// The API group of `kind`, when not the core group.
    pub group: Option<String>,
    /// `details.retryAfterSeconds`.
    pub retry_after: Option<u32>,
    /// `metadata.continue`: an expired list's way on at the latest revision.
    pub list_continue: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    /// What refusals about an object say of it (boxed: most have none).
    pub about: Option<Box<About>>,
    pub causes: Vec<Cause>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            about: None,
            causes: Vec::new(),
        }
    }

    /// The optional parts, made present.
    pub fn about_mut(&mut self) -> &mut About {
        self.about.get_or_insert_with(Box::default)
    }

    fn about(mut self, kind: &str, name: &str) -> Self {
        let about = self.about_mut();
        about.kind = Some(kind.into());
        about.name = Some(name.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(resource: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{resource} \"{name}\" not found"),
        )
        .about(resource, name)
    }

    pub fn path_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn already_exists(resource: &str, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
        .about(resource, name)
    }

    pub fn conflict(resource: &str, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        )
        .about(resource, name)
    }

    pub fn conflict_message(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    /// A core-group kind's 422 `Invalid` with every cause.
    pub fn invalid(kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        Self::invalid_in("", kind, name, causes)
    }

    /// Upstream's `NewInvalid`: `Deployment.apps "web" is invalid: …`, one
    /// cause stated alone, several in brackets.
    pub fn invalid_in(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let each: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let detail = match each.as_slice() {
            [] => String::new(),
            [one] => format!(": {one}"),
            many => format!(": [{}]", many.join(", ")),
        };
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid{detail}"),
        )
        .about(kind, name);
        if !group.is_empty() {
            e.about_mut().group = Some(group.into());
        }
        e.causes = causes;
        e
    }

    /// A patch that cannot be applied to the object (e.g. a failed `test`).
    pub fn invalid_patch(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("the patch could not be applied: {}", message.into()),
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    /// Upstream's 415 for a body it cannot read: what the request's
    /// endpoint accepts instead (object bodies, or patch types).
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, "NotAcceptable", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body exceeds {limit} bytes"),
        )
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    /// Upstream's 504 for a resourceVersion the store has not reached
    /// (`NewTooLargeResourceVersionError`): clients retry after a second.
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        let mut e = Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        );
        e.causes = vec![Cause {
            reason: "ResourceVersionTooLarge",
            field: String::new(),
            message: "Too large resource version".into(),
        }];
        e.about_mut().retry_after = Some(1);
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut details = serde_json::Map::new();
        let about = self.about.as_deref().cloned().unwrap_or_default();
        if let Some(n) = &about.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(g) = &about.group {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &about.kind {
            details.insert("kind".into(), json!(k));
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|c| {
                    let mut cause = json!({"reason": c.reason, "message": c.message});
                    if !c.field.is_empty() {
                        cause["field"] = json!(c.field);
                    }
                    cause
                })
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(s) = about.retry_after {
            details.insert("retryAfterSeconds".into(), json!(s));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        if let Some(c) = &about.list_continue {
            status["metadata"]["continue"] = json!(c);
        }
        status
    }

    /// Maps a store error about `resource`/`name`.
    pub fn from_store(e: store::Error, resource: &str, name: &str) -> Self {
        match e {
            store::Error::AlreadyExists { .. } => Self::already_exists(resource, name),
            store::Error::NotFound { .. } => Self::not_found(resource, name),
            store::Error::Conflict { .. } => Self::conflict(resource, name),
            store::Error::Compacted { requested, oldest } => {
                Self::expired(format!("too old resource version: {requested} ({oldest})"))
            }
            store::Error::FutureRevision { requested, current } => {
                Self::too_large_resource_version(requested, current)
            }
            e @ (store::Error::WatchLagged | store::Error::Backend(_)) => {
                Self::internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (self.code, [("content-type", "application/json")], body).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
