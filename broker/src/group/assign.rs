//! Which shards a group may lease ([`leasable`]), and their sticky,
//! balanced assignment to the group's members ([`balance`]).
//!
//! **Order across a reshard.** A shard that a split or merge closed is
//! *done* for the group when the group's checkpoint reached its end. It is
//! *finished* when it is done and all its parents are finished (a parent no
//! longer in the tree, removed by retention, counts as finished). A shard is
//! leasable when it is not finished and all its parents are. Invariants of
//! [`leasable`] (checked by the property test below, over trees made by
//! random splits, merges and scalings):
//! - **One reader per key.** For every hash key, at most one leasable shard
//!   owns (or owned) it: the shards that ever owned a key form a chain of
//!   parent and child, and a shard becomes leasable only when every shard
//!   before it in the chain is finished. So a key's records in a child are
//!   handed out only after its records in the parent were processed.
//! - **Progress.** While any shard is unfinished, some shard is leasable.
//!
//! Invariants of [`balance`] over the leasable shards (checked by the
//! property test below):
//! - **Complete and exclusive.** With at least one member, every shard has
//!   exactly one target owner, and it is a live member.
//! - **Balanced.** Members' shard counts differ by at most one.
//! - **Sticky, minimal moves.** A shard keeps its current owner unless that
//!   owner holds more than its share. Members that already hold the most
//!   shards get the larger shares (`base + 1`), so the number of shards taken
//!   from live owners is the least any balanced assignment allows. Shards of
//!   departed members (no current owner) always move.
//!
//! The functions are pure; the group applies their result cooperatively (a shard
//! taken from a live owner is revoked first, see `group`).

use std::collections::BTreeSet;

/// A shard as [`leasable`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its index.
    pub index: u32,
    /// Its parents (none, one for a split, two for a merge).
    pub parents: Vec<u32>,
    /// Closed and processed by the group to its end (or removed by retention).
    pub done: bool,
}

/// The finished shards: done, with every parent finished. Nodes are in index
/// order, and a parent's index is below its child's.
pub fn finished(nodes: &[Node]) -> BTreeSet<u32> {
    let present: BTreeSet<u32> = nodes.iter().map(|n| n.index).collect();
    let mut out = BTreeSet::new();
    for n in nodes {
        // Parents come first, so their fate is known; a parent missing from
        // the tree was removed by retention.
        if n.done && n.parents.iter().all(|p| out.contains(p) || !present.contains(p)) {
            out.insert(n.index);
        }
    }
    out
}

/// The shards a group may lease now, in index order: unfinished, with every
/// parent finished.
pub fn leasable(nodes: &[Node]) -> Vec<u32> {
    let done = finished(nodes);
    let present: BTreeSet<u32> = nodes.iter().map(|n| n.index).collect();
    nodes
        .iter()
        .filter(|n| !done.contains(&n.index) && n.parents.iter().all(|p| done.contains(p) || !present.contains(p)))
        .map(|n| n.index)
        .collect()
}

