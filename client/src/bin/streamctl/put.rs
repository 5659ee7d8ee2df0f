//! `streamctl put`: records from stdin (one per line, or per `--delimiter`)
//! or one whole file, each acknowledged in input order.
//!
//! Keys: `-K SEP` splits each record into key and value at the first SEP;
//! `--partition-key` gives every record one key; otherwise the key is the
//! record's number. Routing: by the MD5 of the key, unless
//! `--explicit-hash-key` or `--shard` says where. Values are taken as they
//! are, or decoded from `--input hex|base64`. Empty records are skipped and
//! counted. The summary (acknowledged, skipped, throttled) goes to stderr;
//! on a terminal, a progress line shows while the broker throttles.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use client::{Admin, Producer, ProducerConfig};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::output::{unescape, value_json};
use crate::positions::{self, check_shard};
use crate::{CliError, Global};

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Stream name.
    stream: String,
    /// Split each record into key and value at the first SEP (`\t` for a tab).
    #[arg(short = 'K', long = "key-sep", value_name = "SEP", value_parser = parse_separator)]
    key_sep: Option<String>,
    /// One partition key for every record [default: the record's number; with --file, the file's name].
    #[arg(long, value_name = "KEY", conflicts_with = "key_sep")]
    partition_key: Option<String>,
    /// Route every record by this hash key (a decimal 128-bit number) instead of its key's MD5.
    #[arg(long, value_name = "HASH", conflicts_with = "shard")]
    explicit_hash_key: Option<u128>,
    /// Write every record to this shard: its number (2) or id (shardId-000000000002).
    #[arg(long, value_name = "SHARD", value_parser = positions::shard_id)]
    shard: Option<String>,
    /// Send the whole file as one record.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key_sep", "delimiter"])]
    file: Option<PathBuf>,
    /// How values are written in the input.
    #[arg(long, value_name = "ENCODING", value_enum, default_value_t = Input::Raw)]
    input: Input,
    /// What ends a record on stdin (`\n`, `\t`, `\0` escapes) [default: a newline; a CR before it is dropped].
    #[arg(long, value_name = "DELIM", value_parser = parse_delimiter)]
    delimiter: Option<Delimiter>,
    /// Send at most N records per second.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate: Option<u32>,
}

/// `--input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Input {
    /// The bytes as they are.
    Raw,
    /// Hexadecimal digits, two per byte.
    Hex,
    /// Standard base64.
    Base64,
}

fn parse_separator(s: &str) -> Result<String, String> {
    let sep = unescape(s);
    if sep.is_empty() { Err("the separator must not be empty".into()) } else { Ok(sep) }
}

/// `--delimiter`'s bytes (a newtype, so clap takes it as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delimiter(Vec<u8>);

fn parse_delimiter(s: &str) -> Result<Delimiter, String> {
    let d = unescape(s).replace("\\0", "\0");
    if d.is_empty() { Err("the delimiter must not be empty".into()) } else { Ok(Delimiter(d.into_bytes())) }
}

/// A sent record waiting for its acknowledgement: its number, key, value.
type Pending = (u64, String, Bytes, client::AckFuture);

/// What the reading side counted.
#[derive(Debug, Default)]
struct Counts {
    skipped: AtomicU64,
}

pub async fn run(g: &Global, args: PutArgs) -> Result<(), CliError> {
    let channel = g.channel().await?;
    let d = Admin::from_channel(channel.clone()).describe_stream(&args.stream).await?;
    let hash_key = match (&args.shard, args.explicit_hash_key) {
        (Some(shard), _) => {
            check_shard(&d, shard)?;
            let s = d.shards.iter().find(|s| s.shard_id == *shard).map(|s| s.starting_hash_key.clone());
            // check_shard found it; its starting hash key is a decimal u128 from the broker.
            Some(s.unwrap_or_default().parse::<u128>().map_err(|e| CliError::failed(format!("{shard}: {e}")))?)
        }
        (None, h) => h,
    };
    let quota = d
        .quotas
        .and_then(|q| q.write_records_per_sec)
        .map(|per_shard| per_shard * u64::from(d.open_shard_count))
        .unwrap_or(0);
    let producer = Arc::new(Producer::with_channel(channel, &args.stream, ProducerConfig::default()).await?);
    if args.file.is_none() && std::io::stdin().is_terminal() {
        eprintln!("streamctl: reading records from stdin, one per line; end with Ctrl-D");
    }
    let counts = Arc::new(Counts::default());
    let (tx, rx) = mpsc::channel::<Pending>(4096);
    let acked = Arc::new(AtomicU64::new(0));
    let printer = tokio::spawn(print_acks(rx, g.json, acked.clone()));
    let progress =
        std::io::stderr().is_terminal().then(|| tokio::spawn(show_progress(producer.clone(), acked.clone(), quota)));
    let read = read_records(&producer, &args, hash_key, tx, &counts).await;
    let printed = printer.await.map_err(|e| CliError::failed(format!("acknowledgement task: {e}")));
    if let Some(p) = progress {
        p.abort();
    }
    let throttled = producer.throttled_records();
    let closed = match Arc::try_unwrap(producer) {
        Ok(p) => p.close().await,
        // The progress task was aborted, so this is the only owner left; a
        // producer that is dropped unclosed still resolves every record.
        Err(_) => Ok(()),
    };
    summary(acked.load(Ordering::Relaxed), &counts, throttled);
    // A failed acknowledgement stops the reading, so it is the first cause.
    printed??;
    read?;
    closed?;
    Ok(())
}

