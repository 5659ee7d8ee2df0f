//! SplitShard, MergeShards and UpdateShardCount on the catalogue's streams:
//! validation, UpdateShardCount's rate limit, and the side effects that
//! [`crate::layout::drive`] asks for, done on real shards. The protocol and
//! why a crash at any step leaves the old or the new layout are in
//! [`crate::layout`]; this module only keeps its promises:
//! - `persist` is one `put_stream`, durable on return ([`MetadataStore`]);
//! - `create_children` returns after each child's log exists and its
//!   directory entry is fsynced (`ShardLog::open` syncs the stream
//!   directory after creating a shard's first segment);
//! - `seal` returns after the parent's writer fsynced everything it took
//!   ([`Shard::seal_blocking`]);
//! - `swap` replaces the stream's [`Layout`] whole.
//!
//! A reshard holds the control mutex from validation to the end, so every
//! other control call waits for it and then finds the stream as it left
//! it; a second reshard of the same stream is refused at once with
//! `ResourceInUse` (the stream is marked before the mutex is awaited, and
//! `Updating` from the intent on). The data plane keeps serving meanwhile. The work runs in a task of its own, so a
//! caller that gives up (a deadline) does not cut it short.
//!
//! Failpoints (feature `failpoints`): `broker::reshard::before_persist`,
//! `broker::reshard::after_persist`, `broker::reshard::after_children`,
//! `broker::reshard::after_seal`, `broker::reshard::after_swap`.

use super::*;
use crate::layout::{self, Effects};
use crate::metadata::{ReshardTarget, failpoint};
use crate::routing::parse_explicit_hash_key;

/// An accepted UpdateShardCount.
#[derive(Debug, Clone)]
pub struct Scaling {
    /// Open shards when the call was accepted.
    pub from: u32,
    /// Open shards now (the target).
    pub target: u32,
    /// The stream afterwards.
    pub stream: Arc<Stream>,
}

/// What a caller asks for, before validation.
#[derive(Debug, Clone)]
enum Ask {
    Split { shard_id: String, new_starting_hash_key: String },
    Merge { shard_id: String, adjacent_shard_id: String },
    Scale { target: u32 },
}

fn index_of(field: &str, shard_id: &str) -> Result<u32> {
    parse_shard_id(shard_id)
        .ok_or_else(|| BrokerError::invalid(field, format!("{shard_id:?} is not of the form shardId-NNNNNNNNNNNN")))
}

fn describe_target(t: &ReshardTarget) -> String {
    match *t {
        ReshardTarget::Split { shard, .. } => format!("a split of {}", shard_id(shard)),
        ReshardTarget::Merge { shard, adjacent } => {
            format!("a merge of {} and {}", shard_id(shard), shard_id(adjacent))
        }
        ReshardTarget::Scale { target, from } => format!("UpdateShardCount from {from} to {target} shards"),
    }
}

impl Catalog {
    /// Splits an open shard into `[start, new_starting_hash_key - 1]` and
    /// `[new_starting_hash_key, end]`; returns once the children serve.
    pub async fn split_shard(
        self: &Arc<Self>,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: &str,
    ) -> Result<Arc<Stream>> {
        let ask = Ask::Split { shard_id: shard_id.into(), new_starting_hash_key: new_starting_hash_key.into() };
        self.reshard(stream, ask).await.map(|(s, _)| s)
    }

