//! The aws CLI against the Kinesis API of an in-process broker; the
//! commands live in `kinesis/awscli_suite.sh`.

mod kinesis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_creates_puts_reads_lists_and_deletes() {
    let (b, _dir) = kinesis::broker().await;
    let endpoint = b.kinesis_endpoint().expect("Kinesis endpoint");
    let out = kinesis::awscli(&endpoint).await.expect_ok("aws CLI suite");
    assert!(out.contains("ok awscli"), "{out}");
    b.stop().await.expect("clean stop");
}
