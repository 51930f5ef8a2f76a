//! A peer that sends junk, truncated frames, oversized lengths, another
//! cluster's messages, or a certificate from another CA is refused with a
//! reason, and the node keeps serving everyone else and loses nothing.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, VarInt};
use sessmesh_core::{ClusterId, Codec, Message, PROTOCOL_VERSION};
use sessmesh_net::quic::close_code;
use sessmesh_net::{
    CaCertificate, ClusterCa, Incoming, NodeIdentity, QuicSettings, QuicTransport, RequestError,
    Transport, TransportConfig, tls,
};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn cluster() -> ClusterId {
    ClusterId::from_name("bad-input")
}

fn start(ca: &ClusterCa, name: &str) -> (QuicTransport, mpsc::Receiver<Incoming>) {
    let settings = QuicSettings {
        identity: ca.issue(name, &[]).unwrap(),
        ca: ca.certificate().clone(),
        cluster: cluster(),
        config: TransportConfig {
            max_frame_bytes: 64 << 10,
            ..TransportConfig::default()
        },
    };
    QuicTransport::bind("127.0.0.1:0".parse().unwrap(), settings).unwrap()
}

/// A hand-driven QUIC client with a certificate, for sending what a real node never would.
async fn raw_connect(
    identity: &NodeIdentity,
    trusts: &CaCertificate,
    to: SocketAddr,
) -> Result<quinn::Connection, ConnectionError> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let crypto = QuicClientConfig::try_from(tls::client_config(identity, trusts).unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint.connect(to, "sessmesh").unwrap().await
}

async fn frame(codec: &Codec, message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    codec.encode_frame(message, &mut out).unwrap();
    out
}

/// Connects and completes the Hello exchange, as a real node would.
async fn raw_peer(ca: &ClusterCa, to: SocketAddr) -> quinn::Connection {
    let conn = raw_connect(&ca.issue("mallory", &[]).unwrap(), ca.certificate(), to)
        .await
        .unwrap();
    let codec = Codec::new(cluster(), 64 << 10);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame(&codec, &Message::Hello).await)
        .await
        .unwrap();
    send.finish().unwrap();
    let welcome = recv.read_to_end(1024).await.unwrap();
    assert_eq!(
        codec.decode_frame(&welcome).unwrap().unwrap().0,
        Message::Welcome
    );
    conn
}

/// Sends `bytes` on a new unidirectional stream and returns how the node stopped it, if it did.
async fn send_uni(conn: &quinn::Connection, bytes: &[u8], finish: bool) -> Option<VarInt> {
    let mut send = conn.open_uni().await.unwrap();
    // The node may stop the stream before everything is written; that is the point.
    let _ = send.write_all(bytes).await;
    if finish {
        let _ = send.finish();
    }
    tokio::time::timeout(WAIT, send.stopped())
        .await
        .expect("the stream settles in time")
        .ok()
        .flatten()
}

