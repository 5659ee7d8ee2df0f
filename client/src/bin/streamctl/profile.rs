//! Named profiles, as rpk profiles and `kcat -F` config files: which broker
//! and which deadline, so that scripts and people need not repeat them.
//!
//! The file is `$STREAMCTL_CONFIG`, else `$XDG_CONFIG_HOME/streamctl/config.toml`,
//! else `~/.config/streamctl/config.toml`:
//!
//! ```toml
//! # The profile used when --profile and STREAMCTL_PROFILE are unset (optional).
//! profile = "local"
//!
//! [profiles.local]
//! broker = "127.0.0.1:7470"
//!
//! [profiles.prod]
//! broker = "broker.internal:7470"
//! timeout = "30s"
//! ```
//!
//! A flag or its environment variable (`--broker`/`STREAMCTL_BROKER`,
//! `--timeout`/`STREAMCTL_TIMEOUT`) wins over the profile. A missing file is
//! no profile, unless a profile was asked for by name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::CliError;

/// What a profile sets; `None` leaves the built-in default.
#[derive(Debug, Default)]
pub struct Profile {
    pub broker: Option<String>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    profile: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    broker: Option<String>,
    timeout: Option<String>,
}

/// Where the config file is looked for.
fn path() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("STREAMCTL_CONFIG")
        .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("streamctl/config.toml")))
        .or_else(|| var("HOME").map(|h| h.join(".config/streamctl/config.toml")))
}

/// The profile `name` (or the file's default one); errors name the file.
pub fn load(name: Option<&str>) -> Result<Profile, CliError> {
    let Some(path) = path() else {
        return match name {
            Some(n) => Err(CliError::usage(format!("--profile {n}: no config file (set HOME or STREAMCTL_CONFIG)"))),
            None => Ok(Profile::default()),
        };
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && name.is_none() => return Ok(Profile::default()),
        Err(e) => {
            let why = if e.kind() == std::io::ErrorKind::NotFound { "no such file".to_string() } else { e.to_string() };
            return Err(CliError::usage(format!("{}: {why}", path.display())));
        }
    };
    let at = |message: String| CliError::usage(format!("{}: {message}", path.display()));
    // toml's message says the line and column, and shows the line.
    let file: File = toml::from_str(&text).map_err(|e| at(e.to_string().trim_end().to_string()))?;
    let Some(chosen) = name.map(str::to_string).or(file.profile) else {
        return Ok(Profile::default());
    };
    let entry = file.profiles.get(&chosen).ok_or_else(|| {
        let known: Vec<&str> = file.profiles.keys().map(String::as_str).collect();
        at(format!(
            "no profile {chosen:?} (profiles: {})",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ))
    })?;
    let timeout = match &entry.timeout {
        Some(t) => Some(crate::time::parse_duration(t).map_err(|e| at(format!("profiles.{chosen}.timeout: {e}")))?),
        None => None,
    };
    Ok(Profile { broker: entry.broker.clone(), timeout })
}
