//! Reads every record of a stream, shard by shard, from the oldest, and
//! stops at the end: the simplest reader, with no group and no checkpoint.
//!
//! ```sh
//! cargo run -p client --example consumer -- orders
//! ```
//!
//! The broker is `$STREAMCTL_BROKER`, or 127.0.0.1:7470. For work that must
//! survive restarts and be shared by several processes, use a consumer
//! group (`group_member.rs`).

use std::error::Error;

use client::{Admin, Position, ShardReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let stream = std::env::args().nth(1).unwrap_or_else(|| "orders".into());
    let broker = std::env::var("STREAMCTL_BROKER").unwrap_or_else(|_| client::DEFAULT_ADDR.into());

    let connection = client::connect(&broker).await?;
    let description = Admin::from_channel(connection.clone()).describe_stream(&stream).await?;
    for shard in description.shards {
        let mut reader = ShardReader::open(connection.clone(), &stream, &shard.shard_id, Position::TrimHorizon).await?;
        loop {
            let (records, _millis_behind) = reader.read(1000).await?;
            if records.is_empty() {
                break;
            }
            for r in records {
                println!(
                    "{} #{} {}={}",
                    shard.shard_id,
                    r.sequence_number,
                    r.partition_key,
                    String::from_utf8_lossy(&r.data)
                );
            }
        }
    }
    Ok(())
}
