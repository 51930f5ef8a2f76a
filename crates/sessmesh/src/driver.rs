//! The task that owns a core node.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sessmesh_core::{
    CallId, Cas, Effect, EvictionPolicy, GroupCas, KeyChange, KeyRange, Level, Member, MemberEvent,
    MemberState, Message, NodeEvent, Outcome, PartitionId, Session, Write,
};
use sessmesh_net::{Incoming, Transport};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::Error;
use crate::local_writes::{LocalWrites, Queued};
use crate::memory_probe::{MemoryProbe, Readings};
use crate::status::{MemberStatus, Status};
use crate::timers::Timers;
pub(crate) use crate::wall_clock::now_ms;

/// The most queued calls or peer messages the task takes in one turn before
/// it sends what they caused: a burst leaves in one batch per peer, and a
/// steady stream of one kind cannot hold up timers or the other kind long.
const BATCH: usize = 256;

/// A request to the task.
pub(crate) enum Command {
    Members(oneshot::Sender<Vec<Member>>),
    Status(oneshot::Sender<Status>),
    Shutdown(Duration, oneshot::Sender<Result<(), Error>>),
    /// A write with its ticket (see [`crate::local_writes`]).
    Write(Bytes, Write, Level, oneshot::Sender<Outcome>, Queued),
    Read(Bytes, Level, oneshot::Sender<Outcome>),
    Consensus(Bytes, Cas, oneshot::Sender<Outcome>),
    ConsensusGroup(Vec<Bytes>, GroupCas, oneshot::Sender<Outcome>),
    SetMaxMemory(usize, oneshot::Sender<()>),
    SetEvictionPolicy(EvictionPolicy, oneshot::Sender<()>),
    Clear(KeyRange, oneshot::Sender<Outcome>),
    PartitionKeys(PartitionId, oneshot::Sender<Outcome>),
    Local(Bytes, oneshot::Sender<Option<Session>>),
    Roots(oneshot::Sender<Vec<u64>>),
    Replicas(Bytes, oneshot::Sender<Vec<String>>),
    Watch(oneshot::Sender<broadcast::Receiver<KeyChange>>),
}

/// The channels the handles keep to the task.
pub(crate) struct Channels {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) events: broadcast::Sender<NodeEvent>,
}

/// Starts the task that owns `node` on the current tokio runtime, joining
/// the cluster through `seeds`.
pub(crate) fn start<T: Transport>(
    node: sessmesh_core::Node,
    transport: T,
    incoming: mpsc::Receiver<Incoming>,
    seeds: Vec<SocketAddr>,
    local: Arc<LocalWrites>,
    memory_probe: Option<MemoryProbe>,
) -> Channels {
    let (commands, rx) = mpsc::channel(256);
    let (events, _) = broadcast::channel(1024);
    let (changes, _) = broadcast::channel(4096);
    let memory =
        memory_probe.map(|probe| Readings::new(probe, Instant::now(), node.memory().evicted_for()));
    let driver = Driver {
        node,
        transport,
        timers: Timers::default(),
        events: events.clone(),
        changes,
        calls: HashMap::new(),
        next_call: 0,
        unreachable: HashSet::new(),
        member_addrs: HashMap::new(),
        superseded: HashSet::new(),
        local,
        clock_watch: (Instant::now(), now_ms()),
        memory,
    };
    tokio::spawn(driver.run(incoming, rx, seeds));
    Channels { commands, events }
}

/// A graceful shutdown under way.
struct Leaving {
    /// Announcing `Leaving` takes this long to reach the others at least.
    announced_at: Instant,
    /// Give up on handoffs then.
    deadline: Instant,
    /// Everyone who asked for the shutdown.
    replies: Vec<oneshot::Sender<Result<(), Error>>>,
}

impl Leaving {
    /// When to look at the progress next, at the latest.
    fn next_check(&self, now: Instant) -> Instant {
        if now < self.announced_at {
            self.announced_at
        } else {
            self.deadline.min(now + Duration::from_millis(100))
        }
    }
}

