//! The order table and the transactional outbox, in one sled database.
//!
//! Trees: the orders (name configurable, `ordersTable` by default), `outbox`
//! (pending messages keyed by a big-endian sequence from
//! `generate_id`, so iteration is publication order), `idempotency`
//! (Idempotency-Key → the order it created) and `processed` (`group/eventId`
//! → the state of that event for that consumer group, see [`Claim`]).
//!
//! Invariants:
//! - Every change to an order and the messages that announce it are written
//!   in one multi-tree transaction, so a crash leaves either both or neither.
//! - Nothing is acknowledged (an HTTP answer, a consumer checkpoint) before
//!   [`Store::commit`] returned: it rests on `broker::durable::DurableSled`,
//!   which `fdatasync`s sled's files (and `fsync`s their directory) after
//!   sled's own flush, which is no more than a `sync_file_range`.
//! - The relay deletes an outbox entry only after the broker acknowledged
//!   it, so every committed change is published at least once.
//! - A consumer claims an event (`processed` from absent to "claimed by this
//!   process", one compare-and-swap) before its side effect, so two
//!   deliveries of one event in this process never both perform it.

use std::path::Path;
use std::sync::Arc;

use broker::durable::DurableSled;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use tokio::sync::Notify;

use crate::model::{CreateOrder, DeliverOrder, Envelope, FulfillOrder, Order, Status, event_type, new_id, now_ms};

/// A failed store operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such order.
    #[error("order {0} not found")]
    NotFound(String),
    /// The transition is not allowed from the order's state.
    #[error("{0}")]
    Conflict(String),
    /// The Idempotency-Key was used before with a different body.
    #[error("the Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    /// The database failed.
    #[error("storage: {0}")]
    Db(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        }
    }
}

/// A message waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    /// Target stream.
    pub stream: String,
    /// Partition key (the order id).
    pub partition_key: String,
    /// The record data (an [`Envelope`] as JSON).
    pub data: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct IdempotencyRecord {
    order_id: String,
    request: CreateOrder,
}

/// Stream names the store writes outbox entries for.
#[derive(Debug, Clone)]
pub struct Streams {
    /// Order events.
    pub orders: String,
    /// Delivery queue.
    pub delivery: String,
    /// Customer-service queue.
    pub customer_service: String,
}

/// Where a consumer group stands with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller now owns the event: perform the side effect, then
    /// [`Store::finish`] (or [`Store::release`] if it failed).
    Won {
        /// A process that stopped before finishing had claimed it: its side
        /// effect may have happened already.
        after_crash: bool,
    },
    /// Another delivery in this process owns it right now.
    Busy,
    /// Handled already.
    Done,
}

/// `processed` values: a claim names the process (its incarnation id); a
/// finished event is marked done; a dead-lettered one is marked dead, which
/// a new delivery may claim again (a replay of the dead letter is meant to
/// be handled). Values written before claims existed were 8-byte
/// timestamps of handled events, which never start with these tags.
const CLAIM_TAG: u8 = b'C';
const DONE_TAG: u8 = b'D';
const DEAD_TAG: u8 = b'X';

/// Whether a `processed` value means the event needs no more handling.
fn is_handled(v: &[u8]) -> bool {
    v.first() != Some(&DEAD_TAG)
}

