//! Deterministic simulation of a sessmesh cluster.
//!
//! [`Sim`] runs many core nodes in one thread, in virtual time, over a
//! simulated network. Every random choice comes from one seed: packet loss,
//! duplication, delay, and each node's own randomness. So a run is a pure
//! function of its seed and its [`Scenario`], and `SIM_SEED=<seed>` replays a
//! failure exactly.
//!
//! A [`Scenario`] is data: a list of [`Step`]s (start nodes, wait, cut the
//! network, crash a node, write, delete and read keys, check a property,
//! wait until a property holds) that reads like the story it tests. The
//! data checks (replicas agree, acknowledged writes survive) are in
//! `data.rs`. [`Scenario::run`] returns a [`Failure`]
//! naming the seed and the step that failed.
//!
//! Faults: partitions into groups, one-way cuts, loss, duplication, delay with
//! jitter (which reorders packets), per-node clock drift (a node's timers run
//! fast or slow), per-node clock skew (its wall clock, and so its stamps, run
//! ahead or behind), crash, and restart as a new generation.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sessmesh_core::{
    CallId, Config, Effect, Level, Member, MemberEvent, MembershipConfig, Message, Node, NodeEvent,
    Outcome, Stamp, Timer, Write,
};

mod data;
pub mod fault_plan;
pub mod linearizable;
pub mod peers;
pub mod registers;
mod scenario;

pub use data::{DataCall, FIELD};
pub use scenario::{Check, Failure, Scenario, Step};

/// The partition settings every simulated node runs with.
pub const PARTITIONS: u32 = 256;
/// The replication factor every simulated node runs with.
pub const REPLICATION_FACTOR: u32 = 3;

/// The seed from `SIM_SEED`, or `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The seeds a sweep runs: `SIM_SEED` alone when set (to replay one),
/// else `0..SIM_SEEDS`, or `0..default`.
pub fn seeds_from_env(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..count).collect()
}

/// `nodes` nodes on LAN settings, started through node 0 and converged,
/// drawing from `SIM_SEED` or `seed`; a failure to converge panics with
/// the seed.
pub fn converged_lan(nodes: usize, seed: u64) -> Sim {
    let config = MembershipConfig::lan(u32::try_from(nodes).unwrap_or(u32::MAX));
    let mut sim = Sim::new(nodes, config, seed_from_env(seed));
    let scenario = Scenario::new("start")
        .start([0], &[])
        .start(1..nodes, &[0])
        .expect_within(Check::Converged, 30_000);
    if let Err(failure) = scenario.run(&mut sim) {
        panic!("{failure}");
    }
    sim
}

/// Network faults in force.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Partition groups: nodes in different groups cannot reach each other.
    /// Empty means one group.
    pub groups: Vec<BTreeSet<usize>>,
    /// `(from, to)` pairs whose packets are dropped.
    pub one_way_cuts: HashSet<(usize, usize)>,
    /// Percentage of packets lost.
    pub loss_percent: u32,
    /// Percentage of packets delivered twice.
    pub duplicate_percent: u32,
    /// Base one-way delay, ms.
    pub delay_ms: u64,
    /// Extra random delay up to this, ms; it reorders packets.
    pub jitter_ms: u64,
}

impl Faults {
    fn group_of(&self, node: usize) -> Option<usize> {
        self.groups.iter().position(|g| g.contains(&node))
    }

    fn blocks(&self, from: usize, to: usize) -> bool {
        if self.one_way_cuts.contains(&(from, to)) {
            return true;
        }
        !self.groups.is_empty() && self.group_of(from) != self.group_of(to)
    }
}

#[derive(Debug)]
enum Event {
    Packet {
        from: usize,
        to: usize,
        payload: Bytes,
    },
    Message {
        from: usize,
        to: usize,
        message: Message,
    },
    Timer {
        node: usize,
        start: u64,
        timer: Timer,
    },
}

