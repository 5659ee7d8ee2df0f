//! Stacks: one declarative TOML file (`deploy/stack.toml`) that names the
//! streams and consumer groups a system needs and the settings of its
//! services, applied to a live broker the way `serverless deploy` applies
//! `serverless.yml`.
//!
//! - [`Stack::load`] parses and checks a file; every error names the file,
//!   the line and the key (`deploy/stack.toml:14: streams[1].retentionHours:
//!   must be 24..=168, got 12`).
//! - [`plan`] compares the file with the broker through [`Admin`] and lists
//!   what [`apply`] would change. It changes nothing.
//! - [`plan_access`] does the same for the file's `[[principals]]` and
//!   their grants (it needs `admin:auth`); [`plan_all`] is both.
//! - [`deploy`] plans both, applies, and plans again.
//! - [`plan_removal`] and [`remove`] delete what the file declares.
//!
//! Invariants:
//! - **Only what the file declares.** Deploy creates and updates declared
//!   streams, groups, principals and grants and never deletes anything
//!   (a grant the file no longer lists stays until `streamctl auth grant
//!   remove`); removal deletes only
//!   declared streams (their groups go with them). Streams and groups the
//!   file does not name are never touched, except that deleting a declared
//!   stream deletes every group on it, which removal refuses to do silently.
//! - **Shard counts by UpdateShardCount.** A different shard count is
//!   applied as uniform rescales, each at most doubling or halving the open
//!   shards (as AWS allows per call), so it counts against the stream's
//!   daily scaling limit; closed parents of earlier reshards are not counted.
//! - **All or nothing up front.** A plan is computed completely before the
//!   first change, and a plan with a refused change (a record-size or
//!   group-start change the broker cannot make) applies
//!   nothing. A broker failure half-way leaves the changes made so far, and
//!   the next deploy finishes the rest, because:
//! - **Idempotent.** Deploying an applied file changes nothing: [`deploy`]
//!   checks that the plan after applying is empty.
//! - **Unset means unmanaged.** A key left out (`retentionHours`,
//!   `maxRecordBytes`, a quota) takes the broker's default at creation and
//!   is never compared or changed afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};

use proto::v1 as pb;
use serde::Deserialize;
use toml::Spanned;

use crate::{Admin, Error, Result};

/// Retention the broker accepts, hours.
const RETENTION_HOURS: RangeInclusive<u32> = 24..=168;
/// Largest-record sizes the broker accepts, bytes.
const MAX_RECORD_BYTES: RangeInclusive<u32> = 1024..=10 * 1024 * 1024;
/// Records per poll the broker accepts.
const BATCH_SIZE: RangeInclusive<u32> = 1..=10_000;
/// The client id shown while deploy creates a group (it joins and leaves at once).
const DEPLOY_CLIENT_ID: &str = "stack-deploy";

/// A parsed and checked stack file.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The file it was read from, as given (errors name it).
    pub file: PathBuf,
    /// Declared streams, in file order.
    pub streams: Vec<StreamSpec>,
    /// Declared consumer groups, in file order.
    pub groups: Vec<GroupSpec>,
    /// Declared principals with their grants, in file order.
    pub principals: Vec<PrincipalSpec>,
    services: BTreeMap<String, toml::Table>,
    source: String,
}

/// A `[[principals]]` entry: a principal and the grants it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalSpec {
    /// Its name (a token's or a client certificate's principal).
    pub name: String,
    /// Free text, set when deploy creates it.
    pub description: String,
    /// Its grants, allows then denies, in file order.
    pub grants: Vec<GrantSpec>,
}

/// One grant of a [`PrincipalSpec`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GrantSpec {
    /// Whose.
    pub principal: String,
    /// A deny (wins over every allow) rather than an allow.
    pub deny: bool,
    /// `record:put`, `record:*`, `*`, ...
    pub action: String,
    /// `stream:orders`, `group:orders/billing`, `stream:orders-*`, `cluster`, ...
    pub resource: String,
}

impl GrantSpec {
    fn to_pb(&self) -> pb::Grant {
        let f = if self.deny { crate::deny } else { crate::allow };
        f(&self.principal, &self.action, &self.resource)
    }

    fn of_pb(g: &pb::Grant) -> Self {
        Self {
            principal: g.principal.clone(),
            deny: g.effect == pb::Effect::Deny as i32,
            action: g.action.clone(),
            resource: g.resource.clone(),
        }
    }
}

