//! Replication in the simulator: coordinated writes and reads, levels,
//! timeouts, hints and clock drift. `SIM_SEED=<seed>` replays a run.

use bytes::Bytes;
use sessmesh_core::{Level, MembershipConfig, Outcome, Write};
use sessmesh_sim::{Check, Scenario, Sim, seed_from_env};

const NODES: usize = 5;

fn converged(seed: u64) -> Sim {
    sessmesh_sim::converged_lan(NODES, seed)
}

fn put_field(name: &'static str, value: &str) -> Write {
    Write::PutField {
        name: Bytes::from_static(name.as_bytes()),
        value: Bytes::from(value.to_owned()),
    }
}

/// Runs until `call` has an outcome (requests time out after 2 s).
fn outcome(sim: &mut Sim, call: sessmesh_core::CallId) -> Outcome {
    sim.run_until(5_000, 10, |s| s.outcome(call).is_some());
    sim.outcome(call)
        .cloned()
        .unwrap_or_else(|| panic!("no outcome for {call:?}; seed {}", sim.seed()))
}

fn field(outcome: &Outcome, name: &str) -> Option<Vec<u8>> {
    match outcome {
        Outcome::Read(Some(session)) => session
            .registers()
            .find(|(n, _)| n.as_ref() == name.as_bytes())
            .and_then(|(_, r)| r.val.as_ref().map(|v| v.to_vec())),
        _ => None,
    }
}

#[test]
fn reads_at_quorum_see_writes_made_at_quorum_on_another_node() {
    let mut sim = converged(21);
    for i in 0..50usize {
        let key = format!("session:{i}");
        let writer = i % NODES;
        let reader = (i * 3 + 1) % NODES;
        let call = sim_write(&mut sim, writer, &key, &format!("v{i}"));
        let written = outcome(&mut sim, call);
        assert!(
            matches!(written, Outcome::Written { acks, .. } if acks >= 2),
            "{key}: {written:?}"
        );
        let read = sim.read(reader, key.as_bytes(), Level::Quorum);
        let read = outcome(&mut sim, read);
        assert_eq!(
            field(&read, "v"),
            Some(format!("v{i}").into_bytes()),
            "{key} written on node-{writer}, read on node-{reader}"
        );
    }
}

fn sim_write(sim: &mut Sim, node: usize, key: &str, value: &str) -> sessmesh_core::CallId {
    sim.write(node, key.as_bytes(), put_field("v", value), Level::Quorum)
}

#[test]
fn concurrent_updates_of_different_fields_on_two_nodes_both_survive() {
    let mut sim = converged(22);
    let a = sim.write(1, b"cart", put_field("items", "3"), Level::Quorum);
    let b = sim.write(4, b"cart", put_field("theme", "dark"), Level::Quorum);
    assert!(matches!(outcome(&mut sim, a), Outcome::Written { .. }));
    assert!(matches!(outcome(&mut sim, b), Outcome::Written { .. }));
    let read = sim.read(2, b"cart", Level::All);
    let read = outcome(&mut sim, read);
    assert_eq!(field(&read, "items"), Some(b"3".to_vec()));
    assert_eq!(field(&read, "theme"), Some(b"dark".to_vec()));
}

