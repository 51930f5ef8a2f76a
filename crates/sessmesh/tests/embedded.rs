//! The embedded API end to end: peers started by the builder over QUIC on
//! loopback (development mode), every call, errors, status, change events
//! and a graceful shutdown that hands partitions off.
#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

use std::future::Future;
use std::time::{Duration, SystemTime};

use sessmesh::{ChangeKind, Error, Expiry, Level, MemberState, Node};
use sessmesh_core::{Config, MembershipConfig};
use tokio::time::Instant;

fn builder(name: &str) -> sessmesh::NodeBuilder {
    Node::builder()
        .name(name)
        .listen(([127, 0, 0, 1], 0).into())
        .development()
        .membership(MembershipConfig::local())
        .config(Config {
            request_timeout_ms: 1_000,
            anti_entropy_period_ms: 300,
            partition_count: 64,
            ..Config::default()
        })
}

/// Starts `count` peers that join through the first, and waits until each
/// sees all the others.
async fn cluster(count: usize, rf: usize) -> Vec<Node> {
    let mut peers: Vec<Node> = Vec::new();
    for i in 0..count {
        let seeds = peers.first().map(|p| p.me().addr);
        let peer = builder(&format!("peer-{i}"))
            .replication_factor(rf)
            .seeds(seeds)
            .start()
            .await
            .unwrap();
        peers.push(peer);
    }
    for peer in &peers {
        wait_for("every peer to see the others", || async {
            peer.members().await.unwrap().len() == count - 1
        })
        .await;
    }
    peers
}

