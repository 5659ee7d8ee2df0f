//! The real `stream-broker` binary as a child process, for restart and
//! crash tests: start it on `127.0.0.1:0`, read the addresses it prints,
//! `kill -9` it or stop it with SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A broker process; killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// `http://127.0.0.1:port` of its gRPC listener.
    pub endpoint: String,
    /// Its gRPC listener.
    pub grpc_addr: SocketAddr,
    /// Its admin (HTTP) listener.
    pub http_addr: SocketAddr,
    /// Its Kinesis API listener (`None` when configured off).
    pub kinesis_addr: Option<SocketAddr>,
    /// Its framed produce listener (`None` when configured off).
    pub wire_addr: Option<SocketAddr>,
    /// When the process was spawned (restart-to-first-answer starts here).
    pub spawned: Instant,
}

impl Process {
    /// Starts a broker on `data_dir` with quotas off.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with_env(data_dir, &[])
    }

    /// Starts a broker on `data_dir` with quotas off and these extra
    /// environment variables (configuration overrides such as
    /// `STREAM_BROKER_GROUPS__SESSION_TIMEOUT_MS`; they win over the defaults
    /// set here). Blocks until the broker prints its addresses.
    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with(data_dir, &[], env, Stdio::inherit())
    }

    /// [`Process::start_with_env`] with extra arguments (`--config FILE`)
    /// and the broker's log (stderr) sent to `stderr`.
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Self {
        let spawned = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_stream-broker"))
            .args([
                "--data-dir",
                data_dir.to_str().expect("utf-8 path"),
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--kinesis-addr",
                "127.0.0.1:0",
                "--wire-addr",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("STREAM_BROKER_QUOTAS__ENFORCE", "false")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn stream-broker");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        // Keep reading stdout, so the broker never blocks on (or fails
        // writing to) a full or closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let addr = |name: &str| -> Option<SocketAddr> {
            let prefix = format!("{name}=");
            line.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str())).and_then(|a| a.parse().ok())
        };
        let (Some(grpc_addr), Some(http_addr), kinesis_addr) = (addr("grpc"), addr("http"), addr("kinesis")) else {
            let status = child.wait().expect("reap");
            panic!("the broker did not start on {} ({read:?}, {line:?}): {status}", data_dir.display());
        };
        let wire_addr = addr("wire");
        Self { endpoint: format!("http://{grpc_addr}"), grpc_addr, http_addr, kinesis_addr, wire_addr, child, spawned }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id (to read `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("send SIGTERM");
        self.child.wait().expect("wait for clean exit")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
