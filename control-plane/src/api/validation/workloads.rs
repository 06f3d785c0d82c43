//! Workloads: Deployments, ReplicaSets, DaemonSets, ReplicationControllers
//! (`pkg/apis/{apps,core}/validation`), Jobs and CronJobs
//! (`pkg/apis/batch/validation`).
use serde_json::{Map, Value};

use super::{Errors, child, label_selector, obj, pod, selector_matches, text};

fn nonnegative(e: &mut Errors, spec: &Value, path: &str, f: &str) {
    if let Some(n) = spec.get(f).and_then(Value::as_i64)
        && n < 0
    {
        e.invalid(
            child(path, f),
            &Value::from(n),
            "must be greater than or equal to 0",
        );
    }
}

fn template_labels(spec: &Value) -> Map<String, Value> {
    spec.pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// The selector must be present and not empty, and select the template.
fn selector_and_template(e: &mut Errors, kind: &str, spec: &Value) {
    let what = kind.to_ascii_lowercase();
    let labels = template_labels(spec);
    match spec.get("selector").filter(|s| !s.is_null()) {
        None => e.required("spec.selector", ""),
        Some(sel) => {
            label_selector(e, "spec.selector", sel);
            let empty = obj(sel, "matchLabels").is_none_or(Map::is_empty)
                && super::list(sel, "matchExpressions").is_empty();
            if empty {
                // Upstream words ReplicaSets' refusal as Deployments'.
                let what = if kind == "ReplicaSet" {
                    "deployment"
                } else {
                    what.as_str()
                };
                e.invalid(
                    "spec.selector",
                    sel,
                    &format!("empty selector is invalid for {what}"),
                );
            } else if !selector_matches(sel, &labels) {
                e.invalid(
                    "spec.template.metadata.labels",
                    &Value::Object(labels),
                    "`selector` does not match template `labels`",
                );
            }
        }
    }
}

/// A pod template whose pods restart forever (Deployments, ReplicaSets,
/// DaemonSets, ReplicationControllers).
fn long_running_template(e: &mut Errors, spec: &Value) {
    let Some(t) = spec.get("template").filter(|t| t.is_object()) else {
        e.required("spec.template", "");
        return;
    };
    pod::template(e, "spec.template", t);
    let policy = t
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !policy.is_empty() && policy != "Always" {
        e.not_supported(
            "spec.template.spec.restartPolicy",
            &Value::from(policy),
            &["Always"],
        );
    }
    if t.pointer("/spec/activeDeadlineSeconds")
        .is_some_and(|d| !d.is_null())
    {
        e.forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        );
    }
}

pub fn workload(e: &mut Errors, kind: &str, obj_: &Value, old: Option<&Value>) {
    let spec = obj_.get("spec").cloned().unwrap_or_default();
    for f in [
        "replicas",
        "minReadySeconds",
        "revisionHistoryLimit",
        "progressDeadlineSeconds",
    ] {
        nonnegative(e, &spec, "spec", f);
    }
    if kind == "ReplicationController" {
        // A plain map, which must not be empty, and must select the template.
        let sel = obj(&spec, "selector");
        if sel.is_none_or(Map::is_empty) {
            e.required("spec.selector", "");
        } else if let Some(sel) = sel {
            super::labels(e, "spec.selector", spec.get("selector"));
            let labels = template_labels(&spec);
            if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                e.invalid(
                    "spec.template.metadata.labels",
                    &Value::Object(labels),
                    "`selector` does not match template `labels`",
                );
            }
        }
    } else {
        selector_and_template(e, kind, &spec);
    }
    long_running_template(e, &spec);
    match kind {
        "Deployment" => deployment_strategy(e, &spec),
        "DaemonSet" => {
            let ty = spec
                .pointer("/updateStrategy/type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !["OnDelete", "RollingUpdate"].contains(&ty) {
                e.not_supported(
                    "spec.updateStrategy.type",
                    &Value::from(ty),
                    &["OnDelete", "RollingUpdate"],
                );
            }
        }
        _ => {}
    }
    if let (Some(p), Some(m)) = (
        spec.get("progressDeadlineSeconds").and_then(Value::as_i64),
        spec.get("minReadySeconds").and_then(Value::as_i64),
    ) && p <= m
    {
        e.invalid(
            "spec.progressDeadlineSeconds",
            &Value::from(p),
            "must be greater than minReadySeconds",
        );
    }
    if let Some(old) = old
        && kind != "ReplicationController"
        && old.pointer("/spec/selector") != obj_.pointer("/spec/selector")
    {
        e.immutable(
            "spec.selector",
            obj_.pointer("/spec/selector").unwrap_or(&Value::Null),
        );
    }
}

