//! API tokens: `sbk_<id>_<secret>`, where `<id>` is 16 hex digits (public:
//! it names the token in lists and revocations) and `<secret>` is 32 random
//! bytes in unpadded base64url, from the operating system's generator.
//!
//! Only the SHA-256 of the whole token is stored. A plain (unsalted, fast)
//! hash is enough here because the token has 256 random bits: there is no
//! dictionary to attack and no way to search the space. Hashes are compared
//! in constant time.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::{BrokerError, Result};

/// Every token starts with this (so a leaked one is recognisable in scans).
pub const PREFIX: &str = "sbk_";

/// A new token: its id, the token itself (shown once), and its hash.
#[derive(Clone)]
pub struct NewToken {
    /// The public id.
    pub id: String,
    /// The whole token, to hand to the caller once.
    pub token: String,
    /// SHA-256 of `token`.
    pub hash: [u8; 32],
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Draws a new token.
pub fn generate() -> Result<NewToken> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| BrokerError::Internal(format!("no randomness for a token: {e}")))?;
    getrandom::fill(&mut secret).map_err(|e| BrokerError::Internal(format!("no randomness for a token: {e}")))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("{PREFIX}{id}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
    Ok(NewToken { hash: hash(&token), id, token })
}

/// The id of a well-formed token, or `None`.
pub fn id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && secret.len() == 43;
    ok.then_some(id)
}

/// SHA-256 of a token (or of the bootstrap token).
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two hashes without a data-dependent early exit.
pub fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hex of a hash, as stored.
pub fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash whose hex this is.
pub fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_well_formed_and_hash_round_trips() {
        let a = generate().expect("token");
        let b = generate().expect("token");
        assert_ne!(a.token, b.token);
        assert_eq!(id_of(&a.token), Some(a.id.as_str()));
        assert!(a.token.starts_with("sbk_") && a.token.len() == 4 + 16 + 1 + 43, "{}", a.token);
        assert_eq!(unhex(&hex(&a.hash)), Some(a.hash));
        assert!(same(&a.hash, &hash(&a.token)));
        assert!(!same(&a.hash, &b.hash));
        assert!(!format!("{a:?}").contains(&a.token[21..]), "Debug hides the secret");
        for bad in ["", "sbk_", "sbk_0123456789abcdef", "xyz_0123456789abcdef_", "sbk_0123456789abcdeg_x"] {
            assert_eq!(id_of(bad), None, "{bad}");
        }
    }
}