#[derive(Debug)]
struct Scheduled {
    at_ms: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

/// One simulated node.
struct SimNode {
    name: String,
    addr: SocketAddr,
    /// How many times it was started: its generation at start, and what its
    /// timers carry so that a crashed run's timers die with it. (Membership
    /// may renew the generation further on its own.)
    starts: u64,
    core: Option<Node>,
    /// Parts per million its timers run slow (positive) or fast (negative).
    drift_ppm: i64,
    /// How far its wall clock is ahead of true time (negative: behind), ms.
    skew_ms: i64,
}

/// Something a node reported, with when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Virtual time, ms.
    pub at_ms: u64,
    /// The node that reported it.
    pub node: usize,
    /// What it reported.
    pub event: MemberEvent,
}

/// Traffic totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Gossip packets sent.
    pub packets: u64,
    /// Gossip bytes sent.
    pub bytes: u64,
}

/// A simulated cluster. See the [crate docs](crate).
pub struct Sim {
    seed: u64,
    now_ms: u64,
    rng: SmallRng,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    config: MembershipConfig,
    /// The data settings every node runs with (its partition count aside).
    data: Config,
    faults: Faults,
    observed: Vec<Observed>,
    traffic: Traffic,
    /// Answers to client calls, by call.
    outcomes: HashMap<CallId, Outcome>,
    /// When each call was answered, virtual ms.
    answered_ms: HashMap<CallId, u64>,
    next_call: u64,
    /// Messages refused for stamps beyond the drift bound, by sender.
    drift_refusals: HashMap<usize, u64>,
    /// Each node's reports of its own clock running ahead or back in sync,
    /// with when.
    clock_reports: Vec<(u64, usize, NodeEvent)>,
    /// The writes and deletes issued for the data checks (data.rs).
    ledger: Vec<DataCall>,
    /// Every eviction a node sent: the node, the key and the stamp.
    evictions: Vec<(usize, Bytes, Stamp)>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("now_ms", &self.now_ms)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A cluster of `nodes` nodes, none started yet, with every random choice drawn from `seed`.
    pub fn new(nodes: usize, config: MembershipConfig, seed: u64) -> Self {
        Self::with_data_config(nodes, config, Config::default(), seed)
    }

    /// As [`Sim::new`], with the nodes' data settings (timeouts, hints,
    /// anti-entropy) taken from `data`.
    pub fn with_data_config(
        nodes: usize,
        config: MembershipConfig,
        data: Config,
        seed: u64,
    ) -> Self {
        let rng = SmallRng::seed_from_u64(seed);
        let nodes: Vec<SimNode> = (0..nodes)
            .map(|i| SimNode {
                name: format!("node-{i}"),
                addr: addr_of(i),
                starts: 0,
                core: None,
                drift_ppm: 0,
                skew_ms: 0,
            })
            .collect();
        let by_addr = nodes.iter().enumerate().map(|(i, n)| (n.addr, i)).collect();
        Sim {
            seed,
            now_ms: 0,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            by_addr,
            config,
            data,
            faults: Faults::default(),
            observed: Vec::new(),
            traffic: Traffic::default(),
            outcomes: HashMap::new(),
            answered_ms: HashMap::new(),
            next_call: 0,
            drift_refusals: HashMap::new(),
            clock_reports: Vec::new(),
            ledger: Vec::new(),
            evictions: Vec::new(),
        }
    }

    /// The seed this run draws from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Virtual time, ms since the start.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The membership settings.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Everything nodes reported so far.
    pub fn observed(&self) -> &[Observed] {
        &self.observed
    }

    /// Gossip traffic so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// The faults in force.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The faults in force, to change.
    pub fn faults_mut(&mut self) -> &mut Faults {
        &mut self.faults
    }

    /// Makes `node`'s timers run `ppm` parts per million slow (or fast, if negative).
    pub fn set_drift(&mut self, node: usize, ppm: i64) {
        self.nodes[node].drift_ppm = ppm;
    }