impl fmt::Display for GrantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = if self.deny { "deny" } else { "allow" };
        write!(f, "{} {effect} {} {}", self.principal, self.action, self.resource)
    }
}

/// A `[[streams]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// Shard count.
    pub shards: u32,
    /// Retention; `None` leaves it to the broker.
    pub retention_hours: Option<u32>,
    /// Largest record (key + data); `None` leaves it to the broker. Fixed at creation.
    pub max_record_bytes: Option<u32>,
    /// Per-shard quotas; each `None` leaves that one to the broker.
    pub quotas: QuotaSpec,
    /// Documentation: the partition key producers use.
    pub partition_key: Option<String>,
    /// Documentation: the event types written to the stream.
    pub events: Vec<String>,
}

/// `[streams.quotas]`: per-shard quotas, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpec {
    /// Records per second in.
    pub write_records_per_sec: Option<u64>,
    /// Key + data bytes per second in.
    pub write_bytes_per_sec: Option<u64>,
    /// GetRecords calls (and group polls) per second.
    pub read_calls_per_sec: Option<u64>,
    /// Key + data bytes per second out.
    pub read_bytes_per_sec: Option<u64>,
}

impl QuotaSpec {
    /// (file key, value) of each quota.
    fn fields(&self) -> [(&'static str, Option<u64>); 4] {
        [
            ("writeRecordsPerSec", self.write_records_per_sec),
            ("writeBytesPerSec", self.write_bytes_per_sec),
            ("readCallsPerSec", self.read_calls_per_sec),
            ("readBytesPerSec", self.read_bytes_per_sec),
        ]
    }

    fn from_pb(q: &pb::Quotas) -> Self {
        Self {
            write_records_per_sec: q.write_records_per_sec,
            write_bytes_per_sec: q.write_bytes_per_sec,
            read_calls_per_sec: q.read_calls_per_sec,
            read_bytes_per_sec: q.read_bytes_per_sec,
        }
    }

    fn to_pb(self) -> pb::Quotas {
        pb::Quotas {
            write_records_per_sec: self.write_records_per_sec,
            write_bytes_per_sec: self.write_bytes_per_sec,
            read_calls_per_sec: self.read_calls_per_sec,
            read_bytes_per_sec: self.read_bytes_per_sec,
        }
    }
}

/// Where a new group's members start on shards without a checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupStart {
    /// The oldest stored record.
    #[default]
    TrimHorizon,
    /// Records written after the group was created.
    Latest,
}

impl GroupStart {
    /// The file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStart::TrimHorizon => "trim-horizon",
            GroupStart::Latest => "latest",
        }
    }

    fn position(self) -> pb::IteratorType {
        match self {
            GroupStart::TrimHorizon => pb::IteratorType::TrimHorizon,
            GroupStart::Latest => pb::IteratorType::Latest,
        }
    }
}

