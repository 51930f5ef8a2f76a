//! The task that owns a core node.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sessmesh_core::{
    CallId, Effect, Level, Member, Node, NodeEvent, Outcome, PartitionId, Session, Timer, Write,
};
use sessmesh_net::{Incoming, Transport};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// A request to the task.
enum Command {
    Members(oneshot::Sender<Vec<Member>>),
    Me(oneshot::Sender<Member>),
    Leave(oneshot::Sender<()>),
    Write(Bytes, Write, Level, oneshot::Sender<Outcome>),
    Read(Bytes, Level, oneshot::Sender<Outcome>),
    Local(Bytes, oneshot::Sender<Option<Session>>),
    Roots(oneshot::Sender<Vec<u64>>),
    Replicas(Bytes, oneshot::Sender<Vec<String>>),
}

/// A cloneable handle to a running peer. The peer stops when the last handle
/// is dropped, or after [`Handle::leave`].
#[derive(Clone, Debug)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NodeEvent>,
}

/// Starts the task that owns `node`, on the current tokio runtime, joining the
/// cluster through `seeds`.
pub fn spawn<T: Transport>(
    node: Node,
    transport: T,
    incoming: mpsc::Receiver<Incoming>,
    seeds: Vec<SocketAddr>,
) -> Handle {
    let (commands, rx) = mpsc::channel(64);
    let (events, _) = broadcast::channel(1024);
    let driver = Driver {
        node,
        transport,
        timers: Timers::default(),
        events: events.clone(),
        calls: HashMap::new(),
        next_call: 0,
    };
    tokio::spawn(driver.run(incoming, rx, seeds));
    Handle { commands, events }
}

