//! The `order-service` binary as an operator meets it: `--version`,
//! `--help`, and a busy port named with the flag that moves it.

use std::process::Command;

fn service() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_order-service"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ORDER_SERVICE_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn version_and_help_name_the_program() {
    let out = service().arg("--version").output().expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("order-service {}\n", env!("CARGO_PKG_VERSION")));
    let out = service().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.starts_with("order-service: the cake-shop order system on stream-broker"), "{help}");
    assert!(help.contains("--broker-grpc-addr") && help.contains("RUST_LOG"), "{help}");
}

#[test]
fn a_busy_embedded_broker_port_is_named_with_its_flag() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = service()
        .args(["--data-dir", dir.path().to_str().expect("utf-8"), "--http-addr", "127.0.0.1:0"])
        .args(["--broker-grpc-addr", &addr, "--broker-admin-addr", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("--broker-grpc-addr"), "{err}");
    // A bad variable names itself.
    let out = service()
        .args(["--data-dir", dir.path().to_str().expect("utf-8")])
        .env("ORDER_SERVICE_MAX_BODY_BYTES", "10")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ORDER_SERVICE_MAX_BODY_BYTES=10: maxBodyBytes: must be at least 1024"), "{err}");
}
