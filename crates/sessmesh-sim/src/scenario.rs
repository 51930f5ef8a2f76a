//! Scenarios: what happens to a simulated cluster, step by step, and what
//! must hold.

use std::collections::BTreeSet;
use std::fmt;

use sessmesh_core::{Level, MemberEvent};

use crate::Sim;

/// How often `ExpectWithin` checks its condition, in virtual ms.
const CHECK_EVERY_MS: u64 = 50;

/// One step of a [`Scenario`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Start these nodes, each joining through the `seeds`.
    Start {
        /// The nodes.
        nodes: Vec<usize>,
        /// The seed nodes they announce to.
        seeds: Vec<usize>,
    },
    /// Start a node that runs with another partition count.
    StartMisconfigured {
        /// The node.
        node: usize,
        /// Its seeds.
        seeds: Vec<usize>,
        /// The partition count it runs with.
        partition_count: u32,
    },
    /// Let virtual time pass.
    Wait {
        /// How long, ms.
        ms: u64,
    },
    /// Split the network into groups that cannot reach each other.
    Partition(Vec<Vec<usize>>),
    /// Drop what `from` sends to `to`.
    CutOneWay {
        /// The sender.
        from: usize,
        /// The receiver.
        to: usize,
    },
    /// Restore the network: no partitions, no cuts, no loss, no extra delay.
    Heal,
    /// Lose this percentage of packets.
    Loss(u32),
    /// Deliver this percentage of packets twice.
    Duplicate(u32),
    /// Delay every packet.
    Delay {
        /// Base delay, ms.
        ms: u64,
        /// Extra random delay up to this, ms.
        jitter_ms: u64,
    },
    /// Make a node's timers run slow (positive) or fast (negative).
    Drift {
        /// The node.
        node: usize,
        /// Parts per million.
        ppm: i64,
    },
    /// Set a node's wall clock ahead of true time (negative: behind).
    Skew {
        /// The node.
        node: usize,
        /// Milliseconds.
        ms: i64,
    },
    /// Stop a node at once.
    Crash(usize),
    /// Start a stopped node again, as its next generation.
    Restart {
        /// The node.
        node: usize,
        /// Its seeds.
        seeds: Vec<usize>,
    },
    /// Have a node leave on purpose.
    Leave(usize),
    /// Have a node write a value under a key (see [`Sim::put`]); the step
    /// does not wait for the answer.
    Write {
        /// The coordinating node.
        node: usize,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The level it waits for.
        level: Level,
    },
    /// Have a node delete a key (see [`Sim::remove`]); the step does not
    /// wait for the answer.
    Delete {
        /// The coordinating node.
        node: usize,
        /// The key.
        key: String,
        /// The level it waits for.
        level: Level,
    },
    /// Have a node read a key at a quorum, and fail unless it sees `expect`
    /// (`None`: no value).
    Read {
        /// The coordinating node.
        node: usize,
        /// The key.
        key: String,
        /// The value it must see.
        expect: Option<String>,
    },
    /// Fail unless the check holds now.
    Expect(Check),
    /// Run until the check holds; fail if it does not within `within_ms`.
    ExpectWithin {
        /// The condition.
        check: Check,
        /// The deadline, ms of virtual time.
        within_ms: u64,
    },
}

/// A property of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Every running node sees exactly the running nodes, at their current generations.
    Converged,
    /// The running nodes split into exactly these groups, each seeing exactly
    /// its own running members.
    Views(Vec<Vec<usize>>),
    /// Every running node has reported `node` down (or left, if `left`).
    AllSeeGone {
        /// The node that went.
        node: usize,
        /// Whether it left on purpose (reported `Left`, not `Down`).
        left: bool,
    },
    /// `node` runs as `generation`, and every running node sees it so.
    Generation {
        /// The node.
        node: usize,
        /// Its expected generation.
        generation: u64,
    },
    /// Some running node refused `node`'s packets, and none counts it a member.
    Refused(usize),
    /// Every running node reports every other running member in the state
    /// that member announces (joining, alive, leaving).
    StatesKnown,
    /// Every running replica of every key written holds the same state of
    /// it (see [`Sim::check_replicas_agree`]).
    ReplicasAgree,
    /// Every running replica of every key holds its newest acknowledged
    /// write or something newer (see [`Sim::check_acknowledged_writes_survive`]).
    AcknowledgedWritesSurvive,
}

/// A list of steps with a name; build it with the methods, run it with [`Scenario::run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// What it tests.
    pub name: String,
    /// What happens, in order.
    pub steps: Vec<Step>,
}