struct Driver<T> {
    node: sessmesh_core::Node,
    transport: T,
    timers: Timers,
    events: broadcast::Sender<NodeEvent>,
    changes: broadcast::Sender<KeyChange>,
    /// Client calls waiting for their outcome, each with the ticket of a
    /// delete (see [`crate::local_writes`]), held until it is answered.
    calls: HashMap<CallId, (oneshot::Sender<Outcome>, Option<Queued>)>,
    next_call: u64,
    /// Members declared down, until they are back.
    unreachable: HashSet<SocketAddr>,
    /// Where each member was last seen up, by name. A member back at
    /// another address (restarted on a new port) is gone from the old one
    /// for good, as is one that left: the transport drops what it still
    /// holds for that address (its queue, its connection, its redials).
    member_addrs: HashMap<String, SocketAddr>,
    /// Those addresses, until a member comes up at one again. Membership
    /// would still probe an old incarnation until it declares it down, and
    /// announce to it after; nothing is sent there, so the transport holds
    /// nothing for it. One entry per restart or leave.
    superseded: HashSet<SocketAddr>,
    /// The caller-thread path of this peer's writes, for the changes it
    /// stores while someone watches.
    local: Arc<LocalWrites>,
    /// The wall clock and the monotonic clock as last read together: a
    /// wall clock that moved unlike the monotonic one stepped.
    clock_watch: (Instant, u64),
    /// The allocator's readings, when the host gave a way to take them.
    memory: Option<Readings>,
}

