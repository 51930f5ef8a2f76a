//! Real QUIC connections in simulated time: node-b asks node-a with one-way
//! messages and node-a answers the same way, as replicas answer a
//! coordinator. A turmoil partition stops the answers and, outliving the idle
//! timeout, kills the connection; repair brings them back over a new one.
//! The same seed gives the same trace twice.
//!
//! `SIM_SEED=<seed>` replays a seed; a failure prints the seed that replays it.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sessmesh_core::{ClusterId, Message};
use sessmesh_net::{ClusterCa, Incoming, NodeIdentity, QuicSettings, Transport, TransportConfig};
use tokio::time::Instant;
use turmoil::IpVersion;

const PORT: u16 = 7000;

fn settings(identity: &NodeIdentity, ca: &ClusterCa) -> QuicSettings {
    QuicSettings {
        identity: identity.clone(),
        ca: ca.certificate().clone(),
        cluster: ClusterId::from_name("sim"),
        config: TransportConfig::default(),
    }
}

fn read(request: u64) -> Message {
    Message::Read {
        request,
        key: Bytes::from_static(b"k"),
    }
}

/// Runs the scenario once and returns its trace: each request's outcome at
/// its virtual time, and each answer that came after its request gave up.
fn run(seed: u64, ca: &Arc<ClusterCa>, a: &NodeIdentity, b: &NodeIdentity) -> Vec<String> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .ip_version(IpVersion::V6)
        .simulation_duration(Duration::from_secs(120))
        .build();
    let trace = Arc::new(Mutex::new(Vec::new()));

    let (ca_a, a) = (ca.clone(), a.clone());
    sim.host("node-a", move || {
        let settings = settings(&a, &ca_a);
        async move {
            let (transport, mut incoming) =
                sessmesh_net::turmoil::bind((Ipv6Addr::UNSPECIFIED, PORT).into(), settings, seed)
                    .await?;
            while let Some(item) = incoming.recv().await {
                if let Incoming::Message {
                    from,
                    message: Message::Read { request, .. },
                } = item
                {
                    let answer = Message::ReadReply {
                        request,
                        session: None,
                    };
                    transport.send(from.addr, &answer)?;
                }
            }
            Ok(())
        }
    });

    let (ca_b, b, log) = (ca.clone(), b.clone(), trace.clone());
    sim.client("node-b", async move {
        let settings = settings(&b, &ca_b);
        let (transport, mut incoming) = sessmesh_net::turmoil::bind(
            (Ipv6Addr::UNSPECIFIED, PORT).into(),
            settings,
            seed.wrapping_add(1),
        )
        .await?;
        let to = SocketAddr::new(turmoil::lookup("node-a"), PORT);
        let start = Instant::now();
        let mut request = 0;
        // Sends the next request and waits up to a second for its answer;
        // an answer to an earlier request is traced and skipped, as the core
        // drops answers to requests no longer in flight.
        let mut ask = async |label: &str| {
            request += 1;
            transport.send(to, &read(request)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(1);
            let outcome = loop {
                match tokio::time::timeout_at(deadline, incoming.recv()).await {
                    Err(_) => break "no answer",
                    Ok(Some(Incoming::Message {
                        from,
                        message: Message::ReadReply { request: r, .. },
                    })) => {
                        assert_eq!(from.addr, to, "answered by the node asked");
                        if r == request {
                            break "answered";
                        }
                        assert!(r < request, "an answer to a request not sent yet");
                        let line = format!(
                            "{:>6} ms late answer to request {r}",
                            start.elapsed().as_millis()
                        );
                        log.lock().unwrap().push(line);
                    }
                    Ok(other) => panic!("unexpected {other:?}"),
                }
            };
            let line = format!("{:>6} ms {label}: {outcome}", start.elapsed().as_millis());
            log.lock().unwrap().push(line);
            outcome
        };

        assert_eq!(ask("connected").await, "answered");
        turmoil::partition("node-a", "node-b");
        // Long enough for the idle timeout (10 s) to close the connection.
        for _ in 0..12 {
            let outcome = ask("partitioned").await;
            assert_ne!(outcome, "answered", "an answer crossed the partition");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(
            !log.lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("late answer")),
            "an answer crossed the partition"
        );
        turmoil::repair("node-a", "node-b");
        let mut answered = false;
        for _ in 0..30 {
            if ask("repaired").await == "answered" {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(answered, "no answer within 30 attempts after repair");
        Ok(())
    });

    if let Err(e) = sim.run() {
        panic!("simulation failed: {e}\nreplay with SIM_SEED={seed}");
    }
    Arc::try_unwrap(trace).unwrap().into_inner().unwrap()
}

#[test]
fn a_partition_stops_answers_and_repair_restores_them_deterministically() {
    let seed = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5E55_3E5A);
    // Certificates are made once: they are inputs to the run, like the seed.
    let ca = Arc::new(ClusterCa::generate("sim").unwrap());
    let a = ca.issue("node-a", &[]).unwrap();
    let b = ca.issue("node-b", &[]).unwrap();

    let first = run(seed, &ca, &a, &b);
    assert!(
        first
            .first()
            .is_some_and(|l| l.ends_with("connected: answered")),
        "seed {seed}: {first:#?}"
    );
    assert!(
        first.iter().any(|l| l.contains("partitioned: no answer")),
        "seed {seed}: {first:#?}"
    );
    assert!(
        first
            .last()
            .is_some_and(|l| l.ends_with("repaired: answered")),
        "seed {seed}: {first:#?}"
    );

    let second = run(seed, &ca, &a, &b);
    assert_eq!(first, second, "seed {seed} did not replay the same trace");
}
