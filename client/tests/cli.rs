//! End-to-end tests of the `streamctl` binary against an in-process broker.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use broker::testing::TestBroker;
use md5::{Digest, Md5};
use serde_json::Value;

/// Longest any one streamctl run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// What one streamctl run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn out(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    fn lines(&self) -> Vec<String> {
        self.out().lines().map(str::to_string).collect()
    }

    fn json_lines(&self) -> Vec<Value> {
        self.lines().iter().map(|l| serde_json::from_str(l).expect("each stdout line is JSON")).collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).expect("stdout is one JSON document")
    }

    /// Asserts success and returns self.
    fn ok(self) -> Self {
        assert_eq!(
            self.code,
            0,
            "streamctl failed: {}\nstdout: {}",
            self.stderr,
            String::from_utf8_lossy(&self.stdout)
        );
        self
    }
}

/// Runs streamctl with `--broker <addr>`, `args` and `stdin`, bounded by [`RUN_TIMEOUT`].
async fn streamctl(addr: &str, args: &[&str], stdin: &[u8]) -> Run {
    let mut all = vec!["--broker".to_string(), addr.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_streamctl"))
            .env_remove("STREAMCTL_BROKER")
            .env_remove("STREAMCTL_PROFILE")
            .env_remove("STREAMCTL_TIMEOUT")
            .env("STREAMCTL_CONFIG", "/nonexistent/streamctl.toml")
            .args(&all)
            .write_stdin(stdin)
            .timeout(RUN_TIMEOUT)
            .output()
            .expect("run streamctl");
        let code = out.status.code().unwrap_or_else(|| panic!("streamctl {all:?} timed out or was killed"));
        Run { code, stdout: out.stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
    })
    .await
    .expect("streamctl runner thread")
}

fn as_u64(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a u64"))
}

