//! Consensus per key in the simulator: conditional writes and increments
//! raced from several coordinators. `SIM_SEED=<seed>` replays a run.

use bytes::Bytes;
use sessmesh_core::{CallId, Cas, Condition, Outcome, Write};
use sessmesh_sim::Sim;

const NODES: usize = 5;

fn converged(seed: u64) -> Sim {
    let mut sim = sessmesh_sim::converged_lan(NODES, seed);
    sim.run_for(3_000);
    sim
}

fn outcomes(sim: &mut Sim, calls: &[CallId]) -> Vec<Outcome> {
    sim.run_until(10_000, 10, |s| {
        calls.iter().all(|c| s.outcome(*c).is_some())
    });
    calls
        .iter()
        .map(|c| {
            sim.outcome(*c)
                .cloned()
                .unwrap_or_else(|| panic!("no outcome for {c:?}; seed {}", sim.seed()))
        })
        .collect()
}

fn put_if_absent(value: &str) -> Cas {
    Cas::Write {
        when: Condition::Absent,
        write: Write::Put {
            fields: vec![(Bytes::new(), Bytes::from(value.to_owned()))],
            expiry: sessmesh_core::Expiry::NEVER,
        },
    }
}

#[test]
fn of_coordinators_racing_to_create_a_key_exactly_one_wins() {
    let mut sim = converged(71);
    for round in 0..20 {
        let key = format!("session:{round}");
        let calls: Vec<CallId> = (0..NODES)
            .map(|n| sim.cas(n, &key, put_if_absent(&format!("from node-{n}"))))
            .collect();
        let outcomes = outcomes(&mut sim, &calls);
        let winners = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Decided(d) if d.applied))
            .count();
        let undecided = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Undecided { .. }))
            .count();
        assert!(
            winners + undecided >= 1 && winners <= 1,
            "{key}: {winners} winners: {outcomes:?}; seed {}",
            sim.seed()
        );
    }
}

#[test]
fn increments_from_every_node_add_up() {
    let mut sim = converged(72);
    let incr = || Cas::Increment {
        field: Bytes::new(),
        by: 1,
        when: Condition::Always,
    };
    let mut applied = 0;
    for _ in 0..10 {
        let calls: Vec<CallId> = (0..NODES).map(|n| sim.cas(n, "counter", incr())).collect();
        for outcome in outcomes(&mut sim, &calls) {
            match outcome {
                Outcome::Decided(d) if d.applied => applied += 1,
                Outcome::Undecided {
                    maybe_applied: false,
                    ..
                } => {}
                other => panic!("{other:?}; seed {}", sim.seed()),
            }
        }
    }
    let read = sim.cas(3, "counter", Cas::Read);
    let value = match &outcomes(&mut sim, &[read])[0] {
        Outcome::Decided(d) if d.before.is_some() => d
            .before
            .as_ref()
            .expect("checked")
            .registers()
            .next()
            .and_then(|(_, r)| r.val.clone())
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
        other => panic!("{other:?}"),
    };
    assert!(applied > 0, "some increments were decided");
    assert_eq!(value, Some(applied.to_string()), "seed {}", sim.seed());
}

/// The value of the counter a decision wrote or read.
fn counter_of(outcome: &Outcome) -> Option<String> {
    let Outcome::Decided(d) = outcome else {
        return None;
    };
    match &d.written {
        Some((Write::PutField { value, .. }, _)) => {
            Some(String::from_utf8_lossy(value).into_owned())
        }
        _ => None,
    }
}