#[test]
fn a_write_that_misses_replicas_reports_its_acks_and_reaches_them_after_the_heal() {
    let mut sim = converged(23);
    // A key that node-0 replicates along with two others.
    let core = sim.core(0).expect("up");
    let key = (0..1_000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            core.replicas_for(core.store().partition_of(k.as_bytes()))
                .contains(&"node-0".to_string())
        })
        .expect("some key lives on node-0");
    let replicas: Vec<String> = core
        .replicas_for(core.store().partition_of(key.as_bytes()))
        .to_vec();
    // Cut node-0 off from everyone: only its own copy takes the write.
    sim.faults_mut().groups = vec![[0].into_iter().collect(), (1..NODES).collect()];
    let call = sim.write(
        0,
        key.as_bytes(),
        put_field("v", "while cut off"),
        Level::All,
    );
    let timed_out = outcome(&mut sim, call);
    assert_eq!(timed_out, Outcome::TooFewAcks { acks: 1, needed: 3 });
    assert_eq!(
        sim.core(0).expect("up").hints().len(),
        2,
        "a hint for each replica that missed it"
    );
    // Heal: the replicas come back in node-0's view, and the hints go to them.
    sim.faults_mut().groups.clear();
    let settle = 2 * MembershipConfig::lan(5).detection_bound_ms();
    let replica = replicas
        .iter()
        .find(|r| **r != "node-0")
        .expect("another replica");
    let replica: usize = replica
        .trim_start_matches("node-")
        .parse()
        .expect("node name");
    sim.run_until(settle, 100, |s| {
        s.core(0).is_some_and(|c| c.hints().is_empty())
    });
    assert!(
        sim.core(0).expect("up").hints().is_empty(),
        "hints replayed; seed {}",
        sim.seed()
    );
    sim.run_for(1_000);
    let stored = sim
        .core(replica)
        .expect("up")
        .store()
        .session(key.as_bytes());
    assert!(
        stored.is_some(),
        "node-{replica} holds the write after the heal"
    );
}

#[test]
fn a_node_whose_clock_runs_ahead_has_its_writes_refused() {
    let mut sim = converged(24);
    sim.set_skew(2, 10_000);
    for i in 0..20 {
        sim.write(
            2,
            format!("k{i}").as_bytes(),
            put_field("v", "x"),
            Level::One,
        );
    }
    sim.run_for(3_000);
    assert!(sim.drift_refusals(2) > 0, "peers refused stamps 10 s ahead");
    // Within the bound, nothing is refused. (Not node-2: its clock keeps
    // stamping ahead until real time catches up with the stamps it issued.)
    sim.set_skew(3, 300);
    for i in 0..20 {
        sim.write(
            3,
            format!("j{i}").as_bytes(),
            put_field("v", "x"),
            Level::One,
        );
    }
    sim.run_for(3_000);
    assert_eq!(sim.drift_refusals(3), 0);
}

/// A key whose replicas, as `node` sees them, do not include `node`.
fn key_not_on(sim: &Sim, node: usize) -> String {
    let core = sim.core(node).expect("up");
    let name = format!("node-{node}");
    (0..1_000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            !core
                .replicas_for(core.store().partition_of(k.as_bytes()))
                .contains(&name)
        })
        .expect("some key lives elsewhere")
}

#[test]
fn a_read_whose_first_replica_is_silent_asks_the_others_and_does_not_time_out() {
    let mut sim = converged(27);
    // A key node-0 coordinates without replicating it.
    let key = key_not_on(&sim, 0);
    let written = sim_write(&mut sim, 0, &key, "v");
    assert!(matches!(
        outcome(&mut sim, written),
        Outcome::Written { .. }
    ));
    let replicas: Vec<usize> = sim
        .core(0)
        .expect("up")
        .replicas_for(
            sim.core(0)
                .expect("up")
                .store()
                .partition_of(key.as_bytes()),
        )
        .iter()
        .map(|name| {
            name.trim_start_matches("node-")
                .parse()
                .expect("a node number")
        })
        .collect();
    // Each read asks two of the three replicas first; with one of them
    // silent towards node-0 (and not yet declared down), some reads ask it
    // first and must fall back on the third.
    for &silent in &replicas {
        sim.faults_mut().one_way_cuts.insert((silent, 0));
        for _ in 0..3 {
            let started = sim.now_ms();
            let read = sim.read(0, key.as_bytes(), Level::Quorum);
            let read = outcome(&mut sim, read);
            assert_eq!(
                field(&read, "v"),
                Some(b"v".to_vec()),
                "seed {}",
                sim.seed()
            );
            assert!(
                sim.now_ms() - started < 1_000,
                "answered by the other replicas, not after the 2 s timeout; seed {}",
                sim.seed()
            );
        }
        sim.faults_mut().one_way_cuts.clear();
    }
}

