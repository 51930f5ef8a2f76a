//! Five sessmesh peers in one process, over real QUIC on loopback: discovery,
//! replication, per-field merges, a network cut with conflicting writes and a
//! logout on both sides, the heal, and a crashed peer. Each step says the
//! level it uses: Quorum (a majority of a key's three copies) unless it says
//! One (any replica that is up).
//!
//! ```text
//! cargo run --release --example demo
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sessmesh::{Level, Node, SessionData};
use sessmesh_core::{Config, MembershipConfig};

const PEERS: usize = 5;

fn say(start: Instant, what: &str) {
    println!("[{:>6.2} s] {what}", start.elapsed().as_secs_f64());
}

fn field(session: &SessionData, name: &str) -> Option<String> {
    session
        .field(name.as_bytes())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn show(session: &Option<SessionData>) -> String {
    match session {
        Some(s) => s
            .fields()
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => "(no session)".into(),
    }
}

/// Reads at the peer's default level, Quorum.
async fn read(peer: &Node, key: &str) -> Result<Option<SessionData>, String> {
    peer.get(key.to_owned())
        .await
        .map_err(|e| format!("read of {key} failed: {e}"))
}

/// Waits until every listed peer sees exactly `count` peers, itself included.
async fn wait_for_members(peers: &[&Node], count: usize, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for peer in peers {
            all &= peer.members().await.map(|m| m.len() + 1).ok() == Some(count);
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
    peers: &[&Node],
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
                .map_err(|e| e.to_string())?;
            for peer in peers {
                if replicas.contains(&peer.me().name) {
                    let copy = peer
                        .local_session(key.to_string())
                        .await
                        .map_err(|e| e.to_string())?;
                    copies.insert(format!("{key}: {copy:?}"));
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

/// Cuts (or with `cut == false`, heals) every link between the two sides.
fn cut(left: &[&Node], right: &[&Node], cut: bool) {
    for a in left {
        for b in right {
            for (x, y) in [(a, b), (b, a)] {
                if let Some(faults) = x.faults() {
                    if cut {
                        faults.block(y.me().addr);
                    } else {
                        faults.unblock(y.me().addr);
                    }
                }
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let start = Instant::now();
    say(
        start,
        "development mode: the peers share a throwaway cluster CA made for this run (production peers load one made by `sessmesh certs`)",
    );
    let config = Config {
        request_timeout_ms: 1_000,
        anti_entropy_period_ms: 1_000,
        ..Config::default()
    };

    let mut peers: Vec<Node> = Vec::new();
    for i in 0..PEERS {
        let seeds = peers.first().map(|p| p.me().addr);
        let peer = Node::builder()
            .name(format!("peer-{i}"))
            .listen(([127, 0, 0, 1], 0).into())
            .seeds(seeds)
            .development()
            .config(config.clone())
            .membership(MembershipConfig::local())
            .start()
            .await
            .map_err(|e| e.to_string())?;
        peers.push(peer);
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

    let failed = |e: sessmesh::Error| e.to_string();
    peers[0]
        .put_field("session:ada", "user", "ada")
        .await
        .map_err(failed)?;
    peers[0]
        .put_field("session:bob", "user", "bob")
        .await
        .map_err(failed)?;
    say(
        start,
        "peer-0 wrote session:ada and session:bob at Quorum (3 copies each, answered once 2 acknowledged)",
    );
    say(
        start,
        &format!(
            "peer-3 reads session:ada at Quorum: {}",
            show(&read(&peers[3], "session:ada").await?)
        ),
    );

    let (a, b) = tokio::join!(
        peers[1].put_field("session:ada", "cart", "1 book"),
        peers[2].put_field("session:ada", "theme", "dark")
    );
    a.map_err(failed)?;
    b.map_err(failed)?;
    say(
        start,
        "at the same time, peer-1 set ada's cart and peer-2 set ada's theme, both at Quorum",
    );
    say(
        start,
        &format!(
            "peer-4 reads session:ada at Quorum: {}",
            show(&read(&peers[4], "session:ada").await?)
        ),
    );

    let (left, right) = ([&peers[0], &peers[1]], [&peers[2], &peers[3], &peers[4]]);
    cut(&left, &right, true);
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
    // Quorum needs two of a key's three copies on whichever side the
    // client is (a side of one peer could not give it); writes that must go
    // on wherever the client is use level One, which needs one.
    peers[0]
        .at(Level::One)
        .put_field("session:ada", "theme", "light")
        .await
        .map_err(failed)?;
    peers[3]
        .at(Level::One)
        .put_field("session:ada", "cart", "3 books")
        .await
        .map_err(failed)?;
    peers[3]
        .at(Level::One)
        .delete("session:bob")
        .await
        .map_err(failed)?;
    say(
        start,
        "at level One: left side, ada's theme := light; right side, ada's cart := 3 books, and bob logs out",
    );
    for (side, peer) in [("left ", &peers[0]), ("right", &peers[3])] {
        let seen = match peer.at(Level::One).get("session:ada").await {
            Ok(session) => show(&session),
            Err(e) => format!("({e})"),
        };
        say(
            start,
            &format!("  the {side} side reads ada at One: {seen}"),
        );
    }

    cut(&left, &right, false);
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
    say(
        start,
        &format!("every replica agrees; ada, read at Quorum: {}", show(&ada)),
    );
    say(start, &format!("bob: {} (the logout held)", show(&bob)));
    let merged = ada.as_ref().ok_or("ada is missing")?;
    let user = field(merged, "user");
    if field(merged, "theme").as_deref() != Some("light")
        || field(merged, "cart").as_deref() != Some("3 books")
    {
        return Err("the merge lost a side's update".into());
    }
    if user.as_deref() != Some("ada") {
        return Err("ada lost her user field".into());
    }
    if bob.is_some() {
        return Err("bob came back".into());
    }

    // Kill peer-4: its socket goes silent and its task stops.
    let killed = peers.pop().ok_or("no peers")?;
    cut(&[&killed], &peers.iter().collect::<Vec<_>>(), true);
    drop(killed);
    say(start, "peer-4 is killed");
    let served = read(&peers[2], "session:ada").await?;
    say(
        start,
        &format!(
            "peer-2 still serves ada at Quorum from the other replicas: {}",
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