    /// Merges two open shards with adjoining hash ranges into one; returns
    /// once the child serves.
    pub async fn merge_shards(
        self: &Arc<Self>,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<Arc<Stream>> {
        let ask = Ask::Merge { shard_id: shard_id.into(), adjacent_shard_id: adjacent_shard_id.into() };
        self.reshard(stream, ask).await.map(|(s, _)| s)
    }

    /// UpdateShardCount with UNIFORM_SCALING: splits and merges until the
    /// open shards are the uniform ranges of `target`; returns once they
    /// serve. As AWS: at most double and at least half the open shards, and
    /// at most `reshard.scalings_max` calls per stream within
    /// `reshard.scalings_window_ms`.
    pub async fn update_shard_count(self: &Arc<Self>, stream: &str, target: u32) -> Result<Scaling> {
        let (stream, from) = self.reshard(stream, Ask::Scale { target }).await?;
        Ok(Scaling { from: from.unwrap_or(target), target, stream })
    }

    async fn reshard(self: &Arc<Self>, name: &str, ask: Ask) -> Result<(Arc<Stream>, Option<u32>)> {
        validate_stream_name(name)?;
        let stream = self.get(name)?;
        let busy = || BrokerError::ResourceInUse {
            what: match stream.meta().reshard {
                Some(r) => format!(
                    "stream {name:?} is UPDATING: {} is running; retry when it is ACTIVE",
                    describe_target(&r.target)
                ),
                None => format!("stream {name:?} is UPDATING: another reshard is starting; retry when it is ACTIVE"),
            },
        };
        if stream.meta().reshard.is_some() || stream.resharding.swap(true, Ordering::SeqCst) {
            return Err(busy());
        }
        let accepted = Accepted(stream.clone());
        let (this, name, held) = (self.clone(), name.to_string(), stream);
        // Its own task: a caller that stops waiting does not stop a reshard halfway.
        let task = tokio::spawn(async move {
            let _accepted = accepted;
            let _control = this.control.lock().await;
            let stream = this.get(&name)?;
            if !Arc::ptr_eq(&stream, &held) {
                // Deleted and created again while this call waited.
                return Err(BrokerError::StreamNotFound { name });
            }
            this.disk.admit()?;
            let now = this.clock.now_ms();
            let mut meta = stream.meta();
            let open = layout::open_shards(&meta).len() as u32;
            let max = this.config.limits.max_shards_per_stream;
            let (target, from) = match ask {
                Ask::Split { shard_id, new_starting_hash_key } => {
                    let shard = index_of("shard_id", &shard_id)?;
                    let at = parse_explicit_hash_key(&new_starting_hash_key)
                        .map_err(|r| BrokerError::invalid("new_starting_hash_key", r))?;
                    layout::plan_split(&meta, shard, at, now)?;
                    if open >= max {
                        return Err(BrokerError::LimitExceeded(format!(
                            "stream {name:?} has {open} open shards, limits.max_shards_per_stream = {max}"
                        )));
                    }
                    this.admit_shards(2)?;
                    (ReshardTarget::Split { shard, at }, None)
                }
                Ask::Merge { shard_id, adjacent_shard_id } => {
                    let shard = index_of("shard_id", &shard_id)?;
                    let adjacent = index_of("adjacent_shard_id", &adjacent_shard_id)?;
                    if shard == adjacent {
                        return Err(BrokerError::invalid("adjacent_shard_id", "names the same shard as shard_id"));
                    }
                    layout::plan_merge(&meta, shard, adjacent, now)?;
                    (ReshardTarget::Merge { shard, adjacent }, None)
                }
                Ask::Scale { target } => {
                    this.check_scaling(&mut meta, open, target, now)?;
                    // A uniform rescale makes at most `target` children per step
                    // while the parents stay until retention drops them.
                    this.admit_shards(u64::from(target))?;
                    (ReshardTarget::Scale { target, from: open }, Some(open))
                }
            };
            layout::begin(&mut meta, target);
            let (c, s) = (this.clone(), stream.clone());
            this.blocking(move |_| {
                let mut fx = Steps { catalog: &c, stream: &s, recovering: false, children: BTreeMap::new() };
                let done = layout::drive(&mut meta, &mut fx, now);
                s.set_meta(meta);
                done
            })
            .await?;
            Ok((stream, from))
        });
        task.await.map_err(|e| BrokerError::Unavailable(format!("the reshard task failed: {e}")))?
    }

    /// UpdateShardCount's bounds and rate limit; records the call in `meta`.
    fn check_scaling(&self, meta: &mut StreamMeta, open: u32, target: u32, now: u64) -> Result<()> {
        let max = self.config.limits.max_shards_per_stream;
        if target == 0 || target > max {
            return Err(BrokerError::invalid(
                "target_shard_count",
                format!("must be 1..={max} (limits.max_shards_per_stream), got {target}"),
            ));
        }
        if target > open.saturating_mul(2) {
            return Err(BrokerError::invalid(
                "target_shard_count",
                format!("{target} is more than double the {open} open shards; one call may at most double them"),
            ));
        }
        if target < open.div_ceil(2) {
            return Err(BrokerError::invalid(
                "target_shard_count",
                format!("{target} is less than half the {open} open shards; one call may at most halve them"),
            ));
        }
        let r = &self.config.reshard;
        let since = now.saturating_sub(r.scalings_window_ms);
        meta.scalings_ms.retain(|&t| t > since);
        if meta.scalings_ms.len() >= r.scalings_max as usize {
            let next_ms = meta.scalings_ms.first().map_or(0, |&t| (t + r.scalings_window_ms).saturating_sub(now));
            return Err(BrokerError::LimitExceeded(format!(
                "stream {:?} was rescaled {} times within {} ms (reshard.scalings_max = {}, \
                 reshard.scalings_window_ms = {}); the next UpdateShardCount is accepted in {next_ms} ms",
                meta.name,
                meta.scalings_ms.len(),
                r.scalings_window_ms,
                r.scalings_max,
                r.scalings_window_ms
            )));
        }
        meta.scalings_ms.push(now);
        Ok(())
    }

    /// Finishes a reshard that a crash interrupted (at start). Blocking.
    pub(super) fn finish_reshard(&self, stream: &Arc<Stream>) -> Result<()> {
        let mut meta = stream.meta();
        if let Some(r) = &meta.reshard {
            tracing::warn!(stream = %meta.name, reshard = %describe_target(&r.target), "finishing an interrupted reshard");
        }
        let mut fx = Steps { catalog: self, stream, recovering: true, children: BTreeMap::new() };
        let done = layout::drive(&mut meta, &mut fx, self.clock.now_ms());
        stream.set_meta(meta);
        done
    }

    /// Expires closed shards whose records retention removed: durable in
    /// the definition first, then their writers stop and their directories
    /// go (a crash in between leaves directories that the next start removes).
    pub(super) async fn expire_shards(self: &Arc<Self>, stream: &Arc<Stream>, indexes: &[u32]) -> Result<()> {
        let _control = self.control.lock().await;
        let id = stream.meta().id;
        if self.get_by_id(id).is_none_or(|s| !Arc::ptr_eq(&s, stream)) {
            return Ok(());
        }
        let (s, indexes) = (stream.clone(), indexes.to_vec());
        self.blocking(move |c| {
            let mut meta = s.meta();
            let gone: Vec<u32> = indexes
                .into_iter()
                .filter(|&i| layout::find(&meta, i).is_some_and(|m| matches!(m.state, ShardState::Closed { .. })))
                .collect();
            if gone.is_empty() {
                return Ok(());
            }
            for &i in &gone {
                layout::expire(&mut meta, i);
            }
            c.store.put_stream(&meta)?;
            let old = s.layout();
            s.swap_layout(meta.shards.clone(), &BTreeMap::new());
            s.set_meta(meta.clone());
            let dir = c.stream_dir(id);
            for &i in &gone {
                if let Some(shard) = old.shard(i) {
                    shard.close();
                }
                let path = dir.join(shard_id(i));
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
                }
                tracing::info!(stream = %meta.name, shard = %shard_id(i), "retention removed a closed shard");
            }
            sync_dir(&dir)
        })
        .await
    }
}