/// The replicas of `key` as node numbers, from node-0's view.
fn replicas_of(sim: &Sim, key: &str) -> Vec<usize> {
    let core = sim.core(0).expect("up");
    core.replicas_for(core.store().partition_of(key.as_bytes()))
        .iter()
        .map(|name| {
            name.trim_start_matches("node-")
                .parse()
                .expect("a node number")
        })
        .collect()
}

#[test]
fn a_read_compares_fingerprints_and_fetches_only_a_copy_that_differs() {
    let mut sim = converged(31);
    let key = (0..1_000)
        .map(|i| format!("k{i}"))
        .find(|k| replicas_of(&sim, k).contains(&0))
        .expect("some key lives on node-0");
    let others: Vec<usize> = replicas_of(&sim, &key)
        .into_iter()
        .filter(|&r| r != 0)
        .collect();
    // Agreeing copies: the other replica answers with a fingerprint that
    // matches node-0's own copy.
    let written = sim_write(&mut sim, 0, &key, "first");
    assert!(matches!(
        outcome(&mut sim, written),
        Outcome::Written { .. }
    ));
    sim.run_for(100);
    let read = sim.read(0, key.as_bytes(), Level::Quorum);
    assert_eq!(
        field(&outcome(&mut sim, read), "v"),
        Some(b"first".to_vec())
    );
    assert_eq!(sim.core(0).expect("up").stats().digest_mismatches, 0);

    // A write node-0 never sees: its copy is stale, the other replicas'
    // fingerprints differ, and the read fetches their state and repairs
    // node-0's copy.
    sim.faults_mut().one_way_cuts.insert((others[0], 0));
    sim.faults_mut().one_way_cuts.insert((others[1], 0));
    let newer = sim_write(&mut sim, others[0], &key, "second");
    assert!(matches!(outcome(&mut sim, newer), Outcome::Written { .. }));
    sim.faults_mut().one_way_cuts.clear();
    let read = sim.read(0, key.as_bytes(), Level::Quorum);
    assert_eq!(
        field(&outcome(&mut sim, read), "v"),
        Some(b"second".to_vec()),
        "seed {}",
        sim.seed()
    );
    let node0 = sim.core(0).expect("up");
    assert!(node0.stats().digest_mismatches >= 1, "seed {}", sim.seed());
    assert_eq!(
        field(&Outcome::Read(node0.store().session(key.as_bytes())), "v"),
        Some(b"second".to_vec()),
        "node-0's copy was repaired; seed {}",
        sim.seed()
    );
}

#[test]
fn a_logout_through_a_node_whose_clock_lags_still_ends_the_session() {
    let mut sim = converged(26);
    // node-1 runs 400 ms ahead (within the drift bound) and writes; node-3,
    // which does not replicate the key and so never saw the write's stamp,
    // logs the session out right after.
    sim.set_skew(1, 400);
    let key = key_not_on(&sim, 3);
    let written = sim_write(&mut sim, 1, &key, "logged-in");
    assert!(matches!(
        outcome(&mut sim, written),
        Outcome::Written { .. }
    ));
    let deleted = sim.write(3, key.as_bytes(), Write::Delete, Level::Quorum);
    assert!(matches!(
        outcome(&mut sim, deleted),
        Outcome::Written { .. }
    ));
    let read = sim.read(0, key.as_bytes(), Level::All);
    let read = outcome(&mut sim, read);
    assert_eq!(
        field(&read, "v"),
        None,
        "the logout must supersede the write it followed; seed {}",
        sim.seed()
    );
}

