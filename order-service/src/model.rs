//! The order, its state machine, the request bodies and their validation,
//! and the event envelope.
//!
//! Request bodies are checked field by field over the parsed JSON object so
//! that every error names its field: unknown fields are rejected (like serde's
//! `deny_unknown_fields`, but listing all of them), missing, empty and
//! wrongly typed fields are reported together.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest `quantity` accepted.
pub const QUANTITY_MAX: u64 = 10_000;
/// Longest text field, in characters.
pub const TEXT_MAX: usize = 1024;
/// Version of the event envelope.
pub const EVENT_VERSION: u32 = 1;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created; waiting for the cake producer.
    Placed,
    /// The cake producer fulfilled it; on its way to delivery.
    Fulfilled,
    /// The delivery company delivered it.
    Delivered,
}

/// An order as stored and returned. Dates are ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// UUID v7.
    pub order_id: String,
    /// Customer name.
    pub name: String,
    /// Delivery address.
    pub address: String,
    /// The product ordered.
    pub product_id: String,
    /// How many, 1..=10000.
    pub quantity: u64,
    /// When it was placed.
    pub order_date: u64,
    /// State.
    pub status: Status,
    /// Who fulfilled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfillment_id: Option<String>,
    /// When it was fulfilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfillment_date: Option<u64>,
    /// When it was handed to the delivery queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_to_delivery_date: Option<u64>,
    /// Who delivered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_company_id: Option<String>,
    /// When it was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_date: Option<u64>,
    /// The customer's review, given on delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_review: Option<String>,
}

impl Order {
    /// A new order in status `placed`; every later field is unset.
    pub fn placed(
        order_id: String,
        name: String,
        address: String,
        product_id: String,
        quantity: u64,
        order_date: u64,
    ) -> Self {
        Self {
            order_id,
            name,
            address,
            product_id,
            quantity,
            order_date,
            status: Status::Placed,
            fulfillment_id: None,
            fulfillment_date: None,
            sent_to_delivery_date: None,
            delivery_company_id: None,
            delivery_date: None,
            order_review: None,
        }
    }
}

/// The event types on the order stream and the queues.
pub mod event_type {
    /// An order was created.
    pub const ORDER_PLACED: &str = "order_placed";
    /// An order was fulfilled.
    pub const ORDER_FULFILLED: &str = "order_fulfilled";
    /// An order was delivered.
    pub const ORDER_DELIVERED: &str = "order_delivered";
    /// A fulfilled order waits for the delivery company (delivery queue).
    pub const DELIVERY_REQUESTED: &str = "delivery_requested";
    /// A review for customer service (customer-service queue).
    pub const REVIEW_RECEIVED: &str = "review_received";
}

/// Every message this service publishes: on the order stream (with the
/// order snapshot), the delivery queue (with the order) and the
/// customer-service queue (with `orderReview` and `date`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique per event (UUID v7); consumers deduplicate on it.
    pub event_id: String,
    /// One of [`event_type`].
    pub event_type: String,
    /// When the event happened (ms).
    pub occurred_at: u64,
    /// Envelope version, [`EVENT_VERSION`].
    pub version: u32,
    /// The order concerned (also the partition key).
    pub order_id: String,
    /// The order after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    /// The review (customer-service queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_review: Option<String>,
    /// When the review was given (customer-service queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<u64>,
}

impl Envelope {
    /// A new event about `order`.
    pub fn about(event_type: &str, order: &Order, now: u64) -> Self {
        Self {
            event_id: new_id(),
            event_type: event_type.into(),
            occurred_at: now,
            version: EVENT_VERSION,
            order_id: order.order_id.clone(),
            order: Some(order.clone()),
            order_review: None,
            date: None,
        }
    }
}

/// A fresh UUID v7 as text.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A rejected request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON, or not a JSON object (400).
    Json(String),
    /// Fields that are not part of the request (400).
    UnknownFields(Vec<String>),
    /// Missing, empty, wrongly typed or out-of-range fields (422).
    Fields(Vec<(String, String)>),
}

/// `POST /order`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrder {
    /// Customer name.
    pub name: String,
    /// Delivery address.
    pub address: String,
    /// Product.
    pub product_id: String,
    /// 1..=10000.
    pub quantity: u64,
}

/// `POST /order/fulfill`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FulfillOrder {
    /// The order.
    pub order_id: String,
    /// The cake producer that fulfilled it.
    pub fulfillment_id: String,
}

/// `POST /order/delivered`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverOrder {
    /// The order.
    pub order_id: String,
    /// The delivery company.
    pub delivery_company_id: String,
    /// The customer's review (may be empty).
    pub order_review: String,
}

/// Checks a JSON object's fields, collecting every problem.
struct Fields<'a> {
    map: Map<String, Value>,
    errors: Vec<(String, String)>,
    allowed: &'a [&'a str],
}

