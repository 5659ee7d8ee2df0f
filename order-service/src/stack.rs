//! `order-service --stack FILE`: the service started from a stack file
//! (`deploy/stack.toml`, see [`client::stack`]).
//!
//! - Its settings come from the file's `[services.order-service]` table,
//!   under `--config`, the environment and flags.
//! - Every stream and group the service uses must be declared in the file
//!   as the service uses it (the groups' streams, dead-letter streams, batch
//!   sizes and start); [`check`] names the file, line and key of the first
//!   mismatch, before anything starts.
//! - At start the service creates what the file declares and the broker
//!   lacks (streams with their shard count, retention, quotas and record
//!   size; groups at their start), before its consumers join. It changes
//!   nothing that exists: it logs every other difference, which
//!   `streamctl stack deploy FILE` applies.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use client::stack::{self, Change, GroupStart, Plan, Stack};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consumers;

/// The service's table in a stack file: `[services.order-service]`.
pub const SERVICE: &str = "order-service";

/// Reads `path` and the configuration layered over its service table, and
/// checks that the stack declares what the service uses.
pub fn load(
    path: &Path,
    config_file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Config, Stack), crate::Error> {
    let stack = Stack::load(path)?;
    let table = stack.service(SERVICE).cloned().unwrap_or_default();
    // The table alone first, so that a bad value in it is reported at its line.
    if let Err(e) = Config::load_over(table.clone(), None, []) {
        let message = e.to_string();
        let message = message.strip_prefix("configuration: ").unwrap_or(&message);
        return Err(service_error(&stack, &table, message).into());
    }
    let config = Config::load_over(table, config_file, env)?;
    check(&stack, &config)?;
    Ok((config, stack))
}

/// The error at the key of the service table that `message` names first.
fn service_error(stack: &Stack, table: &toml::Table, message: &str) -> client::Error {
    // toml's messages may span lines ("...\nin `smtp`").
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let named = table.keys().filter_map(|k| message.find(k.as_str()).map(|at| (at, k))).min();
    match named {
        // "cakeProducerEmail: ..." at key services.order-service.cakeProducerEmail says the key once.
        Some((_, key)) => {
            let message = message.strip_prefix(&format!("{key}: ")).unwrap_or(&message);
            stack.error(&format!("services.{SERVICE}.{key}"), message)
        }
        None => stack.error(&format!("services.{SERVICE}"), message),
    }
}

/// Checks that `stack` declares every stream and group the service runs
/// with `config`, as the service uses them.
pub fn check(stack: &Stack, config: &Config) -> Result<(), client::Error> {
    for g in consumers::groups(config) {
        for stream in [&g.stream, &g.dead_letter] {
            if stack.stream(stream).is_none() {
                return Err(stack.error(
                    "streams",
                    format!("the service uses stream {stream:?} (group {}), which no [[streams]] declares", g.name),
                ));
            }
        }
        let Some(i) = stack.groups.iter().position(|s| s.stream == g.stream && s.name == g.name) else {
            return Err(stack.error(
                "groups",
                format!("the service runs group {:?} on {:?}, which no [[groups]] declares", g.name, g.stream),
            ));
        };
        let declared = &stack.groups[i];
        if let Some(b) = declared.batch_size
            && b != g.batch_size
        {
            return Err(stack.error(
                &format!("groups[{i}].batchSize"),
                format!("{b}, but the service polls {} records per batch for {}", g.batch_size, g.name),
            ));
        }
        if let Some(d) = &declared.dead_letter
            && *d != g.dead_letter
        {
            return Err(stack.error(
                &format!("groups[{i}].deadLetter"),
                format!("{d:?}, but the service dead-letters {}'s records to {:?}", g.name, g.dead_letter),
            ));
        }
        // The consumers join at the trim horizon; if one joined first, the
        // group would start there whatever the file says.
        if declared.start != GroupStart::TrimHorizon {
            return Err(stack.error(
                &format!("groups[{i}].start"),
                format!("{:?}, but the service's consumers start at \"trim-horizon\"", declared.start.as_str()),
            ));
        }
    }
    Ok(())
}

/// Creates what `stack` declares and the broker lacks, retrying until it
/// succeeds or `shutdown` fires; logs every difference it does not apply.
pub(crate) async fn ensure(
    broker: crate::access::BrokerAccess,
    stack: Arc<Stack>,
    ready: Arc<crate::ready::Readiness>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        match create_missing(&broker, &stack).await {
            Ok(rest) => {
                for line in rest.to_string().lines() {
                    tracing::warn!(
                        file = %stack.file.display(),
                        difference = line,
                        "the broker differs from the stack; `streamctl stack deploy` applies what it can"
                    );
                }
                ready.set_streams_created();
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "creating the stack's streams and groups failed; retrying");
                if crate::relay::wait(crate::relay::backoff(failures).max(Duration::from_millis(100)), &shutdown).await
                {
                    return;
                }
            }
        }
    }
}

