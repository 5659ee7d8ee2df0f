//! The AWS SDK for JavaScript v3 (`@aws-sdk/client-kinesis`, whose default
//! handler speaks HTTP/2 with prior knowledge to an `http://` endpoint)
//! against the Kinesis API: a producer and a consumer written like the
//! original cake-shop functions, and a SubscribeToShard event stream. The
//! scripts live in `kinesis/js_seed_app.cjs`.

mod kinesis;

async fn script(case: &str) {
    let (b, _dir) = kinesis::broker().await;
    let endpoint = b.kinesis_endpoint().expect("Kinesis endpoint");
    let out = kinesis::node(&endpoint, "js_seed_app.cjs", &[case]).await.expect_ok(&format!("JS case {case}"));
    assert!(out.contains(&format!("ok {case}")), "{out}");
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_apps_producer_and_trim_horizon_consumer_work_unchanged() {
    script("seedApp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_shard_over_http2() {
    script("subscribe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_by_hand() {
    script("h2c").await;
}
