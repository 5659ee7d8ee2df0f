//! A stream's shard tree and the pure rules of resharding: planning splits,
//! merges and uniform scaling, and the one driver that carries a reshard
//! out through its side effects ([`Effects`]), at run time and when a
//! restart finishes an interrupted one.
//!
//! **Invariants** (checked by [`check`] after every change in the property
//! test below):
//! - the open shards' hash ranges cover `[0, 2^128)` exactly once;
//! - indexes are unique, ascending and below `next_shard_index`, so an index
//!   (and the shard id and directory it names) is never reused;
//! - every parent link resolves to a shard of the tree with a lower index
//!   that is closed or expired; a split child lies inside its parent, a
//!   merge child is exactly the union of its two adjacent parents;
//! - the stream is `Updating` exactly while a reshard is recorded, and a
//!   recorded step's parents are open and its children not yet in the tree.
//!
//! **Protocol of one step** (a split or a merge). The metadata is one value,
//! written atomically ([`crate::metadata`]):
//! 1. the step (parents, children with their indexes and ranges) is written
//!    into the stream's reshard intent and made durable;
//! 2. the children's logs are created and their directory entries fsynced;
//! 3. each parent is sealed: its writer commits what was queued before,
//!    fsyncs, and refuses every later append with the retryable
//!    `ShardClosed`; the seal returns the parent's end;
//! 4. the in-memory layout swaps, so routing sends the parents' ranges to
//!    the children (a request routed with the old layout and queued after
//!    the seal is refused, never stored in both);
//! 5. the parents become `Closed` at their ends, the children join the tree
//!    open, and the step is cleared, in one durable write.
//!
//! A failure before step 4 rolls the step back (parents unsealed, children
//! removed: nothing was written to them). After a crash the stored value is
//! the one before step 1, or the intent, or the one after step 5. An intent
//! is finished at start by the same driver: children logs are opened as
//! found (after step 4 they may hold acknowledged records, so they are
//! never wiped) and each parent's end is its recovered log's end, which
//! step 3 had fsynced. Either way the layout is the old or the new one,
//! never a mix. A target of several steps (UpdateShardCount) stays recorded
//! until it is reached, so a restart also finishes the remaining steps.

use std::collections::BTreeMap;

use crate::error::{BrokerError, Result};
use crate::metadata::{Reshard, ReshardStep, ReshardTarget, ShardMeta, ShardState, StreamMeta, StreamStatus};
use crate::routing::HashRanges;
use crate::shard::shard_id;

/// The shards of a new stream: the uniform ranges of `shard_count`, all open.
pub fn initial(shard_count: u32, now_ms: u64) -> Vec<ShardMeta> {
    let ranges = HashRanges::new(shard_count);
    (0..shard_count)
        .map(|index| {
            let (start, end) = ranges.range(index);
            ShardMeta {
                index,
                starting_hash_key: start,
                ending_hash_key: end,
                parent: None,
                adjacent_parent: None,
                created_at_ms: now_ms,
                state: ShardState::Open,
            }
        })
        .collect()
}

/// The open shards in hash order.
pub fn open_shards(meta: &StreamMeta) -> Vec<&ShardMeta> {
    let mut open: Vec<&ShardMeta> = meta.shards.iter().filter(|s| s.is_open()).collect();
    open.sort_by_key(|s| s.starting_hash_key);
    open
}

/// The shard with this index.
pub fn find(meta: &StreamMeta, index: u32) -> Option<&ShardMeta> {
    meta.shards.binary_search_by_key(&index, |s| s.index).ok().map(|i| &meta.shards[i])
}