/// A `[[groups]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Group name.
    pub name: String,
    /// The declared stream it consumes.
    pub stream: String,
    /// Where it starts; fixed when the group is created.
    pub start: GroupStart,
    /// For the consumer: records per poll.
    pub batch_size: Option<u32>,
    /// For the consumer: the declared stream that takes records it cannot handle.
    pub dead_letter: Option<String>,
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawStack {
    #[serde(default)]
    streams: Vec<RawStream>,
    #[serde(default)]
    groups: Vec<RawGroup>,
    #[serde(default)]
    principals: Vec<RawPrincipal>,
    #[serde(default)]
    services: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawStream {
    name: String,
    shards: u32,
    retention_hours: Option<u32>,
    max_record_bytes: Option<u32>,
    #[serde(default)]
    quotas: QuotaSpec,
    partition_key: Option<String>,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPrincipal {
    name: String,
    description: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGroup {
    name: String,
    stream: String,
    start: Option<String>,
    batch_size: Option<u32>,
    dead_letter: Option<String>,
}

impl Stack {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Self> {
        let source = std::fs::read_to_string(file).map_err(|e| Error::InvalidStack {
            file: file.display().to_string(),
            line: 0,
            key: String::new(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(file, source)
    }

    /// Checks `source`, the text of `file`.
    pub fn parse(file: &Path, source: String) -> Result<Self> {
        let raw: RawStack = match toml::from_str(&source) {
            Ok(raw) => raw,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                // toml's message may span lines (a snippet); the first says what is wrong.
                let message = e.message().lines().next().unwrap_or("invalid TOML").trim().to_string();
                return Err(error_at(file, &source, span.start, key_at(&source, span.start), message));
            }
        };
        // Checks below name a key that exists; its line comes from the document.
        let bad = |key: String, message: String| {
            let offset = span_of(&source, &key).map_or(0, |s| s.start);
            error_at(file, &source, offset, key, message)
        };

        let mut streams = Vec::new();
        let mut names = BTreeSet::new();
        for (i, t) in raw.streams.into_iter().enumerate() {
            let at = |key: &str| format!("streams[{i}].{key}");
            check_name(&t.name).map_err(|m| bad(at("name"), m))?;
            if !names.insert(t.name.clone()) {
                return Err(bad(at("name"), format!("stream {:?} is declared twice", t.name)));
            }
            if t.shards == 0 {
                return Err(bad(at("shards"), "must be at least 1".into()));
            }
            if let Some(h) = t.retention_hours {
                in_range(h, &RETENTION_HOURS).map_err(|m| bad(at("retentionHours"), m))?;
            }
            if let Some(b) = t.max_record_bytes {
                in_range(b, &MAX_RECORD_BYTES).map_err(|m| bad(at("maxRecordBytes"), m))?;
            }
            for (key, value) in t.quotas.fields() {
                if value == Some(0) {
                    return Err(bad(at(&format!("quotas.{key}")), "must be positive".into()));
                }
            }
            if let (Some(max), Some(rate)) = (t.max_record_bytes, t.quotas.write_bytes_per_sec)
                && u64::from(max) > rate
            {
                return Err(bad(
                    at("maxRecordBytes"),
                    format!(
                        "{max} is more than quotas.writeBytesPerSec = {rate}: such a record could never be admitted"
                    ),
                ));
            }
            streams.push(StreamSpec {
                name: t.name,
                shards: t.shards,
                retention_hours: t.retention_hours,
                max_record_bytes: t.max_record_bytes,
                quotas: t.quotas,
                partition_key: t.partition_key,
                events: t.events,
            });
        }

        let mut groups = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, t) in raw.groups.into_iter().enumerate() {
            let at = |key: &str| format!("groups[{i}].{key}");
            check_name(&t.name).map_err(|m| bad(at("name"), m))?;
            let declared = |stream: &str, key: &str| {
                if names.contains(stream) {
                    Ok(())
                } else {
                    Err(bad(at(key), format!("{stream:?} is not a stream declared in [[streams]]")))
                }
            };
            declared(&t.stream, "stream")?;
            if !seen.insert((t.stream.clone(), t.name.clone())) {
                return Err(bad(at("name"), format!("group {:?} on {:?} is declared twice", t.name, t.stream)));
            }
            let start = match t.start.as_deref() {
                None | Some("trim-horizon") => GroupStart::TrimHorizon,
                Some("latest") => GroupStart::Latest,
                Some(other) => {
                    return Err(bad(at("start"), format!("{other:?} must be \"trim-horizon\" or \"latest\"")));
                }
            };
            if let Some(b) = t.batch_size {
                in_range(b, &BATCH_SIZE).map_err(|m| bad(at("batchSize"), m))?;
            }
            if let Some(d) = &t.dead_letter {
                declared(d, "deadLetter")?;
                if *d == t.stream {
                    return Err(bad(at("deadLetter"), "must not be the stream the group consumes".into()));
                }
            }
            groups.push(GroupSpec {
                name: t.name,
                stream: t.stream,
                start,
                batch_size: t.batch_size,
                dead_letter: t.dead_letter,
            });
        }
        let mut principals = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, t) in raw.principals.into_iter().enumerate() {
            let at = |key: &str| format!("principals[{i}].{key}");
            let name_ok = (1..=128).contains(&t.name.len())
                && t.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b));
            if !name_ok {
                return Err(bad(at("name"), format!("{:?} must be 1..=128 of [a-zA-Z0-9_.@-]", t.name)));
            }
            if !seen.insert(t.name.clone()) {
                return Err(bad(at("name"), format!("principal {:?} is declared twice", t.name)));
            }
            let mut grants = Vec::new();
            for (key, deny, entries) in [("allow", false, &t.allow), ("deny", true, &t.deny)] {
                for entry in entries {
                    // The broker checks the action and resource; here only the shape.
                    let words: Vec<&str> = entry.split_whitespace().collect();
                    let [action, resource] = words[..] else {
                        return Err(bad(
                            at(key),
                            format!("{entry:?} must be \"<action> <resource>\", e.g. \"record:put stream:orders\""),
                        ));
                    };
                    grants.push(GrantSpec {
                        principal: t.name.clone(),
                        deny,
                        action: action.to_string(),
                        resource: resource.to_string(),
                    });
                }
            }
            principals.push(PrincipalSpec { name: t.name, description: t.description.unwrap_or_default(), grants });
        }
        Ok(Self { file: file.to_path_buf(), streams, groups, principals, services: raw.services, source })
    }

    /// The `[services.<name>]` table, for the service to read its settings from.
    pub fn service(&self, name: &str) -> Option<&toml::Table> {
        self.services.get(name)
    }

    /// The stream named `name`, if declared.
    pub fn stream(&self, name: &str) -> Option<&StreamSpec> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// The group `name` on `stream`, if declared.
    pub fn group(&self, stream: &str, name: &str) -> Option<&GroupSpec> {
        self.groups.iter().find(|g| g.stream == stream && g.name == name)
    }

    /// An error about `key` (a dotted path with `[i]` indexes, e.g.
    /// `groups[0].batchSize` or `services.order-service.orderStreamName`),
    /// naming this file and the key's line, for checks made by the stack's users.
    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        let (key, message) = (key.to_string(), message.into());
        match span_of(&self.source, &key) {
            Some(span) => error_at(&self.file, &self.source, span.start, key, message),
            None => Error::InvalidStack { file: self.file.display().to_string(), line: 0, key, message },
        }
    }
}