#[test]
fn a_replica_restarted_with_an_empty_memory_cannot_undo_a_decision() {
    // Three nodes, every one a replica of every key.
    let mut sim = sessmesh_sim::converged_lan(3, 73);
    sim.run_for(3_000);
    let incr = || Cas::Increment {
        field: Bytes::new(),
        by: 1,
        when: Condition::Always,
    };
    // node-2 is cut off: the increment is decided by node-0 and node-1 alone.
    sim.faults_mut().groups = vec![[0, 1].into_iter().collect(), [2].into_iter().collect()];
    let first = sim.cas(0, "counter", incr());
    let first = outcomes(&mut sim, &[first]).remove(0);
    assert_eq!(counter_of(&first), Some("1".into()), "{first:?}");
    // node-0 restarts with an empty memory; node-1, the other node that
    // holds the decision, is cut off as node-2 comes back.
    sim.crash(0);
    sim.run_for(1_000);
    sim.start(0, &[1, 2]);
    sim.faults_mut().groups = vec![[0, 2].into_iter().collect(), [1].into_iter().collect()];
    sim.run_for(10_000);
    let second = sim.cas(2, "counter", incr());
    let second = outcomes(&mut sim, &[second]).remove(0);
    // Deciding on node-0's and node-2's memories alone would count 1 again.
    assert_ne!(
        counter_of(&second),
        Some("1".into()),
        "{second:?}; seed {}",
        sim.seed()
    );
}

#[test]
fn a_key_whose_replicas_change_by_two_at_once_keeps_its_decisions() {
    // Three nodes of five start; nodes 3 and 4 join later.
    let config = sessmesh_core::MembershipConfig::lan(5);
    let mut sim = Sim::new(NODES, config, sessmesh_sim::seed_from_env(74));
    let first = [0, 1, 2];
    sessmesh_sim::Scenario::new("start")
        .start(first, &first)
        .expect_within(sessmesh_sim::Check::Converged, 30_000)
        .run(&mut sim)
        .unwrap_or_else(|f| panic!("{f}"));
    sim.run_for(3_000);
    // A key that node-3 and node-4 will replicate with one of the three
    // (`kept`); the two others (`gone`) replicate it now and not then.
    let partitions = sim.core(0).expect("up").store().partition_count();
    let mut five = sessmesh_core::Partitioner::new(partitions, 3);
    five.set_members((0..NODES).map(|n| format!("node-{n}")));
    let (key, kept) = (0..10_000)
        .map(|i| format!("session:{i}"))
        .find_map(|key| {
            let p = sim.core(0)?.store().partition_of(key.as_bytes());
            let replicas = five.replicas_for(p);
            let old: Vec<usize> = first
                .into_iter()
                .filter(|n| replicas.contains(&format!("node-{n}")))
                .collect();
            (old.len() == 1).then(|| (key, old[0]))
        })
        .expect("some key moves to node-3 and node-4");
    let gone: Vec<usize> = first.into_iter().filter(|n| *n != kept).collect();
    // The two that will lose the key decide it while `kept` is cut off.
    sim.faults_mut().groups = vec![
        [kept, 3, 4].into_iter().collect(),
        gone.iter().copied().collect(),
    ];
    let created = sim.cas(gone[0], &key, put_if_absent("first"));
    let created = outcomes(&mut sim, &[created]).remove(0);
    assert!(
        matches!(&created, Outcome::Decided(d) if d.applied),
        "{created:?}; seed {}",
        sim.seed()
    );
    // node-3 and node-4 join on `kept`'s side, long enough for it to
    // declare the others down.
    sim.start(3, &[kept]);
    sim.start(4, &[kept]);
    sim.run_for(20_000);
    let second = sim.cas(3, &key, put_if_absent("second"));
    let second = outcomes(&mut sim, &[second]).remove(0);
    // Deciding on the memories of `kept`, node-3 and node-4 alone would
    // create the key again.
    assert!(
        !matches!(&second, Outcome::Decided(d) if d.applied),
        "created twice: {second:?}; seed {}",
        sim.seed()
    );
    // And the refusal says why.
    assert!(
        matches!(&second, Outcome::Undecided { reason, .. } if reason.contains("still learning")),
        "{second:?}; seed {}",
        sim.seed()
    );
    // Once the cut heals, the new replicas learn the decision.
    sim.faults_mut().groups.clear();
    sim.run_for(10_000);
    let third = sim.cas(4, &key, put_if_absent("third"));
    match outcomes(&mut sim, &[third]).remove(0) {
        Outcome::Decided(d) => assert!(!d.applied, "created twice; seed {}", sim.seed()),
        other => panic!("undecided after the heal: {other:?}; seed {}", sim.seed()),
    }
}
