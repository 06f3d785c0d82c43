//! Resource quantities and pod requests, as the scheduler counts them
//! (upstream's `resource.Quantity` and `noderesources/fit.go`).
use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Node, Pod, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};

/// Amounts per resource name, in milli-units (`cpu: 100m` = 100,
/// `memory: 1Ki` = 1,024,000).
pub type Amounts = BTreeMap<String, i128>;

/// A quantity in milli-units: `100m`, `0.5`, `2`, `128Mi`, `1G`, `1e3`.
/// `None` when it does not parse (the API server validates quantities, so
/// this means a malformed object).
pub fn milli(q: &str) -> Option<i128> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    let (num, suffix) = match q.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => q.split_at(i),
        None => (q, ""),
    };
    let (mult_num, mult_den): (i128, i128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "u" => (1, 1000),
        "n" => (1, 1_000_000),
        "k" => (1000 * 1000, 1),
        "M" => (1000 * 1_000_000, 1),
        "G" => (1000 * 1_000_000_000, 1),
        "T" => (1000 * 1_000_000_000_000, 1),
        "P" => (1000 * 1_000_000_000_000_000, 1),
        "E" => (1000 * 1_000_000_000_000_000_000, 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "Ei" => (1000 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().ok()?;
            (1000 * 10i128.checked_pow(exp)?, 1)
        }
        _ => return None,
    };
    // Decimal number: integer and fraction parts, exactly.
    let (neg, digits) = match num.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let scale = 10i128.checked_pow(frac.len() as u32)?;
    let whole: i128 = format!("{int}{frac}").parse().ok()?;
    // Round up, as upstream's MilliValue does for CPU.
    let v = (whole * mult_num + scale * mult_den - 1) / (scale * mult_den);
    Some(if neg { -v } else { v })
}

fn add_requirements(out: &mut Amounts, req: Option<&ResourceRequirements>) {
    let Some(requests) = req.and_then(|r| r.requests.as_ref().or(r.limits.as_ref())) else {
        return;
    };
    // Requests default to limits when only limits are set (API defaulting).
    let merged: BTreeMap<&String, &Quantity> = req
        .and_then(|r| r.limits.as_ref())
        .into_iter()
        .flatten()
        .chain(requests.iter())
        .collect();
    for (name, q) in merged {
        *out.entry(name.clone()).or_default() += milli(&q.0).unwrap_or(0);
    }
}

/// What the pod asks for: the larger of its containers' sum (sidecar init
/// containers included) and each plain init container, plus `overhead`.
pub fn pod_requests(pod: &Pod) -> Amounts {
    let mut sum = Amounts::new();
    let Some(spec) = pod.spec.as_ref() else {
        return sum;
    };
    for c in &spec.containers {
        add_requirements(&mut sum, c.resources.as_ref());
    }
    for c in spec.init_containers.iter().flatten() {
        if c.restart_policy.as_deref() == Some("Always") {
            add_requirements(&mut sum, c.resources.as_ref());
        }
    }
    for c in spec.init_containers.iter().flatten() {
        if c.restart_policy.as_deref() == Some("Always") {
            continue;
        }
        let mut one = Amounts::new();
        add_requirements(&mut one, c.resources.as_ref());
        for (k, v) in one {
            let e = sum.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    for (k, q) in spec.overhead.iter().flatten() {
        *sum.entry(k.clone()).or_default() += milli(&q.0).unwrap_or(0);
    }
    sum
}

/// CPU (milli-cores) and memory (milli-bytes) for scoring: a container
/// without requests counts as 100m CPU and 200 MiB (upstream's
/// `GetNonzeroRequests`).
pub fn nonzero_requests(pod: &Pod) -> (i128, i128) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0);
    };
    let (mut cpu, mut mem) = (0, 0);
    for c in &spec.containers {
        let mut a = Amounts::new();
        add_requirements(&mut a, c.resources.as_ref());
        cpu += a.get("cpu").copied().filter(|v| *v > 0).unwrap_or(100);
        mem += a
            .get("memory")
            .copied()
            .filter(|v| *v > 0)
            .unwrap_or(200 * (1000 << 20));
    }
    (cpu, mem)
}

/// The node's allocatable amounts (its capacity when allocatable is not
/// reported); `pods` defaults to 110, as kubelet's `--max-pods`.
pub fn allocatable(node: &Node) -> Amounts {
    let status = node.status.as_ref();
    let src = status
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| status.and_then(|s| s.capacity.as_ref()));
    let mut out: Amounts = src
        .into_iter()
        .flatten()
        .map(|(k, q)| (k.clone(), milli(&q.0).unwrap_or(0)))
        .collect();
    out.entry("pods".into()).or_insert(110 * 1000);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("1"), Some(1000));
        assert_eq!(milli("0.5"), Some(500));
        assert_eq!(milli("1Ki"), Some(1_024_000));
        assert_eq!(milli("1k"), Some(1_000_000));
        assert_eq!(milli("2Gi"), Some(2 * 1000 * (1 << 30)));
        assert_eq!(milli("1e3"), Some(1_000_000));
        assert_eq!(milli("1.5Mi"), Some(1_572_864_000));
        assert_eq!(milli("abc"), None);
        assert_eq!(milli("1Zi"), None);
    }

    #[test]
    fn requests_take_the_larger_of_containers_and_init_containers() {
        let pod: Pod = serde_json::from_value(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "200m", "memory": "100Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "300m"}}}
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}}],
            "overhead": {"cpu": "10m"}
        }}))
        .unwrap();
        let r = pod_requests(&pod);
        assert_eq!(r["cpu"], 1010);
        assert_eq!(r["memory"], 100 * 1000 * (1 << 20));
    }
}
