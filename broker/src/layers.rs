//! Layered configuration, the one copy the broker and the order service
//! share: built-in defaults, then a TOML file, then environment variables
//! with a prefix, then (the caller's) flags.
//!
//! Environment variables name a key by its path after the prefix, with
//! `__` between table and key; the caller says how a path part becomes a
//! key (`DURABILITY__MODE` → `durability.mode` for the broker,
//! `ORDER_STREAM_NAME` → `orderStreamName` for the order service). A value
//! is read as TOML when it parses as one (numbers, booleans, arrays) and as
//! a string otherwise.
//!
//! **Every error says where the bad value came from**: the variable and its
//! value (`STREAM_BROKER_DURABILITY__MODE=sometimes: durability.mode: unknown
//! variant `sometimes`, expected one of `always`, `interval`, `never``), or
//! the file and line (`/etc/stream-broker.toml:12: …`). Each layer is checked
//! as it is applied, so a type error is blamed on the layer that brought it;
//! range checks that run after loading ([`ConfigError::invalid`]) are
//! blamed through [`Origins`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

/// A configuration error, naming the key and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {}", self.describe())]
pub struct ConfigError {
    /// The full key (`durability.mode`), when one is to blame.
    pub key: Option<String>,
    /// Where the value came from: `NAME=value` or `path:line`; none for a default.
    pub origin: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A value that is out of range or inconsistent; the loader adds its origin.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: Some(key.into()), origin: None, message: message.into() }
    }

    /// An error about the configuration as a whole (a file that cannot be read).
    pub fn other(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: None, origin: Some(origin.into()), message: message.into() }
    }

    /// Names where the key's value came from, if `origins` knows.
    pub fn blame(mut self, origins: &Origins) -> Self {
        if self.origin.is_none()
            && let Some(key) = &self.key
        {
            self.origin = origins.of(key).map(str::to_string);
        }
        self
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(o) = &self.origin {
            out.push_str(o);
            out.push_str(": ");
        }
        if let Some(k) = &self.key {
            out.push_str(k);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

/// Where each key set by a file or a variable came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(BTreeMap<String, String>);

impl Origins {
    /// `NAME=value` or `path:line` for `key` (dotted), or for the nearest
    /// table above it that a layer set.
    pub fn of(&self, key: &str) -> Option<&str> {
        let mut k = key;
        loop {
            if let Some(o) = self.0.get(k) {
                return Some(o);
            }
            k = k.rsplit_once('.')?.0;
        }
    }
}

/// How to read a configuration: the variables' prefix, variables under it
/// that are not keys (`STREAM_BROKER_CONFIG`), and how a path part of a
/// variable's name becomes a key.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    /// `STREAM_BROKER_`.
    pub prefix: &'a str,
    /// Names after the prefix that are not configuration keys (`CONFIG`).
    pub not_keys: &'a [&'a str],
    /// `DURABILITY` → `durability`, or `ORDER_STREAM_NAME` → `orderStreamName`.
    pub key_name: fn(&str) -> String,
}

/// Loads `T`: its defaults (serde's), `file`, then the variables of `env`
/// under the layout's prefix. Returns the value and where each set key came
/// from, for [`ConfigError::blame`].
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    layout: Layout<'_>,
) -> Result<(T, Origins), ConfigError> {
    load_over(toml::Table::new(), file, env, layout)
}

/// Like [`load`], with `base` (a table from elsewhere, such as a stack
/// file's section for this program) between the defaults and `file`.
pub fn load_over<T: DeserializeOwned>(
    base: toml::Table,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    layout: Layout<'_>,
) -> Result<(T, Origins), ConfigError> {
    let mut origins = Origins::default();
    let mut table = base;
    if let Some(path) = file {
        merge(&mut table, read_file::<T>(path, &mut origins)?);
    }
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.strip_prefix(layout.prefix).is_some_and(|rest| !layout.not_keys.contains(&rest)))
        .collect();
    // One order whatever the environment's, so the same setup fails the same way.
    vars.sort();
    for (name, raw) in vars {
        let rest = &name[layout.prefix.len()..];
        let path: Vec<String> = rest.split("__").map(layout.key_name).collect();
        let key = path.join(".");
        let origin = format!("{name}={raw}");
        set_path(&mut table, &path, parse_env_value(&raw)).map_err(|m| ConfigError {
            key: Some(key.clone()),
            origin: Some(origin.clone()),
            message: m,
        })?;
        // Checked now, so that a wrong type is blamed on this variable.
        toml::Value::Table(table.clone()).try_into::<T>().map_err(|e: toml::de::Error| ConfigError {
            key: Some(key.clone()),
            origin: Some(origin.clone()),
            message: e.message().to_string(),
        })?;
        origins.0.insert(key, origin);
    }
    // Without a source text there is no span; the full message names the
    // table the bad key is in ("... in `smtp`").
    let value = toml::Value::Table(table).try_into::<T>().map_err(|e: toml::de::Error| ConfigError {
        key: None,
        origin: None,
        message: e.to_string().split_whitespace().collect::<Vec<_>>().join(" "),
    })?;
    Ok((value, origins))
}

