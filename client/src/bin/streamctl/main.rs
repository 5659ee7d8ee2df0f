//! `streamctl`: the stream-broker command line.
//!
//! ```text
//! streamctl stream create orders --shards 4
//! printf 'k1:hello\nk2:world\n' | streamctl put orders -K :
//! streamctl tail orders --format '{key}={value}@{seq}'
//! streamctl group describe orders billing
//! streamctl shard repair orders shardId-000000000001 --truncate-after-damage
//! streamctl lost-found list
//! ```
//!
//! Every command talks to `--broker` (env `STREAM_BROKER_ADDR`), over TLS
//! with `--ca-file` or an `https://` address, as the principal of
//! `--token-file` (or the `STREAM_BROKER_TOKEN` variable; a token is never
//! a flag, so it stays out of `ps` and shell history) or of the client
//! certificate `--cert-file`/`--key-file`. Human output
//! is aligned tables; `--json` prints JSON instead. Failures print one line
//! on stderr, prefixed `streamctl: `, and exit with 2 for usage and invalid
//! arguments (the broker's message names the field), 1 otherwise.

//!
//! One module per command group: [`stream`], [`group`], [`shard`],
//! [`lost_found`], [`put`], [`tail`]; [`output`] holds the table and JSON
//! helpers, [`time`] the time parsing and printing they share.

mod group;
mod lost_found;
mod output;
mod put;
mod shard;
mod stream;
mod tail;
mod time;

use std::io::Write;
use std::process::ExitCode;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use client::{Admin, ConnectOptions, Connection, Secret, TlsOptions};

use group::GroupCmd;
use lost_found::LostFoundCmd;
use put::PutArgs;
use shard::ShardCmd;
use stream::StreamCmd;
use tail::TailArgs;

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
    #[command(flatten)]
    security: Security,
    #[command(subcommand)]
    command: Command,
}

/// How streamctl proves who it is and checks who the broker is.
#[derive(Debug, clap::Args)]
struct Security {
    /// PEM CA certificate the broker's certificate must chain to; turns TLS on.
    #[arg(long, global = true, env = "STREAM_BROKER_CA_FILE", value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (its common name is the principal).
    #[arg(long, global = true, env = "STREAM_BROKER_CERT_FILE", value_name = "PATH", requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// PEM private key of --cert-file.
    #[arg(long, global = true, env = "STREAM_BROKER_KEY_FILE", value_name = "PATH", requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry, when not the address's host.
    #[arg(long, global = true, env = "STREAM_BROKER_SERVER_NAME", value_name = "NAME")]
    server_name: Option<String>,
    /// File holding the API token to send (else the STREAM_BROKER_TOKEN variable).
    #[arg(long, global = true, env = "STREAM_BROKER_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
}

/// The environment variable a token may come from.
const TOKEN_VAR: &str = "STREAM_BROKER_TOKEN";

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

/// A failed command: what to print and the exit status.
#[derive(Debug)]
pub struct CliError {
    /// 2 for usage and invalid arguments, 1 otherwise.
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
    let g = Global { broker: cli.broker, json: cli.json, options: cli.security.options()? };
    match cli.command {
        Command::Stream(cmd) => stream::run(&g, cmd).await,
        Command::Group(cmd) => group::run(&g, cmd).await,
        Command::Shard(cmd) => shard::run(&g, cmd).await,
        Command::LostFound(cmd) => lost_found::run(&g, cmd).await,
        Command::Put(args) => put::run(&g, args).await,
        Command::Tail(args) => tail::run(&g, args).await,
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
pub struct Global {
    pub broker: String,
    pub json: bool,
    pub options: ConnectOptions,
}

impl Global {
    pub async fn channel(&self) -> Result<Connection, CliError> {
        // The error names the address and the cause ("connection refused by 127.0.0.1:7470").
        Connection::open(&self.broker, &self.options).await.map_err(|e| match e {
            client::Error::Unavailable(m) => CliError::failed(format!("cannot reach the broker: {m}")),
            e => CliError::from(e),
        })
    }

    pub async fn admin(&self) -> Result<Admin, CliError> {
        Ok(Admin::from_channel(self.channel().await?))
    }
}
