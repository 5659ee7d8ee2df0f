//! Stream and consumer-group administration: one call per broker operation,
//! no retries (a failed call says why; see [`Error::is_retryable`](crate::Error::is_retryable)).

use crate::{Connection, MESSAGE_BYTES_MAX, Result, connect};
use proto::v1 as pb;
use proto::v1::consumer_groups_client::ConsumerGroupsClient;
use proto::v1::stream_broker_client::StreamBrokerClient;

/// Every stream and group operation.
#[derive(Debug, Clone)]
pub struct Admin {
    streams: StreamBrokerClient<Connection>,
    groups: ConsumerGroupsClient<Connection>,
    channel: Connection,
}

impl Admin {
    /// Connects to the broker at `addr`.
    pub async fn connect(addr: &str) -> Result<Self> {
        Ok(Self::from_channel(connect(addr).await?))
    }

    /// Uses an existing connection.
    pub fn from_channel(channel: Connection) -> Self {
        Self {
            streams: StreamBrokerClient::new(channel.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX),
            groups: ConsumerGroupsClient::new(channel.clone()),
            channel,
        }
    }

    /// Principals, tokens and grants over the same connection (and credentials).
    pub fn access(&self) -> crate::Access {
        crate::Access::from_channel(self.channel.clone())
    }

    /// The raw stream client, for data-plane calls.
    pub fn streams(&self) -> StreamBrokerClient<Connection> {
        self.streams.clone()
    }

    /// The raw consumer-group client.
    pub fn groups(&self) -> ConsumerGroupsClient<Connection> {
        self.groups.clone()
    }

    /// Creates a stream.
    pub async fn create_stream(&self, req: pb::CreateStreamRequest) -> Result<pb::StreamDescription> {
        let r = self.streams.clone().create_stream(req).await?.into_inner();
        Ok(r.stream.unwrap_or_default())
    }

    /// Deletes a stream and its records.
    pub async fn delete_stream(&self, name: &str) -> Result<()> {
        self.streams.clone().delete_stream(pb::DeleteStreamRequest { stream_name: name.into() }).await?;
        Ok(())
    }

    /// Describes a stream and its shards.
    pub async fn describe_stream(&self, name: &str) -> Result<pb::StreamDescription> {
        let r = self.streams.clone().describe_stream(pb::DescribeStreamRequest { stream_name: name.into() }).await?;
        Ok(r.into_inner().stream.unwrap_or_default())
    }

    /// Every stream name, following pages.
    pub async fn list_streams(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        loop {
            let start = names.last().cloned().unwrap_or_default();
            let page = self
                .streams
                .clone()
                .list_streams(pb::ListStreamsRequest { limit: 1000, exclusive_start_stream_name: start })
                .await?
                .into_inner();
            names.extend(page.stream_names);
            if !page.has_more_streams {
                return Ok(names);
            }
        }
    }

    /// Changes a stream's retention (24..=168 hours).
    pub async fn update_retention(&self, name: &str, hours: u32) -> Result<pb::StreamDescription> {
        let r = self
            .streams
            .clone()
            .update_retention(pb::UpdateRetentionRequest { stream_name: name.into(), retention_hours: hours })
            .await?;
        Ok(r.into_inner().stream.unwrap_or_default())
    }

    /// Changes a stream's per-shard quotas while it serves; unset fields keep their value.
    pub async fn update_quotas(&self, name: &str, quotas: pb::Quotas) -> Result<pb::StreamDescription> {
        let req = pb::UpdateQuotasRequest { stream_name: name.into(), quotas: Some(quotas) };
        Ok(self.streams.clone().update_quotas(req).await?.into_inner().stream.unwrap_or_default())
    }

