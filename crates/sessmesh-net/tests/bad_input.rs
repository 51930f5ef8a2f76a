//! A peer that sends junk, truncated frames, oversized lengths, another
//! cluster's messages, a bidirectional stream after the handshake, or a
//! certificate from another CA (or an expired one) is refused with a reason,
//! and the node keeps serving everyone else and loses nothing.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, VarInt};
use sessmesh_core::{ClusterId, Codec, Message, PROTOCOL_VERSION};
use sessmesh_net::quic::close_code;
use sessmesh_net::{
    CaCertificate, ClusterCa, Incoming, NodeIdentity, QuicSettings, QuicTransport, Transport,
    TransportConfig, tls,
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

/// The next thing the node receives, which must be a one-way message.
async fn next_message(rx: &mut mpsc::Receiver<Incoming>) -> (String, Message) {
    match tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Incoming::Message { from, message } => (from.name.to_string(), message),
        other => panic!("unexpected {other:?}"),
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

/// Connects with `identity`, trusting `trusts`, and returns why the node
/// closed the connection. Under TLS 1.3 the client's side of the handshake
/// completes before the node has judged the client's certificate, so only
/// the first exchange shows the refusal.
async fn refusal(identity: &NodeIdentity, trusts: &CaCertificate, to: SocketAddr) -> String {
    let conn = raw_connect(identity, trusts, to)
        .await
        .expect("the client side of the handshake completes");
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"\x01\x00\x00\x00\x00").await?;
        recv.read_to_end(1024).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        tokio::time::timeout(WAIT, exchange).await.unwrap().is_err(),
        "the first exchange fails"
    );
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .unwrap()
        .to_string()
}

/// Starts a node on the transport with `identity` (which the node refuses),
/// has it send the node a message, and checks that the node refused its
/// dial (`refused_before` handshakes were refused already) and that the
/// message is still queued, undelivered.
async fn refused_through_the_transport(
    identity: NodeIdentity,
    ca: &ClusterCa,
    node: &QuicTransport,
    refused_before: u64,
) {
    let settings = QuicSettings {
        identity,
        ca: ca.certificate().clone(),
        cluster: cluster(),
        config: TransportConfig::default(),
    };
    let (refused, _rx) = QuicTransport::bind("127.0.0.1:0".parse().unwrap(), settings).unwrap();
    let to = node.local_addr();
    let message = Message::WriteAck { request: 1 };
    refused.send(to, &message).unwrap();
    wait_for("the node to refuse the transport's dial", || {
        node.stats().failed_handshakes > refused_before
    })
    .await;
    let codec = Codec::new(cluster(), 64 << 10);
    assert_eq!(
        refused.queued_bytes(to),
        frame(&codec, &message).await.len(),
        "the message waits: no connection carried it"
    );
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
async fn a_bidirectional_stream_after_hello_is_refused_and_the_connection_serves_on() {
    let ca = ClusterCa::generate("bad-input").unwrap();
    let (node, mut node_rx) = start(&ca, "node-1");
    let (friend, _friend_rx) = start(&ca, "node-2");
    let to = node.local_addr();
    let codec = Codec::new(cluster(), 64 << 10);

    // A valid frame, but on a bidirectional stream, as if asking for an
    // answer: peers send one-way messages only, so the node stops and resets it.
    let mallory = raw_peer(&ca, to).await;
    let (mut send, mut recv) = mallory.open_bi().await.unwrap();
    let read = Message::Read {
        request: 1,
        key: bytes::Bytes::from_static(b"k"),
    };
    // The node may stop the stream before everything is written.
    let _ = send.write_all(&frame(&codec, &read).await).await;
    let stopped = tokio::time::timeout(WAIT, send.stopped())
        .await
        .expect("the stream settles in time");
    assert_eq!(
        stopped.ok().flatten(),
        Some(VarInt::from_u32(close_code::UNEXPECTED_STREAM))
    );
    match tokio::time::timeout(WAIT, recv.read_to_end(1024))
        .await
        .unwrap()
    {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code, VarInt::from_u32(close_code::UNEXPECTED_STREAM));
        }
        other => panic!("expected the node to reset its side, got {other:?}"),
    }
    wait_for("the refused stream to be counted", || {
        node.stats().refused_streams == 1
    })
    .await;

    // The refused frame was not delivered, and the connection still carries
    // one-way messages: the next message from Mallory is the one below.
    let whole = frame(&codec, &Message::WriteAck { request: 7 }).await;
    assert_eq!(send_uni(&mallory, &whole, true).await, None);
    assert_eq!(
        next_message(&mut node_rx).await,
        ("mallory".into(), Message::WriteAck { request: 7 })
    );
    still_served(&friend, to, &mut node_rx, 4).await;
    let stats = node.stats();
    assert_eq!((stats.bad_frames, stats.refused_connections), (0, 0));
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
    let reason = refusal(&intruder, ca.certificate(), to).await;
    assert!(
        reason.contains("invalid peer certificate: UnknownIssuer"),
        "{reason}"
    );
    wait_for("the refused handshake to be counted", || {
        node.stats().failed_handshakes == 1
    })
    .await;

    // Through the transport, the same refusal: its dial never connects.
    refused_through_the_transport(intruder, &ca, &node, 1).await;

    // The next message the node gets is the friend's: nothing of the intruder's.
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
    let reason = refusal(&expired, ca.certificate(), node.local_addr()).await;
    assert!(
        reason.contains("invalid peer certificate: certificate expired"),
        "{reason}"
    );
    wait_for("the refused handshake to be counted", || {
        node.stats().failed_handshakes == 1
    })
    .await;

    // Through the transport, the same refusal: its dial never connects.
    refused_through_the_transport(expired, &ca, &node, 1).await;
}