/// Checks every invariant of the module docs; the error says which broke.
pub fn check(meta: &StreamMeta) -> std::result::Result<(), String> {
    for pair in meta.shards.windows(2) {
        if pair[0].index >= pair[1].index {
            return Err(format!("indexes not ascending: {} then {}", pair[0].index, pair[1].index));
        }
    }
    if let Some(last) = meta.shards.last().filter(|s| s.index >= meta.next_shard_index) {
        return Err(format!("index {} is not below next_shard_index {}", last.index, meta.next_shard_index));
    }
    check_cover(&open_shards(meta), "the open shards")?;
    for s in &meta.shards {
        if s.starting_hash_key > s.ending_hash_key {
            return Err(format!("{} has an empty range", shard_id(s.index)));
        }
        let parents: Vec<&ShardMeta> = s
            .parents()
            .map(|p| find(meta, p).ok_or_else(|| format!("{}: parent {} does not resolve", shard_id(s.index), p)))
            .collect::<std::result::Result<_, _>>()?;
        for p in &parents {
            if p.index >= s.index || p.is_open() {
                return Err(format!("{}: parent {} is open or not older", shard_id(s.index), shard_id(p.index)));
            }
        }
        match parents.as_slice() {
            [] | [_] if s.adjacent_parent.is_some() => return Err("an adjacent parent without a parent".into()),
            [] => {}
            [p] if !(p.starting_hash_key <= s.starting_hash_key && s.ending_hash_key <= p.ending_hash_key) => {
                return Err(format!("{} lies outside its parent", shard_id(s.index)));
            }
            [_] => {}
            [a, b] => {
                let (lo, hi) = if a.starting_hash_key < b.starting_hash_key { (a, b) } else { (b, a) };
                let union = lo.ending_hash_key.checked_add(1) == Some(hi.starting_hash_key)
                    && (lo.starting_hash_key, hi.ending_hash_key) == (s.starting_hash_key, s.ending_hash_key);
                if !union {
                    return Err(format!("{} is not the union of its two parents", shard_id(s.index)));
                }
            }
            _ => unreachable!("at most two parents"),
        }
    }
    if (meta.status == StreamStatus::Updating) != meta.reshard.is_some() {
        return Err(format!("status {:?} with reshard {:?}", meta.status, meta.reshard));
    }
    if let Some(step) = meta.reshard.as_ref().and_then(|r| r.step.as_ref()) {
        let mut parents = Vec::new();
        for &p in &step.parents {
            parents.push(find(meta, p).filter(|s| s.is_open()).ok_or_else(|| format!("step parent {p} is not open"))?);
        }
        parents.sort_by_key(|s| s.starting_hash_key);
        let mut children: Vec<&ShardMeta> = step.children.iter().collect();
        children.sort_by_key(|s| s.starting_hash_key);
        for c in &children {
            if find(meta, c.index).is_some() || c.index >= meta.next_shard_index {
                return Err(format!("step child {} is in the tree already or beyond next_shard_index", c.index));
            }
        }
        let span = |v: &[&ShardMeta]| (v[0].starting_hash_key, v[v.len() - 1].ending_hash_key);
        if parents.is_empty() || children.is_empty() || span(&parents) != span(&children) {
            return Err("a step's children do not cover exactly its parents".into());
        }
        check_span(&children)?;
    }
    Ok(())
}

/// Ranges sorted by start that cover `[0, 2^128)` exactly once.
fn check_cover(sorted: &[&ShardMeta], what: &str) -> std::result::Result<(), String> {
    let (Some(first), Some(last)) = (sorted.first(), sorted.last()) else {
        return Err(format!("{what} are none"));
    };
    if first.starting_hash_key != 0 || last.ending_hash_key != u128::MAX {
        return Err(format!("{what} do not reach both ends of the hash space"));
    }
    check_span(sorted).map_err(|e| format!("{what}: {e}"))
}

/// Sorted ranges that follow each other without gap or overlap.
fn check_span(sorted: &[&ShardMeta]) -> std::result::Result<(), String> {
    for pair in sorted.windows(2) {
        if pair[0].ending_hash_key.checked_add(1) != Some(pair[1].starting_hash_key) {
            return Err(format!("{} and {} leave a gap or overlap", shard_id(pair[0].index), shard_id(pair[1].index)));
        }
    }
    Ok(())
}

/// Indexes for `n` new shards.
fn new_indexes(meta: &StreamMeta, n: u32) -> Result<u32> {
    meta.next_shard_index
        .checked_add(n)
        .map(|_| meta.next_shard_index)
        .ok_or_else(|| BrokerError::LimitExceeded("the stream has used every shard index".into()))
}

fn child(index: u32, range: (u128, u128), parents: (u32, Option<u32>), now_ms: u64) -> ShardMeta {
    ShardMeta {
        index,
        starting_hash_key: range.0,
        ending_hash_key: range.1,
        parent: Some(parents.0),
        adjacent_parent: parents.1,
        created_at_ms: now_ms,
        state: ShardState::Open,
    }
}