    /// Splits an open shard: the children own `[start, new_starting_hash_key - 1]`
    /// and `[new_starting_hash_key, end]`. Returns once they serve.
    pub async fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: u128,
    ) -> Result<pb::StreamDescription> {
        let req = pb::SplitShardRequest {
            stream_name: stream.into(),
            shard_id: shard_id.into(),
            new_starting_hash_key: new_starting_hash_key.to_string(),
        };
        Ok(self.streams.clone().split_shard(req).await?.into_inner().stream.unwrap_or_default())
    }

    /// Merges two open shards with adjoining hash ranges. Returns once the child serves.
    pub async fn merge_shards(
        &self,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<pb::StreamDescription> {
        let req = pb::MergeShardsRequest {
            stream_name: stream.into(),
            shard_id: shard_id.into(),
            adjacent_shard_id: adjacent_shard_id.into(),
        };
        Ok(self.streams.clone().merge_shards(req).await?.into_inner().stream.unwrap_or_default())
    }

    /// Rescales to `target` uniform shards (at most double or half the open
    /// shards per call, a limited number of calls per day). Returns once the
    /// new shards serve.
    pub async fn update_shard_count(&self, stream: &str, target: u32) -> Result<pb::UpdateShardCountResponse> {
        let req = pb::UpdateShardCountRequest {
            stream_name: stream.into(),
            target_shard_count: target,
            scaling_type: pb::ScalingType::UniformScaling as i32,
        };
        Ok(self.streams.clone().update_shard_count(req).await?.into_inner())
    }

    /// A shard's repair: with `confirm` false only the plan (nothing
    /// changes); with `confirm` true the plan is applied and the response
    /// says exactly what was cut.
    pub async fn repair_shard(&self, stream: &str, shard_id: &str, confirm: bool) -> Result<pb::RepairShardResponse> {
        let req = pb::RepairShardRequest { stream_name: stream.into(), shard_id: shard_id.into(), confirm };
        Ok(self.streams.clone().repair_shard(req).await?.into_inner())
    }

    /// Stream directories the broker kept in `lost+found/` instead of deleting them.
    pub async fn list_lost_found(&self) -> Result<Vec<pb::LostFoundEntry>> {
        Ok(self.streams.clone().list_lost_found(pb::ListLostFoundRequest {}).await?.into_inner().entries)
    }

    /// Deletes one `lost+found/` directory and the records in it.
    pub async fn purge_lost_found(&self, name: &str) -> Result<pb::LostFoundEntry> {
        let r = self.streams.clone().purge_lost_found(pb::PurgeLostFoundRequest { name: name.into() }).await?;
        Ok(r.into_inner().removed.unwrap_or_default())
    }

    /// The broker's version, durability mode and health (why it is not
    /// ready, if it is not).
    pub async fn describe_broker(&self) -> Result<pb::DescribeBrokerResponse> {
        Ok(self.streams.clone().describe_broker(pb::DescribeBrokerRequest {}).await?.into_inner())
    }

    /// Groups, of one stream or all.
    pub async fn list_groups(&self, stream: Option<&str>) -> Result<Vec<pb::GroupName>> {
        let r =
            self.groups.clone().list_groups(pb::ListGroupsRequest { stream_name: stream.unwrap_or("").into() }).await?;
        Ok(r.into_inner().groups)
    }

    /// A group's members, leases, checkpoints and lag.
    pub async fn describe_group(&self, stream: &str, group: &str) -> Result<pb::GroupDescription> {
        let r = self
            .groups
            .clone()
            .describe_group(pb::DescribeGroupRequest { stream_name: stream.into(), group_name: group.into() })
            .await?;
        Ok(r.into_inner().group.unwrap_or_default())
    }

    /// Moves a group's checkpoints (only while it has no live member).
    pub async fn reset_group(&self, req: pb::ResetGroupRequest) -> Result<pb::GroupDescription> {
        Ok(self.groups.clone().reset_group(req).await?.into_inner().group.unwrap_or_default())
    }

    /// Deletes a group without live members.
    pub async fn delete_group(&self, stream: &str, group: &str) -> Result<()> {
        self.groups
            .clone()
            .delete_group(pb::DeleteGroupRequest { stream_name: stream.into(), group_name: group.into() })
            .await?;
        Ok(())
    }
}