fn in_range(v: u32, range: &RangeInclusive<u32>) -> std::result::Result<(), String> {
    if range.contains(&v) { Ok(()) } else { Err(format!("must be {}..={}, got {v}", range.start(), range.end())) }
}

/// The broker's rule for stream and group names.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("must be 1..=128 characters, got {}", name.len()));
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        Some(c) => Err(format!("{name:?}: character {c:?} is not in [a-zA-Z0-9_.-]")),
        None => Ok(()),
    }
}

fn error_at(file: &Path, source: &str, offset: usize, key: String, message: String) -> Error {
    let offset = offset.min(source.len());
    let line = source.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
    Error::InvalidStack { file: file.display().to_string(), line, key, message }
}

/// The dotted key path of the innermost key or value at `offset`, or "" when
/// the document does not parse or nothing is there.
fn key_at(source: &str, offset: usize) -> String {
    let Ok(doc) = toml::de::DeTable::parse(source) else { return String::new() };
    let mut path = Vec::new();
    if find_in_table(doc.get_ref(), offset, &mut path) { path.concat() } else { String::new() }
}

fn find_in_table(t: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (k, v) in t {
        path.push(if path.is_empty() { k.get_ref().to_string() } else { format!(".{}", k.get_ref()) });
        // Array-of-tables entries lie anywhere in the file: look inside every value,
        // whatever the span recorded for the key's value as a whole.
        if find_in_value(v, offset, path) || k.span().contains(&offset) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(v: &Spanned<toml::de::DeValue<'_>>, offset: usize, path: &mut Vec<String>) -> bool {
    match v.get_ref() {
        toml::de::DeValue::Table(t) => find_in_table(t, offset, path) || v.span().contains(&offset),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(format!("[{i}]"));
                if find_in_value(item, offset, path) {
                    return true;
                }
                path.pop();
            }
            v.span().contains(&offset)
        }
        _ => v.span().contains(&offset),
    }
}

/// The span of the value at a dotted key path (see [`Stack::error`]).
fn span_of(source: &str, key: &str) -> Option<Range<usize>> {
    let doc = toml::de::DeTable::parse(source).ok()?;
    let mut parts = key.split('.');
    let first = parts.next()?;
    let mut current = lookup(doc.get_ref(), first)?;
    for part in parts {
        let t = current.get_ref().as_table()?;
        current = lookup(t, part)?;
    }
    Some(current.span())
}