/// `12 records acknowledged, 3 empty records skipped, 40 throttled and retried`.
fn summary(acked: u64, counts: &Counts, throttled: u64) {
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut line = format!("{} acknowledged", plural(acked, "record", "records"));
    let skipped = counts.skipped.load(Ordering::Relaxed);
    if skipped > 0 {
        line.push_str(&format!(", {} skipped", plural(skipped, "empty record", "empty records")));
    }
    if throttled > 0 {
        line.push_str(&format!(", {throttled} throttled and retried"));
    }
    eprintln!("{line}");
}

/// While the broker throttles, one updating line on stderr: the rate
/// acknowledged, the records throttled so far and the stream's quota.
async fn show_progress(producer: Arc<Producer>, acked: Arc<AtomicU64>, quota: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_acked, mut last_at) = (0, Instant::now());
    loop {
        tick.tick().await;
        let (now_acked, now) = (acked.load(Ordering::Relaxed), Instant::now());
        let throttled = producer.throttled_records();
        if throttled > 0 {
            let rate = (now_acked - last_acked) as f64 / now.duration_since(last_at).as_secs_f64().max(0.001);
            eprint!("\r{now_acked} acked, {rate:.0}/s, {throttled} throttled (quota {quota} records/s)\x1b[K");
        }
        (last_acked, last_at) = (now_acked, now);
    }
}

