//! Server-side consumer groups: shard leases, rebalancing, fencing and
//! durable checkpoints, so a consumer is a few lines of code (Kinesis leaves
//! this to KCL and a DynamoDB lease table).
//!
//! Invariants:
//! - **One owner.** Every shard of the stream is leased to exactly one live
//!   member while the group has members (shard `i` goes to the `i mod n`-th
//!   member in join order, so counts differ by at most one).
//! - **Generations fence.** Every membership change (join, leave, session
//!   expiry) starts a new generation. Poll and Commit name the generation
//!   the member was given; any other is rejected (`StaleGeneration`) and
//!   changes nothing, so a member that missed a rebalance can neither
//!   receive records of a shard it lost nor move that shard's checkpoint.
//! - **Checkpoints are durable and monotonic.** A commit is acknowledged
//!   after the metadata store is flushed. A checkpoint (the next sequence
//!   number to process) never passes the shard's committed end and never
//!   moves backwards, except through `reset` while the group has no member.
//! - **At-least-once.** A shard's new owner starts from its checkpoint, so
//!   records delivered but not committed before a rebalance are delivered
//!   again; none is skipped, unless retention deleted it first (counted in
//!   `stream_broker_group_skipped_records_total` and logged).
//!
//! Sessions expire `groups.session_timeout_ms` after the last heartbeat
//! (or poll); expiry is checked on every group call and by a sweeper, on
//! the injected clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::{Catalog, Stream, validate_stream_name};
use crate::clock::Clock;
use crate::error::{BrokerError, Result};
use crate::metadata::{GroupMeta, MetadataStore, StartPosition};
use crate::shard::{Shard, parse_shard_id, shard_id};

/// A member's view of its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The member.
    pub member_id: String,
    /// The group's generation.
    pub generation: u64,
    /// Shard indexes leased to the member.
    pub shards: Vec<u32>,
}

/// A record delivered by a poll.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The shard it came from.
    pub shard: u32,
    /// The record.
    pub record: shardlog::Record,
}

/// A member as `describe` shows it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// Member id.
    pub member_id: String,
    /// The client's self-description.
    pub client_id: String,
    /// Leased shards.
    pub shards: Vec<u32>,
    /// Time since its last heartbeat.
    pub last_heartbeat_age_ms: u64,
}

/// A shard as `describe` shows it.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// Shard index.
    pub shard: u32,
    /// Owner, if leased.
    pub owner: Option<String>,
    /// Durable checkpoint, if any.
    pub checkpoint: Option<u64>,
    /// Records between the group's position and the shard's end.
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
    /// Current generation.
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
}

#[derive(Debug)]
struct Group {
    meta: GroupMeta,
    stream: Arc<Stream>,
    generation: u64,
    members: Vec<Member>,
    /// Durable checkpoints (cache of the store).
    checkpoints: BTreeMap<u32, u64>,
    /// Where the next poll of a shard continues in this lease: past what was
    /// delivered, not necessarily committed.
    positions: HashMap<u32, u64>,
}

impl Group {
    fn owner_index(&self, shard: u32) -> Option<usize> {
        (!self.members.is_empty()).then(|| shard as usize % self.members.len())
    }

    fn owner(&self, shard: u32) -> Option<&str> {
        self.owner_index(shard).map(|i| self.members[i].id.as_str())
    }

    fn lease(&self, member: usize) -> Lease {
        let n = self.members.len();
        let shards = (0..self.stream.shards.len() as u32).filter(|s| *s as usize % n == member).collect();
        Lease { member_id: self.members[member].id.clone(), generation: self.generation, shards }
    }

    fn member(&self, id: &str) -> Result<usize> {
        self.members
            .iter()
            .position(|m| m.id == id)
            .ok_or_else(|| BrokerError::UnknownMember { member_id: id.to_string() })
    }

