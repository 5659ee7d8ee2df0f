//! `streamctl tail`: a stream's records, read shard by shard through
//! iterators or as a consumer-group member, printed as JSON, raw or through
//! a template.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::Args;
use client::{Admin, Connection, Consumer, ConsumerConfig, Position, ShardReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::output::{RecordJson, unescape};
use crate::positions::{self, At, ShardStart, check_shard, starts};
use crate::{CliError, Global};

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Stream name.
    stream: String,
    /// Read only this shard: its number (2) or id (shardId-000000000002).
    #[arg(long, value_name = "SHARD", conflicts_with = "group", value_parser = positions::shard_id)]
    shard: Option<String>,
    /// Where to start: trim-horizon, latest, -N (the last N of each shard), @TIME (@2026-11-28T10:00:00Z, @-5m) or seq:[SHARD:]N.
    #[arg(long, value_name = "POSITION", default_value = "trim-horizon", allow_hyphen_values = true, value_parser = positions::parse_at)]
    from: At,
    /// Stop after COUNT records in total.
    #[arg(short = 'n', long = "count", value_name = "COUNT")]
    count: Option<u64>,
    /// Keep waiting for new records until interrupted (otherwise stop at the end of every shard).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Consume as a member of this consumer group, committing after printing.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// json (the default), raw, or a template with {key} {value} {value:hex} {value:base64} {shard} {seq} {ts} and \n \t escapes.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    format: Option<Format>,
}

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
            let json = RecordJson::new(&r.shard, r.seq, r.ts, &r.key, &r.data);
            // Serialising plain fields into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &json);
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

pub async fn run(g: &Global, args: TailArgs) -> Result<(), CliError> {
    if g.json && args.format.is_some() {
        return Err(CliError::usage(
            "--json and --format cannot be used together (--json prints each record as a JSON line)",
        ));
    }
    if args.count == Some(0) {
        return Ok(());
    }
    let format = args.format.clone().unwrap_or(Format::Json);
    let printer = Printer { format, limit: args.count, printed: 0, buf: Vec::new() };
    match args.group.clone() {
        Some(group) => tail_group(g, &args, group, printer).await,
        None => tail_shards(g, &args, printer).await,
    }
}

/// What a shard reader reports.
enum ShardEvent {
    Records(Vec<Rec>),
    /// The reader stopped: at the end of a closed shard (with its children),
    /// or, without --follow, at the end of an open one (no children).
    Ended {
        shard: String,
        children: Vec<client::types::ChildShard>,
    },
    Failed(client::Error),
}

/// A shard waiting to be read: where, and the listed parents it waits for.
struct Waiting {
    start: ShardStart,
    parents: Vec<String>,
}

/// Reads every shard (or one) through iterators, each shard in its own
/// task. A key's records stay in order across a split or merge: a shard
/// whose parent is being read starts only once the parent's reader reached
/// the parent's end, and children of a shard that closes while it is read
/// are read from their first record (with --shard, only that shard is read).
async fn tail_shards(g: &Global, args: &TailArgs, mut printer: Printer) -> Result<(), CliError> {
    let channel = g.channel().await?;
    let d = Admin::from_channel(channel.clone()).describe_stream(&args.stream).await?;
    let only = match (&args.from, &args.shard) {
        (At::Seq { shard: Some(a), .. }, Some(b)) if a != b => {
            return Err(CliError::usage(format!("--shard {b} and --from seq:{a}:N name different shards")));
        }
        (At::Seq { shard: Some(a), .. }, _) => Some(a.clone()),
        (_, b) => b.clone(),
    };
    if let Some(s) = &only {
        check_shard(&d, s)?;
    }
    let follow_children = only.is_none();
    let starts = starts(&d, only.as_deref(), &args.from, args.follow);
    let listed = |id: &str| follow_children && starts.iter().any(|s| s.shard == id);
    let mut pending: Vec<Waiting> = starts
        .iter()
        .map(|start| {
            let parents = d
                .shards
                .iter()
                .find(|s| s.shard_id == start.shard)
                .map(|s| {
                    [&s.parent_shard_id, &s.adjacent_parent_shard_id]
                        .into_iter()
                        .filter(|p| listed(p))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            Waiting { start: start.clone(), parents }
        })
        .collect();
    let limit = args.count.map_or(BATCH, |n| n.min(u64::from(BATCH)) as u32);
    let (tx, mut rx) = mpsc::channel::<ShardEvent>(pending.len().max(1) * 2);
    // Dropping the set (on return) stops every reader.
    let mut readers = JoinSet::new();
    let mut known: Vec<String> = pending.iter().map(|p| p.start.shard.clone()).collect();
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
            readers.spawn(read_shard(channel.clone(), args.stream.clone(), p.start, limit, args.follow, tx.clone()));
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
                    let start = ShardStart { shard: c.shard_id, at: Position::TrimHorizon, print_from: 0 };
                    pending.push(Waiting { start, parents });
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
    start: ShardStart,
    limit: u32,
    follow: bool,
    tx: mpsc::Sender<ShardEvent>,
) {
    let ShardStart { shard, at, print_from } = start;
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
                let recs: Vec<Rec> = records
                    .into_iter()
                    .filter(|r| r.sequence_number >= print_from)
                    .map(|r| Rec {
                        shard: shard.clone(),
                        seq: r.sequence_number,
                        ts: r.arrival_timestamp_ms,
                        key: r.partition_key,
                        data: r.data,
                    })
                    .collect();
                if !recs.is_empty() && tx.send(ShardEvent::Records(recs)).await.is_err() {
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
        At::TrimHorizon => Position::TrimHorizon,
        At::Latest => Position::Latest,
        At::Time(ms) => Position::AtTimestamp(ms),
        At::Seq { .. } | At::Last(_) => {
            return Err(CliError::usage(
                "--from seq: and -N do not apply to --group (its checkpoints say where it reads); \
                 move them with `streamctl group reset --to`",
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
