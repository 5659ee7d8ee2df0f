//! A history checker for delivery guarantees: tests record every
//! acknowledged produce and every record a consumer handled, then
//! [`History::check`] says what went wrong, with examples.
//!
//! Recording is cheap (one short `std::sync::Mutex` section that interns
//! three strings and pushes a fixed-size event), so a test can record
//! hundreds of thousands of events from many tasks through an
//! `Arc<History>`. Payloads are kept as a 64-bit digest only.
//!
//! Definitions (a record is named by its `(shard, seq)`; a *stream* is the
//! sequence of handlings of one shard by one member under one generation,
//! in the order that member handled them):
//! - **lost**: an acknowledged `(shard, seq)` that was never handled.
//! - **skipped**: in one stream, consecutive handled seqs `a < b` with
//!   `b > a + 1` where some seq in `(a, b)` was never handled by anyone (a
//!   gap that no later redelivery filled). Shard sequence numbers are dense,
//!   so every seq in the gap exists. One entry per missing `(shard, seq)`,
//!   acknowledged or not: a skipped acknowledged record is also lost.
//! - **reordered**: for one key, a record first handled before an earlier
//!   record of the same key (lower seq, same shard) was first handled; and
//!   producer reordering: a key's acknowledged seqs (same shard) not
//!   increasing in the order [`History::produced`] was called for that key.
//!   Handling `5, 6, 5, 6` is in order: only first handlings count.
//!   Across shards (a key moves to a child shard when its shard is split or
//!   merged): for one key, a record first handled before the record
//!   acknowledged just before it (in [`History::produced`] order, among the
//!   key's handled records) was first handled.
//! - **corrupted**: a handled record whose key or payload digest differs
//!   from the one acknowledged at the same `(shard, seq)`, or from the one
//!   handled first at that `(shard, seq)` (one position read back with two
//!   contents), or one `(shard, seq)` acknowledged twice with different
//!   contents.
//! - **duplicates**: handlings of a `(shard, seq)` beyond its first,
//!   counted, not an error (at-least-once allows them across a rebalance or
//!   crash); `duplicates_within_stream` counts those that happened inside
//!   one stream (a member handling the same record twice in one generation).
//! - **unacked_handled**: distinct handled records that were never
//!   acknowledged: allowed, since an acknowledgement can be lost after the
//!   broker stored the record.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::Hasher;
use std::sync::Mutex;

/// How many examples of each anomaly [`Report`]'s `Display` prints.
const EXAMPLES_SHOWN: usize = 5;

/// Strings (keys, shard ids, member names) are stored once and named by index.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct names in one history");
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

#[derive(Debug, Clone, Copy)]
struct Produced {
    key: u32,
    shard: u32,
    seq: u64,
    digest: u64,
}

#[derive(Debug, Clone, Copy)]
struct Handled {
    member: u32,
    generation: u64,
    shard: u32,
    seq: u64,
    key: u32,
    digest: u64,
}

#[derive(Debug, Default)]
struct Inner {
    names: Interner,
    produced: Vec<Produced>,
    handled: Vec<Handled>,
}

/// A thread-safe record of acknowledged produces and handled records; see
/// the module docs for what [`History::check`] reports.
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

/// One anomaly: the record it concerns and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// The record's shard.
    pub shard_id: String,
    /// The record's sequence number.
    pub seq: u64,
    /// The record's partition key (empty when no one acknowledged or handled it).
    pub key: String,
    /// The member that saw the anomaly (empty for lost records).
    pub member: String,
    /// The generation the member handled under.
    pub generation: u64,
    /// What happened, in words.
    pub detail: String,
}

