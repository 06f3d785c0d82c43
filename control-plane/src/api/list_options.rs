//! The parameters of lists and watches — `resourceVersion`,
//! `resourceVersionMatch`, `limit`, `continue`, `watch`,
//! `sendInitialEvents`, `allowWatchBookmarks`, `timeoutSeconds` — decoded,
//! checked and turned into a plan as upstream 1.33 does: apimachinery's
//! `ValidateListOptions`, apiserver's `storage.ValidateListOptions`, the
//! watch cache's `ShouldDelegateList` and `computeListLimit`.
//! docs/control-plane.md has the whole table.
use base64::Engine as _;
use serde_json::Value;

use super::{
    Request,
    status::{ApiError, ApiResult},
    validation::{Errors, quote},
};
use crate::store::Revision;

/// Upstream's `ListOptions`, as sent.
#[derive(Debug, Default, Clone)]
pub struct ListOptions {
    pub watch: bool,
    /// `resourceVersion`, when sent and not empty.
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    /// `limit` when positive.
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub send_initial_events: Option<bool>,
    pub allow_watch_bookmarks: bool,
    pub timeout_seconds: Option<i64>,
}

/// How a list reads the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The current state (no resourceVersion: a consistent read; `0`: any
    /// state, which this server always serves current).
    Latest,
    /// The current state, once the store has reached this revision
    /// (`NotOlderThan`, and a bare resourceVersion without `limit`).
    AtLeast(Revision),
    /// The state at exactly this revision (`Exact`, and the legacy
    /// resourceVersion with `limit`).
    Exact(Revision),
}

/// Where a list starts and how much of it one answer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub read: Read,
    /// Items per page; `None`: all.
    pub limit: Option<usize>,
    /// The last key of the previous page (from `continue`).
    pub start_after: Option<String>,
    /// The page continues a list whose revision is gone: upstream answers
    /// 410 with a token that continues at the latest revision instead.
    pub continuing: bool,
}

impl Plan {
    /// The whole collection as it is now.
    pub fn everything() -> Self {
        Self {
            read: Read::Latest,
            limit: None,
            start_after: None,
            continuing: false,
        }
    }
}

impl ListOptions {
    /// Decodes the parameters as upstream's parameter codec does (an
    /// integer that does not parse is a 400) and validates them (422).
    pub fn from_request(req: &Request, watch_forced: bool) -> ApiResult<Self> {
        let q = &req.query;
        let opts = Self {
            watch: watch_forced || q.flag("watch"),
            resource_version: q.get("resourceVersion").map(str::to_owned),
            resource_version_match: q.get("resourceVersionMatch").map(str::to_owned),
            limit: q.int("limit")?.filter(|l| *l > 0).map(|l| l as usize),
            continue_token: q.get("continue").map(str::to_owned),
            send_initial_events: q.optional_flag("sendInitialEvents"),
            allow_watch_bookmarks: q.flag("allowWatchBookmarks"),
            timeout_seconds: q.int("timeoutSeconds")?,
        };
        let errors = opts.validate();
        if !errors.0.is_empty() {
            return Err(ApiError::invalid_in(
                "meta.k8s.io",
                "ListOptions",
                "",
                errors.0,
            ));
        }
        Ok(opts)
    }