impl Handle {
    async fn ask<R>(&self, command: impl FnOnce(oneshot::Sender<R>) -> Command) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(command(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The members this peer considers active, itself excluded; `None` once it stopped.
    pub async fn members(&self) -> Option<Vec<Member>> {
        self.ask(Command::Members).await
    }

    /// This peer's identity; `None` once it stopped.
    pub async fn me(&self) -> Option<Member> {
        self.ask(Command::Me).await
    }

    /// Writes `key`, coordinated by this peer; answers once `level` replicas
    /// acknowledged or the request timed out. `None` once the peer stopped.
    pub async fn write(
        &self,
        key: impl Into<Bytes>,
        write: Write,
        level: Level,
    ) -> Option<Outcome> {
        let key = key.into();
        self.ask(|reply| Command::Write(key, write, level, reply))
            .await
    }

    /// Reads `key` from `level` replicas; `None` once the peer stopped.
    pub async fn read(&self, key: impl Into<Bytes>, level: Level) -> Option<Outcome> {
        let key = key.into();
        self.ask(|reply| Command::Read(key, level, reply)).await
    }

    /// This peer's own copy of `key` (tombstones included), without asking
    /// other replicas: for status and for checking that replicas agree.
    pub async fn local_session(&self, key: impl Into<Bytes>) -> Option<Session> {
        let key = key.into();
        self.ask(|reply| Command::Local(key, reply)).await.flatten()
    }

    /// The anti-entropy digest root of every partition of this peer's store:
    /// two peers that replicate the same partitions hold the same data when
    /// their roots are equal.
    pub async fn digest_roots(&self) -> Option<Vec<u64>> {
        self.ask(Command::Roots).await
    }

    /// The names of the members that replicate `key`, as this peer sees them.
    pub async fn replicas_of(&self, key: impl Into<Bytes>) -> Option<Vec<String>> {
        let key = key.into();
        self.ask(|reply| Command::Replicas(key, reply)).await
    }

    /// Membership and placement events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Leaves the cluster on purpose and stops: announces `Leaving`, keeps
    /// serving for two probe periods while peers take over its partitions, then
    /// tells them it is gone, so they drop it at once rather than after suspicion.
    pub async fn leave(&self) {
        self.ask(Command::Leave).await;
    }
}

/// Timers in deadline order; ties in the order they were set.
#[derive(Default)]
struct Timers {
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    timers: HashMap<u64, Timer>,
    next: u64,
}

impl Timers {
    fn set(&mut self, at: Instant, timer: Timer) {
        self.next += 1;
        self.due.push(Reverse((at, self.next)));
        self.timers.insert(self.next, timer);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let Reverse((at, id)) = *self.due.peek()?;
        if at > now {
            return None;
        }
        self.due.pop();
        self.timers.remove(&id)
    }
}

struct Driver<T> {
    node: Node,
    transport: T,
    timers: Timers,
    events: broadcast::Sender<NodeEvent>,
    /// Client calls waiting for their outcome.
    calls: HashMap<CallId, oneshot::Sender<Outcome>>,
    next_call: u64,
}

/// Wall-clock milliseconds since the Unix epoch: the only clock the node sees.
fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

impl<T: Transport> Driver<T> {
    async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Incoming>,
        mut commands: mpsc::Receiver<Command>,
        seeds: Vec<SocketAddr>,
    ) {
        info!(node = %self.node.me().name, generation = self.node.me().generation, "peer starting");
        self.node.join(&seeds);
        self.apply();
        let mut leaving: Option<(Instant, oneshot::Sender<()>)> = None;
        loop {
            let timer_due = self.timers.next_deadline();
            let leave_due = leaving.as_ref().map(|(at, _)| *at);
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Members(reply)) => {
                        let _ = reply.send(self.node.membership().members().cloned().collect());
                    }
                    Some(Command::Me(reply)) => {
                        let _ = reply.send(self.node.me().clone());
                    }
                    Some(Command::Write(key, write, level, reply)) => {
                        let call = self.call(reply);
                        self.node.write(call, key, write, level, now_ms());
                    }
                    Some(Command::Read(key, level, reply)) => {
                        let call = self.call(reply);
                        self.node.read(call, key, level, now_ms());
                    }
                    Some(Command::Replicas(key, reply)) => {
                        let partition = self.node.store().partition_of(&key);
                        let _ = reply.send(self.node.replicas_for(partition).to_vec());
                    }
                    Some(Command::Roots(reply)) => {
                        let store = self.node.store();
                        let roots = (0..store.partition_count()).map(|p| store.digest(PartitionId(p)).root()).collect();
                        let _ = reply.send(roots);
                    }
                    Some(Command::Local(key, reply)) => {
                        let _ = reply.send(self.node.store().session(&key));
                    }
                    Some(Command::Leave(reply)) => {
                        self.node.prepare_leave();
                        let grace = Duration::from_millis(2 * self.node.membership().config().probe_period_ms);
                        leaving = Some((Instant::now() + grace, reply));
                    }
                    None => break,
                },
                () = sleep_until(leave_due) => {
                    self.node.leave();
                    self.apply();
                    if let Some((_, reply)) = leaving.take() {
                        let _ = reply.send(());
                    }
                    break;
                }
                item = incoming.recv() => match item {
                    Some(Incoming::Datagram { from, payload }) => self.node.handle_gossip(from.addr, &payload),
                    Some(Incoming::Message { from, message }) => self.node.handle_message(from.addr, message, now_ms()),
                    // Peers replicate with one-way messages; nothing asks requests of a peer yet.
                    Some(Incoming::Request { from, .. }) => debug!(peer = %from.name, "ignoring a request"),
                    None => break,
                },
                () = sleep_until(timer_due) => {
                    let now = Instant::now();
                    while let Some(timer) = self.timers.pop_due(now) {
                        self.node.handle_timer(timer, now_ms());
                    }
                }
            }
            self.apply();
        }
        info!(node = %self.node.me().name, "peer stopped");
    }

    fn call(&mut self, reply: oneshot::Sender<Outcome>) -> CallId {
        self.next_call += 1;
        let call = CallId(self.next_call);
        self.calls.insert(call, reply);
        call
    }

    fn apply(&mut self) {
        for effect in self.node.take_effects() {
            match effect {
                Effect::Gossip { to, payload } => {
                    if let Err(e) = self.transport.send_datagram(to, payload) {
                        warn!(peer = %to, "gossip not sent: {e}");
                    }
                }
                Effect::Send { to, message } => {
                    if let Err(e) = self.transport.send(to, &message) {
                        warn!(peer = %to, "message not sent: {e}");
                    }
                }
                Effect::Done { call, outcome } => {
                    if let Some(reply) = self.calls.remove(&call) {
                        // The caller may have stopped waiting.
                        let _ = reply.send(outcome);
                    }
                }
                Effect::Schedule { after, timer } => self.timers.set(Instant::now() + after, timer),
                Effect::Event(event) => {
                    if let NodeEvent::Member(member_event) = &event {
                        info!("{member_event:?}");
                    }
                    // Nobody may be listening; that is fine.
                    let _ = self.events.send(event);
                }
            }
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
