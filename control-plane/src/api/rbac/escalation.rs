//! Upstream's escalation check (`pkg/registry/rbac/validation`): a user may
//! only write a role, or bind one, whose rules its own rules cover — unless
//! it may `escalate` (roles) or `bind` (the role bound), or is a superuser.
use super::Rule;

/// Upstream's `BreakdownRule`: one rule per verb × group × resource × name,
/// and per verb × non-resource URL.
fn breakdown(rule: &Rule) -> Vec<Rule> {
    let mut out = Vec::new();
    let one = |s: &String| vec![s.clone()];
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                let base = Rule {
                    verbs: one(verb),
                    api_groups: one(group),
                    resources: one(resource),
                    ..Rule::default()
                };
                if rule.resource_names.is_empty() {
                    out.push(base);
                } else {
                    out.extend(rule.resource_names.iter().map(|n| Rule {
                        resource_names: one(n),
                        ..base.clone()
                    }));
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            out.push(Rule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..Rule::default()
            });
        }
    }
    out
}

fn has(list: &[String], s: &str) -> bool {
    list.iter().any(|x| x == s)
}

fn has_all(list: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| has(list, w))
}

fn resources_cover(owner: &[String], wanted: &[String]) -> bool {
    if has(owner, "*") || has_all(owner, wanted) {
        return true;
    }
    wanted.iter().all(|path| {
        has(owner, path)
            || path
                .split_once('/')
                .is_some_and(|(_, sub)| has(owner, &format!("*/{sub}")))
    })
}

fn urls_cover(owner: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|path| {
        owner
            .iter()
            .any(|o| o == path || (o.ends_with('*') && path.starts_with(o.trim_end_matches('*'))))
    })
}

/// Upstream's `ruleCovers`.
fn covers(owner: &Rule, sub: &Rule) -> bool {
    let names = if sub.resource_names.is_empty() {
        owner.resource_names.is_empty()
    } else {
        owner.resource_names.is_empty() || has_all(&owner.resource_names, &sub.resource_names)
    };
    (has(&owner.verbs, "*") || has_all(&owner.verbs, &sub.verbs))
        && (has(&owner.api_groups, "*") || has_all(&owner.api_groups, &sub.api_groups))
        && resources_cover(&owner.resources, &sub.resources)
        && urls_cover(&owner.non_resource_urls, &sub.non_resource_urls)
        && names
}

/// The parts of `wanted` that `owned` does not cover, each printed as
/// upstream's `CompactString` (`{APIGroups:[""], Resources:["pods"],
/// Verbs:["get" "list"]}`) after upstream's `CompactRules` (one rule per
/// group and resource, verbs joined), sorted; empty when covered.
pub fn not_covered(owned: &[Rule], wanted: &[Rule]) -> Vec<String> {
    let missing: Vec<Rule> = wanted
        .iter()
        .flat_map(breakdown)
        .filter(|sub| !owned.iter().any(|o| covers(o, sub)))
        .collect();
    let mut compact: Vec<Rule> = Vec::new();
    for m in missing {
        let simple = m.resource_names.is_empty() && m.non_resource_urls.is_empty();
        match compact.iter_mut().find(|c| {
            simple
                && c.resource_names.is_empty()
                && c.non_resource_urls.is_empty()
                && c.api_groups == m.api_groups
                && c.resources == m.resources
        }) {
            Some(c) => c.verbs.extend(m.verbs),
            None => compact.push(m),
        }
    }
    let mut printed: Vec<String> = compact.iter().map(compact_string).collect();
    printed.sort();
    printed.dedup();
    printed
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| super::quote(s)).collect();
    format!("[{}]", items.join(" "))
}

fn compact_string(r: &Rule) -> String {
    let mut parts = Vec::new();
    for (name, list) in [
        ("APIGroups", &r.api_groups),
        ("Resources", &r.resources),
        ("NonResourceURLs", &r.non_resource_urls),
        ("ResourceNames", &r.resource_names),
        ("Verbs", &r.verbs),
    ] {
        if !list.is_empty() {
            parts.push(format!("{name}:{}", go_quoted(list)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}
