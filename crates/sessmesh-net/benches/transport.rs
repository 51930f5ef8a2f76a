//! Message rates between two nodes over loopback QUIC, in one run.
//!
//! ```text
//! cargo bench -p sessmesh-net --bench transport
//! ```
//! One-way replication messages of 256 encoded bytes through
//! `Transport::send` (batched on one long-lived stream), against the same
//! messages sent one per new stream to the same receiver (the baseline).
//!
//! `MESSAGES=n` changes the message count (default 1,000,000).

#![allow(clippy::unwrap_used, reason = "a benchmark panics to fail")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use sessmesh_core::{ClusterId, Codec, HlcTime, Message, NodeId, Stamp, Write};
use sessmesh_net::{
    ClusterCa, Incoming, QuicSettings, QuicTransport, SendError, Transport, TransportConfig, tls,
};
use tokio::sync::mpsc;

fn cluster() -> ClusterId {
    ClusterId::from_name("bench")
}

fn node(ca: &ClusterCa, name: &str) -> (QuicTransport, mpsc::Receiver<Incoming>) {
    let settings = QuicSettings {
        identity: ca.issue(name, &[]).unwrap(),
        ca: ca.certificate().clone(),
        cluster: cluster(),
        config: TransportConfig::default(),
    };
    QuicTransport::bind("127.0.0.1:0".parse().unwrap(), settings).unwrap()
}

/// A replication message whose frame is 256 bytes.
fn message(request: u64) -> Message {
    let value = Bytes::from(vec![b'v'; 171]);
    Message::Write {
        request,
        key: Bytes::from(format!("session:{request:024}")),
        write: Write::PutField {
            name: Bytes::from_static(b"cart"),
            value,
        },
        stamp: Stamp::new(HlcTime::from_wall_ms(1_700_000_000_000), NodeId(u64::MAX)),
    }
}

/// Counts incoming one-way messages until `n` arrived, draining in bulk as a
/// runtime task does.
async fn receive(rx: &mut mpsc::Receiver<Incoming>, n: u64) {
    let mut seen = 0;
    let mut items = Vec::with_capacity(1024);
    while seen < n {
        items.clear();
        rx.recv_many(&mut items, 1024).await;
        for item in &items {
            assert!(
                matches!(item, Incoming::Message { .. }),
                "unexpected {item:?}"
            );
        }
        seen += items.len() as u64;
    }
}

async fn batched(
    a: &QuicTransport,
    to: SocketAddr,
    rx: &mut mpsc::Receiver<Incoming>,
    n: u64,
) -> f64 {
    let start = Instant::now();
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..n {
                let m = message(i);
                loop {
                    match a.send(to, &m) {
                        Ok(()) => break,
                        // Back-pressure: the queue holds over 100 ms of messages, so
                        // waiting a timer tick costs nothing and leaves the CPU to the receiver.
                        Err(SendError::QueueFull { .. }) => {
                            tokio::time::sleep(Duration::from_millis(1)).await
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        })
    };
    receive(rx, n).await;
    sender.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

/// The baseline: every message on a new unidirectional stream of one connection.
async fn per_stream(
    ca: &ClusterCa,
    to: SocketAddr,
    rx: &mut mpsc::Receiver<Incoming>,
    n: u64,
) -> f64 {
    let identity = ca.issue("baseline", &[]).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let crypto =
        QuicClientConfig::try_from(tls::client_config(&identity, ca.certificate()).unwrap())
            .unwrap();
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(1024));
    client.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(client);
    let conn = endpoint.connect(to, "sessmesh").unwrap().await.unwrap();
    let codec = Codec::new(cluster(), 1 << 20);
    let frame = move |m: &Message| {
        let mut out = Vec::new();
        codec.encode_frame(m, &mut out).unwrap();
        out
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame(&Message::Hello)).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(1024).await.unwrap();

    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(&frame(&message(i))).await.unwrap();
            s.finish().unwrap();
        }
        conn
    });
    receive(rx, n).await;
    let _conn = sender.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let n: u64 = std::env::var("MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ca = ClusterCa::generate("bench").unwrap();
        let (a, _a_rx) = node(&ca, "node-a");
        let (b, mut b_rx) = node(&ca, "node-b");
        let to = b.local_addr();
        let mut frame = Vec::new();
        Codec::new(cluster(), 1 << 20)
            .encode_frame(&message(u64::MAX), &mut frame)
            .unwrap();
        println!(
            "one-way messages of {} bytes framed, {n} per run, loopback QUIC, 2 worker threads",
            frame.len()
        );

        // Each measurement runs on a runtime worker, as a node's own task would,
        // not on the bench's main thread.
        let (batched_rate, b_rx) = {
            let a = a.clone();
            tokio::spawn(async move {
                // Warm up the connection and the receiver first.
                batched(&a, to, &mut b_rx, 10_000).await;
                (batched(&a, to, &mut b_rx, n).await, b_rx)
            })
            .await
            .unwrap()
        };
        let baseline_n = (n / 5).max(1);
        let ca = Arc::new(ca);
        let (baseline_rate, _b_rx) = {
            let ca = ca.clone();
            let mut b_rx = b_rx;
            tokio::spawn(async move { (per_stream(&ca, to, &mut b_rx, baseline_n).await, b_rx) })
                .await
                .unwrap()
        };
        println!("{:<44} {:>12}", "mode", "messages/s");
        println!(
            "{:<44} {:>12.0}",
            format!("one message per new stream ({baseline_n} messages)"),
            baseline_rate
        );
        println!(
            "{:<44} {:>12.0}   {:.2}x the baseline",
            "Transport::send (batched on one stream)",
            batched_rate,
            batched_rate / baseline_rate
        );
    });
}
