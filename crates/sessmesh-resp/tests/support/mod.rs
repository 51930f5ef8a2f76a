//! Three in-memory peers in paused time, each with the command handler,
//! for the tests of Redis commands across a cluster.

#![allow(dead_code, reason = "each test file uses its own part")]

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

pub(crate) struct Cluster {
    pub(crate) net: MemNetwork,
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) handlers: Vec<Handler>,
}

fn core(name: &str, addr: SocketAddr, seed: u64, replication_factor: usize) -> Node {
    let config = Config {
        replication_factor,
        ..Config::default()
    };
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
    /// Three peers that see each other, each key on all three.
    pub(crate) async fn start() -> Cluster {
        Cluster::start_with_copies(3).await
    }

    /// Three peers that see each other, each key on `copies` of them.
    pub(crate) async fn start_with_copies(copies: usize) -> Cluster {
        // Leases and expiries go by the peers' wall clock: have it follow
        // virtual time.
        sessmesh::simulate_on_this_thread(1_700_000_000_000);
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
                core(&name, addr, i, copies),
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

    pub(crate) fn peer(&self, i: usize) -> &Peer {
        self.handlers[i].node()
    }

    /// Waits until node `i` sees `counts[i]` members, itself included.
    pub(crate) async fn wait_for_members(&self, counts: &[usize]) {
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

    /// Runs `args` on node `node`, on a connection of its own.
    pub(crate) async fn run(&self, node: usize, args: &[&str]) -> Reply {
        let mut client = self.handlers[node].client();
        self.run_as(node, &mut client, args).await
    }

    /// Runs `args` on node `node`, on the connection `client` (one of
    /// that node's: `self.handlers[node].client()`).
    pub(crate) async fn run_as(
        &self,
        node: usize,
        client: &mut sessmesh_resp::Client,
        args: &[&str],
    ) -> Reply {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.to_string())).collect();
        let command = Command::lookup(&args[0]);
        self.handlers[node].execute(client, command, &args).await.0
    }

    pub(crate) fn cut_off(&self, node: usize) {
        for other in (0..self.addrs.len()).filter(|&o| o != node) {
            self.net.cut(self.addrs[node], self.addrs[other]);
        }
    }

    /// Waits until `args` gives `expected` on every node.
    pub(crate) async fn wait_everywhere(&self, args: &[&str], expected: &Reply) {
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

/// A bulk string reply holding `text`.
pub(crate) fn bulk(text: &str) -> Reply {
    Reply::Bulk(Bytes::from(text.to_owned()))
}

pub(crate) fn is_error(reply: &Reply, code: &str) -> bool {
    matches!(reply, Reply::Error(text) if text.starts_with(code))
}
