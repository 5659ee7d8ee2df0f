//! `streamctl stack deploy|diff|remove FILE`: the command-line side of
//! [`client::stack`], which does the work. Plans print one line per change
//! (`+` create, `~` update, `-` delete, `!` refused); `--json` prints them
//! as one JSON document.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Subcommand;
use client::stack::{self, Stack};

use crate::output::{print, print_json};
use crate::{CliError, Global};

/// Exit status of `stack diff` when the broker differs from the file.
const DIFFERS: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum StackCmd {
    /// Create the streams and groups FILE declares and the broker lacks,
    /// update retention and quotas that differ, and print what changed.
    /// Idempotent; changes nothing while a difference cannot be applied.
    Deploy {
        /// The stack file (see deploy/stack.toml).
        file: PathBuf,
    },
    /// Print what deploy would change. Exits 0 when the broker matches FILE,
    /// 3 when it differs.
    Diff {
        /// The stack file.
        file: PathBuf,
    },
    /// Delete the streams FILE declares, with their records and groups.
    /// Refuses while one still has records, a failed shard, a live consumer
    /// or a group FILE does not declare, unless --force.
    Remove {
        /// The stack file.
        file: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Delete even streams that still hold records or groups.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(g: &Global, cmd: StackCmd) -> Result<(), CliError> {
    match cmd {
        StackCmd::Deploy { file } => {
            let stack = Stack::load(&file)?;
            let applied = stack::deploy(&g.admin().await?, &stack).await?;
            if g.json {
                return print_json(&applied.to_json());
            }
            let n = applied.changes.len();
            match n {
                0 => print(&format!("{}: no changes, the broker matches the file\n", file.display())),
                _ => print(&format!("{applied}{}: {n} change{} applied\n", file.display(), plural(n))),
            }
        }
        StackCmd::Diff { file } => {
            let stack = Stack::load(&file)?;
            let plan = stack::plan_all(&g.admin().await?, &stack).await?;
            if g.json {
                print_json(&plan.to_json())?;
            } else if plan.is_empty() {
                print(&format!("{}: no differences\n", file.display()))?;
            } else {
                print(&plan.to_string())?;
            }
            let n = plan.changes.len() + plan.refused.len();
            if n == 0 {
                Ok(())
            } else {
                Err(CliError { code: DIFFERS, message: format!("{n} difference{} from {}", plural(n), file.display()) })
            }
        }
        StackCmd::Remove { file, yes, force } => {
            let stack = Stack::load(&file)?;
            let admin = g.admin().await?;
            let removal = stack::plan_removal(&admin, &stack, force).await?;
            if g.json {
                print_json(&removal.to_json())?;
            } else {
                print(&removal.to_string())?;
            }
            if removal.is_empty() {
                if !g.json {
                    print(&format!("{}: nothing to remove\n", file.display()))?;
                }
                return Ok(());
            }
            if removal.refused.is_empty() && !yes {
                confirm(removal.streams.len())?;
            }
            stack::remove(&admin, &stack, &removal).await?;
            if !g.json {
                let n = removal.streams.len();
                print(&format!("{}: {n} stream{} removed\n", file.display(), plural(n)))?;
            }
            Ok(())
        }
    }
}

/// Asks on the terminal; without one, refuses (a script must say --yes).
fn confirm(streams: usize) -> Result<(), CliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::usage("not removing without confirmation: stdin is not a terminal; pass --yes"));
    }
    eprint!("Delete {streams} stream{} and every record in them? [y/N] ", plural(streams));
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") { Ok(()) } else { Err(CliError::failed("nothing removed")) }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
