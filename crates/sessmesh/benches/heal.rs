//! How long three real nodes take to converge after a partition heals.
//!
//! ```text
//! cargo bench -p sessmesh --bench heal
//! ```
//! Three nodes over QUIC on loopback (replication factor 3, so each holds
//! every partition). node-2 is cut off from the others through the transport's
//! fault controls. Each side then writes `SESSIONS` (default 50,000) different
//! sessions of 256-byte values at level One, and the partition heals. The time
//! reported runs from the heal until every node's 256 partition digests are
//! equal. `HOLD_MS=15000` holds the partition that long first, past the
//! transport's idle timeout and membership's suspicion window, so the heal
//! goes through reconnection, hints and anti-entropy. Also: the digest bytes
//! per partition per anti-entropy round when the replicas already agree.

#![allow(clippy::unwrap_used, reason = "a benchmark panics to fail")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use sessmesh::{Level, Node as Peer, Outcome, Write};
use sessmesh_core::{
    ClusterId, Codec, Config, Member, MembershipConfig, Message, Node, PartitionId,
};
use sessmesh_net::{ClusterCa, QuicSettings, QuicTransport, Transport, TransportConfig};

fn main() {
    let sessions: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let ca = ClusterCa::generate("heal-bench").unwrap();
        let config = Config::default();
        let membership = MembershipConfig::local();
        let mut peers: Vec<Peer> = Vec::new();
        let mut transports: Vec<QuicTransport> = Vec::new();
        for i in 0..3 {
            let name = format!("node-{i}");
            let settings = QuicSettings {
                identity: ca.issue(&name, &[]).unwrap(),
                ca: ca.certificate().clone(),
                cluster: ClusterId::from_name("heal-bench"),
                config: TransportConfig { max_queue_bytes: 256 << 20, ..TransportConfig::default() },
            };
            let (transport, incoming) = QuicTransport::bind("127.0.0.1:0".parse().unwrap(), settings).unwrap();
            let me = Member {
                name,
                addr: transport.local_addr(),
                client_addr: None,
                generation: 1,
                partition_count: config.partition_count,
                replication_factor: 3,
            };
            let node = Node::new(me, &config, membership.clone(), i).unwrap();
            let seeds = transports.first().map(Transport::local_addr).into_iter().collect();
            peers.push(sessmesh::spawn(node, transport.clone(), incoming, seeds));
            transports.push(transport);
        }
        let start = Instant::now();
        while peers[0].members().await.unwrap().len() < 2 || peers[2].members().await.unwrap().len() < 2 {
            assert!(start.elapsed() < Duration::from_secs(20), "no cluster");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        for other in [0, 1] {
            transports[2].faults().block(transports[other].local_addr());
            transports[other].faults().block(transports[2].local_addr());
        }
        let value = Bytes::from(vec![b'v'; 256]);
        let write = |side: &str, i: usize| (format!("session:{side}:{i:08}"), Write::PutField { name: "data".into(), value: value.clone() });
        let written = Instant::now();
        for (peer, side) in [(&peers[0], "a"), (&peers[2], "b")] {
            for i in 0..sessions {
                let (key, w) = write(side, i);
                let outcome = peer.write(key, w, Level::One).await.unwrap();
                assert!(matches!(outcome, Outcome::Written { .. }), "{outcome:?}");
            }
        }
        println!("{} sessions written on each side in {:.1} s", sessions, written.elapsed().as_secs_f64());
        // Optionally hold the partition, past the idle timeout and the
        // suspicion window, so connections close and members are declared down.
        let hold = Duration::from_millis(std::env::var("HOLD_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(0));
        if let Some(rest) = hold.checked_sub(written.elapsed()) {
            tokio::time::sleep(rest).await;
        }

        for transport in &transports {
            transport.faults().unblock_all();
        }
        let healed = Instant::now();
        loop {
            let mut roots = Vec::new();
            for peer in &peers {
                roots.push(peer.digest_roots().await.unwrap());
            }
            if roots.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
            assert!(healed.elapsed() < Duration::from_secs(120), "no convergence within 2 minutes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "heal -> every replica identical: {:.2} s for {} sessions ({} per side)",
            healed.elapsed().as_secs_f64(),
            2 * sessions,
            sessions
        );

        // Digest traffic per partition per round, when replicas agree: one
        // DigestRoots message per co-replica, and no answers.
        let codec = Codec::new(ClusterId::from_name("heal-bench"), config.max_frame_bytes);
        let roots: Vec<(PartitionId, u64)> = peers[0].digest_roots().await.unwrap().into_iter().enumerate().map(|(p, r)| (PartitionId(u32::try_from(p).unwrap()), r)).collect();
        let mut frame = Vec::new();
        codec.encode_frame(&Message::DigestRoots { roots }, &mut frame).unwrap();
        println!(
            "idle anti-entropy: {} bytes per co-replica per round for {} partitions = {:.1} bytes per partition",
            frame.len(),
            config.partition_count,
            frame.len() as f64 / f64::from(config.partition_count)
        );
    });
}