    /// `ValidateListOptions`, with the `WatchList` feature off (1.33's default).
    fn validate(&self) -> Errors {
        let mut e = Errors::default();
        let m = self.resource_version_match.as_deref();
        if self.watch {
            if self.send_initial_events.is_some() {
                if m != Some("NotOlderThan") {
                    e.forbidden(
                        "resourceVersionMatch",
                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                    );
                }
                e.forbidden(
                    "sendInitialEvents",
                    "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                );
            }
            if let Some(m) = m {
                if self.send_initial_events.is_none() {
                    e.forbidden(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                    );
                }
                if m != "NotOlderThan" {
                    e.not_supported("resourceVersionMatch", &Value::from(m), &["NotOlderThan"]);
                }
                if self.continue_token.is_some() {
                    e.forbidden(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden when continue is provided",
                    );
                }
            }
            return e;
        }
        if let Some(m) = m {
            if self.resource_version.is_none() {
                e.forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                );
            }
            if self.continue_token.is_some() {
                e.forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                );
            }
            if m != "Exact" && m != "NotOlderThan" {
                e.not_supported(
                    "resourceVersionMatch",
                    &Value::from(m),
                    &["Exact", "NotOlderThan", ""],
                );
            }
            if m == "Exact" && self.resource_version.as_deref() == Some("0") {
                e.forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                );
            }
        }
        if self.send_initial_events.is_some() {
            e.forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            );
        }
        e
    }

    /// The revision a resourceVersion names: upstream's versioner refuses
    /// anything but a decimal number (`0` and empty mean "any").
    pub fn parsed_revision(&self) -> Result<Revision, String> {
        let Some(rv) = self.resource_version.as_deref() else {
            return Ok(0);
        };
        rv.parse().map_err(|_| {
            format!(
                "resourceVersion: Invalid value: {}: strconv.ParseUint: parsing {}: invalid syntax",
                quote(rv),
                quote(rv)
            )
        })
    }

    /// How a list with these options reads the store (`prefix` is the
    /// collection's storage prefix, which continue tokens are relative to).
    pub fn plan(&self, prefix: &str) -> ApiResult<Plan> {
        let rv = self.resource_version.as_deref();
        if let Some(token) = &self.continue_token {
            let (start, token_rv) = decode_continue(token, prefix)
                .map_err(|why| ApiError::bad_request(format!("invalid continue token: {why}")))?;
            if rv.is_some_and(|rv| rv != "0") {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            return Ok(Plan {
                // A positive revision continues that snapshot; -1 the latest.
                read: if token_rv > 0 {
                    Read::Exact(token_rv as Revision)
                } else {
                    Read::Latest
                },
                limit: self.limit,
                start_after: Some(start),
                continuing: true,
            });
        }
        let parsed = self
            .parsed_revision()
            .map_err(|why| ApiError::bad_request(format!("invalid resource version: {why}")))?;
        let read = match (self.resource_version_match.as_deref(), rv) {
            (Some("Exact"), _) => Read::Exact(parsed),
            (Some(_), _) => Read::AtLeast(parsed),
            // The legacy form: with a limit, a resourceVersion is exact.
            (None, Some(v)) if v != "0" && self.limit.is_some() => Read::Exact(parsed),
            (None, Some(v)) if v != "0" => Read::AtLeast(parsed),
            (None, _) => Read::Latest,
        };
        Ok(Plan {
            read,
            // The watch cache, which serves resourceVersion=0, does not page.
            limit: self.limit.filter(|_| rv != Some("0")),
            start_after: None,
            continuing: false,
        })
    }
}

/// Upstream's continue token: base64url of `{"v":"meta.k8s.io/v1",
/// "rv":REV,"start":"KEY\u0000"}`, the key relative to the collection's
/// storage prefix; `rv: -1` continues at the latest revision.
pub fn encode_continue(last_key: &str, prefix: &str, rv: i64) -> String {
    let start = format!("{}\u{0}", last_key.strip_prefix(prefix).unwrap_or(last_key));
    let raw = serde_json::json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.to_string())
}

