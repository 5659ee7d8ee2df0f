//! `streamctl`: the stream-broker command line.
//!
//! ```text
//! streamctl stream create orders --shards 4
//! streamctl stream split orders shardId-000000000001
//! streamctl stream scale orders 8
//! printf 'k1:hello\nk2:world\n' | streamctl put orders -K :
//! streamctl tail orders --format '{key}={value}@{seq}'
//! streamctl group describe orders billing
//! streamctl shard repair orders shardId-000000000001 --truncate-after-damage
//! streamctl lost-found list
//! ```
//!
//! Every command talks to `--broker` (env `STREAM_BROKER_ADDR`). Human output
//! is aligned tables; `--json` prints JSON instead. Failures print one line
//! on stderr, prefixed `streamctl: `, and exit with 2 for usage and invalid
//! arguments (the broker's message names the field), 1 otherwise.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::{Args, CommandFactory, Parser, Subcommand};
use client::types as pb;
use client::{Admin, Connection, Consumer, ConsumerConfig, Position, Producer, ProducerConfig, ShardReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// Command-line client for stream-broker.
#[derive(Debug, Parser)]
#[command(name = "streamctl", version, about, propagate_version = true)]
struct Cli {
    /// Broker address: host:port or http://host:port.
    #[arg(long, global = true, env = "STREAM_BROKER_ADDR", default_value = client::DEFAULT_ADDR, value_name = "ADDR")]
    broker: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete streams.
    #[command(subcommand)]
    Stream(StreamCmd),
    /// Inspect and reset consumer groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Repair failed or damaged shards.
    #[command(subcommand)]
    Shard(ShardCmd),
    /// Stream directories the broker kept instead of deleting them.
    #[command(subcommand, name = "lost-found")]
    LostFound(LostFoundCmd),
    /// Write records read from stdin, one per line.
    Put(PutArgs),
    /// Print a stream's records.
    Tail(TailArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum StreamCmd {
    /// Create a stream.
    Create {
        /// Stream name.
        name: String,
        /// Number of shards.
        #[arg(long, value_name = "N")]
        shards: u32,
        /// How long records are kept (24..=168; the broker's default when unset).
        #[arg(long, value_name = "H")]
        retention_hours: Option<u32>,
        /// Largest record, partition key plus data (the broker's default when unset).
        #[arg(long, value_name = "B")]
        max_record_bytes: Option<u32>,
    },
    /// List streams.
    #[command(alias = "ls")]
    List,
    /// Show a stream's settings and shards.
    Describe {
        /// Stream name.
        name: String,
    },
    /// Delete a stream and its records.
    #[command(alias = "rm")]
    Delete {
        /// Stream name.
        name: String,
    },
    /// Change a stream's retention.
    Retention {
        /// Stream name.
        name: String,
        /// New retention in hours (24..=168).
        hours: u32,
    },
    /// Split an open shard in two; the parent closes and stays readable.
    Split {
        /// Stream name.
        name: String,
        /// The shard to split (shardId-NNNNNNNNNNNN).
        shard: String,
        /// The second child's first hash key (decimal); default: the middle of the shard's range.
        #[arg(long, value_name = "HASH_KEY")]
        at: Option<u128>,
    },
    /// Merge two open shards whose hash ranges adjoin; both close.
    Merge {
        /// Stream name.
        name: String,
        /// The first shard (the child's parent).
        shard: String,
        /// The adjacent shard (the child's adjacent parent).
        adjacent: String,
    },
    /// Rescale to COUNT shards of equal hash ranges (at most double or half per call).
    Scale {
        /// Stream name.
        name: String,
        /// The open shard count wanted.
        count: u32,
    },
}

#[derive(Debug, Subcommand)]
enum ShardCmd {
    /// Show what repairing a shard would do; with --yes, do it. A damaged
    /// log is cut at its first damage (every record from there on is lost);
    /// a failed shard's log is opened again. Without --yes nothing changes
    /// and the exit status is 1.
    Repair {
        /// Stream name.
        stream: String,
        /// Shard id (shardId-NNNNNNNNNNNN).
        shard: String,
        /// Required: accept that records after the first damage are cut.
        #[arg(long, required = true)]
        truncate_after_damage: bool,
        /// Apply the plan (otherwise only print it).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum LostFoundCmd {
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

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// List consumer groups.
    #[command(alias = "ls")]
    List {
        /// Only the groups of this stream.
        #[arg(long, value_name = "S")]
        stream: Option<String>,
    },
    /// Show a group's members, checkpoints and lag.
    Describe {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
    },
    /// Move a group's checkpoints (only while it has no live member).
    Reset {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
        /// trim-horizon, latest, ts:RFC3339 or seq:SHARD_ID:N.
        #[arg(long, value_name = "POSITION", value_parser = parse_reset)]
        to: ResetTo,
    },
}

#[derive(Debug, Args)]
struct PutArgs {
    /// Stream name.
    stream: String,
    /// Split each line into key and value at the first SEP (`\t` for a tab).
    #[arg(short = 'K', long = "key-sep", value_name = "SEP", value_parser = parse_separator)]
    key_sep: Option<String>,
    /// One partition key for every line (default: the line number).
    #[arg(long, value_name = "KEY", conflicts_with = "key_sep")]
    partition_key: Option<String>,
    /// Send at most N records per second.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate: Option<u32>,
}

#[derive(Debug, Args)]
struct TailArgs {
    /// Stream name.
    stream: String,
    /// Read only this shard.
    #[arg(long, value_name = "ID", conflicts_with = "group")]
    shard: Option<String>,
    /// Where to start: trim-horizon, latest, seq:N (per shard) or ts:RFC3339.
    #[arg(long, value_name = "POSITION", default_value = "trim-horizon", value_parser = parse_from)]
    from: StartAt,
    /// Stop after COUNT records in total.
    #[arg(short = 'n', long = "count", value_name = "COUNT")]
    count: Option<u64>,
    /// Keep waiting for new records (otherwise stop at the end of every shard).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Consume as a member of this consumer group, committing after printing.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// json, raw, or a template with {key} {value} {value:hex} {value:base64} {shard} {seq} {ts} and \n \t escapes.
    #[arg(long, value_name = "FORMAT", default_value = "json", value_parser = parse_format)]
    format: Format,
}

/// A `--from` position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartAt {
    TrimHorizon,
    Latest,
    Seq(u64),
    Ts(u64),
}

/// A `group reset --to` position.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ResetTo {
    TrimHorizon,
    Latest,
    Ts(u64),
    Seq { shard: String, seq: u64 },
}

fn parse_from(s: &str) -> Result<StartAt, String> {
    match s {
        "trim-horizon" => Ok(StartAt::TrimHorizon),
        "latest" => Ok(StartAt::Latest),
        _ => {
            if let Some(n) = s.strip_prefix("seq:") {
                n.parse().map(StartAt::Seq).map_err(|_| format!("seq:N needs a sequence number, got {n:?}"))
            } else if let Some(t) = s.strip_prefix("ts:") {
                parse_rfc3339(t).map(StartAt::Ts)
            } else {
                Err("expected trim-horizon, latest, seq:N or ts:RFC3339".into())
            }
        }
    }
}

fn parse_reset(s: &str) -> Result<ResetTo, String> {
    match s {
        "trim-horizon" => Ok(ResetTo::TrimHorizon),
        "latest" => Ok(ResetTo::Latest),
        _ => {
            if let Some(rest) = s.strip_prefix("seq:") {
                let (shard, n) = rest.rsplit_once(':').ok_or("expected seq:SHARD_ID:N")?;
                let seq = n.parse().map_err(|_| format!("seq:SHARD_ID:N needs a sequence number, got {n:?}"))?;
                if shard.is_empty() {
                    return Err("expected seq:SHARD_ID:N".into());
                }
                Ok(ResetTo::Seq { shard: shard.into(), seq })
            } else if let Some(t) = s.strip_prefix("ts:") {
                parse_rfc3339(t).map(ResetTo::Ts)
            } else {
                Err("expected trim-horizon, latest, ts:RFC3339 or seq:SHARD_ID:N".into())
            }
        }
    }
}

fn parse_separator(s: &str) -> Result<String, String> {
    let sep = unescape(s);
    if sep.is_empty() { Err("the separator must not be empty".into()) } else { Ok(sep) }
}

/// `\n`, `\t` and `\\` escapes; anything else is kept as written.
fn unescape(s: &str) -> String {
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

// ---------------------------------------------------------------------------
// Errors and entry point
// ---------------------------------------------------------------------------

/// A failed command: what to print and the exit status.
#[derive(Debug)]
struct CliError {
    /// 2 for usage and invalid arguments, 1 otherwise.
    code: u8,
    message: String,
}

impl CliError {
    fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }

    fn failed(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }
}

impl From<client::Error> for CliError {
    fn from(e: client::Error) -> Self {
        let code = if matches!(e, client::Error::InvalidArgument(_)) { 2 } else { 1 };
        Self { code, message: e.to_string() }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // The reader went away (`streamctl tail | head`): not a failure.
            Self { code: 0, message: String::new() }
        } else {
            Self::failed(format!("output: {e}"))
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streamctl: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    // Background connection tasks have nothing left to do.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.code == 0 => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamctl: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Help and version go to stdout with status 0; usage errors to stderr with 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        eprintln!("streamctl: a subcommand is required");
        let _ = e.print();
        return ExitCode::from(2);
    }
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    eprint!("streamctl: {text}");
    ExitCode::from(2)
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let g = Global { broker: cli.broker, json: cli.json };
    match cli.command {
        Command::Stream(cmd) => stream_cmd(&g, cmd).await,
        Command::Group(cmd) => group_cmd(&g, cmd).await,
        Command::Shard(cmd) => shard_cmd(&g, cmd).await,
        Command::LostFound(cmd) => lost_found_cmd(&g, cmd).await,
        Command::Put(args) => put(&g, args).await,
        Command::Tail(args) => tail(&g, args).await,
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "streamctl", &mut out);
            out.flush()?;
            Ok(())
        }
    }
}