/// An open shard of the stream, or why it cannot be resharded.
fn open_shard<'a>(meta: &'a StreamMeta, index: u32, field: &str) -> Result<&'a ShardMeta> {
    let s = find(meta, index)
        .filter(|s| s.is_kept())
        .ok_or_else(|| BrokerError::ShardNotFound { stream: meta.name.clone(), shard_id: shard_id(index) })?;
    if !s.is_open() {
        return Err(BrokerError::ResourceInUse {
            what: format!(
                "{field}: {} of stream {:?} is closed (it was split or merged); only open shards can be resharded",
                shard_id(index),
                meta.name
            ),
        });
    }
    Ok(s)
}

/// The split of `shard` into `[start, at - 1]` and `[at, end]`.
pub fn plan_split(meta: &StreamMeta, shard: u32, at: u128, now_ms: u64) -> Result<ReshardStep> {
    let p = open_shard(meta, shard, "shard_id")?;
    if at <= p.starting_hash_key || at > p.ending_hash_key {
        return Err(BrokerError::invalid(
            "new_starting_hash_key",
            format!(
                "{at} must be above the first hash key of {} and at most its last: ({}, {}]",
                shard_id(shard),
                p.starting_hash_key,
                p.ending_hash_key
            ),
        ));
    }
    let first = new_indexes(meta, 2)?;
    Ok(ReshardStep {
        parents: vec![shard],
        children: vec![
            child(first, (p.starting_hash_key, at - 1), (shard, None), now_ms),
            child(first + 1, (at, p.ending_hash_key), (shard, None), now_ms),
        ],
    })
}

/// The merge of `shard` with the open shard whose range adjoins it.
pub fn plan_merge(meta: &StreamMeta, shard: u32, adjacent: u32, now_ms: u64) -> Result<ReshardStep> {
    let a = open_shard(meta, shard, "shard_id")?;
    let b = open_shard(meta, adjacent, "adjacent_shard_id")?;
    let (lo, hi) = if a.starting_hash_key < b.starting_hash_key { (a, b) } else { (b, a) };
    if lo.ending_hash_key.checked_add(1) != Some(hi.starting_hash_key) {
        return Err(BrokerError::invalid(
            "adjacent_shard_id",
            format!(
                "{} and {} are not adjacent: their hash ranges [{}, {}] and [{}, {}] do not touch",
                shard_id(shard),
                shard_id(adjacent),
                a.starting_hash_key,
                a.ending_hash_key,
                b.starting_hash_key,
                b.ending_hash_key
            ),
        ));
    }
    let index = new_indexes(meta, 1)?;
    Ok(ReshardStep {
        parents: vec![shard, adjacent],
        children: vec![child(index, (lo.starting_hash_key, hi.ending_hash_key), (shard, Some(adjacent)), now_ms)],
    })
}

/// The next split or merge towards the uniform ranges of `target` shards,
/// or `None` once the open shards are exactly those ranges. Every target
/// boundary inside an open shard is split first (lowest first); then the
/// open shards inside one target range are merged pairwise from the left.
pub fn plan_scaling_step(meta: &StreamMeta, target: u32, now_ms: u64) -> Result<Option<ReshardStep>> {
    let ranges = HashRanges::new(target);
    let open = open_shards(meta);
    for t in (1..target).map(|i| ranges.range(i).0) {
        if let Some(s) = open.iter().find(|s| s.starting_hash_key < t && t <= s.ending_hash_key) {
            return plan_split(meta, s.index, t, now_ms).map(Some);
        }
    }
    for pair in open.windows(2) {
        // Every target boundary is an open boundary now, so two neighbours
        // belong to one target range exactly when the second does not start one.
        if ranges.range(ranges.shard_for(pair[1].starting_hash_key)).0 != pair[1].starting_hash_key {
            return plan_merge(meta, pair[0].index, pair[1].index, now_ms).map(Some);
        }
    }
    Ok(None)
}

/// The step a recorded target needs next, if any.
pub fn next_step(meta: &StreamMeta, now_ms: u64) -> Result<Option<ReshardStep>> {
    let Some(reshard) = &meta.reshard else { return Ok(None) };
    match reshard.target {
        ReshardTarget::Split { shard, at } => match find(meta, shard) {
            Some(s) if s.is_open() => plan_split(meta, shard, at, now_ms).map(Some),
            _ => Ok(None),
        },
        ReshardTarget::Merge { shard, adjacent } => match (find(meta, shard), find(meta, adjacent)) {
            (Some(a), Some(b)) if a.is_open() && b.is_open() => plan_merge(meta, shard, adjacent, now_ms).map(Some),
            _ => Ok(None),
        },
        ReshardTarget::Scale { target, .. } => plan_scaling_step(meta, target, now_ms),
    }
}