/// Parses the file (its errors name the line), checks it on its own, and
/// records the line of every key it sets.
fn read_file<T: DeserializeOwned>(path: &Path, origins: &mut Origins) -> Result<toml::Table, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::other(&shown, format!("cannot read: {e}")))?;
    let at = |e: &toml::de::Error| match e.span() {
        Some(span) => format!("{shown}:{}", line_of(&text, span.start)),
        None => shown.clone(),
    };
    let spanned = toml::de::DeTable::parse(&text).map_err(|e| ConfigError {
        key: None,
        origin: Some(at(&e)),
        message: e.message().to_string(),
    })?;
    record_lines(spanned.get_ref(), "", &text, &shown, origins);
    toml::from_str::<T>(&text).map_err(|e| ConfigError {
        key: None,
        origin: Some(at(&e)),
        message: e.message().to_string(),
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError {
        key: None,
        origin: Some(at(&e)),
        message: e.message().to_string(),
    })
}

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn record_lines(table: &toml::de::DeTable<'_>, prefix: &str, text: &str, shown: &str, origins: &mut Origins) {
    for (key, value) in table.iter() {
        let full = if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
        origins.0.insert(full.clone(), format!("{shown}:{}", line_of(text, key.span().start)));
        if let toml::de::DeValue::Table(t) = value.get_ref() {
            record_lines(t, &full, text, shown, origins);
        }
    }
}

/// An environment value is read as a TOML value when it is one (numbers,
/// booleans, arrays), and as a string otherwise.
fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut t = table;
    for p in parents {
        let entry = t.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| format!("{p} is not a table"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// Overlays `top` on `base`, table by table.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Conf {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        count: u32,
        on: bool,
    }

    const LAYOUT: Layout<'static> =
        Layout { prefix: "T_", not_keys: &["CONFIG"], key_name: |s: &str| s.to_ascii_lowercase() };

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order_and_remember_their_origin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "name = \"file\"\n\n[inner]\ncount = 3\n").expect("write");
        let (c, origins): (Conf, _) =
            load(Some(&file), env(&[("T_INNER__ON", "true"), ("T_CONFIG", "x"), ("OTHER", "y")]), LAYOUT)
                .expect("load");
        assert_eq!(c, Conf { name: "file".into(), inner: Inner { count: 3, on: true } });
        let shown = file.display().to_string();
        assert_eq!(origins.of("inner.count"), Some(format!("{shown}:4").as_str()));
        assert_eq!(origins.of("inner.on"), Some("T_INNER__ON=true"));
        assert_eq!(origins.of("nothing"), None);
        let e = ConfigError::invalid("inner.count", "must be even").blame(&origins);
        assert_eq!(e.to_string(), format!("configuration: {shown}:4: inner.count: must be even"));
    }

    #[test]
    fn errors_name_the_variable_or_the_file_line() {
        let e = load::<Conf>(None, env(&[("T_INNER__COUNT", "lots")]), LAYOUT).expect_err("not a number");
        assert_eq!(e.origin.as_deref(), Some("T_INNER__COUNT=lots"));
        assert_eq!(e.key.as_deref(), Some("inner.count"));
        let e = load::<Conf>(None, env(&[("T_NO_SUCH", "1")]), LAYOUT).expect_err("unknown key");
        assert!(e.to_string().contains("T_NO_SUCH=1") && e.to_string().contains("no_such"), "{e}");

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "name = \"x\"\n[inner]\ncount = \"three\"\n").expect("write");
        let e = load::<Conf>(Some(&file), env(&[]), LAYOUT).expect_err("a string");
        assert_eq!(e.origin, Some(format!("{}:3", file.display())), "{e}");
        std::fs::write(&file, "name = \n").expect("write");
        let e = load::<Conf>(Some(&file), env(&[]), LAYOUT).expect_err("syntax");
        assert_eq!(e.origin, Some(format!("{}:1", file.display())), "{e}");
    }
}
