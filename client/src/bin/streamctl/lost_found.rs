//! `streamctl lost-found`: the stream directories the broker kept in
//! `lost+found/` instead of deleting them.

use clap::Subcommand;
use client::types as pb;

use serde_json::json;

use crate::output::{note_empty, print, print_json, table};
use crate::time::format_rfc3339;
use crate::{CliError, Global};

#[derive(Debug, Subcommand)]
pub enum LostFoundCmd {
    /// List the kept directories.
    #[command(alias = "ls")]
    List,
    /// Delete one kept directory and its records (needs --yes).
    Purge {
        /// The directory's name, as listed.
        name: String,
        /// Really delete it.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(g: &Global, cmd: LostFoundCmd) -> Result<(), CliError> {
    let admin = g.admin().await?;
    let entry_json = |e: &pb::LostFoundEntry| {
        json!({
            "name": e.name,
            "stream_id": e.stream_id,
            "moved_at_ms": e.moved_at_ms,
            "bytes": e.bytes,
            "shard_ids": e.shard_ids,
        })
    };
    match cmd {
        LostFoundCmd::List => {
            let entries = admin.list_lost_found().await?;
            if g.json {
                return print_json(&json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>() }));
            }
            if entries.is_empty() {
                note_empty("lost+found directories");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.name.clone(),
                        e.stream_id.to_string(),
                        format_rfc3339(e.moved_at_ms),
                        e.shard_ids.len().to_string(),
                        e.bytes.to_string(),
                    ]
                })
                .collect();
            print(&table(&["NAME", "STREAM ID", "MOVED", "SHARDS", "BYTES"], &rows))
        }
        LostFoundCmd::Purge { name, yes } => {
            if !yes {
                let entries = admin.list_lost_found().await?;
                let e = entries
                    .iter()
                    .find(|e| e.name == name)
                    .ok_or_else(|| CliError::usage(format!("{name:?} is not in lost+found (see `lost-found list`)")))?;
                return Err(CliError::failed(format!(
                    "would delete {} ({} bytes in {} shard directories); run again with --yes",
                    e.name,
                    e.bytes,
                    e.shard_ids.len()
                )));
            }
            let e = admin.purge_lost_found(&name).await?;
            if g.json {
                print_json(&json!({ "purged": entry_json(&e) }))
            } else {
                print(&format!("deleted {} ({} bytes)\n", e.name, e.bytes))
            }
        }
    }
}
