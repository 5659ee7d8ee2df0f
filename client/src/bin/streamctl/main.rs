//! `streamctl`: the stream-broker command line.
//!
//! ```text
//! streamctl status
//! streamctl stream create orders --shards 4
//! streamctl stream split orders shardId-000000000001
//! streamctl stream scale orders 8
//! printf 'k1:hello\nk2:world\n' | streamctl put orders -K :
//! streamctl tail orders --from -10 --format '{key}={value}@{seq}'
//! streamctl tail orders --shard 2 --from @-5m -f
//! streamctl group describe orders billing
//! streamctl stream copy orders-dlq orders --unwrap-dead-letters
//! streamctl shard repair orders 1 --truncate-after-damage
//! streamctl stack diff deploy/stack.toml
//! streamctl auth whoami
//! streamctl auth token create relay --ttl 720h > relay.token
//! streamctl auth grant add relay record:put stream:orders-*
//! ```
//!
//! Which broker: `--broker`, else `STREAMCTL_BROKER`, else the profile's
//! (`--profile`, `STREAMCTL_PROFILE`, or the config file's default; see
//! [`profile`]), else 127.0.0.1:7470. Calls fail after `--timeout` (10 s by
//! default) except the waits that are the point: `tail -f` and group
//! consumption, which keepalive watches instead.
//!
//! Human output is aligned tables; `--json` prints JSON with at least what
//! the table shows. Failures print one line on stderr, prefixed
//! `streamctl: `, and exit with 2 for usage and invalid arguments (and
//! stack files), 1 otherwise; `stack diff` exits with 3 when the broker
//! differs from the file.
//!
//! Over TLS with `--ca-file` or an `https://` address, as the principal of
//! `--token-file` (or the `STREAMCTL_TOKEN` variable; a token is never
//! a flag, so it stays out of `ps` and shell history) or of the client
//! certificate `--cert-file`/`--key-file`.
//!
//! One module per command group: [`stream`], [`group`], [`shard`],
//! [`lost_found`], [`put`], [`tail`], [`status`], [`stack`], [`auth`]; [`positions`] parses
//! `--from`/`--to` and shard ids for all of them, [`output`] holds the table
//! and JSON helpers, [`time`] the time parsing and printing.

mod auth;
mod copy;
mod group;
mod lost_found;
mod output;
mod positions;
mod profile;
mod put;
mod shard;
mod stack;
mod status;
mod stream;
mod tail;
mod time;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use client::{Admin, ConnectOptions, Connection, Secret, TlsOptions};

use group::GroupCmd;
use lost_found::LostFoundCmd;
use put::PutArgs;
use shard::ShardCmd;
use stack::StackCmd;
use stream::StreamCmd;
use tail::TailArgs;

/// Command-line client for stream-broker: streams, records, consumer groups
/// and repairs, from a terminal or a script.
#[derive(Debug, Parser)]
#[command(name = "streamctl", version, about, propagate_version = true)]
struct Cli {
    /// Broker address, host:port or http://host:port [default: the profile's, else 127.0.0.1:7470].
    #[arg(long, global = true, env = "STREAMCTL_BROKER", value_name = "ADDR")]
    broker: Option<String>,
    /// Use this profile of ~/.config/streamctl/config.toml (or $STREAMCTL_CONFIG).
    #[arg(long, global = true, env = "STREAMCTL_PROFILE", value_name = "NAME")]
    profile: Option<String>,
    /// Deadline of each call, like 10s, 500ms or 1m [default: the profile's, else 10s].
    #[arg(long, global = true, env = "STREAMCTL_TIMEOUT", value_name = "DURATION", value_parser = time::parse_duration)]
    timeout: Option<Duration>,
    /// Print JSON instead of tables (not with --format).
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    security: Security,
    #[command(subcommand)]
    command: Command,
}

/// How streamctl proves who it is and checks who the broker is.
#[derive(Debug, clap::Args)]
struct Security {
    /// PEM CA certificate the broker's certificate must chain to; turns TLS on.
    #[arg(long, global = true, env = "STREAMCTL_CA_FILE", value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (its common name is the principal).
    #[arg(long, global = true, env = "STREAMCTL_CERT_FILE", value_name = "PATH", requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// PEM private key of --cert-file.
    #[arg(long, global = true, env = "STREAMCTL_KEY_FILE", value_name = "PATH", requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry, when not the address's host.
    #[arg(long, global = true, env = "STREAMCTL_SERVER_NAME", value_name = "NAME")]
    server_name: Option<String>,
    /// File holding the API token to send (else the STREAMCTL_TOKEN variable).
    #[arg(long, global = true, env = "STREAMCTL_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
}

/// The environment variable a token may come from.
const TOKEN_VAR: &str = "STREAMCTL_TOKEN";

