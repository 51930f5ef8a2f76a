//! Operations decided by consensus, through the embedded peer's handle:
//! three in-memory peers in paused time.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

use std::collections::BTreeSet;
use std::time::Duration;

use sessmesh::{Error, Expiry, Node as Peer};
use sessmesh_core::ClusterId;
use sessmesh_net::TransportConfig;
use sessmesh_net::mem::MemNetwork;
use tokio::time::Instant;

mod support;

use support::core_node;

/// Three peers that see each other.
async fn cluster() -> Vec<Peer> {
    // Leases run out by the peers' wall clock: have it follow virtual time.
    sessmesh::simulate_on_this_thread(1_700_000_000_000);
    let net = MemNetwork::new(7);
    let mut peers: Vec<Peer> = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let name = format!("node-{i}");
        let (transport, incoming) =
            net.join(&name, ClusterId::from_name("t"), TransportConfig::default());
        let addr = sessmesh_net::Transport::local_addr(&transport);
        let seeds = addrs.first().copied().into_iter().collect();
        peers.push(sessmesh::spawn(
            core_node(&name, addr, i),
            transport,
            incoming,
            seeds,
        ));
        addrs.push(addr);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for peer in &peers {
            let seen: BTreeSet<String> = peer
                .members()
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.name)
                .collect();
            all &= seen.len() == 2;
        }
        if all {
            break;
        }
        assert!(Instant::now() < deadline, "the peers did not meet");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every peer decides a read by consensus: each has learned its
    // partitions' state from the others.
    for peer in &peers {
        loop {
            if peer.cas("ready", sessmesh::Cas::Read).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "no consensus among the peers");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    peers
}

#[tokio::test(start_paused = true)]
async fn of_peers_racing_to_create_a_session_one_wins() {
    let peers = cluster().await;
    for round in 0..10 {
        let key = format!("session:{round}");
        let races: Vec<_> = peers
            .iter()
            .enumerate()
            .map(|(i, peer)| {
                let (peer, key) = (peer.clone(), key.clone());
                tokio::spawn(async move {
                    peer.put_if_absent(key, [("user", format!("user-{i}"))], Expiry::NEVER)
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for race in races {
            results.push(race.await.unwrap());
        }
        let winners = results.iter().filter(|r| matches!(r, Ok(true))).count();
        assert_eq!(winners, 1, "{key}: {results:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn increments_from_every_peer_add_up_and_refuse_a_non_integer() {
    let peers = cluster().await;
    let increments: Vec<_> = (0..30)
        .map(|i| {
            let peer = peers[i % 3].clone();
            tokio::spawn(async move { peer.increment("hits", "n", 2).await })
        })
        .collect();
    let mut results = Vec::new();
    for increment in increments {
        results.push(increment.await.unwrap());
    }
    let applied = results.iter().filter(|r| r.is_ok()).count() as i64;
    let last = peers[1].increment("hits", "n", 0).await.unwrap();
    assert_eq!(last, 2 * applied, "{results:?}");
    peers[0]
        .put("text", [("n", "abc")], Expiry::NEVER)
        .await
        .unwrap();
    let refused = peers[2].increment("text", "n", 1).await;
    assert!(
        matches!(&refused, Err(Error::Refused(why)) if why.contains("not an integer")),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lock_has_one_holder_and_tokens_grow_across_unlock_and_expiry() {
    let peers = cluster().await;
    let ttl = Duration::from_secs(5);
    let first = peers[0].try_lock("lock:a", ttl).await.unwrap().unwrap();
    assert!(
        peers[1].try_lock("lock:a", ttl).await.unwrap().is_none(),
        "held"
    );
    let renewed = peers[2].renew(&first, ttl).await.unwrap();
    assert_eq!(renewed.token, first.token);
    peers[1].unlock(renewed).await.unwrap();
    let second = peers[1].try_lock("lock:a", ttl).await.unwrap().unwrap();
    assert!(second.token > first.token, "{second:?} after {first:?}");
    // The second lease runs out; the old holder can neither renew nor unlock it.
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    let third = peers[2]
        .lock("lock:a", ttl, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(third.token > second.token);
    assert!(matches!(
        peers[1].renew(&second, ttl).await,
        Err(Error::NotHeld { .. })
    ));
    assert!(matches!(
        peers[0].unlock(second.clone()).await,
        Err(Error::NotHeld { .. })
    ));
    // Waiting for a held lock gives up at the deadline.
    let waited = peers[0]
        .lock("lock:a", ttl, Duration::from_millis(500))
        .await;
    assert!(
        matches!(waited, Err(Error::LockTimeout { .. })),
        "{waited:?}"
    );
}
