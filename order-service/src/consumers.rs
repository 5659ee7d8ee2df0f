//! The three consumer groups, each a `client::Consumer`:
//!
//! - `external-parties` on the order stream: `order_placed` emails the cake
//!   producer; `order_fulfilled` stamps `sentToDeliveryDate` and enqueues the
//!   order on the delivery queue (one outbox transaction that also marks the
//!   event processed).
//! - `delivery-company` on the delivery queue: POSTs the order with its
//!   `eventId` to the webhook, or runs the built-in simulator that calls
//!   `POST /order/delivered` on this service after a delay.
//! - `customer-service` on the customer-service queue: emails the review.
//!
//! **One side effect per event.** Before an email or a webhook call, the
//! handler claims the event in the store (`group/eventId`, one
//! compare-and-swap, see `Store::claim`); a second delivery of the event
//! waits while the claim is held and does nothing once it is done. If the
//! process stops between the claim and the done mark, the event is handled
//! again after the restart (at least once, by choice: a lost notification is
//! worse than a repeated one). A repeated `.eml` file replaces the first
//! (it is named by the event id); a repeated SMTP message carries the same
//! `Message-ID` (`<eventId@order-service>`) and a repeated webhook call the
//! same `eventId`, so receivers can drop the copy.
//!
//! **Failures** are classified by [`crate::failure`]. A transient one is
//! retried here, in the handler, with capped exponential backoff
//! (`consumerRetryBackoffMs` doubling to `consumerRetryBackoffMaxMs`) for up
//! to `consumerRetryBudgetMs`; meanwhile no later record of the shard is
//! handled (order is kept) and `/metrics` shows `consumer_blocked{group} 1`.
//! A permanent one, or a transient one past its budget, is written to
//! `<stream>-dlq` at once and marked dead-lettered, so that replaying it
//! from there (the broker console's replay) handles it again. So the
//! handler fails towards the `client::Consumer` only when the service shuts
//! down; the consumer's own retries (none) and on-failure hook are a last
//! resort.
//!
//! **Acknowledgement.** The consumer commits its checkpoint past a batch
//! when the handler returns; the handler returns only after the batch's
//! done marks (and outbox entries) are durable (`Store::commit`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use client::{Consumer, ConsumerConfig, HandlerError, Producer, ProducerConfig, Record};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::Metrics;
use crate::config::Config;
use crate::email::Mailer;
use crate::failure::{Class, Failure, kind};
use crate::http_client::HttpClient;
use crate::model::{Envelope, Order, event_type};
use crate::relay::{backoff, wait};
use crate::store::{Claim, Store, status_name};

/// Group on the order stream.
pub const EXTERNAL_PARTIES: &str = "external-parties";
/// Group on the delivery queue.
pub const DELIVERY_COMPANY: &str = "delivery-company";
/// Group on the customer-service queue.
pub const CUSTOMER_SERVICE: &str = "customer-service";

/// Records per poll of `external-parties`. Each batch ends with one durable
/// commit of the store and one checkpoint, so while a backlog drains a
/// larger batch costs fewer syncs per record (the original Lambda took 10).
pub const EXTERNAL_PARTIES_BATCH: u32 = 100;
/// Records per poll of the two queue consumers: one delivery or review at a time.
pub const QUEUE_BATCH: u32 = 1;

/// One consumer group of the service, as `deploy/stack.toml` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Group name.
    pub name: &'static str,
    /// The stream it consumes.
    pub stream: String,
    /// Records per poll.
    pub batch_size: u32,
    /// Where records it cannot handle go.
    pub dead_letter: String,
}

/// The groups the service runs, with the configured stream names.
pub fn groups(c: &Config) -> [GroupSpec; 3] {
    let spec = |name, stream: &String, batch_size| GroupSpec {
        name,
        stream: stream.clone(),
        batch_size,
        dead_letter: dead_letter_stream(stream),
    };
    [
        spec(EXTERNAL_PARTIES, &c.order_stream_name, EXTERNAL_PARTIES_BATCH),
        spec(DELIVERY_COMPANY, &c.delivery_queue_name, QUEUE_BATCH),
        spec(CUSTOMER_SERVICE, &c.customer_service_queue_name, QUEUE_BATCH),
    ]
}