/// An int or a percentage string, not negative.
fn int_or_percent(e: &mut Errors, field: &str, v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or(-1.0);
            if n < 0.0 {
                e.invalid(field, v, "must be greater than or equal to 0");
            }
            Some(n)
        }
        Value::String(s) => {
            let Some(p) = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<f64>().ok())
                .filter(|p| *p >= 0.0)
            else {
                e.invalid(
                    field,
                    v,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                );
                return None;
            };
            Some(p)
        }
        _ => None,
    }
}

fn deployment_strategy(e: &mut Errors, spec: &Value) {
    let strategy = spec.get("strategy").cloned().unwrap_or_default();
    let ty = text(&strategy, "type");
    let rolling = strategy.get("rollingUpdate").filter(|r| !r.is_null());
    match ty {
        "Recreate" if rolling.is_some() => e.forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        ),
        "Recreate" => {}
        "RollingUpdate" => {
            let Some(r) = rolling else {
                e.required(
                    "spec.strategy.rollingUpdate",
                    "this should be defaulted and never be nil",
                );
                return;
            };
            let at = "spec.strategy.rollingUpdate";
            let unavailable = r.get("maxUnavailable").cloned().unwrap_or(Value::from(0));
            let surge = r.get("maxSurge").cloned().unwrap_or(Value::from(0));
            let u = int_or_percent(e, &child(at, "maxUnavailable"), &unavailable);
            let s = int_or_percent(e, &child(at, "maxSurge"), &surge);
            if unavailable
                .as_str()
                .is_some_and(|p| u.is_some_and(|u| u > 100.0) && p.ends_with('%'))
            {
                e.invalid(
                    child(at, "maxUnavailable"),
                    &unavailable,
                    "must not be greater than 100%",
                );
            }
            if u == Some(0.0) && s == Some(0.0) {
                e.invalid(
                    child(at, "maxUnavailable"),
                    &unavailable,
                    "may not be 0 when `maxSurge` is 0",
                );
            }
        }
        other => e.not_supported(
            "spec.strategy.type",
            &Value::from(other),
            &["Recreate", "RollingUpdate"],
        ),
    }
}

fn job_spec(e: &mut Errors, path: &str, spec: &Value) {
    for f in ["parallelism", "completions", "backoffLimit"] {
        nonnegative(e, spec, path, f);
    }
    if let Some(d) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64)
        && d <= 0
    {
        e.invalid(
            child(path, "activeDeadlineSeconds"),
            &Value::from(d),
            "must be greater than or equal to 0",
        );
    }
    if let Some(mode) = spec.get("completionMode").and_then(Value::as_str)
        && !["NonIndexed", "Indexed"].contains(&mode)
    {
        e.not_supported(
            child(path, "completionMode"),
            &Value::from(mode),
            &["NonIndexed", "Indexed"],
        );
    }
    let Some(t) = spec.get("template").filter(|t| t.is_object()) else {
        e.required(child(path, "template"), "");
        return;
    };
    pod::template(e, &child(path, "template"), t);
    let policy = t
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !["OnFailure", "Never"].contains(&policy) {
        e.not_supported(
            child(path, "template.spec.restartPolicy"),
            &Value::from(policy),
            &["OnFailure", "Never"],
        );
    }
}

pub fn job(e: &mut Errors, job: &Value, old: Option<&Value>) {
    let spec = job.get("spec").cloned().unwrap_or_default();
    job_spec(e, "spec", &spec);
    match spec.get("selector").filter(|s| !s.is_null()) {
        None => e.required("spec.selector", ""),
        Some(sel) => {
            label_selector(e, "spec.selector", sel);
            let labels = template_labels(&spec);
            if !selector_matches(sel, &labels) {
                e.invalid(
                    "spec.template.metadata.labels",
                    &Value::Object(labels),
                    "`selector` does not match template `labels`",
                );
            }
        }
    }
    if let Some(old) = old {
        for (ptr, field) in [
            ("/spec/selector", "spec.selector"),
            ("/spec/completions", "spec.completions"),
            ("/spec/completionMode", "spec.completionMode"),
        ] {
            if old.pointer(ptr) != job.pointer(ptr) {
                e.immutable(field, job.pointer(ptr).unwrap_or(&Value::Null));
            }
        }
        // The template may change only while the Job is suspended.
        let suspended = old.pointer("/spec/suspend") == Some(&Value::Bool(true));
        if !suspended && old.pointer("/spec/template") != job.pointer("/spec/template") {
            e.immutable(
                "spec.template",
                job.pointer("/spec/template").unwrap_or(&Value::Null),
            );
        }
    }
}