#[test]
fn a_leaving_node_hands_its_only_copies_to_the_remaining_owners() {
    // No room for hints: only the leaving node's hand-off can save its writes.
    let data = sessmesh_core::Config {
        max_hint_bytes: 1,
        ..sessmesh_core::Config::default()
    };
    let mut sim = Sim::with_data_config(NODES, MembershipConfig::lan(5), data, seed_from_env(25));
    let scenario = Scenario::new("start")
        .start([0], &[])
        .start(1..NODES, &[0])
        .expect_within(Check::Converged, 30_000);
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
    // node-4 is cut off and takes writes at level One: for the keys it
    // replicates, it holds the only copy.
    sim.faults_mut().groups = vec![[4].into_iter().collect(), (0..4).collect()];
    let keys: Vec<String> = (0..60).map(|i| format!("only-on-4:{i}")).collect();
    let calls: Vec<_> = keys
        .iter()
        .map(|k| {
            (
                k.clone(),
                sim.write(4, k.as_bytes(), put_field("v", k), Level::One),
            )
        })
        .collect();
    sim.run_for(3_000);
    let acked: Vec<String> = calls
        .into_iter()
        .filter(|(_, call)| matches!(sim.outcome(*call), Some(Outcome::Written { .. })))
        .map(|(k, _)| k)
        .collect();
    assert!(
        acked.len() > 10,
        "node-4 replicates some of the keys: {} acked",
        acked.len()
    );
    // Heal, and node-4 leaves at once, before any periodic round could run.
    sim.faults_mut().groups.clear();
    assert!(
        sim.core(4).expect("up").hints().is_empty(),
        "every hint was dropped"
    );
    sim.leave(4);
    sim.run_for(5_000);
    for key in &acked {
        let read = sim.read(0, key.as_bytes(), Level::All);
        let read = outcome(&mut sim, read);
        assert_eq!(
            field(&read, "v"),
            Some(key.clone().into_bytes()),
            "{key} was acknowledged by node-4, which left"
        );
    }
}

/// Runs a repair of 100 sessions (about 50 KB) missed by node-2, with hints
/// off so only anti-entropy carries them, at `rate` bytes per second; returns
/// how long after the heal node-2 held them all.
fn repair_time_ms(rate: u64) -> u64 {
    let data = sessmesh_core::Config {
        max_hint_bytes: 1,
        anti_entropy_period_ms: 1_000,
        anti_entropy_bytes_per_sec: rate,
        ..sessmesh_core::Config::default()
    };
    let mut sim = Sim::with_data_config(3, MembershipConfig::lan(3), data, seed_from_env(26));
    let scenario = Scenario::new("start")
        .start([0], &[])
        .start(1..3, &[0])
        .expect_within(Check::Converged, 30_000);
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
    sim.faults_mut().groups = vec![(0..2).collect(), [2].into_iter().collect()];
    let keys: Vec<String> = (0..100).map(|i| format!("repair:{i}")).collect();
    for key in &keys {
        let value = Bytes::from(vec![b'x'; 400]);
        sim.write(
            0,
            key.as_bytes(),
            Write::PutField {
                name: Bytes::from_static(b"v"),
                value,
            },
            Level::Quorum,
        );
    }
    sim.run_for(1_000);
    sim.faults_mut().groups.clear();
    let healed = sim.now_ms();
    let done = sim.run_until(60_000, 50, |s| {
        keys.iter().all(|k| {
            s.core(2).and_then(|c| c.store().session(k.as_bytes()))
                == s.core(0).and_then(|c| c.store().session(k.as_bytes()))
        })
    });
    done.unwrap_or_else(|| {
        panic!("node-2 not repaired within 60 s at {rate} B/s (healed at {healed} ms)")
    })
}

#[test]
fn repair_bandwidth_is_bounded_by_the_configured_rate() {
    let unbounded = repair_time_ms(64 << 20);
    let bounded = repair_time_ms(8_000);
    // About 50 KB at 8 KB/s takes at least five windows; unbounded, one round.
    assert!(unbounded <= 2_000, "unbounded repair took {unbounded} ms");
    assert!(bounded >= 5_000, "repair at 8 KB/s took only {bounded} ms");
}

