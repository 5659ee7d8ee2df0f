//! The broker's one error type, returned by the service layer
//! (`service`) to every edge. It carries no transport meaning: the gRPC edge
//! maps it to `tonic::Status` in `grpc::status`; nothing else decides status
//! codes.

/// Everything a broker operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A request field is missing or out of bounds.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The request field, as named in the proto.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No stream has this name.
    #[error("stream {name:?} not found")]
    StreamNotFound {
        /// The requested name.
        name: String,
    },
    /// A stream with this name exists already.
    #[error("stream {name:?} already exists")]
    StreamExists {
        /// The requested name.
        name: String,
    },
    /// The stream exists but has no such shard.
    #[error("stream {stream:?} has no shard {shard_id:?}")]
    ShardNotFound {
        /// The stream's name.
        stream: String,
        /// The requested shard id.
        shard_id: String,
    },
    /// The stream has no registered consumer of this name.
    #[error("consumer {consumer:?} of stream {stream:?} not found")]
    ConsumerNotFound {
        /// The stream's name.
        stream: String,
        /// The consumer's name.
        consumer: String,
    },
    /// A quota or a capacity limit was hit; retry after the hint.
    #[error("{what}; retry after {retry_after_ms} ms")]
    Throttled {
        /// Which limit.
        what: String,
        /// When a retry can succeed.
        retry_after_ms: u64,
    },
    /// No such consumer group.
    #[error("group {group:?} of stream {stream:?} not found")]
    GroupNotFound {
        /// The stream.
        stream: String,
        /// The group.
        group: String,
    },
    /// The member is not (or no longer) in the group: rejoin.
    #[error("member {member_id:?} is not in the group (it left or its session expired); join again")]
    UnknownMember {
        /// The member.
        member_id: String,
    },
    /// The member acted under a lease it no longer holds, or would move a
    /// checkpoint back: drop the batch and refresh the assignment.
    #[error("fenced: {reason}")]
    Fenced {
        /// The shard.
        shard_id: String,
        /// Why the lease does not allow it.
        reason: String,
    },
    /// The operation needs a group without live members.
    #[error("group {group:?} has {members} live member(s); stop them first")]
    GroupBusy {
        /// The group.
        group: String,
        /// Live members.
        members: usize,
    },
    /// The shard was split or merged: it takes no more writes. Retryable:
    /// route the record again with the current shard map.
    #[error("shard {shard_id} of stream {stream:?} is closed (split or merged); refresh the shard map and retry")]
    ShardClosed {
        /// The stream's name.
        stream: String,
        /// The closed shard.
        shard_id: String,
    },
    /// The stream or shard is not in a state that allows the operation: a
    /// reshard is running, or the shard is closed.
    #[error("resource in use: {what}")]
    ResourceInUse {
        /// What is in the way.
        what: String,
    },
    /// A broker-wide limit (streams, shards, connections) is reached.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The shard iterator is older than five minutes.
    #[error("shard iterator expired {age_ms} ms after it was issued (iterators last 300000 ms)")]
    ExpiredIterator {
        /// Age of the iterator.
        age_ms: u64,
    },
    /// The requested position was removed by retention.
    #[error("sequence number {requested} is below the trim horizon {first} of {shard_id}")]
    SequenceTrimmed {
        /// The shard.
        shard_id: String,
        /// The requested position.
        requested: u64,
        /// The oldest stored sequence number.
        first: u64,
    },
    /// The requested position is past the shard's end. Besides a bad
    /// request, this is what a reader sees after a power failure in the
    /// `interval` and `never` durability modes took records that had been
    /// acknowledged but not yet fsynced.
    #[error(
        "{field}: sequence number {requested} is beyond the end of {shard_id}, whose next sequence number is {next} \
         (in the interval and never durability modes a power failure loses acknowledged records that were not yet fsynced)"
    )]
    SequenceBeyondEnd {
        /// The request field that carried the position.
        field: &'static str,
        /// The shard.
        shard_id: String,
        /// The requested position.
        requested: u64,
        /// The shard's next sequence number.
        next: u64,
    },
    /// The shard is failed (it could not be opened, its synced bytes are
    /// damaged, a write or fsync failed, or its writer died): it refuses
    /// writes, and reads too when its log could not be opened, until an
    /// operator repairs it (`streamctl shard repair`).
    #[error("shard {shard_id} of stream {stream:?} is failed ({kind}): {cause}; see `streamctl shard repair`")]
    ShardFailed {
        /// The stream's name.
        stream: String,
        /// The shard.
        shard_id: String,
        /// What failed: `Open`, `Damaged`, `Io` or `Panicked`.
        kind: &'static str,
        /// The failure, without internal paths.
        cause: String,
    },
    /// The data directory's filesystem is below its free-space watermark (or
    /// a write hit ENOSPC): writes are refused until space returns, which
    /// the broker notices by itself. Reads and group commits keep working.
    #[error("{what}; writes resume by themselves when space is freed; retry after {retry_after_ms} ms")]
    DiskFull {
        /// What is short of space.
        what: String,
        /// When a retry can succeed.
        retry_after_ms: u64,
    },
    /// Stored bytes failed their checksum or structure check: that range of
    /// the shard cannot be read (the rest of the shard is served).
    #[error("corrupt data in shard {shard_id}, segment {segment} at byte {position}: {reason}")]
    Corrupt {
        /// The shard (empty when not known at the point of failure).
        shard_id: String,
        /// The damaged segment file's name.
        segment: String,
        /// Byte position of the damage in that file.
        position: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A storage read or write failed in the operating system (the broker log
    /// has the file and OS error).
    #[error("storage I/O error on shard {shard_id} while trying to {op}; see the broker log")]
    StorageIo {
        /// The shard (empty when not known at the point of failure).
        shard_id: String,
        /// What was being done.
        op: String,
    },
    /// The caller presented no credentials where they are required, or
    /// credentials that are unknown, expired or revoked. The message never
    /// repeats the credential.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller's principal has no grant for this action on this resource
    /// (or an explicit deny).
    #[error("permission denied: {principal} may not {action} on {resource}")]
    PermissionDenied {
        /// Who asked.
        principal: String,
        /// The action, e.g. `record:put`.
        action: &'static str,
        /// The resource, e.g. `stream:orders`.
        resource: String,
    },
    /// A TLS certificate, key or CA file cannot be used; the message names
    /// the configuration key and the file, never the key material.
    #[error("TLS: {0}")]
    Tls(String),
    /// The broker is shutting down or a component is gone.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A broken internal invariant; the full error is in the broker log.
    #[error("internal: {0}")]
    Internal(String),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Metadata(String),
    /// A filesystem operation outside the shard logs failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl BrokerError {
    /// A [`BrokerError::ResourceInUse`] saying what is in the way.
    pub fn in_use(what: impl Into<String>) -> Self {
        Self::ResourceInUse { what: what.into() }
    }

    /// An [`BrokerError::InvalidArgument`] naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    /// The error of a read of `shard_id` at a position given in `field`:
    /// positions outside the stored range get their own kinds, the rest is
    /// split as [`BrokerError::storage`] does.
    pub fn from_read(e: shardlog::Error, shard_id: &str, field: &'static str) -> Self {
        match e {
            shardlog::Error::SequenceBeyondEnd { requested, next } => {
                Self::SequenceBeyondEnd { field, shard_id: shard_id.to_string(), requested, next }
            }
            other => Self::storage(shard_id, other),
        }
    }

    /// When a retry can succeed, for the errors that say (throttling, a full disk).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::Throttled { retry_after_ms, .. } | Self::DiskFull { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// A stable, machine-readable name for the error's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "InvalidArgument",
            Self::StreamNotFound { .. } => "StreamNotFound",
            Self::StreamExists { .. } => "StreamExists",
            Self::ShardNotFound { .. } => "ShardNotFound",
            Self::ConsumerNotFound { .. } => "ConsumerNotFound",
            Self::GroupNotFound { .. } => "GroupNotFound",
            Self::UnknownMember { .. } => "UnknownMember",
            Self::Fenced { .. } => "Fenced",
            Self::GroupBusy { .. } => "GroupBusy",
            Self::Throttled { .. } => "Throttled",
            Self::LimitExceeded(_) => "LimitExceeded",
            Self::ExpiredIterator { .. } => "ExpiredIterator",
            Self::SequenceTrimmed { .. } => "SequenceTrimmed",
            Self::SequenceBeyondEnd { .. } => "SequenceBeyondEnd",
            Self::ShardFailed { .. } => "ShardFailed",
            Self::ShardClosed { .. } => "ShardClosed",
            Self::ResourceInUse { .. } => "ResourceInUse",
            Self::DiskFull { .. } => "DiskFull",
            Self::Corrupt { .. } => "Corrupt",
            Self::StorageIo { .. } => "StorageIo",
            Self::Unavailable(_) => "Unavailable",
            Self::Unauthenticated(_) => "Unauthenticated",
            Self::PermissionDenied { .. } => "PermissionDenied",
            Self::Tls(_) => "Tls",
            Self::Internal(_) | Self::Metadata(_) | Self::Io { .. } => "Internal",
        }
    }
}