impl<'a> Fields<'a> {
    fn parse(body: &[u8], allowed: &'a [&'a str]) -> Result<Self, Invalid> {
        let value: Value = serde_json::from_slice(body).map_err(|e| Invalid::Json(format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(Invalid::Json("the body must be a JSON object".into()));
        };
        let mut unknown: Vec<String> = map.keys().filter(|k| !allowed.contains(&k.as_str())).cloned().collect();
        unknown.sort();
        if !unknown.is_empty() {
            return Err(Invalid::UnknownFields(unknown));
        }
        Ok(Self { map, errors: Vec::new(), allowed })
    }

    fn fail(&mut self, field: &str, why: &str) {
        self.errors.push((field.into(), why.into()));
    }

    /// A string field; `non_empty` rejects blank text.
    fn text(&mut self, field: &str, non_empty: bool) -> String {
        debug_assert!(self.allowed.contains(&field));
        match self.map.get(field) {
            None | Some(Value::Null) => self.fail(field, "is required"),
            Some(Value::String(s)) if non_empty && s.trim().is_empty() => self.fail(field, "must not be empty"),
            Some(Value::String(s)) if s.chars().count() > TEXT_MAX => {
                self.fail(field, &format!("must be at most {TEXT_MAX} characters"))
            }
            Some(Value::String(s)) => return s.clone(),
            Some(_) => self.fail(field, "must be a string"),
        }
        String::new()
    }

    /// A positive integer, or a string of digits, in 1..=QUANTITY_MAX.
    fn quantity(&mut self, field: &str) -> u64 {
        let range = format!("must be an integer from 1 to {QUANTITY_MAX}");
        let n = match self.map.get(field) {
            None | Some(Value::Null) => {
                self.fail(field, "is required");
                return 0;
            }
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                // Digits only; a huge value fails to parse and is out of range.
                Some(s.parse::<u64>().unwrap_or(u64::MAX))
            }
            Some(_) => None,
        };
        match n {
            Some(n) if (1..=QUANTITY_MAX).contains(&n) => n,
            _ => {
                self.fail(field, &range);
                0
            }
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Invalid> {
        if self.errors.is_empty() { Ok(value) } else { Err(Invalid::Fields(self.errors)) }
    }
}

impl CreateOrder {
    /// Parses and checks a create body.
    pub fn parse(body: &[u8]) -> Result<Self, Invalid> {
        let mut f = Fields::parse(body, &["name", "address", "productId", "quantity"])?;
        let v = Self {
            name: f.text("name", true),
            address: f.text("address", true),
            product_id: f.text("productId", true),
            quantity: f.quantity("quantity"),
        };
        f.finish(v)
    }
}

impl FulfillOrder {
    /// Parses and checks a fulfil body.
    pub fn parse(body: &[u8]) -> Result<Self, Invalid> {
        let mut f = Fields::parse(body, &["orderId", "fulfillmentId"])?;
        let v = Self { order_id: f.text("orderId", true), fulfillment_id: f.text("fulfillmentId", true) };
        f.finish(v)
    }
}

impl DeliverOrder {
    /// Parses and checks a delivered body.
    pub fn parse(body: &[u8]) -> Result<Self, Invalid> {
        let mut f = Fields::parse(body, &["orderId", "deliveryCompanyId", "orderReview"])?;
        let v = Self {
            order_id: f.text("orderId", true),
            delivery_company_id: f.text("deliveryCompanyId", true),
            order_review: f.text("orderReview", false),
        };
        f.finish(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(r: Result<CreateOrder, Invalid>) -> Vec<String> {
        match r {
            Err(Invalid::Fields(f)) => f.into_iter().map(|(k, _)| k).collect(),
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn the_seed_body_is_accepted_with_a_string_quantity() {
        let o =
            CreateOrder::parse(br#"{"name":"marcia","address":"somewhere","productId":"productId11","quantity":"10"}"#)
                .expect("valid");
        assert_eq!(o.quantity, 10);
        let o = CreateOrder::parse(br#"{"name":"a","address":"b","productId":"c","quantity":10000}"#).expect("valid");
        assert_eq!(o.quantity, 10000);
    }

    #[test]
    fn bad_quantities_name_the_field() {
        for q in [
            r#""0""#,
            r#""-1""#,
            r#""abc""#,
            "1000000000000",
            "0",
            "-1",
            "1.5",
            r#""""#,
            "true",
            r#""99999999999999999999999""#,
        ] {
            let body = format!(r#"{{"name":"a","address":"b","productId":"c","quantity":{q}}}"#);
            assert_eq!(fields(CreateOrder::parse(body.as_bytes())), ["quantity"], "quantity {q}");
        }
    }

    #[test]
    fn every_problem_is_listed() {
        assert_eq!(
            fields(CreateOrder::parse(br#"{"name":"","address":5}"#)),
            ["name", "address", "productId", "quantity"]
        );
        assert_eq!(
            CreateOrder::parse(br#"{"name":"a","address":"b","productId":"c","quantity":1,"x":1,"eventType":2}"#),
            Err(Invalid::UnknownFields(vec!["eventType".into(), "x".into()]))
        );
        assert!(matches!(CreateOrder::parse(b"{nope"), Err(Invalid::Json(_))));
        assert!(matches!(CreateOrder::parse(b"[1]"), Err(Invalid::Json(_))));
    }

    #[test]
    fn orders_serialise_camel_case_without_absent_fields() {
        let o = Order::placed("id".into(), "n".into(), "a".into(), "p".into(), 3, 7);
        let v = serde_json::to_value(&o).expect("serialise");
        assert_eq!(
            v,
            serde_json::json!({"orderId":"id","name":"n","address":"a","productId":"p","quantity":3,"orderDate":7,"status":"placed"})
        );
    }
}
