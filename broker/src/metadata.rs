//! Broker metadata (stream definitions, the iterator-signing secret) behind
//! a small trait. Record data never goes here.
//!
//! Invariant: a method that changes metadata returns only after the change
//! is durable (sled is flushed), so the broker can acknowledge it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};
use crate::quota::QuotaValues;

/// Lifecycle of a stream. A stream is `Creating` until all its shard logs
/// exist and `Deleting` from the moment a delete starts; after a crash the
/// broker rolls a `Creating` stream back and finishes a `Deleting` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamStatus {
    /// Shard logs are being created.
    Creating,
    /// Serving.
    Active,
    /// Being removed.
    Deleting,
}

/// A stream's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Unique for the life of the broker; never reused, so an old iterator
    /// can never read a re-created stream of the same name. Names the
    /// stream's directory (the name never does).
    pub id: u64,
    /// The user's name.
    pub name: String,
    /// Number of shards.
    pub shard_count: u32,
    /// Retention, 24..=168 hours.
    pub retention_hours: u32,
    /// Per-shard quotas.
    pub quotas: QuotaValues,
    /// Largest record, key + data.
    pub max_record_bytes: u32,
    /// Lifecycle state.
    pub status: StreamStatus,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// Durable metadata.
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// Every stream, in name order.
    fn streams(&self) -> Result<Vec<StreamMeta>>;
    /// Inserts or replaces a stream's definition; durable on return.
    fn put_stream(&self, meta: &StreamMeta) -> Result<()>;
    /// Removes a stream's definition; durable on return.
    fn remove_stream(&self, name: &str) -> Result<()>;
    /// A new id, never returned before, durable on return.
    fn next_id(&self) -> Result<u64>;
    /// The 32-byte secret that signs shard iterators, created on first use.
    fn iterator_secret(&self) -> Result<[u8; 32]>;
    /// Makes everything durable (at shutdown).
    fn flush(&self) -> Result<()>;
}

/// sled-backed metadata in `<data_dir>/meta`.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    streams: sled::Tree,
}

impl SledStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new().path(dir).open()?;
        let streams = db.open_tree("streams")?;
        Ok(Self { db, streams })
    }

    fn flushed(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Result<StreamMeta> {
    serde_json::from_slice(bytes).map_err(|e| BrokerError::Metadata(format!("undecodable stream record: {e}")))
}

impl MetadataStore for SledStore {
    fn streams(&self) -> Result<Vec<StreamMeta>> {
        self.streams.iter().values().map(|v| decode(&v?)).collect()
    }

    fn put_stream(&self, meta: &StreamMeta) -> Result<()> {
        let value = serde_json::to_vec(meta).map_err(|e| BrokerError::Metadata(e.to_string()))?;
        self.streams.insert(meta.name.as_bytes(), value)?;
        self.flushed()
    }

    fn remove_stream(&self, name: &str) -> Result<()> {
        self.streams.remove(name.as_bytes())?;
        self.flushed()
    }

    fn next_id(&self) -> Result<u64> {
        // generate_id is monotonic across restarts, but only durable once flushed.
        let id = self.db.generate_id()?;
        self.flushed()?;
        Ok(id)
    }

    fn iterator_secret(&self) -> Result<[u8; 32]> {
        const KEY: &[u8] = b"iterator-secret";
        if let Some(v) = self.db.get(KEY)? {
            return <[u8; 32]>::try_from(&v[..])
                .map_err(|_| BrokerError::Metadata("iterator secret has the wrong length".into()));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| BrokerError::Metadata(format!("no randomness: {e}")))?;
        // compare_and_swap keeps the first secret if two callers race.
        let _ = self.db.compare_and_swap(KEY, None as Option<&[u8]>, Some(&secret[..]))?;
        self.flushed()?;
        self.iterator_secret()
    }

    fn flush(&self) -> Result<()> {
        self.flushed()
    }
}

/// In-memory metadata for tests.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<(BTreeMap<String, StreamMeta>, u64)>,
}

impl MetadataStore for MemStore {
    fn streams(&self) -> Result<Vec<StreamMeta>> {
        Ok(self.inner.lock().map_err(|_| BrokerError::Metadata("poisoned".into()))?.0.values().cloned().collect())
    }

    fn put_stream(&self, meta: &StreamMeta) -> Result<()> {
        self.inner
            .lock()
            .map_err(|_| BrokerError::Metadata("poisoned".into()))?
            .0
            .insert(meta.name.clone(), meta.clone());
        Ok(())
    }

    fn remove_stream(&self, name: &str) -> Result<()> {
        self.inner.lock().map_err(|_| BrokerError::Metadata("poisoned".into()))?.0.remove(name);
        Ok(())
    }

    fn next_id(&self) -> Result<u64> {
        let mut g = self.inner.lock().map_err(|_| BrokerError::Metadata("poisoned".into()))?;
        g.1 += 1;
        Ok(g.1)
    }

    fn iterator_secret(&self) -> Result<[u8; 32]> {
        Ok([7; 32])
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, id: u64) -> StreamMeta {
        StreamMeta {
            id,
            name: name.into(),
            shard_count: 2,
            retention_hours: 24,
            quotas: QuotaValues::KINESIS,
            max_record_bytes: 1 << 20,
            status: StreamStatus::Active,
            created_at_ms: 1,
        }
    }

    #[test]
    fn sled_store_keeps_streams_ids_and_secret_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, secret) = {
            let s = SledStore::open(dir.path()).expect("open");
            let id = s.next_id().expect("id");
            s.put_stream(&meta("b", id)).expect("put");
            s.put_stream(&meta("a", id + 100)).expect("put");
            s.remove_stream("a").expect("remove");
            (id, s.iterator_secret().expect("secret"))
        };
        let s = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(s.streams().expect("list"), vec![meta("b", id)]);
        assert!(s.next_id().expect("id") > id, "ids are never reused");
        assert_eq!(s.iterator_secret().expect("secret"), secret);
    }
}