/// The order store.
#[derive(Debug, Clone)]
pub struct Store {
    durable: Arc<DurableSled>,
    /// Unique per open: a claim with another incarnation was left by a
    /// process that stopped.
    incarnation: Arc<[u8]>,
    orders: sled::Tree,
    outbox: sled::Tree,
    idempotency: sled::Tree,
    processed: sled::Tree,
    streams: Streams,
    /// Woken after every commit that added outbox entries.
    pub outbox_changed: Arc<Notify>,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn encode<T: Serialize>(v: &T) -> TxResult<Vec<u8>> {
    serde_json::to_vec(v).or_else(|e| abort(StoreError::Db(format!("encode: {e}"))))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> TxResult<T> {
    serde_json::from_slice(bytes).or_else(|e| abort(StoreError::Db(format!("decode: {e}"))))
}

fn read_order(orders: &TransactionalTree, id: &str) -> TxResult<Order> {
    match orders.get(id.as_bytes())? {
        Some(bytes) => decode(&bytes),
        None => abort(StoreError::NotFound(id.into())),
    }
}

fn enqueue(outbox: &TransactionalTree, stream: &str, envelope: &Envelope) -> TxResult<()> {
    let data = String::from_utf8(encode(envelope)?).or_else(|e| abort(StoreError::Db(e.to_string())))?;
    let entry = OutboxEntry { stream: stream.into(), partition_key: envelope.order_id.clone(), data };
    let id = outbox.generate_id()?;
    outbox.insert(&id.to_be_bytes(), encode(&entry)?)?;
    Ok(())
}

impl Store {
    /// Opens (or creates) the database in `dir`. Blocks (it fsyncs).
    pub fn open(dir: &Path, table: &str, streams: Streams) -> Result<Self, StoreError> {
        let durable = DurableSled::open(dir)?;
        let db = durable.db();
        let mut incarnation = vec![CLAIM_TAG];
        incarnation.extend_from_slice(new_id().as_bytes());
        Ok(Self {
            orders: db.open_tree(table)?,
            outbox: db.open_tree("outbox")?,
            idempotency: db.open_tree("idempotency")?,
            processed: db.open_tree("processed")?,
            durable: Arc::new(durable),
            incarnation: incarnation.into(),
            streams,
            outbox_changed: Arc::new(Notify::new()),
        })
    }

    /// Returns once every change made before the call is durable
    /// (`fdatasync`, see the module docs). Concurrent callers share one
    /// sync. Runs on the blocking pool.
    pub async fn commit(&self) -> Result<(), StoreError> {
        let durable = self.durable.clone();
        tokio::task::spawn_blocking(move || durable.commit())
            .await
            .map_err(|e| StoreError::Db(format!("commit task: {e}")))?
            .map_err(|e| StoreError::Db(e.to_string()))
    }

    /// Like [`Store::commit`], from a thread that may block.
    pub fn commit_blocking(&self) -> Result<(), StoreError> {
        self.durable.commit().map_err(|e| StoreError::Db(e.to_string()))
    }

    fn committed(&self) {
        self.outbox_changed.notify_one();
    }

    /// One order.
    pub fn get(&self, id: &str) -> Result<Option<Order>, StoreError> {
        match self.orders.get(id.as_bytes())? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| StoreError::Db(format!("decode: {e}")))?)),
            None => Ok(None),
        }
    }

    /// Orders newest first (order ids are UUID v7, so key order is creation
    /// order), only those in `status` if given, starting after the order
    /// `before` (exclusive). Looks at no more than `scan_max` orders; the
    /// second value is where the next page starts when more may follow.
    pub fn list(
        &self,
        status: Option<Status>,
        limit: usize,
        before: Option<&str>,
        scan_max: usize,
    ) -> Result<(Vec<Order>, Option<String>), StoreError> {
        let entries = match before {
            Some(b) => self.orders.range(..b.as_bytes()),
            None => self.orders.iter(),
        };
        let (mut out, mut scanned, mut last) = (Vec::new(), 0usize, None);
        for entry in entries.rev() {
            if out.len() >= limit || scanned >= scan_max {
                return Ok((out, last));
            }
            let (_, bytes) = entry?;
            let order: Order = serde_json::from_slice(&bytes).map_err(|e| StoreError::Db(format!("decode: {e}")))?;
            scanned += 1;
            last = Some(order.order_id.clone());
            if status.is_none_or(|s| s == order.status) {
                out.push(order);
            }
        }
        Ok((out, None))
    }

    /// Creates an order and its `order_placed` event. With an idempotency
    /// key already used for the same request, returns that order instead
    /// (`false`: nothing new was created).
    pub fn create(&self, req: &CreateOrder, key: Option<&str>) -> Result<(Order, bool), StoreError> {
        let stream = &self.streams.orders;
        let r = (&self.orders, &self.outbox, &self.idempotency).transaction(|(orders, outbox, idem)| {
            if let Some(key) = key
                && let Some(prev) = idem.get(key.as_bytes())?
            {
                let prev: IdempotencyRecord = decode(&prev)?;
                if &prev.request != req {
                    return abort(StoreError::IdempotencyMismatch);
                }
                return Ok((read_order(orders, &prev.order_id)?, false));
            }
            let now = now_ms();
            let order = Order::placed(
                new_id(),
                req.name.clone(),
                req.address.clone(),
                req.product_id.clone(),
                req.quantity,
                now,
            );
            orders.insert(order.order_id.as_bytes(), encode(&order)?)?;
            enqueue(outbox, stream, &Envelope::about(event_type::ORDER_PLACED, &order, now))?;
            if let Some(key) = key {
                let rec = IdempotencyRecord { order_id: order.order_id.clone(), request: req.clone() };
                idem.insert(key.as_bytes(), encode(&rec)?)?;
            }
            Ok((order, true))
        })?;
        self.committed();
        Ok(r)
    }

    /// `placed → fulfilled`, with its `order_fulfilled` event.
    pub fn fulfill(&self, req: &FulfillOrder) -> Result<(Order, bool), StoreError> {
        let stream = &self.streams.orders;
        let (order, changed) = (&self.orders, &self.outbox).transaction(|(orders, outbox)| {
            let mut order = read_order(orders, &req.order_id)?;
            if order.status != Status::Placed {
                // A repeat of the same fulfilment (a retried request) is
                // answered with the order as it is now; another one is a conflict.
                if order.fulfillment_id.as_deref() == Some(req.fulfillment_id.as_str()) {
                    return Ok((order, false));
                }
                return abort(StoreError::Conflict(match &order.fulfillment_id {
                    Some(by) => format!(
                        "order {} was already fulfilled by {by}, not {} (it is {} now)",
                        order.order_id,
                        req.fulfillment_id,
                        status_name(order.status)
                    ),
                    None => format!(
                        "order {} is {}; only a placed order can be fulfilled",
                        order.order_id,
                        status_name(order.status)
                    ),
                }));
            }
            let now = now_ms();
            order.status = Status::Fulfilled;
            order.fulfillment_id = Some(req.fulfillment_id.clone());
            order.fulfillment_date = Some(now);
            orders.insert(order.order_id.as_bytes(), encode(&order)?)?;
            enqueue(outbox, stream, &Envelope::about(event_type::ORDER_FULFILLED, &order, now))?;
            Ok((order, true))
        })?;
        if changed {
            self.committed();
        }
        Ok((order, changed))
    }

    /// `fulfilled → delivered`, with its `order_delivered` event and the
    /// review message for customer service.
    pub fn deliver(&self, req: &DeliverOrder) -> Result<Order, StoreError> {
        let streams = &self.streams;
        let order = (&self.orders, &self.outbox).transaction(|(orders, outbox)| {
            let mut order = read_order(orders, &req.order_id)?;
            if order.status != Status::Fulfilled {
                return abort(StoreError::Conflict(format!(
                    "order {} is {}; only a fulfilled order can be delivered",
                    order.order_id,
                    status_name(order.status)
                )));
            }
            let now = now_ms();
            order.status = Status::Delivered;
            order.delivery_company_id = Some(req.delivery_company_id.clone());
            order.delivery_date = Some(now);
            order.order_review = Some(req.order_review.clone());
            orders.insert(order.order_id.as_bytes(), encode(&order)?)?;
            enqueue(outbox, &streams.orders, &Envelope::about(event_type::ORDER_DELIVERED, &order, now))?;
            let review = Envelope {
                event_id: new_id(),
                event_type: event_type::REVIEW_RECEIVED.into(),
                occurred_at: now,
                version: crate::model::EVENT_VERSION,
                order_id: order.order_id.clone(),
                order: None,
                order_review: Some(req.order_review.clone()),
                date: Some(now),
            };
            enqueue(outbox, &streams.customer_service, &review)?;
            Ok(order)
        })?;
        self.committed();
        Ok(order)
    }

    /// For an `order_fulfilled` event not yet handled by `group`: stamps
    /// `sentToDeliveryDate`, enqueues the order on the delivery queue and
    /// marks the event processed, all in one transaction. Returns false if
    /// the event had been handled already.
    pub fn send_to_delivery(&self, group: &str, event_id: &str, order_id: &str) -> Result<bool, StoreError> {
        let key = processed_key(group, event_id);
        let stream = &self.streams.delivery;
        let done = (&self.orders, &self.outbox, &self.processed).transaction(|(orders, outbox, processed)| {
            if processed.get(key.as_bytes())?.is_some_and(|v| is_handled(&v)) {
                return Ok(false);
            }
            let mut order = read_order(orders, order_id)?;
            let now = now_ms();
            if order.sent_to_delivery_date.is_none() {
                order.sent_to_delivery_date = Some(now);
                orders.insert(order.order_id.as_bytes(), encode(&order)?)?;
            }
            enqueue(outbox, stream, &Envelope::about(event_type::DELIVERY_REQUESTED, &order, now))?;
            processed.insert(key.as_bytes(), &now.to_be_bytes())?;
            Ok(true)
        })?;
        if done {
            self.committed();
        }
        Ok(done)
    }

    /// Claims `event_id` for `group`, atomically: of concurrent callers in
    /// this process exactly one wins. A claim left by a process that stopped
    /// is taken over. The claim itself need not be durable: if it is lost in
    /// a crash, the event was not acknowledged either and is handled again,
    /// as it would be after taking over a surviving claim.
    pub fn claim(&self, group: &str, event_id: &str) -> Result<Claim, StoreError> {
        let key = processed_key(group, event_id);
        loop {
            let current = self.processed.get(key.as_bytes())?;
            let after_crash = match &current {
                None => false,
                Some(v) if v.as_ref() == &*self.incarnation => return Ok(Claim::Busy),
                Some(v) if v.first() == Some(&CLAIM_TAG) => true,
                Some(v) if !is_handled(v) => false,
                Some(_) => return Ok(Claim::Done),
            };
            let swapped = self.processed.compare_and_swap(key.as_bytes(), current, Some(self.incarnation.as_ref()))?;
            if swapped.is_ok() {
                return Ok(Claim::Won { after_crash });
            }
            // Someone changed it between the read and the swap: look again.
        }
    }

    /// Marks a claimed (or dead-lettered) event done. Durable after the next
    /// [`Store::commit`].
    pub fn finish(&self, group: &str, event_id: &str) -> Result<(), StoreError> {
        let mut done = vec![DONE_TAG];
        done.extend_from_slice(&now_ms().to_be_bytes());
        self.processed.insert(processed_key(group, event_id).as_bytes(), done)?;
        Ok(())
    }

    /// Marks an event dead-lettered: a later delivery of it (a replay of
    /// the dead letter) is handled again. Durable after the next
    /// [`Store::commit`].
    pub fn dead_lettered(&self, group: &str, event_id: &str) -> Result<(), StoreError> {
        let mut dead = vec![DEAD_TAG];
        dead.extend_from_slice(&now_ms().to_be_bytes());
        self.processed.insert(processed_key(group, event_id).as_bytes(), dead)?;
        Ok(())
    }

    /// Gives up this process's claim after a failed side effect, so the next
    /// attempt (or another delivery) can claim it again.
    pub fn release(&self, group: &str, event_id: &str) -> Result<(), StoreError> {
        let key = processed_key(group, event_id);
        // Only our own claim is removed; anything else is left as it is.
        let _ = self.processed.compare_and_swap(key.as_bytes(), Some(self.incarnation.as_ref()), None::<&[u8]>)?;
        Ok(())
    }

    /// Up to `n` pending outbox entries, oldest first.
    pub fn outbox_head(&self, n: usize) -> Result<Vec<(sled::IVec, OutboxEntry)>, StoreError> {
        self.outbox
            .iter()
            .take(n)
            .map(|r| {
                let (k, v) = r?;
                let e = serde_json::from_slice(&v).map_err(|e| StoreError::Db(format!("decode outbox: {e}")))?;
                Ok((k, e))
            })
            .collect()
    }

    /// Deletes a published outbox entry.
    pub fn outbox_remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.outbox.remove(key)?;
        Ok(())
    }

    /// Entries waiting to be published.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }
}

