//! Content negotiation: which encoding a response takes (the first media
//! type of the client's `Accept` that can carry the object), and reading
//! request bodies in JSON, YAML or protobuf.
use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::{
    proto,
    status::{ApiError, ApiResult},
};

/// An encoding a response can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Yaml,
    Protobuf,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Yaml => "application/yaml",
            Self::Protobuf => proto::MEDIA_TYPE,
        }
    }
}

/// What the media ranges of an `Accept` header allow, in the client's order.
/// No header, or an empty one, is JSON.
pub fn accepted(accept: Option<&str>) -> Vec<Encoding> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return vec![Encoding::Json];
    };
    let mut out = Vec::new();
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        // `as=Table` and the like ask for a transformation handled elsewhere.
        if parts.any(|p| p.starts_with("as=")) {
            continue;
        }
        let enc = match media.as_str() {
            "application/json" | "*/*" | "application/*" => Encoding::Json,
            "application/yaml" => Encoding::Yaml,
            "application/vnd.kubernetes.protobuf" => Encoding::Protobuf,
            _ => continue,
        };
        if !out.contains(&enc) {
            out.push(enc);
        }
    }
    out
}

/// Upstream's 406 for an `Accept` the server cannot satisfy.
pub fn not_acceptable() -> ApiError {
    ApiError::not_acceptable(
        "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
    )
}

/// `value` in the first acceptable encoding that can carry it (kinds
/// without a protobuf message skip protobuf).
pub fn respond(accepted: &[Encoding], code: StatusCode, value: &Value) -> Response {
    for enc in accepted {
        let body = match enc {
            Encoding::Json => Ok(serde_json::to_vec(value).expect("a JSON value serializes")),
            Encoding::Yaml => Ok(serde_yaml::to_string(value)
                .expect("a JSON value is YAML")
                .into_bytes()),
            Encoding::Protobuf => match proto::encode_object(value) {
                None => continue,
                Some(Ok(b)) => Ok(b),
                Some(Err(e)) => Err(e),
            },
        };
        return match body {
            Ok(body) => (code, [(header::CONTENT_TYPE, enc.content_type())], body).into_response(),
            Err(e) => ApiError::internal(format!("encoding the response as protobuf: {e}"))
                .into_response(),
        };
    }
    not_acceptable().into_response()
}

/// A request body that holds an object: JSON, YAML or (with its content
/// type) protobuf. CBOR and other types are 415.
pub fn object_body(content_type: &str, body: &[u8]) -> ApiResult<Value> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        proto::MEDIA_TYPE => {
            if body.is_empty() {
                return Err(ApiError::bad_request("the request has no body"));
            }
            proto::decode_object(body)
        }
        "" | "application/json" | "application/yaml" | "*/*" => text_body(body),
        _ => Err(ApiError::unsupported_media_type(&[
            "application/json",
            "application/yaml",
            proto::MEDIA_TYPE,
        ])),
    }
}

/// A JSON (or YAML) body: patches, and objects sent as text.
pub fn text_body(body: &[u8]) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request has no body"));
    }
    serde_json::from_slice(body).or_else(|json_err| {
        serde_yaml::from_slice(body)
            .map_err(|_| ApiError::bad_request(format!("the body is not valid JSON: {json_err}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_in_client_order() {
        use Encoding::*;
        assert_eq!(accepted(None), [Json]);
        assert_eq!(
            accepted(Some("application/vnd.kubernetes.protobuf,application/json")),
            [Protobuf, Json]
        );
        assert_eq!(
            accepted(Some(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
            )),
            [Json]
        );
        assert_eq!(accepted(Some("application/yaml, */*")), [Yaml, Json]);
        assert_eq!(accepted(Some("text/html")), []);
    }

    #[test]
    fn kinds_without_protobuf_fall_back_or_are_not_acceptable() {
        let widget = serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget"});
        let r = respond(
            &[Encoding::Protobuf, Encoding::Json],
            StatusCode::OK,
            &widget,
        );
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = respond(&[Encoding::Protobuf], StatusCode::OK, &widget);
        assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
        let cm =
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let r = respond(&[Encoding::Protobuf, Encoding::Json], StatusCode::OK, &cm);
        assert_eq!(r.headers()[header::CONTENT_TYPE], proto::MEDIA_TYPE);
    }

    #[test]
    fn bodies_by_content_type() {
        assert!(object_body("application/json", br#"{"a":1}"#).is_ok());
        assert!(object_body("application/yaml", b"a: 1").is_ok());
        assert_eq!(
            object_body("application/cbor", b"\xa0").unwrap_err().code,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let cm = proto::encode_object(
            &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            object_body(proto::MEDIA_TYPE, &cm).unwrap()["metadata"]["name"],
            "c"
        );
    }
}