/// `name` or `name[i]` in a table.
fn lookup<'a, 'i>(t: &'a toml::de::DeTable<'i>, part: &str) -> Option<&'a Spanned<toml::de::DeValue<'i>>> {
    let (name, index) = match part.split_once('[') {
        Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
        None => (part, None),
    };
    let (_, value) = t.iter().find(|(k, _)| k.get_ref() == name)?;
    match index {
        None => Some(value),
        Some(i) => value.get_ref().as_array()?.get(i),
    }
}

// ---------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------

/// One change deploy makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create a declared stream that does not exist.
    CreateStream(StreamSpec),
    /// Change a stream's retention.
    UpdateRetention {
        /// Stream name.
        stream: String,
        /// The broker's value.
        from: u32,
        /// The file's value.
        to: u32,
    },
    /// Change a stream's quotas (the fields the file sets and the broker differs in).
    UpdateQuotas {
        /// Stream name.
        stream: String,
        /// The broker's values of the changed fields.
        from: QuotaSpec,
        /// The file's values of the changed fields; the others are `None`.
        to: QuotaSpec,
    },
    /// Change a stream's open shard count with UpdateShardCount (uniform
    /// scaling), in `steps`: each at most doubles or halves the open shards.
    Rescale {
        /// Stream name.
        stream: String,
        /// The broker's open shards.
        from: u32,
        /// The file's shard count, the last step.
        steps: Vec<u32>,
    },
    /// Create a declared group that does not exist.
    CreateGroup(GroupSpec),
    /// Create a declared principal that does not exist.
    CreatePrincipal {
        /// Its name.
        name: String,
        /// Its description.
        description: String,
    },
    /// Add a declared grant the broker does not have.
    AddGrant(GrantSpec),
}

/// The UpdateShardCount targets from `from` to `to` open shards, each at
/// most double or half the one before (AWS's limit per call).
pub fn rescale_steps(from: u32, to: u32) -> Vec<u32> {
    let mut steps = Vec::new();
    let mut at = from.max(1);
    while at != to {
        at = if to > at { to.min(at.saturating_mul(2)) } else { to.max(at.div_ceil(2)) };
        steps.push(at);
    }
    steps
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateStream(s) => {
                write!(f, "+ stream {}: {} shard{}", s.name, s.shards, if s.shards == 1 { "" } else { "s" })?;
                if let Some(h) = s.retention_hours {
                    write!(f, ", retentionHours {h}")?;
                }
                if let Some(b) = s.max_record_bytes {
                    write!(f, ", maxRecordBytes {b}")?;
                }
                for (key, v) in s.quotas.fields() {
                    if let Some(v) = v {
                        write!(f, ", quotas.{key} {v}")?;
                    }
                }
                Ok(())
            }
            Change::UpdateRetention { stream, from, to } => {
                write!(f, "~ stream {stream}: retentionHours {from} -> {to}")
            }
            Change::UpdateQuotas { stream, from, to } => {
                write!(f, "~ stream {stream}:")?;
                let mut sep = " ";
                for ((key, old), (_, new)) in from.fields().into_iter().zip(to.fields()) {
                    if let (Some(old), Some(new)) = (old, new) {
                        write!(f, "{sep}quotas.{key} {old} -> {new}")?;
                        sep = ", ";
                    }
                }
                Ok(())
            }
            Change::Rescale { stream, from, steps } => {
                let path: Vec<String> = steps.iter().map(u32::to_string).collect();
                write!(f, "~ stream {stream}: shards {from} -> {} (UpdateShardCount)", path.join(" -> "))
            }
            Change::CreateGroup(g) => write!(f, "+ group {} on {}: start {}", g.name, g.stream, g.start.as_str()),
            Change::CreatePrincipal { name, .. } => write!(f, "+ principal {name}"),
            Change::AddGrant(g) => write!(f, "+ grant {g}"),
        }
    }
}

/// What deploy would change, and what it cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Changes, streams before groups.
    pub changes: Vec<Change>,
    /// Differences deploy cannot apply, each saying why and what to do;
    /// while there is one, deploy applies nothing.
    pub refused: Vec<String>,
}

impl Plan {
    /// Whether the broker matches the file.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.refused.is_empty()
    }

    /// `{"changes": [...], "refused": [...]}`, each entry the line [`Display`](fmt::Display) prints.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "changes": self.changes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "refused": self.refused,
        })
    }
}

impl fmt::Display for Plan {
    /// One line per change (`+` create, `~` update), then one per refusal (`!`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            writeln!(f, "{c}")?;
        }
        for r in &self.refused {
            writeln!(f, "! {r}")?;
        }
        Ok(())
    }
}

