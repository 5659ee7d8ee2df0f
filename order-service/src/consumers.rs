//! The three consumer groups, each a `client::Consumer`:
//!
//! - `external-parties` on the order stream: `order_placed` emails the cake
//!   producer; `order_fulfilled` stamps `sentToDeliveryDate` and enqueues the
//!   order on the delivery queue (one outbox transaction that also marks the
//!   event processed).
//! - `delivery-company` on the delivery queue: POSTs the order to the
//!   webhook, or runs the built-in simulator that calls `POST /order/delivered`
//!   on this service after a delay.
//! - `customer-service` on the customer-service queue: emails the review.
//!
//! Records are handled one by one and deduplicated on the envelope's
//! `eventId` (the `processed` tree), so a redelivered event does nothing.
//! A record that keeps failing goes to `<stream>-dlq` through the
//! consumer's on-failure hook.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use client::{Consumer, ConsumerConfig, HandlerError, Producer, ProducerConfig, Record};
use tokio_util::sync::CancellationToken;

use crate::api::Metrics;
use crate::config::Config;
use crate::email::Mailer;
use crate::http_client::HttpClient;
use crate::model::{Envelope, Order, event_type};
use crate::relay::{backoff, wait};
use crate::store::{Store, StoreError, status_name};

/// Group on the order stream.
pub const EXTERNAL_PARTIES: &str = "external-parties";
/// Group on the delivery queue.
pub const DELIVERY_COMPANY: &str = "delivery-company";
/// Group on the customer-service queue.
pub const CUSTOMER_SERVICE: &str = "customer-service";

/// What the handlers share.
#[derive(Debug)]
pub struct Ctx {
    /// The order store.
    pub store: Store,
    /// Outgoing email.
    pub mailer: Mailer,
    /// Configuration.
    pub config: Config,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Broker address.
    pub broker: String,
    /// This service's base URL, for the delivery simulator.
    pub self_url: String,
    /// Outgoing HTTP.
    pub http: HttpClient,
}

fn fail(msg: impl Into<String>) -> HandlerError {
    msg.into().into()
}

fn parse(record: &Record) -> Result<Envelope, HandlerError> {
    serde_json::from_slice(&record.data).map_err(|e| fail(format!("not an event envelope: {e}")))
}

fn store_err(e: StoreError) -> HandlerError {
    Box::new(e)
}

/// Runs the three groups until `shutdown`.
pub fn spawn_all(ctx: Arc<Ctx>, shutdown: &CancellationToken, tasks: &mut tokio::task::JoinSet<()>) {
    let c = &ctx.config;
    let groups = [
        (c.order_stream_name.clone(), EXTERNAL_PARTIES),
        (c.delivery_queue_name.clone(), DELIVERY_COMPANY),
        (c.customer_service_queue_name.clone(), CUSTOMER_SERVICE),
    ];
    for (stream, group) in groups {
        tasks.spawn(run_group(ctx.clone(), stream, group, shutdown.clone()));
    }
}

async fn handle_batch(
    ctx: Arc<Ctx>,
    group: &'static str,
    records: Vec<Record>,
    shutdown: CancellationToken,
) -> Result<(), HandlerError> {
    for r in &records {
        let env = parse(r)?;
        match group {
            EXTERNAL_PARTIES => external_parties(&ctx, env).await?,
            DELIVERY_COMPANY => delivery_company(&ctx, env, &shutdown).await?,
            _ => customer_service(&ctx, env).await?,
        }
    }
    // The processed marks must be durable before `run` commits the
    // checkpoint past these records; one flush covers the batch.
    ctx.store.flush().await.map_err(store_err)?;
    Ok(())
}

async fn run_group(ctx: Arc<Ctx>, stream: String, group: &'static str, shutdown: CancellationToken) {
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let mut config = ConsumerConfig::new(group);
        config.batch_size = if group == EXTERNAL_PARTIES { 100 } else { 1 };
        config.max_retries = ctx.config.consumer_max_retries;
        config.retry_backoff = Duration::from_millis(ctx.config.consumer_retry_backoff_ms);
        let consumer = tokio::select! {
            c = Consumer::join(&ctx.broker, &stream, config) => c,
            _ = shutdown.cancelled() => return,
        };
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, %stream, group, "joining the group failed; retrying");
                if wait(backoff(failures), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        failures = 0;
        tracing::info!(%stream, group, "consumer joined");
        let (hctx, fctx, hstop, fstop) = (ctx.clone(), ctx.clone(), shutdown.clone(), shutdown.clone());
        let dlq = format!("{stream}-dlq");
        let result = consumer
            .run(
                move |records| handle_batch(hctx.clone(), group, records, hstop.clone()),
                move |record, error| dead_letter(fctx.clone(), dlq.clone(), record, error, fstop.clone()),
                shutdown.clone(),
            )
            .await;
        if let Err(e) = result {
            failures += 1;
            tracing::error!(error = %e, %stream, group, "consumer stopped; rejoining");
            if wait(backoff(failures), &shutdown).await {
                return;
            }
        }
    }
}

