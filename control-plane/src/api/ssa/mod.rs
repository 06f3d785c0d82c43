//! Server-side apply and field ownership, as upstream's field manager
//! (structured-merge-diff) keeps them in `metadata.managedFields`:
//!
//! - every write is made by a manager (`fieldManager`, or the prefix of the
//!   User-Agent) and recorded as an `Update` entry owning the fields it
//!   changed (taken from whoever owned them: updates never conflict);
//! - an apply (`application/apply-patch+yaml`) merges the configuration into
//!   the live object, the applier's `Apply` entry becomes exactly the
//!   fields it sent, fields it sent before and not now are removed unless
//!   someone else owns them, and a change to a field another manager owns
//!   is a 409 naming field and manager — unless `force`, which takes it.
//!
//! Fields of the object's identity (`apiVersion`, `kind`, name, uid,
//! resourceVersion, …) are never owned; writes to the main resource do not
//! own `status`, writes to `/status` own only `status`.
use serde_json::{Value, json};

pub mod fieldset;
pub mod types;
pub mod value;

use fieldset::{Elem, Set, display};
pub use types::Ty;

use super::status::{ApiError, ApiResult, Cause};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: Operation,
    api_version: String,
    subresource: String,
    time: Option<String>,
    set: Set,
}

impl Entry {
    /// Upstream's manager identity: appliers are one manager whatever
    /// version they apply in; updaters are told apart by version too.
    fn same_manager(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == Operation::Apply || self.api_version == other.api_version)
    }

    /// How upstream names a manager in a conflict.
    fn printed(&self) -> String {
        let mut s = super::validation::quote(&self.manager);
        if !self.subresource.is_empty() {
            s = format!(
                "{s} with subresource {}",
                super::validation::quote(&self.subresource)
            );
        }
        if self.operation == Operation::Update {
            s = format!("{s} using {}", self.api_version);
        }
        s
    }

    fn encode(&self) -> Value {
        let mut e = json!({
            "manager": self.manager,
            "operation": self.operation.name(),
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.set.to_fields_v1(),
        });
        if let Some(t) = &self.time {
            e["time"] = json!(t);
        }
        if !self.subresource.is_empty() {
            e["subresource"] = json!(self.subresource);
        }
        e
    }

    fn decode(v: &Value) -> Option<Entry> {
        let operation = match v.get("operation")?.as_str()? {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            _ => return None,
        };
        Some(Entry {
            manager: v.get("manager")?.as_str()?.to_owned(),
            operation,
            api_version: v
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            subresource: v
                .get("subresource")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            time: v.get("time").and_then(Value::as_str).map(str::to_owned),
            set: Set::from_fields_v1(v.get("fieldsV1").unwrap_or(&json!({})))?,
        })
    }
}

/// Who writes, and how.
pub struct Writer<'a> {
    pub manager: &'a str,
    /// `status`, `scale`, or empty for the main resource.
    pub subresource: &'a str,
    pub api_version: &'a str,
    /// Now, RFC 3339.
    pub time: &'a str,
    /// Whether the kind has a status subresource (main-resource writes then
    /// do not own `status`).
    pub has_status: bool,
}

impl Writer<'_> {
    fn entry(&self, operation: Operation, set: Set) -> Entry {
        Entry {
            manager: self.manager.to_owned(),
            operation,
            api_version: self.api_version.to_owned(),
            subresource: self.subresource.to_owned(),
            time: Some(self.time.to_owned()),
            set,
        }
    }

    /// The fields this write may own.
    fn owned(&self, set: &Set) -> Set {
        let f = |n: &str| Elem::Field(n.to_owned());
        let mut identity = Set::default();
        for p in ["apiVersion", "kind"] {
            identity.insert(&[f(p)]);
        }
        for p in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            identity.insert(&[f("metadata"), f(p)]);
        }
        // `metadata` itself is no member either; its other fields are.
        let mut metadata = Set::default();
        metadata.insert(&[f("metadata")]);
        let mut set = set.without_subtrees(&identity).difference(&metadata);
        let mut status = Set::default();
        status.insert(&[f("status")]);
        if self.subresource == "status" {
            set = set.only_subtrees(&status);
        } else if self.has_status {
            set = set.without_subtrees(&status);
        }
        set
    }
}