/// `<stream>-dlq`.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}-dlq")
}

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
    /// The broker, and the principal of each group.
    pub broker: crate::access::BrokerAccess,
    /// This service's base URL, for the delivery simulator.
    pub self_url: String,
    /// Outgoing HTTP.
    pub http: HttpClient,
    /// The token the delivery simulator calls this service's API with
    /// (`apiAuth.deliverySimulatorTokenFile`).
    pub simulator_token: Option<client::Secret>,
}

/// The handler stopped because the service is shutting down; the batch is
/// not acknowledged and is delivered again after the restart.
#[derive(Debug, thiserror::Error)]
#[error("shutting down")]
pub struct Stopped;

/// Runs the three groups until `shutdown`.
/// Each group joins only once `ready` says the streams exist, and tells
/// `ready` while it is joined.
pub fn spawn_all(
    ctx: Arc<Ctx>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
    ready: Arc<crate::ready::Readiness>,
) {
    for spec in groups(&ctx.config) {
        ctx.metrics.consumer_blocked.set(spec.name, "", 0);
        tasks.spawn(run_group(ctx.clone(), spec, shutdown.clone(), ready.clone()));
    }
}

async fn run_group(ctx: Arc<Ctx>, spec: GroupSpec, shutdown: CancellationToken, ready: Arc<crate::ready::Readiness>) {
    let (stream, group) = (spec.stream.clone(), spec.name);
    // Joining before the stream exists would only fail and warn.
    tokio::select! {
        _ = ready.streams_created() => {}
        _ = shutdown.cancelled() => return,
    }
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let mut config = ConsumerConfig::new(group);
        config.batch_size = spec.batch_size;
        // The handler retries and dead-letters by itself; see the module docs.
        config.max_retries = 0;
        config.retry_backoff = Duration::from_millis(ctx.config.consumer_retry_backoff_ms);
        let consumer = tokio::select! {
            c = join(&ctx.broker, group, &stream, config) => c,
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
        ready.set_joined(group, true);
        let (hctx, fctx, hstop, fstop) = (ctx.clone(), ctx.clone(), shutdown.clone(), shutdown.clone());
        let dlq = spec.dead_letter.clone();
        let result = consumer
            .run(
                move |records| handle_batch(hctx.clone(), group, records, hstop.clone()),
                move |record, error| last_resort(fctx.clone(), dlq.clone(), record, error, fstop.clone()),
                shutdown.clone(),
            )
            .await;
        ready.set_joined(group, false);
        if let Err(e) = result {
            failures += 1;
            tracing::error!(error = %e, %stream, group, "consumer stopped; rejoining");
            if wait(backoff(failures), &shutdown).await {
                return;
            }
        }
    }
}

/// Handles a batch of `group`'s records in order; returns once each is
/// done or dead-lettered and that is durable, or with [`Stopped`].
pub async fn handle_batch(
    ctx: Arc<Ctx>,
    group: &'static str,
    records: Vec<Record>,
    shutdown: CancellationToken,
) -> Result<(), HandlerError> {
    for r in &records {
        handle_record(&ctx, group, r, &shutdown).await?;
    }
    // The done marks must be durable before the consumer commits its
    // checkpoint past these records. A failing commit is retried without a
    // budget: dead-lettering records because our own disk failed would lose
    // them, and after a failed sync the store refuses every commit until a
    // restart (see `broker::durable`).
    let mut backoff = Backoff::new(&ctx.config);
    loop {
        match ctx.store.commit().await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(error = %e, group, "committing the handled records failed; retrying");
                let delay = backoff.next_delay();
                if blocked_wait(&ctx, group, kind::LOCAL, delay, &shutdown).await {
                    return Err(Stopped.into());
                }
            }
        }
    }
    ctx.metrics.consumer_blocked.set(group, "", 0);
    Ok(())
}

/// The client's capped exponential backoff (`consumerRetryBackoffMs`
/// doubling to `consumerRetryBackoffMaxMs`), within a total budget.
struct Backoff {
    started: Instant,
    schedule: client::Backoff,
    budget: Duration,
    attempts: u32,
}

impl Backoff {
    fn new(c: &Config) -> Self {
        Self {
            started: Instant::now(),
            schedule: client::Backoff::new(
                Duration::from_millis(c.consumer_retry_backoff_ms),
                Duration::from_millis(c.consumer_retry_backoff_max_ms),
            ),
            budget: Duration::from_millis(c.consumer_retry_budget_ms),
            attempts: 0,
        }
    }

    fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        self.schedule.next_delay()
    }

    /// The next wait, or None once the budget is spent.
    fn within_budget(&mut self) -> Option<Duration> {
        let d = self.next_delay();
        (self.started.elapsed() + d <= self.budget).then_some(d)
    }
}

/// Counts a transient failure, marks the group blocked and waits; true when shut down.
async fn blocked_wait(
    ctx: &Ctx,
    group: &'static str,
    kind: &'static str,
    delay: Duration,
    shutdown: &CancellationToken,
) -> bool {
    ctx.metrics.handler_retries.inc(group, kind);
    ctx.metrics.consumer_blocked.set(group, "", 1);
    wait(delay, shutdown).await
}

/// One record: retried while it fails transiently, dead-lettered when it
/// fails permanently or runs out of budget.
async fn handle_record(
    ctx: &Ctx,
    group: &'static str,
    record: &Record,
    shutdown: &CancellationToken,
) -> Result<(), Stopped> {
    let env = match serde_json::from_slice::<Envelope>(&record.data) {
        Ok(env) => env,
        Err(e) => {
            let f = Failure::bad_data(format!("not an event envelope: {e}"));
            return give_up(ctx, group, record, None, f, 1, shutdown).await;
        }
    };
    let mut backoff = Backoff::new(&ctx.config);
    loop {
        if shutdown.is_cancelled() {
            return Err(Stopped);
        }
        let failure = match handle_event(ctx, group, &env, shutdown).await {
            Ok(()) => {
                ctx.metrics.consumer_blocked.set(group, "", 0);
                return Ok(());
            }
            Err(Handled::Stopped) => return Err(Stopped),
            Err(Handled::Failed(f)) => f,
        };
        if failure.class == Class::Permanent {
            return give_up(ctx, group, record, Some(&env), failure, backoff.attempts + 1, shutdown).await;
        }
        let Some(delay) = backoff.within_budget() else {
            let f = Failure {
                message: format!(
                    "still failing after {} attempts over {} s: {}",
                    backoff.attempts,
                    backoff.started.elapsed().as_secs(),
                    failure.message
                ),
                ..failure
            };
            return give_up(ctx, group, record, Some(&env), f, backoff.attempts, shutdown).await;
        };
        tracing::warn!(group, event = %env.event_id, kind = failure.kind, error = %failure, ?delay, "transient failure; retrying the record");
        if blocked_wait(ctx, group, failure.kind, delay, shutdown).await {
            return Err(Stopped);
        }
    }
}

/// Dead-letters a record (retrying the dead-letter write until it is
/// stored) and marks its event dead-lettered: a later delivery of it (a
/// replay from the dead-letter stream, or a redelivery after a crash before
/// the checkpoint) is handled again rather than skipped.
async fn give_up(
    ctx: &Ctx,
    group: &'static str,
    record: &Record,
    env: Option<&Envelope>,
    failure: Failure,
    attempts: u32,
    shutdown: &CancellationToken,
) -> Result<(), Stopped> {
    if failure.class == Class::Permanent {
        ctx.metrics.handler_permanent_failures.inc(group, failure.kind);
    }
    let stream = groups(&ctx.config).into_iter().find(|g| g.name == group).map(|g| g.dead_letter);
    // `group` is always one of `groups`; an unknown one still gets a named stream.
    let dlq = stream.unwrap_or_else(|| dead_letter_stream(group));
    let mut backoff = Backoff::new(&ctx.config);
    while let Err(e) = dead_letter(ctx, &dlq, record, &failure, attempts).await {
        tracing::warn!(error = %e, %dlq, "dead-lettering failed; retrying");
        if blocked_wait(ctx, group, kind::UNREACHABLE, backoff.next_delay(), shutdown).await {
            return Err(Stopped);
        }
    }
    if let Some(env) = env {
        while let Err(e) = ctx.store.dead_lettered(group, &env.event_id) {
            tracing::error!(error = %e, "marking an event dead-lettered failed; retrying");
            if blocked_wait(ctx, group, kind::LOCAL, backoff.next_delay(), shutdown).await {
                return Err(Stopped);
            }
        }
    }
    ctx.metrics.consumer_blocked.set(group, "", 0);
    Ok(())
}