fn as_str(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

/// The shard a key routes to, from `stream describe --json`'s hash ranges.
fn shard_of(describe: &Value, key: &str) -> String {
    let hash = u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
    let shards = describe["shards"].as_array().expect("shards");
    let s = shards
        .iter()
        .find(|s| {
            let lo: u128 = as_str(&s["starting_hash_key"]).parse().expect("hash key");
            let hi: u128 = as_str(&s["ending_hash_key"]).parse().expect("hash key");
            lo <= hash && hash <= hi
        })
        .expect("some shard holds every hash");
    as_str(&s["shard_id"]).to_string()
}

/// Tail JSON records grouped by shard, each shard's (seq, key, value) in output order.
fn by_shard(records: &[Value]) -> BTreeMap<String, Vec<(u64, String, String)>> {
    let mut m: BTreeMap<String, Vec<(u64, String, String)>> = BTreeMap::new();
    for r in records {
        m.entry(as_str(&r["shard"]).to_string()).or_default().push((
            as_u64(&r["sequence_number"]),
            as_str(&r["key"]).to_string(),
            as_str(&r["value"]).to_string(),
        ));
    }
    m
}

/// Creates `name` with `shards` shards and puts `key:value` lines; returns the put acknowledgements.
async fn create_and_put(addr: &str, name: &str, shards: u32, lines: &[String]) -> Vec<Value> {
    streamctl(addr, &["stream", "create", name, "--shards", &shards.to_string()], b"").await.ok();
    let input = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let acks = streamctl(addr, &["--json", "put", name, "-K", ":"], input.as_bytes()).await.ok().json_lines();
    assert_eq!(acks.len(), lines.len(), "one acknowledgement per line");
    acks
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_create_list_describe_retention_delete() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let r =
        streamctl(&addr, &["stream", "create", "orders", "--shards", "3", "--retention-hours", "48"], b"").await.ok();
    assert!(r.out().contains("orders"), "create says what it made: {}", r.out());
    streamctl(&addr, &["stream", "create", "audit", "--shards", "1"], b"").await.ok();

    let list = streamctl(&addr, &["stream", "list", "--json"], b"").await.ok().json();
    let mut names: Vec<&str> =
        list["streams"].as_array().expect("streams").iter().map(|s| as_str(&s["name"])).collect();
    names.sort();
    assert_eq!(names, ["audit", "orders"]);
    let orders = list["streams"].as_array().expect("streams").iter().find(|s| s["name"] == "orders").expect("orders");
    assert_eq!(orders["shards"], 3, "the JSON carries what the table shows: {orders}");
    assert_eq!(orders["status"], "ACTIVE");
    assert_eq!(orders["records"], 0);
    assert!(orders["bytes"].is_u64(), "{orders}");
    assert_eq!(orders["retention_hours"], 48);
    let table = streamctl(&addr, &["stream", "list"], b"").await.ok().lines();
    assert!(table[0].starts_with("NAME"), "a header line: {table:?}");
    assert!(table.iter().any(|l| l.starts_with("orders ") && l.contains(" 3 ")), "orders with 3 shards: {table:?}");

    let d = streamctl(&addr, &["stream", "describe", "orders", "--json"], b"").await.ok().json();
    assert_eq!(d["stream_name"], "orders");
    assert_eq!(d["retention_hours"], 48);
    assert_eq!(d["status"], "ACTIVE");
    assert!(as_u64(&d["quotas"]["read_calls_per_sec"]) > 0);
    let shards = d["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3);
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(as_str(&s["shard_id"]), format!("shardId-{i:012}"));
        assert_eq!(s["next_sequence_number"], 0);
        assert_eq!(s["writable"], true);
    }
    assert_eq!(shards[0]["starting_hash_key"], "0");
    assert_eq!(as_str(&shards[2]["ending_hash_key"]), u128::MAX.to_string());

    let text = streamctl(&addr, &["stream", "describe", "orders"], b"").await.ok().out();
    assert!(text.contains("retention    48 h"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("shardId-")).count(), 3, "{text}");

    let r = streamctl(&addr, &["stream", "retention", "orders", "72", "--json"], b"").await.ok().json();
    assert_eq!(r["retention_hours"], 72);
    let d = streamctl(&addr, &["stream", "describe", "orders", "--json"], b"").await.ok().json();
    assert_eq!(d["retention_hours"], 72);

    streamctl(&addr, &["stream", "delete", "audit"], b"").await.ok();
    let list = streamctl(&addr, &["stream", "list", "--json"], b"").await.ok().json();
    let names: Vec<&str> = list["streams"].as_array().expect("streams").iter().map(|s| as_str(&s["name"])).collect();
    assert_eq!(names, ["orders"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn put_splits_keys_and_reports_each_record_in_order() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let lines: Vec<String> = (0..40).map(|i| format!("key-{i}:value {i}:with colon")).collect();
    let acks = create_and_put(&addr, "events", 3, &lines).await;
    let d = streamctl(&addr, &["stream", "describe", "events", "--json"], b"").await.ok().json();

    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    for (i, ack) in acks.iter().enumerate() {
        let key = format!("key-{i}");
        assert_eq!(ack["key"], key.as_str(), "acknowledgements come in input order");
        assert_eq!(ack["value"], format!("value {i}:with colon").as_str(), "split at the first separator only");
        let shard = as_str(&ack["shard"]);
        assert_eq!(shard, shard_of(&d, &key), "routed by MD5 of the key");
        let expected = next.entry(shard.to_string()).or_insert(0);
        assert_eq!(as_u64(&ack["sequence_number"]), *expected, "dense sequence numbers per shard");
        *expected += 1;
    }
    assert!(next.len() > 1, "40 keys spread over several shards: {next:?}");
    for s in d["shards"].as_array().expect("shards") {
        let id = as_str(&s["shard_id"]);
        assert_eq!(as_u64(&s["next_sequence_number"]), next.get(id).copied().unwrap_or(0), "{id}");
    }

    // One key for every line: a single shard; the summary goes to stderr.
    let r = streamctl(&addr, &["put", "events", "--partition-key", "same"], b"a\nb\nc\n").await.ok();
    assert_eq!(r.stdout, b"", "nothing on stdout without --json");
    assert!(r.stderr.contains("3 records acknowledged"), "{}", r.stderr);
    let same = shard_of(&d, "same");
    let tail = streamctl(&addr, &["tail", "events", "--shard", &same, "--format", "{key}={value}"], b"").await.ok();
    assert!(tail.out().ends_with("same=a\nsame=b\nsame=c\n"), "{}", tail.out());

    // Neither -K nor --partition-key: the key is the line number; --rate paces.
    let acks =
        streamctl(&addr, &["--json", "put", "events", "--rate", "50"], b"one\ntwo\nthree\n").await.ok().json_lines();
    let keys: Vec<&str> = acks.iter().map(|a| as_str(&a["key"])).collect();
    assert_eq!(keys, ["1", "2", "3"]);
    for a in &acks {
        assert_eq!(as_str(&a["shard"]), shard_of(&d, as_str(&a["key"])));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_json_raw_and_templates() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let lines: Vec<String> = (0..12).map(|i| format!("k{i}:v{i}")).collect();
    create_and_put(&addr, "t", 2, &lines).await;
    // A value that is not UTF-8.
    let binary: &[u8] = &[0xff, 0xfe, 0x00, 0x41];
    let mut input = b"bin:".to_vec();
    input.extend_from_slice(binary);
    input.push(b'\n');
    let bin_ack = streamctl(&addr, &["--json", "put", "t", "-K", ":"], &input).await.ok().json_lines();
    assert_eq!(bin_ack[0]["value_encoding"], "base64");
    assert_eq!(as_str(&bin_ack[0]["value"]), BASE64.encode(binary));

    let records = streamctl(&addr, &["tail", "t", "--format", "json"], b"").await.ok().json_lines();
    assert_eq!(records.len(), 13, "every record, then stop at the end");
    let shards = by_shard(&records);
    assert_eq!(shards.len(), 2);
    for (shard, recs) in &shards {
        let seqs: Vec<u64> = recs.iter().map(|r| r.0).collect();
        assert_eq!(seqs, (0..recs.len() as u64).collect::<Vec<_>>(), "{shard} in sequence order");
    }
    for r in &records {
        assert!(as_u64(&r["timestamp_ms"]) > 1_600_000_000_000, "arrival time in ms: {r}");
        if r["key"] == "bin" {
            assert_eq!(r["value_encoding"], "base64");
            assert_eq!(as_str(&r["value"]), BASE64.encode(binary));
        } else {
            assert!(r.get("value_encoding").is_none(), "UTF-8 values are plain: {r}");
            assert_eq!(as_str(&r["value"]), as_str(&r["key"]).replacen('k', "v", 1));
        }
    }

    // Template: key, value and sequence number, one line per record.
    let seq_of: BTreeMap<String, u64> =
        records.iter().map(|r| (as_str(&r["key"]).to_string(), as_u64(&r["sequence_number"]))).collect();
    let out = streamctl(&addr, &["tail", "t", "--format", "{key}={value}@{seq}"], b"").await.ok();
    let mut got: Vec<Vec<u8>> = out.stdout.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
    assert_eq!(got.pop(), Some(Vec::new()), "ends with a newline");
    let mut expected: Vec<Vec<u8>> =
        (0..12).map(|i| format!("k{i}=v{i}@{}", seq_of[&format!("k{i}")]).into_bytes()).collect();
    let mut bin_line = b"bin=".to_vec();
    bin_line.extend_from_slice(binary);
    bin_line.extend_from_slice(format!("@{}", seq_of["bin"]).as_bytes());
    expected.push(bin_line);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);

    // Hex and base64 tokens, with a tab escape.
    let out = streamctl(&addr, &["tail", "t", "--format", r"{key}\t{value:hex}\t{value:base64}"], b"").await.ok();
    let lines = out.lines();
    assert_eq!(lines.len(), 13);
    assert!(lines.contains(&format!("bin\tfffe0041\t{}", BASE64.encode(binary))), "{lines:?}");
    assert!(lines.contains(&"k3\t7633\tdjM=".to_string()), "{lines:?}");

    // Raw: the data bytes and a newline.
    let out = streamctl(&addr, &["tail", "t", "--format", "raw"], b"").await.ok();
    let mut raw: Vec<&[u8]> = out.stdout.split(|&c| c == b'\n').collect();
    assert_eq!(raw.pop(), Some(&b""[..]));
    assert_eq!(raw.len(), 13);
    assert!(raw.contains(&binary));
    assert!(raw.contains(&&b"v11"[..]));

    // An unknown template token is a usage error.
    let bad = streamctl(&addr, &["tail", "t", "--format", "{nope}"], b"").await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.starts_with("streamctl: ") && bad.stderr.contains("{nope}"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_count_shard_and_from_sequence() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let lines: Vec<String> = (0..30).map(|i| format!("k{i}:v{i}")).collect();
    let acks = create_and_put(&addr, "c", 2, &lines).await;
    let mut per_shard: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for a in &acks {
        per_shard
            .entry(as_str(&a["shard"]).to_string())
            .or_default()
            .push((as_u64(&a["sequence_number"]), as_str(&a["value"]).to_string()));
    }
    assert_eq!(per_shard.len(), 2, "30 keys land on both shards");

    // -n: exactly COUNT records in total.
    let some = streamctl(&addr, &["tail", "c", "-n", "5"], b"").await.ok().json_lines();
    assert_eq!(some.len(), 5);

    for (shard, stored) in &per_shard {
        // --shard: that shard only, all of it, in order.
        let recs = streamctl(&addr, &["tail", "c", "--shard", shard], b"").await.ok().json_lines();
        let got: Vec<(u64, String)> =
            recs.iter().map(|r| (as_u64(&r["sequence_number"]), as_str(&r["value"]).to_string())).collect();
        assert_eq!(&got, stored, "{shard}");
        assert!(recs.iter().all(|r| r["shard"] == shard.as_str()));

        // --from seq:N on one shard.
        let recs = streamctl(&addr, &["tail", "c", "--shard", shard, "--from", "seq:3"], b"").await.ok().json_lines();
        let seqs: Vec<u64> = recs.iter().map(|r| as_u64(&r["sequence_number"])).collect();
        assert_eq!(seqs, (3..stored.len() as u64).collect::<Vec<_>>(), "{shard}");
    }

    // --from seq:N on every shard.
    let recs = streamctl(&addr, &["tail", "c", "--from", "seq:4"], b"").await.ok().json_lines();
    let expected: usize = per_shard.values().map(|v| v.len().saturating_sub(4)).sum();
    assert_eq!(recs.len(), expected);
    assert!(recs.iter().all(|r| as_u64(&r["sequence_number"]) >= 4));

    // --from latest stops at once with nothing; ts: in the past reads everything.
    let none = streamctl(&addr, &["tail", "c", "--from", "latest"], b"").await.ok();
    assert_eq!(none.stdout, b"");
    let all = streamctl(&addr, &["tail", "c", "--from", "@2000-01-01T00:00:00Z"], b"").await.ok().json_lines();
    assert_eq!(all.len(), 30);
    let bad = streamctl(&addr, &["tail", "c", "--from", "@2000-13-01T00:00:00Z"], b"").await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_group_commits_and_reset_restores_lag() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let lines: Vec<String> = (0..25).map(|i| format!("k{i}:v{i}")).collect();
    create_and_put(&addr, "g", 3, &lines).await;
    let d = streamctl(&addr, &["stream", "describe", "g", "--json"], b"").await.ok().json();
    let next: BTreeMap<String, u64> = d["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| (as_str(&s["shard_id"]).to_string(), as_u64(&s["next_sequence_number"])))
        .collect();

    let consumed = streamctl(&addr, &["tail", "g", "--group", "billing"], b"").await.ok().json_lines();
    assert_eq!(consumed.len(), 25, "the group reads every record once");
    for (shard, recs) in by_shard(&consumed) {
        let seqs: Vec<u64> = recs.iter().map(|r| r.0).collect();
        assert_eq!(seqs, (0..next[&shard]).collect::<Vec<_>>(), "{shard} in order");
    }

    let groups = streamctl(&addr, &["group", "list", "--stream", "g", "--json"], b"").await.ok().json();
    assert_eq!(
        groups["groups"],
        serde_json::json!([{"stream_name": "g", "group_name": "billing", "members": 0, "lag_records": 0, "lag_ms": 0}])
    );

    let gd = streamctl(&addr, &["group", "describe", "g", "billing", "--json"], b"").await.ok().json();
    assert_eq!(gd["members"], serde_json::json!([]), "tail left the group");
    let shards = gd["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3);
    for s in shards {
        let id = as_str(&s["shard_id"]);
        assert_eq!(s["lag_records"], 0, "{id} consumed");
        assert_eq!(as_u64(&s["checkpoint"]), next[id], "{id} committed up to its end");
    }
    let text = streamctl(&addr, &["group", "describe", "g", "billing"], b"").await.ok().out();
    assert!(text.contains("lag              0 records"), "{text}");

    // Nothing new: the group prints nothing.
    let again = streamctl(&addr, &["tail", "g", "--group", "billing"], b"").await.ok();
    assert_eq!(again.stdout, b"");

    let reset =
        streamctl(&addr, &["group", "reset", "g", "billing", "--to", "trim-horizon", "--json"], b"").await.ok().json();
    assert_eq!(reset["group_name"], "billing");
    let gd = streamctl(&addr, &["group", "describe", "g", "billing", "--json"], b"").await.ok().json();
    let lag: u64 = gd["shards"].as_array().expect("shards").iter().map(|s| as_u64(&s["lag_records"])).sum();
    assert_eq!(lag, 25, "lag back to the total after the reset");
    for s in gd["shards"].as_array().expect("shards") {
        assert_eq!(as_u64(&s["lag_records"]), next[as_str(&s["shard_id"])]);
    }

    // Consuming 10 after the reset leaves 15 behind.
    let ten = streamctl(&addr, &["tail", "g", "--group", "billing", "-n", "10"], b"").await.ok().json_lines();
    assert_eq!(ten.len(), 10);
    let gd = streamctl(&addr, &["group", "describe", "g", "billing", "--json"], b"").await.ok().json();
    let lag: u64 = gd["shards"].as_array().expect("shards").iter().map(|s| as_u64(&s["lag_records"])).sum();
    assert_eq!(lag, 15);

    // seq:SHARD:N moves one shard.
    let shard0 = "shardId-000000000000";
    let to = format!("seq:{shard0}:0");
    streamctl(&addr, &["group", "reset", "g", "billing", "--to", &to], b"").await.ok();
    let gd = streamctl(&addr, &["group", "describe", "g", "billing", "--json"], b"").await.ok().json();
    let s0 =
        gd["shards"].as_array().expect("shards").iter().find(|s| s["shard_id"] == shard0).expect("shard 0").clone();
    assert_eq!(s0["checkpoint"], 0);
    assert_eq!(as_u64(&s0["lag_records"]), next[shard0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_exit_non_zero_with_the_reason() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();

    for args in [
        &["stream", "describe", "missing"][..],
        &["tail", "missing"],
        &["put", "missing"],
        &["group", "describe", "missing", "g"],
    ] {
        let r = streamctl(&addr, args, b"x\n").await;
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("streamctl: "), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("missing"), "{args:?} names the stream: {}", r.stderr);
        assert!(!r.stderr.contains("not found: "), "{args:?}: the message does not repeat itself: {}", r.stderr);
    }

    let r = streamctl(&addr, &["stream", "create", "bad/name", "--shards", "1"], b"").await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.starts_with("streamctl: ") && r.stderr.contains("stream name"), "{}", r.stderr);

    let r = streamctl(&addr, &["stream", "create", "x", "--shards", "0"], b"").await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--shards") && !r.stderr.contains("shard_count"), "flag names: {}", r.stderr);

    // Usage errors.
    let r = streamctl(&addr, &["stream", "create", "x"], b"").await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.starts_with("streamctl: ") && r.stderr.contains("--shards"), "{}", r.stderr);
    let r = streamctl(&addr, &["group", "reset", "s", "g", "--to", "sideways"], b"").await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("trim-horizon"), "{}", r.stderr);

    // A record the broker would reject (empty key) fails the put; records before it are acknowledged.
    streamctl(&addr, &["stream", "create", "p", "--shards", "1"], b"").await.ok();
    let r = streamctl(&addr, &["--json", "put", "p", "-K", ":"], b"a:1\n:2\nc:3\n").await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("line 2") && r.stderr.contains("partition key"), "{}", r.stderr);
    let acks = r.json_lines();
    assert_eq!(acks.len(), 1, "the first record was acknowledged");
    assert_eq!(acks[0]["key"], "a");
    let r = streamctl(&addr, &["put", "p", "-K", ":"], b"no separator\n").await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("line 1") && r.stderr.contains("separator"), "{}", r.stderr);

    // No broker there.
    let r = streamctl("127.0.0.1:1", &["stream", "list"], b"").await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("streamctl: ") && r.stderr.contains("127.0.0.1:1"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_print_a_script() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let r = streamctl("127.0.0.1:1", &["completions", shell], b"").await.ok();
        assert!(r.out().contains("streamctl"), "{shell}: {}", r.out());
        assert!(r.out().contains("retention"), "{shell} completes subcommands");
    }
    let r = streamctl("127.0.0.1:1", &["completions", "tcsh"], b"").await;
    assert_eq!(r.code, 2);
}

/// Runs streamctl with `env` set and without `--broker`, bounded by [`RUN_TIMEOUT`].
async fn streamctl_env(env: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> Run {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_streamctl"));
        cmd.env_remove("STREAMCTL_BROKER")
            .env_remove("STREAMCTL_PROFILE")
            .env_remove("STREAMCTL_TIMEOUT")
            .env("STREAMCTL_CONFIG", "/nonexistent/streamctl.toml");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.args(&args).write_stdin(stdin).timeout(RUN_TIMEOUT).output().expect("run streamctl");
        let code = out.status.code().unwrap_or_else(|| panic!("streamctl {args:?} timed out or was killed"));
        Run { code, stdout: out.stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
    })
    .await
    .expect("streamctl runner thread")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_comes_from_the_environment_or_a_profile() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    streamctl(&addr, &["stream", "create", "e", "--shards", "1"], b"").await.ok();

    // STREAMCTL_BROKER; the broker's own STREAM_BROKER_ prefix means nothing to the CLI.
    let r = streamctl_env(
        &[("STREAMCTL_BROKER", &addr), ("STREAM_BROKER_ADDR", "127.0.0.1:1")],
        &["stream", "list", "--json"],
        b"",
    )
    .await
    .ok();
    assert_eq!(r.json()["streams"][0]["name"], "e");

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("profile = \"dead\"\n[profiles.dead]\nbroker = \"127.0.0.1:1\"\n[profiles.test]\nbroker = \"{addr}\"\ntimeout = \"20s\"\n"),
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path");
    // --profile picks the profile; without it the file's default is used.
    let r = streamctl_env(&[("STREAMCTL_CONFIG", config)], &["--profile", "test", "stream", "list", "--json"], b"")
        .await
        .ok();
    assert_eq!(r.json()["streams"][0]["name"], "e");
    let r = streamctl_env(&[("STREAMCTL_CONFIG", config)], &["stream", "list"], b"").await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("connection refused by 127.0.0.1:1"), "{}", r.stderr);
    // A flag or its variable wins over the profile.
    streamctl_env(&[("STREAMCTL_CONFIG", config), ("STREAMCTL_BROKER", &addr)], &["stream", "list"], b"").await.ok();
    let r =
        streamctl_env(&[("STREAMCTL_CONFIG", config), ("STREAMCTL_PROFILE", "nope")], &["stream", "list"], b"").await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains(config) && r.stderr.contains("nope") && r.stderr.contains("dead, test"), "{}", r.stderr);
    // A broken file is named with its line.
    std::fs::write(dir.path().join("config.toml"), "[profiles.x]\nbroker = \n").expect("write");
    let r = streamctl_env(&[("STREAMCTL_CONFIG", config)], &["stream", "list"], b"").await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains(config) && r.stderr.contains("line 2"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_port_fails_within_the_timeout_with_the_address() {
    // Accepts TCP (the kernel's backlog does) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let r = streamctl(&addr, &["--timeout", "1s", "stream", "list"], b"").await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("streamctl: ") && r.stderr.contains(&addr), "{}", r.stderr);
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "one line: {}", r.stderr);
    let r = streamctl(&addr, &["--timeout", "soon", "stream", "list"], b"").await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--timeout"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn positions_like_kcat_shard_numbers_last_n_times_and_seq() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let lines: Vec<String> = (0..30).map(|i| format!("k{i}:v{i}")).collect();
    let acks = create_and_put(&addr, "p", 2, &lines).await;
    let count = |shard: &str| acks.iter().filter(|a| a["shard"] == shard).count() as u64;
    let (s0, s1) = ("shardId-000000000000", "shardId-000000000001");

    // --shard 1 is shardId-000000000001.
    let recs = streamctl(&addr, &["tail", "p", "--shard", "1"], b"").await.ok().json_lines();
    assert_eq!(recs.len() as u64, count(s1));
    assert!(recs.iter().all(|r| r["shard"] == s1));
    let r = streamctl(&addr, &["tail", "p", "--shard", "7"], b"").await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("shardId-000000000007"), "{}", r.stderr);

    // -3: the last three of each shard.
    let recs = streamctl(&addr, &["tail", "p", "--from", "-3"], b"").await.ok().json_lines();
    let shards = by_shard(&recs);
    for (shard, got) in &shards {
        let seqs: Vec<u64> = got.iter().map(|r| r.0).collect();
        let n = count(shard);
        assert_eq!(seqs, (n - 3..n).collect::<Vec<_>>(), "{shard}");
    }
    assert_eq!(shards.len(), 2);

    // @TIME: now-ish and the future read nothing old; a minute ago reads all.
    let all = streamctl(&addr, &["tail", "p", "--from", "@-1m"], b"").await.ok().json_lines();
    assert_eq!(all.len(), 30);

    // seq:SHARD:N reads that shard from N.
    let recs = streamctl(&addr, &["tail", "p", "--from", "seq:0:2"], b"").await.ok().json_lines();
    let seqs: Vec<u64> = recs.iter().map(|r| as_u64(&r["sequence_number"])).collect();
    assert_eq!(seqs, (2..count(s0)).collect::<Vec<_>>());
    assert!(recs.iter().all(|r| r["shard"] == s0));

    // A start past the end says so.
    let r = streamctl(&addr, &["tail", "p", "--shard", "0", "--from", "seq:1000"], b"").await.ok();
    assert_eq!(r.stdout, b"");
    assert!(r.stderr.contains("seq:1000 is past the end of shardId-000000000000"), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("next sequence number is {}", count(s0))), "{}", r.stderr);

    // The same syntax moves a group: -N on every shard, seq:SHARD:N on one.
    streamctl(&addr, &["tail", "p", "--group", "g"], b"").await.ok();
    let d = streamctl(&addr, &["group", "reset", "p", "g", "--to", "-4", "--json"], b"").await.ok().json();
    assert_eq!(d["lag_records"], 8, "four behind on each of two shards: {d}");
    let d = streamctl(&addr, &["group", "reset", "p", "g", "--to", "seq:1:0", "--json"], b"").await.ok().json();
    assert_eq!(as_u64(&d["lag_records"]), 4 + count(s1));
    let d = streamctl(&addr, &["group", "reset", "p", "g", "--to", "latest", "--shard", "1", "--json"], b"")
        .await
        .ok()
        .json();
    assert_eq!(d["lag_records"], 4);
    let r = streamctl(&addr, &["group", "reset", "p", "g", "--to", "seq:5"], b"").await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--shard"), "{}", r.stderr);

    // --json and --format together is a usage error, not a silent choice.
    let r = streamctl(&addr, &["--json", "tail", "p", "--format", "{key}"], b"").await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--json") && r.stderr.contains("--format"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn put_files_hash_keys_shards_encodings_delimiters_and_blank_lines() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    streamctl(&addr, &["stream", "create", "w", "--shards", "3"], b"").await.ok();

    // Blank lines are skipped and counted; the summary says so.
    let r = streamctl(&addr, &["put", "w", "-K", ":"], b"a:1\n\nb:2\n\n\nc:3\n").await.ok();
    assert!(r.stderr.contains("3 records acknowledged, 3 empty records skipped"), "{}", r.stderr);

    // --shard 2 and --explicit-hash-key route every record there.
    let acks = streamctl(&addr, &["--json", "put", "w", "--shard", "2"], b"x\ny\nz\n").await.ok().json_lines();
    assert!(acks.iter().all(|a| a["shard"] == "shardId-000000000002"), "{acks:?}");
    let acks = streamctl(&addr, &["--json", "put", "w", "--explicit-hash-key", "0"], b"x\ny\n").await.ok().json_lines();
    assert!(acks.iter().all(|a| a["shard"] == "shardId-000000000000"), "{acks:?}");

    // --input hex and base64; --delimiter.
    let acks = streamctl(&addr, &["--json", "put", "w", "--partition-key", "h", "--input", "hex"], b"ff00\n6869\n")
        .await
        .ok()
        .json_lines();
    assert_eq!(acks[0]["value_encoding"], "base64");
    assert_eq!(acks[0]["value"], BASE64.encode([0xff, 0x00]));
    assert_eq!(acks[1]["value"], "hi");
    let r = streamctl(&addr, &["put", "w", "--input", "hex"], b"zz\n").await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--input hex"), "{}", r.stderr);
    let acks = streamctl(
        &addr,
        &["--json", "put", "w", "--partition-key", "d", "--input", "base64", "--delimiter", ";"],
        b"aGk=;Ynll;",
    )
    .await
    .ok()
    .json_lines();
    let values: Vec<&str> = acks.iter().map(|a| as_str(&a["value"])).collect();
    assert_eq!(values, ["hi", "bye"]);

    // --file: the whole file, newlines and all, as one record keyed by its name.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cake.json");
    std::fs::write(&file, b"{\n  \"cake\": true\n}\n").expect("write");
    let acks =
        streamctl(&addr, &["--json", "put", "w", "--file", file.to_str().expect("utf-8")], b"").await.ok().json_lines();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["key"], "cake.json");
    let shard = as_str(&acks[0]["shard"]).to_string();
    let seq = as_u64(&acks[0]["sequence_number"]).to_string();
    let out =
        streamctl(&addr, &["tail", "w", "--from", &format!("seq:{shard}:{seq}"), "--format", "raw"], b"").await.ok();
    assert_eq!(out.stdout, b"{\n  \"cake\": true\n}\n\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_group_delete_and_copy_a_range() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let lines: Vec<String> = (0..20).map(|i| format!("k{i}:v{i}")).collect();
    create_and_put(&addr, "src", 2, &lines).await;
    streamctl(&addr, &["tail", "src", "--group", "g", "-n", "5"], b"").await.ok();

    let s = streamctl(&addr, &["status", "--json"], b"").await.ok().json();
    assert_eq!(s["ready"], true, "{s}");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["durability"], "ALWAYS");
    assert_eq!(s["streams"][0]["name"], "src");
    assert_eq!(s["streams"][0]["records"], 20);
    assert_eq!(s["groups"][0]["group_name"], "g");
    assert_eq!(s["groups"][0]["lag_records"], 15);
    assert_eq!(s["failed_shards"], serde_json::json!([]));
    let text = streamctl(&addr, &["status"], b"").await.ok().out();
    assert!(text.contains("health      ready") && text.contains("15 records behind"), "{text}");

    // Copy seq 2..5 of shard 0, keys kept.
    streamctl(&addr, &["stream", "create", "dst", "--shards", "1"], b"").await.ok();
    let c = streamctl(&addr, &["stream", "copy", "src", "dst", "--from", "seq:0:2", "--to", "seq:5", "--json"], b"")
        .await
        .ok()
        .json();
    assert_eq!(c["records"], 3, "{c}");
    let src = streamctl(&addr, &["tail", "src", "--shard", "0"], b"").await.ok().json_lines();
    let dst = streamctl(&addr, &["tail", "dst"], b"").await.ok().json_lines();
    let pairs = |v: &[Value]| v.iter().map(|r| (r["key"].clone(), r["value"].clone())).collect::<Vec<_>>();
    assert_eq!(pairs(&dst), pairs(&src[2..5]));

    // replay with a time range: everything before now is all of it.
    streamctl(&addr, &["stream", "create", "all", "--shards", "1"], b"").await.ok();
    let until = format!("@{}", jiff_now());
    let r = streamctl(&addr, &["stream", "replay", "src", "all", "--to", &until], b"").await.ok();
    assert!(r.out().contains("copied 20 records from src to all"), "{}", r.out());

    // Dead letters: the envelope's record goes back with its key.
    streamctl(&addr, &["stream", "create", "dlq", "--shards", "1"], b"").await.ok();
    let envelope =
        r#"{"record":"{\"orderId\":\"o-1\"}","encoding":"utf8","partitionKey":"o-1","error":"smtp down","attempts":3}"#;
    streamctl(&addr, &["put", "dlq", "--partition-key", "o-1"], format!("{envelope}\n").as_bytes()).await.ok();
    streamctl(&addr, &["stream", "create", "orders", "--shards", "1"], b"").await.ok();
    streamctl(&addr, &["stream", "copy", "dlq", "orders", "--unwrap-dead-letters"], b"").await.ok();
    let back = streamctl(&addr, &["tail", "orders"], b"").await.ok().json_lines();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0]["key"], "o-1");
    assert_eq!(back[0]["value"], r#"{"orderId":"o-1"}"#);
    let r = streamctl(&addr, &["stream", "copy", "src", "orders", "--unwrap-dead-letters"], b"").await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a dead letter"), "{}", r.stderr);

    // group delete: gone from the list; a missing one says so once.
    streamctl(&addr, &["group", "delete", "src", "g"], b"").await.ok();
    let groups = streamctl(&addr, &["group", "list", "--json"], b"").await.ok().json();
    assert_eq!(groups["groups"], serde_json::json!([]));
    let r = streamctl(&addr, &["group", "delete", "src", "g"], b"").await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("\"g\"") && !r.stderr.contains("not found: "), "{}", r.stderr);
}

