//! Real QUIC connections in simulated time: two nodes exchange requests, a
//! turmoil partition makes them time out and kills the connection, and repair
//! brings them back over a new one. The same seed gives the same trace twice.
//!
//! `SIM_SEED=<seed>` replays a seed; a failure prints the seed that replays it.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sessmesh_core::{ClusterId, Message};
use sessmesh_net::{
    ClusterCa, Incoming, NodeIdentity, QuicSettings, RequestError, Transport, TransportConfig,
};
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
/// its virtual time.
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
            let (_transport, mut incoming) =
                sessmesh_net::turmoil::bind((Ipv6Addr::UNSPECIFIED, PORT).into(), settings, seed)
                    .await?;
            while let Some(item) = incoming.recv().await {
                if let Incoming::Request {
                    message: Message::Read { request, .. },
                    reply,
                    ..
                } = item
                {
                    reply.respond(Message::ReadReply {
                        request,
                        session: None,
                    });
                }
            }
            Ok(())
        }
    });

    let (ca_b, b, log) = (ca.clone(), b.clone(), trace.clone());
    sim.client("node-b", async move {
        let settings = settings(&b, &ca_b);
        let (transport, _incoming) = sessmesh_net::turmoil::bind(
            (Ipv6Addr::UNSPECIFIED, PORT).into(),
            settings,
            seed.wrapping_add(1),
        )
        .await?;
        let to = SocketAddr::new(turmoil::lookup("node-a"), PORT);
        let start = Instant::now();
        let mut request = 0;
        let mut ask = async |label: &str| {
            request += 1;
            let outcome = match transport
                .request(to, &read(request), Duration::from_secs(1))
                .await
            {
                Ok(Message::ReadReply { request: r, .. }) if r == request => "answered".to_string(),
                Ok(other) => panic!("unexpected answer {other:?}"),
                Err(RequestError::Timeout { .. }) => "timed out".to_string(),
                Err(RequestError::Unreachable { .. }) => "unreachable".to_string(),
                Err(RequestError::Failed { reason, .. }) => format!("failed: {reason}"),
                Err(e) => panic!("unexpected error {e}"),
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
            assert_ne!(outcome, "answered", "a request crossed the partition");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
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
fn a_partition_times_requests_out_and_repair_restores_them_deterministically() {
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
        first.iter().any(|l| l.contains("partitioned: timed out")),
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
