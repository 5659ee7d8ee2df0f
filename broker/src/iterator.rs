//! Shard iterators: opaque tokens of (stream id, shard, position, issue
//! time), signed with HMAC-SHA256 under the broker's secret so a client can
//! neither forge nor alter one. An iterator expires five minutes after it
//! was issued and can be reused until then; every response carries a fresh
//! one. The stream id (never reused) makes an iterator of a deleted stream
//! useless for a new stream of the same name.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::{BrokerError, Result};

/// How long an iterator stays valid.
pub const ITERATOR_TTL_MS: u64 = 5 * 60 * 1000;
const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 1 + 8 + 4 + 8 + 8;
const MAC_LEN: usize = 16;
/// Longest token accepted before any decoding (Kinesis allows 512 characters).
const TOKEN_CHARS_MAX: usize = 512;

/// Where an iterator points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The stream's id.
    pub stream_id: u64,
    /// The shard's index.
    pub shard: u32,
    /// The next sequence number to read.
    pub seq: u64,
}

/// Issues and checks iterators.
#[derive(Clone)]
pub struct IteratorSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for IteratorSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IteratorSigner { key: <secret> }")
    }
}

impl IteratorSigner {
    /// A signer with the broker's secret.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// A token for `pos`, issued at `now_ms`.
    pub fn issue(&self, pos: Position, now_ms: u64) -> String {
        let mut buf = [0u8; PAYLOAD_LEN + MAC_LEN];
        buf[0] = VERSION;
        buf[1..9].copy_from_slice(&pos.stream_id.to_le_bytes());
        buf[9..13].copy_from_slice(&pos.shard.to_le_bytes());
        buf[13..21].copy_from_slice(&pos.seq.to_le_bytes());
        buf[21..29].copy_from_slice(&now_ms.to_le_bytes());
        let mut mac = self.mac();
        mac.update(&buf[..PAYLOAD_LEN]);
        buf[PAYLOAD_LEN..].copy_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Checks a token and returns where it points.
    pub fn open(&self, token: &str, now_ms: u64) -> Result<Position> {
        let invalid = |reason: &str| BrokerError::invalid("shard_iterator", reason);
        if token.is_empty() || token.len() > TOKEN_CHARS_MAX {
            return Err(invalid("must be 1..=512 characters"));
        }
        let buf = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid("not an iterator issued by this broker"))?;
        if buf.len() != PAYLOAD_LEN + MAC_LEN || buf[0] != VERSION {
            return Err(invalid("not an iterator issued by this broker"));
        }
        let mut mac = self.mac();
        mac.update(&buf[..PAYLOAD_LEN]);
        mac.verify_truncated_left(&buf[PAYLOAD_LEN..]).map_err(|_| invalid("signature does not match"))?;
        let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        let issued = u64_at(21);
        let age_ms = now_ms.saturating_sub(issued);
        if age_ms > ITERATOR_TTL_MS {
            return Err(BrokerError::ExpiredIterator { age_ms });
        }
        Ok(Position {
            stream_id: u64_at(1),
            shard: u32::from_le_bytes(buf[9..13].try_into().expect("4 bytes")),
            seq: u64_at(13),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POS: Position = Position { stream_id: 42, shard: 3, seq: 1_000_000 };

    #[test]
    fn round_trips_and_is_reusable_until_expiry() {
        let s = IteratorSigner::new([9; 32]);
        let t = s.issue(POS, 1_000);
        assert!(t.len() < 100);
        assert_eq!(s.open(&t, 1_000).expect("fresh"), POS);
        assert_eq!(s.open(&t, 1_000 + ITERATOR_TTL_MS).expect("reused at the limit"), POS);
        assert!(matches!(s.open(&t, 1_001 + ITERATOR_TTL_MS), Err(BrokerError::ExpiredIterator { age_ms: 300_001 })));
    }

    #[test]
    fn forged_or_altered_tokens_are_rejected() {
        let s = IteratorSigner::new([9; 32]);
        let t = s.issue(POS, 1_000);
        let other = IteratorSigner::new([8; 32]).issue(POS, 1_000);
        let mut raw = URL_SAFE_NO_PAD.decode(&t).expect("b64");
        raw[13] ^= 1; // move the position
        let altered = URL_SAFE_NO_PAD.encode(raw);
        for bad in [other.as_str(), altered.as_str(), "", "not base64!", "AAAA", &"A".repeat(600)] {
            match s.open(bad, 1_000) {
                Err(BrokerError::InvalidArgument { field, .. }) => assert_eq!(field, "shard_iterator"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
