//! Helpers shared by the broker's integration tests.
#![allow(dead_code)]

pub mod certs;
pub mod hooked_io;
pub mod process;

use bytes::Bytes;
use proto::v1 as pb;
use proto::v1::stream_broker_client::StreamBrokerClient;
use tonic::transport::Channel;

pub type Client = StreamBrokerClient<Channel>;

pub async fn connect(endpoint: String) -> Client {
    let channel = Channel::from_shared(endpoint).expect("endpoint").connect().await.expect("connect to broker");
    StreamBrokerClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
}

pub async fn create(client: &mut Client, name: &str, shards: u32) -> pb::StreamDescription {
    create_with(client, pb::CreateStreamRequest { stream_name: name.into(), shard_count: shards, ..Default::default() })
        .await
}

pub async fn create_with(client: &mut Client, req: pb::CreateStreamRequest) -> pb::StreamDescription {
    client.create_stream(req).await.expect("create stream").into_inner().stream.expect("description")
}

pub fn entry(key: &str, data: &[u8]) -> pb::PutRecordsEntry {
    pb::PutRecordsEntry { partition_key: key.into(), data: Bytes::copy_from_slice(data), explicit_hash_key: None }
}

pub async fn put(client: &mut Client, stream: &str, entries: Vec<pb::PutRecordsEntry>) -> pb::PutRecordsResponse {
    client
        .put_records(pb::PutRecordsRequest { stream_name: stream.into(), records: entries })
        .await
        .expect("put records")
        .into_inner()
}

pub async fn iterator(
    client: &mut Client,
    stream: &str,
    shard: &str,
    kind: pb::IteratorType,
    seq: Option<u64>,
    ts: Option<u64>,
) -> String {
    client
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: stream.into(),
            shard_id: shard.into(),
            iterator_type: kind as i32,
            starting_sequence_number: seq,
            timestamp_ms: ts,
        })
        .await
        .expect("get shard iterator")
        .into_inner()
        .shard_iterator
}

/// Reads a shard from an iterator until a response reaches the end.
pub async fn drain(client: &mut Client, mut it: String, limit: u32) -> Vec<pb::Record> {
    let mut out = Vec::new();
    loop {
        let r = client
            .get_records(pb::GetRecordsRequest { shard_iterator: it.clone(), limit })
            .await
            .expect("get records")
            .into_inner();
        let n = r.records.len();
        out.extend(r.records);
        it = r.next_shard_iterator;
        if n == 0 || r.millis_behind_latest == 0 && n < limit as usize {
            return out;
        }
    }
}

pub fn error_kind(s: &tonic::Status) -> String {
    s.metadata().get("x-error-kind").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// A record routed to the shard whose hash range holds `hash`.
pub fn entry_at(hash: u128, data: &[u8]) -> pb::PutRecordsEntry {
    pb::PutRecordsEntry {
        partition_key: "k".into(),
        data: Bytes::copy_from_slice(data),
        explicit_hash_key: Some(hash.to_string()),
    }
}

/// `GET path` on the admin port: the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect admin port");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read response");
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// `GET path` on the admin port, or `None` when what comes back is not an
/// HTTP response (the connection closes first, or speaks something else).
pub async fn try_http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    let code = text.strip_prefix("HTTP/1.1 ")?.split_whitespace().next()?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// `GET path` over TLS (server name `localhost`, trusting `ca_pem`), with
/// an optional bearer token: the status code and the body.
pub async fn https_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    ca_pem: &str,
    token: Option<&str>,
) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(broker::auth::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect admin port");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut s =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    // A peer may close without close_notify; what arrived is still the answer.
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// `GET path` over TLS without credentials.
pub async fn https_get(addr: std::net::SocketAddr, path: &str, ca_pem: &str) -> (u16, String) {
    https_get_with(addr, path, ca_pem, None).await
}