/// Compares `stack` with the broker. Changes nothing.
pub async fn plan(admin: &Admin, stack: &Stack) -> Result<Plan> {
    let existing: BTreeSet<String> = admin.list_streams().await?.into_iter().collect();
    let mut plan = Plan::default();
    for spec in &stack.streams {
        if !existing.contains(&spec.name) {
            plan.changes.push(Change::CreateStream(spec.clone()));
            continue;
        }
        let live = admin.describe_stream(&spec.name).await?;
        // Closed parents of a reshard are listed until retention removes them; only open shards count.
        let shards = live.open_shard_count;
        if shards != spec.shards {
            plan.changes.push(Change::Rescale {
                stream: spec.name.clone(),
                from: shards,
                steps: rescale_steps(shards, spec.shards),
            });
        }
        if let Some(max) = spec.max_record_bytes
            && max != live.max_record_bytes
        {
            plan.refused.push(format!(
                "stream {}: maxRecordBytes is {max} in the file and {} on the broker; it is fixed when the stream \
                 is created (remove the stream and deploy again to change it)",
                spec.name, live.max_record_bytes
            ));
        }
        if let Some(h) = spec.retention_hours
            && h != live.retention_hours
        {
            plan.changes.push(Change::UpdateRetention { stream: spec.name.clone(), from: live.retention_hours, to: h });
        }
        let current = QuotaSpec::from_pb(&live.quotas.unwrap_or_default());
        let (mut from, mut to) = (QuotaSpec::default(), QuotaSpec::default());
        let pairs = [
            (
                spec.quotas.write_records_per_sec,
                current.write_records_per_sec,
                &mut from.write_records_per_sec,
                &mut to.write_records_per_sec,
            ),
            (
                spec.quotas.write_bytes_per_sec,
                current.write_bytes_per_sec,
                &mut from.write_bytes_per_sec,
                &mut to.write_bytes_per_sec,
            ),
            (
                spec.quotas.read_calls_per_sec,
                current.read_calls_per_sec,
                &mut from.read_calls_per_sec,
                &mut to.read_calls_per_sec,
            ),
            (
                spec.quotas.read_bytes_per_sec,
                current.read_bytes_per_sec,
                &mut from.read_bytes_per_sec,
                &mut to.read_bytes_per_sec,
            ),
        ];
        let mut differs = false;
        for (wanted, live, from, to) in pairs {
            if let Some(w) = wanted
                && live != Some(w)
            {
                (*from, *to, differs) = (Some(live.unwrap_or(0)), Some(w), true);
            }
        }
        if differs {
            plan.changes.push(Change::UpdateQuotas { stream: spec.name.clone(), from, to });
        }
    }
    let live_groups: BTreeSet<(String, String)> =
        admin.list_groups(None).await?.into_iter().map(|g| (g.stream_name, g.group_name)).collect();
    for spec in &stack.groups {
        if !live_groups.contains(&(spec.stream.clone(), spec.name.clone())) {
            plan.changes.push(Change::CreateGroup(spec.clone()));
            continue;
        }
        let live = admin.describe_group(&spec.stream, &spec.name).await?;
        let position = live.start.map_or(pb::IteratorType::TrimHorizon as i32, |s| s.position);
        let live_start = pb::IteratorType::try_from(position).unwrap_or(pb::IteratorType::Unspecified);
        let same = live_start == spec.start.position()
            || (spec.start == GroupStart::TrimHorizon && live_start == pb::IteratorType::Unspecified);
        if !same {
            plan.refused.push(format!(
                "group {} on {}: start is {} in the file and {} on the broker; it is fixed when the group is \
                 created (delete the group, which loses its checkpoints, and deploy again to change it)",
                spec.name,
                spec.stream,
                spec.start.as_str(),
                live_start.as_str_name().trim_start_matches("ITERATOR_TYPE_").to_ascii_lowercase().replace('_', "-")
            ));
        }
    }
    Ok(plan)
}

