//! Output helpers every command shares: aligned tables, JSON text, enum
//! names without their proto prefixes, and the escapes of `--format` and
//! `--key-sep`.

use std::io::{IsTerminal, Write};

use client::types as pb;

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

/// A JSON string literal.
pub fn jstr(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A JSON object whose fields keep this order; values are JSON text.
pub fn obj(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", jstr(k))).collect();
    format!("{{{}}}", body.join(","))
}

/// A JSON array of JSON texts.
pub fn arr(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
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

pub fn opt_num(n: Option<u64>) -> String {
    n.map_or_else(|| "null".into(), |n| n.to_string())
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