#[test]
fn an_expired_session_stays_gone_after_a_partition_heals() {
    let data = sessmesh_core::Config {
        tombstone_grace_ms: 5_000,
        anti_entropy_period_ms: 2_000,
        ..sessmesh_core::Config::default()
    };
    let mut sim = Sim::with_data_config(NODES, MembershipConfig::lan(5), data, seed_from_env(27));
    let scenario = Scenario::new("start")
        .start([0], &[])
        .start(1..NODES, &[0])
        .expect_within(Check::Converged, 30_000);
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
    let key = b"short-lived";
    let deadline = sim.wall_ms(0) + 2_000;
    let put = Write::Put {
        fields: vec![(Bytes::from_static(b"user"), Bytes::from_static(b"ada"))],
        expiry: sessmesh_core::Expiry {
            expires_at_ms: Some(deadline),
            max_idle_ms: None,
        },
    };
    let written = sim.write(0, key, put, Level::All);
    assert!(matches!(
        outcome(&mut sim, written),
        Outcome::Written { acks: 3, .. }
    ));
    // One replica is cut off while the session expires and the others collect it.
    let core = sim.core(0).expect("up");
    let replicas: Vec<usize> = core
        .replicas_for(core.store().partition_of(key))
        .iter()
        .map(|r| r.trim_start_matches("node-").parse().expect("node name"))
        .collect();
    let stale = replicas[1];
    sim.faults_mut().groups = vec![
        [stale].into_iter().collect(),
        (0..NODES).filter(|n| *n != stale).collect(),
    ];
    sim.run_for(20_000);
    sim.faults_mut().groups.clear();
    sim.run_for(20_000);
    let now = sim.wall_ms(0);
    for node in 0..NODES {
        let read = sim.read(node, key, Level::All);
        match outcome(&mut sim, read) {
            Outcome::Read(state) => assert!(
                state.is_none_or(|s| !s.is_visible(now)),
                "node-{node} reads the expired session"
            ),
            other => panic!("{other:?}"),
        }
    }
    let copies: Vec<_> = replicas
        .iter()
        .map(|&n| sim.core(n).expect("up").store().session(key))
        .collect();
    assert!(
        copies.windows(2).all(|w| w[0] == w[1]),
        "replicas disagree: {copies:?}"
    );
}

#[test]
fn joining_nodes_take_their_partitions_and_old_owners_drop_them_after_handoff() {
    let mut sim = Sim::new(NODES, MembershipConfig::lan(5), seed_from_env(28));
    let scenario = Scenario::new("three nodes")
        .start([0], &[])
        .start(1..3, &[0])
        .expect_within(Check::Converged, 30_000);
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
    let keys: Vec<String> = (0..200).map(|i| format!("moving:{i}")).collect();
    for key in &keys {
        let call = sim.write(0, key.as_bytes(), put_field("v", key), Level::All);
        assert!(matches!(
            outcome(&mut sim, call),
            Outcome::Written { acks: 3, .. }
        ));
    }
    // With three members every node holds every session.
    assert!((0..3).all(|n| sim.core(n).expect("up").store().len() == keys.len()));

    // Two more join: each partition's replicas are now 3 of 5.
    let scenario = Scenario::new("two join")
        .start(3..5, &[0])
        .expect_within(Check::Converged, 30_000)
        .wait(10_000);
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
    for key in &keys {
        let core = sim.core(0).expect("up");
        let replicas: Vec<usize> = core
            .replicas_for(core.store().partition_of(key.as_bytes()))
            .iter()
            .map(|r| r.trim_start_matches("node-").parse().expect("node name"))
            .collect();
        for &r in &replicas {
            assert!(
                sim.core(r)
                    .expect("up")
                    .store()
                    .session(key.as_bytes())
                    .is_some(),
                "{key} missing on its replica node-{r}"
            );
        }
        for n in (0..NODES).filter(|n| !replicas.contains(n)) {
            assert!(
                sim.core(n)
                    .expect("up")
                    .store()
                    .session(key.as_bytes())
                    .is_none(),
                "node-{n} kept {key} after handing it off"
            );
        }
    }
    let held: usize = (0..NODES)
        .map(|n| sim.core(n).expect("up").store().len())
        .sum();
    assert_eq!(
        held,
        3 * keys.len(),
        "three copies of each session, no more"
    );
}

