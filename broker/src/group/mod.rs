//! Server-side consumer groups: shard leases, sticky cooperative
//! rebalancing, fencing and durable checkpoints, so a consumer is a few
//! lines of code (Kinesis leaves this to KCL and a DynamoDB lease table).
//!
//! Invariants:
//! - **One owner, fenced by lease.** Every shard of the stream is leased to
//!   at most one live member at a time. Each grant gets a new lease epoch;
//!   Poll and Commit name the lease they act under and anything else is
//!   `Fenced`, so a member that lost a shard can neither read it nor move
//!   its checkpoint, while members whose shards did not move keep working
//!   through a rebalance.
//! - **Sticky and cooperative.** Targets come from [`assign::balance`]
//!   (balanced, fewest moves). A shard that must leave a live owner is first
//!   *revoked*: the owner stops polling it, commits, and releases it by
//!   leaving it out of its next poll (or by leaving). Only then is it granted
//!   to its new owner, so two members never process one shard at once. A
//!   revoked shard not released within the session timeout, and the shards
//!   of a member whose session expired, are taken without a release.
//! - **No skipped record.** Delivery within a lease is contiguous: it starts
//!   at the checkpoint (or the group's start position) and each poll names
//!   the position the member wants, which may not pass what the lease was
//!   delivered. A lost poll response is asked for again. A commit may not
//!   cover records that were not delivered under its lease, nor move a
//!   checkpoint back.
//! - **Checkpoints are durable and monotonic.** A commit is acknowledged
//!   after the metadata store made it durable (fdatasync, see
//!   [`crate::durable`]). A checkpoint (the next sequence number to process)
//!   never passes what was delivered, hence never the shard's end, and never
//!   moves back, except through `reset` while the group has no member.
//! - **At-least-once.** A new owner starts from the checkpoint, so records
//!   delivered but not committed are delivered again. Records removed by
//!   retention before the group processed them are the only ones skipped
//!   (counted in `stream_broker_consumer_group_skipped_records_total` and logged).
//! - **Fair reads, metered like GetRecords.** A poll shares `max_records`
//!   and its byte budget among the member's shards that have records,
//!   starting at a rotating shard. Reading a shard takes one read call and
//!   charges its bytes against the shard's read quota, shared with
//!   GetRecords; a throttled shard is skipped until its bucket refills.
//!
//! - **Per-key order across a reshard.** Only [`assign::leasable`] shards
//!   are leased: a child of a split or merge is leased to no one until the
//!   group finished its parent(s), that is, checkpointed them at their end
//!   (the member that read a parent to its end commits, which finishes it).
//!   A finished shard's lease ends, and its children are then granted and
//!   balanced like any shard. A child created after the group started is
//!   read from its first record whatever the group's start position (every
//!   record in it arrived after the group started). A closed shard whose
//!   lease's delivery starts at its end (an empty one, or a `Latest` start)
//!   has nothing for the group: it is checkpointed at its end when polled,
//!   which finishes it. Lag counts the records of unfinished closed shards.
//!
//! Sessions expire `groups.session_timeout_ms` after the last heartbeat or
//! poll; expiry is checked on every group call and by a sweeper, on the
//! injected clock. Every group call (and the sweeper) also settles the
//! group against the stream's current layout: leases of finished or
//! removed shards end and newly leasable shards are granted.

pub mod assign;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::catalog::{Catalog, Layout, Stream, validate_stream_name};
use crate::clock::Clock;
use crate::error::{BrokerError, Result};
use crate::metadata::{GroupMeta, MetadataStore, ShardMeta, ShardState, StartPosition};
use crate::shard::{Shard, parse_shard_id, shard_id};

/// Most key + data bytes one poll returns, shared among its shards.
pub const POLL_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A lease as its member sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    /// Shard index.
    pub shard: u32,
    /// The grant's epoch.
    pub epoch: u64,
    /// The broker asked for the shard back.
    pub revoking: bool,
}

/// A member's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The member.
    pub member_id: String,
    /// Membership changes of the group so far.
    pub generation: u64,
    /// Its leases, by shard.
    pub leases: Vec<LeaseView>,
}

/// Where a poll wants a lease to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollShard {
    /// The shard id as sent.
    pub shard_id: String,
    /// The lease.
    pub epoch: u64,
    /// The next sequence number wanted; `None` starts at the checkpoint.
    pub next: Option<u64>,
}

/// Records of one lease delivered by a poll.
#[derive(Debug, Clone)]
pub struct ShardBatch {
    /// Shard index.
    pub shard: u32,
    /// The lease they were delivered under.
    pub epoch: u64,
    /// The records, in order.
    pub records: Vec<shardlog::Record>,
    /// Where the next poll of the lease continues.
    pub next_seq: u64,
    /// Age of the newest returned record when the shard has more, else 0.
    pub millis_behind_latest: u64,
}

/// What a poll returns.
#[derive(Debug, Clone)]
pub struct Polled {
    /// Shards that returned records.
    pub batches: Vec<ShardBatch>,
    /// The member's assignment after the poll.
    pub assignment: Assignment,
}

/// A checkpoint to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitShard {
    /// The shard id as sent.
    pub shard_id: String,
    /// The last processed sequence number.
    pub seq: u64,
    /// The lease the records were polled under.
    pub epoch: u64,
}

/// A member as `describe` shows it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// Member id.
    pub member_id: String,
    /// The client's self-description.
    pub client_id: String,
    /// Its leases.
    pub leases: Vec<LeaseView>,
    /// Time since its last heartbeat or poll.
    pub last_heartbeat_age_ms: u64,
}