/// What [`History::check`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Distinct acknowledged records.
    pub acked: u64,
    /// Handlings, duplicates included.
    pub handled: u64,
    /// Distinct handled records.
    pub distinct_handled: u64,
    /// Acknowledged, never handled.
    pub lost: Vec<Anomaly>,
    /// Gaps in a member's stream that no one filled.
    pub skipped: Vec<Anomaly>,
    /// Per-key order broken, by a consumer or the producer.
    pub reordered: Vec<Anomaly>,
    /// Handled contents differ from the acknowledged ones.
    pub corrupted: Vec<Anomaly>,
    /// Handlings beyond each record's first.
    pub duplicates: u64,
    /// Of `duplicates`, those within one member + generation + shard stream.
    pub duplicates_within_stream: u64,
    /// Distinct handled records that were never acknowledged.
    pub unacked_handled: u64,
}

impl Report {
    /// No lost, skipped, reordered or corrupted record (duplicates are allowed).
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.skipped.is_empty() && self.reordered.is_empty() && self.corrupted.is_empty()
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} seq {}", self.shard_id, self.seq)?;
        if !self.key.is_empty() {
            write!(f, " key {:?}", self.key)?;
        }
        if !self.member.is_empty() {
            write!(f, " member {} generation {}", self.member, self.generation)?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history: {} acknowledged, {} handlings of {} distinct records ({} never acknowledged)",
            self.acked, self.handled, self.distinct_handled, self.unacked_handled
        )?;
        writeln!(
            f,
            "  lost {}, skipped {}, reordered {}, corrupted {}, duplicates {} ({} within one member+generation)",
            self.lost.len(),
            self.skipped.len(),
            self.reordered.len(),
            self.corrupted.len(),
            self.duplicates,
            self.duplicates_within_stream
        )?;
        for (name, list) in [
            ("lost", &self.lost),
            ("skipped", &self.skipped),
            ("reordered", &self.reordered),
            ("corrupted", &self.corrupted),
        ] {
            for a in list.iter().take(EXAMPLES_SHOWN) {
                writeln!(f, "  {name}: {a}")?;
            }
            if list.len() > EXAMPLES_SHOWN {
                writeln!(f, "  {name}: ... and {} more", list.len() - EXAMPLES_SHOWN)?;
            }
        }
        Ok(())
    }
}