async fn next_message(rx: &mut mpsc::Receiver<Incoming>) -> (String, Message) {
    loop {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Incoming::Message { from, message } => return (from.name.to_string(), message),
            Incoming::Request {
                message: Message::Read { request, .. },
                reply,
                ..
            } => {
                reply.respond(Message::ReadReply {
                    request,
                    session: None,
                });
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A healthy peer's message still reaches the node.
async fn still_served(
    friend: &QuicTransport,
    to: SocketAddr,
    node_rx: &mut mpsc::Receiver<Incoming>,
    request: u64,
) {
    friend.send(to, &Message::WriteAck { request }).unwrap();
    assert_eq!(
        next_message(node_rx).await,
        ("node-2".into(), Message::WriteAck { request })
    );
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_stop_their_stream_and_the_node_keeps_serving() {
    let ca = ClusterCa::generate("bad-input").unwrap();
    let (node, mut node_rx) = start(&ca, "node-1");
    let (friend, _friend_rx) = start(&ca, "node-2");
    let to = node.local_addr();
    let codec = Codec::new(cluster(), 64 << 10);

    // A healthy peer has a message in flight before the attacks.
    still_served(&friend, to, &mut node_rx, 1).await;

    let mallory = raw_peer(&ca, to).await;
    // Junk in a well-sized frame. The stream stays open, so only the node's
    // stop can settle it (a finished stream may be acknowledged first).
    let junk = [0xFF_u8; 40];
    assert_eq!(
        send_uni(&mallory, &[&[40, 0, 0, 0][..], &junk[..]].concat(), false).await,
        Some(VarInt::from_u32(close_code::BAD_FRAME))
    );
    // A length over the limit: stopped from the prefix alone, before any body is sent or buffered.
    assert_eq!(
        send_uni(&mallory, &u32::MAX.to_le_bytes(), false).await,
        Some(VarInt::from_u32(close_code::BAD_FRAME))
    );
    // A truncated frame: the prefix promises more than the stream carries,
    // which shows only once the stream ends, so it is seen in the node's count.
    let whole = frame(&codec, &Message::WriteAck { request: 7 }).await;
    let _ = send_uni(&mallory, &whole[..whole.len() - 1], true).await;
    wait_for("three refused frames", || node.stats().bad_frames == 3).await;

    // Mallory's connection still works for valid frames, and so does everyone else's.
    assert_eq!(send_uni(&mallory, &whole, true).await, None);
    assert_eq!(
        next_message(&mut node_rx).await,
        ("mallory".into(), Message::WriteAck { request: 7 })
    );
    still_served(&friend, to, &mut node_rx, 2).await;
    assert_eq!(node.stats().refused_connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_cluster_or_version_closes_the_connection() {
    let ca = ClusterCa::generate("bad-input").unwrap();
    let (node, mut node_rx) = start(&ca, "node-1");
    let (friend, _friend_rx) = start(&ca, "node-2");
    let to = node.local_addr();

    let foreign = Codec::new(ClusterId::from_name("someone-else"), 64 << 10);
    let mallory = raw_peer(&ca, to).await;
    let _ = send_uni(
        &mallory,
        &frame(&foreign, &Message::WriteAck { request: 1 }).await,
        true,
    )
    .await;
    match tokio::time::timeout(WAIT, mallory.closed()).await.unwrap() {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, VarInt::from_u32(close_code::FOREIGN));
            let reason = String::from_utf8_lossy(&close.reason);
            assert!(reason.contains("this node is in cluster"), "{reason}");
        }
        other => panic!("expected an application close, got {other}"),
    }

    // The next version of the protocol, as a future node would speak it.
    let mallory = raw_peer(&ca, to).await;
    let next = PROTOCOL_VERSION + 1;
    let mut future =
        postcard::to_allocvec(&(next, cluster(), Message::WriteAck { request: 1 })).unwrap();
    let len = u32::try_from(future.len()).unwrap().to_le_bytes();
    future.splice(0..0, len);
    let _ = send_uni(&mallory, &future, true).await;
    match tokio::time::timeout(WAIT, mallory.closed()).await.unwrap() {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, VarInt::from_u32(close_code::FOREIGN));
            let reason = String::from_utf8_lossy(&close.reason);
            assert!(
                reason.contains(&format!("protocol version {next}")),
                "{reason}"
            );
        }
        other => panic!("expected an application close, got {other}"),
    }
    assert_eq!(node.stats().refused_connections, 2);

    still_served(&friend, to, &mut node_rx, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_must_open_with_hello() {
    let ca = ClusterCa::generate("bad-input").unwrap();
    let (node, _node_rx) = start(&ca, "node-1");
    let conn = raw_connect(
        &ca.issue("mallory", &[]).unwrap(),
        ca.certificate(),
        node.local_addr(),
    )
    .await
    .unwrap();
    let codec = Codec::new(cluster(), 64 << 10);
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame(&codec, &Message::WriteAck { request: 1 }).await)
        .await
        .unwrap();
    send.finish().unwrap();
    match tokio::time::timeout(WAIT, conn.closed()).await.unwrap() {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, VarInt::from_u32(close_code::HANDSHAKE));
            assert!(
                String::from_utf8_lossy(&close.reason)
                    .contains("expected Hello first, got WriteAck")
            );
        }
        other => panic!("expected an application close, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_after_the_handshake_seemed_done() {
    let ca = ClusterCa::generate("bad-input").unwrap();
    let (node, mut node_rx) = start(&ca, "node-1");
    let (friend, _friend_rx) = start(&ca, "node-2");
    let to = node.local_addr();

    // The intruder trusts our CA (so it accepts the node) but presents a certificate from its own.
    let intruder_ca = ClusterCa::generate("intruders").unwrap();
    let intruder = intruder_ca.issue("intruder", &[]).unwrap();
    // Under TLS 1.3 the client's handshake completes before the server has judged its certificate...
    let conn = raw_connect(&intruder, ca.certificate(), to)
        .await
        .expect("the client side of the handshake completes");
    // ...and only the first exchange shows the refusal.
    let refused = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"\x01\x00\x00\x00\x00").await?;
        recv.read_to_end(1024).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        tokio::time::timeout(WAIT, refused).await.unwrap().is_err(),
        "the first exchange fails"
    );
    let reason = tokio::time::timeout(WAIT, conn.closed())
        .await
        .unwrap()
        .to_string();
    assert!(
        reason.contains("invalid peer certificate: UnknownIssuer"),
        "{reason}"
    );
    wait_for("the refused handshake to be counted", || {
        node.stats().failed_handshakes == 1
    })
    .await;

    // Through the transport, the same refusal surfaces as an unreachable peer, with the reason.
    let settings = QuicSettings {
        identity: intruder,
        ca: ca.certificate().clone(),
        cluster: cluster(),
        config: TransportConfig::default(),
    };
    let (intruder_node, _rx) =
        QuicTransport::bind("127.0.0.1:0".parse().unwrap(), settings).unwrap();
    let err = intruder_node
        .request(
            to,
            &Message::Read {
                request: 1,
                key: Bytes::new(),
            },
            WAIT,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");

    still_served(&friend, to, &mut node_rx, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_on_connect() {
    let ca = ClusterCa::generate("bad-input").unwrap();
    let (node, _node_rx) = start(&ca, "node-1");
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(24 * 60 * 60);
    let expired = ca
        .issue_valid("stale", &[], now - 30 * day, now - day)
        .unwrap();
    let settings = QuicSettings {
        identity: expired,
        ca: ca.certificate().clone(),
        cluster: cluster(),
        config: TransportConfig::default(),
    };
    let (stale, _rx) = QuicTransport::bind("127.0.0.1:0".parse().unwrap(), settings).unwrap();
    let err = stale
        .request(
            node.local_addr(),
            &Message::Read {
                request: 1,
                key: Bytes::new(),
            },
            WAIT,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("invalid peer certificate: certificate expired"),
        "{err}"
    );
    wait_for("the refused handshake to be counted", || {
        node.stats().failed_handshakes == 1
    })
    .await;
}
