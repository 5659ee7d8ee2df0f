//! Kinesis routing: a partition key's hash key is MD5 of its UTF-8 bytes read
//! as a big-endian u128; shard `i` of `n` owns `[i * floor(2^128 / n),
//! next shard's start - 1]`, the last shard ending at `2^128 - 1`. An
//! `ExplicitHashKey` (decimal, `[0, 2^128)`) replaces the hash.
//!
//! Invariant (property-tested): the ranges cover `0..=u128::MAX` with no gap
//! or overlap, and `shard_for(h)` is the shard whose range holds `h`.

use md5::{Digest, Md5};

/// The hash key of a partition key.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// Parses an `ExplicitHashKey`: `0|[1-9][0-9]{0,38}` with a value below 2^128.
pub fn parse_explicit_hash_key(s: &str) -> Result<u128, String> {
    let digits_ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !digits_ok || s.len() > 39 {
        return Err(format!("{s:?} is not a decimal integer without leading zeros"));
    }
    // Up to 19 digits fit a u64: parse in such chunks and combine them
    // (at most three) with checked u128 arithmetic, instead of a checked
    // u128 multiplication per digit.
    let digits = s.as_bytes();
    let chunk = |d: &[u8]| d.iter().fold(0u64, |v, &b| v * 10 + u64::from(b - b'0'));
    let head = match digits.len() % 19 {
        0 => 19,
        n => n,
    };
    // 1..=39 digits (checked above), so the head is never longer than the digits.
    let mut value = u128::from(chunk(&digits[..head]));
    for c in digits[head..].chunks(19) {
        value = value
            .checked_mul(10u128.pow(19))
            .and_then(|v| v.checked_add(u128::from(chunk(c))))
            .ok_or_else(|| format!("{s} is outside [0, 2^128 - 1]"))?;
    }
    Ok(value)
}

/// The hash ranges of a stream with `shard_count` shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashRanges {
    shard_count: u32,
    /// floor(2^128 / shard_count); `None` for one shard (2^128 does not fit).
    step: Option<u128>,
}

impl HashRanges {
    /// Ranges for `shard_count` (>= 1) shards.
    pub fn new(shard_count: u32) -> Self {
        assert!(shard_count >= 1, "a stream has at least one shard");
        let n = u128::from(shard_count);
        // floor(2^128 / n) = floor((2^128 - 1) / n), plus one when n divides 2^128.
        let step = (shard_count > 1).then(|| u128::MAX / n + u128::from(u128::MAX % n == n - 1));
        Self { shard_count, step }
    }

    /// The shard that owns `hash`.
    pub fn shard_for(&self, hash: u128) -> u32 {
        match self.step {
            None => 0,
            Some(step) => (hash / step).min(u128::from(self.shard_count - 1)) as u32,
        }
    }

    /// The inclusive range of shard `i`.
    pub fn range(&self, i: u32) -> (u128, u128) {
        assert!(i < self.shard_count, "shard {i} of {}", self.shard_count);
        let Some(step) = self.step else { return (0, u128::MAX) };
        let start = step * u128::from(i);
        let end = if i + 1 == self.shard_count { u128::MAX } else { step * u128::from(i + 1) - 1 };
        (start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_keys_hash_like_kinesis() {
        // MD5("") and MD5("a") are well known.
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
        assert_eq!(hash_key("a"), 0x0cc175b9c0f1b6a831c399e269772661);
    }

    proptest! {
        #[test]
        fn explicit_hash_keys_parse_as_the_standard_parser_does(v in any::<u128>(), extra in 0u32..=9) {
            prop_assert_eq!(parse_explicit_hash_key(&v.to_string()), Ok(v));
            // 39 digits above 2^128 - 1 are refused, as 40 digits are.
            let over = format!("{}{extra}", v / 10 + u128::MAX / 10 + 1);
            prop_assert!(parse_explicit_hash_key(&over).is_err(), "{over} accepted");
        }
    }

    #[test]
    fn explicit_hash_keys_are_checked() {
        assert_eq!(parse_explicit_hash_key("0"), Ok(0));
        assert_eq!(parse_explicit_hash_key("340282366920938463463374607431768211455"), Ok(u128::MAX));
        for bad in [
            "",
            "01",
            "-1",
            "1.5",
            "abc",
            "340282366920938463463374607431768211456",
            "9999999999999999999999999999999999999999",
        ] {
            assert!(parse_explicit_hash_key(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn two_and_four_shards_split_evenly() {
        let r = HashRanges::new(2);
        assert_eq!(r.range(0), (0, (1u128 << 127) - 1));
        assert_eq!(r.range(1), (1u128 << 127, u128::MAX));
        let r = HashRanges::new(4);
        assert_eq!(r.range(3).0, 3u128 << 126);
        assert_eq!(HashRanges::new(1).range(0), (0, u128::MAX));
    }

    proptest! {
        #[test]
        fn ranges_tile_the_space_and_routing_agrees(n in 1u32..2000, h in any::<u128>()) {
            let r = HashRanges::new(n);
            prop_assert_eq!(r.range(0).0, 0);
            prop_assert_eq!(r.range(n - 1).1, u128::MAX);
            for i in 1..n.min(50) {
                prop_assert_eq!(r.range(i).0, r.range(i - 1).1 + 1);
            }
            let s = r.shard_for(h);
            let (lo, hi) = r.range(s);
            prop_assert!(lo <= h && h <= hi);
        }
    }
}
