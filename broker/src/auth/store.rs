//! Principals, tokens and grants, in the broker's metadata database (one
//! sled tree, `auth`) with a copy in memory that every request reads.
//!
//! **Durability.** A change is written to sled and made durable by
//! [`DurableSled::commit`] (fdatasync of sled's file, fsync of its
//! directory) before the in-memory copy changes and before the call
//! returns: an acknowledged token, revocation or grant survives a crash,
//! and a revocation is in force for every request from the moment it is
//! acknowledged. Changes are serialised by one lock, so sled and the copy
//! never disagree. Deleting a principal removes its tokens and grants in one
//! sled batch (atomic).
//!
//! Keys: `p/<principal>`, `t/<token id>`, `g/<principal>\0<effect>\0<action>\0<resource>`;
//! values are JSON. A token's record holds the SHA-256 of the token, never
//! the token.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::policy::{Grant, validate_principal};
use super::token;
use crate::durable::DurableSled;
use crate::error::{BrokerError, Result};

/// A principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    /// Its name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// When it was created, ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// A token, without the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public id.
    pub id: String,
    /// Whose token it is.
    pub principal: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// Free text.
    pub description: String,
    /// When it was issued.
    pub created_at_ms: u64,
    /// When it stops working; `None`: never.
    pub expires_at_ms: Option<u64>,
    /// When it was revoked.
    pub revoked_at_ms: Option<u64>,
}

/// Why a token was not accepted; the message never repeats the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a token of this broker (malformed, unknown id, or wrong secret).
    Unknown,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl Rejected {
    /// The reason, for the caller.
    pub fn message(self) -> &'static str {
        match self {
            Rejected::Unknown => "the token is not valid",
            Rejected::Expired => "the token has expired",
            Rejected::Revoked => "the token was revoked",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    principals: BTreeMap<String, PrincipalRecord>,
    tokens: HashMap<String, TokenRecord>,
    grants: BTreeMap<String, BTreeSet<Grant>>,
}

/// The store; see the module docs.
#[derive(Debug)]
pub struct AuthStore {
    db: Arc<DurableSled>,
    tree: sled::Tree,
    state: RwLock<State>,
    /// Held across a change's write, commit and copy update.
    changing: Mutex<()>,
}

fn principal_key(name: &str) -> String {
    format!("p/{name}")
}

fn token_key(id: &str) -> String {
    format!("t/{id}")
}

fn grant_key(g: &Grant) -> String {
    format!("g/{}\0{}\0{}\0{}", g.principal, g.effect.as_str(), g.action, g.resource)
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| BrokerError::Metadata(format!("cannot encode an auth record: {e}")))
}

fn no_principal(name: &str) -> BrokerError {
    BrokerError::invalid("principal", format!("no principal is named {name:?}"))
}

