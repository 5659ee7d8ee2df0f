//! Sticky, balanced assignment of a stream's shards to a group's members.
//!
//! Invariants of [`balance`] (checked by the property test below):
//! - **Complete and exclusive.** With at least one member, every shard has
//!   exactly one target owner, and it is a live member.
//! - **Balanced.** Members' shard counts differ by at most one.
//! - **Sticky, minimal moves.** A shard keeps its current owner unless that
//!   owner holds more than its share. Members that already hold the most
//!   shards get the larger shares (`base + 1`), so the number of shards taken
//!   from live owners is the least any balanced assignment allows. Shards of
//!   departed members (no current owner) always move.
//!
//! The function is pure; the group applies its result cooperatively (a shard
//! taken from a live owner is revoked first, see `group`).

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
}