/// The managers of an object, as its `managedFields` say.
fn managers_of(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().filter_map(Entry::decode).collect())
        .unwrap_or_default()
}

/// Writes `entries` to `obj`'s `managedFields`, in upstream's order
/// (appliers first, then by time, manager, version, subresource).
fn store_managers(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        (
            a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let meta = super::objects::meta_mut(obj);
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::encode).collect()),
        );
    }
}

/// The managers a write starts from: the ones the client sent (a client
/// may rewrite `managedFields`; `[{}]` clears them), else the stored ones.
fn starting_managers(old: Option<&Value>, new: &Value) -> Vec<Entry> {
    match new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    {
        Some(sent) if sent.len() == 1 && sent[0].as_object().is_some_and(|o| o.is_empty()) => {
            Vec::new()
        }
        Some(sent) if !sent.is_empty() => {
            let decoded: Vec<Entry> = sent.iter().filter_map(Entry::decode).collect();
            if decoded.len() == sent.len() {
                decoded
            } else {
                old.map(managers_of).unwrap_or_default()
            }
        }
        _ => old.map(managers_of).unwrap_or_default(),
    }
}

fn strip_managed(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

/// Records a create, update or patch (not an apply) by `w`: it owns what it
/// added or changed, others lose those fields, removed fields go from all.
pub fn record_update(ty: &Ty, old: Option<&Value>, new: &mut Value, w: &Writer) {
    let mut managers = starting_managers(old, new);
    if old.is_some() && managers.is_empty() {
        // Upstream does not start tracking an existing object on an update
        // (its `managedFields` were cleared, or it predates tracking).
        store_managers(new, managers);
        return;
    }
    let before = old.map(strip_managed).unwrap_or_else(|| json!({}));
    let after = strip_managed(new);
    let c = value::compare(ty, &before, &after);
    let (removed, changed) = (w.owned(&c.removed), w.owned(&c.modified.union(&c.added)));
    let mine = w.entry(Operation::Update, Set::default());
    for e in &mut managers {
        if !e.same_manager(&mine) {
            e.set = e.set.difference(&changed).difference(&removed);
        }
    }
    match managers.iter_mut().find(|e| e.same_manager(&mine)) {
        Some(e) => {
            e.set = e.set.difference(&removed).union(&changed);
            // Upstream stamps the entry only when the write changed something.
            if !changed.is_empty() {
                e.time = mine.time.clone();
            }
        }
        None => managers.push(Entry {
            set: changed,
            ..mine
        }),
    }
    managers.retain(|e| !e.set.is_empty());
    cap_updaters(&mut managers);
    store_managers(new, managers);
}

/// Records a write by the server itself: it owns nothing, but fields it
/// removed are no longer anyone's.
pub fn record_server_write(ty: &Ty, old: &Value, new: &mut Value) {
    let mut managers = managers_of(old);
    if managers.is_empty() {
        return;
    }
    let removed = value::compare(ty, &strip_managed(old), &strip_managed(new)).removed;
    if removed.is_empty() {
        return;
    }
    for e in &mut managers {
        e.set = e.set.difference(&removed);
    }
    store_managers(new, managers);
}

/// The annotation client-side `kubectl apply` keeps its configuration in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Update entries kept before the oldest are merged (upstream's cap).
const MAX_UPDATE_MANAGERS: usize = 10;

/// Server-side apply of `config` by `w` to `live` (`{}` for an object that
/// does not exist yet): the merged object, with its `managedFields`, or a
/// 409 naming each field another manager owns and `config` would change.
///
/// As upstream's field manager, for the manager `kubectl` only: conflicts
/// over fields the object's client-side-apply annotation set (and that
/// still hold the values it set) are not conflicts, so a `kubectl apply
/// --server-side` can follow a client-side one; and that annotation, when
/// present, is kept equal to the configuration.
pub fn apply(ty: &Ty, live: &Value, config: &Value, w: &Writer, force: bool) -> ApiResult<Value> {
    let conflicts = match apply_forced(ty, live, config, w, force) {
        Ok(merged) => return Ok(with_last_applied(merged, config, w)),
        Err(conflicts) => conflicts,
    };
    let Some(allowed) = (w.manager == "kubectl")
        .then(|| allowed_by_last_applied(ty, live))
        .flatten()
    else {
        return Err(conflict_error(&conflicts));
    };
    let left: Vec<_> = conflicts
        .into_iter()
        .filter(|(_, path)| !allowed.has(path))
        .collect();
    if !left.is_empty() {
        return Err(conflict_error(&left));
    }
    let merged = apply_forced(ty, live, config, w, true).map_err(|c| conflict_error(&c))?;
    Ok(with_last_applied(merged, config, w))
}

/// The apply itself; conflicts are (manager as printed, path).
fn apply_forced(
    ty: &Ty,
    live: &Value,
    config: &Value,
    w: &Writer,
    force: bool,
) -> Result<Value, Vec<(String, Vec<Elem>)>> {
    let mut managers = managers_of(live);
    let live = strip_managed(live);
    let config = strip_managed(config);
    if managers.is_empty() && live.as_object().is_some_and(|o| !o.is_empty()) {
        // An object nobody manages yet: what it holds was set "before the
        // first apply", by a manager of that name.
        let before = Writer {
            manager: "before-first-apply",
            ..*w
        };
        let set = before.owned(&value::to_set(ty, &live));
        managers.push(Entry {
            subresource: String::new(),
            ..before.entry(Operation::Update, set)
        });
    }
    let applied = w.owned(&value::to_set(ty, &config));
    let mut mine = w.entry(Operation::Apply, applied.clone());
    let previous = managers.iter().find(|e| e.same_manager(&mine));
    let (last, last_time) =
        previous.map_or((Set::default(), None), |e| (e.set.clone(), e.time.clone()));
    let others = managers
        .iter()
        .filter(|e| !e.same_manager(&mine))
        .fold(Set::default(), |acc, e| acc.union(&e.set));

    let mut merged = value::merge(ty, &live, &config);
    // What this manager applied before and not now goes, unless someone
    // (this apply included) owns it or something below it.
    let dropped = last.difference(&applied).difference(&others);
    value::remove(ty, &mut merged, &dropped, Some(&others.union(&applied)));

    let c = value::compare(ty, &live, &merged);
    if c.removed.is_empty() && c.modified.is_empty() && c.added.is_empty() {
        // Upstream stamps the applier's entry only when the object changed.
        mine.time = last_time;
    }
    let changed = w.owned(&c.modified.union(&c.added));
    let removed = w.owned(&c.removed);
    let mut conflicts = Vec::new();
    for e in managers.iter().filter(|e| !e.same_manager(&mine)) {
        for path in e.set.intersection(&changed).paths() {
            conflicts.push((e.printed(), path));
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for e in &mut managers {
        if !e.same_manager(&mine) {
            e.set = e.set.difference(&changed).difference(&removed);
        }
    }
    managers.retain(|e| !e.same_manager(&mine));
    managers.push(mine);
    store_managers(&mut merged, managers);
    Ok(merged)
}

/// Upstream's `lastAppliedManager`: the fields of the object's
/// client-side-apply annotation that the live object still holds as set
/// there; `None` without a usable annotation.
fn allowed_by_last_applied(ty: &Ty, live: &Value) -> Option<Set> {
    let text = live
        .pointer("/metadata/annotations")?
        .get(LAST_APPLIED)?
        .as_str()?;
    let last: Value = serde_json::from_str(text).ok()?;
    if last.get("apiVersion") != live.get("apiVersion") {
        return None;
    }
    let live = strip_managed(live);
    let c = value::compare(ty, &last, &live);
    Some(
        value::to_set(ty, &last)
            .difference(&c.modified)
            .difference(&c.added)
            .difference(&c.removed),
    )
}

/// Upstream's `lastAppliedUpdater`: `kubectl`'s server-side applies keep an
/// existing client-side-apply annotation equal to what they applied.
fn with_last_applied(mut merged: Value, config: &Value, w: &Writer) -> Value {
    let has = merged
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    if w.manager != "kubectl" || !has {
        return merged;
    }
    let mut last = config.clone();
    if let Some(a) = last
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED);
    }
    // Go's encoding of an unstructured object: compact, keys sorted.
    let text = serde_json::to_string(&sorted(last)).unwrap_or_default();
    merged["metadata"]["annotations"][LAST_APPLIED] = Value::String(text);
    merged
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Upstream's `capManagersManager`: past ten `Update` entries, the oldest
/// are merged, per API version, into an `ancient-changes` entry.
fn cap_updaters(managers: &mut Vec<Entry>) {
    let mut updaters: Vec<usize> = (0..managers.len())
        .filter(|&i| managers[i].operation == Operation::Update)
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    // Oldest first, by whole seconds, then by name.
    updaters.sort_by(|&a, &b| {
        let (ea, eb) = (&managers[a], &managers[b]);
        (ea.time.as_deref().unwrap_or(""), &ea.manager)
            .cmp(&(eb.time.as_deref().unwrap_or(""), &eb.manager))
    });
    let mut count = updaters.len();
    let mut first_of_version: Vec<(String, usize)> = Vec::new();
    let mut gone = vec![false; managers.len()];
    for &i in &updaters {
        if count <= MAX_UPDATE_MANAGERS {
            break;
        }
        let version = managers[i].api_version.clone();
        match first_of_version.iter().find(|(v, _)| *v == version) {
            Some(&(_, bucket)) => {
                let set = managers[i].set.clone();
                let time = managers[i].time.clone();
                let b = &mut managers[bucket];
                b.manager = "ancient-changes".into();
                b.subresource.clear();
                b.set = b.set.union(&set);
                b.time = time;
                gone[i] = true;
                count -= 1;
            }
            None => first_of_version.push((version, i)),
        }
    }
    let mut i = 0;
    managers.retain(|_| {
        i += 1;
        !gone[i - 1]
    });
}

/// Upstream's `NewApplyConflict`: 409 `Conflict`, a `FieldManagerConflict`
/// cause per field.
fn conflict_error(conflicts: &[(String, Vec<Elem>)]) -> ApiError {
    let conflicts: Vec<(String, String)> = conflicts
        .iter()
        .map(|(m, p)| (m.clone(), display(p)))
        .collect();
    let message = match conflicts.as_slice() {
        [(manager, path)] => {
            format!("Apply failed with 1 conflict: conflict with {manager}: {path}")
        }
        many => {
            let mut by_manager: Vec<&str> = many.iter().map(|(m, _)| m.as_str()).collect();
            by_manager.sort_unstable();
            by_manager.dedup();
            let mut lines = Vec::new();
            for m in by_manager {
                lines.push(format!("conflicts with {m}:"));
                lines.extend(
                    many.iter()
                        .filter(|(x, _)| x == m)
                        .map(|(_, p)| format!("- {p}")),
                );
            }
            format!(
                "Apply failed with {} conflicts: {}",
                many.len(),
                lines.join("\n")
            )
        }
    };
    let mut e = ApiError::conflict_message(message);
    e.causes = conflicts
        .iter()
        .map(|(manager, path)| Cause {
            reason: "FieldManagerConflict",
            field: path.clone(),
            message: format!("conflict with {manager}"),
        })
        .collect();
    e
}

/// The manager of a write: `fieldManager`, else the User-Agent up to its
/// first `/`, as upstream names managers.
pub fn manager_name(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    field_manager
        .map(str::to_owned)
        .or_else(|| user_agent.map(|ua| ua.split('/').next().unwrap_or_default().to_owned()))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
        .chars()
        .take(128)
        .collect()
}

#[cfg(test)]
mod tests;
