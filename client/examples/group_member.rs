//! A consumer-group member: joins group `billing` of a stream and handles
//! records until Ctrl-C. Start it twice and the broker splits the shards
//! between the two; stop one and the other takes its shards over, from the
//! last checkpoint.
//!
//! ```sh
//! cargo run -p client --example group_member -- orders billing
//! streamctl group describe orders billing     # members, shards, lag
//! ```
//!
//! The broker is `$STREAMCTL_BROKER`, or 127.0.0.1:7470. A batch is
//! committed (the group's checkpoint moves) only after the handler returned
//! Ok, so a crash means the batch is handled again: make handling
//! idempotent. A record the handler cannot handle goes to the failure hook,
//! which here only prints it; real code writes it to a dead-letter stream.

use std::error::Error;

use client::{Consumer, ConsumerConfig, HandlerError, Record};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let stream = args.next().unwrap_or_else(|| "orders".into());
    let group = args.next().unwrap_or_else(|| "billing".into());
    let broker = std::env::var("STREAMCTL_BROKER").unwrap_or_else(|_| client::DEFAULT_ADDR.into());

    let consumer = Consumer::join(&broker, &stream, ConsumerConfig::new(group)).await?;
    println!("joined as {}; Ctrl-C to leave", consumer.member_id());
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    });
    consumer
        .run(
            |batch: Vec<Record>| async move {
                for r in &batch {
                    println!(
                        "{} #{} {}={}",
                        r.shard_id,
                        r.sequence_number,
                        r.partition_key,
                        String::from_utf8_lossy(&r.data)
                    );
                }
                Ok::<(), HandlerError>(())
            },
            |record: Record, error: String| async move {
                eprintln!("giving up on {} #{}: {error}", record.shard_id, record.sequence_number);
                Ok::<(), HandlerError>(())
            },
            shutdown,
        )
        .await?;
    Ok(())
}