/// A shard as `describe` shows it.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// Shard index.
    pub shard: u32,
    /// Closed by a split or merge.
    pub closed: bool,
    /// Closed and processed to its end by the group.
    pub finished: bool,
    /// Parents the group has not finished: the shard waits for them.
    pub waiting_for: Vec<u32>,
    /// Owner, if leased.
    pub owner: Option<String>,
    /// The owner's lease epoch, 0 when unassigned.
    pub epoch: u64,
    /// The owner was asked to release it.
    pub revoking: bool,
    /// Durable checkpoint, if any.
    pub checkpoint: Option<u64>,
    /// Records between the group's position and the shard's end (closed
    /// shards the group has not finished count too).
    pub lag_records: u64,
    /// Age of the oldest unprocessed record, 0 when caught up.
    pub lag_ms: u64,
}

/// A group as `describe` shows it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// The stream's name.
    pub stream: String,
    /// Definition.
    pub meta: GroupMeta,
    /// Membership changes so far.
    pub generation: u64,
    /// Live members in join order.
    pub members: Vec<MemberInfo>,
    /// Every shard.
    pub shards: Vec<ShardInfo>,
}

/// Where `reset` moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// Every shard to its trim horizon.
    TrimHorizon,
    /// Every shard to its end.
    Latest,
    /// Every shard to its first record at or after this time.
    AtTimestamp(u64),
    /// One shard to this sequence number.
    AtSequence {
        /// The shard.
        shard: u32,
        /// The next sequence number to process.
        seq: u64,
    },
}

#[derive(Debug)]
struct Member {
    id: String,
    client_id: String,
    last_seen_ms: u64,
    /// Polls so far; rotates which shard a poll reads first.
    polls: u64,
}

#[derive(Debug, Clone)]
struct Lease {
    owner: String,
    epoch: u64,
    /// When the owner was asked to release it.
    revoking_since_ms: Option<u64>,
    /// Where delivery under this lease started and one past the last record
    /// it delivered; `None` before its first poll.
    delivered: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Group {
    meta: GroupMeta,
    stream: Arc<Stream>,
    generation: u64,
    next_epoch: u64,
    /// Live members in join order.
    members: Vec<Member>,
    /// Current leases, by shard index.
    leases: BTreeMap<u32, Lease>,
    /// Shards that may be leased now ([`assign::leasable`]), in index order.
    leasable: Vec<u32>,
    /// Durable checkpoints (cache of the store).
    checkpoints: BTreeMap<u32, u64>,
    /// Bumped whenever a lease changes; long polls wait on it.
    changed: watch::Sender<u64>,
}

impl Group {
    fn new(meta: GroupMeta, stream: Arc<Stream>, checkpoints: BTreeMap<u32, u64>, now_ms: u64) -> Self {
        let mut g = Self {
            meta,
            stream,
            generation: 0,
            // Epochs from the clock: a lease named before a restart is never current after it.
            next_epoch: now_ms.saturating_mul(1000),
            members: Vec::new(),
            leases: BTreeMap::new(),
            leasable: Vec::new(),
            checkpoints,
            changed: watch::Sender::new(0),
        };
        g.settle(now_ms);
        g
    }

    /// The shard tree as [`assign::leasable`] sees it: a closed shard is
    /// done when the checkpoint reached its end (a closed shard's end never
    /// moves: it was sealed before it was listed closed).
    fn nodes(&self, layout: &Layout) -> Vec<assign::Node> {
        layout
            .tree()
            .iter()
            .map(|s| assign::Node {
                index: s.index,
                parents: s.parents().collect(),
                done: match s.state {
                    ShardState::Open => false,
                    ShardState::Expired { .. } => true,
                    ShardState::Closed { .. } => {
                        let end = layout.shard(s.index).and_then(|h| h.reader().ok()).map(|r| r.next_seq());
                        matches!((end, self.checkpoints.get(&s.index)), (Some(end), Some(&cp)) if cp >= end)
                    }
                },
            })
            .collect()
    }

    /// Follows the stream's layout: leases of shards that are finished or
    /// gone end, and the leasable shards are balanced again.
    fn settle(&mut self, now_ms: u64) {
        let layout = self.stream.layout();
        let leasable = assign::leasable(&self.nodes(&layout));
        let before = self.leases.len();
        self.leases.retain(|s, _| leasable.binary_search(s).is_ok());
        let ended = self.leases.len() != before;
        if ended || leasable != self.leasable {
            self.leasable = leasable;
            self.rebalance(now_ms);
            if ended {
                self.notify();
            }
        }
    }

    fn member(&self, id: &str) -> Result<usize> {
        self.members
            .iter()
            .position(|m| m.id == id)
            .ok_or_else(|| BrokerError::UnknownMember { member_id: id.to_string() })
    }

    fn touch(&mut self, id: &str, now_ms: u64) -> Result<usize> {
        let m = self.member(id)?;
        self.members[m].last_seen_ms = now_ms;
        Ok(m)
    }