/// Polls `condition` until it holds; panics after 20 s.
async fn wait_for<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_works_across_peers() {
    let peers = cluster(3, 3).await;
    let (a, b, c) = (&peers[0], &peers[1], &peers[2]);

    a.put("s1", [("user", "ada"), ("cart", "1 book")], Expiry::NEVER)
        .await
        .unwrap();
    let got = b.get("s1").await.unwrap().unwrap();
    assert_eq!(got.field(b"user"), Some(&b"ada"[..]));
    assert_eq!(got.fields().count(), 2);
    assert_eq!(
        c.get_field("s1", "cart").await.unwrap().as_deref(),
        Some(&b"1 book"[..])
    );
    assert_eq!(c.get_field("s1", "none").await.unwrap(), None);

    // Concurrent writes of different fields on two peers both survive.
    let (x, y) = tokio::join!(
        b.put_field("s1", "theme", "dark"),
        c.put_field("s1", "lang", "fr")
    );
    x.unwrap();
    y.unwrap();
    c.delete_field("s1", "cart").await.unwrap();
    let got = a.get("s1").await.unwrap().unwrap();
    let names: Vec<&[u8]> = got.fields().map(|(n, _)| n).collect();
    assert_eq!(names, [&b"lang"[..], b"theme", b"user"]);

    // A whole-value put replaces every field.
    b.put("s1", [("user", "bob")], Expiry::NEVER).await.unwrap();
    assert_eq!(a.get("s1").await.unwrap().unwrap().fields().count(), 1);

    // Logout: gone on every peer, at every level.
    a.delete("s1").await.unwrap();
    for peer in &peers {
        assert!(peer.get("s1").await.unwrap().is_none());
        assert!(peer.at(Level::All).get("s1").await.unwrap().is_none());
    }

    // Expiry: a deadline in the past hides the session at once; clearing it
    // before then keeps it; a short idle limit ends it unless touched.
    a.put_field("s2", "user", "cy").await.unwrap();
    let soon = SystemTime::now() + Duration::from_secs(3600);
    b.expire_at("s2", Some(soon)).await.unwrap();
    let deadline = c.get("s2").await.unwrap().unwrap().deadline_ms().unwrap();
    let expected = soon
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert_eq!(u128::from(deadline), expected);
    b.expire_at("s2", None).await.unwrap();
    assert_eq!(c.get("s2").await.unwrap().unwrap().deadline_ms(), None);
    c.expire_at("s2", Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(a.get("s2").await.unwrap().is_none(), "expired at once");

    a.put(
        "s3",
        [("user", "dee")],
        Expiry::idle_for(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let before = c.get("s3").await.unwrap().unwrap().deadline_ms().unwrap();
    // The touch must be stamped in a later millisecond than the put.
    let written_at = before - 300;
    wait_for("the wall clock to pass the put's millisecond", || async {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            > u128::from(written_at)
    })
    .await;
    b.touch("s3").await.unwrap();
    let after = c.get("s3").await.unwrap().unwrap().deadline_ms().unwrap();
    assert!(
        after > before,
        "a touch pushes the idle deadline back: {before} -> {after}"
    );
    wait_for("the idle session to expire", || async {
        a.get("s3").await.unwrap().is_none()
    })
    .await;
    b.set_max_idle("s4", None).await.unwrap();
    assert!(
        a.get("s4").await.unwrap().is_none(),
        "an expiry write alone makes no session"
    );

    // Level One on a replica reads the local store directly; every peer
    // replicates everything at rf 3, so each sees its own acknowledged write.
    for (i, peer) in peers.iter().enumerate() {
        let key = format!("local-{i}");
        peer.at(Level::All)
            .put_field(key.clone(), "n", i.to_string())
            .await
            .unwrap();
        for reader in &peers {
            let got = reader
                .at(Level::One)
                .get_field(key.clone(), "n")
                .await
                .unwrap();
            assert_eq!(got.as_deref(), Some(i.to_string().as_bytes()));
        }
    }

    // A key over the limit is refused before anything is sent.
    let long = vec![b'k'; 513];
    assert!(matches!(
        a.put_field(long.clone(), "f", "v").await,
        Err(Error::KeyTooLong { len: 513, max: 512 })
    ));
    assert!(matches!(a.get(long).await, Err(Error::KeyTooLong { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_change_events() {
    let peers = cluster(3, 2).await;
    let status = peers[0].status().await.unwrap();
    assert_eq!(status.me.name, "peer-0");
    assert_eq!(status.members.len(), 3);
    assert_eq!(status.partition_count, 64);
    let per_member: usize = status.members.iter().map(|m| m.partitions).sum();
    assert_eq!(per_member, 64 * 2, "each partition has two replicas");
    assert_eq!(status.partitions_owned, status.members[0].partitions);
    wait_for("an anti-entropy round and the Alive state", || async {
        let s = peers[0].status().await.unwrap();
        s.last_anti_entropy.is_some() && s.state == MemberState::Alive
    })
    .await;

    // Peer 0 watches; writes coordinated elsewhere reach it as changes of
    // the keys it replicates.
    let mut changes = peers[0].watch().await.unwrap();
    let mut key = String::new();
    for i in 0.. {
        key = format!("watched-{i}");
        if peers[1]
            .replicas_of(key.clone())
            .await
            .unwrap()
            .contains(&"peer-0".to_owned())
        {
            break;
        }
    }
    peers[1]
        .at(Level::All)
        .put_field(key.clone(), "f", "1")
        .await
        .unwrap();
    peers[2].at(Level::All).delete(key.clone()).await.unwrap();
    let first = changes.recv().await.unwrap();
    let second = changes.recv().await.unwrap();
    assert_eq!(
        (first.key.as_ref(), first.kind),
        (key.as_bytes(), ChangeKind::Updated)
    );
    assert_eq!(
        (second.key.as_ref(), second.kind),
        (key.as_bytes(), ChangeKind::Removed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_hands_every_partition_off() {
    // One copy of each session: whatever the leaving peer holds exists
    // nowhere else until it hands it off.
    let peers = cluster(3, 1).await;
    let keys: Vec<String> = (0..300).map(|i| format!("s{i}")).collect();
    for key in &keys {
        peers[0]
            .put_field(key.clone(), "v", key.clone())
            .await
            .unwrap();
    }
    let held = peers[2].status().await.unwrap().sessions_stored;
    assert!(held > 0, "peer-2 owns some sessions");
    peers[2].shutdown().await.unwrap();
    assert!(matches!(peers[2].status().await, Err(Error::Stopped)));
    for peer in &peers[..2] {
        wait_for("the survivors to drop peer-2", || async {
            peer.members().await.unwrap().len() == 1
        })
        .await;
    }
    for key in &keys {
        let got = peers[1].get_field(key.clone(), "v").await.unwrap();
        assert_eq!(got.as_deref(), Some(key.as_bytes()), "{key} was lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_peer_stores_writes_itself_until_another_replica_joins() {
    // Alone, the peer is every key's only replica: writes are stored on the
    // caller's thread, and watchers still hear of them.
    let alone = builder("first")
        .replication_factor(2)
        .start()
        .await
        .unwrap();
    let mut changes = alone.watch().await.unwrap();
    alone.at(Level::All).put_field("k", "f", "1").await.unwrap();
    let change = changes.recv().await.unwrap();
    assert_eq!(
        (change.key.as_ref(), change.kind),
        (&b"k"[..], ChangeKind::Updated)
    );
    alone.at(Level::All).delete("k").await.unwrap();
    assert_eq!(changes.recv().await.unwrap().kind, ChangeKind::Removed);
    let submitted = alone
        .submit("p", sessmesh::Write::Delete, Level::All)
        .await
        .unwrap();
    submitted.outcome().await.unwrap();

    // With a second replica, a write at All is on both when it returns.
    let second = builder("second")
        .replication_factor(2)
        .seeds([alone.me().addr])
        .start()
        .await
        .unwrap();
    wait_for("the first peer to see the second", || async {
        alone.members().await.unwrap().len() == 1
    })
    .await;
    wait_for("both peers to replicate every partition", || async {
        alone.status().await.unwrap().partitions_owned == 64
            && alone
                .status()
                .await
                .unwrap()
                .members
                .iter()
                .all(|m| m.partitions == 64)
    })
    .await;
    for i in 0..20 {
        let key = format!("after-{i}");
        alone
            .at(Level::All)
            .put_field(key.clone(), "f", "2")
            .await
            .unwrap();
        assert_eq!(
            second
                .at(Level::One)
                .get_field(key, "f")
                .await
                .unwrap()
                .as_deref(),
            Some(&b"2"[..]),
            "a write at All reached the new replica"
        );
    }

    // A stopped peer takes no writes, not even ones it would store itself.
    second.shutdown().await.unwrap();
    alone.shutdown().await.unwrap();
    assert!(matches!(
        alone.put_field("k", "f", "3").await,
        Err(Error::Stopped)
    ));
}

#[tokio::test]
async fn a_peer_whose_seeds_are_all_down_starts_alone_and_serves() {
    // A port nothing listens on: bound, then released.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = builder("alone")
        .seeds([silent])
        .join_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    assert!(node.members().await.unwrap().is_empty());
    // Until it hears from its seed it counts it as a member: one copy is
    // not a quorum of two. The write is kept all the same.
    let quorum = node.put_field("s", "f", "v").await;
    assert!(
        matches!(quorum, Err(Error::TooFewAcks { acks: 1, needed: 2 })),
        "{quorum:?}"
    );
    // Level One is for writes that must go through on any reachable peer.
    node.at(Level::One).put_field("s", "g", "w").await.unwrap();
    let one = node.at(Level::One);
    assert_eq!(
        one.get_field("s", "f").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(
        one.get_field("s", "g").await.unwrap().as_deref(),
        Some(&b"w"[..])
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_builder_names_what_is_wrong() {
    let no_tls = Node::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .start()
        .await;
    assert!(
        matches!(no_tls, Err(Error::Config { setting: "tls", .. })),
        "{no_tls:?}"
    );

    let unreachable = Node::builder()
        .listen(([0, 0, 0, 0], 0).into())
        .development()
        .start()
        .await;
    let Err(Error::Config {
        setting: "advertise",
        reason,
    }) = unreachable
    else {
        panic!("{unreachable:?}");
    };
    assert!(reason.contains("0.0.0.0:0"), "{reason}");

    let partitions = builder("p").partition_count(100).start().await;
    assert!(
        matches!(
            partitions,
            Err(Error::Config {
                setting: "partition_count",
                ..
            })
        ),
        "{partitions:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("ca.pem");
    let files = Node::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .tls_files(
            &missing,
            dir.path().join("node.pem"),
            dir.path().join("node.key"),
        )
        .start()
        .await;
    let Err(error @ Error::Certificate { .. }) = files else {
        panic!("{files:?}");
    };
    assert!(error.to_string().contains("ca.pem"), "{error}");

    let ca = sessmesh_net::ClusterCa::generate("test").unwrap();
    let identity = ca.issue("node-a", &["127.0.0.1".parse().unwrap()]).unwrap();
    let mismatch = Node::builder()
        .name("node-b")
        .listen(([127, 0, 0, 1], 0).into())
        .tls(ca.certificate().clone(), identity)
        .start()
        .await;
    let Err(Error::Config {
        setting: "name",
        reason,
    }) = mismatch
    else {
        panic!("{mismatch:?}");
    };
    assert!(
        reason.contains("node-a") && reason.contains("node-b"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_delete_comes_after_it_though_the_key_became_this_peers_alone() {
    // The delete reads both replicas before it is stamped; with the link to
    // the second cut, that read waits. Meanwhile the first peer sees the
    // second down and becomes the key's only replica, so a write handed
    // over now could be stored on the caller's thread, stamped before the
    // delete that came first. It must come after it.
    let start = |name: &str| {
        builder(name).replication_factor(2).config(Config {
            request_timeout_ms: 8_000,
            partition_count: 64,
            ..Config::default()
        })
    };
    let first = start("first").start().await.unwrap();
    let second = start("second")
        .seeds([first.me().addr])
        .start()
        .await
        .unwrap();
    wait_for(
        "the first peer to replicate the key with the second",
        || async { first.replicas_of("k").await.unwrap().len() == 2 },
    )
    .await;
    first.at(Level::All).put_field("k", "f", "1").await.unwrap();

    let faults = first.faults().unwrap();
    faults.block(second.me().addr);
    let deleted = first
        .submit("k", sessmesh::Write::Delete, Level::All)
        .await
        .unwrap();
    wait_for("the first peer to be the key's only replica", || async {
        first.replicas_of("k").await.unwrap() == ["first"]
    })
    .await;
    let write = sessmesh::Write::PutField {
        name: "f".into(),
        value: "2".into(),
    };
    let rewritten = first.submit("k", write, Level::One).await.unwrap();
    faults.unblock_all();
    // Each answers once its read or replicas answer, or it times out.
    let _ = deleted.outcome().await;
    let _ = rewritten.outcome().await;
    let got = first.at(Level::One).get_field("k", "f").await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"2"[..]), "the later write was lost");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_at_another_address_leaves_nothing_held_for_the_old_one() {
    let mut peers = cluster(2, 2).await;
    let second = peers.pop().unwrap();
    let first = peers.pop().unwrap();
    first.put_field("k", "f", "v").await.unwrap();
    let old = second.me().addr;
    let linked = |peer: &Node, addr| {
        peer.transport_stats()
            .is_some_and(|(_, peers)| peers.iter().any(|p| p.addr == addr))
    };
    assert!(linked(&first, old));
    // peer-1 stops at once (no goodbye) and comes back on another port.
    let mut events = first.subscribe();
    drop(second);
    let again = builder("peer-1")
        .replication_factor(2)
        .seeds([first.me().addr])
        .start()
        .await
        .unwrap();
    let new = again.me().addr;
    assert_ne!(new, old);
    wait_for("peer-0 to see peer-1 at its new address", || async {
        first.members().await.unwrap().iter().any(|m| m.addr == new)
    })
    .await;
    // What peer-0 held for the old address (its queue, its connection, its
    // redials) is gone: one link, to the new one.
    let links = |peer: &Node| peer.transport_stats().map(|(stats, _)| stats.links);
    wait_for("peer-0 to drop the old address", || async {
        links(&first) == Some(1) && linked(&first, new)
    })
    .await;
    // Membership declares the old incarnation down, and goes on announcing
    // to members down; none of that reaches the old address any more.
    loop {
        match events.recv().await.unwrap() {
            sessmesh::NodeEvent::Member(sessmesh::MemberEvent::Down(m)) if m.addr == old => break,
            _ => {}
        }
    }
    let announce = Duration::from_millis(3 * MembershipConfig::local().announce_to_down_period_ms);
    let watched = Instant::now();
    while watched.elapsed() < announce {
        assert_eq!(links(&first), Some(1), "a link to the old address again");
        // A look every 10 ms over the window.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_a_memory_bound_evict_from_every_replica_and_say_so() {
    const BOUND: usize = 96 * 1024;
    let mut peers: Vec<Node> = Vec::new();
    for i in 0..2 {
        let seeds = peers.first().map(|p| p.me().addr);
        let peer = builder(&format!("peer-{i}"))
            .replication_factor(2)
            .max_memory(BOUND)
            .eviction_policy(sessmesh::EvictionPolicy::AllKeysLru)
            .seeds(seeds)
            .start()
            .await
            .unwrap();
        peers.push(peer);
    }
    wait_for("the peers to see each other", || async {
        peers[1].members().await.unwrap().len() == 1
    })
    .await;
    let mut changes = peers[1].watch().await.unwrap();
    // About four times what a peer holds, every write taken.
    let value = "v".repeat(500);
    for i in 0..800 {
        peers[i % 2]
            .put_field(format!("s:{i}"), "f", value.clone())
            .await
            .unwrap();
    }
    let mut evicted = 0;
    while let Ok(change) = changes.try_recv() {
        evicted += usize::from(change.kind == ChangeKind::Evicted);
    }
    assert!(evicted > 100, "peer 1 saw {evicted} evictions");
    // Each ends under its bound (what the last writes left over, a sweep
    // period evicts).
    let mut coordinated = 0;
    for peer in &peers {
        wait_for("the peer to be under its bound", || async {
            peer.status().await.unwrap().memory.evicted_for() <= BOUND
        })
        .await;
        coordinated += peer.status().await.unwrap().memory.evicted_keys;
    }
    assert!(coordinated >= 400, "{coordinated} evicted");
    // The newest sessions are there, on both.
    for peer in &peers {
        let newest = peer.get("s:799").await.unwrap().unwrap();
        assert_eq!(newest.field(b"f"), Some(value.as_bytes()));
    }
}

/// What the fake allocator of the probe test says it holds.
static ALLOCATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1 << 20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_memory_probe_measures_is_reported_and_not_evicted_for() {
    use std::sync::atomic::Ordering;
    const BOUND: usize = 1 << 20;
    let peer = builder("probed")
        .max_memory(BOUND)
        .memory_probe(|| Some(ALLOCATED.load(Ordering::Relaxed)))
        .start()
        .await
        .unwrap();
    peer.put_field("s:0", "f", "v").await.unwrap();
    // The process grows by 8 MiB the peer does not count: queued messages,
    // say.
    ALLOCATED.fetch_add(8 << 20, Ordering::Relaxed);
    wait_for("the peer to report what the probe measured", || async {
        peer.status().await.unwrap().memory.other >= 7 << 20
    })
    .await;
    let memory = peer.status().await.unwrap().memory;
    assert!(memory.used() > BOUND, "{memory:?}");
    assert!(memory.evicted_for() < BOUND, "{memory:?}");
    // Under noeviction, writes that add go on: the bound is on the count.
    peer.put_field("s:1", "f", "v").await.unwrap();
    assert_eq!(peer.status().await.unwrap().memory.evicted_keys, 0);
}