/// Reads the input, sends each record, and queues its acknowledgement for the printer.
async fn read_records(
    producer: &Producer,
    args: &PutArgs,
    hash_key: Option<u128>,
    tx: mpsc::Sender<Pending>,
    counts: &Counts,
) -> Result<(), CliError> {
    let mut records = match &args.file {
        Some(path) => {
            let data = std::fs::read(path).map_err(|e| CliError::failed(format!("--file {}: {e}", path.display())))?;
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.send(Ok(data)).await;
            rx
        }
        None => stdin_records(args.delimiter.clone().map(|d| d.0)),
    };
    let file_key = args.file.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    let mut ticker = args.rate.map(|n| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(n)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut n = 0u64;
    loop {
        let buf = tokio::select! {
            record = records.recv() => match record {
                Some(record) => record.map_err(|e| CliError::failed(format!("stdin: {e}")))?,
                None => return Ok(()),
            },
            _ = &mut ctrl_c => return Ok(()),
        };
        n += 1;
        let record = if args.file.is_some() {
            &buf[..]
        } else {
            strip_delimiter(&buf, args.delimiter.as_ref().map(|d| d.0.as_slice()))
        };
        if record.is_empty() {
            counts.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (key, value) = split_record(record, n, args, file_key.as_deref())?;
        let value = decode(value, args.input).map_err(|why| CliError::usage(format!("record {n}: {why}")))?;
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let sent = match hash_key {
            Some(h) => producer.send_with_hash_key(key.clone(), h, value.clone()).await,
            None => producer.send(key.clone(), value.clone()).await,
        };
        let ack = sent.map_err(|e| at_record(n, CliError::from(e)))?;
        if tx.send((n, key, value, ack)).await.is_err() {
            // The printer stopped on a failed record; it reports why.
            return Ok(());
        }
    }
}

/// Records of stdin (each with its delimiter, if it had one), read on a
/// thread of their own so a pending read never holds up the runtime.
fn stdin_records(delimiter: Option<Vec<u8>>) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let delimiter = delimiter.unwrap_or_else(|| b"\n".to_vec());
    let (tx, rx) = mpsc::channel(1024);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        // Reading up to the delimiter's last byte, then checking the rest of
        // it, finds a delimiter of any length.
        let last = *delimiter.last().expect("parse_delimiter refuses an empty delimiter");
        loop {
            let mut buf = Vec::new();
            let read = loop {
                match stdin.read_until(last, &mut buf) {
                    Ok(0) => break Ok(!buf.is_empty()),
                    Ok(_) if buf.ends_with(&delimiter) => break Ok(true),
                    Ok(_) => continue,
                    Err(e) => break Err(e),
                }
            };
            match read {
                Ok(true) => {
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Ok(false) => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

/// A record without its delimiter (and, for the default newline, without a CR before it).
fn strip_delimiter<'a>(buf: &'a [u8], delimiter: Option<&[u8]>) -> &'a [u8] {
    match delimiter {
        Some(d) => buf.strip_suffix(d).unwrap_or(buf),
        None => {
            let line = buf.strip_suffix(b"\n").unwrap_or(buf);
            line.strip_suffix(b"\r").unwrap_or(line)
        }
    }
}

/// The key and value of record `n`.
fn split_record<'a>(
    record: &'a [u8],
    n: u64,
    args: &PutArgs,
    file_key: Option<&str>,
) -> Result<(String, &'a [u8]), CliError> {
    if let Some(key) = args.partition_key.as_deref().or(file_key) {
        return Ok((key.to_string(), record));
    }
    let Some(sep) = &args.key_sep else {
        return Ok((n.to_string(), record));
    };
    let sep = sep.as_bytes();
    let at = record.windows(sep.len()).position(|w| w == sep).ok_or_else(|| {
        CliError::usage(format!("line {n}: no key separator {:?} (-K)", String::from_utf8_lossy(sep)))
    })?;
    let key = std::str::from_utf8(&record[..at])
        .map_err(|_| CliError::usage(format!("line {n}: the partition key is not valid UTF-8")))?;
    Ok((key.to_string(), &record[at + sep.len()..]))
}

/// The value's bytes, decoded from `--input`.
fn decode(value: &[u8], input: Input) -> Result<Bytes, String> {
    match input {
        Input::Raw => Ok(Bytes::copy_from_slice(value)),
        Input::Hex => {
            let text = std::str::from_utf8(value).map_err(|_| "--input hex: the value is not hex digits")?;
            if text.len() % 2 != 0 {
                return Err(format!("--input hex: {} digits, not two per byte", text.len()));
            }
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map(Bytes::from)
                .map_err(|_| format!("--input hex: {text:?} is not hex digits"))
        }
        Input::Base64 => {
            BASE64.decode(value).map(Bytes::from).map_err(|e| format!("--input base64: the value is not base64: {e}"))
        }
    }
}

fn at_record(n: u64, e: CliError) -> CliError {
    CliError { code: e.code, message: format!("line {n}: {}", e.message) }
}

/// A put acknowledgement as `--json` prints it.
#[derive(Debug, Serialize)]
struct AckJson<'a> {
    key: &'a str,
    value: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_encoding: Option<&'static str>,
    shard: &'a str,
    sequence_number: u64,
}

/// Awaits acknowledgements in input order; prints each with `--json`.
/// Counts them in `acked`; returns whether output or a record failed.
async fn print_acks(mut rx: mpsc::Receiver<Pending>, json: bool, acked: Arc<AtomicU64>) -> Result<(), CliError> {
    let mut failed = None;
    let mut out = std::io::stdout();
    while let Some((n, key, value, ack)) = rx.recv().await {
        let ack = match ack.await {
            Ok(ack) => ack,
            Err(e) => {
                // Stop the reader; records already sent are still reported.
                rx.close();
                failed.get_or_insert(at_record(n, e.into()));
                continue;
            }
        };
        acked.fetch_add(1, Ordering::Relaxed);
        if json && failed.is_none() {
            let (text, value_encoding) = value_json(&value);
            let line = AckJson {
                key: &key,
                value: text,
                value_encoding,
                shard: &ack.shard_id,
                sequence_number: ack.sequence_number,
            };
            let written = serde_json::to_writer(&mut out, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
                .and_then(|()| out.flush());
            if let Err(e) = written {
                rx.close();
                failed = Some(e.into());
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_from_hex_and_base64() {
        assert_eq!(decode(b"ff00", Input::Hex).as_deref(), Ok(&[0xff, 0x00][..]));
        assert_eq!(decode(b"aGk=", Input::Base64).as_deref(), Ok(&b"hi"[..]));
        assert_eq!(decode(b"as is", Input::Raw).as_deref(), Ok(&b"as is"[..]));
        assert!(decode(b"fff", Input::Hex).is_err());
        assert!(decode(b"zz", Input::Hex).is_err());
        assert!(decode(b"!!", Input::Base64).is_err());
    }

    #[test]
    fn delimiters_are_stripped() {
        assert_eq!(strip_delimiter(b"a\r\n", None), b"a");
        assert_eq!(strip_delimiter(b"a\0", Some(b"\0")), b"a");
        assert_eq!(strip_delimiter(b"a--", Some(b"--")), b"a");
        assert_eq!(parse_delimiter(r"\0"), Ok(Delimiter(vec![0])));
        assert_eq!(parse_delimiter(r"\t"), Ok(Delimiter(vec![b'\t'])));
    }
}