    /// Starts a new generation; positions survive only for shards that keep their owner.
    fn rebalance(&mut self, before: Vec<Option<String>>) {
        self.generation += 1;
        let shards = self.stream.shards.len() as u32;
        for s in 0..shards {
            if before.get(s as usize).cloned().flatten().as_deref() != self.owner(s) {
                self.positions.remove(&s);
            }
        }
        metrics::counter!("stream_broker_group_rebalances_total").increment(1);
    }

    fn owners(&self) -> Vec<Option<String>> {
        (0..self.stream.shards.len() as u32).map(|s| self.owner(s).map(str::to_string)).collect()
    }

    /// Drops members whose session expired; true if any did.
    fn expire(&mut self, now_ms: u64, timeout_ms: u64) -> bool {
        let before = self.owners();
        let n = self.members.len();
        self.members.retain(|m| now_ms.saturating_sub(m.last_seen_ms) <= timeout_ms);
        let expired = self.members.len() != n;
        if expired {
            tracing::info!(group = %self.meta.name, expired = n - self.members.len(), "member sessions expired");
            self.rebalance(before);
        }
        expired
    }

    fn check(&mut self, member_id: &str, generation: u64, now_ms: u64) -> Result<usize> {
        let m = self.member(member_id)?;
        if generation != self.generation {
            return Err(BrokerError::StaleGeneration { requested: generation, current: self.generation });
        }
        self.members[m].last_seen_ms = now_ms;
        Ok(m)
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

/// The first sequence number of a shard for a start position. Blocking.
fn resolve(shard: &Shard, start: StartPosition) -> Result<u64> {
    let r = shard.reader()?;
    Ok(match start {
        StartPosition::TrimHorizon => r.first_seq(),
        StartPosition::Latest => r.next_seq(),
        StartPosition::AtTimestamp(ts) => r.seq_at_or_after_timestamp(ts)?,
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
                if let Some(end) = stream.shards.get(shard as usize).and_then(|s| s.reader().ok()).map(|r| r.next_seq())
                {
                    if *cp > end {
                        tracing::warn!(group = %meta.name, shard, checkpoint = *cp, end, "checkpoint past the log end; clamped");
                        *cp = end;
                    }
                }
            }
            let key = (meta.stream_id, meta.name.clone());
            let group = Group {
                meta,
                stream,
                generation: clock.now_ms(),
                members: Vec::new(),
                checkpoints,
                positions: HashMap::new(),
            };
            groups.insert(key, Arc::new(tokio::sync::Mutex::new(group)));
        }
        Ok(Self { catalog, store, clock, session_timeout_ms, groups: std::sync::Mutex::new(groups) })
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
    ) -> Result<Lease> {
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
                let g = Group {
                    meta,
                    stream,
                    generation: self.clock.now_ms(),
                    members: Vec::new(),
                    checkpoints: BTreeMap::new(),
                    positions: HashMap::new(),
                };
                let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
                groups.entry(key).or_insert_with(|| Arc::new(tokio::sync::Mutex::new(g))).clone()
            }
        };
        let now = self.clock.now_ms();
        let mut g = group.lock().await;
        g.expire(now, self.session_timeout_ms);
        let before = g.owners();
        g.members.push(Member { id: new_member_id()?, client_id: client_id.to_string(), last_seen_ms: now });
        g.rebalance(before);
        Ok(g.lease(g.members.len() - 1))
    }

    /// Renews a member's session and returns its current lease.
    pub async fn heartbeat(&self, stream: &str, group: &str, member_id: &str) -> Result<Lease> {
        let group = self.group(stream, group)?;
        let now = self.clock.now_ms();
        let mut g = group.lock().await;
        g.expire(now, self.session_timeout_ms);
        let m = g.member(member_id)?;
        g.members[m].last_seen_ms = now;
        Ok(g.lease(m))
    }

    /// Removes a member; its shards move to the others at once.
    pub async fn leave(&self, stream: &str, group: &str, member_id: &str) -> Result<()> {
        let group = self.group(stream, group)?;
        let mut g = group.lock().await;
        let m = g.member(member_id)?;
        let before = g.owners();
        g.members.remove(m);
        g.rebalance(before);
        Ok(())
    }

    /// Delivers up to `max_records` from the member's shards, waiting up to
    /// `wait` for records when there are none.
    pub async fn poll(
        &self,
        stream: &str,
        group: &str,
        member_id: &str,
        generation: u64,
        max_records: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>> {
        let group = self.group(stream, group)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (name, plan, shards) = {
                let mut g = group.lock().await;
                g.expire(self.clock.now_ms(), self.session_timeout_ms);
                let m = g.check(member_id, generation, self.clock.now_ms())?;
                let mut plan = Vec::new();
                for s in g.lease(m).shards {
                    let pos = match g.positions.get(&s).or(g.checkpoints.get(&s)) {
                        Some(&p) => p,
                        None => {
                            let (shard, start) = (g.stream.shards[s as usize].clone(), g.meta.start);
                            let p = blocking(move || resolve(&shard, start)).await?;
                            g.positions.insert(s, p);
                            p
                        }
                    };
                    plan.push((s, pos));
                }
                let shards: Vec<Arc<Shard>> = plan.iter().map(|(s, _)| g.stream.shards[*s as usize].clone()).collect();
                (g.meta.name.clone(), plan, shards)
            };
            // Watch before reading, so a record committed after the read still wakes us.
            let mut watches: Vec<_> = shards.iter().map(|s| s.watch_end()).collect();
            let (delivered, advanced) = read_round(&shards, &plan, max_records, &name).await?;
            {
                // Records read under a generation that has since changed are not delivered.
                let mut g = group.lock().await;
                g.check(member_id, generation, self.clock.now_ms())?;
                for (s, next) in advanced {
                    g.positions.insert(s, next);
                }
            }
            let now = tokio::time::Instant::now();
            if !delivered.is_empty() || now >= deadline || watches.is_empty() {
                return Ok(delivered);
            }
            // Wake on any leased shard's growth or the deadline; at most a
            // second at a time, so the member's session and a rebalance are
            // noticed while it waits.
            let nap = (deadline - now).min(Duration::from_millis(1000));
            let _ = tokio::time::timeout(nap, any_changed(&mut watches)).await;
        }
    }

    /// Stores checkpoints (`seq` = the last processed sequence number).
    pub async fn commit(
        &self,
        stream: &str,
        group: &str,
        member_id: &str,
        generation: u64,
        checkpoints: &[(String, u64)],
    ) -> Result<()> {
        let group = self.group(stream, group)?;
        let mut g = group.lock().await;
        g.expire(self.clock.now_ms(), self.session_timeout_ms);
        let m = g.check(member_id, generation, self.clock.now_ms())?;
        let mut updates = Vec::with_capacity(checkpoints.len());
        for (i, (shard_id, seq)) in checkpoints.iter().enumerate() {
            let field = format!("checkpoints[{i}]");
            let s = parse_shard_id(shard_id).filter(|s| (*s as usize) < g.stream.shards.len()).ok_or_else(|| {
                BrokerError::invalid(format!("{field}.shard_id"), format!("{shard_id:?} is not a shard of the stream"))
            })?;
            if g.owner_index(s) != Some(m) {
                return Err(BrokerError::invalid(
                    format!("{field}.shard_id"),
                    format!("{shard_id} is not leased to this member"),
                ));
            }
            let next = seq.saturating_add(1);
            let end = g.stream.shards[s as usize].reader()?.next_seq();
            if next > end {
                return Err(BrokerError::invalid(
                    format!("{field}.sequence_number"),
                    format!("{seq} is past the end of {shard_id} ({end})"),
                ));
            }
            if let Some(&cp) = g.checkpoints.get(&s) {
                if next < cp {
                    return Err(BrokerError::invalid(
                        format!("{field}.sequence_number"),
                        format!("{seq} would move the checkpoint of {shard_id} back from {}", cp - 1),
                    ));
                }
            }
            updates.push((s, next));
        }
        let (store, stream_id, name, ups) =
            (self.store.clone(), g.meta.stream_id, g.meta.name.clone(), updates.clone());
        blocking(move || store.put_checkpoints(stream_id, &name, &ups)).await?;
        for (s, next) in updates {
            g.checkpoints.insert(s, next);
            // A commit beyond what was delivered moves delivery too.
            let p = g.positions.entry(s).or_insert(next);
            *p = (*p).max(next);
        }
        Ok(())
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
                    shards: g.lease(i).shards,
                    last_heartbeat_age_ms: now.saturating_sub(m.last_seen_ms),
                }
            })
            .collect();
        let mut shards = Vec::new();
        for (i, shard) in g.stream.shards.iter().enumerate() {
            let s = i as u32;
            let checkpoint = g.checkpoints.get(&s).copied();
            let (sh, start) = (shard.clone(), g.meta.start);
            let (lag_records, lag_ms) = blocking(move || {
                let base = match checkpoint {
                    Some(c) => c,
                    None => resolve(&sh, start)?,
                };
                let r = sh.reader()?;
                let base = base.max(r.first_seq());
                let lag = r.next_seq().saturating_sub(base);
                let age = if lag == 0 {
                    0
                } else {
                    r.read(base, 1, 1)?.records.first().map_or(0, |rec| now.saturating_sub(rec.timestamp_ms))
                };
                Ok((lag, age))
            })
            .await?;
            shards.push(ShardInfo { shard: s, owner: g.owner(s).map(str::to_string), checkpoint, lag_records, lag_ms });
        }
        Ok(GroupInfo { stream: stream.to_string(), meta: g.meta.clone(), generation: g.generation, members, shards })
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
        let shards: Vec<(u32, Arc<Shard>)> =
            g.stream.shards.iter().enumerate().map(|(i, s)| (i as u32, s.clone())).collect();
        let updates = blocking(move || {
            let mut out = Vec::new();
            for (i, shard) in shards {
                let r = shard.reader()?;
                let seq = match to {
                    ResetTo::TrimHorizon => r.first_seq(),
                    ResetTo::Latest => r.next_seq(),
                    ResetTo::AtTimestamp(ts) => r.seq_at_or_after_timestamp(ts)?,
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
        g.positions.clear();
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

    /// Expires sessions in every group (the sweeper's pass).
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
async fn any_changed(watches: &mut [tokio::sync::watch::Receiver<u64>]) {
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

/// Reads up to `max_records` across the planned shards, in turn.
async fn read_round(
    shards: &[Arc<Shard>],
    plan: &[(u32, u64)],
    max_records: usize,
    group: &str,
) -> Result<(Vec<Delivered>, Vec<(u32, u64)>)> {
    let mut delivered = Vec::new();
    let mut advanced = Vec::new();
    for (shard, &(s, pos)) in shards.iter().zip(plan) {
        let left = max_records.saturating_sub(delivered.len());
        if left == 0 {
            break;
        }
        let reader = shard.reader()?;
        let first = reader.first_seq();
        let start = if pos < first {
            tracing::warn!(group, shard = %shard.id, from = pos, to = first, "records expired before the group processed them; skipping to the trim horizon");
            metrics::counter!("stream_broker_group_skipped_records_total").increment(first - pos);
            first
        } else {
            pos
        };
        let batch = blocking(move || reader.read(start, left, 4 * 1024 * 1024).map_err(BrokerError::from)).await?;
        if batch.next_seq != pos {
            advanced.push((s, batch.next_seq));
        }
        delivered.extend(batch.records.into_iter().map(|record| Delivered { shard: s, record }));
    }
    Ok((delivered, advanced))
}