/// Writes a record that kept failing to `<stream>-dlq`. During shutdown a
/// failure is more likely the shutdown itself (an interrupted simulated
/// delivery): the hook then fails, so the record is not committed past and
/// is delivered again after the restart.
async fn dead_letter(
    ctx: Arc<Ctx>,
    dlq: String,
    record: Record,
    error: String,
    shutdown: CancellationToken,
) -> Result<(), HandlerError> {
    if shutdown.is_cancelled() {
        return Err(fail("shutting down; not dead-lettering"));
    }
    let (data, encoding) = match std::str::from_utf8(&record.data) {
        Ok(s) => (s.to_string(), "utf8"),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&record.data), "base64"),
    };
    let body = serde_json::json!({
        "record": data,
        "encoding": encoding,
        "partitionKey": record.partition_key,
        "shardId": record.shard_id,
        "sequenceNumber": record.sequence_number,
        "error": error,
    });
    tracing::warn!(%dlq, shard = %record.shard_id, seq = record.sequence_number, %error, "dead-lettering a record");
    let producer =
        Producer::connect(&ctx.broker, &dlq, ProducerConfig { linger: Duration::ZERO, ..ProducerConfig::default() })
            .await?;
    producer.send(record.partition_key.clone(), serde_json::to_vec(&body)?).await?.await?;
    producer.close().await?;
    Metrics::inc(&ctx.metrics.dead_lettered);
    Ok(())
}

fn need_order(env: &Envelope) -> Result<&Order, HandlerError> {
    env.order.as_ref().ok_or_else(|| fail(format!("event {} has no order", env.event_id)))
}

async fn external_parties(ctx: &Ctx, env: Envelope) -> Result<(), HandlerError> {
    match env.event_type.as_str() {
        event_type::ORDER_PLACED => {
            if ctx.store.is_processed(EXTERNAL_PARTIES, &env.event_id).map_err(store_err)? {
                return Ok(());
            }
            let order = need_order(&env)?;
            let c = &ctx.config;
            ctx.mailer
                .send(
                    &env.event_id,
                    &c.ordering_system_email,
                    &c.cake_producer_email,
                    "New cake order",
                    order_text(order),
                )
                .await?;
            ctx.store.mark_processed(EXTERNAL_PARTIES, &env.event_id).map_err(store_err)?;
            Metrics::inc(&ctx.metrics.emails_sent);
            tracing::info!(order = %env.order_id, "cake producer notified");
        }
        event_type::ORDER_FULFILLED => {
            if ctx.store.send_to_delivery(EXTERNAL_PARTIES, &env.event_id, &env.order_id).map_err(store_err)? {
                tracing::info!(order = %env.order_id, "sent to delivery");
            }
        }
        event_type::ORDER_DELIVERED => {}
        other => tracing::warn!(event_type = other, event = %env.event_id, "ignoring an unknown event type"),
    }
    Ok(())
}

async fn delivery_company(ctx: &Ctx, env: Envelope, shutdown: &CancellationToken) -> Result<(), HandlerError> {
    if ctx.store.is_processed(DELIVERY_COMPANY, &env.event_id).map_err(store_err)? {
        return Ok(());
    }
    let order = need_order(&env)?;
    match &ctx.config.delivery_webhook_url {
        Some(url) => {
            let status = ctx.http.post_json(url, serde_json::to_vec(order)?).await?;
            if !(200..300).contains(&status) {
                return Err(fail(format!("delivery webhook answered {status}")));
            }
        }
        None => {
            let delay = Duration::from_millis(ctx.config.delivery_simulator_delay_ms);
            if wait(delay, shutdown).await {
                return Err(fail("shutting down"));
            }
            let body = serde_json::json!({
                "orderId": order.order_id,
                "deliveryCompanyId": "DeliveryCo1",
                "orderReview": "Arrived on time, the cake was delicious. 5/5",
            });
            let url = format!("{}/order/delivered", ctx.self_url);
            match ctx.http.post_json(&url, serde_json::to_vec(&body)?).await? {
                200 => tracing::info!(order = %order.order_id, "simulated delivery done"),
                409 | 404 => tracing::warn!(order = %order.order_id, "simulated delivery: order not deliverable"),
                s => return Err(fail(format!("POST /order/delivered answered {s}"))),
            }
        }
    }
    ctx.store.mark_processed(DELIVERY_COMPANY, &env.event_id).map_err(store_err)?;
    Ok(())
}

async fn customer_service(ctx: &Ctx, env: Envelope) -> Result<(), HandlerError> {
    if ctx.store.is_processed(CUSTOMER_SERVICE, &env.event_id).map_err(store_err)? {
        return Ok(());
    }
    let review =
        env.order_review.as_deref().ok_or_else(|| fail(format!("event {} has no orderReview", env.event_id)))?;
    let mut body = String::new();
    let _ = writeln!(body, "A customer reviewed their order.\n");
    let _ = writeln!(body, "Order:  {}", env.order_id);
    let _ = writeln!(body, "Date:   {}", env.date.unwrap_or(env.occurred_at));
    let _ = writeln!(body, "Review: {review}");
    let c = &ctx.config;
    ctx.mailer.send(&env.event_id, &c.ordering_system_email, &c.customer_service_email, "Order review", body).await?;
    ctx.store.mark_processed(CUSTOMER_SERVICE, &env.event_id).map_err(store_err)?;
    Metrics::inc(&ctx.metrics.emails_sent);
    Ok(())
}

/// The readable body of a new-order email.
pub fn order_text(o: &Order) -> String {
    let mut s = String::from("A new cake order was placed.\n\n");
    let _ = writeln!(s, "Order ID:   {}", o.order_id);
    let _ = writeln!(s, "Name:       {}", o.name);
    let _ = writeln!(s, "Address:    {}", o.address);
    let _ = writeln!(s, "Product ID: {}", o.product_id);
    let _ = writeln!(s, "Quantity:   {}", o.quantity);
    let _ = writeln!(s, "Order date: {} (ms since the Unix epoch)", o.order_date);
    let _ = writeln!(s, "Status:     {}", status_name(o.status));
    s
}