    fn assignment(&self, m: usize) -> Assignment {
        let id = &self.members[m].id;
        let leases = self
            .leases
            .iter()
            .filter(|(_, l)| &l.owner == id)
            .map(|(&s, l)| LeaseView { shard: s, epoch: l.epoch, revoking: l.revoking_since_ms.is_some() })
            .collect();
        Assignment { member_id: id.clone(), generation: self.generation, leases }
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Applies the sticky targets over the leasable shards: grants free
    /// shards, revokes shards whose target is another member, cancels
    /// revocations whose owner is the target again.
    fn rebalance(&mut self, now_ms: u64) {
        let shards = self.leasable.clone();
        let owners: Vec<Option<usize>> = shards
            .iter()
            .map(|s| self.leases.get(s).and_then(|l| self.members.iter().position(|m| m.id == l.owner)))
            .collect();
        let target = assign::balance(self.members.len(), &owners);
        let mut changed = false;
        for (&s, t) in shards.iter().zip(target) {
            let Some(t) = t else { continue };
            let target_id = self.members[t].id.clone();
            match self.leases.get_mut(&s) {
                None => {
                    self.grant(s, target_id);
                    changed = true;
                }
                Some(l) if l.owner == target_id => {
                    if l.revoking_since_ms.take().is_some() {
                        changed = true;
                    }
                }
                Some(l) => {
                    if l.revoking_since_ms.is_none() {
                        l.revoking_since_ms = Some(now_ms);
                        metrics::counter!("stream_broker_consumer_group_revocations_total").increment(1);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.notify();
        }
    }

    fn grant(&mut self, shard: u32, owner: String) {
        self.next_epoch += 1;
        self.leases.insert(shard, Lease { owner, epoch: self.next_epoch, revoking_since_ms: None, delivered: None });
        metrics::counter!("stream_broker_consumer_group_lease_grants_total").increment(1);
    }

    fn add_member(&mut self, member: Member, now_ms: u64) -> usize {
        self.members.push(member);
        self.generation += 1;
        metrics::counter!("stream_broker_consumer_group_rebalances_total").increment(1);
        self.rebalance(now_ms);
        self.members.len() - 1
    }

    fn remove_member(&mut self, m: usize, now_ms: u64) {
        let gone = self.members.remove(m);
        self.leases.retain(|_, l| l.owner != gone.id);
        self.generation += 1;
        metrics::counter!("stream_broker_consumer_group_rebalances_total").increment(1);
        self.rebalance(now_ms);
    }

    /// Drops members whose session expired, takes revoked shards that were
    /// not released in time, and settles against the stream's layout.
    fn expire(&mut self, now_ms: u64, timeout_ms: u64) {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|m| now_ms.saturating_sub(m.last_seen_ms) > timeout_ms)
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.meta.name, member = %id, "member session expired");
            if let Ok(m) = self.member(&id) {
                self.remove_member(m, now_ms);
            }
        }
        let overdue: Vec<u32> = self
            .leases
            .iter()
            .filter(|(_, l)| l.revoking_since_ms.is_some_and(|t| now_ms.saturating_sub(t) > timeout_ms))
            .map(|(&s, _)| s)
            .collect();
        for s in &overdue {
            tracing::warn!(group = %self.meta.name, shard = %shard_id(*s), "revoked shard not released in time; moving it");
            metrics::counter!("stream_broker_consumer_group_forced_revocations_total").increment(1);
            self.leases.remove(s);
        }
        if !overdue.is_empty() {
            self.rebalance(now_ms);
        }
        self.settle(now_ms);
    }

    /// Releases the member's revoked leases it no longer polls.
    fn release_unpolled(&mut self, m: usize, polled: &BTreeSet<u32>, now_ms: u64) {
        let id = self.members[m].id.clone();
        let before = self.leases.len();
        self.leases.retain(|s, l| !(l.owner == id && l.revoking_since_ms.is_some() && !polled.contains(s)));
        if self.leases.len() != before {
            self.rebalance(now_ms);
        }
    }

    /// The index a shard id names. A well-formed id of a shard that is not
    /// (or no longer) in the stream is accepted: it holds no lease, so a poll
    /// skips it and a commit is fenced, as for any lease that ended.
    fn shard_index(&self, field: impl FnOnce() -> String, id: &str) -> Result<u32> {
        parse_shard_id(id)
            .ok_or_else(|| BrokerError::invalid(field(), format!("{id:?} is not of the form shardId-NNNNNNNNNNNN")))
    }

    /// The lease of `shard` if it is member `m`'s under `epoch`, else why not.
    fn lease_of(&self, m: usize, shard: u32, epoch: u64) -> std::result::Result<&Lease, String> {
        let id = &self.members[m].id;
        match self.leases.get(&shard) {
            Some(l) if &l.owner == id && l.epoch == epoch => Ok(l),
            Some(l) if &l.owner == id => {
                Err(format!("{} is leased to this member under lease {}, not {epoch}", shard_id(shard), l.epoch))
            }
            _ => Err(format!("{} is not leased to this member (lease {epoch} ended)", shard_id(shard))),
        }
    }
}

/// All consumer groups of a broker.
#[derive(Debug)]
pub struct GroupManager {
    catalog: Arc<Catalog>,
    store: Arc<dyn MetadataStore>,
    clock: Arc<dyn Clock>,
    session_timeout_ms: u64,
    groups: std::sync::Mutex<HashMap<GroupKey, SharedGroup>>,
}

/// (stream id, group name).
type GroupKey = (u64, String);
/// A group's state; an async lock, since commits hold it across the durable write.
type SharedGroup = Arc<tokio::sync::Mutex<Group>>;

/// Checks a group name: `[a-zA-Z0-9_.-]{1,128}`, like stream names.
pub fn validate_group_name(name: &str) -> Result<()> {
    validate_stream_name(name).map_err(|e| match e {
        BrokerError::InvalidArgument { reason, .. } => BrokerError::invalid("group_name", reason),
        other => other,
    })
}

/// Where a shard without a checkpoint starts for the group: a child created
/// after the group at its first record (every record in it arrived after
/// the group started), any other shard at the group's start position.
fn start_for(group: &GroupMeta, shard: &ShardMeta) -> StartPosition {
    if shard.parent.is_some() && shard.created_at_ms >= group.created_at_ms {
        StartPosition::TrimHorizon
    } else {
        group.start
    }
}

/// The first sequence number of a shard for a start position. Blocking.
/// A group's lag on one shard: records after its checkpoint (or its start
/// position, before the first commit) and the age in ms of the oldest of
/// them. A failed shard shows no lag (its state is in DescribeStream); the
/// group's other shards still do. Blocking reads.
fn shard_lag(sh: &Shard, checkpoint: Option<u64>, start: StartPosition, now: u64) -> Result<(u64, u64)> {
    let Ok(r) = sh.reader() else { return Ok((0, 0)) };
    let base = match checkpoint {
        Some(c) => c,
        None => resolve(sh, start)?,
    };
    let base = base.max(r.first_seq());
    let lag = r.next_seq().saturating_sub(base);
    // The age of the oldest unprocessed record; damage there leaves it unknown (0).
    let age = match r.read(base, 1, 1) {
        Ok(b) if lag > 0 => b.records.first().map_or(0, |rec| now.saturating_sub(rec.timestamp_ms)),
        _ => 0,
    };
    Ok((lag, age))
}

/// One group's lag on one shard, as [`GroupManager::lag`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    /// Stream name.
    pub stream: String,
    /// Group name.
    pub group: String,
    /// Shard id.
    pub shard: String,
    /// Records not yet committed.
    pub records: u64,
    /// Age of the oldest of them, in ms (0 when none).
    pub ms: u64,
}

fn resolve(shard: &Shard, start: StartPosition) -> Result<u64> {
    let r = shard.reader()?;
    Ok(match start {
        StartPosition::TrimHorizon => r.first_seq(),
        StartPosition::Latest => r.next_seq(),
        StartPosition::AtTimestamp(ts) => {
            r.seq_at_or_after_timestamp(ts).map_err(|e| BrokerError::storage(&shard.id, e))?
        }
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BrokerError::Unavailable(format!("blocking task failed: {e}")))?
}

fn new_member_id() -> Result<String> {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).map_err(|e| BrokerError::Unavailable(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// One shard a poll reads.
struct Planned {
    shard: Arc<Shard>,
    index: u32,
    epoch: u64,
    from: u64,
}

impl GroupManager {
    /// Loads every group's definition and checkpoints; groups of streams
    /// that no longer exist are removed. Blocking.
    pub fn open(catalog: Arc<Catalog>, session_timeout_ms: u64) -> Result<Self> {
        let store = catalog.store().clone();
        let clock = catalog.clock().clone();
        let mut groups = HashMap::new();
        for meta in store.groups()? {
            let Some(stream) = catalog.get_by_id(meta.stream_id) else {
                tracing::info!(group = %meta.name, stream_id = meta.stream_id, "removing a group whose stream is gone");
                store.remove_group(meta.stream_id, &meta.name)?;
                continue;
            };
            let mut checkpoints = store.checkpoints(meta.stream_id, &meta.name)?;
            for (&shard, cp) in checkpoints.iter_mut() {
                // After a power loss in a non-durable mode the log can end before a checkpoint.
                if let Some(end) = stream.shard(shard).and_then(|s| s.reader().ok()).map(|r| r.next_seq()) {
                    if *cp > end {
                        tracing::warn!(group = %meta.name, shard, checkpoint = *cp, end, "checkpoint past the log end; clamped");
                        *cp = end;
                    }
                }
            }
            let key = (meta.stream_id, meta.name.clone());
            let group = Group::new(meta, stream, checkpoints, clock.now_ms());
            groups.insert(key, Arc::new(tokio::sync::Mutex::new(group)));
        }
        Ok(Self { catalog, store, clock, session_timeout_ms, groups: std::sync::Mutex::new(groups) })
    }

    /// Where a shard's delivery starts when it has no lease history: its
    /// checkpoint, else its start ([`start_for`]). A `Latest` start is
    /// stored as a checkpoint the first time it is resolved, so records that
    /// arrive after that are never skipped, even if the lease moves or the
    /// broker restarts before a member commits.
    async fn base(&self, g: &mut Group, s: u32) -> Result<u64> {
        if let Some(&cp) = g.checkpoints.get(&s) {
            return Ok(cp);
        }
        let layout = g.stream.layout();
        let (Some(shard), Some(info)) = (layout.shard(s).cloned(), layout.info(s)) else {
            return Err(BrokerError::ShardNotFound { stream: g.stream.meta().name, shard_id: shard_id(s) });
        };
        let start = start_for(&g.meta, info);
        let seq = blocking(move || resolve(&shard, start)).await?;
        if start == StartPosition::Latest {
            let (store, stream_id, name) = (self.store.clone(), g.meta.stream_id, g.meta.name.clone());
            blocking(move || store.put_checkpoints(stream_id, &name, &[(s, seq)])).await?;
            g.checkpoints.insert(s, seq);
        }
        Ok(seq)
    }

    /// Session timeout of members.
    pub fn session_timeout_ms(&self) -> u64 {
        self.session_timeout_ms
    }

    fn group(&self, stream: &str, name: &str) -> Result<SharedGroup> {
        validate_stream_name(stream)?;
        validate_group_name(name)?;
        let s = self.catalog.get(stream)?;
        let id = s.meta().id;
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(id, name.to_string()))
            .cloned()
            .ok_or_else(|| BrokerError::GroupNotFound { stream: stream.to_string(), group: name.to_string() })
    }

    /// Joins a member, creating the group on first use.
    pub async fn join(
        &self,
        stream_name: &str,
        group_name: &str,
        start: StartPosition,
        client_id: &str,
    ) -> Result<Assignment> {
        validate_stream_name(stream_name)?;
        validate_group_name(group_name)?;
        if client_id.len() > 256 {
            return Err(BrokerError::invalid("client_id", "at most 256 bytes"));
        }
        let stream = self.catalog.get(stream_name)?;
        let key = (stream.meta().id, group_name.to_string());
        let existing = self.groups.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let group = match existing {
            Some(g) => g,
            None => {
                let meta =
                    GroupMeta { stream_id: key.0, name: key.1.clone(), start, created_at_ms: self.clock.now_ms() };
                let store = self.store.clone();
                let m = meta.clone();
                blocking(move || store.put_group(&m)).await?;
                let g = Group::new(meta, stream, BTreeMap::new(), self.clock.now_ms());
                let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
                groups.entry(key).or_insert_with(|| Arc::new(tokio::sync::Mutex::new(g))).clone()
            }
        };
        let now = self.clock.now_ms();
        let mut g = group.lock().await;
        g.expire(now, self.session_timeout_ms);
        let member = Member { id: new_member_id()?, client_id: client_id.to_string(), last_seen_ms: now, polls: 0 };
        let m = g.add_member(member, now);
        Ok(g.assignment(m))
    }

    /// Renews a member's session and returns its assignment.
    pub async fn heartbeat(&self, stream: &str, group: &str, member_id: &str) -> Result<Assignment> {
        let group = self.group(stream, group)?;
        let now = self.clock.now_ms();
        let mut g = group.lock().await;
        g.expire(now, self.session_timeout_ms);
        let m = g.touch(member_id, now)?;
        Ok(g.assignment(m))
    }

    /// Removes a member; its shards are granted to the others at once.
    pub async fn leave(&self, stream: &str, group: &str, member_id: &str) -> Result<()> {
        let group = self.group(stream, group)?;
        let now = self.clock.now_ms();
        let mut g = group.lock().await;
        let m = g.member(member_id)?;
        g.remove_member(m, now);
        Ok(())
    }

    /// Delivers up to `max_records` from the listed leases, waiting up to
    /// `wait` when there is nothing new and the assignment does not change.
    pub async fn poll(
        &self,
        stream: &str,
        group: &str,
        member_id: &str,
        shards: &[PollShard],
        max_records: usize,
        wait: Duration,
    ) -> Result<Polled> {
        let group = self.group(stream, group)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = self.clock.now_ms();
            let (plan, rotate, changes, reshaped, name, mut reshards) = {
                let mut g = group.lock().await;
                // Before settling, so a reshard after it wakes the wait below.
                let reshards = g.stream.watch_layout();
                g.expire(now, self.session_timeout_ms);
                let m = g.touch(member_id, now)?;
                g.members[m].polls += 1;
                let mut listed = BTreeSet::new();
                let mut requested = Vec::with_capacity(shards.len());
                for (i, p) in shards.iter().enumerate() {
                    let s = g.shard_index(|| format!("shards[{i}].shard_id"), &p.shard_id)?;
                    if !listed.insert(s) {
                        return Err(BrokerError::invalid(
                            format!("shards[{i}].shard_id"),
                            format!("{} is listed twice", p.shard_id),
                        ));
                    }
                    requested.push((i, s, p));
                }
                g.release_unpolled(m, &listed, now);
                let layout = g.stream.layout();
                let mut plan = Vec::new();
                let mut asked = BTreeSet::new();
                let mut nothing_left = Vec::new();
                for (i, s, p) in requested {
                    let (revoking, delivered) = match g.lease_of(m, s, p.epoch) {
                        Ok(l) => (l.revoking_since_ms.is_some(), l.delivered),
                        Err(_) => continue,
                    };
                    asked.insert((s, p.epoch));
                    if revoking {
                        continue;
                    }
                    let (start, delivered) = match delivered {
                        Some(d) => d,
                        None => {
                            let b = self.base(&mut g, s).await?;
                            (b, b)
                        }
                    };
                    let from = match p.next {
                        None => g.checkpoints.get(&s).copied().unwrap_or(start),
                        Some(n) if n <= delivered => n,
                        Some(n) => {
                            return Err(BrokerError::invalid(
                                format!("shards[{i}].next_sequence_number"),
                                format!(
                                    "{n} is past what lease {} of {} was delivered ({delivered}); a position may not skip records",
                                    p.epoch, p.shard_id
                                ),
                            ));
                        }
                    };
                    if let Some(l) = g.leases.get_mut(&s) {
                        l.delivered = Some((start, delivered));
                    }
                    let Some(shard) = layout.shard(s).cloned() else { continue };
                    // A closed shard whose delivery starts at its end has nothing
                    // for the group: checkpointed there, it is finished.
                    let end = layout.is_closed(s).then(|| shard.reader().map(|r| r.next_seq()).ok()).flatten();
                    if let Some(end) = end.filter(|&e| start >= e && g.checkpoints.get(&s).is_none_or(|&c| c < e)) {
                        nothing_left.push((s, end));
                    }
                    plan.push(Planned { shard, index: s, epoch: p.epoch, from });
                }
                if !nothing_left.is_empty() {
                    let (store, stream_id, name, ups) =
                        (self.store.clone(), g.meta.stream_id, g.meta.name.clone(), nothing_left.clone());
                    blocking(move || store.put_checkpoints(stream_id, &name, &ups)).await?;
                    g.checkpoints.extend(nothing_left);
                }
                // A finished shard's lease ends here, and its children are granted.
                g.settle(now);
                // Return at once when the member should poll a different set of
                // leases (a new grant, a revocation, an ended lease).
                let current: BTreeSet<(u32, u64)> =
                    g.assignment(m).leases.iter().filter(|l| !l.revoking).map(|l| (l.shard, l.epoch)).collect();
                let rotate = g.members[m].polls;
                (plan, rotate, g.changed.subscribe(), current != asked, g.meta.name.clone(), reshards)
            };
            // Watch before reading, so a record committed after the read still wakes us.
            let mut watches: Vec<_> = plan.iter().map(|p| p.shard.watch_end()).collect();
            let (read, throttled_ms) = read_fairly(plan, rotate, max_records, now, &name).await?;
            let mut g = group.lock().await;
            let m = g.member(member_id)?;
            let mut batches = Vec::new();
            for b in read {
                // A lease that ended while we read is not delivered.
                if g.lease_of(m, b.shard, b.epoch).is_err() {
                    continue;
                }
                if let Some(l) = g.leases.get_mut(&b.shard) {
                    l.delivered = l.delivered.map(|(start, end)| (start, end.max(b.next_seq)));
                }
                if !b.records.is_empty() {
                    batches.push(b);
                }
            }
            let assignment = g.assignment(m);
            drop(g);
            let now_instant = tokio::time::Instant::now();
            if !batches.is_empty() || reshaped || now_instant >= deadline {
                return Ok(Polled { batches, assignment });
            }
            // Wake on a leased shard's growth, an assignment change, a
            // reshard (which may finish a shard), a throttled shard's refill
            // or the deadline; at most a second at a time, so the session
            // stays renewed while we wait.
            let mut nap = (deadline - now_instant).min(Duration::from_millis(1000));
            if let Some(ms) = throttled_ms {
                nap = nap.min(Duration::from_millis(ms.max(1)));
            }
            let mut changes = changes;
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = any_changed(&mut watches) => {}
                _ = changes.changed() => {}
                _ = reshards.changed() => {}
            }
        }
    }

    /// Stores checkpoints; one result per checkpoint (`Ok` or a fencing
    /// reason). Invalid input fails the whole call.
    pub async fn commit(
        &self,
        stream: &str,
        group: &str,
        member_id: &str,
        checkpoints: &[CommitShard],
    ) -> Result<Vec<std::result::Result<(), BrokerError>>> {
        let group = self.group(stream, group)?;
        let now = self.clock.now_ms();
        let mut g = group.lock().await;
        g.expire(now, self.session_timeout_ms);
        let m = g.touch(member_id, now)?;
        let mut results = Vec::with_capacity(checkpoints.len());
        let mut updates: Vec<(u32, u64)> = Vec::with_capacity(checkpoints.len());
        let mut seen = BTreeSet::new();
        for (i, cp) in checkpoints.iter().enumerate() {
            let s = g.shard_index(|| format!("checkpoints[{i}].shard_id"), &cp.shard_id)?;
            if !seen.insert(s) {
                return Err(BrokerError::invalid(
                    format!("checkpoints[{i}].shard_id"),
                    format!("{} is listed twice", cp.shard_id),
                ));
            }
            let lease = match g.lease_of(m, s, cp.epoch) {
                Ok(l) => l,
                Err(reason) => {
                    results.push(Err(BrokerError::Fenced { shard_id: cp.shard_id.clone(), reason }));
                    continue;
                }
            };
            let next = cp.seq.saturating_add(1);
            let delivered = lease.delivered.map_or(0, |(_, end)| end);
            if next > delivered {
                return Err(BrokerError::invalid(
                    format!("checkpoints[{i}].sequence_number"),
                    format!(
                        "{} was not delivered to this member under lease {} of {} (delivered up to {})",
                        cp.seq,
                        cp.epoch,
                        cp.shard_id,
                        delivered.saturating_sub(1)
                    ),
                ));
            }
            match g.checkpoints.get(&s) {
                Some(&current) if next < current => results.push(Err(BrokerError::Fenced {
                    shard_id: cp.shard_id.clone(),
                    reason: format!(
                        "{} would move the checkpoint of {} back from {}",
                        cp.seq,
                        cp.shard_id,
                        current - 1
                    ),
                })),
                Some(&current) if next == current => results.push(Ok(())),
                _ => {
                    updates.push((s, next));
                    results.push(Ok(()));
                }
            }
        }
        if !updates.is_empty() {
            let (store, stream_id, name, ups) =
                (self.store.clone(), g.meta.stream_id, g.meta.name.clone(), updates.clone());
            blocking(move || store.put_checkpoints(stream_id, &name, &ups)).await?;
            for (s, next) in updates {
                g.checkpoints.insert(s, next);
            }
            // A commit at the end of a closed shard finishes it: its children can be granted.
            g.settle(now);
        }
        Ok(results)
    }

    /// The group's members, leases, checkpoints and lag.
    pub async fn describe(&self, stream: &str, group: &str) -> Result<GroupInfo> {
        let group = self.group(stream, group)?;
        let now = self.clock.now_ms();
        let mut g = group.lock().await;
        g.expire(now, self.session_timeout_ms);
        let members = (0..g.members.len())
            .map(|i| {
                let m = &g.members[i];
                MemberInfo {
                    member_id: m.id.clone(),
                    client_id: m.client_id.clone(),
                    leases: g.assignment(i).leases,
                    last_heartbeat_age_ms: now.saturating_sub(m.last_seen_ms),
                }
            })
            .collect();
        let layout = g.stream.layout();
        let nodes = g.nodes(&layout);
        let finished = assign::finished(&nodes);
        let mut shards = Vec::new();
        for info in layout.tree().iter().filter(|i| i.is_kept()) {
            let Some(shard) = layout.shard(info.index).cloned() else { continue };
            let s = info.index;
            let checkpoint = g.checkpoints.get(&s).copied();
            let done = finished.contains(&s);
            let waiting_for: Vec<u32> =
                info.parents().filter(|p| layout.info(*p).is_some() && !finished.contains(p)).collect();
            let start = start_for(&g.meta, info);
            // A failed shard shows no lag (its state is in DescribeStream); the group's other shards still do.
            let (lag_records, lag_ms) =
                if done { (0, 0) } else { blocking(move || shard_lag(&shard, checkpoint, start, now)).await? };
            let lease = g.leases.get(&s);
            shards.push(ShardInfo {
                shard: s,
                closed: !info.is_open(),
                finished: done,
                waiting_for,
                owner: lease.map(|l| l.owner.clone()),
                epoch: lease.map_or(0, |l| l.epoch),
                revoking: lease.is_some_and(|l| l.revoking_since_ms.is_some()),
                checkpoint,
                lag_records,
                lag_ms,
            });
        }
        Ok(GroupInfo { stream: stream.to_string(), meta: g.meta.clone(), generation: g.generation, members, shards })
    }

    /// Every group's lag on every shard, for `/metrics`. Reads only: it
    /// takes each group's lock just long enough to copy its checkpoints, and
    /// neither expires sessions nor touches a lease.
    pub async fn lag(&self) -> Vec<GroupLag> {
        let groups: Vec<_> = self.groups.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for group in groups {
            // Per kept shard: the shard, its checkpoint, where it starts
            // without one, and whether the group is done with it (a closed
            // parent read to its end has no lag).
            let (stream, name, shards) = {
                let g = group.lock().await;
                let layout = g.stream.layout();
                let finished = assign::finished(&g.nodes(&layout));
                let shards: Vec<_> = layout
                    .tree()
                    .iter()
                    .filter(|info| info.is_kept())
                    .filter_map(|info| {
                        let shard = layout.shard(info.index)?.clone();
                        let checkpoint = g.checkpoints.get(&info.index).copied();
                        Some((shard, checkpoint, start_for(&g.meta, info), finished.contains(&info.index)))
                    })
                    .collect();
                (g.stream.meta().name, g.meta.name.clone(), shards)
            };
            let rows = blocking(move || {
                Ok(shards
                    .iter()
                    .filter_map(|(sh, checkpoint, start, done)| {
                        let lag = if *done { (0, 0) } else { shard_lag(sh, *checkpoint, *start, now).ok()? };
                        Some((sh.id.clone(), lag))
                    })
                    .collect::<Vec<_>>())
            })
            .await
            .unwrap_or_default();
            for (shard, (records, ms)) in rows {
                out.push(GroupLag { stream: stream.clone(), group: name.clone(), shard, records, ms });
            }
        }
        out
    }

    /// Every group, optionally of one stream: (stream name, group name).
    pub fn list(&self, stream: Option<&str>) -> Result<Vec<(String, String)>> {
        let filter = stream.map(|s| self.catalog.get(s).map(|st| st.meta().id)).transpose()?;
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, String)> = groups
            .keys()
            .filter(|(id, _)| filter.is_none_or(|f| f == *id))
            .filter_map(|(id, name)| Some((self.catalog.get_by_id(*id)?.meta().name, name.clone())))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Moves checkpoints while the group has no live member.
    pub async fn reset(&self, stream: &str, group: &str, to: ResetTo) -> Result<()> {
        let group = self.group(stream, group)?;
        let mut g = group.lock().await;
        g.expire(self.clock.now_ms(), self.session_timeout_ms);
        if !g.members.is_empty() {
            return Err(BrokerError::GroupBusy { group: g.meta.name.clone(), members: g.members.len() });
        }
        let shards: Vec<(u32, Arc<Shard>)> = g.stream.shards().into_iter().map(|s| (s.index, s)).collect();
        let updates = blocking(move || {
            let mut out = Vec::new();
            for (i, shard) in shards {
                let r = shard.reader()?;
                let seq = match to {
                    ResetTo::TrimHorizon => r.first_seq(),
                    ResetTo::Latest => r.next_seq(),
                    ResetTo::AtTimestamp(ts) => {
                        r.seq_at_or_after_timestamp(ts).map_err(|e| BrokerError::storage(&shard.id, e))?
                    }
                    ResetTo::AtSequence { shard, seq } if shard == i => {
                        if seq < r.first_seq() || seq > r.next_seq() {
                            return Err(BrokerError::invalid(
                                "sequence_number",
                                format!(
                                    "{seq} is outside {}'s stored range {}..={}",
                                    shard_id(i),
                                    r.first_seq(),
                                    r.next_seq()
                                ),
                            ));
                        }
                        seq
                    }
                    ResetTo::AtSequence { .. } => continue,
                };
                out.push((i, seq));
            }
            Ok(out)
        })
        .await?;
        if let ResetTo::AtSequence { shard, .. } = to {
            if updates.is_empty() {
                return Err(BrokerError::invalid(
                    "shard_id",
                    format!("{} is not a shard of the stream", shard_id(shard)),
                ));
            }
        }
        let (store, stream_id, name, ups) =
            (self.store.clone(), g.meta.stream_id, g.meta.name.clone(), updates.clone());
        blocking(move || store.put_checkpoints(stream_id, &name, &ups)).await?;
        for (s, seq) in updates {
            g.checkpoints.insert(s, seq);
        }
        g.settle(self.clock.now_ms());
        Ok(())
    }

    /// Deletes a group without live members.
    pub async fn delete(&self, stream: &str, group_name: &str) -> Result<()> {
        let group = self.group(stream, group_name)?;
        let g = group.lock().await;
        if !g.members.is_empty() {
            return Err(BrokerError::GroupBusy { group: g.meta.name.clone(), members: g.members.len() });
        }
        let (store, stream_id, name) = (self.store.clone(), g.meta.stream_id, g.meta.name.clone());
        blocking(move || store.remove_group(stream_id, &name)).await?;
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).remove(&(g.meta.stream_id, g.meta.name.clone()));
        Ok(())
    }

