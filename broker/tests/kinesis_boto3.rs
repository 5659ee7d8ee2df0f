//! boto3 against the Kinesis API of an in-process broker: every operation,
//! paging, iterator types, reading to the end, lifecycles, consumers and
//! subscriptions, throttling with boto3's own retries, error names, and
//! strict-mode signatures. The cases live in `kinesis/boto3_suite.py`.

mod kinesis;

use std::sync::Arc;

use broker::clock::{Clock, ManualClock, SystemClock};
use broker::config::{AccessKey, KinesisAuth};

async fn suite(case: &str) {
    let (b, _dir) = kinesis::broker().await;
    let endpoint = b.kinesis_endpoint().expect("Kinesis endpoint");
    let out = kinesis::boto3(&endpoint, case, None).await.expect_ok(&format!("boto3 case {case}"));
    assert!(out.contains(&format!("ok {case}")), "{out}");
    b.stop().await.expect("clean stop");
}

/// A case whose time-based rules (quota refills, consumer activation, the
/// subscription takeover delay) run on a manual clock the script advances.
async fn suite_on_manual_clock(case: &str) {
    suite_on_manual_clock_with(case, |_| {}).await;
}

async fn suite_on_manual_clock_with(case: &str, tweak: impl FnOnce(&mut broker::config::BrokerConfig)) {
    let clock = kinesis::manual_clock();
    let (b, _dir) = kinesis::broker_with(tweak, clock.clone()).await;
    let endpoint = b.kinesis_endpoint().expect("Kinesis endpoint");
    let out = kinesis::boto3(&endpoint, case, Some(clock)).await.expect_ok(&format!("boto3 case {case}"));
    assert!(out.contains(&format!("ok {case}")), "{out}");
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_shards_paging_modes_and_limits() {
    suite("streams").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_read_with_every_iterator_type() {
    suite("data").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_tag_policy_monitoring_and_encryption_lifecycles() {
    suite("lifecycles").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lifecycle_and_limits() {
    suite_on_manual_clock_with("consumers", |c| c.kinesis.consumer_activation_ms = 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_shard_delivers_and_resumes() {
    suite("subscribe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_subscription_within_five_seconds_is_refused_a_later_one_takes_over() {
    suite_on_manual_clock("subscribe_takeover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_by_boto3_until_it_succeeds() {
    suite_on_manual_clock("throttling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usual_mistakes_get_aws_error_names() {
    suite("errors").await;
}

fn strict(config: &mut broker::config::BrokerConfig) {
    config.kinesis.auth = KinesisAuth::Strict;
    config.kinesis.access_keys = vec![AccessKey {
        access_key_id: kinesis::ACCESS_KEY_ID.into(),
        secret_access_key: kinesis::SECRET_ACCESS_KEY.into(),
    }];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_rejects_bad_unknown_and_missing_signatures() {
    let (b, _dir) = kinesis::broker_with(strict, Arc::new(SystemClock)).await;
    let endpoint = b.kinesis_endpoint().expect("Kinesis endpoint");
    kinesis::boto3(&endpoint, "strict", None).await.expect_ok("boto3 case strict");
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_rejects_a_stale_signature() {
    let ahead = SystemClock.now_ms() + 10 * 60 * 1000;
    let (b, _dir) = kinesis::broker_with(strict, Arc::new(ManualClock::new(ahead))).await;
    let endpoint = b.kinesis_endpoint().expect("Kinesis endpoint");
    kinesis::boto3(&endpoint, "stale_signature", None).await.expect_ok("boto3 case stale_signature");
    b.stop().await.expect("clean stop");
}