fn processed_key(group: &str, event_id: &str) -> String {
    format!("{group}/{event_id}")
}

/// The status as the API spells it.
pub fn status_name(s: Status) -> &'static str {
    match s {
        Status::Placed => "placed",
        Status::Fulfilled => "fulfilled",
        Status::Delivered => "delivered",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        let streams = Streams { orders: "o".into(), delivery: "d".into(), customer_service: "c".into() };
        Store::open(dir, "ordersTable", streams).expect("open")
    }

    #[test]
    fn list_pages_newest_first_and_filters_by_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = store(dir.path());
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(st.create(&req(), None).expect("create").0.order_id);
        }
        st.fulfill(&FulfillOrder { order_id: ids[1].clone(), fulfillment_id: "p".into() }).expect("fulfil");
        let (page, next) = st.list(None, 2, None, 1000).expect("list");
        assert_eq!(page.iter().map(|o| o.order_id.clone()).collect::<Vec<_>>(), vec![ids[4].clone(), ids[3].clone()]);
        let (page, _) = st.list(None, 10, next.as_deref(), 1000).expect("next page");
        assert_eq!(
            page.iter().map(|o| o.order_id.clone()).collect::<Vec<_>>(),
            vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]
        );
        let (fulfilled, next) = st.list(Some(Status::Fulfilled), 10, None, 1000).expect("by status");
        assert_eq!((fulfilled.len(), fulfilled[0].order_id.clone(), next), (1, ids[1].clone(), None));
        let (_, next) = st.list(Some(Status::Delivered), 10, None, 3).expect("bounded scan");
        assert_eq!(next, Some(ids[2].clone()), "a scan that stops early says where to go on");
    }

    fn req() -> CreateOrder {
        CreateOrder { name: "n".into(), address: "a".into(), product_id: "p".into(), quantity: 2 }
    }

    #[test]
    fn each_change_writes_its_events_and_the_state_machine_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let (o, created) = s.create(&req(), None).expect("create");
        assert!(created);
        assert_eq!(s.outbox_len(), 1);
        let deliver =
            DeliverOrder { order_id: o.order_id.clone(), delivery_company_id: "d".into(), order_review: "ok".into() };
        assert!(matches!(s.deliver(&deliver), Err(StoreError::Conflict(_))));
        let f = FulfillOrder { order_id: o.order_id.clone(), fulfillment_id: "f".into() };
        let (fulfilled, changed) = s.fulfill(&f).expect("fulfil");
        assert_eq!((fulfilled.status, changed), (Status::Fulfilled, true));
        // The same fulfilment again changes nothing and writes no event.
        assert_eq!(s.fulfill(&f).expect("repeat"), (fulfilled, false));
        let other = FulfillOrder { order_id: o.order_id.clone(), fulfillment_id: "g".into() };
        assert!(matches!(s.fulfill(&other), Err(StoreError::Conflict(_))));
        assert!(s.send_to_delivery("g", "e1", &o.order_id).expect("send"));
        assert!(!s.send_to_delivery("g", "e1", &o.order_id).expect("send again"));
        assert_eq!(s.deliver(&deliver).expect("deliver").status, Status::Delivered);
        let streams: Vec<String> = s.outbox_head(10).expect("head").into_iter().map(|(_, e)| e.stream).collect();
        assert_eq!(streams, ["o", "o", "d", "o", "c"]);
        let unknown = FulfillOrder { order_id: "nope".into(), fulfillment_id: "f".into() };
        assert_eq!(s.fulfill(&unknown), Err(StoreError::NotFound("nope".into())));
    }

    #[test]
    fn one_claim_wins_and_a_stopped_process_claim_is_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = store(dir.path());
            assert_eq!(s.claim("g", "e1").expect("claim"), Claim::Won { after_crash: false });
            assert_eq!(s.claim("g", "e1").expect("claim"), Claim::Busy);
            assert_eq!(s.claim("other", "e1").expect("claim"), Claim::Won { after_crash: false });
            s.release("g", "e1").expect("release");
            assert_eq!(s.claim("g", "e1").expect("claim"), Claim::Won { after_crash: false });
            assert_eq!(s.claim("g", "e2").expect("claim"), Claim::Won { after_crash: false });
            s.finish("g", "e2").expect("finish");
            assert_eq!(s.claim("g", "e2").expect("claim"), Claim::Done);
            s.release("g", "e2").expect("release leaves a done mark");
            assert_eq!(s.claim("g", "e2").expect("claim"), Claim::Done);
            // A dead-lettered event may be claimed again (its replay).
            s.claim("g", "e3").expect("claim");
            s.dead_lettered("g", "e3").expect("dead-lettered");
            assert_eq!(s.claim("g", "e3").expect("claim"), Claim::Won { after_crash: false });
            s.finish("g", "e3").expect("finish");
            assert_eq!(s.claim("g", "e3").expect("claim"), Claim::Done);
            // A mark from before claims existed is a done mark.
            s.processed.insert("g/old", &1u64.to_be_bytes()).expect("insert");
            s.commit_blocking().expect("commit");
        }
        let s = store(dir.path());
        assert_eq!(s.claim("g", "e1").expect("claim"), Claim::Won { after_crash: true });
        assert_eq!(s.claim("g", "e1").expect("claim"), Claim::Busy);
        assert_eq!(s.claim("g", "e2").expect("claim"), Claim::Done);
        assert_eq!(s.claim("g", "old").expect("claim"), Claim::Done);
    }

    #[test]
    fn concurrent_claims_have_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        for round in 0..50 {
            let event = format!("e{round}");
            let wins: usize = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| s.claim("g", &event).expect("claim") == Claim::Won { after_crash: false }))
                    .collect();
                handles.into_iter().map(|h| usize::from(h.join().expect("claimer"))).sum()
            });
            assert_eq!(wins, 1, "round {round}");
        }
    }

    #[test]
    fn an_idempotency_key_returns_the_first_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let (a, _) = s.create(&req(), Some("k")).expect("create");
        let (b, created) = s.create(&req(), Some("k")).expect("replay");
        assert!(!created);
        assert_eq!(a, b);
        assert_eq!(s.outbox_len(), 1);
        let other = CreateOrder { quantity: 3, ..req() };
        assert_eq!(s.create(&other, Some("k")), Err(StoreError::IdempotencyMismatch));
    }
}