    /// Expires sessions and overdue revocations in every group (the sweeper's pass).
    pub async fn expire_sessions(&self) {
        let groups: Vec<_> = self.groups.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let now = self.clock.now_ms();
        for g in groups {
            g.lock().await.expire(now, self.session_timeout_ms);
        }
    }

    /// Forgets the groups of a deleted stream (their records are gone). Blocking store calls.
    pub async fn remove_stream(&self, stream_id: u64) -> Result<()> {
        let names: Vec<String> = {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let names: Vec<String> = groups.keys().filter(|(id, _)| *id == stream_id).map(|(_, n)| n.clone()).collect();
            groups.retain(|(id, _), _| *id != stream_id);
            names
        };
        let store = self.store.clone();
        blocking(move || {
            for n in names {
                store.remove_group(stream_id, &n)?;
            }
            Ok(())
        })
        .await
    }
}

/// Resolves when any watched shard end moves (or its shard closes).
async fn any_changed(watches: &mut [watch::Receiver<u64>]) {
    if watches.is_empty() {
        return std::future::pending().await;
    }
    let mut futs: Vec<_> = watches.iter_mut().map(|w| Box::pin(w.changed())).collect();
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Reads the planned shards that have records, sharing `max_records` and
/// [`POLL_BYTES_MAX`] evenly among them, starting at a rotating shard. A
/// shard over its read quota is skipped; the second value is the shortest
/// wait until a skipped shard can be read.
async fn read_fairly(
    plan: Vec<Planned>,
    rotate: u64,
    max_records: usize,
    now_ms: u64,
    group: &str,
) -> Result<(Vec<ShardBatch>, Option<u64>)> {
    let mut ready = Vec::with_capacity(plan.len());
    let mut throttled: Option<u64> = None;
    let n = plan.len().max(1);
    for i in 0..plan.len() {
        let p = &plan[(i + rotate as usize) % n];
        // A failed shard is skipped (its failure is reported by DescribeStream
        // and /readyz); the member's other shards are still served.
        let Ok(reader) = p.shard.reader() else { continue };
        if p.from >= reader.next_seq() {
            continue;
        }
        match p.shard.quota.try_read_call(now_ms) {
            Ok(()) => ready.push((p.shard.clone(), reader, p.index, p.epoch, p.from)),
            Err(wait) => throttled = Some(throttled.map_or(wait, |t| t.min(wait))),
        }
    }
    if ready.is_empty() {
        return Ok((Vec::new(), throttled));
    }
    let share_records = max_records.div_ceil(ready.len());
    let share_bytes = POLL_BYTES_MAX / ready.len();
    let group = group.to_string();
    let read = blocking(move || {
        let mut out = Vec::with_capacity(ready.len());
        for (shard, reader, index, epoch, from) in ready {
            let first = reader.first_seq();
            let start = if from < first {
                tracing::warn!(group = %group, shard = %shard.id, from, to = first, "records expired before the group processed them; skipping to the trim horizon");
                metrics::counter!("stream_broker_consumer_group_skipped_records_total").increment(first - from);
                first
            } else {
                from
            };
            let batch = match reader.read(start, share_records, share_bytes) {
                Ok(b) => b,
                // Damage at the group's position: this shard cannot move on
                // until an operator repairs it; the others are still served.
                Err(e) => {
                    let e = BrokerError::from_read(e, &shard.id, "shards.next_sequence_number");
                    tracing::warn!(group = %group, shard = %shard.id, error = %e, "a group read failed; the shard is skipped");
                    metrics::counter!("stream_broker_consumer_group_read_errors_total").increment(1);
                    continue;
                }
            };
            let bytes: u64 = batch.records.iter().map(|r| (r.partition_key.len() + r.data.len()) as u64).sum();
            shard.quota.charge_read(batch.records.len() as u64, bytes, now_ms);
            let behind = if batch.next_seq >= reader.next_seq() {
                0
            } else {
                batch.records.last().map_or(0, |r| now_ms.saturating_sub(r.timestamp_ms))
            };
            out.push(ShardBatch {
                shard: index,
                epoch,
                records: batch.records,
                next_seq: batch.next_seq,
                millis_behind_latest: behind,
            });
        }
        Ok(out)
    })
    .await?;
    Ok((read, throttled))
}