/// Now as RFC 3339, a second ahead so every record already stored is before it.
fn jiff_now() -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    t.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_follow_prints_new_records_until_interrupted() {
    use std::io::BufRead;
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    streamctl(&addr, &["stream", "create", "f", "--shards", "2"], b"").await.ok();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_streamctl"))
        .env("STREAMCTL_BROKER", &addr)
        .env("STREAMCTL_CONFIG", "/nonexistent/streamctl.toml")
        .args(["tail", "f", "-f", "--format", "{key}={value}"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn streamctl tail -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.expect("line")).is_err() {
                return;
            }
        }
    });
    // Records written after tail started show up, in two rounds.
    let mut seen = Vec::new();
    for round in 0..2 {
        let input: String = (0..5).map(|i| format!("k{round}{i}:v{round}{i}\n")).collect();
        streamctl(&addr, &["put", "f", "-K", ":"], input.as_bytes()).await.ok();
        while seen.len() < 5 * (round + 1) {
            let line = rx.recv_timeout(RUN_TIMEOUT).expect("tail -f prints the new records");
            seen.push(line);
        }
    }
    seen.sort();
    let mut expected: Vec<String> = (0..2).flat_map(|r| (0..5).map(move |i| format!("k{r}{i}=v{r}{i}"))).collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert!(child.try_wait().expect("wait").is_none(), "tail -f keeps running");
    let killed = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "tail -f did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "an interrupt is a normal end");
}

