//! Membership under faults, in the simulator. Every test prints the seed that
//! replays it when it fails; `SIM_SEED=<seed>` replays.

use sessmesh_core::MembershipConfig;
use sessmesh_sim::{Check, Scenario, Sim, Step, seed_from_env};

fn lan(nodes: usize) -> MembershipConfig {
    MembershipConfig::lan(u32::try_from(nodes).unwrap_or(u32::MAX))
}

fn run(nodes: usize, scenario: &Scenario, default_seed: u64) -> Sim {
    let mut sim = Sim::new(nodes, lan(nodes), seed_from_env(default_seed));
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
    sim
}

/// Five nodes joined through node 0, converged.
fn five_converged(name: &str) -> Scenario {
    Scenario::new(name)
        .start([0], &[])
        .start(1..5, &[0])
        .expect_within(Check::Converged, 30_000)
}

#[test]
fn five_nodes_converge_from_one_seed_address() {
    run(
        5,
        &five_converged("five nodes converge from one seed address"),
        1,
    );
}

#[test]
fn a_crashed_node_is_seen_down_by_every_member_within_the_bound() {
    let bound = lan(5).detection_bound_ms();
    let scenario = five_converged("a crashed node is seen down by all")
        .crash(3)
        .expect_within(
            Check::AllSeeGone {
                node: 3,
                left: false,
            },
            bound,
        )
        .expect_within(Check::Converged, bound);
    run(5, &scenario, 2);
}

#[test]
fn a_leaving_node_is_reported_left_at_once() {
    let config = lan(5);
    // Well before suspicion could have declared it down.
    let quick = config.probe_period_ms * 2;
    assert!(quick < config.suspect_to_down_after_ms);
    let scenario = five_converged("a leaving node is reported left")
        .leave(4)
        .expect_within(
            Check::AllSeeGone {
                node: 4,
                left: true,
            },
            quick,
        )
        .expect(Check::Converged);
    run(5, &scenario, 3);
}

#[test]
fn a_restarted_node_rejoins_as_a_new_generation() {
    let bound = lan(5).detection_bound_ms();
    let scenario = five_converged("a restarted node rejoins as a new generation")
        .crash(2)
        .restart(2, &[0])
        .expect_within(
            Check::Generation {
                node: 2,
                generation: 2,
            },
            bound,
        )
        .expect_within(Check::Converged, bound);
    run(5, &scenario, 4);
}

#[test]
fn a_late_joiner_and_a_restarted_node_learn_every_members_state() {
    let bound = lan(3).detection_bound_ms();
    // A node announces itself alive after its first anti-entropy period.
    let alive = sessmesh_core::Config::default().anti_entropy_period_ms + 1_000;
    let scenario = Scenario::new("states reach a late joiner and a restarted node")
        .start([0], &[])
        .start([1], &[0])
        .expect_within(Check::Converged, bound)
        .wait(alive)
        .expect(Check::StatesKnown)
        // Both announced alive long ago; the newcomer still learns it.
        .start([2], &[0])
        .expect_within(Check::Converged, bound)
        .expect_within(Check::StatesKnown, bound)
        .wait(alive)
        .expect(Check::StatesKnown)
        // A restart is a new member that must learn the others' states anew.
        .crash(0)
        .restart(0, &[1])
        .expect_within(Check::Converged, 2 * bound)
        .expect_within(Check::StatesKnown, bound)
        .wait(alive)
        .expect(Check::StatesKnown);
    run(3, &scenario, 11);
}

#[test]
fn a_partition_gives_two_views_and_healing_gives_one() {
    let config = lan(5);
    let bound = config.detection_bound_ms();
    let scenario = five_converged("a {2,3} partition and its heal")
        .partition(&[&[0, 1], &[2, 3, 4]])
        .expect_within(Check::Views(vec![vec![0, 1], vec![2, 3, 4]]), bound)
        .heal()
        .expect_within(
            Check::Converged,
            bound + 2 * config.announce_to_down_period_ms,
        );
    run(5, &scenario, 5);
}

#[test]
fn a_node_with_other_partition_settings_is_refused() {
    let scenario = five_converged("a node with another partition count is refused")
        .step(Step::StartMisconfigured {
            node: 5,
            seeds: vec![0],
            partition_count: 128,
        })
        .wait(10_000)
        .expect(Check::Refused(5));
    run(6, &scenario, 6);
}

#[test]
fn two_hundred_nodes_converge_after_start_and_after_ten_percent_crash() {
    let config = lan(200);
    let mut scenario = Scenario::new("200 nodes, then 10% crash")
        .start([0], &[])
        .start(1..200, &[0])
        .expect_within(Check::Converged, 120_000);
    for node in (7..200).step_by(10) {
        scenario = scenario.crash(node);
    }
    scenario = scenario.expect_within(Check::Converged, 2 * config.detection_bound_ms());
    let sim = run(200, &scenario, 7);
    assert_eq!(sim.up_nodes().len(), 180);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let scenario = five_converged("replay")
        .crash(1)
        .partition(&[&[0, 2], &[3, 4]])
        .wait(20_000)
        .heal()
        .wait(20_000);
    let trace = |seed| {
        let mut sim = Sim::new(5, lan(5), seed);
        scenario.run(&mut sim).expect("runs");
        (format!("{:?}", sim.observed()), sim.traffic())
    };
    assert_eq!(trace(11), trace(11));
    assert_ne!(trace(11), trace(12));
}

#[test]
fn an_unreachable_seed_is_retried_not_fatal() {
    let config = lan(3);
    // Nodes 1 and 2 list a seed that is down, and node 0, which starts 10 s later.
    let scenario = Scenario::new("a seed that is not up yet")
        .start(1..3, &[0])
        .wait(10_000)
        .expect(Check::Views(vec![vec![1], vec![2]]))
        .start([0], &[])
        .expect_within(Check::Converged, 3 * config.rejoin_period_ms);
    run(3, &scenario, 8);
}

#[test]
fn a_cluster_formed_while_its_seed_was_cut_off_merges_with_it_after_the_heal() {
    // node-0 starts alone; node-1 and node-2 join through it while it is
    // cut off, and form a cluster of their own through each other. Once the
    // network heals, nothing but the seed links the two.
    let scenario = Scenario::new("a seed cut off at the join")
        .start([0], &[])
        .partition(&[&[0], &[1, 2]])
        .start([1], &[0])
        .start([2], &[0, 1])
        .expect_within(Check::Views(vec![vec![0], vec![1, 2]]), 30_000)
        .wait(5_000)
        .heal()
        .expect_within(Check::Converged, 30_000);
    run(3, &scenario, 61);
}
