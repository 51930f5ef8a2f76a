//! Consensus on several keys of one hash tag in the simulator: what is
//! refused, and a restarted replica that learns the tag's keys.
//! `SIM_SEED=<seed>` replays a run.

use std::collections::BTreeMap;

use sessmesh_core::{CallId, Config, GroupCas, MembershipConfig, Outcome};
use sessmesh_sim::linearizable::{GroupOp, GroupResult};
use sessmesh_sim::registers::{GroupRequest, group_request, observed_group};
use sessmesh_sim::{Sim, seed_from_env};

fn key(k: usize) -> String {
    format!("{{cart}}:{k}")
}

fn outcome(sim: &mut Sim, call: CallId) -> Outcome {
    sim.run_until(10_000, 10, |s| s.outcome(call).is_some());
    sim.outcome(call)
        .cloned()
        .unwrap_or_else(|| panic!("no outcome for {call:?}; seed {}", sim.seed()))
}

/// Issues `op` on the tag's two keys through `node` and waits for its answer.
fn run_op(sim: &mut Sim, node: usize, op: &GroupOp) -> Option<GroupResult> {
    let call = match group_request(op, 2, key) {
        GroupRequest::One(key, cas) => sim.cas(node, &key, cas),
        GroupRequest::Group(keys, cas) => sim.cas_group(node, &keys, cas),
    };
    let outcome = outcome(sim, call);
    observed_group(op, Some(&outcome), sim.wall_ms(node)).flatten()
}

#[test]
fn keys_of_several_hash_tags_or_named_twice_are_refused() {
    let mut sim = sessmesh_sim::converged_lan(3, 81);
    sim.run_for(3_000);
    let cases = [
        (
            vec!["{a}:1".to_owned(), "{b}:1".to_owned()],
            "different hash tags",
        ),
        (vec!["{a}:1".to_owned(), "{a}:1".to_owned()], "named twice"),
        (
            vec!["plain".to_owned(), "other".to_owned()],
            "different hash tags",
        ),
        (Vec::new(), "no keys"),
    ];
    for (keys, why) in cases {
        let call = sim.cas_group(0, &keys, GroupCas::Read);
        match outcome(&mut sim, call) {
            Outcome::Refused(reason) => assert!(reason.contains(why), "{keys:?}: {reason}"),
            other => panic!("{keys:?}: {other:?}"),
        }
    }
}

#[test]
fn a_restarted_replica_learns_the_tags_keys_before_it_decides() {
    // Three nodes, every one a replica of every key, with anti-entropy
    // too slow to repair anything during the test.
    let data = Config {
        anti_entropy_period_ms: 3_600_000,
        anti_entropy_bytes_per_sec: 1,
        ..Config::default()
    };
    let mut sim = Sim::with_data_config(3, MembershipConfig::lan(3), data, seed_from_env(82));
    let all = [0, 1, 2];
    sessmesh_sim::Scenario::new("start")
        .start(all, &all)
        .expect_within(sessmesh_sim::Check::Converged, 30_000)
        .run(&mut sim)
        .unwrap_or_else(|f| panic!("{f}"));
    sim.run_for(3_000);
    let transfer = GroupOp::Transfer {
        from: 0,
        to: 1,
        amount: 5,
    };
    // node-2 is cut off: node-0 and node-1 alone decide the transfer.
    sim.faults_mut().groups = vec![[0, 1].into_iter().collect(), [2].into_iter().collect()];
    assert_eq!(
        run_op(&mut sim, 0, &transfer),
        Some(GroupResult::Moved(-5, 5))
    );
    // node-0 restarts with an empty memory while all three meet, and learns
    // the tag's consensus state and keys from the others; then node-1, the
    // other node that holds the transfer, is cut off.
    sim.crash(0);
    sim.run_for(1_000);
    sim.faults_mut().groups = Vec::new();
    sim.start(0, &[1, 2]);
    sim.run_for(600);
    sim.faults_mut().groups = vec![[0, 2].into_iter().collect(), [1].into_iter().collect()];
    // node-2 never heard of the transfer; node-0 learned it.
    let values = BTreeMap::from([(0, "-5".to_owned()), (1, "5".to_owned())]);
    assert_eq!(
        run_op(&mut sim, 2, &GroupOp::ReadAll),
        Some(GroupResult::Values(values)),
        "seed {}",
        sim.seed()
    );
}