#[test]
fn a_write_handed_over_right_after_a_delete_of_the_same_key_survives_it() {
    let mut sim = converged(27);
    let key = "session:late";
    // The delete and the write after it are handed over one after the
    // other, as a pipeline would, before either is answered: the later
    // write must not be superseded by the delete.
    let scenario = Scenario::new("a write right after a delete")
        .write(1, key, "before")
        .wait(3_000)
        .delete(1, key)
        .write(1, key, "after")
        .wait(3_000)
        .read(0, key, Some("after"))
        .expect(Check::ReplicasAgree)
        .expect(Check::AcknowledgedWritesSurvive);
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
}

#[test]
fn writes_on_both_sides_of_a_partition_all_survive_the_heal() {
    let mut sim = converged(29);
    let settle = 2 * MembershipConfig::lan(5).detection_bound_ms();
    let mut scenario = Scenario::new("writes on both sides of a partition")
        .partition(&[&[0, 1], &[2, 3, 4]])
        .wait(settle);
    // Each side writes its own keys and one key both write; the minority
    // side's writes reach too few copies, but are kept and spread later.
    for i in 0..6 {
        scenario = scenario
            .write(i % 2, &format!("left:{i}"), "from the left")
            .write(2 + i % 3, &format!("right:{i}"), "from the right");
    }
    let scenario = scenario
        .write(0, "both", "left")
        .write(4, "both", "right")
        .wait(3_000)
        .heal()
        .expect_within(Check::Converged, 30_000)
        .expect_within(Check::ReplicasAgree, 30_000)
        .expect(Check::AcknowledgedWritesSurvive)
        .read(4, "left:0", Some("from the left"))
        .read(0, "right:5", Some("from the right"));
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
}

/// The nodes that would replicate `key` if every one of `nodes` were up.
fn full_replicas(key: &str, nodes: usize) -> Vec<usize> {
    let partition = sessmesh_core::partition::partition_of(
        sessmesh_core::key_hash(key.as_bytes()),
        sessmesh_sim::PARTITIONS,
    );
    let mut ranked: Vec<(u64, usize)> = (0..nodes)
        .map(|n| {
            let name = format!("node-{n}");
            (
                sessmesh_core::partition::rendezvous_score(partition, name.as_bytes()),
                n,
            )
        })
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked
        .into_iter()
        .take(sessmesh_sim::REPLICATION_FACTOR as usize)
        .map(|(_, n)| n)
        .collect()
}

#[test]
fn a_cut_off_node_does_not_call_its_one_copy_a_quorum() {
    let mut sim = converged(41);
    sim.faults_mut().groups = vec![[0].into_iter().collect(), (1..NODES).collect()];
    let bound = MembershipConfig::lan(5).detection_bound_ms();
    sim.run_until(2 * bound, 100, |s| {
        s.core(0)
            .is_some_and(|c| c.membership().members().next().is_none())
    });
    let core = sim.core(0).expect("up");
    assert_eq!(core.copies(), 3, "members declared down still count");
    let key = "k-cut";
    assert_eq!(
        core.replicas_for(core.store().partition_of(key.as_bytes())),
        ["node-0".to_string()],
        "alone, node-0 replicates everything it reaches"
    );

    // Quorum of three copies is two: refused at once, kept, and hinted to
    // the members that would hold the other copies.
    let started = sim.now_ms();
    let quorum = sim.write(0, key.as_bytes(), put_field("v", "q"), Level::Quorum);
    assert_eq!(
        sim.outcome(quorum),
        Some(&Outcome::TooFewAcks { acks: 1, needed: 2 }),
        "answered without waiting; seed {}",
        sim.seed()
    );
    assert_eq!(sim.now_ms(), started);
    let down_copies = full_replicas(key, NODES)
        .into_iter()
        .filter(|&n| n != 0)
        .count();
    assert_eq!(sim.core(0).expect("up").hints().len(), down_copies);
    // Level One is for writes that must succeed on any reachable node.
    let one = sim.write(0, key.as_bytes(), put_field("w", "1"), Level::One);
    assert!(matches!(
        sim.outcome(one),
        Some(Outcome::Written { acks: 1, .. })
    ));
    // Reads count copies the same way.
    let read = sim.read(0, key.as_bytes(), Level::Quorum);
    assert_eq!(
        sim.outcome(read),
        Some(&Outcome::TooFewAnswers {
            answers: 1,
            needed: 2
        })
    );

    // After the heal both writes reach the key's replicas.
    sim.faults_mut().groups.clear();
    sim.run_until(4 * bound, 100, |s| s.converged());
    sim.run_for(3_000);
    for replica in full_replicas(key, NODES) {
        let stored = sim
            .core(replica)
            .expect("up")
            .store()
            .session(key.as_bytes());
        let read = Outcome::Read(stored);
        assert_eq!(field(&read, "v"), Some(b"q".to_vec()), "node-{replica}");
        assert_eq!(field(&read, "w"), Some(b"1".to_vec()), "node-{replica}");
    }
}

