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
