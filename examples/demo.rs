//! Five sessmesh peers in one process, over real QUIC on loopback: discovery,
//! replication, per-field merges, a network cut with conflicting writes and a
//! logout on both sides, the heal, and a crashed peer.
//!
//! ```text
//! cargo run --release --example demo
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sessmesh::{Handle, Level, Outcome, Session, Write};
use sessmesh_core::{ClusterId, Config, Member, MembershipConfig, Node};
use sessmesh_net::{ClusterCa, QuicSettings, QuicTransport, Transport, TransportConfig};

const PEERS: usize = 5;

fn say(start: Instant, what: &str) {
    println!("[{:>6.2} s] {what}", start.elapsed().as_secs_f64());
}

fn field(session: &Session, name: &str) -> Option<String> {
    let (_, register) = session
        .registers()
        .find(|(n, _)| n.as_ref() == name.as_bytes())?;
    register
        .val
        .as_ref()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn show(session: &Option<Session>) -> String {
    match session {
        Some(s) if !s.is_tombstone() => s
            .registers()
            .filter_map(|(n, r)| {
                Some(format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(r.val.as_ref()?)
                ))
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "(no session)".into(),
    }
}

async fn put(
    peer: &Handle,
    key: &str,
    name: &'static str,
    value: &str,
    level: Level,
) -> Result<Outcome, String> {
    let write = Write::PutField {
        name: name.into(),
        value: value.to_owned().into(),
    };
    peer.write(key.to_owned(), write, level)
        .await
        .ok_or_else(|| "the peer stopped".to_string())
}

async fn read(peer: &Handle, key: &str) -> Result<Option<Session>, String> {
    match peer.read(key.to_owned(), Level::Quorum).await {
        Some(Outcome::Read(session)) => Ok(session),
        other => Err(format!("read of {key} failed: {other:?}")),
    }
}

/// Waits until every listed peer sees exactly `count` peers, itself included.
async fn wait_for_members(peers: &[&Handle], count: usize, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for peer in peers {
            all &= peer.members().await.map(|m| m.len() + 1) == Some(count);
        }
        if all {
            return Ok(());
        }
        if start.elapsed() > within {
            return Err(format!(
                "peers did not see {count} members within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the replicas of each key hold the same copy of it.
async fn wait_for_agreement(
    peers: &[&Handle],
    keys: &[&str],
    within: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut copies = BTreeSet::new();
        for key in keys {
            let replicas = peers[0]
                .replicas_of(key.to_string())
                .await
                .ok_or("the peer stopped")?;
            for peer in peers {
                let name = peer.me().await.ok_or("the peer stopped")?.name;
                if replicas.contains(&name) {
                    copies.insert(format!(
                        "{key}: {:?}",
                        peer.local_session(key.to_string()).await
                    ));
                }
            }
        }
        if copies.len() == keys.len() {
            return Ok(());
        }
        if start.elapsed() > within {
            return Err(format!("replicas still differ after {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let start = Instant::now();
    let ca = ClusterCa::generate("demo").map_err(|e| e.to_string())?;
    say(
        start,
        "development mode: generated a throwaway cluster CA for this run (production nodes load one made by `sessmesh certs`)",
    );
    let config = Config {
        request_timeout_ms: 1_000,
        anti_entropy_period_ms: 1_000,
        ..Config::default()
    };

    let mut peers = Vec::new();
    let mut transports: Vec<QuicTransport> = Vec::new();
    for i in 0..PEERS {
        let name = format!("peer-{i}");
        let settings = QuicSettings {
            identity: ca
                .issue(&name, &["127.0.0.1".parse().map_err(|_| "address")?])
                .map_err(|e| e.to_string())?,
            ca: ca.certificate().clone(),
            cluster: ClusterId::from_name("demo"),
            config: TransportConfig::default(),
        };
        let (transport, incoming) =
            QuicTransport::bind(([127, 0, 0, 1], 0).into(), settings).map_err(|e| e.to_string())?;
        let me = Member {
            name,
            addr: transport.local_addr(),
            client_addr: None,
            generation: 1,
            partition_count: config.partition_count,
            replication_factor: 3,
        };
        let node = Node::new(me, &config, MembershipConfig::local(), i as u64)
            .map_err(|e| e.to_string())?;
        let seeds = transports
            .first()
            .map(Transport::local_addr)
            .into_iter()
            .collect();
        peers.push(sessmesh::spawn(node, transport.clone(), incoming, seeds));
        transports.push(transport);
    }
    say(
        start,
        &format!(
            "started {PEERS} peers over QUIC with mutual TLS on 127.0.0.1; each knows only peer-0's address"
        ),
    );
    wait_for_members(
        &peers.iter().collect::<Vec<_>>(),
        PEERS,
        Duration::from_secs(20),
    )
    .await?;
    say(start, "every peer discovered every other by gossip");

    put(&peers[0], "session:ada", "user", "ada", Level::Quorum).await?;
    put(&peers[0], "session:bob", "user", "bob", Level::Quorum).await?;
    say(
        start,
        "peer-0 wrote session:ada and session:bob (3 replicas each)",
    );
    say(
        start,
        &format!(
            "peer-3 reads session:ada: {}",
            show(&read(&peers[3], "session:ada").await?)
        ),
    );

    let (a, b) = tokio::join!(
        put(&peers[1], "session:ada", "cart", "1 book", Level::Quorum),
        put(&peers[2], "session:ada", "theme", "dark", Level::Quorum)
    );
    a?;
    b?;
    say(
        start,
        "at the same time, peer-1 set ada's cart and peer-2 set ada's theme",
    );
    say(
        start,
        &format!(
            "peer-4 reads session:ada: {}",
            show(&read(&peers[4], "session:ada").await?)
        ),
    );

    let sides = ([0usize, 1], [2usize, 3, 4]);
    for &x in &sides.0 {
        for &y in &sides.1 {
            transports[x].faults().block(transports[y].local_addr());
            transports[y].faults().block(transports[x].local_addr());
        }
    }
    say(
        start,
        "the network is cut in two: {peer-0, peer-1} | {peer-2, peer-3, peer-4}",
    );
    wait_for_members(&[&peers[0], &peers[1]], 2, Duration::from_secs(10)).await?;
    wait_for_members(
        &[&peers[2], &peers[3], &peers[4]],
        3,
        Duration::from_secs(10),
    )
    .await?;
    say(
        start,
        "each side has declared the other down, and goes on serving",
    );
    put(&peers[0], "session:ada", "theme", "light", Level::One).await?;
    put(&peers[3], "session:ada", "cart", "3 books", Level::One).await?;
    peers[3]
        .write("session:bob".to_owned(), Write::Delete, Level::One)
        .await
        .ok_or("the peer stopped")?;
    say(
        start,
        "left side: ada's theme := light; right side: ada's cart := 3 books, and bob logs out",
    );
    for (side, peer) in [("left ", &peers[0]), ("right", &peers[3])] {
        let seen = match peer.read("session:ada".to_owned(), Level::One).await {
            Some(Outcome::Read(session)) => show(&session),
            _ => "(no replica of ada on this side)".into(),
        };
        say(start, &format!("  the {side} side reads ada: {seen}"));
    }

    for transport in &transports {
        transport.faults().unblock_all();
    }
    say(start, "the network heals");
    wait_for_members(
        &peers.iter().collect::<Vec<_>>(),
        PEERS,
        Duration::from_secs(30),
    )
    .await?;
    say(start, "the two sides find each other again");
    wait_for_agreement(
        &peers.iter().collect::<Vec<_>>(),
        &["session:ada", "session:bob"],
        Duration::from_secs(30),
    )
    .await?;
    let ada = read(&peers[1], "session:ada").await?;
    let bob = read(&peers[1], "session:bob").await?;
    say(start, &format!("every replica agrees; ada: {}", show(&ada)));
    say(start, &format!("bob: {} (the logout held)", show(&bob)));
    let merged = ada.as_ref().ok_or("ada is missing")?;
    if field(merged, "theme").as_deref() != Some("light")
        || field(merged, "cart").as_deref() != Some("3 books")
    {
        return Err("the merge lost a side's update".into());
    }
    if bob.is_some_and(|b| !b.is_tombstone()) {
        return Err("bob came back".into());
    }

    // Kill peer-4: its socket goes silent and its task stops.
    for other in 0..PEERS {
        transports[4].faults().block(transports[other].local_addr());
    }
    let killed = peers.pop().ok_or("no peers")?;
    drop(killed);
    say(start, "peer-4 is killed");
    let served = read(&peers[2], "session:ada").await?;
    say(
        start,
        &format!(
            "peer-2 still serves ada from the other replicas: {}",
            show(&served)
        ),
    );
    wait_for_members(
        &peers.iter().collect::<Vec<_>>(),
        PEERS - 1,
        Duration::from_secs(10),
    )
    .await?;
    say(start, "the survivors agree peer-4 is gone");
    println!(
        "converged: {PEERS} peers, a cut, a heal and a crash, in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