/// Records a new target: the stream is `Updating` from here on.
pub fn begin(meta: &mut StreamMeta, target: ReshardTarget) {
    debug_assert!(meta.reshard.is_none(), "one reshard at a time");
    meta.reshard = Some(Reshard { target, step: None });
    meta.status = StreamStatus::Updating;
}

/// Records a step as under way and reserves its children's indexes.
fn begin_step(meta: &mut StreamMeta, step: ReshardStep) {
    let top = step.children.iter().map(|c| c.index + 1).max().unwrap_or(meta.next_shard_index);
    meta.next_shard_index = meta.next_shard_index.max(top);
    if let Some(r) = meta.reshard.as_mut() {
        r.step = Some(step);
    }
}

/// The step is done: parents closed at their `ends`, children in the tree.
fn finish_step(meta: &mut StreamMeta, ends: &BTreeMap<u32, u64>, now_ms: u64) {
    let Some(step) = meta.reshard.as_mut().and_then(|r| r.step.take()) else { return };
    for s in meta.shards.iter_mut().filter(|s| step.parents.contains(&s.index)) {
        s.state = ShardState::Closed { ending_seq: ends.get(&s.index).copied().unwrap_or(0), closed_at_ms: now_ms };
    }
    meta.shards.extend(step.children);
    meta.shards.sort_by_key(|s| s.index);
}

/// The target is reached (or given up): the stream is `Active` again.
fn finish(meta: &mut StreamMeta) {
    meta.reshard = None;
    meta.status = StreamStatus::Active;
}

/// Retention removed every record of the closed shard `index` (and its
/// files are about to go): it becomes `Expired`, and expired shards that no
/// kept shard names as a parent any more leave the tree.
pub fn expire(meta: &mut StreamMeta, index: u32) {
    for s in meta.shards.iter_mut().filter(|s| s.index == index) {
        if let ShardState::Closed { closed_at_ms, .. } = s.state {
            s.state = ShardState::Expired { closed_at_ms };
        }
    }
    let keep: Vec<bool> = meta.shards.iter().map(|s| s.is_kept() || named_transitively(meta, s.index)).collect();
    let mut keep = keep.into_iter();
    meta.shards.retain(|_| keep.next().unwrap_or(true));
}

/// Whether a kept shard descends from `index`.
fn named_transitively(meta: &StreamMeta, index: u32) -> bool {
    meta.shards.iter().any(|s| s.parents().any(|p| p == index) && (s.is_kept() || named_transitively(meta, s.index)))
}

/// The side effects of a reshard; the catalogue does them on real shards,
/// the property test on a model that can crash at any call.
pub trait Effects {
    /// Makes `meta` the durable definition (one atomic write).
    fn persist(&mut self, meta: &StreamMeta) -> Result<()>;
    /// Creates (or, when finishing after a crash, opens) the children's logs
    /// and makes their directory entries durable.
    fn create_children(&mut self, children: &[ShardMeta]) -> Result<()>;
    /// Seals a parent and returns its end (the sequence number after its last record).
    fn seal(&mut self, parent: u32) -> Result<u64>;
    /// Routes with the layout of `meta` from now on.
    fn swap(&mut self, meta: &StreamMeta);
    /// Undoes a step that failed before its swap: unseals the `parents`
    /// (any of them may have been sealed, even one whose seal reported an
    /// error; unsealing an unsealed shard changes nothing) and removes the
    /// children's logs (nothing was written to them).
    fn roll_back(&mut self, parents: &[u32], children: &[ShardMeta]);
}