#[tokio::test(flavor = "multi_thread")]
async fn split_merge_and_scale_show_in_the_shard_tree_and_tail_follows_the_children() {
    let b = TestBroker::start().await;
    let addr = b.endpoint();
    let round = |r: u32| (0..12).map(|i| format!("k{i}:r{r}-{i}")).collect::<Vec<_>>();
    create_and_put(&addr, "s", 1, &round(1)).await;
    let split = streamctl(&addr, &["stream", "split", "s", "shardId-000000000000"], b"").await.ok().out();
    assert!(split.contains(&format!("at hash key {}", 1u128 << 127)), "the middle by default: {split}");
    assert!(split.contains("open shards: shardId-000000000001, shardId-000000000002"), "{split}");
    let input: String = round(2).iter().map(|l| format!("{l}\n")).collect();
    streamctl(&addr, &["put", "s", "-K", ":"], input.as_bytes()).await.ok();

    let d = streamctl(&addr, &["stream", "describe", "s", "--json"], b"").await.ok().json();
    let shards = d["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3);
    assert_eq!((shards[0]["closed"].as_bool(), as_u64(&shards[0]["ending_sequence_number"])), (Some(true), 12));
    assert_eq!(shards[1]["parent_shard_id"], "shardId-000000000000");
    assert_eq!(shards[1]["adjacent_parent_shard_id"], Value::Null);
    assert_eq!(as_u64(&d["open_shard_count"]), 2);
    let text = streamctl(&addr, &["stream", "describe", "s"], b"").await.ok().out();
    assert!(text.contains("2 open, 1 closed"), "{text}");
    let parent = text.lines().find(|l| l.starts_with("shardId-000000000000")).expect("parent row");
    assert!(parent.contains("CLOSED"), "{parent}");
    let child = text.lines().find(|l| l.contains("└ shardId-000000000001")).expect("an indented child row");
    assert!(child.contains("OPEN") && child.contains("shardId-000000000000"), "{child}");

    // Without --follow, tail reads the parent to its end before its children:
    // each key's first-round value comes out before its second.
    let records = streamctl(&addr, &["tail", "s", "--format", "json"], b"").await.ok().json_lines();
    assert_eq!(records.len(), 24);
    for i in 0..12 {
        let at = |v: &str| records.iter().position(|r| as_str(&r["value"]) == v).expect("printed");
        assert!(at(&format!("r1-{i}")) < at(&format!("r2-{i}")), "k{i} out of order");
    }

    let merged = streamctl(&addr, &["stream", "merge", "s", "shardId-000000000001", "shardId-000000000002"], b"")
        .await
        .ok()
        .out();
    assert!(merged.contains("open shards: shardId-000000000003"), "{merged}");
    let text = streamctl(&addr, &["stream", "describe", "s"], b"").await.ok().out();
    assert!(text.contains("shardId-000000000001 + shardId-000000000002"), "the merge child names both: {text}");
    let scaled = streamctl(&addr, &["stream", "scale", "s", "2"], b"").await.ok().out();
    assert!(scaled.contains("rescaled from 1 to 2 shards"), "{scaled}");

    let refused = streamctl(&addr, &["stream", "split", "s", "shardId-000000000000", "--at", "5"], b"").await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("closed"), "{}", refused.stderr);
}
