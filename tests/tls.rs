//! HTTPS, WSS, HTTP/2 (ALPN and h2c) and WebSocket over HTTP/2, end to end,
//! with a certificate authority the tests make for themselves.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::ws::{conn_token, recv_on, SECRET};
use common::*;
use futures::SinkExt;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

/// A test CA and a certificate it signed for localhost and 127.0.0.1.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn make_pki(name: &str) -> Pki {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("tidings test CA {name}"));
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

fn install(pki: &Pki, dir: &Path) {
    std::fs::write(dir.join("cert.pem"), &pki.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &pki.key_pem).unwrap();
}

/// A hub serving HTTPS with `pki`'s certificate (files in `dir`).
fn tls_hub(pki: &Pki, dir: &Path, extra: &[(&str, &str)]) -> Hub {
    install(pki, dir);
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let mut args = vec![
        ("tls.cert_file", cert.as_str()),
        ("tls.key_file", key.as_str()),
        ("centrifugo.token_key", SECRET),
        ("centrifugo.channel.allow_subscribe", "true"),
    ];
    args.extend_from_slice(extra);
    Hub::start(&args)
}

/// Whether a fresh client trusting only `pki`'s CA gets `/healthz`.
async fn healthy(hub: &Hub, pki: &Pki) -> bool {
    match client_trusting(pki).get(hub.url("/healthz")).send().await {
        Ok(res) => res.status() == 200,
        Err(_) => false,
    }
}

fn client_trusting(pki: &Pki) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap()
}

/// The hub's `tidings_tcp_connections` gauge.
async fn tcp_connections(client: &reqwest::Client, url: String) -> f64 {
    let text = client.get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("tidings_tcp_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

async fn publish_with(client: &reqwest::Client, hub: &Hub, url: String, topic: &str, data: &str) {
    let res = client
        .post(url)
        .bearer_auth(publisher(hub))
        .form(&[("topic", topic), ("data", data)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Opens `n` SSE streams on `client` (one HTTP/2 connection), publishes,
/// and checks every stream got it while the hub holds one TCP connection.
async fn many_streams_on_one_connection(client: &reqwest::Client, hub: &Hub, base: &str) {
    let mut streams = Vec::new();
    for _ in 0..20 {
        let res = client
            .get(format!("{base}/.well-known/mercure?topic=multiplexed"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        streams.push(Stream::from_response(res));
    }
    assert_eq!(
        tcp_connections(client, format!("{base}/metrics")).await,
        1.0,
        "20 SSE streams should share one HTTP/2 connection"
    );
    publish_with(
        client,
        hub,
        format!("{base}/.well-known/mercure"),
        "multiplexed",
        "to all",
    )
    .await;
    for s in &mut streams {
        assert_eq!(s.next().await.data, "to all");
    }
}

#[tokio::test]
async fn https_serves_http2_by_alpn_with_many_sse_streams_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki("a");
    let hub = tls_hub(&pki, dir.path(), &[]);
    let client = client_trusting(&pki);
    let res = client.get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.text().await.unwrap(), "ok\n");
    many_streams_on_one_connection(&client, &hub, &hub.url("")).await;
    // HTTP/1.1 over TLS still works (clients without ALPN h2).
    let h1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    let res = h1.get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    // Cleartext on the TLS port is refused without harming anyone.
    assert!(reqwest::get(format!("http://{}/healthz", hub.addr))
        .await
        .is_err());
}

#[tokio::test]
async fn h2c_prior_knowledge_multiplexes_sse_streams() {
    let hub = Hub::start(&[]);
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    many_streams_on_one_connection(&client, &hub, &hub.url("")).await;
}

/// A TLS stream to the hub trusting only `pki`'s CA.
async fn tls_connect(
    pki: &Pki,
    addr: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn wss_carries_the_centrifugo_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki("w");
    let hub = tls_hub(&pki, dir.path(), &[]);
    let tls = tls_connect(&pki, &hub.addr).await.unwrap();
    let url = format!(
        "wss://localhost:{}/connection/websocket",
        hub.addr.split(':').nth(1).unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let frame = [
        json!({"id": 1, "connect": {"token": conn_token("u", 3600)}}),
        json!({"id": 2, "subscribe": {"channel": "secure"}}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    ws.send(Message::text(frame)).await.unwrap();
    let replies = recv_on(&mut ws).await;
    assert!(
        replies.iter().any(|r| r["subscribe"].is_object()),
        "{replies:?}"
    );
    let client = client_trusting(&pki);
    publish_with(
        &client,
        &hub,
        hub.url("/.well-known/mercure"),
        "secure",
        "over wss",
    )
    .await;
    let push = recv_on(&mut ws).await;
    assert_eq!(push[0]["push"]["pub"]["data"], "over wss");
}

#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let hub = common::ws::start(&[]);
    let tcp = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // The server's SETTINGS (ENABLE_CONNECT_PROTOCOL) arrive first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut req = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(format!("http://{}/connection/websocket", hub.addr))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text(
        json!({"id": 1, "connect": {"token": conn_token("h2", 3600)}}).to_string(),
    ))
    .await
    .unwrap();
    let reply = recv_on(&mut ws).await;
    assert!(reply[0]["connect"]["client"].is_string(), "{reply:?}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old = make_pki("old");
    let new = make_pki("new");
    let hub = tls_hub(&old, dir.path(), &[]);
    let old_client = client_trusting(&old);
    let res = old_client
        .get(hub.url("/.well-known/mercure?topic=reload"))
        .send()
        .await
        .unwrap();
    let mut stream = Stream::from_response(res);

    install(&new, dir.path());
    hub.signal(libc::SIGHUP);
    let mut reloaded = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if healthy(&hub, &new).await {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the new certificate was not served after SIGHUP");
    assert!(
        tls_connect(&old, &hub.addr).await.is_err(),
        "the old certificate is still served to new connections"
    );
    // The stream opened before the reload still delivers.
    publish_with(
        &client_trusting(&new),
        &hub,
        hub.url("/.well-known/mercure"),
        "reload",
        "after",
    )
    .await;
    assert_eq!(stream.next().await.data, "after");

    // A broken file is refused at reload: the current certificate stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    hub.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(healthy(&hub, &new).await);
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_at_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki("s");
    let hub = tls_hub(&pki, dir.path(), &[("limits.header_timeout", "1s")]);
    let mut tcp = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    // The first bytes of a ClientHello, then nothing.
    use tokio::io::AsyncWriteExt;
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(4), tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(healthy(&hub, &pki).await);
}
