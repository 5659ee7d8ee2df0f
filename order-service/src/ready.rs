//! `/readyz`: whether the service can do its work, as opposed to
//! `/healthz` (the process answers). Ready means, checked at each request:
//! - **the broker answers** (a `ListStreams` within [`BROKER_CHECK_TIMEOUT`]);
//! - **every stream exists**, dead-letter streams included;
//! - **every consumer group has joined** (each group's task says so after
//!   its `JoinGroup` succeeded, and takes it back when it stops);
//! - **the outbox is not stuck**: entries may wait, but not for longer than
//!   [`OUTBOX_STALL_MAX`] without any being published.
//!
//! Not ready answers 503 with one line per reason, as the broker's does.
//!
//! The streams are created once, before any consumer joins
//! ([`Readiness::streams_created`], awaited by the group tasks), so a clean
//! start logs no "stream not found" while the groups join.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

/// Longest `/readyz` waits for the broker.
pub const BROKER_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest the outbox may hold entries without publishing one before the
/// service says it is not ready.
pub const OUTBOX_STALL_MAX: Duration = Duration::from_secs(30);

/// What `/readyz` looks at.
#[derive(Debug)]
pub struct Readiness {
    broker: crate::access::BrokerAccess,
    streams: Vec<String>,
    groups: Vec<&'static str>,
    joined: Mutex<BTreeSet<&'static str>>,
    created: watch::Sender<bool>,
    /// The broker connection `/readyz` reuses; dialled on first use.
    admin: tokio::sync::Mutex<Option<client::Admin>>,
}

impl Readiness {
    /// Readiness of a service using `broker`, its `streams` and `groups`.
    pub fn new(broker: crate::access::BrokerAccess, streams: Vec<String>, groups: Vec<&'static str>) -> Self {
        Self {
            broker,
            streams,
            groups,
            joined: Mutex::new(BTreeSet::new()),
            created: watch::channel(false).0,
            admin: tokio::sync::Mutex::new(None),
        }
    }

    /// Every stream the service needs, dead-letter streams included.
    pub fn streams(&self) -> &[String] {
        &self.streams
    }

    /// Marks every stream created (or found).
    pub fn set_streams_created(&self) {
        self.created.send_replace(true);
    }

    /// Waits until the streams exist; consumers join only after.
    pub async fn streams_created(&self) {
        let mut rx = self.created.subscribe();
        // The sender lives as long as `self`, so this ends only when the flag is set.
        let _ = rx.wait_for(|created| *created).await;
    }

    /// Records whether `group` has joined.
    pub fn set_joined(&self, group: &'static str, joined: bool) {
        let mut set = self.joined.lock().unwrap_or_else(|e| e.into_inner());
        if joined {
            set.insert(group);
        } else {
            set.remove(group);
        }
    }

    /// Why the service is not ready, one reason per entry; empty when ready.
    pub async fn problems(&self, store: &Store, outbox_stalled: Duration) -> Vec<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(BROKER_CHECK_TIMEOUT, self.list_streams()).await {
            Ok(Ok(names)) => {
                let missing: Vec<&str> =
                    self.streams.iter().filter(|s| !names.contains(s)).map(String::as_str).collect();
                if !missing.is_empty() {
                    out.push(format!("streams not created yet: {}", missing.join(", ")));
                }
            }
            Ok(Err(e)) => out.push(format!("the broker at {} does not answer: {e}", self.broker.addr)),
            Err(_) => out.push(format!(
                "the broker at {} did not answer within {} s",
                self.broker.addr,
                BROKER_CHECK_TIMEOUT.as_secs()
            )),
        }
        let joined = self.joined.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let waiting: Vec<&str> = self.groups.iter().copied().filter(|g| !joined.contains(g)).collect();
        if !waiting.is_empty() {
            out.push(format!("consumer groups not joined yet: {}", waiting.join(", ")));
        }
        if outbox_stalled > OUTBOX_STALL_MAX {
            out.push(format!(
                "the outbox has {} entries and published none for {} s",
                store.outbox_len(),
                outbox_stalled.as_secs()
            ));
        }
        out
    }

    async fn list_streams(&self) -> client::Result<Vec<String>> {
        let mut admin = self.admin.lock().await;
        if admin.is_none() {
            let options = client::ConnectOptions {
                connect_timeout: BROKER_CHECK_TIMEOUT,
                request_timeout: BROKER_CHECK_TIMEOUT,
                ..self.broker.options(crate::access::SETUP)
            };
            *admin = Some(client::Admin::from_channel(client::Connection::open(&self.broker.addr, &options).await?));
        }
        match admin.as_ref() {
            Some(a) => a.list_streams().await,
            None => Err(client::Error::Closed),
        }
    }
}