/// Applies the creations of the plan; returns the rest of it.
async fn create_missing(broker: &crate::access::BrokerAccess, stack: &Stack) -> client::Result<Plan> {
    let admin = client::Admin::from_channel(broker.connect(crate::access::SETUP).await?);
    let plan = stack::plan(&admin, stack).await?;
    let (create, update): (Vec<Change>, Vec<Change>) =
        plan.changes.into_iter().partition(|c| matches!(c, Change::CreateStream(_) | Change::CreateGroup(_)));
    stack::apply(&admin, stack, &Plan { changes: create, refused: Vec::new() }).await?;
    Ok(Plan { changes: update, refused: plan.refused })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/stack.toml")
    }

    /// `deploy/stack.toml` describes what the service creates and runs, with
    /// the default settings.
    #[test]
    fn the_shipped_stack_is_the_service_with_its_defaults() {
        let (config, stack) = load(&shipped(), None, []).expect("deploy/stack.toml loads and checks");
        assert_eq!(config, Config::default(), "[services.order-service] holds the defaults");
        let mut declared: Vec<&str> = stack.streams.iter().map(|s| s.name.as_str()).collect();
        let mut used = crate::stream_names(&config);
        declared.sort_unstable();
        used.sort_unstable();
        assert_eq!(declared, used, "the stack declares exactly the service's streams");
        let groups: Vec<(&str, &str, Option<u32>, Option<&str>)> = stack
            .groups
            .iter()
            .map(|g| (g.name.as_str(), g.stream.as_str(), g.batch_size, g.dead_letter.as_deref()))
            .collect();
        let expected: Vec<_> = consumers::groups(&config)
            .into_iter()
            .map(|g| (g.name, g.stream, Some(g.batch_size), Some(g.dead_letter)))
            .collect();
        let expected: Vec<(&str, &str, Option<u32>, Option<&str>)> =
            expected.iter().map(|(n, s, b, d)| (*n, s.as_str(), *b, d.as_deref())).collect();
        assert_eq!(groups, expected, "[[groups]] name, stream, batchSize, deadLetter");
    }

    fn with(text: &str) -> client::Error {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stack.toml");
        let shipped = std::fs::read_to_string(shipped()).expect("read the shipped stack");
        std::fs::write(&path, text.replace("$SHIPPED", &shipped)).expect("write");
        match load(&path, None, []).expect_err("invalid for the service") {
            crate::Error::Stack(e) => e,
            other => panic!("not a stack error: {other}"),
        }
    }

    fn location(e: &client::Error) -> (usize, String) {
        match e {
            client::Error::InvalidStack { line, key, .. } => (*line, key.clone()),
            other => panic!("not a stack error: {other}"),
        }
    }

    #[test]
    fn a_stack_that_differs_from_the_service_is_refused_at_its_line() {
        let shipped = std::fs::read_to_string(shipped()).expect("read");
        let line_of = |needle: &str| shipped.lines().position(|l| l.starts_with(needle)).expect(needle) + 1;

        let e = with(&shipped.replace("batchSize = 100 ", "batchSize = 10 "));
        assert_eq!(location(&e), (line_of("batchSize = 100"), "groups[0].batchSize".into()), "{e}");
        assert!(e.to_string().contains("polls 100 records"), "{e}");

        let e = with(&shipped.replacen("start = \"trim-horizon\"", "start = \"latest\"", 2));
        assert_eq!(location(&e).1, "groups[0].start", "{e}");

        let e = with(&shipped.replace("orderStreamName = \"order-events\"", "orderStreamName = \"orders\""));
        assert!(e.to_string().contains("\"orders\"") && location(&e).1 == "streams", "{e}");

        let e = with(&shipped.replace("cakeProducerEmail = \"cakeproducer@example.com\"", "cakeProducerEmail = \"x\""));
        assert_eq!(location(&e), (line_of("cakeProducerEmail"), "services.order-service.cakeProducerEmail".into()));

        let e = with("$SHIPPED\n[services.order-service.smtp]\nprot = 25\n");
        assert!(e.to_string().contains("prot"), "{e}");
        assert_eq!(location(&e).1, "services.order-service.smtp", "{e}");
    }
}