#[test]
fn copies_count_members_down_but_not_members_that_left() {
    // A one-node development cluster writes at quorum.
    let mut alone = Sim::new(1, MembershipConfig::lan(1), seed_from_env(42));
    alone.start(0, &[]);
    let write = alone.write(0, b"k", put_field("v", "x"), Level::Quorum);
    assert!(matches!(
        alone.outcome(write),
        Some(Outcome::Written { acks: 1, .. })
    ));

    let mut sim = Sim::new(3, MembershipConfig::lan(3), seed_from_env(43));
    let scenario = Scenario::new("three")
        .start([0], &[])
        .start(1..3, &[0])
        .expect_within(Check::Converged, 30_000);
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
    assert_eq!(sim.core(0).expect("up").copies(), 3);
    // A member that leaves on purpose no longer counts...
    sim.leave(2);
    sim.run_until(10_000, 100, |s| s.converged());
    assert_eq!(sim.core(0).expect("up").copies(), 2, "seed {}", sim.seed());
    // ...one declared down still does.
    sim.crash(1);
    let bound = MembershipConfig::lan(3).detection_bound_ms();
    sim.run_until(2 * bound, 100, |s| s.converged());
    assert_eq!(sim.core(0).expect("up").copies(), 2, "seed {}", sim.seed());
    let write = sim.write(0, b"k", put_field("v", "x"), Level::Quorum);
    assert_eq!(
        sim.outcome(write),
        Some(&Outcome::TooFewAcks { acks: 1, needed: 2 }),
        "seed {}",
        sim.seed()
    );
}

/// A key that `node` replicates, from its own view.
fn key_on(sim: &Sim, node: usize, prefix: &str) -> String {
    (0..1_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| replicas_of(sim, k).contains(&node))
        .expect("some key lives on the node")
}

fn holds(sim: &Sim, node: usize, key: &str) -> Option<Vec<u8>> {
    let stored = sim.core(node).expect("up").store().session(key.as_bytes());
    field(&Outcome::Read(stored), "v")
}