impl BrokerError {
    /// A storage-engine error of `shard_id`, split by what the caller can do
    /// about it. Full paths and OS errors go to the log, not to the caller.
    pub fn storage(shard_id: &str, e: shardlog::Error) -> Self {
        match e {
            shardlog::Error::Corrupt { path, position, reason } => {
                tracing::warn!(shard = shard_id, path = %path.display(), position, %reason, "corrupt data");
                Self::Corrupt { shard_id: shard_id.to_string(), segment: file_name(&path), position, reason }
            }
            shardlog::Error::Io { op, path, source } => {
                tracing::error!(shard = shard_id, op, path = %path.display(), error = %source, "storage I/O error");
                Self::StorageIo { shard_id: shard_id.to_string(), op: op.to_string() }
            }
            shardlog::Error::SequenceTrimmed { requested, first } => {
                Self::SequenceTrimmed { shard_id: shard_id.to_string(), requested, first }
            }
            shardlog::Error::SequenceBeyondEnd { requested, next } => {
                Self::SequenceBeyondEnd { field: "sequence_number", shard_id: shard_id.to_string(), requested, next }
            }
            shardlog::Error::InvalidRecord { index, field, reason } => {
                Self::invalid(format!("records[{index}].{field}"), reason)
            }
            shardlog::Error::InvalidBatch { field, reason } => Self::invalid(format!("records ({field})"), reason),
            other => {
                tracing::error!(shard = shard_id, error = %other, "storage engine error");
                Self::Internal(format!("storage engine error on shard {shard_id}"))
            }
        }
    }
}

/// The last component of a path: segment names are not internal, directories are.
fn file_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

impl From<shardlog::Error> for BrokerError {
    fn from(e: shardlog::Error) -> Self {
        Self::storage("(unknown)", e)
    }
}

impl From<sled::Error> for BrokerError {
    fn from(e: sled::Error) -> Self {
        Self::Metadata(e.to_string())
    }
}

/// Shorthand for broker results.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
