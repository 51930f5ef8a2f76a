//! Peers driven by the real runtime task, over each transport: the in-memory
//! twin (in paused time), QUIC on loopback, and QUIC over turmoil.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use sessmesh::{MemberEvent, Node as Peer, NodeEvent};
use sessmesh_core::{ClusterId, Config, Member, MembershipConfig, Node};
use sessmesh_net::mem::MemNetwork;
use sessmesh_net::{ClusterCa, QuicSettings, QuicTransport, Transport, TransportConfig};
use tokio::time::Instant;

mod support;

use support::core_node;

/// The names each live peer sees, itself included.
async fn views(peers: &[Option<Peer>]) -> Vec<BTreeSet<String>> {
    let mut views = Vec::new();
    for peer in peers.iter().flatten() {
        let mut view: BTreeSet<String> = peer
            .members()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        view.insert(peer.me().name.clone());
        views.push(view);
    }
    views
}

/// Waits until every live peer sees exactly `expected`; returns how long it took.
async fn wait_for_view(
    peers: &[Option<Peer>],
    expected: &BTreeSet<String>,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let views = views(peers).await;
        if views.iter().all(|v| v == expected) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "no single view within {within:?}: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(range: impl Iterator<Item = usize>) -> BTreeSet<String> {
    range.map(|i| format!("node-{i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn in_memory_peers_converge_and_see_a_crash_and_a_leave() {
    let net = MemNetwork::new(1);
    let mut peers = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..5 {
        let (transport, incoming) = net.join(
            &format!("node-{i}"),
            ClusterId::from_name("t"),
            TransportConfig::default(),
        );
        let addr = transport.local_addr();
        let seeds = addrs.first().copied().into_iter().collect();
        peers.push(Some(sessmesh::spawn(
            core_node(&format!("node-{i}"), addr, i as u64),
            transport,
            incoming,
            seeds,
        )));
        addrs.push(addr);
    }
    wait_for_view(&peers, &names(0..5), Duration::from_secs(30)).await;

    // A crash: the node vanishes from the network and its task stops.
    let mut events = peers[0].as_ref().unwrap().subscribe();
    net.crash(addrs[3]);
    peers[3] = None;
    let took = wait_for_view(
        &peers,
        &names([0, 1, 2, 4].into_iter()),
        Duration::from_millis(MembershipConfig::local().detection_bound_ms()),
    )
    .await;
    assert!(took.as_millis() <= u128::from(MembershipConfig::local().detection_bound_ms()));
    let down = loop {
        if let NodeEvent::Member(MemberEvent::Down(m)) = events.recv().await.unwrap() {
            break m;
        }
    };
    assert_eq!(down.name, "node-3");

    // A leave: reported as such, well before suspicion would have.
    let leaver = peers[4].take().unwrap();
    leaver.shutdown().await.unwrap();
    let left = loop {
        match events.recv().await.unwrap() {
            NodeEvent::Member(MemberEvent::Left(m)) => break m,
            NodeEvent::Member(MemberEvent::Down(m)) if m.name == "node-4" => {
                panic!("node-4 was reported down, not left")
            }
            _ => {}
        }
    };
    assert_eq!(left.name, "node-4");
    wait_for_view(&peers, &names(0..3), Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_peers_on_loopback_converge_and_detect_a_killed_one() {
    let ca = ClusterCa::generate("cluster-test").unwrap();
    let mut peers = Vec::new();
    let mut transports = Vec::new();
    for i in 0..5 {
        let name = format!("node-{i}");
        let settings = QuicSettings {
            identity: ca.issue(&name, &[]).unwrap(),
            ca: ca.certificate().clone(),
            cluster: ClusterId::from_name("cluster-test"),
            config: TransportConfig::default(),
        };
        let (transport, incoming) =
            QuicTransport::bind("127.0.0.1:0".parse().unwrap(), settings).unwrap();
        let seeds = transports
            .first()
            .map(Transport::local_addr)
            .into_iter()
            .collect();
        peers.push(Some(sessmesh::spawn(
            core_node(&name, transport.local_addr(), i as u64),
            transport.clone(),
            incoming,
            seeds,
        )));
        transports.push(transport);
    }
    let took = wait_for_view(&peers, &names(0..5), Duration::from_secs(20)).await;
    eprintln!("5 QUIC peers converged in {took:?}");
    // Gossip fits the path's datagrams.
    let limit = transports[0]
        .max_datagram_payload(transports[1].local_addr())
        .unwrap();
    assert!(
        limit >= MembershipConfig::MAX_PACKET_BYTES,
        "datagrams carry {limit} bytes"
    );

    // A session written through one peer is read through another.
    let write = sessmesh::Write::PutField {
        name: "user".into(),
        value: "ada".into(),
    };
    let written = peers[0]
        .as_ref()
        .unwrap()
        .write("session:1", write, sessmesh::Level::Quorum)
        .await
        .unwrap();
    assert!(
        matches!(written, sessmesh::Outcome::Written { acks, .. } if acks >= 2),
        "{written:?}"
    );
    match peers[4]
        .as_ref()
        .unwrap()
        .read("session:1", sessmesh::Level::Quorum)
        .await
        .unwrap()
    {
        sessmesh::Outcome::Read(Some(session)) => {
            let user = session
                .registers()
                .find(|(n, _)| n.as_ref() == b"user")
                .and_then(|(_, r)| r.val.clone());
            assert_eq!(user.as_deref(), Some(&b"ada"[..]));
        }
        other => panic!("read through node-4 found {other:?}"),
    }

    // Kill node-2: its socket goes silent and its task stops.
    let victim = transports[2].clone();
    for other in &transports {
        victim.faults().block(other.local_addr());
    }
    peers[2] = None;
    let bound = Duration::from_millis(MembershipConfig::local().detection_bound_ms());
    let took = wait_for_view(&peers, &names([0, 1, 3, 4].into_iter()), bound).await;
    eprintln!("the killed peer was seen down by all in {took:?} (bound {bound:?})");
}

/// Runs three peers over quinn on turmoil: converge, partition {0} | {1, 2},
/// repair. Returns the trace of view changes each way seen by node-1.
fn turmoil_partition(seed: u64, ca: &std::sync::Arc<ClusterCa>) -> Vec<String> {
    use std::sync::{Arc, Mutex};
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .ip_version(turmoil::IpVersion::V6)
        .simulation_duration(Duration::from_secs(120))
        .build();
    let handles: Arc<Mutex<Vec<Option<Peer>>>> = Arc::new(Mutex::new(vec![None, None, None]));
    const PORT: u16 = 7000;
    for i in 0..3usize {
        let (ca, handles) = (ca.clone(), handles.clone());
        sim.host(format!("node-{i}"), move || {
            let (ca, handles) = (ca.clone(), handles.clone());
            async move {
                let name = format!("node-{i}");
                let settings = QuicSettings {
                    identity: ca.issue(&name, &[]).unwrap(),
                    ca: ca.certificate().clone(),
                    cluster: ClusterId::from_name("turmoil"),
                    config: TransportConfig::default(),
                };
                let bind = (std::net::Ipv6Addr::UNSPECIFIED, PORT).into();
                let (transport, incoming) =
                    sessmesh_net::turmoil::bind(bind, settings, seed + i as u64).await?;
                let me = SocketAddr::new(turmoil::lookup(name.as_str()), PORT);
                let seeds = if i == 0 {
                    vec![]
                } else {
                    vec![SocketAddr::new(turmoil::lookup("node-0"), PORT)]
                };
                let handle = sessmesh::spawn(
                    core_node(&name, me, seed + i as u64),
                    transport,
                    incoming,
                    seeds,
                );
                handles.lock().unwrap()[i] = Some(handle.clone());
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let trace = Arc::new(Mutex::new(Vec::new()));
    let log = trace.clone();
    sim.client("test", async move {
        let peers = loop {
            let peers = handles.lock().unwrap().clone();
            if peers.iter().all(Option::is_some) {
                break peers;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let start = Instant::now();
        let note = |what: &str| {
            log.lock()
                .unwrap()
                .push(format!("{:>6} ms {what}", start.elapsed().as_millis()))
        };
        wait_for_view(&peers, &names(0..3), Duration::from_secs(20)).await;
        note("converged");
        turmoil::partition("node-0", "node-1");
        turmoil::partition("node-0", "node-2");
        let bound = Duration::from_millis(MembershipConfig::local().detection_bound_ms());
        wait_for_view(&peers[1..], &names(1..3), bound).await;
        wait_for_view(&peers[..1], &names(0..1), bound).await;
        note("split");
        turmoil::repair("node-0", "node-1");
        turmoil::repair("node-0", "node-2");
        wait_for_view(
            &peers,
            &names(0..3),
            bound + Duration::from_millis(4 * MembershipConfig::local().announce_to_down_period_ms),
        )
        .await;
        note("healed");
        Ok(())
    });
    if let Err(e) = sim.run() {
        panic!("{e}\nreplay with SIM_SEED={seed}");
    }
    Arc::try_unwrap(trace).unwrap().into_inner().unwrap()
}

#[test]
fn peers_over_simulated_quic_split_under_a_partition_and_join_after_repair() {
    let seed = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let ca = std::sync::Arc::new(ClusterCa::generate("turmoil").unwrap());
    let trace = turmoil_partition(seed, &ca);
    assert_eq!(trace.len(), 3, "seed {seed}: {trace:?}");
    assert_eq!(
        turmoil_partition(seed, &ca),
        trace,
        "seed {seed} did not replay the same trace"
    );
}

/// Three real nodes over QUIC on loopback: a partition made through the
/// transport's fault controls, conflicting writes on both sides, a heal, and
/// every replica read back until they agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_quic_nodes_converge_after_conflicting_writes_across_a_partition() {
    let ca = ClusterCa::generate("partition-test").unwrap();
    let config = Config {
        request_timeout_ms: 500,
        anti_entropy_period_ms: 500,
        ..Config::default()
    };
    let mut peers = Vec::new();
    let mut transports: Vec<QuicTransport> = Vec::new();
    for i in 0..3 {
        let name = format!("node-{i}");
        let settings = QuicSettings {
            identity: ca.issue(&name, &[]).unwrap(),
            ca: ca.certificate().clone(),
            cluster: ClusterId::from_name("partition-test"),
            config: TransportConfig::default(),
        };
        let (transport, incoming) =
            QuicTransport::bind("127.0.0.1:0".parse().unwrap(), settings).unwrap();
        let me = Member {
            name: name.clone(),
            addr: transport.local_addr(),
            client_addr: None,
            generation: 1,
            partition_count: config.partition_count,
            replication_factor: 3,
        };
        let core = Node::new(me, &config, MembershipConfig::local(), i as u64).unwrap();
        let seeds = transports
            .first()
            .map(Transport::local_addr)
            .into_iter()
            .collect();
        peers.push(Some(sessmesh::spawn(
            core,
            transport.clone(),
            incoming,
            seeds,
        )));
        transports.push(transport);
    }
    wait_for_view(&peers, &names(0..3), Duration::from_secs(20)).await;
    let (a, c) = (peers[0].clone().unwrap(), peers[2].clone().unwrap());
    let put = |field: &'static str, value: &'static str| sessmesh::Write::PutField {
        name: field.into(),
        value: value.into(),
    };
    assert!(matches!(
        a.write("session:ada", put("user", "ada"), sessmesh::Level::All)
            .await,
        Ok(sessmesh::Outcome::Written { acks: 3, .. })
    ));
    assert!(matches!(
        a.write("session:bob", put("user", "bob"), sessmesh::Level::All)
            .await,
        Ok(sessmesh::Outcome::Written { acks: 3, .. })
    ));

    // Cut node-2 off from the others, both ways, at its socket and theirs.
    for other in [0, 1] {
        transports[2].faults().block(transports[other].local_addr());
        transports[other].faults().block(transports[2].local_addr());
    }
    // Both sides write the same session; one side logs bob out.
    assert!(matches!(
        a.write(
            "session:ada",
            put("theme", "light"),
            sessmesh::Level::Quorum
        )
        .await,
        Ok(sessmesh::Outcome::Written { .. })
    ));
    assert!(matches!(
        c.write("session:ada", put("cart", "3 books"), sessmesh::Level::One)
            .await,
        Ok(sessmesh::Outcome::Written { .. })
    ));
    assert!(matches!(
        a.write(
            "session:bob",
            sessmesh::Write::Delete,
            sessmesh::Level::Quorum
        )
        .await,
        Ok(sessmesh::Outcome::Written { .. })
    ));
    // node-2 cannot reach a quorum: it says how many replicas took the write.
    let cut_off = c
        .write("session:ada", put("lang", "fr"), sessmesh::Level::Quorum)
        .await;
    assert_eq!(
        cut_off.unwrap(),
        sessmesh::Outcome::TooFewAcks { acks: 1, needed: 2 }
    );

    for transport in &transports {
        transport.faults().unblock_all();
    }
    // Every replica converges to the merge of both sides.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut copies = Vec::new();
        for peer in peers.iter().flatten() {
            copies.push((
                peer.local_session("session:ada").await.unwrap(),
                peer.local_session("session:bob").await.unwrap(),
            ));
        }
        if copies.windows(2).all(|w| w[0] == w[1]) {
            let (ada, bob) = copies.remove(0);
            let ada = ada.expect("every replica holds ada");
            let field = |name: &str| {
                ada.registers()
                    .find(|(n, _)| n.as_ref() == name.as_bytes())
                    .and_then(|(_, r)| r.val.clone())
            };
            assert_eq!(field("user").as_deref(), Some(&b"ada"[..]));
            assert_eq!(field("theme").as_deref(), Some(&b"light"[..]));
            assert_eq!(field("cart").as_deref(), Some(&b"3 books"[..]));
            assert_eq!(
                field("lang").as_deref(),
                Some(&b"fr"[..]),
                "the timed-out write was kept, not rolled back"
            );
            assert!(
                bob.expect("the tombstone is kept").is_tombstone(),
                "bob stays logged out"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas still differ: {copies:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