impl<T: Transport> Driver<T> {
    async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Incoming>,
        mut commands: mpsc::Receiver<Command>,
        seeds: Vec<SocketAddr>,
    ) {
        info!(node = %self.node.me().name, addr = %self.node.me().addr, generation = self.node.me().generation, "peer starting");
        self.node.join(&seeds);
        self.apply();
        let mut leaving: Option<Leaving> = None;
        // One sleep, moved to the next deadline when that changes: setting
        // a fresh one every turn of the loop costs a timer-wheel entry each.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed = false;
        loop {
            match self.timers.next_deadline() {
                Some(due) => {
                    if !armed || timer.deadline() != due {
                        timer.as_mut().reset(due);
                    }
                    armed = true;
                }
                None => armed = false,
            }
            let leave_check = leaving.as_ref().map(|l| l.next_check(Instant::now()));
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => {
                        // Before anything is stamped this turn.
                        self.watch_clock();
                        self.command(command, &mut leaving);
                        // Take what else is queued before acting on it, so a
                        // burst of calls leaves in one batch per peer.
                        for _ in 0..BATCH {
                            match commands.try_recv() {
                                Ok(command) => self.command(command, &mut leaving),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                () = sleep_until(leave_check) => {}
                // A handle stored a write itself while someone watches:
                // report the change now.
                () = self.local.changed(), if self.local.reader().watching() => {}
                item = incoming.recv() => match item {
                    Some(item) => {
                        self.incoming(item);
                        for _ in 0..BATCH {
                            match incoming.try_recv() {
                                Ok(item) => self.incoming(item),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                () = &mut timer, if armed => {
                    self.watch_clock();
                    let now = Instant::now();
                    while let Some(timer) = self.timers.pop_due(now) {
                        self.node.handle_timer(timer, now_ms());
                    }
                }
            }
            self.apply();
            self.read_memory();
            if let Some(state) = leaving.take() {
                match self.leave_progress(&state) {
                    None => leaving = Some(state),
                    Some(result) => {
                        self.node.leave();
                        self.apply();
                        for reply in state.replies {
                            // The caller may have stopped waiting.
                            let _ = reply.send(
                                result
                                    .map_err(|partitions| Error::HandoffIncomplete { partitions }),
                            );
                        }
                        break;
                    }
                }
            }
        }
        // Callers must not store writes themselves on a stopped peer.
        let store = self.node.store();
        for partition in (0..store.partition_count()).map(PartitionId) {
            store.set_replicated(partition, 0);
        }
        info!(node = %self.node.me().name, "peer stopped");
    }

    /// Whether a graceful shutdown is done: `None` while it goes on, else
    /// `Err` with the partitions it gave up handing off.
    fn leave_progress(&self, state: &Leaving) -> Option<Result<(), usize>> {
        let now = Instant::now();
        let alone = self.node.membership().members().next().is_none();
        if now < state.announced_at && !alone {
            return None;
        }
        let left = self.node.partitions_to_hand_off();
        if left == 0 || alone {
            if left > 0 {
                warn!(
                    partitions = left,
                    "the last member leaves: nobody to hand its partitions to"
                );
            }
            return Some(Ok(()));
        }
        (now >= state.deadline).then(|| {
            warn!(
                partitions = left,
                "leaving before every partition was handed off"
            );
            Err(left)
        })
    }

    /// Tells the node when the wall clock stepped (by more than a quarter
    /// of the drift bound since the last look) rather than ran: its
    /// measurements of the peers' clocks are void then.
    fn watch_clock(&mut self) {
        let (then, then_ms) = self.clock_watch;
        let now = Instant::now();
        let now_ms = now_ms();
        let ran = u64::try_from(now.duration_since(then).as_millis()).unwrap_or(u64::MAX);
        let step = now_ms.abs_diff(then_ms.saturating_add(ran));
        self.clock_watch = (now, now_ms);
        if step > self.node.clock().max_drift_ms() / 4 {
            warn!(
                step_ms = step,
                "the wall clock stepped: measuring the peers' clocks again"
            );
            self.node.clock_stepped(now_ms);
        }
    }

    fn command(&mut self, command: Command, leaving: &mut Option<Leaving>) {
        match command {
            Command::Shutdown(_, reply) if leaving.is_some() => {
                if let Some(l) = leaving.as_mut() {
                    l.replies.push(reply);
                }
            }
            Command::Shutdown(within, reply) => {
                info!(node = %self.node.me().name, "leaving: handing off partitions");
                self.node.prepare_leave();
                let now = Instant::now();
                let grace =
                    Duration::from_millis(2 * self.node.membership().config().probe_period_ms);
                *leaving = Some(Leaving {
                    announced_at: now + grace.min(within),
                    deadline: now + within,
                    replies: vec![reply],
                });
            }
            Command::Members(reply) => {
                let _ = reply.send(self.node.membership().members().cloned().collect());
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Write(key, write, level, reply, queued) => {
                // Taken: the core orders it from now on. A delete reads
                // before it is stamped, so its ticket stays until it is
                // answered.
                let held = (write == Write::Delete).then_some(queued);
                let call = self.call(reply, held);
                self.node.write(call, key, write, level, now_ms());
            }
            Command::Read(key, level, reply) => {
                let call = self.call(reply, None);
                self.node.read(call, key, level, now_ms());
            }
            Command::Consensus(key, op, reply) => {
                let call = self.call(reply, None);
                self.node.consensus(call, key, op, now_ms());
            }
            Command::SetMaxMemory(bytes, reply) => {
                self.node.set_max_memory(bytes);
                let _ = reply.send(());
            }
            Command::SetEvictionPolicy(policy, reply) => {
                self.node.set_eviction_policy(policy);
                let _ = reply.send(());
            }
            Command::ConsensusGroup(keys, op, reply) => {
                let call = self.call(reply, None);
                self.node.consensus_group(call, keys, op, now_ms());
            }
            Command::Clear(range, reply) => {
                let call = self.call(reply, None);
                self.node.clear(call, range, now_ms());
            }
            Command::PartitionKeys(partition, reply) => {
                let call = self.call(reply, None);
                self.node.partition_keys(call, partition, now_ms());
            }
            Command::Replicas(key, reply) => {
                let partition = self.node.store().partition_of(&key);
                let _ = reply.send(self.node.replicas_for(partition).to_vec());
            }
            Command::Roots(reply) => {
                let store = self.node.store();
                let roots = (0..store.partition_count())
                    .map(|p| store.digest_root(PartitionId(p)))
                    .collect();
                let _ = reply.send(roots);
            }
            Command::Local(key, reply) => {
                let _ = reply.send(self.node.store().session(&key));
            }
            Command::Watch(reply) => {
                self.node.watch_changes(true);
                let _ = reply.send(self.changes.subscribe());
            }
        }
    }

    fn incoming(&mut self, item: Incoming) {
        match item {
            Incoming::Datagram { from, payload } => self.node.handle_gossip(from.addr, &payload),
            Incoming::Message { from, message } => {
                self.node.handle_message(from.addr, message, now_ms());
            }
        }
    }

    fn status(&self) -> Status {
        let node = &self.node;
        let membership = node.membership();
        let partitioner = node.partitioner();
        let me = node.me().clone();
        let mut members: Vec<MemberStatus> = membership
            .members()
            .chain(std::iter::once(&me))
            .map(|m| MemberStatus {
                member: m.clone(),
                state: if m.name == me.name {
                    membership.state()
                } else {
                    membership.state_of(&m.name).unwrap_or(MemberState::Joining)
                },
                partitions: partitioner.partitions_of(&m.name).count(),
                clock_offset_ms: node.clock_offset_of(&m.name),
            })
            .collect();
        members.sort_by(|a, b| a.member.name.cmp(&b.member.name));
        Status {
            state: membership.state(),
            partitions_owned: partitioner.partitions_of(&me.name).count(),
            me,
            members,
            partition_count: node.store().partition_count(),
            sessions_stored: node.store().len(),
            memory: node.memory(),
            hints_pending: node.hints().len(),
            hints_dropped: node.hints().dropped(),
            last_anti_entropy: node
                .last_anti_entropy_ms()
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
            replication: node.stats(),
        }
    }

    fn call(&mut self, reply: oneshot::Sender<Outcome>, held: Option<Queued>) -> CallId {
        self.next_call += 1;
        let call = CallId(self.next_call);
        self.calls.insert(call, (reply, held));
        call
    }

    /// When a reading is due, tells the node what the allocator says the
    /// process holds for it beyond its own count.
    fn read_memory(&mut self) {
        let Some(readings) = self.memory.as_mut() else {
            return;
        };
        let now = Instant::now();
        if !readings.due(now) {
            return;
        }
        let memory = self.node.memory();
        if let Some(other) = readings.read(now, memory.evicted_for()) {
            self.node.set_other_memory(other);
        }
    }

    fn apply(&mut self) {
        // Messages go out per peer, in order, once the rest is done: a turn's
        // messages to one peer are queued together.
        let mut sends: Vec<(SocketAddr, Vec<Message>)> = Vec::new();
        let mut gone: Vec<SocketAddr> = Vec::new();
        for effect in self.node.take_effects() {
            match effect {
                Effect::Gossip { to, .. } if self.superseded.contains(&to) => {}
                Effect::Gossip { to, payload } => {
                    if let Err(e) = self.transport.send_datagram(to, payload) {
                        warn!(peer = %to, "gossip not sent: {e}");
                    }
                }
                Effect::Send { to, message } => {
                    match sends.iter_mut().find(|(peer, _)| *peer == to) {
                        Some((_, messages)) => messages.push(message),
                        None => sends.push((to, vec![message])),
                    }
                }
                Effect::Done { call, outcome } => {
                    // A delete's ticket goes with its reply.
                    if let Some((reply, _held)) = self.calls.remove(&call) {
                        // The caller may have stopped waiting.
                        let _ = reply.send(outcome);
                    }
                }
                Effect::Schedule { after, timer } => {
                    self.timers.set(Instant::now(), after, timer);
                }
                Effect::Event(NodeEvent::SessionsChanged(changes)) => {
                    for change in changes {
                        if self.changes.send(change).is_err() {
                            // Every watcher is gone: stop recording.
                            self.node.watch_changes(false);
                            break;
                        }
                    }
                }
                Effect::Event(event) => {
                    match &event {
                        NodeEvent::ClockDriftRefused { from, reason } => {
                            warn!(peer = %from, "refusing a peer's stamps, once per episode: {reason}");
                        }
                        NodeEvent::ClockAhead { ahead_ms } => warn!(
                            ahead_ms,
                            max_clock_drift_ms = self.node.clock().max_drift_ms(),
                            "this node's clock runs ahead of its peers: it takes no writes until the clock is corrected"
                        ),
                        NodeEvent::ClockInSync => {
                            info!(
                                "this node's clock is within max_clock_drift_ms of its peers again: it takes writes"
                            );
                        }
                        _ => {}
                    }
                    if let NodeEvent::Member(member_event) = &event {
                        info!("{member_event:?}");
                        match member_event {
                            MemberEvent::Down(member) => {
                                self.unreachable.insert(member.addr);
                            }
                            MemberEvent::Up(member) => {
                                let before =
                                    self.member_addrs.insert(member.name.clone(), member.addr);
                                if let Some(old) = before.filter(|old| *old != member.addr) {
                                    gone.push(old);
                                }
                                // A member now at an address another had.
                                gone.retain(|addr| *addr != member.addr);
                                self.superseded.remove(&member.addr);
                                if self.unreachable.remove(&member.addr) {
                                    // Back after an outage: its connection's
                                    // timers have backed off; start afresh.
                                    self.transport.retry_now(member.addr);
                                }
                            }
                            MemberEvent::Left(member) => {
                                if self.member_addrs.get(&member.name) == Some(&member.addr) {
                                    self.member_addrs.remove(&member.name);
                                }
                                if !self.member_addrs.values().any(|a| *a == member.addr) {
                                    gone.push(member.addr);
                                }
                            }
                            _ => {}
                        }
                    }
                    // Nobody may be listening; that is fine.
                    let _ = self.events.send(event);
                }
            }
        }
        self.superseded.extend(gone.iter().copied());
        for (to, messages) in sends {
            if self.superseded.contains(&to) {
                continue;
            }
            if let Err(e) = self.transport.send_all(to, &messages) {
                warn!(peer = %to, messages = messages.len(), "messages not sent: {e}");
            }
        }
        for addr in gone {
            self.unreachable.remove(&addr);
            self.transport.forget(addr);
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
