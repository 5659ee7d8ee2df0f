//! A fault-injecting TCP proxy for gRPC tests: clients dial the proxy on
//! `127.0.0.1:0`, the proxy dials the target, which can change at runtime
//! (a broker restarted after `kill -9` listens on a new port while clients
//! keep dialling the proxy).
//!
//! Faults, switchable at runtime with [`FaultyProxy::set_faults`]:
//! - **timed cuts**: every connection is closed after a random lifetime;
//! - **response drops**: when the server sends a response frame (an HTTP/2
//!   HEADERS or DATA frame on a request stream), the connection is closed,
//!   with probability `p`, *instead of* forwarding it. The server has acted
//!   on the request (a Poll moved its read position, a Commit was stored)
//!   but the client never learns the answer;
//! - **pause**: traffic is held and new connections wait before dialling,
//!   a blackhole until the pause ends.
//!
//! Randomness is a seeded xorshift per connection (seeded by the proxy seed
//! and the connection's number), so a seed gives the same fault choices for
//! the same traffic. The proxy stops when dropped or [`FaultyProxy::stop`]ped,
//! closing every connection. [`FaultyProxy::stats`] counts the faults it
//! injected, so a test can assert that they happened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a connection waits for the target to accept it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read per forwarded chunk.
const CHUNK_BYTES: usize = 16 * 1024;

/// Which faults are on. The default is none: a plain proxy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Close every connection after a random lifetime in `[min, max]`.
    pub cut_after: Option<(Duration, Duration)>,
    /// Probability, per chunk of server bytes that carries a response frame,
    /// of closing the connection instead of forwarding it.
    pub drop_response_probability: f64,
    /// Hold all traffic, and hold new connections before dialling the target.
    pub paused: bool,
}

impl Faults {
    /// Cuts after 0.3–2 s and drops responses with probability `p`.
    pub fn chaos(p: f64) -> Self {
        Self {
            cut_after: Some((Duration::from_millis(300), Duration::from_millis(2000))),
            drop_response_probability: p,
            paused: false,
        }
    }
}

/// What the proxy did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Connections closed because their lifetime ran out.
    pub timed_cuts: u64,
    /// Connections closed instead of forwarding a response.
    pub response_cuts: u64,
    /// Connections closed because the target could not be reached.
    pub upstream_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    timed_cuts: AtomicU64,
    response_cuts: AtomicU64,
    upstream_failures: AtomicU64,
}