/// Compares the file's principals and grants with the broker (needs
/// `admin:auth`); nothing to compare, and no call, when the file declares
/// no principals. Changes nothing.
pub async fn plan_access(admin: &Admin, stack: &Stack) -> Result<Vec<Change>> {
    if stack.principals.is_empty() {
        return Ok(Vec::new());
    }
    let access = admin.access();
    let live: BTreeSet<String> = access.list_principals().await?.into_iter().map(|p| p.name).collect();
    let grants: BTreeSet<GrantSpec> = access.list_grants(None).await?.iter().map(GrantSpec::of_pb).collect();
    let mut changes = Vec::new();
    for p in &stack.principals {
        if !live.contains(&p.name) {
            changes.push(Change::CreatePrincipal { name: p.name.clone(), description: p.description.clone() });
        }
        changes.extend(p.grants.iter().filter(|g| !grants.contains(*g)).cloned().map(Change::AddGrant));
    }
    Ok(changes)
}

/// [`plan`] and then [`plan_access`]: everything the file declares.
pub async fn plan_all(admin: &Admin, stack: &Stack) -> Result<Plan> {
    let mut plan = plan(admin, stack).await?;
    plan.changes.extend(plan_access(admin, stack).await?);
    Ok(plan)
}

/// Applies `plan` in order (streams before the groups on them). Refuses,
/// changing nothing, while the plan has a refused difference.
pub async fn apply(admin: &Admin, stack: &Stack, plan: &Plan) -> Result<()> {
    if !plan.refused.is_empty() {
        return Err(Error::StackRefused(format!(
            "{}: nothing was changed, because {}",
            stack.file.display(),
            plan.refused.join("; and ")
        )));
    }
    for change in &plan.changes {
        match change {
            Change::CreateStream(s) => {
                let q = s.quotas;
                let req = pb::CreateStreamRequest {
                    stream_name: s.name.clone(),
                    shard_count: s.shards,
                    retention_hours: s.retention_hours,
                    quota_overrides: (q != QuotaSpec::default()).then(|| q.to_pb()),
                    max_record_bytes: s.max_record_bytes,
                };
                admin.create_stream(req).await?;
            }
            Change::UpdateRetention { stream, to, .. } => {
                admin.update_retention(stream, *to).await?;
            }
            Change::UpdateQuotas { stream, to, .. } => {
                admin.update_quotas(stream, to.to_pb()).await?;
            }
            Change::Rescale { stream, steps, .. } => {
                for &target in steps {
                    admin.update_shard_count(stream, target).await?;
                }
            }
            Change::CreateGroup(g) => create_group(admin, g).await?,
            Change::CreatePrincipal { name, description } => {
                admin.access().create_principal(name, description).await?;
            }
            Change::AddGrant(g) => {
                admin.access().add_grant(g.to_pb()).await?;
            }
        }
    }
    Ok(())
}

/// Creates a group by joining it at its start position and leaving at once
/// (the broker creates groups on their first join; there is no other way).
async fn create_group(admin: &Admin, g: &GroupSpec) -> Result<()> {
    let joined = admin
        .groups()
        .join_group(pb::JoinGroupRequest {
            stream_name: g.stream.clone(),
            group_name: g.name.clone(),
            start: Some(pb::GroupStart { position: g.start.position() as i32, timestamp_ms: None }),
            client_id: DEPLOY_CLIENT_ID.into(),
        })
        .await?
        .into_inner();
    admin
        .groups()
        .leave_group(pb::LeaveGroupRequest {
            stream_name: g.stream.clone(),
            group_name: g.name.clone(),
            member_id: joined.member_id,
        })
        .await?;
    Ok(())
}

/// Plans, applies, and checks that the broker now matches the file; returns
/// what was applied (empty when the broker already matched).
pub async fn deploy(admin: &Admin, stack: &Stack) -> Result<Plan> {
    let planned = plan_all(admin, stack).await?;
    apply(admin, stack, &planned).await?;
    let after = plan_all(admin, stack).await?;
    if !after.is_empty() {
        return Err(Error::StackRefused(format!(
            "{}: the broker still differs after deploying (did something else change it meanwhile?):\n{after}",
            stack.file.display()
        )));
    }
    Ok(planned)
}

// ---------------------------------------------------------------------------
// Removal
// ---------------------------------------------------------------------------

/// A declared stream that removal deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRemoval {
    /// Stream name.
    pub name: String,
    /// Records it still stores.
    pub records: u64,
    /// Failed shards, whose records cannot be counted.
    pub failed_shards: Vec<String>,
    /// Every group on it (deleted with it), declared or not.
    pub groups: Vec<String>,
}