/// A 64-bit digest of a payload; `DefaultHasher::new` uses fixed keys, so
/// equal payloads give equal digests within and across processes.
fn digest(data: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(data);
    h.finish()
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section only pushes to vectors; a panic in one
        // leaves the history usable, and the test that panicked fails anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one acknowledged produce. Call it for a key in the order its
    /// records were sent, so producer reordering shows; a key's records are
    /// sent one after another (as one producer sends them), since their
    /// order across shards (a parent, then its children) is taken from
    /// these calls.
    pub fn produced(&self, key: &str, shard_id: &str, seq: u64, data: &[u8]) {
        let digest = digest(data);
        let mut g = self.lock();
        let (key, shard) = (g.names.id(key), g.names.id(shard_id));
        g.produced.push(Produced { key, shard, seq, digest });
    }

    /// Records one record a consumer handled, in the order `member` handled
    /// them; `generation` is the lease generation it was delivered under (0
    /// when unknown).
    pub fn handled(&self, member: &str, generation: u64, shard_id: &str, seq: u64, key: &str, data: &[u8]) {
        let digest = digest(data);
        let mut g = self.lock();
        let (member, shard, key) = (g.names.id(member), g.names.id(shard_id), g.names.id(key));
        g.handled.push(Handled { member, generation, shard, seq, key, digest });
    }

    /// Acknowledged records not handled yet (for a test waiting for its consumers).
    pub fn unhandled(&self) -> usize {
        let g = self.lock();
        let handled: HashSet<(u32, u64)> = g.handled.iter().map(|h| (h.shard, h.seq)).collect();
        let acked: HashSet<(u32, u64)> = g.produced.iter().map(|p| (p.shard, p.seq)).collect();
        acked.difference(&handled).count()
    }

    /// Checks the whole history; see the module docs for the definitions.
    pub fn check(&self) -> Report {
        let g = self.lock();
        let name = |id: u32| g.names.name(id).to_string();
        let mut report = Report { handled: g.handled.len() as u64, ..Report::default() };

        // Acknowledged records, and producer reordering per key in send order.
        let mut acked: HashMap<(u32, u64), Produced> = HashMap::with_capacity(g.produced.len());
        let mut last_acked: HashMap<(u32, u32), u64> = HashMap::new();
        for p in &g.produced {
            if let Some(prev) = last_acked.insert((p.key, p.shard), p.seq) {
                if p.seq <= prev {
                    report.reordered.push(Anomaly {
                        shard_id: name(p.shard),
                        seq: p.seq,
                        key: name(p.key),
                        member: String::new(),
                        generation: 0,
                        detail: format!("producer: acknowledged after seq {prev} of the same key, sent earlier"),
                    });
                }
            }
            match acked.get(&(p.shard, p.seq)) {
                Some(first) if first.key != p.key || first.digest != p.digest => report.corrupted.push(Anomaly {
                    shard_id: name(p.shard),
                    seq: p.seq,
                    key: name(p.key),
                    member: String::new(),
                    generation: 0,
                    detail: format!("acknowledged twice with different contents (first key {:?})", name(first.key)),
                }),
                Some(_) => {}
                None => {
                    acked.insert((p.shard, p.seq), *p);
                }
            }
        }
        report.acked = acked.len() as u64;

        // First handlings, duplicates, corruption, and per-key order of first handlings.
        let mut first: HashMap<(u32, u64), Handled> = HashMap::with_capacity(g.handled.len());
        let mut first_at: HashMap<(u32, u64), usize> = HashMap::with_capacity(g.handled.len());
        let mut per_stream: HashMap<(u32, u64, u32, u64), u32> = HashMap::with_capacity(g.handled.len());
        let mut key_max: HashMap<(u32, u32), (u64, u32)> = HashMap::new();
        for (at, h) in g.handled.iter().enumerate() {
            let n = per_stream.entry((h.member, h.generation, h.shard, h.seq)).or_insert(0);
            *n += 1;
            if *n > 1 {
                report.duplicates_within_stream += 1;
            }
            if let Some(p) = acked.get(&(h.shard, h.seq)) {
                if p.key != h.key || p.digest != h.digest {
                    report.corrupted.push(Anomaly {
                        shard_id: name(h.shard),
                        seq: h.seq,
                        key: name(h.key),
                        member: name(h.member),
                        generation: h.generation,
                        detail: format!(
                            "handled contents differ from the acknowledged ones (key {:?}, payload digest {:016x} vs {:016x})",
                            name(p.key),
                            h.digest,
                            p.digest
                        ),
                    });
                }
            }
            if let Some(f) = first.get(&(h.shard, h.seq)) {
                report.duplicates += 1;
                if (f.key, f.digest) != (h.key, h.digest) && !acked.contains_key(&(h.shard, h.seq)) {
                    report.corrupted.push(Anomaly {
                        shard_id: name(h.shard),
                        seq: h.seq,
                        key: name(h.key),
                        member: name(h.member),
                        generation: h.generation,
                        detail: format!(
                            "handled with other contents than {} handled first at this position (key {:?})",
                            name(f.member),
                            name(f.key)
                        ),
                    });
                }
                continue;
            }
            first.insert((h.shard, h.seq), *h);
            first_at.insert((h.shard, h.seq), at);
            match key_max.get(&(h.key, h.shard)) {
                Some(&(max, by)) if h.seq < max => report.reordered.push(Anomaly {
                    shard_id: name(h.shard),
                    seq: h.seq,
                    key: name(h.key),
                    member: name(h.member),
                    generation: h.generation,
                    detail: format!("first handled after seq {max} of the same key (first handled by {})", name(by)),
                }),
                _ => {
                    key_max.insert((h.key, h.shard), (h.seq, h.member));
                }
            }
        }
        // Per-key order across shards: each handled record of a key after the
        // one acknowledged before it (same-shard pairs were checked above).
        let mut key_last: HashMap<u32, (u32, u64, usize)> = HashMap::new();
        let mut seen: HashSet<(u32, u64)> = HashSet::with_capacity(g.produced.len());
        for p in &g.produced {
            let Some(&at) = first_at.get(&(p.shard, p.seq)) else { continue };
            if !seen.insert((p.shard, p.seq)) {
                continue;
            }
            if let Some(&(shard, seq, prev_at)) = key_last.get(&p.key) {
                if shard != p.shard && at < prev_at {
                    let h = &first[&(p.shard, p.seq)];
                    report.reordered.push(Anomaly {
                        shard_id: name(p.shard),
                        seq: p.seq,
                        key: name(p.key),
                        member: name(h.member),
                        generation: h.generation,
                        detail: format!(
                            "first handled before {} seq {seq} of the same key, acknowledged earlier",
                            name(shard)
                        ),
                    });
                }
            }
            key_last.insert(p.key, (p.shard, p.seq, at));
        }
        report.distinct_handled = first.len() as u64;
        report.unacked_handled = first.keys().filter(|r| !acked.contains_key(r)).count() as u64;

        // Lost: acknowledged, never handled; sorted for a stable report.
        let mut lost: Vec<&Produced> = acked.values().filter(|p| !first.contains_key(&(p.shard, p.seq))).collect();
        lost.sort_by(|a, b| (g.names.name(a.shard), a.seq).cmp(&(g.names.name(b.shard), b.seq)));
        report.lost = lost
            .into_iter()
            .map(|p| Anomaly {
                shard_id: name(p.shard),
                seq: p.seq,
                key: name(p.key),
                member: String::new(),
                generation: 0,
                detail: "acknowledged, never handled".into(),
            })
            .collect();

        // Skipped: gaps inside one stream that nobody filled, once per missing record.
        let mut streams: BTreeMap<(u32, u64, u32), Vec<u64>> = BTreeMap::new();
        for h in &g.handled {
            streams.entry((h.member, h.generation, h.shard)).or_default().push(h.seq);
        }
        let mut skipped: BTreeMap<(String, u64), Anomaly> = BTreeMap::new();
        let mut seen_gaps: BTreeSet<(u32, u64)> = BTreeSet::new();
        for (&(member, generation, shard), seqs) in &streams {
            for w in seqs.windows(2) {
                let (a, b) = (w[0], w[1]);
                if b <= a.saturating_add(1) {
                    continue;
                }
                for missing in a + 1..b {
                    if first.contains_key(&(shard, missing)) || !seen_gaps.insert((shard, missing)) {
                        continue;
                    }
                    skipped.insert(
                        (name(shard), missing),
                        Anomaly {
                            shard_id: name(shard),
                            seq: missing,
                            key: acked.get(&(shard, missing)).map(|p| name(p.key)).unwrap_or_default(),
                            member: name(member),
                            generation,
                            detail: format!("handled seq {a} then {b}; {missing} was never handled by anyone"),
                        },
                    );
                }
            }
        }
        report.skipped = skipped.into_values().collect();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S0: &str = "shardId-000000000000";
    const S1: &str = "shardId-000000000001";

    fn payload(shard: &str, seq: u64) -> Vec<u8> {
        format!("{shard}/{seq}").into_bytes()
    }

    /// Acknowledges seqs `0..n` of `shard` with key `k{seq % keys}`.
    fn produce(h: &History, shard: &str, n: u64, keys: u64) {
        for seq in 0..n {
            h.produced(&format!("k{}", seq % keys), shard, seq, &payload(shard, seq));
        }
    }

    #[test]
    fn a_key_that_moves_to_a_child_shard_must_be_handled_parent_first() {
        // Key k: seq 0 and 1 in the parent, then seq 0 in the child.
        let history = |child_first: bool| {
            let h = History::new();
            h.produced("k", S0, 0, b"a");
            h.produced("k", S0, 1, b"b");
            h.produced("k", S1, 0, b"c");
            if child_first {
                h.handled("m2", 2, S1, 0, "k", b"c");
            }
            h.handled("m1", 1, S0, 0, "k", b"a");
            h.handled("m1", 1, S0, 1, "k", b"b");
            if !child_first {
                h.handled("m2", 2, S1, 0, "k", b"c");
            }
            h.check()
        };
        assert!(history(false).is_clean(), "{}", history(false));
        let r = history(true);
        assert_eq!(r.reordered.len(), 1, "{r}");
        assert_eq!((r.reordered[0].shard_id.as_str(), r.reordered[0].seq), (S1, 0));
        assert!(r.reordered[0].detail.contains("acknowledged earlier"), "{r}");
    }

    fn handle(h: &History, member: &str, generation: u64, shard: &str, seqs: impl IntoIterator<Item = u64>, keys: u64) {
        for seq in seqs {
            h.handled(member, generation, shard, seq, &format!("k{}", seq % keys), &payload(shard, seq));
        }
    }

    #[test]
    fn a_clean_history_with_a_rebalance_and_redelivery_is_clean() {
        let h = History::new();
        produce(&h, S0, 10, 3);
        produce(&h, S1, 10, 3);
        // m1 handles 0..6 of S0, the shard moves, m2 resumes from the checkpoint at 4.
        handle(&h, "m1", 1, S0, 0..6, 3);
        handle(&h, "m2", 2, S0, 4..10, 3);
        handle(&h, "m1", 1, S1, 0..10, 3);
        // A record stored twice by a producer retry, handled but never acknowledged.
        h.handled("m1", 1, S1, 10, "k1", b"retried copy");
        let r = h.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.acked, r.handled, r.distinct_handled), (20, 23, 21));
        assert_eq!((r.duplicates, r.duplicates_within_stream, r.unacked_handled), (2, 0, 1));
        assert_eq!(h.unhandled(), 0);
    }

    #[test]
    fn an_acknowledged_record_never_handled_is_lost() {
        let h = History::new();
        produce(&h, S0, 5, 1);
        handle(&h, "m1", 1, S0, 0..4, 1);
        assert_eq!(h.unhandled(), 1);
        let r = h.check();
        assert!(!r.is_clean());
        assert_eq!(r.lost.len(), 1, "{r}");
        assert_eq!((r.lost[0].shard_id.as_str(), r.lost[0].seq, r.lost[0].key.as_str()), (S0, 4, "k0"));
        assert!(r.skipped.is_empty() && r.reordered.is_empty() && r.corrupted.is_empty(), "{r}");
        assert!(r.to_string().contains("lost: shardId-000000000000 seq 4"), "{r}");
    }

    #[test]
    fn a_gap_no_one_filled_is_skipped_and_a_filled_one_is_not() {
        let h = History::new();
        produce(&h, S0, 10, 10);
        // m1 jumps from 2 to 6: 3 is redelivered to m2 later, 4 and 5 never are.
        handle(&h, "m1", 7, S0, [0, 1, 2, 6, 7, 8, 9], 10);
        handle(&h, "m2", 8, S0, [3], 10);
        let r = h.check();
        let skipped: Vec<u64> = r.skipped.iter().map(|a| a.seq).collect();
        assert_eq!(skipped, [4, 5], "{r}");
        assert_eq!((r.skipped[0].member.as_str(), r.skipped[0].generation), ("m1", 7));
        assert_eq!(r.lost.iter().map(|a| a.seq).collect::<Vec<_>>(), [4, 5]);
        // A skipped record that was never acknowledged is still skipped, not lost.
        let h = History::new();
        handle(&h, "m1", 1, S0, [0, 2], 1);
        let r = h.check();
        assert_eq!((r.skipped.len(), r.lost.len()), (1, 0), "{r}");
        assert!(!r.is_clean());
    }

    #[test]
    fn a_key_handled_out_of_order_is_reordered_even_when_the_gap_is_filled_later() {
        let h = History::new();
        produce(&h, S0, 4, 1);
        // m1 skips 1 and handles 2; m2 delivers 1 afterwards: nothing lost, but key order broke.
        handle(&h, "m1", 1, S0, [0, 2, 3], 1);
        handle(&h, "m2", 2, S0, [1], 1);
        let r = h.check();
        assert!(r.lost.is_empty() && r.skipped.is_empty(), "{r}");
        assert_eq!(r.reordered.len(), 1, "{r}");
        assert_eq!((r.reordered[0].seq, r.reordered[0].member.as_str()), (1, "m2"));
        // Records of different keys may interleave in any order.
        let h = History::new();
        produce(&h, S0, 4, 4);
        handle(&h, "m1", 1, S0, [0, 2, 3], 4);
        handle(&h, "m2", 2, S0, [1], 4);
        assert!(h.check().reordered.is_empty());
    }

    #[test]
    fn a_key_acknowledged_out_of_send_order_is_producer_reordering() {
        let h = History::new();
        h.produced("k", S0, 5, b"a");
        h.produced("k", S0, 3, b"b");
        h.produced("other", S0, 4, b"c");
        for (seq, data) in [(3, b"b"), (4, b"c"), (5, b"a")] {
            let key = if seq == 4 { "other" } else { "k" };
            h.handled("m1", 1, S0, seq, key, data);
        }
        let r = h.check();
        assert_eq!(r.reordered.len(), 1, "{r}");
        assert!(r.reordered[0].detail.starts_with("producer"), "{r}");
        assert_eq!(r.reordered[0].seq, 3);
    }

    #[test]
    fn different_contents_at_an_acknowledged_position_are_corrupted() {
        let h = History::new();
        produce(&h, S0, 3, 1);
        h.handled("m1", 1, S0, 0, "k0", &payload(S0, 0));
        h.handled("m1", 1, S0, 1, "k0", b"not what was acknowledged");
        h.handled("m1", 1, S0, 2, "another key", &payload(S0, 2));
        // Two acknowledgements of one position with different payloads.
        h.produced("k0", S1, 0, b"x");
        h.produced("k0", S1, 0, b"y");
        h.handled("m1", 1, S1, 0, "k0", b"x");
        // An unacknowledged position read back with two contents.
        h.handled("m1", 1, S1, 1, "k0", b"before the restart");
        h.handled("m2", 2, S1, 1, "k0", b"after the restart");
        let r = h.check();
        let corrupted: Vec<(String, u64)> = r.corrupted.iter().map(|a| (a.shard_id.clone(), a.seq)).collect();
        assert_eq!(corrupted.len(), 4, "{r}");
        assert!(corrupted.contains(&(S0.into(), 1)) && corrupted.contains(&(S0.into(), 2)));
        assert!(corrupted.contains(&(S1.into(), 0)) && corrupted.contains(&(S1.into(), 1)));
        assert!(r.lost.is_empty());
        assert!(!r.is_clean());
    }

    #[test]
    fn duplicates_are_counted_and_split_by_stream() {
        let h = History::new();
        produce(&h, S0, 3, 1);
        // m1 handles 0..3, its batch is retried inside the same generation (1, 2 again),
        // then m2 gets the shard and replays from 1.
        handle(&h, "m1", 1, S0, [0, 1, 2, 1, 2], 1);
        handle(&h, "m2", 2, S0, [1, 2], 1);
        let r = h.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.duplicates, r.duplicates_within_stream, r.distinct_handled), (4, 2, 3));
    }

    #[test]
    fn recording_is_safe_from_many_threads() {
        let h = std::sync::Arc::new(History::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    // One key per thread: a key's records are produced one
                    // after another (see `History::produced`).
                    let (shard, key) = (format!("shardId-{t:012}"), format!("k{t}"));
                    for seq in 0..1000 {
                        h.produced(&key, &shard, seq, &payload(&shard, seq));
                        h.handled("m", 0, &shard, seq, &key, &payload(&shard, seq));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        let r = h.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.acked, r.distinct_handled, r.duplicates), (4000, 4000, 0));
    }
}
