//! Consensus operations under faults: conditional writes, compare-and-sets,
//! increments and reads on a few keys, from every node at random times,
//! under the faults of `sessmesh_sim::fault_plan` (splits, some long
//! enough for down declarations; loss, duplication and reordering; clock
//! skew; a crash with restart; nodes joining or leaving while the network
//! is split, so that views of a key's replicas differ for a while). Each
//! key's history must be linearizable (see `sessmesh_sim::linearizable`). 1,000 seeds by default; `SIM_SEEDS=n`
//! runs more; `SIM_SEED=s` replays one.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sessmesh_core::{CallId, Outcome};
use sessmesh_sim::Sim;
use sessmesh_sim::fault_plan::{Change, FaultPlan};
use sessmesh_sim::linearizable::{Event, RegisterOp, check};
use sessmesh_sim::registers::{cas, observed};

const NODES: usize = 5;
const KEYS: usize = 3;
const OPERATIONS: usize = 36;

fn run(seed: u64) -> Result<Tally, String> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xC0_u64.rotate_left(48));
    let plan = FaultPlan::draw(NODES, OPERATIONS, &mut rng);
    let mut sim = plan.start(seed)?;
    let mut log: Vec<(CallId, usize, RegisterOp, u64)> = Vec::new();
    for i in 0..OPERATIONS {
        plan.before(&mut sim, i, &mut rng);
        let node = rng.random_range(0..NODES);
        let key = rng.random_range(0..KEYS);
        let expected = Some(format!("v{}", rng.random_range(0..3)));
        let op = match rng.random_range(0..5) {
            0 => RegisterOp::Read,
            1 => RegisterOp::SetIfAbsent(format!("v{i}")),
            2 => RegisterOp::SetIf {
                expect: expected,
                new: if i % 4 == 0 {
                    None
                } else {
                    Some(format!("v{}", i % 3))
                },
            },
            _ => RegisterOp::Add(1),
        };
        if sim.is_up(node) {
            let invoked = sim.now_ms();
            let call = sim.cas(node, &format!("k{key}"), cas(&op));
            if std::env::var("CONSENSUS_TRACE").is_ok() {
                trace(&sim, i, node, key, &op);
            }
            log.push((call, key, op, invoked));
        }
        sim.run_for(rng.random_range(0..300));
    }
    *sim.faults_mut() = sessmesh_sim::Faults::default();
    sim.run_for(10_000);
    for key in 0..KEYS {
        let history: Vec<Event> = log
            .iter()
            .filter(|(_, k, _, _)| *k == key)
            .filter_map(|(call, _, op, invoked)| {
                let answered_ms = sim.answered_ms(*call);
                let now = sim.wall_ms(0);
                match observed(op, sim.outcome(*call), now) {
                    Some(None) => None,
                    Some(Some(result)) => Some(Event {
                        op: op.clone(),
                        invoked_ms: *invoked,
                        answered: answered_ms.map(|at| (at, result)),
                    }),
                    None => Some(Event {
                        op: op.clone(),
                        invoked_ms: *invoked,
                        answered: None,
                    }),
                }
            })
            .collect();
        check(&history).map_err(|why| format!("k{key}: {why}\nfaults: {plan}"))?;
    }
    let decided = log
        .iter()
        .filter(|(call, ..)| matches!(sim.outcome(*call), Some(Outcome::Decided(_))))
        .count();
    Ok(Tally {
        issued: log.len(),
        decided,
        changed: plan.change.0 != Change::None,
    })
}

/// Prints an operation as it is invoked, with every node's view of the
/// key's replicas and the network's sides (`CONSENSUS_TRACE=1`).
fn trace(sim: &Sim, i: usize, node: usize, key: usize, op: &RegisterOp) {
    let key_name = format!("k{key}");
    let views: Vec<String> = (0..NODES)
        .map(|n| match sim.core(n) {
            Some(core) => {
                let p = core.store().partition_of(key_name.as_bytes());
                format!("{n}: {:?}", core.replicas_for(p))
            }
            None => format!("{n}: down"),
        })
        .collect();
    eprintln!(
        "op {i} at {} ms: node {node} {key_name} {op:?}; views {views:?}; sides {:?}",
        sim.now_ms(),
        sim.faults().groups
    );
}

/// How many operations a run issued, and how many were decided.
#[derive(Default)]
struct Tally {
    issued: usize,
    decided: usize,
    changed: bool,
}

#[test]
fn consensus_operations_are_linearizable_under_faults() {
    // Operations decided, of those issued: with and without a membership change.
    let mut totals = [(0, 0); 2];
    for seed in sessmesh_sim::seeds_from_env(1_000) {
        match run(seed) {
            Ok(tally) => {
                let total = &mut totals[usize::from(tally.changed)];
                total.0 += tally.decided;
                total.1 += tally.issued;
            }
            Err(reason) => panic!("seed {seed}: {reason}\nreplay with SIM_SEED={seed}"),
        }
    }
    eprintln!("decided of issued: {totals:?} (without, with a membership change)");
    // Safe is not enough: most operations are decided, membership changes or not.
    for (decided, issued) in totals {
        assert!(
            decided * 2 >= issued,
            "only {decided} of {issued} operations decided: {totals:?}"
        );
    }
}
