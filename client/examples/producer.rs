//! Writes records to a stream and prints where each one was stored.
//!
//! ```sh
//! streamctl stream create orders --shards 2
//! cargo run -p client --example producer -- orders 10
//! ```
//!
//! The broker is `$STREAMCTL_BROKER`, or 127.0.0.1:7470. A record is
//! acknowledged once the broker made it durable (fdatasync, by default);
//! records with one partition key keep their order.

use std::error::Error;

use client::{Producer, ProducerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let stream = args.next().unwrap_or_else(|| "orders".into());
    let count: u32 = args.next().map_or(Ok(10), |n| n.parse())?;
    let broker = std::env::var("STREAMCTL_BROKER").unwrap_or_else(|_| client::DEFAULT_ADDR.into());

    let producer = Producer::connect(&broker, &stream, ProducerConfig::default()).await?;
    // Send them all first (the producer batches per shard), then wait for each acknowledgement.
    let mut acks = Vec::new();
    for i in 0..count {
        let key = format!("order-{}", i % 3);
        acks.push((key.clone(), producer.send(key, format!("cake #{i}")).await?));
    }
    for (key, ack) in acks {
        let ack = ack.await?;
        println!("{key} -> {} #{}", ack.shard_id, ack.sequence_number);
    }
    // Flushes anything still buffered; every record above is already acknowledged.
    producer.close().await?;
    Ok(())
}