/// Options every command shares.
#[derive(Debug)]
struct Global {
    broker: String,
    json: bool,
}

impl Global {
    async fn channel(&self) -> Result<Connection, CliError> {
        // The error names the address and the cause ("connection refused by 127.0.0.1:7470").
        client::connect(&self.broker).await.map_err(|e| match e {
            client::Error::Unavailable(m) => CliError::failed(format!("cannot reach the broker: {m}")),
            e => CliError::from(e),
        })
    }

    async fn admin(&self) -> Result<Admin, CliError> {
        Ok(Admin::from_channel(self.channel().await?))
    }
}

/// Writes `text` to stdout.
fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Says on stderr, for a person at a terminal, that a listing is empty.
fn note_empty(what: &str) {
    if std::io::stdout().is_terminal() {
        eprintln!("no {what}");
    }
}

// ---------------------------------------------------------------------------
// stream
// ---------------------------------------------------------------------------

async fn stream_cmd(g: &Global, cmd: StreamCmd) -> Result<(), CliError> {
    let admin = g.admin().await?;
    match cmd {
        StreamCmd::Create { name, shards, retention_hours, max_record_bytes } => {
            let req = pb::CreateStreamRequest {
                stream_name: name,
                shard_count: shards,
                retention_hours,
                quota_overrides: None,
                max_record_bytes,
            };
            let d = admin.create_stream(req).await?;
            if g.json {
                print(&format!("{}\n", stream_json(&d)))
            } else {
                print(&format!(
                    "created stream {} with {} shard{}, retention {} h\n",
                    d.stream_name,
                    d.shards.len(),
                    if d.shards.len() == 1 { "" } else { "s" },
                    d.retention_hours
                ))
            }
        }
        StreamCmd::List => {
            let names = admin.list_streams().await?;
            if g.json {
                return print(&format!("{}\n", obj(&[("streams", arr(names.iter().map(|n| jstr(n))))])));
            }
            let mut rows = Vec::new();
            for name in names {
                match admin.describe_stream(&name).await {
                    Ok(d) => {
                        let records: u64 = d.shards.iter().map(|s| s.records_stored).sum();
                        let bytes: u64 = d.shards.iter().map(|s| s.bytes_stored).sum();
                        rows.push(vec![
                            name,
                            status_name(d.status),
                            d.open_shard_count.to_string(),
                            records.to_string(),
                            bytes.to_string(),
                            format!("{} h", d.retention_hours),
                        ]);
                    }
                    // Deleted since it was listed.
                    Err(client::Error::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if rows.is_empty() {
                note_empty("streams");
                return Ok(());
            }
            print(&table(&["NAME", "STATUS", "SHARDS", "RECORDS", "BYTES", "RETENTION"], &rows))
        }
        StreamCmd::Describe { name } => {
            let d = admin.describe_stream(&name).await?;
            if g.json { print(&format!("{}\n", stream_json(&d))) } else { print(&stream_text(&d)) }
        }
        StreamCmd::Delete { name } => {
            admin.delete_stream(&name).await?;
            if g.json {
                print(&format!("{}\n", obj(&[("deleted", jstr(&name))])))
            } else {
                print(&format!("deleted stream {name}\n"))
            }
        }
        StreamCmd::Retention { name, hours } => {
            let d = admin.update_retention(&name, hours).await?;
            if g.json {
                print(&format!("{}\n", stream_json(&d)))
            } else {
                print(&format!("stream {} now keeps records for {} h\n", d.stream_name, d.retention_hours))
            }
        }
        StreamCmd::Split { name, shard, at } => {
            let at = match at {
                Some(at) => at,
                None => {
                    let d = admin.describe_stream(&name).await?;
                    let s = d
                        .shards
                        .iter()
                        .find(|s| s.shard_id == shard)
                        .ok_or_else(|| CliError::failed(format!("stream {name} has no shard {shard}")))?;
                    let range = hash_range(s)?;
                    if range.0 == range.1 {
                        return Err(CliError::usage(format!("{shard} owns a single hash key and cannot be split")));
                    }
                    range.0 + (range.1 - range.0) / 2 + 1
                }
            };
            let d = admin.split_shard(&name, &shard, at).await?;
            reshaped(g, &d, &format!("split {shard} at hash key {at}"))
        }
        StreamCmd::Merge { name, shard, adjacent } => {
            let d = admin.merge_shards(&name, &shard, &adjacent).await?;
            reshaped(g, &d, &format!("merged {shard} and {adjacent}"))
        }
        StreamCmd::Scale { name, count } => {
            let r = admin.update_shard_count(&name, count).await?;
            let d = r.stream.unwrap_or_default();
            reshaped(g, &d, &format!("rescaled from {} to {} shards", r.current_shard_count, r.target_shard_count))
        }
    }
}

fn hash_range(s: &pb::ShardDescription) -> Result<(u128, u128), CliError> {
    let parse =
        |k: &str| k.parse::<u128>().map_err(|_| CliError::failed(format!("bad hash key {k:?} from the broker")));
    Ok((parse(&s.starting_hash_key)?, parse(&s.ending_hash_key)?))
}

/// After a split, merge or scale: the stream, or a line and its open shards.
fn reshaped(g: &Global, d: &pb::StreamDescription, what: &str) -> Result<(), CliError> {
    if g.json {
        return print(&format!("{}\n", stream_json(d)));
    }
    let open: Vec<&str> = d.shards.iter().filter(|s| !s.closed).map(|s| s.shard_id.as_str()).collect();
    print(&format!("{}: {what}; open shards: {}\n", d.stream_name, open.join(", ")))
}

fn status_name(status: i32) -> String {
    pb::StreamStatus::try_from(status)
        .map_or_else(|_| status.to_string(), |s| s.as_str_name().trim_start_matches("STREAM_STATUS_").to_string())
}

fn durability_name(mode: i32) -> String {
    pb::DurabilityMode::try_from(mode)
        .map_or_else(|_| mode.to_string(), |m| m.as_str_name().trim_start_matches("DURABILITY_MODE_").to_string())
}

fn iterator_name(kind: i32) -> String {
    pb::IteratorType::try_from(kind)
        .map_or_else(|_| kind.to_string(), |k| k.as_str_name().trim_start_matches("ITERATOR_TYPE_").to_string())
}

fn opt_num(n: Option<u64>) -> String {
    n.map_or_else(|| "null".into(), |n| n.to_string())
}

/// A JSON string, or null when empty.
fn opt_str(s: &str) -> String {
    if s.is_empty() { "null".into() } else { jstr(s) }
}

fn stream_json(d: &pb::StreamDescription) -> String {
    let q = d.quotas.unwrap_or_default();
    let shards = d.shards.iter().map(|s| {
        obj(&[
            ("shard_id", jstr(&s.shard_id)),
            ("starting_hash_key", jstr(&s.starting_hash_key)),
            ("ending_hash_key", jstr(&s.ending_hash_key)),
            ("first_sequence_number", s.first_sequence_number.to_string()),
            ("next_sequence_number", s.next_sequence_number.to_string()),
            ("records_stored", s.records_stored.to_string()),
            ("bytes_stored", s.bytes_stored.to_string()),
            ("writable", s.writable.to_string()),
            ("write_error", jstr(&s.write_error)),
            ("shard_status", jstr(&shard_status_name(s.shard_status))),
            ("failure_kind", jstr(&s.failure_kind)),
            ("failure", jstr(&s.failure)),
            ("parent_shard_id", opt_str(&s.parent_shard_id)),
            ("adjacent_parent_shard_id", opt_str(&s.adjacent_parent_shard_id)),
            ("closed", s.closed.to_string()),
            ("ending_sequence_number", opt_num(s.ending_sequence_number)),
            ("created_at_ms", s.created_at_ms.to_string()),
            (
                "damage",
                arr(s.damage.iter().map(|d| {
                    obj(&[
                        ("segment", jstr(&d.segment)),
                        ("position", d.position.to_string()),
                        ("reason", jstr(&d.reason)),
                    ])
                })),
            ),
        ])
    });
    obj(&[
        ("stream_name", jstr(&d.stream_name)),
        ("stream_id", d.stream_id.to_string()),
        ("status", jstr(&status_name(d.status))),
        ("retention_hours", d.retention_hours.to_string()),
        ("max_record_bytes", d.max_record_bytes.to_string()),
        ("durability", jstr(&durability_name(d.durability))),
        ("durability_interval_ms", d.durability_interval_ms.to_string()),
        ("created_at_ms", d.created_at_ms.to_string()),
        ("open_shard_count", d.open_shard_count.to_string()),
        ("target_shard_count", d.target_shard_count.to_string()),
        (
            "quotas",
            obj(&[
                ("write_records_per_sec", opt_num(q.write_records_per_sec)),
                ("write_bytes_per_sec", opt_num(q.write_bytes_per_sec)),
                ("read_calls_per_sec", opt_num(q.read_calls_per_sec)),
                ("read_bytes_per_sec", opt_num(q.read_bytes_per_sec)),
            ]),
        ),
        ("shards", arr(shards)),
    ])
}

fn stream_text(d: &pb::StreamDescription) -> String {
    let q = d.quotas.unwrap_or_default();
    let n = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
    let durability = match pb::DurabilityMode::try_from(d.durability) {
        Ok(pb::DurabilityMode::Interval) => format!("INTERVAL ({} ms)", d.durability_interval_ms),
        _ => durability_name(d.durability),
    };
    let mut out = table(
        &[],
        &[
            vec!["stream".into(), d.stream_name.clone()],
            vec!["status".into(), status_name(d.status)],
            vec!["created".into(), format_rfc3339(d.created_at_ms)],
            vec!["retention".into(), format!("{} h", d.retention_hours)],
            vec!["max record".into(), format!("{} bytes", d.max_record_bytes)],
            vec!["durability".into(), durability],
            vec![
                "write quota".into(),
                format!("{} records/s, {} bytes/s per shard", n(q.write_records_per_sec), n(q.write_bytes_per_sec)),
            ],
            vec![
                "read quota".into(),
                format!("{} calls/s, {} bytes/s per shard", n(q.read_calls_per_sec), n(q.read_bytes_per_sec)),
            ],
            vec!["shards".into(), shard_counts(d)],
        ],
    );
    let rows: Vec<Vec<String>> = shard_tree(&d.shards)
        .into_iter()
        .map(|(depth, s)| {
            let state = if s.closed { "CLOSED".to_string() } else { "OPEN".to_string() };
            let status = if s.failure_kind.is_empty() {
                shard_status_name(s.shard_status)
            } else {
                format!("{} ({}: {})", shard_status_name(s.shard_status), s.failure_kind, s.failure)
            };
            let parents = match (s.parent_shard_id.as_str(), s.adjacent_parent_shard_id.as_str()) {
                ("", _) => "-".to_string(),
                (p, "") => p.to_string(),
                (p, a) => format!("{p} + {a}"),
            };
            vec![
                format!(
                    "{}{}",
                    if depth == 0 { String::new() } else { format!("{}└ ", "  ".repeat(depth - 1)) },
                    s.shard_id
                ),
                state,
                parents,
                format!("{}..={}", s.starting_hash_key, s.ending_hash_key),
                s.first_sequence_number.to_string(),
                s.ending_sequence_number.unwrap_or(s.next_sequence_number).to_string(),
                s.records_stored.to_string(),
                s.bytes_stored.to_string(),
                status,
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["SHARD", "STATE", "PARENTS", "HASH RANGE", "FIRST SEQ", "NEXT/END SEQ", "RECORDS", "BYTES", "STATUS"],
            &rows,
        ));
    }
    for s in &d.shards {
        for damage in &s.damage {
            out.push_str(&format!(
                "  damage in {}: {} at byte {}: {}\n",
                s.shard_id, damage.segment, damage.position, damage.reason
            ));
        }
    }
    out
}

/// "4 open" or "4 open, 3 closed", with the target while UpdateShardCount runs.
fn shard_counts(d: &pb::StreamDescription) -> String {
    let closed = d.shards.iter().filter(|s| s.closed).count();
    let mut text = format!("{} open", d.shards.len() - closed);
    if closed > 0 {
        text.push_str(&format!(", {closed} closed"));
    }
    if d.target_shard_count > 0 {
        text.push_str(&format!(" (rescaling to {})", d.target_shard_count));
    }
    text
}

/// The shards as a tree, depth first: each shard after its parent (a merge
/// child after its first parent), roots being shards whose parent is not listed.
fn shard_tree(shards: &[pb::ShardDescription]) -> Vec<(usize, &pb::ShardDescription)> {
    let listed = |id: &str| shards.iter().any(|s| s.shard_id == id);
    let mut out = Vec::with_capacity(shards.len());
    let mut stack: Vec<(usize, &pb::ShardDescription)> =
        shards.iter().filter(|s| !listed(&s.parent_shard_id)).rev().map(|s| (0, s)).collect();
    while let Some((depth, s)) = stack.pop() {
        out.push((depth, s));
        stack.extend(shards.iter().filter(|c| c.parent_shard_id == s.shard_id).rev().map(|c| (depth + 1, c)));
    }
    out
}

fn shard_status_name(status: i32) -> String {
    pb::ShardStatus::try_from(status)
        .map_or_else(|_| status.to_string(), |s| s.as_str_name().trim_start_matches("SHARD_STATUS_").to_string())
}

// ---------------------------------------------------------------------------
// shard and lost-found
// ---------------------------------------------------------------------------

fn repair_action_name(action: i32) -> String {
    pb::RepairAction::try_from(action)
        .map_or_else(|_| action.to_string(), |a| a.as_str_name().trim_start_matches("REPAIR_ACTION_").to_string())
}

async fn shard_cmd(g: &Global, cmd: ShardCmd) -> Result<(), CliError> {
    let admin = g.admin().await?;
    match cmd {
        ShardCmd::Repair { stream, shard, truncate_after_damage: _, yes } => {
            let r = admin.repair_shard(&stream, &shard, yes).await?;
            let plan = r.plan.clone().unwrap_or_default();
            if g.json {
                print(&format!("{}\n", repair_json(&stream, &r)))?;
            } else {
                print(&repair_text(&stream, &shard, &r))?;
            }
            if !yes && plan.action != pb::RepairAction::Nothing as i32 {
                return Err(CliError::failed("dry run: nothing was changed; run again with --yes to apply this plan"));
            }
            Ok(())
        }
    }
}

fn repair_json(stream: &str, r: &pb::RepairShardResponse) -> String {
    let p = r.plan.clone().unwrap_or_default();
    let shard = r.shard.clone().unwrap_or_default();
    obj(&[
        ("stream_name", jstr(stream)),
        ("shard_id", jstr(&shard.shard_id)),
        ("applied", r.applied.to_string()),
        ("action", jstr(&repair_action_name(p.action))),
        ("reason", jstr(&p.reason)),
        ("segment", jstr(&p.segment)),
        ("cut_position", p.cut_position.to_string()),
        ("first_lost_sequence_number", p.first_lost_sequence_number.to_string()),
        ("records_lost", p.records_lost.to_string()),
        ("bytes_removed", p.bytes_removed.to_string()),
        ("segments_removed", arr(p.segments_removed.iter().map(|s| jstr(s)))),
        ("shard_status", jstr(&shard_status_name(shard.shard_status))),
        ("failure", jstr(&shard.failure)),
    ])
}

fn repair_text(stream: &str, shard: &str, r: &pb::RepairShardResponse) -> String {
    let p = r.plan.clone().unwrap_or_default();
    let mut rows = vec![
        vec!["shard".into(), format!("{shard} of stream {stream}")],
        vec!["reason".into(), p.reason.clone()],
        vec!["action".into(), repair_action_name(p.action)],
    ];
    if p.action == pb::RepairAction::Truncate as i32 {
        let removed = if p.segments_removed.is_empty() { "none".into() } else { p.segments_removed.join(", ") };
        rows.extend([
            vec!["cut".into(), format!("{} at byte {}", p.segment, p.cut_position)],
            vec!["first lost".into(), format!("sequence number {}", p.first_lost_sequence_number)],
            vec!["records lost".into(), p.records_lost.to_string()],
            vec!["bytes removed".into(), p.bytes_removed.to_string()],
            vec!["segments removed".into(), removed],
        ]);
    }
    if let Some(s) = &r.shard {
        let status = if s.failure.is_empty() {
            shard_status_name(s.shard_status)
        } else {
            format!("{} ({}: {})", shard_status_name(s.shard_status), s.failure_kind, s.failure)
        };
        rows.push(vec![if r.applied { "status now".into() } else { "status".into() }, status]);
    }
    rows.push(vec!["applied".into(), if r.applied { "yes".into() } else { "no (dry run)".into() }]);
    table(&[], &rows)
}

async fn lost_found_cmd(g: &Global, cmd: LostFoundCmd) -> Result<(), CliError> {
    let admin = g.admin().await?;
    let entry_json = |e: &pb::LostFoundEntry| {
        obj(&[
            ("name", jstr(&e.name)),
            ("stream_id", e.stream_id.to_string()),
            ("moved_at_ms", e.moved_at_ms.to_string()),
            ("bytes", e.bytes.to_string()),
            ("shard_ids", arr(e.shard_ids.iter().map(|s| jstr(s)))),
        ])
    };
    match cmd {
        LostFoundCmd::List => {
            let entries = admin.list_lost_found().await?;
            if g.json {
                return print(&format!("{}\n", obj(&[("entries", arr(entries.iter().map(entry_json)))])));
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
                print(&format!("{}\n", obj(&[("purged", entry_json(&e))])))
            } else {
                print(&format!("deleted {} ({} bytes)\n", e.name, e.bytes))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// group
// ---------------------------------------------------------------------------

async fn group_cmd(g: &Global, cmd: GroupCmd) -> Result<(), CliError> {
    let admin = g.admin().await?;
    match cmd {
        GroupCmd::List { stream } => {
            let groups = admin.list_groups(stream.as_deref()).await?;
            if g.json {
                let items = groups
                    .iter()
                    .map(|x| obj(&[("stream_name", jstr(&x.stream_name)), ("group_name", jstr(&x.group_name))]));
                return print(&format!("{}\n", obj(&[("groups", arr(items))])));
            }
            if groups.is_empty() {
                note_empty("groups");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = groups.into_iter().map(|x| vec![x.stream_name, x.group_name]).collect();
            print(&table(&["STREAM", "GROUP"], &rows))
        }
        GroupCmd::Describe { stream, group } => {
            let d = admin.describe_group(&stream, &group).await?;
            print_group(g, &d)
        }
        GroupCmd::Reset { stream, group, to } => {
            let mut req = pb::ResetGroupRequest { stream_name: stream, group_name: group, ..Default::default() };
            match to {
                ResetTo::TrimHorizon => req.position = pb::IteratorType::TrimHorizon as i32,
                ResetTo::Latest => req.position = pb::IteratorType::Latest as i32,
                ResetTo::Ts(ms) => {
                    req.position = pb::IteratorType::AtTimestamp as i32;
                    req.timestamp_ms = Some(ms);
                }
                ResetTo::Seq { shard, seq } => {
                    req.position = pb::IteratorType::AtSequenceNumber as i32;
                    req.sequence_number = Some(seq);
                    req.shard_id = shard;
                }
            }
            let d = admin.reset_group(req).await?;
            print_group(g, &d)
        }
    }
}

fn print_group(g: &Global, d: &pb::GroupDescription) -> Result<(), CliError> {
    if g.json { print(&format!("{}\n", group_json(d))) } else { print(&group_text(d)) }
}

fn start_text(start: Option<&pb::GroupStart>) -> (String, Option<u64>) {
    start.map_or(("-".into(), None), |s| (iterator_name(s.position), s.timestamp_ms))
}

fn group_json(d: &pb::GroupDescription) -> String {
    let (position, ts) = start_text(d.start.as_ref());
    let members = d.members.iter().map(|m| {
        obj(&[
            ("member_id", jstr(&m.member_id)),
            ("client_id", jstr(&m.client_id)),
            (
                "leases",
                arr(m.leases.iter().map(|l| {
                    obj(&[
                        ("shard_id", jstr(&l.shard_id)),
                        ("lease_epoch", l.lease_epoch.to_string()),
                        ("revoking", l.revoking.to_string()),
                    ])
                })),
            ),
            ("last_heartbeat_age_ms", m.last_heartbeat_age_ms.to_string()),
        ])
    });
    let shards = d.shards.iter().map(|s| {
        obj(&[
            ("shard_id", jstr(&s.shard_id)),
            ("owner_member_id", if s.owner_member_id.is_empty() { "null".into() } else { jstr(&s.owner_member_id) }),
            ("lease_epoch", s.lease_epoch.to_string()),
            ("revoking", s.revoking.to_string()),
            ("checkpoint", if s.has_checkpoint { s.checkpoint.to_string() } else { "null".into() }),
            ("lag_records", s.lag_records.to_string()),
            ("lag_ms", s.lag_ms.to_string()),
        ])
    });
    obj(&[
        ("stream_name", jstr(&d.stream_name)),
        ("group_name", jstr(&d.group_name)),
        ("start", obj(&[("position", jstr(&position)), ("timestamp_ms", opt_num(ts))])),
        ("generation", d.generation.to_string()),
        ("session_timeout_ms", d.session_timeout_ms.to_string()),
        ("members", arr(members)),
        ("shards", arr(shards)),
    ])
}

fn group_text(d: &pb::GroupDescription) -> String {
    let (position, ts) = start_text(d.start.as_ref());
    let start = match ts {
        Some(ms) => format!("{position} {}", format_rfc3339(ms)),
        None => position,
    };
    let lag: u64 = d.shards.iter().map(|s| s.lag_records).sum();
    let mut out = table(
        &[],
        &[
            vec!["group".into(), d.group_name.clone()],
            vec!["stream".into(), d.stream_name.clone()],
            vec!["start".into(), start],
            vec!["generation".into(), d.generation.to_string()],
            vec!["session timeout".into(), format!("{} ms", d.session_timeout_ms)],
            vec!["members".into(), d.members.len().to_string()],
            vec!["lag".into(), format!("{lag} records")],
        ],
    );
    if !d.members.is_empty() {
        let rows: Vec<Vec<String>> = d
            .members
            .iter()
            .map(|m| {
                vec![
                    m.member_id.clone(),
                    m.client_id.clone(),
                    if m.leases.is_empty() {
                        "-".into()
                    } else {
                        let shards: Vec<String> = m
                            .leases
                            .iter()
                            .map(|l| if l.revoking { format!("{} (revoking)", l.shard_id) } else { l.shard_id.clone() })
                            .collect();
                        shards.join(",")
                    },
                    format!("{} ms", m.last_heartbeat_age_ms),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["MEMBER", "CLIENT", "SHARDS", "HEARTBEAT AGE"], &rows));
    }
    if !d.shards.is_empty() {
        let rows: Vec<Vec<String>> = d
            .shards
            .iter()
            .map(|s| {
                vec![
                    s.shard_id.clone(),
                    match (s.owner_member_id.is_empty(), s.revoking) {
                        (true, _) => "-".into(),
                        (false, false) => s.owner_member_id.clone(),
                        (false, true) => format!("{} (revoking)", s.owner_member_id),
                    },
                    if s.has_checkpoint { s.checkpoint.to_string() } else { "-".into() },
                    s.lag_records.to_string(),
                    s.lag_ms.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["SHARD", "OWNER", "CHECKPOINT", "LAG RECORDS", "LAG MS"], &rows));
    }
    out
}

// ---------------------------------------------------------------------------
// put
// ---------------------------------------------------------------------------

/// A sent record waiting for its acknowledgement.
type Pending = (u64, String, Bytes, client::AckFuture);

async fn put(g: &Global, args: PutArgs) -> Result<(), CliError> {
    let producer = Producer::with_channel(g.channel().await?, &args.stream, ProducerConfig::default()).await?;
    if std::io::stdin().is_terminal() {
        eprintln!("streamctl: reading records from stdin, one per line; end with Ctrl-D");
    }
    let (tx, rx) = mpsc::channel::<Pending>(4096);
    let printer = tokio::spawn(print_acks(rx, g.json));
    let read = read_records(&producer, &args, tx).await;
    let acked = printer.await.map_err(|e| CliError::failed(format!("acknowledgement task: {e}")));
    let closed = producer.close().await;
    let (n, printed) = acked?;
    if !g.json {
        eprintln!("{n} record{} acknowledged", if n == 1 { "" } else { "s" });
    }
    // A failed acknowledgement stops the reading, so it is the first cause.
    printed?;
    read?;
    closed?;
    Ok(())
}

/// Reads stdin, sends each line, and queues its acknowledgement for the printer.
async fn read_records(producer: &Producer, args: &PutArgs, tx: mpsc::Sender<Pending>) -> Result<(), CliError> {
    let mut lines = stdin_lines();
    let mut ticker = args.rate.map(|n| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(n)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut line_no = 0u64;
    loop {
        let buf = tokio::select! {
            line = lines.recv() => match line {
                Some(line) => line.map_err(|e| CliError::failed(format!("stdin: {e}")))?,
                None => return Ok(()),
            },
            _ = &mut ctrl_c => return Ok(()),
        };
        line_no += 1;
        let line = strip_newline(&buf);
        let (key, value) = split_line(line, line_no, args)?;
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let ack = producer
            .send(key.clone(), Bytes::copy_from_slice(value))
            .await
            .map_err(|e| with_line(line_no, CliError::from(e)))?;
        if tx.send((line_no, key, Bytes::copy_from_slice(value), ack)).await.is_err() {
            // The printer stopped on a failed record; it reports why.
            return Ok(());
        }
    }
}

/// Lines of stdin (with their newlines), read on a thread of their own so a
/// pending read never holds up the runtime.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(1024);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = Vec::new();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) => return,
                Ok(_) => {
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

fn strip_newline(buf: &[u8]) -> &[u8] {
    let line = buf.strip_suffix(b"\n").unwrap_or(buf);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The key and value of one input line.
fn split_line<'a>(line: &'a [u8], line_no: u64, args: &PutArgs) -> Result<(String, &'a [u8]), CliError> {
    if let Some(key) = &args.partition_key {
        return Ok((key.clone(), line));
    }
    let Some(sep) = &args.key_sep else {
        return Ok((line_no.to_string(), line));
    };
    let sep = sep.as_bytes();
    let at = line.windows(sep.len()).position(|w| w == sep).ok_or_else(|| {
        CliError::usage(format!("line {line_no}: no key separator {:?}", String::from_utf8_lossy(sep)))
    })?;
    let key = std::str::from_utf8(&line[..at])
        .map_err(|_| CliError::usage(format!("line {line_no}: the partition key is not valid UTF-8")))?;
    Ok((key.to_string(), &line[at + sep.len()..]))
}

fn with_line(line_no: u64, e: CliError) -> CliError {
    CliError { code: e.code, message: format!("line {line_no}: {}", e.message) }
}

/// Awaits acknowledgements in input order; prints each with `--json`.
/// Returns how many were acknowledged and whether output or a record failed.
async fn print_acks(mut rx: mpsc::Receiver<Pending>, json: bool) -> (u64, Result<(), CliError>) {
    let mut n = 0;
    let mut failed = None;
    let mut out = std::io::stdout();
    while let Some((line_no, key, value, ack)) = rx.recv().await {
        let ack = match ack.await {
            Ok(ack) => ack,
            Err(e) => {
                // Stop the reader; records already sent are still reported.
                rx.close();
                failed.get_or_insert(with_line(line_no, e.into()));
                continue;
            }
        };
        n += 1;
        if json && failed.is_none() {
            let mut fields = vec![("key", jstr(&key))];
            fields.extend(value_fields(&value));
            fields.push(("shard", jstr(&ack.shard_id)));
            fields.push(("sequence_number", ack.sequence_number.to_string()));
            if let Err(e) = writeln!(out, "{}", obj(&fields)).and_then(|()| out.flush()) {
                rx.close();
                failed = Some(e.into());
            }
        }
    }
    (n, failed.map_or(Ok(()), Err))
}

/// `"value"` as UTF-8 text, or base64 with `"value_encoding":"base64"`.
fn value_fields(data: &[u8]) -> Vec<(&'static str, String)> {
    match std::str::from_utf8(data) {
        Ok(s) => vec![("value", jstr(s))],
        Err(_) => vec![("value", jstr(&BASE64.encode(data))), ("value_encoding", jstr("base64"))],
    }
}

// ---------------------------------------------------------------------------
// tail
// ---------------------------------------------------------------------------

/// How records are printed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Format {
    Json,
    Raw,
    Template(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Text(String),
    Key,
    Value,
    ValueHex,
    ValueBase64,
    Shard,
    Seq,
    Ts,
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "json" => return Ok(Format::Json),
        "raw" => return Ok(Format::Raw),
        _ => {}
    }
    let s = unescape(s);
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut rest = s.as_str();
    while let Some(open) = rest.find('{') {
        text.push_str(&rest[..open]);
        rest = &rest[open..];
        if let Some(r) = rest.strip_prefix("{{") {
            text.push('{');
            rest = r;
            continue;
        }
        let close = rest.find('}').ok_or("an unclosed { in the template (write {{ for a literal brace)")?;
        let token = match &rest[1..close] {
            "key" => Token::Key,
            "value" => Token::Value,
            "value:hex" => Token::ValueHex,
            "value:base64" => Token::ValueBase64,
            "shard" => Token::Shard,
            "seq" => Token::Seq,
            "ts" => Token::Ts,
            other => {
                return Err(format!(
                    "unknown token {{{other}}}: use {{key}} {{value}} {{value:hex}} {{value:base64}} {{shard}} {{seq}} {{ts}}"
                ));
            }
        };
        if !text.is_empty() {
            tokens.push(Token::Text(std::mem::take(&mut text)));
        }
        tokens.push(token);
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    if !tokens.iter().any(|t| !matches!(t, Token::Text(_))) {
        return Err("expected json, raw or a template with {key}, {value}, {seq}, ... tokens".into());
    }
    // Each record ends its own line unless the template ends one itself.
    if !text.ends_with('\n') {
        text.push('\n');
    }
    tokens.push(Token::Text(text));
    Ok(Format::Template(tokens))
}

/// One record to print.
#[derive(Debug)]
struct Rec {
    shard: String,
    seq: u64,
    ts: u64,
    key: String,
    data: Bytes,
}

fn render(format: &Format, r: &Rec, out: &mut Vec<u8>) {
    match format {
        Format::Json => {
            let mut fields = vec![
                ("shard", jstr(&r.shard)),
                ("sequence_number", r.seq.to_string()),
                ("timestamp_ms", r.ts.to_string()),
                ("key", jstr(&r.key)),
            ];
            fields.extend(value_fields(&r.data));
            out.extend_from_slice(obj(&fields).as_bytes());
            out.push(b'\n');
        }
        Format::Raw => {
            out.extend_from_slice(&r.data);
            out.push(b'\n');
        }
        Format::Template(tokens) => {
            for t in tokens {
                match t {
                    Token::Text(s) => out.extend_from_slice(s.as_bytes()),
                    Token::Key => out.extend_from_slice(r.key.as_bytes()),
                    Token::Value => out.extend_from_slice(&r.data),
                    Token::ValueHex => {
                        for b in r.data.iter() {
                            out.extend_from_slice(format!("{b:02x}").as_bytes());
                        }
                    }
                    Token::ValueBase64 => out.extend_from_slice(BASE64.encode(&r.data).as_bytes()),
                    Token::Shard => out.extend_from_slice(r.shard.as_bytes()),
                    Token::Seq => out.extend_from_slice(r.seq.to_string().as_bytes()),
                    Token::Ts => out.extend_from_slice(r.ts.to_string().as_bytes()),
                }
            }
        }
    }
}

/// Prints records, counting towards `-n`.
#[derive(Debug)]
struct Printer {
    format: Format,
    limit: Option<u64>,
    printed: u64,
    buf: Vec<u8>,
}

impl Printer {
    fn done(&self) -> bool {
        self.limit.is_some_and(|n| self.printed >= n)
    }

    /// Prints as many of `records` as `-n` allows; returns how many.
    fn print(&mut self, records: &[Rec]) -> Result<usize, CliError> {
        let take = match self.limit {
            Some(n) => records.len().min((n - self.printed) as usize),
            None => records.len(),
        };
        self.buf.clear();
        for r in &records[..take] {
            render(&self.format, r, &mut self.buf);
        }
        self.printed += take as u64;
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buf)?;
        out.flush()?;
        Ok(take)
    }
}

/// Records per GetRecords or Poll.
const BATCH: u32 = 1000;
/// Wait between reads of a shard that is at its end, in follow mode.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Least time between two GetRecords of one shard (the default quota is 5/s).
const READ_SPACING: Duration = Duration::from_millis(200);

async fn tail(g: &Global, args: TailArgs) -> Result<(), CliError> {
    if args.count == Some(0) {
        return Ok(());
    }
    let printer = Printer { format: args.format.clone(), limit: args.count, printed: 0, buf: Vec::new() };
    match args.group.clone() {
        Some(group) => tail_group(g, &args, group, printer).await,
        None => tail_shards(g, &args, printer).await,
    }
}

fn position(from: StartAt) -> Position {
    match from {
        StartAt::TrimHorizon => Position::TrimHorizon,
        StartAt::Latest => Position::Latest,
        StartAt::Seq(n) => Position::AtSequence(n),
        StartAt::Ts(ms) => Position::AtTimestamp(ms),
    }
}

/// What a shard reader reports.
enum ShardEvent {
    Records(Vec<Rec>),
    /// The reader stopped: at the end of a closed shard (with its children),
    /// or, without --follow, at the end of an open one (no children).
    Ended {
        shard: String,
        children: Vec<pb::ChildShard>,
    },
    Failed(client::Error),
}

/// A shard waiting to be read: where, and the listed parents it waits for.
struct Waiting {
    shard: String,
    at: Position,
    parents: Vec<String>,
}

/// Reads every shard (or one) through iterators, each shard in its own
/// task. A key's records stay in order across a split or merge: a shard
/// whose parent is being read starts only once the parent's reader reached
/// the parent's end, and children of a shard that closes while it is read
/// are read from their first record (with --shard, only that shard is read).
async fn tail_shards(g: &Global, args: &TailArgs, mut printer: Printer) -> Result<(), CliError> {
    let channel = g.channel().await?;
    let start = position(args.from);
    let mut pending: Vec<Waiting> = match &args.shard {
        Some(id) => vec![Waiting { shard: id.clone(), at: start, parents: Vec::new() }],
        None => {
            let d = Admin::from_channel(channel.clone()).describe_stream(&args.stream).await?;
            let listed = |id: &str| d.shards.iter().any(|s| s.shard_id == id);
            d.shards
                .iter()
                .map(|s| {
                    let at = match args.from {
                        // seq:N past a shorter shard's end: that shard has nothing to show yet.
                        StartAt::Seq(n) if n > s.next_sequence_number => Position::AtSequence(s.next_sequence_number),
                        _ => start,
                    };
                    let parents = [&s.parent_shard_id, &s.adjacent_parent_shard_id]
                        .into_iter()
                        .filter(|p| listed(p))
                        .cloned()
                        .collect();
                    Waiting { shard: s.shard_id.clone(), at, parents }
                })
                .collect()
        }
    };
    let follow_children = args.shard.is_none();
    let limit = args.count.map_or(BATCH, |n| n.min(u64::from(BATCH)) as u32);
    let (tx, mut rx) = mpsc::channel::<ShardEvent>(pending.len().max(1) * 2);
    // Dropping the set (on return) stops every reader.
    let mut readers = JoinSet::new();
    let mut known: Vec<String> = pending.iter().map(|p| p.shard.clone()).collect();
    let mut ended: Vec<String> = Vec::new();
    let mut running = 0usize;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let (ready, waiting): (Vec<Waiting>, Vec<Waiting>) =
            pending.into_iter().partition(|p| p.parents.iter().all(|parent| ended.contains(parent)));
        pending = waiting;
        for p in ready {
            running += 1;
            readers.spawn(read_shard(
                channel.clone(),
                args.stream.clone(),
                p.shard,
                p.at,
                limit,
                args.follow,
                tx.clone(),
            ));
        }
        if running == 0 {
            return Ok(());
        }
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = &mut ctrl_c => return Ok(()),
        };
        match event {
            None => return Ok(()),
            Some(ShardEvent::Failed(e)) => return Err(e.into()),
            Some(ShardEvent::Records(records)) => {
                printer.print(&records)?;
                if printer.done() {
                    return Ok(());
                }
            }
            Some(ShardEvent::Ended { shard, children }) => {
                running -= 1;
                ended.push(shard);
                for c in children.into_iter().filter(|_| follow_children) {
                    if known.contains(&c.shard_id) {
                        continue;
                    }
                    known.push(c.shard_id.clone());
                    // Parents not read here (past retention, or not listed) are not waited for.
                    let parents = c.parent_shard_ids.into_iter().filter(|p| known.contains(p)).collect();
                    pending.push(Waiting { shard: c.shard_id, at: Position::TrimHorizon, parents });
                }
            }
        }
    }
}

/// Reads one shard in order, sending each non-empty batch; ends at the end
/// of a closed shard, or at the shard's end unless following, or when the
/// receiver is gone.
async fn read_shard(
    channel: Connection,
    stream: String,
    shard: String,
    at: Position,
    limit: u32,
    follow: bool,
    tx: mpsc::Sender<ShardEvent>,
) {
    let read = async {
        let mut reader = ShardReader::open(channel, &stream, &shard, at).await?;
        let mut spacing = tokio::time::interval(READ_SPACING);
        spacing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            spacing.tick().await;
            let (records, behind) = reader.read(limit).await?;
            let n = records.len();
            let at_end = n == 0 || (behind == 0 && n < limit as usize);
            if n > 0 {
                let recs = records
                    .into_iter()
                    .map(|r| Rec {
                        shard: shard.clone(),
                        seq: r.sequence_number,
                        ts: r.arrival_timestamp_ms,
                        key: r.partition_key,
                        data: r.data,
                    })
                    .collect();
                if tx.send(ShardEvent::Records(recs)).await.is_err() {
                    return Ok(None);
                }
            }
            if let Some(children) = reader.children() {
                return Ok(Some(children.to_vec()));
            }
            if at_end {
                if !follow {
                    return Ok(Some(Vec::new()));
                }
                tokio::time::sleep(IDLE_WAIT).await;
            }
        }
    };
    let event = match read.await {
        Ok(Some(children)) => ShardEvent::Ended { shard, children },
        Ok(None) => return,
        Err(e) => ShardEvent::Failed(e),
    };
    let _ = tx.send(event).await;
}

/// Consumes as a member of a consumer group: print, then commit.
async fn tail_group(g: &Global, args: &TailArgs, group: String, mut printer: Printer) -> Result<(), CliError> {
    let start = match args.from {
        StartAt::TrimHorizon => Position::TrimHorizon,
        StartAt::Latest => Position::Latest,
        StartAt::Ts(ms) => Position::AtTimestamp(ms),
        StartAt::Seq(_) => {
            return Err(CliError::usage(
                "--from seq:N does not apply to --group; move the group with `group reset --to seq:SHARD_ID:N`",
            ));
        }
    };
    let mut config = ConsumerConfig::new(group);
    config.start = start;
    config.batch_size = args.count.map_or(BATCH, |n| n.min(u64::from(BATCH)) as u32);
    config.poll_wait = if args.follow { Duration::from_secs(5) } else { Duration::from_millis(500) };
    let mut consumer = Consumer::with_channel(g.channel().await?, &args.stream, config).await?;
    let result = consume(&mut consumer, &mut printer, args.follow).await;
    // Leave even after a failure, so the group's shards move at once.
    let left = consumer.leave().await;
    result?;
    left?;
    Ok(())
}

async fn consume(consumer: &mut Consumer, printer: &mut Printer, follow: bool) -> Result<(), CliError> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut failures = 0u32;
    loop {
        let shards_before = consumer.shards();
        let polled = tokio::select! {
            r = consumer.poll() => r,
            _ = &mut ctrl_c => return Ok(()),
        };
        let records = match polled {
            Ok(r) => {
                failures = 0;
                r
            }
            Err(e) if e.is_retryable() && failures < 10 => {
                failures += 1;
                let wait = e.retry_after().unwrap_or(Duration::from_millis(200) * failures);
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if records.is_empty() {
            // An empty poll after an assignment change only means "poll the new shards".
            if follow || consumer.shards() != shards_before {
                continue;
            }
            return Ok(());
        }
        // Print and commit shard by shard, each in sequence order.
        let mut shards: Vec<(String, Vec<client::Record>)> = Vec::new();
        for r in records {
            match shards.iter_mut().find(|(s, _)| *s == r.shard_id) {
                Some((_, v)) => v.push(r),
                None => shards.push((r.shard_id.clone(), vec![r])),
            }
        }
        for (shard, records) in shards {
            let recs: Vec<Rec> = records
                .iter()
                .map(|r| Rec {
                    shard: r.shard_id.clone(),
                    seq: r.sequence_number,
                    ts: r.arrival_timestamp_ms,
                    key: r.partition_key.clone(),
                    data: r.data.clone(),
                })
                .collect();
            let printed = printer.print(&recs)?;
            if printed > 0 {
                match consumer.commit(&records[..printed]).await {
                    Ok(()) => {}
                    // The shard moved to another member, which resumes from the last commit.
                    Err(client::Error::Fenced(m)) => eprintln!("streamctl: not committed ({shard}): {m}"),
                    Err(e) if e.is_retryable() => eprintln!("streamctl: commit of {shard} will be retried: {e}"),
                    Err(e) => return Err(e.into()),
                }
            }
            if printer.done() {
                return Ok(());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Output helpers
// ---------------------------------------------------------------------------

/// Left-aligned columns separated by two spaces; no header line when `headers` is empty.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
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
fn jstr(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A JSON object whose fields keep this order; values are JSON text.
fn obj(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", jstr(k))).collect();
    format!("{{{}}}", body.join(","))
}

/// A JSON array of JSON texts.
fn arr(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

// ---------------------------------------------------------------------------
// RFC 3339
// ---------------------------------------------------------------------------

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` to ms since the Unix epoch
/// (fractions past milliseconds are truncated).
fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("{s:?} is not an RFC 3339 time (YYYY-MM-DDTHH:MM:SS[.fff]Z or ±HH:MM): {why}");
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = b.get(from..from + len).ok_or_else(|| bad("too short"))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad("expected digits"));
        }
        Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let expect = |at: usize, chars: &[u8]| -> Result<(), String> {
        match b.get(at) {
            Some(c) if chars.contains(c) => Ok(()),
            _ => Err(bad(&format!("expected {:?} at position {}", String::from_utf8_lossy(&chars[..1]), at + 1))),
        }
    };
    let year = num(0, 4)?;
    expect(4, b"-")?;
    let month = num(5, 2)?;
    expect(7, b"-")?;
    let day = num(8, 2)?;
    expect(10, b"Tt ")?;
    let hour = num(11, 2)?;
    expect(13, b":")?;
    let minute = num(14, 2)?;
    expect(16, b":")?;
    let second = num(17, 2)?;
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad("expected digits after '.'"));
        }
        let ms_digits = digits.min(3);
        millis = num(i + 1, ms_digits)? * 10i64.pow(3 - ms_digits as u32);
        i += 1 + digits;
    }
    let offset_s = match b.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            expect(i + 3, b":")?;
            if oh > 23 || om > 59 {
                return Err(bad("offset out of range"));
            }
            i += 6;
            (oh * 3600 + om * 60) * if sign == b'+' { 1 } else { -1 }
        }
        _ => return Err(bad("expected Z or an offset like +02:00")),
    };
    if i != b.len() {
        return Err(bad("unexpected text at the end"));
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time"));
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let ms = secs * 1000 + millis;
    u64::try_from(ms).map_err(|_| bad("before 1970"))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// `YYYY-MM-DDTHH:MM:SS.fffZ` for ms since the Unix epoch.
fn format_rfc3339(ms: u64) -> String {
    let ms = ms as i64;
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_to_epoch_ms() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:34:56.789Z"), Ok(1_709_210_096_789));
        assert_eq!(parse_rfc3339("2024-02-29T14:34:56.789+02:00"), Ok(1_709_210_096_789));
        assert_eq!(parse_rfc3339("2024-02-29T07:04:56.7891234-05:30"), Ok(1_709_210_096_789));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00.5z"), Ok(951_868_800_500));
        assert_eq!(parse_rfc3339("2038-01-19T03:14:08Z"), Ok(2_147_483_648_000));
        for bad in [
            "",
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+2:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00Zjunk",
            "1969-12-31T23:59:59Z",
            "2024-1-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rfc3339_formats_what_it_parses() {
        for ms in [0, 951_868_800_500, 1_709_210_096_789, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Ok(ms));
        }
        assert_eq!(format_rfc3339(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn positions_parse() {
        assert_eq!(parse_from("seq:7"), Ok(StartAt::Seq(7)));
        assert_eq!(parse_from("ts:1970-01-01T00:00:01Z"), Ok(StartAt::Ts(1000)));
        assert!(parse_from("seq:x").is_err());
        assert_eq!(
            parse_reset("seq:shardId-000000000001:42"),
            Ok(ResetTo::Seq { shard: "shardId-000000000001".into(), seq: 42 })
        );
        assert!(parse_reset("seq:42").is_err());
    }

    #[test]
    fn templates_render_every_token() {
        let f =
            parse_format(r"{key}={value}|{value:hex}|{value:base64}|{shard}|{seq}|{ts}\t{{").expect("template parses");
        let r = Rec { shard: "s-1".into(), seq: 3, ts: 9, key: "k".into(), data: Bytes::from_static(b"hi") };
        let mut out = Vec::new();
        render(&f, &r, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), "k=hi|6869|aGk=|s-1|3|9\t{\n");
        assert!(parse_format("{nope}").is_err());
        assert!(parse_format("plain").is_err());
        assert!(parse_format("{key").is_err());
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1\nq    22\n");
    }
}
