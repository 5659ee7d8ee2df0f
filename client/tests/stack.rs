//! Stack files through `streamctl stack deploy|diff|remove` and
//! `client::stack`, against an in-process broker with real files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use broker::testing::TestBroker;
use client::stack::{self, Stack};
use client::{Admin, Error, types as pb};

/// Longest any one streamctl run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// What one streamctl run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs streamctl with `--broker <addr>` and `args`, stdin empty (not a
/// terminal), bounded by [`RUN_TIMEOUT`].
async fn streamctl(addr: &str, args: &[&str]) -> Run {
    let mut all = vec!["--broker".to_string(), addr.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_streamctl"))
            .env_remove("STREAMCTL_BROKER")
            .env_remove("STREAMCTL_PROFILE")
            .env_remove("STREAMCTL_TIMEOUT")
            .env("STREAMCTL_CONFIG", "/nonexistent/streamctl.toml")
            .args(&all)
            .write_stdin(Vec::new())
            .timeout(RUN_TIMEOUT)
            .output()
            .expect("run streamctl");
        let code = out.status.code().unwrap_or_else(|| panic!("streamctl {all:?} timed out or was killed"));
        Run {
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("streamctl runner thread")
}

const TWO_STREAMS: &str = r#"
[[streams]]
name = "orders"
shards = 2
retentionHours = 24
maxRecordBytes = 1048576
[streams.quotas]
writeRecordsPerSec = 500

[[streams]]
name = "orders-dlq"
shards = 1
retentionHours = 168

[[groups]]
name = "billing"
stream = "orders"
start = "latest"
batchSize = 10
deadLetter = "orders-dlq"
"#;

/// A broker with [`TWO_STREAMS`] deployed from `<dir>/stack.toml`.
async fn deployed_two_streams() -> (TestBroker, Admin, tempfile::TempDir, PathBuf) {
    let b = TestBroker::start().await;
    let admin = Admin::connect(&b.endpoint()).await.expect("admin");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "stack.toml", TWO_STREAMS);
    stack::deploy(&admin, &Stack::load(&file).expect("load")).await.expect("first deploy");
    (b, admin, dir, file)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the stack file");
    path
}

async fn describe(admin: &Admin, name: &str) -> pb::StreamDescription {
    admin.describe_stream(name).await.expect("describe")
}

async fn put(admin: &Admin, stream: &str, n: usize) {
    let records = (0..n)
        .map(|i| pb::PutRecordsEntry { partition_key: format!("k{i}"), data: "x".into(), explicit_hash_key: None })
        .collect();
    let r = admin
        .streams()
        .put_records(pb::PutRecordsRequest { stream_name: stream.into(), records })
        .await
        .expect("put")
        .into_inner();
    assert_eq!(r.failed_record_count, 0);
}

/// Creates a group the way a consumer does: by joining it (and leaving).
async fn make_group(addr: &str, stream: &str, group: &str) {
    let consumer = client::Consumer::join(addr, stream, client::ConsumerConfig::new(group)).await.expect("join");
    consumer.leave().await.expect("leave");
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_creates_everything_once_and_the_second_deploy_changes_nothing() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "stack.toml", TWO_STREAMS);
    let file = file.to_str().expect("utf-8 path");

    let r = streamctl(&addr, &["stack", "diff", file]).await;
    assert_eq!(r.code, 3, "diff exits 3 when the broker differs: {r:?}");
    assert_eq!(r.stdout.lines().count(), 3, "two streams and a group to create: {}", r.stdout);

    let r = streamctl(&addr, &["stack", "deploy", file]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "+ stream orders: 2 shards, retentionHours 24, maxRecordBytes 1048576, quotas.writeRecordsPerSec 500",
            "+ stream orders-dlq: 1 shard, retentionHours 168",
            "+ group billing on orders: start latest",
        ],
        "{}",
        r.stdout
    );
    assert!(lines[3].ends_with("3 changes applied"), "{}", r.stdout);

    let admin = Admin::connect(&addr).await.expect("admin");
    let orders = describe(&admin, "orders").await;
    assert_eq!((orders.shards.len(), orders.retention_hours), (2, 24));
    let q = orders.quotas.expect("quotas");
    assert_eq!(q.write_records_per_sec, Some(500), "the file's quota");
    assert_eq!(q.read_calls_per_sec, Some(5), "an unset quota takes the broker's default");
    assert_eq!(describe(&admin, "orders-dlq").await.retention_hours, 168);
    let group = admin.describe_group("orders", "billing").await.expect("the group exists");
    assert_eq!(group.start.expect("start").position, pb::IteratorType::Latest as i32);
    assert!(group.members.is_empty(), "deploy left the group it joined");

    let r = streamctl(&addr, &["stack", "deploy", file]).await;
    assert_eq!((r.code, r.stdout.trim_end()), (0, format!("{file}: no changes, the broker matches the file").as_str()));
    let r = streamctl(&addr, &["stack", "diff", file]).await;
    assert_eq!(r.code, 0, "in sync: {r:?}");
    let again = stack::deploy(&admin, &Stack::load(Path::new(file)).expect("load")).await.expect("deploy");
    assert!(again.is_empty(), "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_retention_and_quotas_are_applied_and_diff_says_so_first() {
    let (b, admin, dir, file) = deployed_two_streams().await;
    let addr = b.endpoint();
    put(&admin, "orders", 10).await;

    let changed = TWO_STREAMS
        .replacen("retentionHours = 24", "retentionHours = 72", 1)
        .replace("writeRecordsPerSec = 500", "writeRecordsPerSec = 250\nreadCallsPerSec = 10");
    write(dir.path(), "stack.toml", &changed);
    let path = file.to_str().expect("utf-8 path");
    let r = streamctl(&addr, &["stack", "diff", path]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(
        r.stdout,
        "~ stream orders: retentionHours 24 -> 72\n\
         ~ stream orders: quotas.writeRecordsPerSec 500 -> 250, quotas.readCallsPerSec 5 -> 10\n"
    );
    assert!(r.stderr.contains("2 differences"), "{}", r.stderr);
    assert_eq!(describe(&admin, "orders").await.retention_hours, 24, "diff changes nothing");

    let r = streamctl(&addr, &["--json", "stack", "deploy", path]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let json: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(json["changes"].as_array().map(Vec::len), Some(2), "{json}");
    let orders = describe(&admin, "orders").await;
    assert_eq!(orders.retention_hours, 72);
    let q = orders.quotas.expect("quotas");
    assert_eq!((q.write_records_per_sec, q.read_calls_per_sec), (Some(250), Some(10)));
    assert_eq!(orders.shards.iter().map(|s| s.records_stored).sum::<u64>(), 10, "records are kept");
    assert_eq!(streamctl(&addr, &["stack", "diff", path]).await.code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_difference_deploy_cannot_make_refuses_the_whole_deploy() {
    let (b, admin, dir, file) = deployed_two_streams().await;
    let addr = b.endpoint();

    let changed = TWO_STREAMS
        .replacen("maxRecordBytes = 1048576", "maxRecordBytes = 524288", 1)
        .replace("retentionHours = 168", "retentionHours = 48");
    write(dir.path(), "stack.toml", &changed);
    let path = file.to_str().expect("utf-8 path");
    let r = streamctl(&addr, &["stack", "deploy", path]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("stream orders: maxRecordBytes is 524288 in the file and 1048576 on the broker")
            && r.stderr.contains("nothing was changed"),
        "names the stream and both values: {}",
        r.stderr
    );
    assert_eq!(describe(&admin, "orders-dlq").await.retention_hours, 168, "the retention change waits too");
    let r = streamctl(&addr, &["stack", "diff", path]).await;
    assert_eq!(r.code, 3);
    assert!(r.stdout.contains("! stream orders: maxRecordBytes is 524288"), "{}", r.stdout);
    assert!(r.stdout.contains("~ stream orders-dlq: retentionHours 168 -> 48"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_count_change_is_deployed_with_update_shard_count_steps() {
    let (b, admin, dir, file) = deployed_two_streams().await;
    let addr = b.endpoint();

    // 2 -> 5 is more than one call may do: it goes 2 -> 4 -> 5.
    write(dir.path(), "stack.toml", &TWO_STREAMS.replacen("shards = 2", "shards = 5", 1));
    let path = file.to_str().expect("utf-8 path");
    let r = streamctl(&addr, &["stack", "diff", path]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("~ stream orders: shards 2 -> 4 -> 5 (UpdateShardCount)"), "{}", r.stdout);
    let r = streamctl(&addr, &["stack", "deploy", path]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let d = describe(&admin, "orders").await;
    assert_eq!(d.open_shard_count, 5, "{d:?}");
    assert!(d.shards.len() > 5, "the closed parents stay listed: {}", d.shards.len());
    assert_eq!(streamctl(&addr, &["stack", "diff", path]).await.code, 0, "closed parents are not counted");

    // And back down, halving at most per call: 5 -> 3 -> 2.
    write(dir.path(), "stack.toml", TWO_STREAMS);
    let r = streamctl(&addr, &["stack", "diff", path]).await;
    assert!(r.stdout.contains("~ stream orders: shards 5 -> 3 -> 2 (UpdateShardCount)"), "{}", r.stdout);
    assert_eq!(streamctl(&addr, &["stack", "deploy", path]).await.code, 0);
    assert_eq!(describe(&admin, "orders").await.open_shard_count, 2);
}

#[test]
fn rescale_steps_double_or_halve_at_most() {
    assert_eq!(stack::rescale_steps(2, 5), vec![4, 5]);
    assert_eq!(stack::rescale_steps(1, 16), vec![2, 4, 8, 16]);
    assert_eq!(stack::rescale_steps(16, 3), vec![8, 4, 3]);
    assert_eq!(stack::rescale_steps(5, 2), vec![3, 2]);
    assert!(stack::rescale_steps(4, 4).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_and_remove_leave_undeclared_streams_alone() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let admin = Admin::connect(&addr).await.expect("admin");
    // Unrelated streams with records, a group and a retention of their own.
    for name in ["audit", "payments"] {
        admin
            .create_stream(pb::CreateStreamRequest {
                stream_name: name.into(),
                shard_count: 1,
                retention_hours: Some(100),
                ..Default::default()
            })
            .await
            .expect("create");
        put(&admin, name, 3).await;
    }
    let unrelated = pb::Quotas { write_records_per_sec: Some(7), ..Default::default() };
    admin.update_quotas("audit", unrelated).await.expect("quota");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "stack.toml", TWO_STREAMS);
    let stack = Stack::load(&file).expect("load");
    make_group(&addr, "payments", "ledger").await;

    let applied = stack::deploy(&admin, &stack).await.expect("deploy");
    assert!(applied.to_string().lines().all(|l| !l.contains("audit") && !l.contains("payments")), "{applied}");
    let mut names = admin.list_streams().await.expect("list");
    names.sort();
    assert_eq!(names, ["audit", "orders", "orders-dlq", "payments"]);
    let audit = describe(&admin, "audit").await;
    assert_eq!((audit.retention_hours, audit.quotas.expect("q").write_records_per_sec), (100, Some(7)));

    // Remove: records refuse it, a script without --yes is refused, then --force --yes.
    put(&admin, "orders", 2).await;
    let path = file.to_str().expect("utf-8 path");
    let r = streamctl(&addr, &["stack", "remove", path, "--yes"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("stream orders still has 2 records") && r.stderr.contains("--force"), "{}", r.stderr);
    let r = streamctl(&addr, &["stack", "remove", path, "--force"]).await;
    assert_eq!(r.code, 2, "no terminal to confirm on: {r:?}");
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    assert_eq!(admin.list_streams().await.expect("list").len(), 4, "nothing was deleted");

    let r = streamctl(&addr, &["stack", "remove", path, "--force", "--yes"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with("- stream orders: 2 records, groups billing\n- stream orders-dlq: 0 records\n"),
        "{}",
        r.stdout
    );
    let mut names = admin.list_streams().await.expect("list");
    names.sort();
    assert_eq!(names, ["audit", "payments"], "only the declared streams are gone");
    for name in ["audit", "payments"] {
        assert_eq!(describe(&admin, name).await.shards[0].records_stored, 3, "{name} keeps its records");
    }
    let groups = admin.list_groups(None).await.expect("groups");
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].stream_name.as_str(), groups[0].group_name.as_str()), ("payments", "ledger"));

    let r = streamctl(&addr, &["stack", "remove", path]).await;
    assert_eq!(r.code, 0, "removing again finds nothing: {r:?}");
    assert!(r.stdout.contains("= stream orders: not on the broker") && r.stdout.contains("nothing to remove"));
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_refuses_to_take_undeclared_groups_or_live_consumers_with_a_stream() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let admin = Admin::connect(&addr).await.expect("admin");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "stack.toml", TWO_STREAMS);
    let stack = Stack::load(&file).expect("load");
    stack::deploy(&admin, &stack).await.expect("deploy");
    make_group(&addr, "orders", "someone-else").await;
    let consumer = client::Consumer::join(&addr, "orders", client::ConsumerConfig::new("billing")).await.expect("join");

    let removal = stack::plan_removal(&admin, &stack, false).await.expect("plan");
    let refused = removal.refused.join("\n");
    assert!(refused.contains("group someone-else is not declared"), "{refused}");
    assert!(refused.contains("group billing has 1 live member"), "{refused}");
    let e = stack::remove(&admin, &stack, &removal).await.expect_err("refused");
    assert!(matches!(e, Error::StackRefused(_)), "{e}");
    assert_eq!(admin.list_streams().await.expect("list").len(), 2, "nothing was deleted");
    consumer.leave().await.expect("leave");

    let removal = stack::plan_removal(&admin, &stack, true).await.expect("plan");
    assert!(removal.refused.is_empty(), "{removal}");
    stack::remove(&admin, &stack, &removal).await.expect("forced");
    assert!(admin.list_streams().await.expect("list").is_empty());
}

/// The line and key of a stack error, from the library and from the CLI.
async fn refused(addr: &str, dir: &Path, text: &str) -> (usize, String, String) {
    let file = write(dir, "bad.toml", text);
    let e = Stack::load(&file).expect_err("invalid");
    let Error::InvalidStack { line, key, message, .. } = &e else { panic!("not a stack error: {e}") };
    let r = streamctl(addr, &["stack", "deploy", file.to_str().expect("utf-8")]).await;
    assert_eq!(r.code, 2, "an invalid file is a usage error: {r:?}");
    assert_eq!(r.stderr, format!("streamctl: {e}\n"));
    assert!(r.stderr.starts_with(&format!("streamctl: {}:{line}: ", file.display())), "{}", r.stderr);
    (*line, key.clone(), message.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_files_name_the_file_line_and_key() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &str, usize, &str, &str)] = &[
        ("syntax", "retentionHours = 24", 5, "", "retentionHours = 24 \"unclosed"),
        ("unknown key", "retentionHours = 24", 5, "streams[0].retentionHour", "retentionHour = 24"),
        ("type", "shards = 2", 4, "streams[0].shards", "shards = \"two\""),
        ("range", "retentionHours = 168", 13, "streams[1].retentionHours", "retentionHours = 12"),
        ("zero quota", "writeRecordsPerSec = 500", 8, "streams[0].quotas.writeRecordsPerSec", "writeRecordsPerSec = 0"),
        ("undeclared stream", "stream = \"orders\"", 17, "groups[0].stream", "stream = \"ordres\""),
        ("undeclared dead letter", "deadLetter = \"orders-dlq\"", 20, "groups[0].deadLetter", "deadLetter = \"nope\""),
        ("start", "start = \"latest\"", 18, "groups[0].start", "start = \"earliest\""),
        ("name", "name = \"orders-dlq\"", 11, "streams[1].name", "name = \"orders dlq\""),
    ];
    for (what, from, line, key, to) in cases {
        assert!(TWO_STREAMS.contains(from), "{what}: {from}");
        let (l, k, m) = refused(&addr, dir.path(), &TWO_STREAMS.replacen(from, to, 1)).await;
        assert_eq!((l, k.as_str()), (*line, *key), "{what}: {m}");
    }
    let (l, k, m) = refused(&addr, dir.path(), &TWO_STREAMS.replace("shards = 1\n", "")).await;
    assert_eq!((l, k.as_str()), (10, "streams[1]"), "a missing key: {m}");
    assert!(m.contains("shards"), "{m}");
    let (l, k, m) =
        refused(&addr, dir.path(), &format!("{TWO_STREAMS}\n[[streams]]\nname = \"orders\"\nshards = 1\n")).await;
    assert_eq!((l, k.as_str()), (23, "streams[2].name"), "{m}");
    assert!(m.contains("declared twice"), "{m}");

    let missing = dir.path().join("missing.toml");
    let e = Stack::load(&missing).expect_err("no file");
    assert!(e.to_string().starts_with(&format!("{}: cannot read it", missing.display())), "{e}");
    let admin = Admin::connect(&addr).await.expect("admin");
    assert!(admin.list_streams().await.expect("list").is_empty(), "no invalid file changed anything");
}

const BILLING: &str = r#"
[[principals]]
name = "billing"
description = "reads orders"
allow = ["group:read group:orders/billing", "record:get stream:orders*"]
deny = ["record:get stream:orders-dlq"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn principals_and_grants_are_deployed_once_and_never_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = broker::auth::token::generate().expect("token").token;
    let token_file = write(dir.path(), "admin.token", &token);
    let mut c = broker::config::BrokerConfig { data_dir: dir.path().join("data"), ..Default::default() };
    c.auth.enabled = true;
    c.auth.bootstrap_token_file = Some(token_file);
    let b = TestBroker::start_with(c, std::sync::Arc::new(broker::clock::SystemClock)).await;
    let options = client::ConnectOptions { token: Some(client::Secret::new(token)), ..Default::default() };
    let admin = Admin::from_channel(client::Connection::open(&b.endpoint(), &options).await.expect("connect"));
    let file = write(dir.path(), "stack.toml", &format!("{TWO_STREAMS}{BILLING}"));
    let stack = Stack::load(&file).expect("load");

    let planned = stack::plan_all(&admin, &stack).await.expect("plan");
    let lines: Vec<String> = planned.changes.iter().map(ToString::to_string).skip(3).collect();
    assert_eq!(
        lines,
        [
            "+ principal billing",
            "+ grant billing allow group:read group:orders/billing",
            "+ grant billing allow record:get stream:orders*",
            "+ grant billing deny record:get stream:orders-dlq",
        ]
    );
    assert_eq!(stack::deploy(&admin, &stack).await.expect("deploy").changes.len(), 7);
    let grants = admin.access().list_grants(Some("billing")).await.expect("grants");
    assert_eq!(grants.len(), 3, "{grants:?}");
    assert!(stack::deploy(&admin, &stack).await.expect("again").is_empty(), "the second deploy changes nothing");

    // A grant left out of the file stays on the broker; one added is added.
    let fewer = write(
        dir.path(),
        "fewer.toml",
        &format!("{TWO_STREAMS}{}", BILLING.replace("deny = [\"record:get stream:orders-dlq\"]\n", "")),
    );
    assert!(stack::deploy(&admin, &Stack::load(&fewer).expect("load")).await.expect("deploy").is_empty());
    assert_eq!(admin.access().list_grants(Some("billing")).await.expect("grants").len(), 3);
    let more = write(
        dir.path(),
        "more.toml",
        &format!("{TWO_STREAMS}{}", BILLING.replace("deny = [", "deny = [\"group:commit group:orders/billing\", ")),
    );
    let added = stack::deploy(&admin, &Stack::load(&more).expect("load")).await.expect("deploy");
    assert_eq!(added.to_string(), "+ grant billing deny group:commit group:orders/billing\n");
    b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_principal_names_the_file_line_and_key() {
    let b = TestBroker::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("{TWO_STREAMS}{BILLING}");
    let (l, k, m) =
        refused(&b.endpoint(), dir.path(), &text.replace("\"record:get stream:orders*\"", "\"record:get\"")).await;
    assert_eq!((l, k.as_str()), (25, "principals[0].allow"), "{m}");
    assert!(m.contains("<action> <resource>"), "{m}");
    let (l, k, m) = refused(
        &b.endpoint(),
        dir.path(),
        &text.replace("name = \"billing\"\ndescription", "name = \"bill ing\"\ndescription"),
    )
    .await;
    assert_eq!((l, k.as_str()), (23, "principals[0].name"), "{m}");
    let (_, k, m) = refused(&b.endpoint(), dir.path(), &format!("{text}{BILLING}")).await;
    assert_eq!(k, "principals[1].name", "{m}");
    assert!(m.contains("declared twice"), "{m}");
}

#[test]
fn the_shipped_stack_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/stack.toml");
    let stack = Stack::load(&path).expect("deploy/stack.toml");
    assert_eq!(stack.streams.len(), 6);
    assert_eq!(stack.groups.len(), 3);
    let principals: Vec<&str> = stack.principals.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        principals,
        [
            "setup",
            "relay",
            "external-parties",
            "delivery-company",
            "customer-service",
            "storefront",
            "cake-producer",
            "courier",
            "prometheus"
        ]
    );
    assert!(stack.service("order-service").is_some_and(|t| t.contains_key("orderStreamName")));
}