/// Why a scenario failed, with what replays it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The scenario's name.
    pub scenario: String,
    /// The seed of the run.
    pub seed: u64,
    /// The index of the failing step.
    pub step: usize,
    /// The failing step.
    pub description: String,
    /// Virtual time of the failure, ms.
    pub at_ms: u64,
    /// What did not hold.
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scenario \"{}\" failed at step {} ({}) at {} ms of virtual time: {}\nreplay with SIM_SEED={}",
            self.scenario, self.step, self.description, self.at_ms, self.reason, self.seed
        )
    }
}

impl std::error::Error for Failure {}

impl Scenario {
    /// An empty scenario.
    pub fn new(name: impl Into<String>) -> Self {
        Scenario {
            name: name.into(),
            steps: Vec::new(),
        }
    }

    fn then(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Starts `nodes`, joining through `seeds`.
    pub fn start(self, nodes: impl IntoIterator<Item = usize>, seeds: &[usize]) -> Self {
        self.then(Step::Start {
            nodes: nodes.into_iter().collect(),
            seeds: seeds.to_vec(),
        })
    }

    /// Lets `ms` of virtual time pass.
    pub fn wait(self, ms: u64) -> Self {
        self.then(Step::Wait { ms })
    }

    /// Splits the network into `groups`.
    pub fn partition(self, groups: &[&[usize]]) -> Self {
        self.then(Step::Partition(groups.iter().map(|g| g.to_vec()).collect()))
    }

    /// Restores the network.
    pub fn heal(self) -> Self {
        self.then(Step::Heal)
    }

    /// Crashes `node`.
    pub fn crash(self, node: usize) -> Self {
        self.then(Step::Crash(node))
    }

    /// Restarts `node` as its next generation.
    pub fn restart(self, node: usize, seeds: &[usize]) -> Self {
        self.then(Step::Restart {
            node,
            seeds: seeds.to_vec(),
        })
    }

    /// Has `node` leave on purpose.
    pub fn leave(self, node: usize) -> Self {
        self.then(Step::Leave(node))
    }

    /// Has `node` write `value` under `key` at a quorum.
    pub fn write(self, node: usize, key: &str, value: &str) -> Self {
        self.then(Step::Write {
            node,
            key: key.into(),
            value: value.into(),
            level: Level::Quorum,
        })
    }

    /// Has `node` delete `key` at a quorum.
    pub fn delete(self, node: usize, key: &str) -> Self {
        self.then(Step::Delete {
            node,
            key: key.into(),
            level: Level::Quorum,
        })
    }

    /// Has `node` read `key` at a quorum; fails unless it sees `expect`.
    pub fn read(self, node: usize, key: &str, expect: Option<&str>) -> Self {
        self.then(Step::Read {
            node,
            key: key.into(),
            expect: expect.map(Into::into),
        })
    }

    /// Adds any step.
    pub fn step(self, step: Step) -> Self {
        self.then(step)
    }

    /// Fails unless `check` holds now.
    pub fn expect(self, check: Check) -> Self {
        self.then(Step::Expect(check))
    }

    /// Fails unless `check` comes to hold within `within_ms`.
    pub fn expect_within(self, check: Check, within_ms: u64) -> Self {
        self.then(Step::ExpectWithin { check, within_ms })
    }

    /// Runs every step on `sim`.
    ///
    /// # Errors
    /// The first [`Failure`], naming the step and the seed that replays it.
    pub fn run(&self, sim: &mut Sim) -> Result<(), Failure> {
        for (index, step) in self.steps.iter().enumerate() {
            apply(sim, step).map_err(|reason| Failure {
                scenario: self.name.clone(),
                seed: sim.seed(),
                step: index,
                description: format!("{step:?}"),
                at_ms: sim.now_ms(),
                reason,
            })?;
        }
        Ok(())
    }
}

fn apply(sim: &mut Sim, step: &Step) -> Result<(), String> {
    match step {
        Step::Start { nodes, seeds } => nodes.iter().for_each(|&n| sim.start(n, seeds)),
        Step::StartMisconfigured {
            node,
            seeds,
            partition_count,
        } => sim.start_with(*node, seeds, *partition_count),
        Step::Wait { ms } => sim.run_for(*ms),
        Step::Partition(groups) => {
            sim.faults_mut().groups = groups.iter().map(|g| g.iter().copied().collect()).collect();
        }
        Step::CutOneWay { from, to } => {
            sim.faults_mut().one_way_cuts.insert((*from, *to));
        }
        Step::Heal => *sim.faults_mut() = crate::Faults::default(),
        Step::Loss(percent) => sim.faults_mut().loss_percent = *percent,
        Step::Duplicate(percent) => sim.faults_mut().duplicate_percent = *percent,
        Step::Delay { ms, jitter_ms } => {
            let faults = sim.faults_mut();
            faults.delay_ms = *ms;
            faults.jitter_ms = *jitter_ms;
        }
        Step::Drift { node, ppm } => sim.set_drift(*node, *ppm),
        Step::Skew { node, ms } => sim.set_skew(*node, *ms),
        Step::Crash(node) => sim.crash(*node),
        Step::Restart { node, seeds } => sim.start(*node, seeds),
        Step::Leave(node) => sim.leave(*node),
        Step::Write {
            node,
            key,
            value,
            level,
        } => {
            sim.put(*node, key, value, *level);
        }
        Step::Delete { node, key, level } => {
            sim.remove(*node, key, *level);
        }
        Step::Read { node, key, expect } => {
            let seen = sim.read_value(*node, key)?;
            if seen != *expect {
                return Err(format!(
                    "node-{node} read {key} as {seen:?}, not {expect:?}"
                ));
            }
        }
        Step::Expect(check) => return check.holds(sim),
        Step::ExpectWithin { check, within_ms } => {
            let mut last = String::new();
            let met = sim.run_until(*within_ms, CHECK_EVERY_MS, |sim| match check.holds(sim) {
                Ok(()) => true,
                Err(why) => {
                    last = why;
                    false
                }
            });
            if met.is_none() {
                return Err(format!("not within {within_ms} ms: {last}"));
            }
        }
    }
    Ok(())
}

impl Check {
    /// Whether the check holds now, and if not, why.
    ///
    /// # Errors
    /// A description of what differs.
    pub fn holds(&self, sim: &Sim) -> Result<(), String> {
        match self {
            Check::Converged => {
                if sim.converged() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} different views: {}",
                        sim.views().len(),
                        describe(sim)
                    ))
                }
            }
            Check::Views(groups) => {
                for group in groups {
                    let running: Vec<usize> =
                        group.iter().copied().filter(|&n| sim.is_up(n)).collect();
                    let truth: BTreeSet<(String, u64)> = running
                        .iter()
                        .filter_map(|&n| sim.member(n).map(|m| (m.name.clone(), m.generation)))
                        .collect();
                    if let Some(&n) = running.iter().find(|&&n| sim.view(n) != truth) {
                        return Err(format!(
                            "node-{n} should see exactly {group:?}: {}",
                            describe(sim)
                        ));
                    }
                }
                Ok(())
            }
            Check::AllSeeGone { node, left } => {
                let name = format!("node-{node}");
                for observer in sim.up_nodes().into_iter().filter(|n| n != node) {
                    let seen = sim.observed().iter().any(|o| {
                        o.node == observer
                            && match &o.event {
                                MemberEvent::Down(m) => !left && m.name == name,
                                MemberEvent::Left(m) => *left && m.name == name,
                                _ => false,
                            }
                    });
                    if !seen {
                        let what = if *left { "left" } else { "down" };
                        return Err(format!("node-{observer} has not reported {name} {what}"));
                    }
                }
                Ok(())
            }
            Check::Generation { node, generation } => {
                let name = format!("node-{node}");
                let actual = sim.member(*node).map(|m| m.generation);
                if actual != Some(*generation) {
                    return Err(format!(
                        "{name} runs as generation {actual:?}, expected {generation}"
                    ));
                }
                for observer in sim.up_nodes() {
                    if !sim.view(observer).contains(&(name.clone(), *generation)) {
                        return Err(format!(
                            "node-{observer} does not see {name} at generation {generation}"
                        ));
                    }
                }
                Ok(())
            }
            Check::Refused(node) => {
                let name = format!("node-{node}");
                let refused = sim.observed().iter().any(
                    |o| matches!(&o.event, MemberEvent::Refused { name: n, .. } if *n == name),
                );
                if !refused {
                    return Err(format!("nobody refused {name}"));
                }
                if let Some(observer) = sim
                    .up_nodes()
                    .into_iter()
                    .find(|&o| o != *node && sim.view(o).iter().any(|(n, _)| *n == name))
                {
                    return Err(format!("node-{observer} counts {name} as a member"));
                }
                Ok(())
            }
            Check::ReplicasAgree => sim.check_replicas_agree(),
            Check::AcknowledgedWritesSurvive => sim.check_acknowledged_writes_survive(),
            Check::StatesKnown => {
                for observer in sim.up_nodes() {
                    let Some(core) = sim.core(observer) else {
                        continue;
                    };
                    for member in sim.up_nodes().into_iter().filter(|&m| m != observer) {
                        let Some(truth) = sim.core(member).map(|c| c.membership().state()) else {
                            continue;
                        };
                        let name = format!("node-{member}");
                        let seen = core.membership().state_of(&name);
                        if seen != Some(truth) {
                            return Err(format!(
                                "node-{observer} reports {name} as {seen:?}; it is {truth:?}"
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

fn describe(sim: &Sim) -> String {
    sim.views()
        .iter()
        .map(|(view, holders)| {
            let members: Vec<String> = view.iter().map(|(n, g)| format!("{n}@{g}")).collect();
            format!("{holders:?} see [{}]", members.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