/// A stream's accepted reshard, until its task ends (however it ends).
struct Accepted(Arc<Stream>);

impl Drop for Accepted {
    fn drop(&mut self) {
        self.0.resharding.store(false, Ordering::SeqCst);
    }
}

/// The side effects of a reshard on the catalogue's shards.
struct Steps<'a> {
    catalog: &'a Catalog,
    stream: &'a Stream,
    /// Finishing a reshard at start: children are opened as found and a
    /// parent that cannot be sealed closes at its readable end.
    recovering: bool,
    /// Children of the step under way, until the swap.
    children: BTreeMap<u32, Arc<Shard>>,
}

impl Effects for Steps<'_> {
    fn persist(&mut self, meta: &StreamMeta) -> Result<()> {
        failpoint("broker::reshard::before_persist")?;
        self.catalog.store.put_stream(meta)?;
        self.stream.set_meta(meta.clone());
        failpoint("broker::reshard::after_persist")
    }

    fn create_children(&mut self, children: &[ShardMeta]) -> Result<()> {
        let meta = self.stream.meta();
        let how = if self.recovering { OpenShard::Recover } else { OpenShard::Create };
        for c in children {
            let shard = self.catalog.open_shard(&meta, c, how)?;
            self.children.insert(c.index, shard);
        }
        failpoint("broker::reshard::after_children")
    }

    fn seal(&mut self, parent: u32) -> Result<u64> {
        let shard =
            self.stream.shard(parent).ok_or_else(|| BrokerError::Internal(format!("no {}", shard_id(parent))))?;
        let end = match shard.seal_blocking() {
            Ok(end) => end,
            Err(e) if self.recovering => {
                // Its failure keeps it from taking writes; nothing routes to it once closed.
                let end = shard.stats().map_or(0, |s| s.next_seq);
                tracing::error!(shard = %shard.id, error = %e, end, "cannot seal a failed parent while finishing a reshard; it closes at its readable end");
                end
            }
            Err(e) => return Err(e),
        };
        failpoint("broker::reshard::after_seal")?;
        Ok(end)
    }

    fn swap(&mut self, meta: &StreamMeta) {
        self.stream.swap_layout(meta.shards.clone(), &self.children);
        self.children.clear();
        // Only `panic` and `sleep` mean anything here: the swap is done.
        let _ = failpoint("broker::reshard::after_swap");
    }

    fn roll_back(&mut self, parents: &[u32], children: &[ShardMeta]) {
        for &p in parents {
            if let Some(Err(e)) = self.stream.shard(p).map(|s| s.unseal_blocking()) {
                tracing::error!(shard = %shard_id(p), error = %e, "cannot unseal a parent of a rolled-back reshard");
            }
        }
        let dir = self.catalog.stream_dir(self.stream.meta().id);
        for c in children {
            if let Some(shard) = self.children.remove(&c.index) {
                shard.close();
            }
            let path = dir.join(shard_id(c.index));
            if let Err(e) = std::fs::remove_dir_all(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a rolled-back child; the next start keeps it in lost+found");
                }
            }
        }
        if let Err(e) = sync_dir(&dir) {
            tracing::warn!(error = %e, "cannot sync the stream directory after a rollback");
        }
    }
}