#[test]
fn a_write_its_peers_refuse_for_drift_is_stored_nowhere_and_its_node_stops_stamping() {
    let mut sim = converged(44);
    // Every node has measured the others' clocks.
    sim.run_for(2_000);
    let key = key_on(&sim, 2, "drift");
    // node-2's wall clock steps 2 s ahead; its runtime notices the step.
    sim.set_skew(2, 2_000);
    let refused = sim.write(2, key.as_bytes(), put_field("v", "ahead"), Level::One);
    let refused = outcome(&mut sim, refused);
    assert!(
        matches!(refused, Outcome::ClockAhead { ahead_ms, max_drift_ms: 500 } if ahead_ms >= 1_500),
        "{refused:?}; seed {}",
        sim.seed()
    );
    for n in 0..NODES {
        assert_eq!(
            holds(&sim, n, &key),
            None,
            "node-{n} stored a refused write"
        );
    }
    // A newer write through a node whose clock is right is acknowledged...
    let newer = sim.write(1, key.as_bytes(), put_field("v", "newer"), Level::Quorum);
    assert!(matches!(outcome(&mut sim, newer), Outcome::Written { .. }));
    // ...while node-2, which knows now, refuses at once to stamp anything.
    let at_once = sim.write(2, b"another", put_field("v", "x"), Level::One);
    assert!(
        matches!(sim.outcome(at_once), Some(Outcome::ClockAhead { .. })),
        "{:?}",
        sim.outcome(at_once)
    );
    // Long past the skew, with anti-entropy rounds, the newer write holds.
    sim.run_for(30_000);
    for n in replicas_of(&sim, &key) {
        assert_eq!(holds(&sim, n, &key), Some(b"newer".to_vec()), "node-{n}");
    }
    // It said so once, and once more when its clock is back in step.
    assert_eq!(
        sim.clock_reports(2)
            .iter()
            .filter(|(_, e)| matches!(e, sessmesh_core::NodeEvent::ClockAhead { .. }))
            .count(),
        1
    );
    sim.set_skew(2, 0);
    sim.run_for(5_000);
    assert!(matches!(
        sim.clock_reports(2).last(),
        Some((_, sessmesh_core::NodeEvent::ClockInSync))
    ));
    let back = sim.write(2, key.as_bytes(), put_field("v", "back"), Level::Quorum);
    assert!(matches!(outcome(&mut sim, back), Outcome::Written { .. }));
    // Every peer measured node-2's clock as it is.
    assert!(
        sim.core(0)
            .expect("up")
            .clock_offset_of("node-2")
            .is_some_and(|o| o.abs() < 100)
    );
}

#[test]
fn a_node_started_with_its_clock_ahead_takes_no_writes_once_it_has_met_its_peers() {
    let mut sim = Sim::new(NODES, MembershipConfig::lan(5), seed_from_env(45));
    sim.set_skew(3, 2_000);
    let scenario = Scenario::new("start")
        .start([0], &[])
        .start(1..NODES, &[0])
        .expect_within(Check::Converged, 30_000);
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
    let key = key_on(&sim, 3, "late");
    let refused = sim.write(3, key.as_bytes(), put_field("v", "ahead"), Level::One);
    assert!(
        matches!(outcome(&mut sim, refused), Outcome::ClockAhead { .. }),
        "seed {}",
        sim.seed()
    );
    let offset = sim.core(3).expect("up").clock_offset_of("node-0");
    assert!(
        offset.is_some_and(|o| (-2_100..=-1_900).contains(&o)),
        "node-3 measures node-0 2 s behind: {offset:?}"
    );
}

#[test]
fn an_unmeasured_write_that_nobody_answers_is_kept_at_the_deadline() {
    let mut sim = converged(46);
    sim.run_for(2_000);
    let key = key_on(&sim, 2, "silent");
    // node-2's clock steps (it must measure again), and nobody hears it,
    // though nobody has declared anybody down yet.
    sim.set_skew(2, 10);
    for other in (0..NODES).filter(|&n| n != 2) {
        sim.faults_mut().one_way_cuts.insert((2, other));
    }
    let started = sim.now_ms();
    let write = sim.write(2, key.as_bytes(), put_field("v", "kept"), Level::One);
    let outcome = outcome(&mut sim, write);
    assert!(
        matches!(outcome, Outcome::Written { acks: 1, .. }),
        "nothing refused the stamp, and One needs this copy only: {outcome:?}; seed {}",
        sim.seed()
    );
    assert!(
        sim.now_ms() - started >= 2_000,
        "it waited for the deadline"
    );
    assert_eq!(holds(&sim, 2, &key), Some(b"kept".to_vec()));
}