pub fn cron_job(e: &mut Errors, cj: &Value) {
    let spec = cj.get("spec").cloned().unwrap_or_default();
    let schedule = text(&spec, "schedule");
    if schedule.is_empty() {
        e.required("spec.schedule", "");
    } else if let Err(why) = cron_schedule(schedule) {
        e.invalid_str("spec.schedule", schedule, &why);
    }
    let policy = text(&spec, "concurrencyPolicy");
    if !["Allow", "Forbid", "Replace"].contains(&policy) {
        e.not_supported(
            "spec.concurrencyPolicy",
            &Value::from(policy),
            &["Allow", "Forbid", "Replace"],
        );
    }
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        nonnegative(e, &spec, "spec", f);
    }
    let job = spec
        .pointer("/jobTemplate/spec")
        .cloned()
        .unwrap_or_default();
    job_spec(e, "spec.jobTemplate.spec", &job);
}

/// A standard five-field cron schedule (or a `@` descriptor), as
/// robfig/cron's `ParseStandard` accepts it.
fn cron_schedule(s: &str) -> Result<(), String> {
    let s = s.trim();
    if let Some(d) = s.strip_prefix('@') {
        return match d {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            _ if d.starts_with("every ") => Ok(()),
            _ => Err(format!("unrecognized descriptor: {s}")),
        };
    }
    let s = s
        .strip_prefix("TZ=")
        .or_else(|| s.strip_prefix("CRON_TZ="))
        .map_or(s, |rest| rest.split_once(' ').map_or("", |(_, r)| r));
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let ranges: [(u32, u32, &[&str]); 5] = [
        (0, 59, &[]),
        (0, 23, &[]),
        (1, 31, &[]),
        (1, 12, &MONTHS),
        (0, 6, &DAYS),
    ];
    for (field, (lo, hi, names)) in fields.iter().zip(ranges) {
        for part in field.split(',') {
            let (range, step) = part
                .split_once('/')
                .map_or((part, None), |(r, s)| (r, Some(s)));
            if let Some(step) = step
                && step.parse::<u32>().map_or(true, |n| n == 0)
            {
                return Err(format!(
                    "failed to parse int from {step}: strconv.Atoi: parsing {}: invalid syntax",
                    super::quote(step)
                ));
            }
            if range == "*" || range == "?" {
                continue;
            }
            let value = |v: &str| -> Result<u32, String> {
                let lower = v.to_ascii_lowercase();
                if let Some(i) = names.iter().position(|n| *n == lower) {
                    return Ok(lo + i as u32);
                }
                v.parse::<u32>().map_err(|_| {
                    format!(
                        "failed to parse int from {v}: strconv.Atoi: parsing {}: invalid syntax",
                        super::quote(v)
                    )
                })
            };
            let (a, b) = match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            };
            if a < lo {
                return Err(format!(
                    "beginning of range ({a}) below minimum ({lo}): {part}"
                ));
            }
            if b > hi {
                return Err(format!("end of range ({b}) above maximum ({hi}): {part}"));
            }
            if a > b {
                return Err(format!(
                    "beginning of range ({a}) beyond end of range ({b}): {part}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_schedules() {
        for ok in [
            "*/5 * * * *",
            "0 3 * * mon-fri",
            "@hourly",
            "15,45 1-5 1 jan *",
            "TZ=UTC 0 0 * * *",
        ] {
            assert_eq!(cron_schedule(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            cron_schedule("never").unwrap_err(),
            "expected exactly 5 fields, found 1: [never]"
        );
        assert!(
            cron_schedule("61 * * * *")
                .unwrap_err()
                .contains("above maximum (59)")
        );
    }
}
