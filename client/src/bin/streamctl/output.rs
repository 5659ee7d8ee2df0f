//! Output helpers every command shares: aligned tables, JSON text, enum
//! names without their proto prefixes, and the escapes of `--format` and
//! `--key-sep`.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use client::types as pb;
use serde::Serialize;

use crate::CliError;

/// Writes `text` to stdout.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Says on stderr, for a person at a terminal, that a listing is empty.
pub fn note_empty(what: &str) {
    if std::io::stdout().is_terminal() {
        eprintln!("no {what}");
    }
}

/// `\n`, `\t` and `\\` escapes; anything else is kept as written.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Left-aligned columns separated by two spaces; no header line when `headers` is empty.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).chain([headers.len()]).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let all = (!header.is_empty()).then_some(&header).into_iter().chain(rows);
    for row in all.clone() {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in all {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                line.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Prints one JSON document and a newline.
pub fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    print(&format!("{value}\n"))
}

/// A record's value for JSON: UTF-8 text as it is, anything else as base64
/// with `value_encoding: "base64"`.
pub fn value_json(data: &[u8]) -> (Cow<'_, str>, Option<&'static str>) {
    match std::str::from_utf8(data) {
        Ok(s) => (Cow::Borrowed(s), None),
        Err(_) => (Cow::Owned(BASE64.encode(data)), Some("base64")),
    }
}

/// A record as `tail` prints it in JSON, fields in this order.
#[derive(Debug, Serialize)]
pub struct RecordJson<'a> {
    shard: &'a str,
    sequence_number: u64,
    timestamp_ms: u64,
    key: &'a str,
    value: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_encoding: Option<&'static str>,
}

impl<'a> RecordJson<'a> {
    pub fn new(shard: &'a str, sequence_number: u64, timestamp_ms: u64, key: &'a str, data: &'a [u8]) -> Self {
        let (value, value_encoding) = value_json(data);
        Self { shard, sequence_number, timestamp_ms, key, value, value_encoding }
    }
}

pub fn status_name(status: i32) -> String {
    pb::StreamStatus::try_from(status)
        .map_or_else(|_| status.to_string(), |s| s.as_str_name().trim_start_matches("STREAM_STATUS_").to_string())
}

pub fn durability_name(mode: i32) -> String {
    pb::DurabilityMode::try_from(mode)
        .map_or_else(|_| mode.to_string(), |m| m.as_str_name().trim_start_matches("DURABILITY_MODE_").to_string())
}

pub fn iterator_name(kind: i32) -> String {
    pb::IteratorType::try_from(kind)
        .map_or_else(|_| kind.to_string(), |k| k.as_str_name().trim_start_matches("ITERATOR_TYPE_").to_string())
}

pub fn shard_status_name(status: i32) -> String {
    pb::ShardStatus::try_from(status)
        .map_or_else(|_| status.to_string(), |s| s.as_str_name().trim_start_matches("SHARD_STATUS_").to_string())
}

pub fn repair_action_name(action: i32) -> String {
    pb::RepairAction::try_from(action)
        .map_or_else(|_| action.to_string(), |a| a.as_str_name().trim_start_matches("REPAIR_ACTION_").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1\nq    22\n");
    }
}
