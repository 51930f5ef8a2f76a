//! Random fault schedules, one per seed: partitions, one-way cuts, loss,
//! duplication, delay and jitter, clock drift and skew, crashes and restarts. Once the
//! faults stop and crashed nodes come back, every schedule must end in one
//! view. 1,000 seeds run by default; `SIM_SEEDS=n` runs more, and `SIM_SEED=s`
//! replays one.

use std::collections::BTreeSet;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sessmesh_core::MembershipConfig;
use sessmesh_sim::{Check, Scenario, Sim, Step};

const NODES: usize = 5;

fn schedule(seed: u64, config: &MembershipConfig) -> Scenario {
    // The schedule's own choices use a stream separate from the simulation's.
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5CED_u64.rotate_left(32));
    let everyone: Vec<usize> = (0..NODES).collect();
    let mut scenario = Scenario::new(format!("random faults (seed {seed})"))
        .start(0..NODES, &everyone)
        .wait(5_000);
    let mut down: BTreeSet<usize> = BTreeSet::new();
    for _ in 0..rng.random_range(3..9) {
        let step = match rng.random_range(0..8) {
            0 => {
                let mut groups = vec![Vec::new(), Vec::new()];
                for n in 0..NODES {
                    groups[rng.random_range(0..2)].push(n);
                }
                Step::Partition(groups)
            }
            1 => {
                let from = rng.random_range(0..NODES);
                let to = (from + rng.random_range(1..NODES)) % NODES;
                Step::CutOneWay { from, to }
            }
            2 => Step::Loss(rng.random_range(0..40)),
            3 => Step::Duplicate(rng.random_range(0..40)),
            4 => Step::Delay {
                ms: rng.random_range(0..80),
                jitter_ms: rng.random_range(0..150),
            },
            5 if rng.random_range(0..2) == 0 => Step::Drift {
                node: rng.random_range(0..NODES),
                ppm: rng.random_range(-200_000..200_000),
            },
            5 => Step::Skew {
                node: rng.random_range(0..NODES),
                ms: rng.random_range(-400..400),
            },
            6 if down.len() + 1 < NODES => {
                let node = rng.random_range(0..NODES);
                if down.insert(node) {
                    Step::Crash(node)
                } else {
                    Step::Wait { ms: 0 }
                }
            }
            _ => match down.iter().next().copied() {
                Some(node) => {
                    down.remove(&node);
                    Step::Restart {
                        node,
                        seeds: everyone.clone(),
                    }
                }
                None => Step::Wait { ms: 0 },
            },
        };
        scenario = scenario.step(step).wait(rng.random_range(500..15_000));
    }
    scenario = scenario.heal();
    for node in down {
        scenario = scenario.restart(node, &everyone);
    }
    let settle = 2 * config.detection_bound_ms() + 2 * config.announce_to_down_period_ms;
    scenario.expect_within(Check::Converged, settle)
}

#[test]
fn random_fault_schedules_never_leave_a_permanent_split() {
    let config = MembershipConfig::lan(u32::try_from(NODES).unwrap_or(u32::MAX));
    let seeds = sessmesh_sim::seeds_from_env(1_000);
    let mut virtual_ms = 0;
    for &seed in &seeds {
        let mut sim = Sim::new(NODES, config.clone(), seed);
        if let Err(failure) = schedule(seed, &config).run(&mut sim) {
            panic!("{failure}");
        }
        virtual_ms += sim.now_ms();
    }
    eprintln!(
        "{} seeds, {} s of virtual time, no permanent split",
        seeds.len(),
        virtual_ms / 1000
    );
}