/// A running proxy; see the module docs.
#[derive(Debug)]
pub struct FaultyProxy {
    addr: SocketAddr,
    target: watch::Sender<SocketAddr>,
    faults: watch::Sender<Faults>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl FaultyProxy {
    /// Listens on `127.0.0.1:0` and forwards to `target` with `faults`.
    pub async fn start(target: SocketAddr, faults: Faults, seed: u64) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (target, target_rx) = watch::channel(target);
        let (faults, faults_rx) = watch::channel(faults);
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let shared = Shared { target: target_rx, faults: faults_rx, counters: counters.clone(), stop: stop.clone() };
        tokio::spawn(accept_loop(listener, shared, seed));
        Ok(Self { addr, target, faults, counters, stop })
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`, for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends new connections to `target`; open ones keep their old target.
    pub fn set_target(&self, target: SocketAddr) {
        self.target.send_replace(target);
    }

    /// Switches faults; open connections follow at once.
    pub fn set_faults(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            timed_cuts: c.timed_cuts.load(Ordering::Relaxed),
            response_cuts: c.response_cuts.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug, Clone)]
struct Shared {
    target: watch::Receiver<SocketAddr>,
    faults: watch::Receiver<Faults>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

/// xorshift64*, seeded through splitmix64 so nearby seeds diverge.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, min: Duration, max: Duration) -> Duration {
        let span = max.saturating_sub(min).as_millis() as u64;
        min + Duration::from_millis(self.next() % (span + 1))
    }
}

async fn accept_loop(listener: TcpListener, shared: Shared, seed: u64) {
    let mut n = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.stop.cancelled() => return,
        };
        match accepted {
            Ok((inbound, _)) => {
                n += 1;
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(inbound, shared.clone(), Rng::new(seed ^ n.wrapping_mul(0x9e37_79b9))));
            }
            // Out of descriptors or similar: the client sees a refused dial and retries.
            Err(e) => tracing::warn!(error = %e, "proxy accept failed"),
        }
    }
}

/// Waits until traffic is not paused; false if the proxy stopped.
async fn unpaused(faults: &mut watch::Receiver<Faults>, stop: &CancellationToken) -> bool {
    tokio::select! {
        r = faults.wait_for(|f| !f.paused) => r.is_ok(),
        _ = stop.cancelled() => false,
    }
}

/// The deadline of a connection's timed cut under `faults`, keeping `current` if it has one.
fn cut_deadline(faults: &Faults, current: Option<Instant>, rng: &mut Rng) -> Option<Instant> {
    let (min, max) = faults.cut_after?;
    Some(current.unwrap_or_else(|| Instant::now() + rng.between(min, max)))
}

/// Forwards one connection until either side closes, a fault cuts it, or the proxy stops.
async fn connection(inbound: TcpStream, mut shared: Shared, mut rng: Rng) {
    if !unpaused(&mut shared.faults, &shared.stop).await {
        return;
    }
    let target = *shared.target.borrow();
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        _ => {
            shared.counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    // gRPC messages are small and latency-bound, as on the broker's own sockets.
    let _ = inbound.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = inbound.into_split();
    let (server_read, server_write) = upstream.into_split();
    let requests = pump(client_read, server_write, None, shared.clone());
    let responses = pump(server_read, client_write, Some(Rng::new(rng.next())), shared.clone());
    tokio::pin!(requests, responses);
    let mut deadline = cut_deadline(&shared.faults.borrow(), None, &mut rng);
    let mut faults = shared.faults.clone();
    loop {
        tokio::select! {
            _ = &mut requests => return,
            cut = &mut responses => {
                if cut == Ended::Cut {
                    shared.counters.response_cuts.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            _ = sleep_until(deadline) => {
                shared.counters.timed_cuts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            changed = faults.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = *faults.borrow_and_update();
                deadline = cut_deadline(&current, deadline, &mut rng);
            }
            _ = shared.stop.cancelled() => return,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Closed,
    Cut,
}

/// Copies `from` to `to`. Server-to-client pumps get an `rng` and may cut
/// the connection at a response frame instead of forwarding it.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut rng: Option<Rng>, mut shared: Shared) -> Ended {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut frames = FrameScanner::default();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return Ended::Closed,
            Ok(n) => n,
        };
        if !unpaused(&mut shared.faults, &shared.stop).await {
            return Ended::Closed;
        }
        if let Some(rng) = rng.as_mut() {
            let p = shared.faults.borrow().drop_response_probability;
            if frames.feed(&buf[..n]) && p > 0.0 && rng.unit() < p {
                return Ended::Cut;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return Ended::Closed;
        }
    }
}

/// Follows HTTP/2 frame boundaries in the server-to-client byte stream
/// (which, unlike the client's, has no preface: it is frames from the
/// first byte). Each frame opens with a 9-byte header: 24-bit length,
/// type, flags, 31-bit stream id.
#[derive(Debug, Default)]
struct FrameScanner {
    header: [u8; 9],
    have: usize,
    skip: usize,
}

impl FrameScanner {
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;

    /// Consumes `bytes`; true if a HEADERS or DATA frame of a request
    /// stream (not a connection-level frame) begins in them.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut response = false;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (self.header.len() - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == self.header.len() {
                let h = self.header;
                let length = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                response |= stream != 0 && (h[3] == Self::DATA || h[3] == Self::HEADERS);
                self.skip = length;
                self.have = 0;
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_scanner_finds_response_frames_across_chunk_boundaries() {
        const SETTINGS: u8 = 0x4;
        const WINDOW_UPDATE: u8 = 0x8;
        let mut s = FrameScanner::default();
        // Connection-level frames are not responses.
        assert!(!s.feed(&frame(SETTINGS, 0, &[0; 12])));
        assert!(!s.feed(&frame(WINDOW_UPDATE, 0, &[0, 0, 1, 0])));
        // A DATA frame split inside its header and inside its payload.
        let data = frame(FrameScanner::DATA, 1, b"a response body that is long enough");
        assert!(!s.feed(&data[..4]));
        assert!(s.feed(&data[4..12]));
        assert!(!s.feed(&data[12..]));
        // Headers after a stream-level window update in one chunk.
        let mut chunk = frame(WINDOW_UPDATE, 3, &[0, 0, 1, 0]);
        chunk.extend(frame(FrameScanner::HEADERS, 3, b"hdrs"));
        assert!(s.feed(&chunk));
        assert!(!s.feed(&frame(SETTINGS, 0, &[])));
    }

    #[test]
    fn the_rng_is_seeded_and_stays_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next(), b.next());
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            let d = a.between(Duration::from_millis(300), Duration::from_millis(2000));
            assert!(d >= Duration::from_millis(300) && d <= Duration::from_millis(2000));
            b.unit();
            b.between(Duration::ZERO, Duration::ZERO);
        }
        assert_ne!(Rng::new(1).next(), Rng::new(2).next());
    }

    /// An echo server: answers each read with the same bytes.
    async fn echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    async fn roundtrip(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(bytes).await?;
        let mut out = vec![0u8; bytes.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut out))
            .await
            .map_err(|_| std::io::Error::other("no answer in 10 s"))??;
        Ok(out)
    }

    #[tokio::test]
    async fn forwards_follows_a_new_target_and_cuts_on_demand() {
        let (first, _e1) = echo().await;
        let (second, _e2) = echo().await;
        let proxy = FaultyProxy::start(first, Faults::default(), 1).await.expect("proxy");
        let response = frame(FrameScanner::DATA, 1, b"hello");

        let mut c = TcpStream::connect(proxy.addr()).await.expect("dial proxy");
        assert_eq!(roundtrip(&mut c, &response).await.expect("echoed"), response);

        // Every response dropped: the connection closes without the answer.
        proxy.set_faults(Faults { drop_response_probability: 1.0, ..Faults::default() });
        assert!(roundtrip(&mut c, &response).await.is_err(), "the response is dropped and the connection cut");
        assert_eq!(proxy.stats().response_cuts, 1);

        // A new target for new connections; connection-level frames still pass.
        proxy.set_target(second);
        let settings = frame(0x4, 0, &[]);
        let mut c = TcpStream::connect(proxy.addr()).await.expect("dial proxy");
        assert_eq!(roundtrip(&mut c, &settings).await.expect("echoed"), settings);

        // Timed cuts close an idle connection on their own.
        proxy.set_faults(Faults {
            cut_after: Some((Duration::from_millis(10), Duration::from_millis(20))),
            ..Faults::default()
        });
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await.expect("cut within 10 s");
        assert!(matches!(closed, Ok(0) | Err(_)));
        assert_eq!(proxy.stats().timed_cuts, 1);

        // A target that is gone closes the client's connection at once.
        let gone = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        proxy.set_target(gone);
        proxy.set_faults(Faults::default());
        let mut c = TcpStream::connect(proxy.addr()).await.expect("dial proxy");
        assert!(roundtrip(&mut c, &settings).await.is_err());
        assert_eq!(proxy.stats().upstream_failures, 1);
        assert_eq!(proxy.stats().connections, 3);
    }

    #[tokio::test]
    async fn pause_holds_traffic_until_resumed_and_stop_closes_connections() {
        let (target, _e) = echo().await;
        let proxy = FaultyProxy::start(target, Faults::default(), 2).await.expect("proxy");
        let mut c = TcpStream::connect(proxy.addr()).await.expect("dial proxy");
        assert_eq!(roundtrip(&mut c, b"one").await.expect("echoed"), b"one");
        proxy.set_faults(Faults { paused: true, ..Faults::default() });
        c.write_all(b"two").await.expect("write while paused");
        let mut buf = [0u8; 3];
        let held = tokio::time::timeout(Duration::from_millis(200), c.read_exact(&mut buf)).await;
        assert!(held.is_err(), "nothing is forwarded while paused");
        proxy.set_faults(Faults::default());
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut buf))
            .await
            .expect("forwarded after the pause")
            .expect("read");
        assert_eq!(&buf, b"two");
        proxy.stop();
        let closed = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await.expect("closed within 10 s");
        assert!(matches!(closed, Ok(0) | Err(_)));
    }
}
