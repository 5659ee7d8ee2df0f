//! `order-bench`: orders per second through `POST /order` with the whole
//! order system running in-process (embedded broker with durable acks, the
//! outbox relay, every consumer, the delivery simulator), and the latency
//! from the start of each create request to the moment the cake producer's
//! `.eml` file for that order exists.
//!
//! `--clients` keep-alive HTTP/1.1 connections post orders for `--seconds`;
//! a watcher lists the email directory every 2 ms (the latency resolution).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Debug, Parser)]
#[command(about = "Order-service throughput and create-to-email latency")]
struct Args {
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Orders per second over all clients; 0 posts as fast as the clients can.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// Posts one order on a keep-alive connection; returns the orderId.
fn post_order(conn: &mut BufReader<TcpStream>, n: usize) -> String {
    let body = format!(r#"{{"name":"bench-{n}","address":"somewhere","productId":"productId11","quantity":"10"}}"#);
    let req = format!(
        "POST /order HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes()).expect("send request");
    let mut status = String::new();
    conn.read_line(&mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 201"), "create failed: {status}");
    let mut len = 0;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().expect("content length");
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).expect("body");
    let order: serde_json::Value = serde_json::from_slice(&body).expect("order JSON");
    order["orderId"].as_str().expect("orderId").to_string()
}

/// The order id in a cake-producer email, if the file is one.
fn order_in_email(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    if !text.contains("Subject: New cake order") {
        return None;
    }
    text.lines().find_map(|l| l.strip_prefix("Order ID:").map(|id| id.trim().to_string()))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let config = order_service::config::Config {
        data_dir: dir.path().to_path_buf(),
        broker_grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        broker_admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..order_service::config::Config::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind order API");
        order_service::start(config, listener, shutdown.clone()).await.expect("start the order service")
    });
    let addr = running.http_addr;
    let emails = dir.path().join("emails");

    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let load_start = Instant::now();
    let clients: Vec<_> = (0..args.clients)
        .map(|c| {
            let started = started.clone();
            let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.clients as f64 / args.rate as f64));
            std::thread::spawn(move || {
                let mut conn = BufReader::new(TcpStream::connect(addr).expect("connect"));
                conn.get_ref().set_nodelay(true).expect("nodelay");
                let mut n = 0;
                let mut next = Instant::now();
                while Instant::now() < deadline {
                    // Pacing: each client posts at its share of the rate.
                    if let Some(i) = interval {
                        next += i;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    let t = Instant::now();
                    let id = post_order(&mut conn, c * 1_000_000 + n);
                    started.lock().expect("lock").insert(id, t);
                    n += 1;
                }
                n
            })
        })
        .collect();

    // Watch for emails until every created order has one (bounded).
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut listed = std::collections::HashSet::new();
    let mut load_done = false;
    let mut give_up = None;
    loop {
        if let Ok(entries) = std::fs::read_dir(&emails) {
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().is_some_and(|x| x == "eml") && listed.insert(path.clone()) {
                    if let Some(id) = order_in_email(&path) {
                        seen.insert(id, Instant::now());
                    }
                }
            }
        }
        if !load_done && clients.iter().all(|c| c.is_finished()) {
            load_done = true;
            give_up = Some(Instant::now() + Duration::from_secs(300));
        }
        if load_done {
            let created = started.lock().expect("lock").len();
            if seen.len() >= created || give_up.is_some_and(|g| Instant::now() > g) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let load_secs = args.seconds as f64;
    let posted: usize = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let started = started.lock().expect("lock");
    let created = started.len();
    for (id, t) in started.iter() {
        if let Some(seen_at) = seen.get(id) {
            h.record(seen_at.duration_since(*t).as_micros().max(1) as u64)?;
        }
    }
    let offered = if args.rate > 0 { format!("{} orders/s offered", args.rate) } else { "unpaced".to_string() };
    println!(
        "order-bench on {} cores; embedded broker, durable acks; {} clients for {} s, {offered}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.clients,
        args.seconds
    );
    println!(
        "orders created: {posted} ({:.0} orders/s through POST /order, {:.1} s including the tail)",
        posted as f64 / load_secs,
        load_start.elapsed().as_secs_f64()
    );
    println!(
        "create-to-email-file latency over {} of {created} orders: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        h.len(),
        ms(&h, 0.5),
        ms(&h, 0.99),
        h.max() as f64 / 1000.0
    );
    assert_eq!(h.len() as usize, created, "every created order got its email");
    runtime.block_on(running.stop())?;
    Ok(())
}
