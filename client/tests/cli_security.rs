//! `streamctl` over TLS and with credentials, against an in-process broker:
//! `--ca-file` and `https://` addresses, client certificates, tokens from
//! `--token-file` and `STREAMCTL_TOKEN`, and the `auth` commands.

#[path = "../../broker/tests/common/certs.rs"]
mod certs;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use certs::Ca;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// One streamctl run: exit code, stdout, stderr.
async fn streamctl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_streamctl"))
            .env_remove("STREAMCTL_BROKER")
            .env_remove("STREAMCTL_PROFILE")
            .env("STREAMCTL_CONFIG", "/nonexistent/streamctl.toml")
            .env_remove("STREAMCTL_TOKEN")
            .env_remove("STREAMCTL_TOKEN_FILE")
            .env_remove("STREAMCTL_CA_FILE")
            .envs(env)
            .args(&args)
            .timeout(RUN_TIMEOUT)
            .output()
            .expect("run streamctl");
        let code = out.status.code().unwrap_or_else(|| panic!("streamctl {args:?} timed out or was killed"));
        (code, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .expect("runner")
}

fn tls_config(dir: &Path, ca: &Ca) -> BrokerConfig {
    let files = ca.server().write(dir, "server", ca);
    let mut c = BrokerConfig { data_dir: dir.join("data"), ..BrokerConfig::default() };
    c.tls.cert_file = Some(files.cert);
    c.tls.key_file = Some(files.key);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn streamctl_speaks_tls_with_a_ca_file_and_says_what_is_missing_without() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let b = TestBroker::start_with(tls_config(dir.path(), &ca), Arc::new(SystemClock)).await;
    let ca_file = ca.write(dir.path(), "ca.pem");
    let ca_file = ca_file.to_str().expect("utf-8");
    let https = format!("https://localhost:{}", b.grpc_addr.port());

    let (code, out, err) =
        streamctl(&["--broker", &https, "--ca-file", ca_file, "stream", "create", "s", "--shards", "1"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created stream s"), "{out}");
    // The CA from the environment, and a bare host:port, work too.
    let bare = format!("localhost:{}", b.grpc_addr.port());
    let (code, out, err) = streamctl(&["--broker", &bare, "stream", "list"], &[("STREAMCTL_CA_FILE", ca_file)]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains('s'), "{out}");

    let (code, _, err) = streamctl(&["--broker", &https, "stream", "list"], &[]).await;
    assert_eq!(code, 2, "https without a CA is a usage error: {err}");
    assert!(err.contains("CA certificate") && err.contains("--ca-file"), "{err}");

    let other = Ca::new("another CA").write(dir.path(), "other.pem");
    let (code, _, err) =
        streamctl(&["--broker", &https, "--ca-file", other.to_str().expect("utf-8"), "stream", "list"], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("TLS handshake") && err.contains("UnknownIssuer"), "{err}");

    let (code, _, err) = streamctl(&["--broker", &format!("http://{}", b.grpc_addr), "stream", "list"], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("https://"), "plaintext to a TLS port suggests TLS: {err}");
    b.stop().await.expect("stop");
}

/// A broker with authentication on; its bootstrap token's file.
async fn secured(dir: &Path) -> (TestBroker, std::path::PathBuf) {
    let admin_token = dir.join("admin.token");
    std::fs::write(&admin_token, broker::auth::token::generate().expect("token").token).expect("write");
    let mut c = BrokerConfig { data_dir: dir.join("data"), ..BrokerConfig::default() };
    c.auth.enabled = true;
    c.auth.bootstrap_token_file = Some(admin_token.clone());
    (TestBroker::start_with(c, Arc::new(SystemClock)).await, admin_token)
}

#[tokio::test(flavor = "multi_thread")]
async fn streamctl_auth_manages_principals_tokens_and_grants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, admin_token) = secured(dir.path()).await;
    let broker_addr = format!("http://{}", b.grpc_addr);
    let admin_file = admin_token.to_str().expect("utf-8").to_string();
    let as_admin = |args: &[&str]| {
        let mut all = vec!["--broker", &broker_addr, "--token-file", &admin_file];
        all.extend_from_slice(args);
        all.into_iter().map(String::from).collect::<Vec<String>>()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        streamctl(&refs, &[]).await
    };

    let (code, out, err) = run(as_admin(&["auth", "whoami"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("admin (by bootstrap, allowed everything)"), "{out}");
    let (code, out, err) = run(as_admin(&["auth", "principal", "create", "relay", "--description", "publishes"])).await;
    assert_eq!((code, out.as_str()), (0, "created principal relay\n"), "{err}");
    let (code, token, err) = run(as_admin(&["auth", "token", "create", "relay", "--ttl", "1h"])).await;
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    assert!(token.starts_with("sbk_") && !token.contains(' '), "the token alone on stdout: {token:?}");
    assert!(err.contains("shown once"), "{err}");
    let (code, out, err) = run(as_admin(&["auth", "grant", "add", "relay", "record:put", "stream:orders-*"])).await;
    assert_eq!((code, out.as_str()), (0, "added relay allow record:put stream:orders-*\n"), "{err}");
    let (code, _, err) =
        run(as_admin(&["auth", "grant", "add", "relay", "record:put", "stream:orders-audit", "--deny"])).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(as_admin(&["auth", "grant", "add", "relay", "record:write", "stream:x"])).await;
    assert_eq!(code, 2, "an unknown action is an invalid argument");
    assert!(err.contains("action") && err.contains("record:write"), "{err}");
    let (code, out, err) = run(as_admin(&["--json", "auth", "grant", "list", "--principal", "relay"])).await;
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed["grants"].as_array().map(Vec::len), Some(2), "{out}");
    for s in ["orders-eu", "orders-audit"] {
        let (code, _, err) = run(as_admin(&["stream", "create", s, "--shards", "1"])).await;
        assert_eq!(code, 0, "{err}");
    }

    // As relay, by its token from a file and from the environment (STREAMCTL_TOKEN).
    let relay_file = dir.path().join("relay.token");
    std::fs::write(&relay_file, &token).expect("write");
    let relay_file = relay_file.to_str().expect("utf-8");
    let (code, out, err) =
        streamctl(&["--broker", &broker_addr, "--token-file", relay_file, "auth", "whoami"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("relay (by token ") && out.contains("stream:orders-audit"), "{out}");
    let can = |action: &'static str, resource: &'static str| {
        let broker_addr = broker_addr.clone();
        async move {
            streamctl(&["--broker", &broker_addr, "--token-file", relay_file, "auth", "can", action, resource], &[])
                .await
        }
    };
    let (code, out, err) = can("record:put", "stream:orders-eu").await;
    assert_eq!((code, out.as_str()), (0, "relay may record:put on stream:orders-eu\n"), "{err}");
    let (code, _, err) = can("record:put", "stream:orders-audit").await;
    assert_eq!(code, 1, "the deny wins");
    assert!(err.contains("relay may not record:put on stream:orders-audit"), "{err}");
    let (code, _, err) = can("record:put", "stream:orders-*").await;
    assert_eq!(code, 2, "a pattern is not a resource: {err}");
    let env = [("STREAMCTL_TOKEN", token.as_str())];
    let (code, _, err) = streamctl(&["--broker", &broker_addr, "stream", "describe", "orders-eu"], &env).await;
    assert_eq!(code, 0, "writing implies describing: {err}");
    let (code, _, err) = streamctl(&["--broker", &broker_addr, "stream", "describe", "orders-audit"], &env).await;
    assert_eq!(code, 1, "the deny wins");
    assert!(err.contains("relay") && err.contains("stream:describe") && err.contains("stream:orders-audit"), "{err}");
    let (code, _, err) = streamctl(&["--broker", &broker_addr, "auth", "principal", "list"], &env).await;
    assert_eq!(code, 1);
    assert!(err.contains("admin:auth"), "{err}");
    let (code, _, err) = streamctl(&["--broker", &broker_addr, "stream", "list"], &[]).await;
    assert_eq!(code, 1, "anonymous");
    assert!(err.contains("no credentials"), "{err}");

    // Tokens are listed by id, never shown again; a revoked one stops working.
    let (code, out, err) = run(as_admin(&["--json", "auth", "token", "list", "--principal", "relay"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&token[21..]), "a listing never shows the secret: {out}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    let id = listed["tokens"][0]["id"].as_str().expect("an id").to_string();
    assert!(token.contains(&id), "{id} names {token}");
    assert!(listed["tokens"][0]["expires_at_ms"].as_u64() > Some(0), "{out}");
    let (code, out, err) = run(as_admin(&["auth", "token", "revoke", &id])).await;
    assert_eq!((code, out), (0, format!("revoked token {id} of relay\n")), "{err}");
    let (code, _, err) = streamctl(&["--broker", &broker_addr, "auth", "whoami"], &env).await;
    assert_eq!(code, 1);
    assert!(err.contains("revoked") && !err.contains(&token), "{err}");

    let (code, _, err) = run(as_admin(&["auth", "principal", "delete", "relay"])).await;
    assert_eq!(code, 1, "needs --yes");
    assert!(err.contains("--yes"), "{err}");
    let (code, out, err) = run(as_admin(&["auth", "principal", "delete", "relay", "--yes"])).await;
    assert_eq!((code, out.as_str()), (0, "deleted principal relay (1 tokens, 2 grants)\n"), "{err}");
    b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn streamctl_whoami_says_when_authentication_is_off() {
    let b = TestBroker::start().await;
    let (code, out, err) = streamctl(&["--broker", &format!("http://{}", b.grpc_addr), "auth", "whoami"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("anonymous (authentication is off"), "{out}");
    b.stop().await.expect("stop");
}