/// Carries out the recorded reshard of `meta` (see the module docs): one
/// step after the other until the target is reached. `meta` holds the
/// target (from [`begin`], or as stored when a start finishes it) and is
/// updated as the steps become durable; the first write stores the intent
/// with its first step, each later one closes a step and records the next
/// (or the end) at once. On an error before a swap the step is rolled back
/// and the reshard given up (the stream is `Active` with the layout it
/// had); after a swap the new layout serves even if its write fails, and
/// the stored intent is finished by the next start.
pub fn drive(meta: &mut StreamMeta, fx: &mut dyn Effects, now_ms: u64) -> Result<()> {
    let mut step = match meta.reshard.as_ref().and_then(|r| r.step.clone()) {
        Some(step) => step,
        None => {
            let mut next = meta.clone();
            let planned = next_step(meta, now_ms);
            match &planned {
                Ok(Some(step)) => begin_step(&mut next, step.clone()),
                Ok(None) | Err(_) => finish(&mut next),
            }
            fx.persist(&next)?;
            *meta = next;
            match planned? {
                Some(step) => step,
                None => return Ok(()),
            }
        }
    };
    loop {
        let mut ends = BTreeMap::new();
        let prepared = fx.create_children(&step.children).and_then(|()| {
            for &p in &step.parents {
                let end = fx.seal(p)?;
                ends.insert(p, end);
            }
            Ok(())
        });
        if let Err(e) = prepared {
            fx.roll_back(&step.parents, &step.children);
            let mut undone = meta.clone();
            if let Some(r) = undone.reshard.as_mut() {
                r.step = None;
            }
            finish(&mut undone);
            fx.persist(&undone)?;
            *meta = undone;
            return Err(e);
        }
        let mut next = meta.clone();
        finish_step(&mut next, &ends, now_ms);
        fx.swap(&next);
        let planned = next_step(&next, now_ms);
        match &planned {
            Ok(Some(following)) => begin_step(&mut next, following.clone()),
            Ok(None) | Err(_) => finish(&mut next),
        }
        // The new layout serves from here on, whether or not this write succeeds.
        let stored = fx.persist(&next);
        *meta = next;
        stored?;
        match planned? {
            Some(following) => step = following,
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::QuotaValues;
    use proptest::prelude::*;

    fn stream(shards: u32) -> StreamMeta {
        StreamMeta {
            id: 1,
            name: "s".into(),
            shards: initial(shards, 0),
            next_shard_index: shards,
            reshard: None,
            scalings_ms: Vec::new(),
            retention_hours: 24,
            quotas: QuotaValues::KINESIS,
            max_record_bytes: 1 << 20,
            status: StreamStatus::Active,
            created_at_ms: 0,
        }
    }

    /// A parent's end in the model: fixed per index, so a run finished after
    /// a crash closes it where the uninterrupted run did.
    fn end_of(index: u32) -> u64 {
        u64::from(index) * 7 + 3
    }

    /// The side effects on a model: a durable value, and a crash before any
    /// chosen call (the call and every later one fail).
    struct Model {
        durable: StreamMeta,
        calls: u32,
        crash_at: Option<u32>,
        crashed: bool,
        swapped: Option<StreamMeta>,
    }

    impl Model {
        fn new(durable: StreamMeta, crash_at: Option<u32>) -> Self {
            Self { durable, calls: 0, crash_at, crashed: false, swapped: None }
        }

        fn call(&mut self) -> Result<()> {
            self.calls += 1;
            if self.crashed || self.crash_at == Some(self.calls) {
                self.crashed = true;
                return Err(BrokerError::Unavailable("crashed".into()));
            }
            Ok(())
        }
    }

    impl Effects for Model {
        fn persist(&mut self, meta: &StreamMeta) -> Result<()> {
            self.call()?;
            check(meta).unwrap_or_else(|e| panic!("a stored tree breaks an invariant: {e}"));
            self.durable = meta.clone();
            Ok(())
        }

        fn create_children(&mut self, _children: &[ShardMeta]) -> Result<()> {
            self.call()
        }

        fn seal(&mut self, parent: u32) -> Result<u64> {
            self.call().map(|()| end_of(parent))
        }

        fn swap(&mut self, meta: &StreamMeta) {
            check_cover(&open_shards(meta), "the swapped layout").expect("a swap covers the hash space");
            self.swapped = Some(meta.clone());
        }

        fn roll_back(&mut self, _parents: &[u32], _children: &[ShardMeta]) {}
    }

    #[derive(Debug, Clone)]
    enum Op {
        Split { pick: u16, at: u64 },
        Merge { pick: u16 },
        Scale { pick: u16 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u16>(), any::<u64>()).prop_map(|(pick, at)| Op::Split { pick, at }),
            any::<u16>().prop_map(|pick| Op::Merge { pick }),
            any::<u16>().prop_map(|pick| Op::Scale { pick }),
        ]
    }

    /// The target an op asks for on `meta`, if it is valid there.
    fn target_of(meta: &StreamMeta, op: &Op) -> Option<ReshardTarget> {
        let open = open_shards(meta);
        let n = open.len() as u32;
        match *op {
            Op::Split { pick, at } => {
                let s = open[pick as usize % open.len()];
                let width = s.ending_hash_key - s.starting_hash_key;
                (width > 0 && n < 48).then(|| ReshardTarget::Split {
                    shard: s.index,
                    at: s.starting_hash_key + 1 + (u128::from(at) << 64 | u128::from(at)) % width,
                })
            }
            Op::Merge { pick } => (n > 1).then(|| {
                let i = pick as usize % (open.len() - 1);
                // Either order: the merge takes the two as given.
                let (a, b) = if pick % 2 == 0 { (open[i], open[i + 1]) } else { (open[i + 1], open[i]) };
                ReshardTarget::Merge { shard: a.index, adjacent: b.index }
            }),
            Op::Scale { pick } => {
                let (lo, hi) = (n.div_ceil(2), (2 * n).min(48));
                Some(ReshardTarget::Scale { target: lo + u32::from(pick) % (hi - lo + 1), from: n })
            }
        }
    }

    /// A shard without its times: index, hash range, parents, ending sequence number.
    type Timeless = (u32, u128, u128, Option<u32>, Option<u32>, Option<u64>);

    fn without_times(meta: &StreamMeta) -> Vec<Timeless> {
        meta.shards
            .iter()
            .map(|s| {
                let end = match s.state {
                    ShardState::Closed { ending_seq, .. } => Some(ending_seq),
                    _ => None,
                };
                (s.index, s.starting_hash_key, s.ending_hash_key, s.parent, s.adjacent_parent, end)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Random splits, merges and scalings, each crashed before a random
        /// side effect (or not at all) and finished by a restart from the
        /// durable value: after every step the tree keeps every invariant
        /// of `check` (coverage exactly once, parents closed, links resolve),
        /// and the finished layout equals that of an uninterrupted run.
        #[test]
        fn reshards_keep_the_tree_whole_across_crashes_at_any_step(
            shards in 1u32..6,
            ops in proptest::collection::vec((op(), 0u32..40), 1..12),
        ) {
            let mut durable = stream(shards);
            for (op, crash_at) in ops {
                let Some(target) = target_of(&durable, &op) else { continue };
                // The uninterrupted run, for comparison.
                let mut clean = durable.clone();
                begin(&mut clean, target);
                let mut fx = Model::new(clean.clone(), None);
                drive(&mut clean, &mut fx, 1).expect("an uninterrupted reshard");
                prop_assert_eq!(&fx.durable, &clean);
                check(&clean).map_err(TestCaseError::fail)?;
                prop_assert!(clean.reshard.is_none());
                if let ReshardTarget::Scale { target, .. } = target {
                    prop_assert_eq!(open_shards(&clean).len() as u32, target);
                    let uniform = HashRanges::new(target);
                    for (i, s) in open_shards(&clean).iter().enumerate() {
                        prop_assert_eq!((s.starting_hash_key, s.ending_hash_key), uniform.range(i as u32));
                    }
                }
                // The same reshard with a crash: the intent is written first
                // (the call was acknowledged only if it returned), then the driver runs.
                let mut live = durable.clone();
                begin(&mut live, target);
                let mut fx = Model::new(durable.clone(), Some(crash_at));
                let outcome = drive(&mut live, &mut fx, 1);
                let mut restarted = fx.durable.clone();
                check(&restarted).map_err(TestCaseError::fail)?;
                if outcome.is_ok() {
                    prop_assert_eq!(&restarted, &clean);
                } else if restarted.reshard.is_some() {
                    // The start finishes what the crash interrupted.
                    let mut fx = Model::new(restarted.clone(), None);
                    drive(&mut restarted, &mut fx, 1).expect("finishing after a crash");
                    check(&restarted).map_err(TestCaseError::fail)?;
                    prop_assert_eq!(without_times(&restarted), without_times(&clean));
                } else {
                    // Crashed before the intent was durable: the old layout.
                    prop_assert_eq!(&restarted, &durable);
                }
                durable = restarted;
            }
        }

        /// Expiring closed shards in any order keeps the tree whole, and an
        /// expired shard stays exactly while a kept shard descends from it.
        #[test]
        fn expiry_keeps_links_resolving(
            ops in proptest::collection::vec(op(), 1..10),
            order in proptest::collection::vec(any::<u16>(), 0..20),
        ) {
            let mut meta = stream(2);
            for op in ops {
                let Some(target) = target_of(&meta, &op) else { continue };
                begin(&mut meta, target);
                let mut fx = Model::new(meta.clone(), None);
                drive(&mut meta, &mut fx, 1).expect("reshard");
            }
            for pick in order {
                let closed: Vec<u32> = meta
                    .shards
                    .iter()
                    .filter(|s| matches!(s.state, ShardState::Closed { .. }))
                    .map(|s| s.index)
                    .collect();
                if closed.is_empty() {
                    break;
                }
                expire(&mut meta, closed[pick as usize % closed.len()]);
                check(&meta).map_err(TestCaseError::fail)?;
                for s in meta.shards.iter().filter(|s| !s.is_kept()) {
                    prop_assert!(named_transitively(&meta, s.index), "{} kept with no kept descendant", s.index);
                }
            }
        }
    }

    #[test]
    fn splits_and_merges_refuse_what_kinesis_refuses() {
        let mut meta = stream(2);
        let half = 1u128 << 127;
        for (at, ok) in [(0, false), (1, true), (half - 1, true), (half, false)] {
            assert_eq!(plan_split(&meta, 0, at, 0).is_ok(), ok, "split of shard 0 at {at}");
        }
        match plan_split(&meta, 0, half, 0) {
            Err(BrokerError::InvalidArgument { field, .. }) => assert_eq!(field, "new_starting_hash_key"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(plan_split(&meta, 9, 5, 0), Err(BrokerError::ShardNotFound { .. })));
        begin(&mut meta, ReshardTarget::Split { shard: 0, at: half / 2 });
        let mut fx = Model::new(meta.clone(), None);
        drive(&mut meta, &mut fx, 0).expect("split");
        assert_eq!(meta.shards.iter().map(|s| s.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
        match plan_split(&meta, 0, 5, 0) {
            Err(BrokerError::ResourceInUse { what }) => assert!(what.contains("closed"), "{what}"),
            other => panic!("a closed shard: {other:?}"),
        }
        match plan_merge(&meta, 2, 1, 0) {
            Err(BrokerError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "adjacent_shard_id");
                assert!(reason.contains("not adjacent"), "{reason}");
            }
            other => panic!("not adjacent: {other:?}"),
        }
        let step = plan_merge(&meta, 3, 1, 0).expect("adjacent");
        assert_eq!(step.children[0].parent, Some(3));
        assert_eq!(step.children[0].adjacent_parent, Some(1));
        assert_eq!((step.children[0].starting_hash_key, step.children[0].ending_hash_key), (half / 2, u128::MAX));
    }

    #[test]
    fn a_failure_before_the_swap_rolls_the_step_back() {
        struct FailingSeal(Model, Vec<u32>);
        impl Effects for FailingSeal {
            fn persist(&mut self, meta: &StreamMeta) -> Result<()> {
                self.0.persist(meta)
            }
            fn create_children(&mut self, c: &[ShardMeta]) -> Result<()> {
                self.0.create_children(c)
            }
            fn seal(&mut self, parent: u32) -> Result<u64> {
                if parent == 1 { Err(BrokerError::Unavailable("seal failed".into())) } else { Ok(end_of(parent)) }
            }
            fn swap(&mut self, _meta: &StreamMeta) {
                panic!("no swap after a failed seal");
            }
            fn roll_back(&mut self, parents: &[u32], _children: &[ShardMeta]) {
                self.1 = parents.to_vec();
            }
        }
        let mut meta = stream(2);
        let before = meta.clone();
        begin(&mut meta, ReshardTarget::Merge { shard: 0, adjacent: 1 });
        let mut fx = FailingSeal(Model::new(meta.clone(), None), Vec::new());
        assert!(drive(&mut meta, &mut fx, 0).is_err());
        assert_eq!(fx.1, [0, 1], "every parent is unsealed, the one whose seal failed too");
        assert_eq!(without_times(&meta), without_times(&before));
        assert_eq!(meta.status, StreamStatus::Active);
        assert_eq!(fx.0.durable, meta, "the rollback is durable");
        assert_eq!(meta.next_shard_index, 3, "the index given to the rolled-back child is never reused");
    }
}