    /// Sets `node`'s clock `ms` ahead of true time (negative: behind). A
    /// running node's clock steps, and its runtime tells it so, as the real
    /// one does when the wall clock moves unlike the monotonic one.
    pub fn set_skew(&mut self, node: usize, ms: i64) {
        self.nodes[node].skew_ms = ms;
        let now = self.wall_ms(node);
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.clock_stepped(now);
            self.drain(node);
        }
    }

    /// Every eviction a node sent ([`NodeEvent::Evicted`]): the node, the
    /// key and the eviction's stamp, in order.
    pub fn evictions(&self) -> &[(usize, Bytes, Stamp)] {
        &self.evictions
    }

    /// What `node` reported of its own clock ([`NodeEvent::ClockAhead`],
    /// [`NodeEvent::ClockInSync`]), with the virtual time of each report.
    pub fn clock_reports(&self, node: usize) -> Vec<(u64, NodeEvent)> {
        self.clock_reports
            .iter()
            .filter(|(_, n, _)| *n == node)
            .map(|(at, _, event)| (*at, event.clone()))
            .collect()
    }

    /// What `node`'s wall clock reads now: virtual time from a fixed epoch,
    /// plus its skew.
    pub fn wall_ms(&self, node: usize) -> u64 {
        (EPOCH_MS + self.now_ms).saturating_add_signed(self.nodes[node].skew_ms)
    }

    /// Has `node` coordinate a write; its outcome appears in [`Sim::outcome`].
    pub fn write(&mut self, node: usize, key: &[u8], write: Write, level: Level) -> CallId {
        let call = self.next_call();
        let now = self.wall_ms(node);
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.write(call, Bytes::copy_from_slice(key), write, level, now);
            self.drain(node);
        }
        call
    }

    /// Has `node` coordinate a read; its outcome appears in [`Sim::outcome`].
    pub fn read(&mut self, node: usize, key: &[u8], level: Level) -> CallId {
        let call = self.next_call();
        let now = self.wall_ms(node);
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.read(call, Bytes::copy_from_slice(key), level, now);
            self.drain(node);
        }
        call
    }

    fn next_call(&mut self) -> CallId {
        self.next_call += 1;
        CallId(self.next_call)
    }

    /// Messages from `sender` refused for stamps beyond the drift bound.
    pub fn drift_refusals(&self, sender: usize) -> u64 {
        self.drift_refusals.get(&sender).copied().unwrap_or(0)
    }

    /// How a call ended, once it has.
    pub fn outcome(&self, call: CallId) -> Option<&Outcome> {
        self.outcomes.get(&call)
    }

    /// When a call was answered, ms of virtual time.
    pub fn answered_ms(&self, call: CallId) -> Option<u64> {
        self.answered_ms.get(&call).copied()
    }

    /// Whether `node` is running.
    pub fn is_up(&self, node: usize) -> bool {
        self.nodes[node].core.is_some()
    }

    /// The running nodes.
    pub fn up_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&n| self.is_up(n)).collect()
    }

    /// `node`'s core state machines, if it runs.
    pub fn core(&self, node: usize) -> Option<&Node> {
        self.nodes[node].core.as_ref()
    }

    /// `node`'s current identity (its latest generation).
    pub fn member(&self, node: usize) -> Option<&Member> {
        self.nodes[node].core.as_ref().map(Node::me)
    }

    /// What `node` sees: the names and generations of the members it
    /// considers active, itself included.
    pub fn view(&self, node: usize) -> BTreeSet<(String, u64)> {
        let Some(core) = &self.nodes[node].core else {
            return BTreeSet::new();
        };
        core.membership()
            .members()
            .chain(std::iter::once(core.me()))
            .map(|m| (m.name.clone(), m.generation))
            .collect()
    }

    /// Starts (or restarts, as its next generation) `node` and has it join
    /// through the nodes in `seeds`.
    pub fn start(&mut self, node: usize, seeds: &[usize]) {
        self.start_with(node, seeds, PARTITIONS);
    }

    /// Starts `node` running with `partition_count` partitions (to test that
    /// a node with other settings is refused).
    pub fn start_with(&mut self, node: usize, seeds: &[usize], partition_count: u32) {
        let n = &mut self.nodes[node];
        n.starts += 1;
        let me = Member {
            name: n.name.clone(),
            addr: n.addr,
            client_addr: None,
            generation: n.starts,
            partition_count,
            replication_factor: REPLICATION_FACTOR,
        };
        let node_seed = self.rng.random::<u64>();
        let config = Config {
            partition_count,
            replication_factor: REPLICATION_FACTOR as usize,
            ..self.data.clone()
        };
        let mut core = Node::new(me, &config, self.config.clone(), node_seed)
            .expect("the simulation's config is valid");
        let seed_addrs: Vec<SocketAddr> = seeds.iter().map(|&s| addr_of(s)).collect();
        core.join(&seed_addrs);
        self.nodes[node].core = Some(core);
        self.drain(node);
    }

    /// Stops `node` at once, as a crash: no goodbye, its timers die with it.
    pub fn crash(&mut self, node: usize) {
        self.nodes[node].core = None;
    }

    /// Has `node` leave the cluster on purpose, then stop: it announces
    /// `Leaving`, keeps running for two probe periods while that spreads, then
    /// says goodbye.
    pub fn leave(&mut self, node: usize) {
        let Some(core) = self.nodes[node].core.as_mut() else {
            return;
        };
        core.prepare_leave();
        self.drain(node);
        self.run_for(2 * self.config.probe_period_ms);
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.leave();
            self.drain(node);
        }
        self.nodes[node].core = None;
    }

    /// Runs the simulation for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now_ms + ms;
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at_ms > until {
                break;
            }
            let Some(Reverse(Scheduled { at_ms, event, .. })) = self.queue.pop() else {
                break;
            };
            self.now_ms = at_ms;
            self.dispatch(event);
        }
        self.now_ms = until;
    }

    /// Runs until `done` holds (checked every `step_ms`) or `within_ms` passes;
    /// returns the virtual time it took.
    pub fn run_until(
        &mut self,
        within_ms: u64,
        step_ms: u64,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<u64> {
        let start = self.now_ms;
        loop {
            if done(self) {
                return Some(self.now_ms - start);
            }
            if self.now_ms - start >= within_ms {
                return None;
            }
            self.run_for(step_ms.min(within_ms - (self.now_ms - start)).max(1));
        }
    }

    /// Whether every running node sees exactly the running nodes, at their
    /// current generations: one view, and it is the truth.
    pub fn converged(&self) -> bool {
        let truth: HashMap<&str, u64> = self
            .up_nodes()
            .iter()
            .filter_map(|&n| self.member(n))
            .map(|m| (m.name.as_str(), m.generation))
            .collect();
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .all(|core| {
                let mut seen = 0;
                for member in core.membership().members() {
                    if truth.get(member.name.as_str()) != Some(&member.generation) {
                        return false;
                    }
                    seen += 1;
                }
                seen + 1 == truth.len()
            })
    }

    /// The distinct views of the running nodes, each with the nodes holding it.
    pub fn views(&self) -> BTreeMap<BTreeSet<(String, u64)>, Vec<usize>> {
        let mut views: BTreeMap<_, Vec<usize>> = BTreeMap::new();
        for n in self.up_nodes() {
            views.entry(self.view(n)).or_default().push(n);
        }
        views
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Packet { from, to, payload } => {
                let from_addr = self.nodes[from].addr;
                if let Some(core) = self.nodes[to].core.as_mut() {
                    core.handle_gossip(from_addr, &payload);
                    self.drain(to);
                }
            }
            Event::Message { from, to, message } => {
                let from_addr = self.nodes[from].addr;
                let now = self.wall_ms(to);
                if let Some(core) = self.nodes[to].core.as_mut() {
                    core.handle_message(from_addr, message, now);
                    self.drain(to);
                }
            }
            Event::Timer { node, start, timer } => {
                let now = self.wall_ms(node);
                let n = &mut self.nodes[node];
                if n.starts == start
                    && let Some(core) = n.core.as_mut()
                {
                    core.handle_timer(timer, now);
                    self.drain(node);
                }
            }
        }
    }

    fn schedule(&mut self, after_ms: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at_ms: self.now_ms + after_ms,
            seq: self.seq,
            event,
        }));
    }

    fn drain(&mut self, node: usize) {
        let Some(core) = self.nodes[node].core.as_mut() else {
            return;
        };
        let effects = core.take_effects();
        let start = self.nodes[node].starts;
        for effect in effects {
            match effect {
                Effect::Gossip { to, payload } => self.send(node, to, payload),
                Effect::Send { to, message } => self.deliver(node, to, message),
                Effect::Done { call, outcome } => {
                    self.outcomes.insert(call, outcome);
                    self.answered_ms.insert(call, self.now_ms);
                }
                Effect::Schedule { after, timer } => {
                    let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
                    let drift = self.nodes[node].drift_ppm;
                    let ms = ms
                        .saturating_add_signed(ms as i64 * drift / 1_000_000)
                        .max(1);
                    self.schedule(ms, Event::Timer { node, start, timer });
                }
                Effect::Event(NodeEvent::Member(event)) => {
                    self.observed.push(Observed {
                        at_ms: self.now_ms,
                        node,
                        event,
                    });
                }
                Effect::Event(NodeEvent::ReplicasChanged(_) | NodeEvent::SessionsChanged(_)) => {}
                Effect::Event(NodeEvent::Evicted { key, stamp }) => {
                    self.evictions.push((node, key, stamp));
                }
                Effect::Event(event @ (NodeEvent::ClockAhead { .. } | NodeEvent::ClockInSync)) => {
                    self.clock_reports.push((self.now_ms, node, event));
                }
                Effect::Event(NodeEvent::ClockDriftRefused { from, .. }) => {
                    if let Some(&sender) = self.by_addr.get(&from) {
                        *self.drift_refusals.entry(sender).or_default() += 1;
                    }
                }
            }
        }
    }

    /// Delivers a message like the transport's streams do: never lost to
    /// random loss, which QUIC repairs, but lost while the network blocks the
    /// link (as a connection that timed out loses what it held), and sent
    /// twice at the duplication rate (the transport resends a batch whose
    /// write failed, so messages are at least once across reconnects).
    fn deliver(&mut self, from: usize, to: SocketAddr, message: Message) {
        let Some(&to) = self.by_addr.get(&to) else {
            return;
        };
        if self.faults.blocks(from, to) {
            return;
        }
        self.transmit(|| Event::Message {
            from,
            to,
            message: message.clone(),
        });
    }

    fn send(&mut self, from: usize, to: SocketAddr, payload: Bytes) {
        self.traffic.packets += 1;
        self.traffic.bytes += payload.len() as u64;
        let Some(&to) = self.by_addr.get(&to) else {
            return;
        };
        if self.faults.blocks(from, to) || self.rng.random_range(0..100) < self.faults.loss_percent
        {
            return;
        }
        self.transmit(|| Event::Packet {
            from,
            to,
            payload: payload.clone(),
        });
    }

    /// Schedules the event `make` builds after the path's delay and jitter,
    /// twice at the duplication rate.
    fn transmit(&mut self, make: impl Fn() -> Event) {
        let copies = if self.rng.random_range(0..100) < self.faults.duplicate_percent {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if self.faults.jitter_ms == 0 {
                0
            } else {
                self.rng.random_range(0..=self.faults.jitter_ms)
            };
            let delay = (self.faults.delay_ms + jitter).max(1);
            self.schedule(delay, make());
        }
    }
}

impl Drop for Sim {
    /// Every run ends with the digests checked (see [`Sim::check_digests`]).
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Err(why) = self.check_digests() {
            panic!("{why}\nreplay with SIM_SEED={}", self.seed);
        }
    }
}

/// Virtual time 0 on the nodes' wall clocks: 2023-11-14T22:13:20Z.
pub(crate) const EPOCH_MS: u64 = 1_700_000_000_000;

fn addr_of(node: usize) -> SocketAddr {
    let port = u16::try_from(10_000 + node).expect("fewer than 55,000 simulated nodes");
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
