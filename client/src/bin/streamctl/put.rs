//! `streamctl put`: records from stdin, one per line, each acknowledged in
//! input order.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::Args;
use client::{Producer, ProducerConfig};
use tokio::sync::mpsc;

use crate::output::{jstr, obj, unescape};
use crate::{CliError, Global};

#[derive(Debug, Args)]
pub struct PutArgs {
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

fn parse_separator(s: &str) -> Result<String, String> {
    let sep = unescape(s);
    if sep.is_empty() { Err("the separator must not be empty".into()) } else { Ok(sep) }
}

/// A sent record waiting for its acknowledgement.
type Pending = (u64, String, Bytes, client::AckFuture);

pub async fn run(g: &Global, args: PutArgs) -> Result<(), CliError> {
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
pub fn value_fields(data: &[u8]) -> Vec<(&'static str, String)> {
    match std::str::from_utf8(data) {
        Ok(s) => vec![("value", jstr(s))],
        Err(_) => vec![("value", jstr(&BASE64.encode(data))), ("value_encoding", jstr("base64"))],
    }
}
