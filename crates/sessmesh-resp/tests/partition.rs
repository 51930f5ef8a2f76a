//! Redis commands through a node cut off from the rest of its cluster:
//! three in-memory peers in paused time, each with the command handler.
//! A logout (`DEL`) or a field update (`HSET`, `HDEL`) made on the cut-off
//! side is written whatever its preliminary read returns, and holds after
//! the heal; a cut-off node does not call its one copy a quorum.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sessmesh::Node as Peer;
use sessmesh_core::{ClusterId, Config, Member, MembershipConfig, Node};
use sessmesh_net::TransportConfig;
use sessmesh_net::mem::MemNetwork;
use sessmesh_resp::commands::Command;
use sessmesh_resp::{Handler, Reply, Settings};
use tokio::time::Instant;

struct Cluster {
    net: MemNetwork,
    addrs: Vec<SocketAddr>,
    handlers: Vec<Handler>,
}

fn core(name: &str, addr: SocketAddr, seed: u64) -> Node {
    let config = Config::default();
    let me = Member {
        name: name.into(),
        addr,
        client_addr: None,
        generation: 1,
        partition_count: config.partition_count,
        replication_factor: u32::try_from(config.replication_factor).unwrap(),
    };
    Node::new(me, &config, MembershipConfig::local(), seed).unwrap()
}

impl Cluster {
    /// Three peers that see each other.
    async fn start() -> Cluster {
        let net = MemNetwork::new(7);
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut peers = Vec::new();
        for i in 0..3 {
            let name = format!("node-{i}");
            let (transport, incoming) =
                net.join(&name, ClusterId::from_name("t"), TransportConfig::default());
            let addr = sessmesh_net::Transport::local_addr(&transport);
            let seeds = addrs.first().copied().into_iter().collect();
            peers.push(sessmesh::spawn(
                core(&name, addr, i),
                transport,
                incoming,
                seeds,
            ));
            addrs.push(addr);
        }
        let handlers = peers
            .into_iter()
            .map(|p| Handler::new(p, Settings::default()))
            .collect();
        let cluster = Cluster {
            net,
            addrs,
            handlers,
        };
        cluster.wait_for_members(&[3, 3, 3]).await;
        cluster
    }

    fn peer(&self, i: usize) -> &Peer {
        self.handlers[i].node()
    }

    /// Waits until node `i` sees `counts[i]` members, itself included.
    async fn wait_for_members(&self, counts: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut seen = Vec::new();
            for i in 0..counts.len() {
                seen.push(self.peer(i).members().await.unwrap().len() + 1);
            }
            if seen == counts {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members seen: {seen:?}, wanted {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run(&self, node: usize, args: &[&str]) -> Reply {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.to_string())).collect();
        let mut client = self.handlers[node].client();
        let command = Command::lookup(&args[0]);
        self.handlers[node]
            .execute(&mut client, command, &args)
            .await
            .0
    }

    fn cut_off(&self, node: usize) {
        for other in (0..self.addrs.len()).filter(|&o| o != node) {
            self.net.cut(self.addrs[node], self.addrs[other]);
        }
    }

    /// Waits until `args` gives `expected` on every node.
    async fn wait_everywhere(&self, args: &[&str], expected: &Reply) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut replies = Vec::new();
            for node in 0..self.handlers.len() {
                replies.push(self.run(node, args).await);
            }
            if replies.iter().all(|r| r == expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} gives {replies:?}, wanted {expected:?} everywhere"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn is_error(reply: &Reply, code: &str) -> bool {
    matches!(reply, Reply::Error(text) if text.starts_with(code))
}

#[tokio::test(start_paused = true)]
async fn removals_and_field_writes_on_the_cut_off_side_hold_after_the_heal() {
    let cluster = Cluster::start().await;
    assert_eq!(cluster.run(0, &["SET", "old", "v"]).await, Reply::Ok);
    assert_eq!(
        cluster.run(0, &["HSET", "cart", "a", "1", "b", "2"]).await,
        Reply::Int(2)
    );

    // node-0 is cut off; nobody has declared anybody down yet.
    cluster.cut_off(0);
    // Created on the majority side: node-0 never sees it.
    assert_eq!(cluster.run(1, &["SET", "new", "v"]).await, Reply::Ok);
    // Each of these reads first and cannot reach a quorum; the removal or
    // the field is written anyway, and the reply says that too few copies
    // acknowledged it.
    let del = cluster.run(0, &["DEL", "new", "old"]).await;
    assert!(is_error(&del, "NOREPLICAS"), "{del:?}");
    let hset = cluster.run(0, &["HSET", "cart", "c", "3"]).await;
    assert!(is_error(&hset, "NOREPLICAS"), "{hset:?}");
    let hdel = cluster.run(0, &["HDEL", "cart", "a"]).await;
    assert!(is_error(&hdel, "NOREPLICAS"), "{hdel:?}");

    // Once node-0 has declared the others down, it is the only replica it
    // reaches: a quorum of three copies is still two, and it says so at once.
    cluster.wait_for_members(&[1, 2, 2]).await;
    let before = Instant::now();
    let set = cluster.run(0, &["SET", "alone", "v"]).await;
    assert!(is_error(&set, "NOREPLICAS"), "{set:?}");
    assert!(
        before.elapsed() < Duration::from_millis(100),
        "answered at once, not at the request deadline: {:?}",
        before.elapsed()
    );
    // A delete of a session it never saw is written all the same.
    assert_eq!(cluster.run(1, &["SET", "later", "v"]).await, Reply::Ok);
    let del = cluster.run(0, &["DEL", "later"]).await;
    assert!(is_error(&del, "NOREPLICAS"), "{del:?}");

    cluster.net.heal_all();
    cluster.wait_for_members(&[3, 3, 3]).await;
    for key in ["old", "new", "later"] {
        cluster
            .wait_everywhere(&["EXISTS", key], &Reply::Int(0))
            .await;
    }
    cluster
        .wait_everywhere(&["GET", "alone"], &Reply::bulk("v"))
        .await;
    let cart = Reply::Map(vec![
        (Reply::bulk("b"), Reply::bulk("2")),
        (Reply::bulk("c"), Reply::bulk("3")),
    ]);
    cluster.wait_everywhere(&["HGETALL", "cart"], &cart).await;
}