/// What removal would delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    /// Declared streams that exist, in file order.
    pub streams: Vec<StreamRemoval>,
    /// Declared streams and groups the broker does not have.
    pub absent: Vec<String>,
    /// Why removal refuses (records, failed shards, undeclared groups or
    /// live members without `force`); while there is one, nothing is deleted.
    pub refused: Vec<String>,
}

impl Removal {
    /// Whether there is nothing to delete.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// `{"delete": [{"stream", "records", "groups"}], "absent": [...], "refused": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "delete": self.streams.iter().map(|s| serde_json::json!({
                "stream": s.name, "records": s.records, "groups": s.groups,
            })).collect::<Vec<_>>(),
            "absent": self.absent,
            "refused": self.refused,
        })
    }
}

impl fmt::Display for Removal {
    /// `-` per stream deleted, `=` per declared resource already absent, `!` per refusal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.streams {
            write!(f, "- stream {}: {} record{}", s.name, s.records, if s.records == 1 { "" } else { "s" })?;
            if !s.groups.is_empty() {
                write!(f, ", groups {}", s.groups.join(", "))?;
            }
            writeln!(f)?;
        }
        for a in &self.absent {
            writeln!(f, "= {a}: not on the broker")?;
        }
        for r in &self.refused {
            writeln!(f, "! {r}")?;
        }
        Ok(())
    }
}

/// What removing `stack` would delete; with `force`, records, undeclared
/// groups and live members do not stop it. Changes nothing.
pub async fn plan_removal(admin: &Admin, stack: &Stack, force: bool) -> Result<Removal> {
    let existing: BTreeSet<String> = admin.list_streams().await?.into_iter().collect();
    let mut removal = Removal::default();
    for spec in &stack.streams {
        if !existing.contains(&spec.name) {
            removal.absent.push(format!("stream {}", spec.name));
            continue;
        }
        let live = admin.describe_stream(&spec.name).await?;
        let records = live.shards.iter().map(|s| s.records_stored).sum();
        let failed_shards: Vec<String> = live
            .shards
            .iter()
            .filter(|s| s.shard_status == pb::ShardStatus::Failed as i32)
            .map(|s| s.shard_id.clone())
            .collect();
        let mut groups = Vec::new();
        for g in admin.list_groups(Some(&spec.name)).await? {
            let members = admin.describe_group(&spec.name, &g.group_name).await?.members.len();
            if !force && stack.group(&spec.name, &g.group_name).is_none() {
                removal.refused.push(format!(
                    "stream {}: group {} is not declared in {} and would be deleted with the stream",
                    spec.name,
                    g.group_name,
                    stack.file.display()
                ));
            }
            if !force && members > 0 {
                removal.refused.push(format!(
                    "stream {}: group {} has {members} live member{}; stop its consumers first",
                    spec.name,
                    g.group_name,
                    if members == 1 { "" } else { "s" }
                ));
            }
            groups.push(g.group_name);
        }
        if !force && records > 0 {
            removal.refused.push(format!("stream {} still has {records} records", spec.name));
        }
        if !force && !failed_shards.is_empty() {
            removal.refused.push(format!(
                "stream {}: shard{} {} failed, so its records cannot be counted",
                spec.name,
                if failed_shards.len() == 1 { "" } else { "s" },
                failed_shards.join(", ")
            ));
        }
        removal.streams.push(StreamRemoval { name: spec.name.clone(), records, failed_shards, groups });
    }
    for g in &stack.groups {
        let on_stream = removal.streams.iter().find(|s| s.name == g.stream);
        if on_stream.is_none_or(|s| !s.groups.contains(&g.name)) {
            removal.absent.push(format!("group {} on {}", g.name, g.stream));
        }
    }
    if !removal.refused.is_empty() {
        removal.refused.push("force (--force) deletes anyway".into());
    }
    Ok(removal)
}

/// Deletes the streams of `removal` (their groups go with them). Refuses,
/// deleting nothing, while the removal has a refusal.
pub async fn remove(admin: &Admin, stack: &Stack, removal: &Removal) -> Result<()> {
    if !removal.refused.is_empty() {
        return Err(Error::StackRefused(format!(
            "{}: nothing was deleted, because {}",
            stack.file.display(),
            removal.refused.join("; ")
        )));
    }
    for s in &removal.streams {
        match admin.delete_stream(&s.name).await {
            // Deleted meanwhile by someone else: what removal wanted.
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