/// The consumer's on-failure hook, reached only if a handler error escapes
/// (the handler fails only on shutdown, and this hook then refuses, so the
/// record is not committed past and is delivered again after the restart).
async fn last_resort(
    ctx: Arc<Ctx>,
    dlq: String,
    record: Record,
    error: String,
    shutdown: CancellationToken,
) -> Result<(), HandlerError> {
    if shutdown.is_cancelled() {
        return Err(Stopped.into());
    }
    let failure = Failure::permanent(kind::BAD_DATA, error);
    dead_letter(&ctx, &dlq, &record, &failure, 1).await.map_err(|e| Box::new(e) as HandlerError)
}

/// The group whose dead-letter stream `dlq` is: its principal writes there.
fn dead_letter_owner(ctx: &Ctx, dlq: &str) -> &'static str {
    groups(&ctx.config).into_iter().find(|g| g.dead_letter == dlq).map_or("", |g| g.name)
}

/// Joins `group` on `stream` as the group's own principal.
async fn join(
    broker: &crate::access::BrokerAccess,
    group: &'static str,
    stream: &str,
    config: ConsumerConfig,
) -> client::Result<Consumer> {
    Consumer::with_channel(broker.connect(group).await?, stream, config).await
}

/// Writes a record to `dlq` with why it failed after how many attempts.
async fn dead_letter(ctx: &Ctx, dlq: &str, record: &Record, failure: &Failure, attempts: u32) -> client::Result<()> {
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
        "error": failure.message,
        "kind": failure.kind,
        "permanent": failure.class == Class::Permanent,
        "attempts": attempts,
    });
    tracing::warn!(%dlq, shard = %record.shard_id, seq = record.sequence_number, error = %failure, "dead-lettering a record");
    let config = ProducerConfig { linger: Duration::ZERO, ..ProducerConfig::default() };
    // The group's own principal writes its dead letters.
    let producer = Producer::with_channel(ctx.broker.connect(dead_letter_owner(ctx, dlq)).await?, dlq, config).await?;
    // Serialising a `json!` value cannot fail.
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    producer.send(record.partition_key.clone(), bytes).await?.await?;
    producer.close().await?;
    Metrics::inc(&ctx.metrics.dead_lettered);
    Ok(())
}

/// Why an attempt at an event ended without success.
enum Handled {
    Failed(Failure),
    Stopped,
}

impl From<Failure> for Handled {
    fn from(f: Failure) -> Self {
        Handled::Failed(f)
    }
}

impl From<crate::store::StoreError> for Handled {
    fn from(e: crate::store::StoreError) -> Self {
        Handled::Failed(e.into())
    }
}

impl From<crate::email::EmailError> for Handled {
    fn from(e: crate::email::EmailError) -> Self {
        Handled::Failed(e.into())
    }
}

/// One attempt at an event.
async fn handle_event(
    ctx: &Ctx,
    group: &'static str,
    env: &Envelope,
    shutdown: &CancellationToken,
) -> Result<(), Handled> {
    match (group, env.event_type.as_str()) {
        (EXTERNAL_PARTIES, event_type::ORDER_PLACED) => {
            let order = need_order(env)?;
            once(ctx, group, env, async {
                let c = &ctx.config;
                let text = order_text(order);
                ctx.mailer
                    .send(&env.event_id, &c.ordering_system_email, &c.cake_producer_email, "New cake order", text)
                    .await?;
                Metrics::inc(&ctx.metrics.emails_sent);
                tracing::info!(order = %env.order_id, "cake producer notified");
                Ok::<(), Handled>(())
            })
            .await
        }
        (EXTERNAL_PARTIES, event_type::ORDER_FULFILLED) => {
            // One transaction: the mark, the order stamp and the outbox entry.
            if ctx.store.send_to_delivery(EXTERNAL_PARTIES, &env.event_id, &env.order_id)? {
                tracing::info!(order = %env.order_id, "sent to delivery");
            }
            Ok(())
        }
        (EXTERNAL_PARTIES, event_type::ORDER_DELIVERED) => Ok(()),
        (DELIVERY_COMPANY, _) => {
            let order = need_order(env)?;
            once(ctx, group, env, deliver(ctx, env, order, shutdown)).await
        }
        (CUSTOMER_SERVICE, _) => {
            let review = env
                .order_review
                .as_deref()
                .ok_or_else(|| Failure::bad_data(format!("event {} has no orderReview", env.event_id)))?;
            once(ctx, group, env, async {
                let c = &ctx.config;
                let body = review_text(env, review);
                ctx.mailer
                    .send(&env.event_id, &c.ordering_system_email, &c.customer_service_email, "Order review", body)
                    .await?;
                Metrics::inc(&ctx.metrics.emails_sent);
                Ok::<(), Handled>(())
            })
            .await
        }
        (_, other) => {
            tracing::warn!(event_type = other, event = %env.event_id, group, "ignoring an unknown event type");
            Ok(())
        }
    }
}