/// The target owner of every shard: an index into the members (in join
/// order), `None` only when there are no members. `owners[s]` is the index of
/// shard `s`'s current owner among the members, if it has a live one.
pub fn balance(members: usize, owners: &[Option<usize>]) -> Vec<Option<usize>> {
    let shards = owners.len();
    if members == 0 {
        return vec![None; shards];
    }
    let (base, extra) = (shards / members, shards % members);
    let mut owned = vec![0usize; members];
    for &m in owners.iter().flatten() {
        owned[m] += 1;
    }
    // The larger shares go to the members holding the most (earlier joiners on ties).
    let mut by_holdings: Vec<usize> = (0..members).collect();
    by_holdings.sort_by_key(|&m| (std::cmp::Reverse(owned[m]), m));
    let mut quota = vec![base; members];
    for &m in by_holdings.iter().take(extra) {
        quota[m] += 1;
    }
    let mut kept = vec![0usize; members];
    let mut target = vec![None; shards];
    for (s, owner) in owners.iter().enumerate() {
        if let Some(m) = *owner {
            if kept[m] < quota[m] {
                kept[m] += 1;
                target[s] = Some(m);
            }
        }
    }
    // The quotas sum to the shard count, so a member below its quota is always left.
    let mut m = 0;
    for t in target.iter_mut().filter(|t| t.is_none()) {
        while kept[m] >= quota[m] {
            m += 1;
        }
        kept[m] += 1;
        *t = Some(m);
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;
    use crate::metadata::{ReshardTarget, ShardState, StreamMeta, StreamStatus};
    use proptest::prelude::*;

    /// Shards taken from a live owner.
    fn moves(owners: &[Option<usize>], target: &[Option<usize>]) -> usize {
        owners.iter().zip(target).filter(|(o, t)| o.is_some() && o != t).count()
    }

    /// The fewest moves any balanced assignment needs, by trying every choice
    /// of which members get the larger share.
    fn fewest_moves(members: usize, owners: &[Option<usize>]) -> usize {
        let (base, extra) = (owners.len() / members, owners.len() % members);
        let mut owned = vec![0usize; members];
        for &m in owners.iter().flatten() {
            owned[m] += 1;
        }
        (0u32..1 << members)
            .filter(|mask| mask.count_ones() as usize == extra)
            .map(|mask| {
                (0..members).map(|m| owned[m].saturating_sub(base + usize::from(mask & (1 << m) != 0))).sum::<usize>()
            })
            .min()
            .unwrap_or(0)
    }

    #[test]
    fn one_joiner_takes_only_its_share() {
        let owners = vec![Some(0); 8];
        let t = balance(2, &owners);
        assert_eq!(t.iter().filter(|o| **o == Some(0)).count(), 4);
        assert_eq!(moves(&owners, &t), 4);
        // An early leaver (member 0 of 3) moves only its own shards.
        let owners: Vec<Option<usize>> = vec![Some(0), Some(1), Some(2), Some(0), Some(1), Some(2), Some(0), Some(1)];
        let after: Vec<Option<usize>> = owners.iter().map(|o| o.and_then(|m| m.checked_sub(1))).collect();
        let t = balance(2, &after);
        assert_eq!(moves(&after, &t), 0, "the two remaining members keep all their shards");
    }

    proptest! {
        /// Random joins and leaves: after every step each shard has exactly one
        /// live owner, counts differ by at most one, and moves are minimal.
        #[test]
        fn assignments_stay_complete_balanced_and_sticky(
            shards in 1usize..40,
            steps in proptest::collection::vec((any::<bool>(), any::<u8>()), 1..30),
        ) {
            let mut next_id = 0u32;
            let mut members: Vec<u32> = Vec::new();
            let mut owner_ids: Vec<Option<u32>> = vec![None; shards];
            for (join, pick) in steps {
                if join || members.is_empty() {
                    if members.len() < 6 {
                        members.push(next_id);
                        next_id += 1;
                    }
                } else {
                    let gone = members.remove(pick as usize % members.len());
                    for o in owner_ids.iter_mut().filter(|o| **o == Some(gone)) {
                        *o = None;
                    }
                }
                if members.is_empty() {
                    continue;
                }
                let owners: Vec<Option<usize>> = owner_ids
                    .iter()
                    .map(|o| o.and_then(|id| members.iter().position(|&m| m == id)))
                    .collect();
                let target = balance(members.len(), &owners);
                prop_assert!(target.iter().all(|t| t.is_some_and(|m| m < members.len())));
                let mut counts = vec![0usize; members.len()];
                for t in target.iter().flatten() {
                    counts[*t] += 1;
                }
                let (lo, hi) = (counts.iter().min().copied(), counts.iter().max().copied());
                prop_assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "counts {:?}", counts);
                prop_assert_eq!(moves(&owners, &target), fewest_moves(members.len(), &owners));
                owner_ids = target.iter().map(|t| t.map(|m| members[m])).collect();
            }
        }
    }

    /// Effects that always succeed, to build trees with the real driver.
    struct Instant;

    impl layout::Effects for Instant {
        fn persist(&mut self, _: &StreamMeta) -> crate::Result<()> {
            Ok(())
        }
        fn create_children(&mut self, _: &[crate::metadata::ShardMeta]) -> crate::Result<()> {
            Ok(())
        }
        fn seal(&mut self, _: u32) -> crate::Result<u64> {
            Ok(0)
        }
        fn swap(&mut self, _: &StreamMeta) {}
        fn roll_back(&mut self, _: &[u32], _: &[crate::metadata::ShardMeta]) {}
    }

    /// A tree made by random splits, merges and expiries, from `shards` uniform shards.
    fn tree(shards: u32, ops: &[(u8, u64)]) -> StreamMeta {
        let mut meta = StreamMeta {
            id: 1,
            name: "s".into(),
            shards: layout::initial(shards, 0),
            next_shard_index: shards,
            reshard: None,
            scalings_ms: Vec::new(),
            retention_hours: 24,
            quotas: crate::quota::QuotaValues::KINESIS,
            max_record_bytes: 1024,
            status: StreamStatus::Active,
            created_at_ms: 0,
        };
        for &(kind, pick) in ops {
            let open = layout::open_shards(&meta);
            let s = open[pick as usize % open.len()];
            let target = match kind % 4 {
                0 | 1 if s.ending_hash_key > s.starting_hash_key && open.len() < 24 => {
                    let at =
                        s.starting_hash_key + 1 + u128::from(pick) * 7919 % (s.ending_hash_key - s.starting_hash_key);
                    ReshardTarget::Split { shard: s.index, at }
                }
                2 if open.len() > 1 => {
                    let i = pick as usize % (open.len() - 1);
                    ReshardTarget::Merge { shard: open[i].index, adjacent: open[i + 1].index }
                }
                3 => {
                    let closed: Vec<u32> = meta
                        .shards
                        .iter()
                        .filter(|m| matches!(m.state, ShardState::Closed { .. }))
                        .map(|m| m.index)
                        .collect();
                    if let Some(&c) = closed.get(pick as usize % closed.len().max(1)) {
                        layout::expire(&mut meta, c);
                    }
                    continue;
                }
                _ => continue,
            };
            layout::begin(&mut meta, target);
            layout::drive(&mut meta, &mut Instant, 0).expect("reshard");
        }
        meta
    }

    proptest! {
        /// Over random shard trees and any set of shards the group is done
        /// with: at most one leasable shard per hash key (so a key's records
        /// are never handed out from two shards at once), a leasable shard's
        /// parents are finished, some shard is leasable while any is
        /// unfinished, and balancing the leasable shards gives each exactly
        /// one live owner.
        #[test]
        fn a_key_is_read_from_one_shard_at_a_time_and_progress_never_stops(
            shards in 1u32..5,
            ops in proptest::collection::vec((any::<u8>(), any::<u64>()), 0..16),
            done_mask in any::<u64>(),
            members in 1usize..5,
            keys in proptest::collection::vec(any::<u128>(), 16),
        ) {
            let meta = tree(shards, &ops);
            let nodes: Vec<Node> = meta
                .shards
                .iter()
                .map(|s| Node {
                    index: s.index,
                    parents: s.parents().collect(),
                    done: match s.state {
                        ShardState::Open => false,
                        ShardState::Expired { .. } => true,
                        ShardState::Closed { .. } => done_mask >> (s.index % 64) & 1 == 1,
                    },
                })
                .collect();
            let fin = finished(&nodes);
            let lease = leasable(&nodes);
            let boundaries = meta.shards.iter().flat_map(|s| [s.starting_hash_key, s.ending_hash_key]);
            for key in keys.into_iter().chain(boundaries) {
                let owners: Vec<u32> = meta
                    .shards
                    .iter()
                    .filter(|s| s.is_kept() && s.covers(key) && lease.contains(&s.index))
                    .map(|s| s.index)
                    .collect();
                prop_assert!(owners.len() <= 1, "key {} is leasable in {:?}", key, owners);
            }
            for &l in &lease {
                prop_assert!(!fin.contains(&l));
                let n = nodes.iter().find(|n| n.index == l).expect("node");
                for p in &n.parents {
                    prop_assert!(fin.contains(p) || !nodes.iter().any(|m| m.index == *p), "{} before its parent {}", l, p);
                }
            }
            let unfinished = nodes.iter().any(|n| !fin.contains(&n.index));
            prop_assert_eq!(unfinished, !lease.is_empty(), "progress: unfinished shards but none leasable");
            // Every open shard is unfinished, so something is always leasable.
            prop_assert!(!lease.is_empty());
            let target = balance(members, &vec![None; lease.len()]);
            prop_assert!(target.iter().all(|t| t.is_some_and(|m| m < members)));
        }
    }
}
