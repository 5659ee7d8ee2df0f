//! The `stream-broker` binary as an operator meets it: `--version`,
//! `--help`, configuration errors that name their source, bind errors that
//! name the flag, and logs on stderr without colour when not on a terminal
//! (or as JSON lines).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

fn broker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stream-broker"));
    // A developer's shell may set these; the test decides.
    for (k, _) in std::env::vars() {
        if k.starts_with("STREAM_BROKER_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn version_and_help_name_the_program() {
    let out = broker().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("stream-broker {}\n", env!("CARGO_PKG_VERSION")));
    let out = broker().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.starts_with("stream-broker: a self-hosted, Kinesis-like streaming broker"), "{help}");
    assert!(help.contains("RUST_LOG") && help.contains("--log-format"), "{help}");
}

#[test]
fn configuration_errors_name_the_variable_or_the_file_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = broker()
        .args(["--data-dir", dir.path().to_str().expect("utf-8")])
        .env("STREAM_BROKER_DURABILITY__MODE", "sometimes")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("STREAM_BROKER_DURABILITY__MODE=sometimes: durability.mode: "), "{err}");
    assert!(err.contains("`always`, `interval`, `never`"), "{err}");

    let file = dir.path().join("b.toml");
    std::fs::write(&file, "[limits]\n\nmax_streams = 0\n").expect("write");
    let out = broker().arg("--config").arg(&file).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3: limits.max_streams: must be positive", file.display())), "{err}");
}

#[test]
fn a_busy_port_is_named_with_its_flag() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = broker()
        .args(["--data-dir", dir.path().to_str().expect("utf-8"), "--grpc-addr", &addr, "--http-addr", "127.0.0.1:0"])
        .args(["--kinesis-addr", "127.0.0.1:0", "--wire-addr", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("--grpc-addr"), "{err}");
}

/// Starts the broker with `args`, waits for its listening line on stdout,
/// stops it with SIGTERM, and returns what it wrote to stderr.
fn run_and_stop(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = broker()
        .args(["--data-dir", dir.path().to_str().expect("utf-8"), "--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0", "--kinesis-addr", "127.0.0.1:0", "--wire-addr", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    assert!(line.starts_with("stream-broker listening grpc="), "{line:?}");
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(term.success());
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
    assert!(child.wait().expect("wait").success(), "{err}");
    err
}

#[test]
fn logs_go_to_stderr_plain_off_a_terminal_or_as_json() {
    let text = run_and_stop(&[]);
    assert!(text.contains("broker ready"), "{text}");
    assert!(!text.contains('\u{1b}'), "no ANSI colour when stderr is not a terminal: {text:?}");
    let json = run_and_stop(&["--log-format", "json"]);
    let lines: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}"))).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "broker ready"), "{json}");
}