/// Performs `effect` if this caller wins the event's claim; marks it done
/// after success, releases the claim after a failure.
async fn once(
    ctx: &Ctx,
    group: &'static str,
    env: &Envelope,
    effect: impl std::future::Future<Output = Result<(), Handled>>,
) -> Result<(), Handled> {
    match ctx.store.claim(group, &env.event_id)? {
        Claim::Done => Ok(()),
        Claim::Busy => Err(Failure::transient(
            kind::IN_PROGRESS,
            format!("event {} is being handled by another delivery", env.event_id),
        )
        .into()),
        Claim::Won { after_crash } => {
            if after_crash {
                tracing::warn!(group, event = %env.event_id, "a stopped process had claimed this event; handling it again (its receiver may see it twice)");
            }
            match effect.await {
                Ok(()) => Ok(ctx.store.finish(group, &env.event_id)?),
                Err(e) => {
                    ctx.store.release(group, &env.event_id)?;
                    Err(e)
                }
            }
        }
    }
}

fn need_order(env: &Envelope) -> Result<&Order, Failure> {
    env.order.as_ref().ok_or_else(|| Failure::bad_data(format!("event {} has no order", env.event_id)))
}

/// Hands a fulfilled order to the delivery company: the webhook, or the simulator.
async fn deliver(ctx: &Ctx, env: &Envelope, order: &Order, shutdown: &CancellationToken) -> Result<(), Handled> {
    if let Some(url) = &ctx.config.delivery_webhook_url {
        let status = ctx.http.post_json(url, webhook_body(env, order)?, None).await.map_err(Failure::from)?;
        return Ok(Failure::from_status(status, "the delivery webhook")?);
    }
    let delay = Duration::from_millis(ctx.config.delivery_simulator_delay_ms);
    if wait(delay, shutdown).await {
        return Err(Handled::Stopped);
    }
    let body = serde_json::json!({
        "orderId": order.order_id,
        "deliveryCompanyId": "DeliveryCo1",
        "orderReview": "Arrived on time, the cake was delicious. 5/5",
    });
    let url = format!("{}/order/delivered", ctx.self_url);
    // Serialising a `json!` value cannot fail.
    let status = ctx
        .http
        .post_json(&url, serde_json::to_vec(&body).unwrap_or_default(), ctx.simulator_token.as_ref())
        .await
        .map_err(Failure::from)?;
    match status {
        200 => tracing::info!(order = %order.order_id, "simulated delivery done"),
        409 | 404 => tracing::warn!(order = %order.order_id, "simulated delivery: order not deliverable"),
        s => Failure::from_status(s, "POST /order/delivered")?,
    }
    Ok(())
}

/// The order's fields with the event id, so the receiver can deduplicate.
fn webhook_body(env: &Envelope, order: &Order) -> Result<Vec<u8>, Failure> {
    let mut body = serde_json::to_value(order).map_err(|e| Failure::bad_data(format!("encode order: {e}")))?;
    let serde_json::Value::Object(fields) = &mut body else {
        return Err(Failure::bad_data("an order does not encode as a JSON object"));
    };
    fields.insert("eventId".into(), env.event_id.clone().into());
    serde_json::to_vec(&body).map_err(|e| Failure::bad_data(format!("encode order: {e}")))
}

fn review_text(env: &Envelope, review: &str) -> String {
    let mut body = String::new();
    let _ = writeln!(body, "A customer reviewed their order.\n");
    let _ = writeln!(body, "Order:  {}", env.order_id);
    let _ = writeln!(body, "Date:   {}", env.date.unwrap_or(env.occurred_at));
    let _ = writeln!(body, "Review: {review}");
    body
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