impl Security {
    fn options(&self) -> Result<ConnectOptions, CliError> {
        let tls = match &self.ca_file {
            Some(ca) => Some(TlsOptions::from_files(
                ca,
                self.cert_file.as_deref(),
                self.key_file.as_deref(),
                self.server_name.clone(),
            )?),
            None if self.cert_file.is_some() || self.server_name.is_some() => {
                return Err(CliError::usage("--cert-file and --server-name need --ca-file (TLS)"));
            }
            None => None,
        };
        let token = match &self.token_file {
            Some(path) => Some(Secret::from_file(path)?),
            None => std::env::var(TOKEN_VAR).ok().filter(|t| !t.trim().is_empty()).map(|t| Secret::new(t.trim())),
        };
        Ok(ConnectOptions { tls, token, ..ConnectOptions::default() })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The broker at a glance: health, version, durability, streams, groups and their lag.
    Status,
    /// Create, list, describe, delete and copy streams.
    #[command(subcommand)]
    Stream(StreamCmd),
    /// Inspect, reset and delete consumer groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Repair failed or damaged shards.
    #[command(subcommand)]
    Shard(ShardCmd),
    /// Stream directories the broker kept instead of deleting them.
    #[command(subcommand, name = "lost-found")]
    LostFound(LostFoundCmd),
    /// Deploy, diff or remove a stack file's streams and groups.
    #[command(subcommand)]
    Stack(StackCmd),
    /// Who am I; principals, API tokens and grants.
    #[command(subcommand)]
    Auth(auth::AuthCmd),
    /// Write records read from stdin (one per line) or a file.
    Put(PutArgs),
    /// Print a stream's records.
    Tail(TailArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A failed command: what to print and the exit status.
#[derive(Debug)]
pub struct CliError {
    /// 2 for usage and invalid arguments (and stack files), 3 for `stack
    /// diff` finding differences, 1 otherwise.
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }
}

impl From<client::Error> for CliError {
    fn from(e: client::Error) -> Self {
        use client::Error as E;
        let code = if matches!(e, E::InvalidArgument(_) | E::InvalidStack { .. }) { 2 } else { 1 };
        // The broker's messages say what happened ("stream \"x\" not found"),
        // so the kind is not put in front of them again.
        let message = match e {
            E::InvalidArgument(m)
            | E::NotFound(m)
            | E::AlreadyExists(m)
            | E::NotBroker(m)
            | E::SequenceTrimmed(m)
            | E::GroupBusy(m)
            | E::Unavailable(m) => m,
            E::Fenced(m) if m.starts_with("fenced") => m,
            other => other.to_string(),
        };
        Self { code, message: flag_names(&message) }
    }
}

/// Request fields as the flags that set them, so a message points at what
/// to change on the command line.
fn flag_names(message: &str) -> String {
    const FIELDS: [(&str, &str); 8] = [
        ("shard_count", "--shards"),
        ("retention_hours", "--retention-hours"),
        ("max_record_bytes", "--max-record-bytes"),
        ("explicit_hash_key", "--explicit-hash-key"),
        ("starting_sequence_number", "the seq: position"),
        ("timestamp_ms", "the @TIME position"),
        ("stream_name", "stream name"),
        ("partition_key", "partition key"),
    ];
    let mut out = message.to_string();
    for (field, flag) in FIELDS {
        out = out.replace(field, flag);
    }
    out
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
    if let Command::Completions { shell } = cli.command {
        let mut out = std::io::stdout().lock();
        clap_complete::generate(shell, &mut Cli::command(), "streamctl", &mut out);
        out.flush()?;
        return Ok(());
    }
    let profile = profile::load(cli.profile.as_deref())?;
    let g = Global {
        broker: cli.broker.or(profile.broker).unwrap_or_else(|| client::DEFAULT_ADDR.to_string()),
        timeout: cli.timeout.or(profile.timeout).unwrap_or(DEFAULT_TIMEOUT),
        json: cli.json,
        options: cli.security.options()?,
    };
    match cli.command {
        Command::Status => status::run(&g).await,
        Command::Stream(cmd) => stream::run(&g, cmd).await,
        Command::Group(cmd) => group::run(&g, cmd).await,
        Command::Shard(cmd) => shard::run(&g, cmd).await,
        Command::LostFound(cmd) => lost_found::run(&g, cmd).await,
        Command::Stack(cmd) => stack::run(&g, cmd).await,
        Command::Auth(cmd) => auth::run(&g, cmd).await,
        Command::Put(args) => put::run(&g, args).await,
        Command::Tail(args) => tail::run(&g, args).await,
        Command::Completions { .. } => Ok(()),
    }
}

/// `--timeout` when neither the flag nor the profile sets it: well above a
/// healthy broker's answer, well below "is it hanging?".
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Options every command shares.
#[derive(Debug)]
pub struct Global {
    pub broker: String,
    pub timeout: Duration,
    pub json: bool,
    pub options: ConnectOptions,
}

impl Global {
    /// A connection with `--timeout` as the request deadline (and as the
    /// connect deadline, when shorter than the default).
    pub async fn channel(&self) -> Result<Connection, CliError> {
        let options = ConnectOptions {
            connect_timeout: self.options.connect_timeout.min(self.timeout),
            request_timeout: self.timeout,
            ..self.options.clone()
        };
        // The error names the address and the cause ("connection refused by 127.0.0.1:7470").
        Connection::open(&self.broker, &options).await.map_err(|e| match e {
            client::Error::Unavailable(m) => CliError::failed(format!("cannot reach the broker: {m}")),
            e => CliError::from(e),
        })
    }

    pub async fn admin(&self) -> Result<Admin, CliError> {
        Ok(Admin::from_channel(self.channel().await?))
    }
}