/// The key a continue token starts after, and its revision.
fn decode_continue(token: &str, prefix: &str) -> Result<(String, i64), String> {
    let generic = "continue key is not valid";
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|e| format!("{generic}: {e}"))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| format!("{generic}: {e}"))?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(format!(
            "{generic}: server does not recognize this encoded version {}",
            v["v"].as_str().unwrap_or_default()
        ));
    }
    let rv = v["rv"].as_i64().unwrap_or(0);
    if rv == 0 {
        return Err(format!(
            "{generic}: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        ));
    }
    let start = v["start"].as_str().unwrap_or_default();
    if start.is_empty() {
        return Err(format!(
            "{generic}: encoded start key empty (version meta.k8s.io/v1)"
        ));
    }
    let relative = start.trim_end_matches('\u{0}');
    if relative.contains("..") || relative.starts_with('/') {
        return Err(format!("{generic}: {relative}"));
    }
    Ok((format!("{prefix}{relative}"), rv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::path::Query;

    fn opts(q: &str) -> ApiResult<ListOptions> {
        let req = Request::for_query(Query::parse(Some(q)));
        ListOptions::from_request(&req, false)
    }

    fn message(q: &str) -> String {
        opts(q).unwrap_err().message
    }

    #[test]
    fn upstreams_refusals() {
        assert_eq!(
            message("resourceVersionMatch=NotOlderThan"),
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
        );
        assert!(
            message("resourceVersion=0&resourceVersionMatch=Exact")
                .contains("resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"")
        );
        assert!(
            message("resourceVersion=1&resourceVersionMatch=Newest").contains(
                "Unsupported value: \"Newest\": supported values: \"Exact\", \"NotOlderThan\", \"\""
            )
        );
        assert!(
            message("sendInitialEvents=true")
                .contains("sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list")
        );
        assert_eq!(
            message("watch=1&sendInitialEvents=true"),
            "ListOptions.meta.k8s.io \"\" is invalid: [resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan, sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled]"
        );
        assert!(
            message("watch=1&resourceVersionMatch=NotOlderThan").contains(
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
            )
        );
        assert_eq!(
            message("limit=ten"),
            "strconv.ParseInt: parsing \"ten\": invalid syntax"
        );
    }

    #[test]
    fn plans() {
        let plan = |q: &str| opts(q).unwrap().plan("/core/configmaps/").unwrap();
        assert_eq!(plan("").read, Read::Latest);
        assert_eq!(
            plan("resourceVersion=0&limit=5").limit,
            None,
            "the cache does not page"
        );
        assert_eq!(plan("resourceVersion=7").read, Read::AtLeast(7));
        assert_eq!(
            plan("resourceVersion=7&limit=5").read,
            Read::Exact(7),
            "legacy exact"
        );
        assert_eq!(
            plan("resourceVersion=7&resourceVersionMatch=NotOlderThan&limit=5").read,
            Read::AtLeast(7)
        );
        assert_eq!(
            plan("resourceVersion=7&resourceVersionMatch=Exact").read,
            Read::Exact(7)
        );
        let token = encode_continue("/core/configmaps/default/b", "/core/configmaps/", 9);
        let p = plan(&format!("limit=1&continue={token}"));
        assert_eq!(
            (p.read, p.start_after.as_deref()),
            (Read::Exact(9), Some("/core/configmaps/default/b"))
        );
        let p = plan(&format!("continue={token}&resourceVersion=0"));
        assert!(p.continuing, "resourceVersion=0 is allowed with continue");
        let with_rv = opts(&format!("continue={token}&resourceVersion=5")).unwrap();
        assert_eq!(
            with_rv.plan("/core/configmaps/").unwrap_err().message,
            "specifying resource version is not allowed when using continue"
        );
        let garbage = opts("continue=xyz").unwrap();
        assert!(
            garbage
                .plan("/core/configmaps/")
                .unwrap_err()
                .message
                .starts_with("invalid continue token: continue key is not valid")
        );
        let latest = encode_continue("/core/configmaps/default/b", "/core/configmaps/", -1);
        assert_eq!(plan(&format!("continue={latest}")).read, Read::Latest);
        let bad_rv = opts("resourceVersion=abc").unwrap();
        assert_eq!(
            bad_rv.plan("/x/").unwrap_err().message,
            "invalid resource version: resourceVersion: Invalid value: \"abc\": strconv.ParseUint: parsing \"abc\": invalid syntax"
        );
    }
}
