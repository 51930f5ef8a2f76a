//! Consensus operations under faults: conditional writes, compare-and-sets,
//! increments and reads on a few keys, from every node at random times,
//! while the network partitions, loses, duplicates and reorders packets, a
//! clock runs ahead within the drift bound, and (in some runs) a node
//! crashes and restarts. Each key's history must be linearizable (see
//! `sessmesh_sim::linearizable`). 1,000 seeds by default; `SIM_SEEDS=n`
//! runs more; `SIM_SEED=s` replays one.

use std::collections::BTreeSet;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sessmesh_core::{CallId, Cas, Condition, MembershipConfig, Outcome, Write};
use sessmesh_sim::linearizable::{Event, RegisterOp, RegisterResult, check};
use sessmesh_sim::{Check, Scenario, Sim};

const NODES: usize = 5;
const KEYS: usize = 3;
const OPERATIONS: usize = 36;

/// The register operation as a consensus operation on the key's field "".
fn cas(op: &RegisterOp) -> Cas {
    let put = |v: &Option<String>| match v {
        Some(v) => Write::PutField {
            name: Bytes::new(),
            value: Bytes::from(v.clone()),
        },
        None => Write::DeleteField { name: Bytes::new() },
    };
    match op {
        RegisterOp::Read => Cas::Read,
        RegisterOp::SetIfAbsent(v) => Cas::Write {
            when: Condition::Field {
                name: Bytes::new(),
                value: None,
            },
            write: put(&Some(v.clone())),
        },
        RegisterOp::SetIf { expect, new } => Cas::Write {
            when: Condition::Field {
                name: Bytes::new(),
                value: expect.clone().map(Bytes::from),
            },
            write: put(new),
        },
        RegisterOp::Add(by) => Cas::Increment {
            field: Bytes::new(),
            by: *by,
            when: Condition::Always,
        },
    }
}

/// The field "" of a session as the register's value.
fn value_of(session: Option<&sessmesh_core::Session>, now_ms: u64) -> Option<String> {
    session?
        .visible_fields(now_ms)?
        .find(|(n, _)| n.is_empty())
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// What the outcome says the operation answered; `None` when it may or may
/// not have taken effect; `Some(None)` when it certainly did not.
fn observed(
    op: &RegisterOp,
    outcome: Option<&Outcome>,
    now_ms: u64,
) -> Option<Option<RegisterResult>> {
    match outcome {
        None => None,
        Some(Outcome::Undecided {
            maybe_applied: true,
            ..
        }) => None,
        Some(Outcome::Decided(d)) => Some(Some(match op {
            RegisterOp::Read => RegisterResult::Value(value_of(d.before.as_ref(), now_ms)),
            RegisterOp::Add(_) => RegisterResult::Value(match &d.written {
                Some((Write::PutField { value, .. }, _)) => {
                    Some(String::from_utf8_lossy(value).into_owned())
                }
                _ => None,
            }),
            RegisterOp::SetIf { .. } | RegisterOp::SetIfAbsent(_) => {
                RegisterResult::Applied(d.applied)
            }
        })),
        Some(Outcome::Refused(reason)) if reason.contains("not an integer") => {
            Some(Some(RegisterResult::NotAnInteger))
        }
        // Refused before anything was proposed, or undecided for certain.
        Some(_) => Some(None),
    }
}

fn run(seed: u64) -> Result<(), String> {
    let config = MembershipConfig::lan(u32::try_from(NODES).unwrap_or(u32::MAX));
    let mut sim = Sim::new(NODES, config, seed);
    let everyone: Vec<usize> = (0..NODES).collect();
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xC0_u64.rotate_left(48));
    Scenario::new("start")
        .start(everyone.iter().copied(), &everyone)
        .expect_within(Check::Converged, 30_000)
        .run(&mut sim)
        .map_err(|f| f.to_string())?;
    sim.run_for(2_000);
    if rng.random_range(0..3) == 0 {
        sim.set_skew(rng.random_range(0..NODES), rng.random_range(-400..400));
    }
    if rng.random_range(0..3) == 0 {
        let faults = sim.faults_mut();
        faults.loss_percent = 10;
        faults.duplicate_percent = 10;
        faults.jitter_ms = 50;
    }
    let crashed = (rng.random_range(0..3) == 0).then(|| rng.random_range(0..NODES));
    let mut log: Vec<(CallId, usize, RegisterOp, u64)> = Vec::new();
    for i in 0..OPERATIONS {
        if i == OPERATIONS / 3 {
            let mut sides = vec![BTreeSet::new(), BTreeSet::new()];
            for n in 0..NODES {
                sides[rng.random_range(0..2)].insert(n);
            }
            sim.faults_mut().groups = sides;
            if let Some(node) = crashed {
                sim.crash(node);
            }
        }
        if i == 2 * OPERATIONS / 3 {
            sim.faults_mut().groups.clear();
            if let Some(node) = crashed {
                sim.start(node, &everyone);
            }
        }
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
        check(&history).map_err(|why| format!("k{key}: {why}"))?;
    }
    Ok(())
}

#[test]
fn consensus_operations_are_linearizable_under_faults() {
    for seed in sessmesh_sim::seeds_from_env(1_000) {
        if let Err(reason) = run(seed) {
            panic!("seed {seed}: {reason}\nreplay with SIM_SEED={seed}");
        }
    }
}