impl AuthStore {
    /// Opens the `auth` tree of `db` and loads it into memory.
    pub fn open(db: Arc<DurableSled>) -> Result<Self> {
        let tree = db.db().open_tree("auth")?;
        let mut state = State::default();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let undecodable = |e: serde_json::Error| {
                BrokerError::Metadata(format!("undecodable auth record {}: {e}", String::from_utf8_lossy(&k)))
            };
            match k.first() {
                Some(b'p') => {
                    let p: PrincipalRecord = serde_json::from_slice(&v).map_err(undecodable)?;
                    state.principals.insert(p.name.clone(), p);
                }
                Some(b't') => {
                    let t: TokenRecord = serde_json::from_slice(&v).map_err(undecodable)?;
                    state.tokens.insert(t.id.clone(), t);
                }
                Some(b'g') => {
                    let g: Grant = serde_json::from_slice(&v).map_err(undecodable)?;
                    state.grants.entry(g.principal.clone()).or_default().insert(g);
                }
                _ => {
                    return Err(BrokerError::Metadata(format!("unknown auth record {}", String::from_utf8_lossy(&k))));
                }
            }
        }
        Ok(Self { db, tree, state: RwLock::new(state), changing: Mutex::new(()) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // The copy is replaced field by field under the change lock; a panic cannot tear a record.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `batch` and makes it durable. Blocks (fdatasync).
    fn commit(&self, batch: sled::Batch) -> Result<()> {
        self.tree.apply_batch(batch)?;
        self.db.commit().map_err(|e| BrokerError::Metadata(e.to_string()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a principal. Blocks until durable.
    pub fn create_principal(&self, name: &str, description: &str, now_ms: u64) -> Result<PrincipalRecord> {
        validate_principal("name", name)?;
        let _changing = self.lock();
        if self.read().principals.contains_key(name) {
            return Err(BrokerError::invalid("name", format!("a principal named {name:?} exists already")));
        }
        let p = PrincipalRecord { name: name.into(), description: description.into(), created_at_ms: now_ms };
        let mut batch = sled::Batch::default();
        batch.insert(principal_key(name).as_bytes(), json(&p)?);
        self.commit(batch)?;
        self.write().principals.insert(name.into(), p.clone());
        Ok(p)
    }

    /// Deletes a principal with its tokens and grants; returns how many
    /// tokens and grants went. Blocks until durable.
    pub fn delete_principal(&self, name: &str) -> Result<(usize, usize)> {
        let _changing = self.lock();
        let (tokens, grants): (Vec<String>, Vec<Grant>) = {
            let s = self.read();
            if !s.principals.contains_key(name) {
                return Err(no_principal(name));
            }
            (
                s.tokens.values().filter(|t| t.principal == name).map(|t| t.id.clone()).collect(),
                s.grants.get(name).map(|g| g.iter().cloned().collect()).unwrap_or_default(),
            )
        };
        let mut batch = sled::Batch::default();
        batch.remove(principal_key(name).as_bytes());
        for id in &tokens {
            batch.remove(token_key(id).as_bytes());
        }
        for g in &grants {
            batch.remove(grant_key(g).as_bytes());
        }
        self.commit(batch)?;
        let mut s = self.write();
        s.principals.remove(name);
        s.tokens.retain(|_, t| t.principal != name);
        s.grants.remove(name);
        Ok((tokens.len(), grants.len()))
    }

    /// Every principal, by name.
    pub fn principals(&self) -> Vec<PrincipalRecord> {
        self.read().principals.values().cloned().collect()
    }

    /// Whether `name` is a principal.
    pub fn has_principal(&self, name: &str) -> bool {
        self.read().principals.contains_key(name)
    }

    /// Issues a token for `principal`; returns its record and the token
    /// (shown once). Blocks until durable.
    pub fn issue_token(
        &self,
        principal: &str,
        description: &str,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(TokenRecord, String)> {
        let _changing = self.lock();
        if !self.read().principals.contains_key(principal) {
            return Err(no_principal(principal));
        }
        let new = token::generate()?;
        let record = TokenRecord {
            id: new.id.clone(),
            principal: principal.into(),
            sha256: token::hex(&new.hash),
            description: description.into(),
            created_at_ms: now_ms,
            expires_at_ms,
            revoked_at_ms: None,
        };
        let mut batch = sled::Batch::default();
        batch.insert(token_key(&record.id).as_bytes(), json(&record)?);
        self.commit(batch)?;
        self.write().tokens.insert(record.id.clone(), record.clone());
        Ok((record, new.token))
    }

    /// Revokes a token (kept, marked, for the record). Blocks until durable.
    pub fn revoke_token(&self, id: &str, now_ms: u64) -> Result<TokenRecord> {
        let _changing = self.lock();
        let mut record = self
            .read()
            .tokens
            .get(id)
            .cloned()
            .ok_or_else(|| BrokerError::invalid("id", format!("no token has the id {id:?}")))?;
        if record.revoked_at_ms.is_some() {
            return Ok(record);
        }
        record.revoked_at_ms = Some(now_ms);
        let mut batch = sled::Batch::default();
        batch.insert(token_key(id).as_bytes(), json(&record)?);
        self.commit(batch)?;
        self.write().tokens.insert(id.into(), record.clone());
        Ok(record)
    }

    /// Tokens, of one principal or all, oldest first.
    pub fn tokens(&self, principal: Option<&str>) -> Vec<TokenRecord> {
        let mut v: Vec<TokenRecord> =
            self.read().tokens.values().filter(|t| principal.is_none_or(|p| t.principal == p)).cloned().collect();
        v.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        v
    }

    /// The principal and token id a presented token authenticates, at `now_ms`.
    pub fn verify(&self, presented: &str, now_ms: u64) -> std::result::Result<(String, String), Rejected> {
        let id = token::id_of(presented).ok_or(Rejected::Unknown)?;
        let s = self.read();
        let record = s.tokens.get(id).ok_or(Rejected::Unknown)?;
        let stored = token::unhex(&record.sha256).ok_or(Rejected::Unknown)?;
        if !token::same(&stored, &token::hash(presented)) {
            return Err(Rejected::Unknown);
        }
        Self::usable(record, now_ms)?;
        Ok((record.principal.clone(), record.id.clone()))
    }

    /// Whether the token `id` still works at `now_ms` (for long-lived calls).
    pub fn still_valid(&self, id: &str, now_ms: u64) -> std::result::Result<(), Rejected> {
        let s = self.read();
        Self::usable(s.tokens.get(id).ok_or(Rejected::Revoked)?, now_ms)
    }

    fn usable(record: &TokenRecord, now_ms: u64) -> std::result::Result<(), Rejected> {
        if record.revoked_at_ms.is_some() {
            return Err(Rejected::Revoked);
        }
        if record.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return Err(Rejected::Expired);
        }
        Ok(())
    }

    /// Adds a grant; false if it existed. Blocks until durable.
    pub fn add_grant(&self, grant: &Grant) -> Result<bool> {
        grant.validate()?;
        let _changing = self.lock();
        {
            let s = self.read();
            if !s.principals.contains_key(&grant.principal) {
                return Err(no_principal(&grant.principal));
            }
            if s.grants.get(&grant.principal).is_some_and(|g| g.contains(grant)) {
                return Ok(false);
            }
        }
        let mut batch = sled::Batch::default();
        batch.insert(grant_key(grant).as_bytes(), json(grant)?);
        self.commit(batch)?;
        self.write().grants.entry(grant.principal.clone()).or_default().insert(grant.clone());
        Ok(true)
    }

    /// Removes a grant; false if there was none. Blocks until durable.
    pub fn remove_grant(&self, grant: &Grant) -> Result<bool> {
        let _changing = self.lock();
        if !self.read().grants.get(&grant.principal).is_some_and(|g| g.contains(grant)) {
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        batch.remove(grant_key(grant).as_bytes());
        self.commit(batch)?;
        let mut s = self.write();
        if let Some(set) = s.grants.get_mut(&grant.principal) {
            set.remove(grant);
            if set.is_empty() {
                s.grants.remove(&grant.principal);
            }
        }
        Ok(true)
    }

    /// Grants, of one principal or all.
    pub fn grants(&self, principal: Option<&str>) -> Vec<Grant> {
        let s = self.read();
        match principal {
            Some(p) => s.grants.get(p).map(|g| g.iter().cloned().collect()).unwrap_or_default(),
            None => s.grants.values().flat_map(|g| g.iter().cloned()).collect(),
        }
    }

    /// Runs `f` over one principal's grants without copying them.
    pub fn with_grants<T>(&self, principal: &str, f: impl FnOnce(&BTreeSet<Grant>) -> T) -> T {
        let s = self.read();
        match s.grants.get(principal) {
            Some(g) => f(g),
            None => f(&BTreeSet::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::policy::Effect;

    fn open(dir: &std::path::Path) -> AuthStore {
        AuthStore::open(Arc::new(DurableSled::open(dir).expect("sled"))).expect("store")
    }

    #[test]
    fn tokens_grants_and_revocations_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let grant = Grant {
            principal: "relay".into(),
            effect: Effect::Allow,
            action: "record:put".into(),
            resource: "stream:o".into(),
        };
        let (kept, revoked) = {
            let s = open(dir.path());
            s.create_principal("relay", "publishes", 1).expect("principal");
            assert!(s.add_grant(&grant).expect("grant"));
            assert!(!s.add_grant(&grant).expect("again"), "idempotent");
            let (kept, token) = s.issue_token("relay", "", None, 2).expect("token");
            let (revoked, old) = s.issue_token("relay", "old", Some(100), 3).expect("token");
            assert_eq!(s.verify(&token, 10), Ok(("relay".into(), kept.id.clone())));
            assert_eq!(s.verify(&old, 100), Err(Rejected::Expired));
            s.revoke_token(&revoked.id, 50).expect("revoke");
            assert_eq!(s.verify(&old, 60), Err(Rejected::Revoked));
            let mut forged = token.clone();
            forged.replace_range(token.len() - 1.., if token.ends_with('A') { "B" } else { "A" });
            assert_eq!(s.verify(&forged, 10), Err(Rejected::Unknown), "a wrong secret under a real id");
            ((kept, token), revoked)
        };
        let s = open(dir.path());
        assert_eq!(s.verify(&kept.1, 10), Ok(("relay".into(), kept.0.id.clone())), "a token survives reopen");
        assert_eq!(s.still_valid(&revoked.id, 60), Err(Rejected::Revoked), "a revocation survives reopen");
        assert_eq!(s.grants(Some("relay")), vec![grant.clone()]);
        assert!(s.tokens(None).iter().all(|t| !t.sha256.is_empty() && t.sha256 != kept.1), "only hashes are kept");
        assert_eq!(s.delete_principal("relay").expect("delete"), (2, 1));
        drop(s);
        let s = open(dir.path());
        assert!(s.principals().is_empty() && s.tokens(None).is_empty() && s.grants(None).is_empty());
        assert_eq!(s.verify(&kept.1, 10), Err(Rejected::Unknown));
    }

    #[test]
    fn tokens_and_grants_need_an_existing_principal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let e = s.issue_token("ghost", "", None, 1).expect_err("no principal");
        assert!(e.to_string().contains("ghost"), "{e}");
        let g = Grant { principal: "ghost".into(), effect: Effect::Allow, action: "*".into(), resource: "*".into() };
        assert!(s.add_grant(&g).is_err());
        assert!(s.create_principal("bad name", "", 1).is_err());
    }
}
