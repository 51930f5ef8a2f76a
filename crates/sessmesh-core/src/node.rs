//! One node's state machines, as its runtime drives them.
//!
//! A [`Node`] owns the node's [`Membership`], [`Partitioner`], [`Store`] and
//! [`Hlc`]. The runtime passes in gossip packets, peer messages, client
//! calls and expired [`Timer`]s, each with the wall-clock time `now_ms`. It
//! carries out the [`Effect`]s the node hands back: packets and messages to
//! send, timers to set, events to report, and answers to client calls.
//!
//! Each concern is a file of `node/`, owning its state:
//!
//! - **Placement** (`placement.rs`). Membership changes recompute the replica sets at
//!   once. A member counts as a replica while it is up and not leaving, so a
//!   leaving member's partitions move before it goes. Levels count copies
//!   against every member known, down ones included ([`Node::copies`]).
//! - **The coordinator** (`writes.rs`, `reads.rs`). The node that receives a
//!   client write coordinates it. It stamps the write, applies it locally
//!   when it is a replica, sends it to the other replicas, and answers once
//!   the call's [`Level`] of the key's copies have acknowledged. If too few
//!   do, the client hears how many did. The write is not rolled back, and
//!   the replicas that missed it get a hint. A read asks the replicas for
//!   their state of the key, answers with the merge of the level's worth of
//!   answers (newest stamp wins per field), and sends that merge to every
//!   answering replica that held less (read repair).
//! - **Requests in flight** (`in_flight.rs`). One map from request id to a
//!   `Pending` request of one kind (write, read, hint replay, handoff
//!   batch); each kind has its own answer message, so an answer finds only
//!   a request of its kind.
//! - **The replica side** (`replica.rs`). Writes, reads, merges and handoffs
//!   other nodes send, each stamp checked against this node's clock first.
//! - **Anti-entropy** (`anti_entropy.rs`), **handoff** (`handoff.rs`),
//!   **hints** (`hints.rs`) and **sweep** (`sweep.rs`): repair in the background.
//! - **Clocks** (`clocks.rs`). A peer's stamp further ahead than
//!   `max_clock_drift_ms` is refused: the write is not applied and not
//!   acknowledged, and the refusal is reported. The node measures its
//!   members' clocks, and stops stamping while its own runs ahead of them
//!   (see [`crate::peer_clocks`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::clock::Stamp;
use crate::clock::{Hlc, NodeId};
use crate::consensus::{Acceptors, Ballot, Cas, GroupCas, Promise, Proposal};
use crate::digest::{KeyDigest, differing_keys};
use crate::membership::{
    Member, MemberEvent, MemberState, Membership, MembershipConfig, MembershipEffect,
    MembershipTimer,
};
use crate::partition::{PartitionId, Partitioner, rendezvous_score};
use crate::peer_clocks::{PROBE_PERIOD_MS, PeerClocks};
use crate::replication::{
    CallId, Hint, Hints, Level, MAX_REPLICAS, Outcome, Replica, ReplicaSet, replicas_in,
};
use crate::session::{Session, Write};
use crate::store::{Entry, KeyChange, MAX_KEY_LEN, Store};
use crate::wire::Message;
use crate::{Config, Error};

mod acceptor;
mod anti_entropy;
mod clears;
mod clocks;
mod consensus;
mod deciding;
mod eviction;
mod handoff;
mod hints;
mod in_flight;
mod learning;
mod listing;
mod memory;
mod placement;
mod reads;
mod replica;
mod stats;
mod sweep;
mod writes;

use anti_entropy::Metering;
use eviction::Eviction;
use in_flight::{
    HandoffBatch, InFlight, Pending, PendingRead, PendingRound, PendingWrite, Phase, RoundOp,
};
use learning::{Answers, Standing};
pub use stats::NodeStats;

/// A timer a node asked for; hand it back through [`Node::handle_timer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timer {
    /// A membership timer.
    Membership(MembershipTimer),
    /// The deadline of a coordinated write or read, or of a hint's replay.
    Request(u64),
    /// Replay the hints of replicas that are up.
    ReplayHints,
    /// Start an anti-entropy round.
    AntiEntropy,
    /// Sweep the next few partitions.
    Sweep,
    /// Ask the replicas a read has not asked yet, if it still waits.
    Speculate(u64),
    /// Start a consensus round again after it was pre-empted.
    RetryRound(u64),
    /// Measure the members' clocks; a periodic round schedules the next.
    ProbeClocks {
        /// Whether this is the periodic round.
        periodic: bool,
    },
}

/// Something the node reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A membership change.
    Member(MemberEvent),
    /// These partitions' replica sets changed.
    ReplicasChanged(Vec<PartitionId>),
    /// Sessions this node holds changed, in order; reported only while
    /// [`Node::watch_changes`] is on.
    SessionsChanged(Vec<KeyChange>),
    /// A peer's message carried a stamp too far ahead; it was not applied.
    /// Reported once per episode: again only after the peer's clock has
    /// been measured within the bound.
    ClockDriftRefused {
        /// The peer.
        from: SocketAddr,
        /// What the check said.
        reason: String,
    },
    /// This node's clock started running further ahead of its peers than
    /// they accept: it stamps no writes until it no longer does.
    ClockAhead {
        /// How far ahead of a majority of its peers, ms.
        ahead_ms: u64,
    },
    /// This node's clock no longer runs ahead of its peers.
    ClockInSync,
    /// This node evicted a session to stay under its memory bound: it sent
    /// the eviction, stamped `stamp`, to the session's replicas.
    Evicted {
        /// The session's key.
        key: Bytes,
        /// The eviction's stamp.
        stamp: Stamp,
    },
}

/// Something the runtime must do for a [`Node`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send a gossip datagram.
    Gossip {
        /// The destination.
        to: SocketAddr,
        /// The packet.
        payload: Bytes,
    },
    /// Send a message to a peer (one-way, in order per peer).
    Send {
        /// The destination.
        to: SocketAddr,
        /// The message.
        message: Message,
    },
    /// Hand `timer` back after `after`.
    Schedule {
        /// How long from now.
        after: Duration,
        /// The timer.
        timer: Timer,
    },
    /// Report an event.
    Event(NodeEvent),
    /// A client call is answered.
    Done {
        /// The call.
        call: CallId,
        /// How it ended.
        outcome: Outcome,
    },
}

/// One node. See the [module docs](self).
#[derive(Debug)]
pub struct Node {
    membership: Membership,
    partitioner: Partitioner<String>,
    store: Store,
    hlc: Arc<Hlc>,
    config: Config,
    in_flight: InFlight,
    hints: Hints,
    /// The next partition to sweep (sweep.rs).
    sweep_cursor: u32,
    /// Anti-entropy's repair budget and timing (anti_entropy.rs).
    metering: Metering,
    stats: NodeStats,
    /// Partitions being handed off: batches still unacknowledged, per
    /// replica (handoff.rs; the batches are in `in_flight`).
    handoffs: HashMap<PartitionId, HashMap<String, usize>>,
    /// Address of every active member by name, this node included.
    addrs: BTreeMap<String, SocketAddr>,
    /// The reverse of `addrs`.
    names: HashMap<SocketAddr, String>,
    /// Each partition's replicas with their addresses, as requests use them.
    replica_sets: Vec<ReplicaSet>,
    /// The members copies are counted against (see
    /// [`Membership::counted_names`]), for hinting those that are down.
    counted: BTreeSet<String>,
    /// How many copies a key should have: the replication factor, or the
    /// members the cluster has when it has fewer. Levels count against it.
    copies: usize,
    /// The members' clocks, as measured.
    clocks: PeerClocks,
    /// Peers whose stamps were refused since their clock was last measured
    /// within the bound: a refusal is reported once per episode.
    refusing: HashSet<SocketAddr>,
    /// The consensus state of the keys this node decided as a replica.
    acceptors: Acceptors,
    /// Per partition: this node's part in its consensus (learning.rs).
    learning: Vec<Standing>,
    /// Keys whose delete this node coordinates and is still reading (its
    /// stamp not taken yet), with the writes of the key handed over since,
    /// in order: they wait for the delete's stamp so that they come after it.
    deleting: HashMap<Bytes, Vec<(CallId, Write, Level)>>,
    /// The sampling pool and the evictions under way (eviction.rs).
    eviction: Eviction,
    effects: Vec<Effect>,
}

impl Node {
    /// A node for `me` with the cluster's `config`; membership randomness comes from `seed`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when either config is invalid, or when `me`
    /// does not carry `config`'s partition settings.
    pub fn new(
        me: Member,
        config: &Config,
        membership: MembershipConfig,
        seed: u64,
    ) -> Result<Self, Error> {
        config.validate()?;
        if me.partition_count != config.partition_count
            || usize::try_from(me.replication_factor).ok() != Some(config.replication_factor)
        {
            return Err(Error::InvalidConfig {
                setting: "partition_count",
                reason: "the member identity must carry the configured partition count and replication factor".into(),
            });
        }
        let hlc = Arc::new(Hlc::new(me.node_id(), config.max_clock_drift_ms));
        let mut node = Node {
            membership: Membership::new(me, membership, seed)?,
            partitioner: Partitioner::new(config.partition_count, config.replication_factor),
            store: Store::new(config),
            hlc,
            config: config.clone(),
            in_flight: InFlight::default(),
            hints: Hints::new(memory::hint_bound(config)),
            sweep_cursor: 0,
            metering: Metering::default(),
            stats: NodeStats::default(),
            handoffs: HashMap::new(),
            addrs: BTreeMap::new(),
            names: HashMap::new(),
            replica_sets: Vec::new(),
            counted: BTreeSet::new(),
            copies: 1,
            clocks: PeerClocks::default(),
            refusing: HashSet::new(),
            acceptors: Acceptors::default(),
            learning: vec![Standing::default(); config.partition_count as usize],
            deleting: HashMap::new(),
            eviction: Eviction::new(seed),
            effects: Vec::new(),
        };
        node.rebalance();
        node.schedule_hint_replay();
        node.schedule(config.anti_entropy_period_ms, Timer::AntiEntropy);
        node.schedule(config.sweep_period_ms, Timer::Sweep);
        node.schedule(PROBE_PERIOD_MS, Timer::ProbeClocks { periodic: true });
        node.collect();
        Ok(node)
    }

    /// This node's identity.
    pub fn me(&self) -> &Member {
        self.membership.me()
    }

    /// The id this node stamps its writes with.
    pub fn node_id(&self) -> NodeId {
        self.hlc.node()
    }

    /// The clock this node stamps its writes with, to share with callers
    /// that write through [`crate::StoreReader::write_local`].
    pub fn clock(&self) -> Arc<Hlc> {
        Arc::clone(&self.hlc)
    }

    /// Its membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Its sessions.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Hints waiting for replicas to come back.
    pub fn hints(&self) -> &Hints {
        &self.hints
    }

    /// The replica set of `partition`.
    pub fn replicas_for(&self, partition: PartitionId) -> &[String] {
        self.partitioner.replicas_for(partition)
    }

    /// The partitioner, for placement questions.
    pub fn partitioner(&self) -> &Partitioner<String> {
        &self.partitioner
    }

    /// Joins the cluster through `seeds`.
    pub fn join(&mut self, seeds: &[SocketAddr]) {
        self.membership.join(seeds);
        // Until it hears from them, the seeds count as members.
        self.rebalance();
        self.ask_to_learn();
        self.collect();
    }

    /// How many copies each key should have, as levels count them.
    pub fn copies(&self) -> usize {
        self.copies
    }

    /// Marks this node as serving (it has its data).
    pub fn set_state(&mut self, state: MemberState) {
        self.membership.set_state(state);
        self.collect();
    }

    /// Announces that this node is leaving; see [`Membership::prepare_leave`].
    pub fn prepare_leave(&mut self) {
        self.membership.prepare_leave();
        self.rebalance();
        // Hand our data to the partitions' remaining owners while we still answer.
        self.anti_entropy_round();
        self.collect();
    }

    /// Leaves the cluster; see [`Membership::leave`].
    pub fn leave(&mut self) {
        self.membership.leave();
        self.collect();
    }

    /// Handles a gossip datagram from `from`.
    pub fn handle_gossip(&mut self, from: SocketAddr, payload: &[u8]) {
        self.membership.handle_packet(from, payload);
        self.collect();
    }

    /// Handles a timer this node scheduled.
    pub fn handle_timer(&mut self, timer: Timer, now_ms: u64) {
        self.eviction_clock(Some(now_ms));
        match timer {
            Timer::AntiEntropy => {
                // The exchanges a join starts have had a whole period to fill
                // this node's partitions: it now announces itself serving.
                if self.membership.state() == MemberState::Joining {
                    self.membership.set_state(MemberState::Alive);
                }
                self.metering.last_round_ms = Some(now_ms);
                self.anti_entropy_round();
                // A throttled repair goes on in the next window, and a leaving
                // node retries its handoffs as often.
                let leaving = self.membership.state() == MemberState::Leaving;
                let next = if std::mem::take(&mut self.metering.throttled) || leaving {
                    self.config.anti_entropy_period_ms.min(1_000)
                } else {
                    self.config.anti_entropy_period_ms
                };
                self.schedule(next, Timer::AntiEntropy);
            }
            Timer::Sweep => {
                self.sweep(now_ms);
                self.count_memory();
                self.forget_evictions(now_ms);
                self.evict_if_over(now_ms);
                self.schedule(self.config.sweep_period_ms, Timer::Sweep);
            }
            Timer::Membership(timer) => self.membership.handle_timer(timer),
            Timer::Request(id) => self.expire_request(id, now_ms),
            Timer::Speculate(id) => self.speculate(id),
            Timer::RetryRound(id) => self.retry_round(id, now_ms),
            Timer::ReplayHints => {
                self.replay_hints();
                self.schedule_hint_replay();
            }
            Timer::ProbeClocks { periodic } => {
                self.probe_clocks(now_ms);
                self.ask_to_learn();
                if periodic {
                    self.schedule(PROBE_PERIOD_MS, Timer::ProbeClocks { periodic: true });
                }
            }
        }
        self.collect();
    }

    /// Takes the effects produced since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.settle_evictions();
        let changes = self.store.take_changes();
        if !changes.is_empty() {
            self.effects
                .push(Effect::Event(NodeEvent::SessionsChanged(changes)));
        }
        std::mem::take(&mut self.effects)
    }

    /// Starts or stops reporting [`NodeEvent::SessionsChanged`].
    pub fn watch_changes(&mut self, on: bool) {
        self.store.record_changes(on);
    }

    /// What replication did since the node started.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// When the last anti-entropy round started (wall-clock ms), if any has.
    pub fn last_anti_entropy_ms(&self) -> Option<u64> {
        self.metering.last_round_ms
    }

    /// Handles a message from the peer at `from`.
    pub fn handle_message(&mut self, from: SocketAddr, message: Message, now_ms: u64) {
        self.eviction_clock(Some(now_ms));
        let ack = |message| Effect::Send { to: from, message };
        match message {
            // The replica side (replica.rs).
            Message::Write {
                request,
                key,
                write,
                stamp,
            } => {
                if self.apply_write(from, request, &key, &write, stamp, now_ms) {
                    self.effects.push(ack(Message::WriteAck { request }));
                }
            }
            Message::HintReplay {
                request,
                key,
                write,
                stamp,
            } => {
                if self.apply_write(from, request, &key, &write, stamp, now_ms) {
                    self.effects.push(ack(Message::HintAck { request }));
                }
            }
            Message::Read { request, key } => self.serve_read(from, request, &key),
            Message::ReadDigest { request, key } => self.serve_digest(from, request, &key),
            Message::Handoff {
                request, entries, ..
            } => {
                // Acknowledged only when all of it is here: the sender drops its copy then.
                if self.merge_entries(from, entries, now_ms).0 {
                    self.effects.push(ack(Message::HandoffAck { request }));
                }
            }
            Message::Merge { entries } => {
                let (_, repaired) = self.merge_entries(from, entries, now_ms);
                self.stats.keys_repaired += repaired;
            }
            Message::ForgetEvicted { evictions } => self.forget_evicted(&evictions),
            Message::ClockProbe { sent_ms } => self.answer_probe(from, sent_ms, now_ms),
            Message::Clear {
                request,
                range,
                stamp,
            } => self.serve_clear(from, request, &range, stamp, now_ms),
            Message::Clears { clears } => self.merge_clears(from, clears, now_ms),
            Message::ListKeys { request, partition } => {
                self.serve_list(from, request, partition, now_ms);
            }
            Message::Keys { request, keys } => self.listed(request, keys),
            Message::Prepare {
                request,
                instance,
                keys,
                ballot,
                view,
            } => self.serve_prepare(from, request, &instance, &keys, ballot, view, now_ms),
            Message::Propose {
                request,
                instance,
                proposal,
                view,
            } => self.serve_propose(from, request, &instance, proposal, view, now_ms),
            Message::Commit {
                request,
                instance,
                proposal,
            } => self.serve_commit(from, request, &instance, &proposal, now_ms),
            Message::SyncAcceptors { partitions } => self.serve_sync(from, &partitions),
            Message::AcceptorStates {
                standings,
                states,
                sessions,
            } => {
                self.learned(from, standings, states, sessions, now_ms);
            }
            // Answers to this node's requests, each to its kind of request.
            Message::WriteAck { request } => self.acknowledge(request, from, now_ms),
            Message::ClearAck { request } => self.clear_acknowledged(request, from),
            Message::StampRefused { request, clock_ms } => {
                self.stamp_refused(request, from, clock_ms, now_ms);
            }
            Message::ReadReply { request, session } => self.answer(request, from, session, now_ms),
            Message::DigestReply {
                request,
                fingerprint,
            } => self.answer_digest(request, from, fingerprint, now_ms),
            Message::HintAck { request } => self.hint_acknowledged(request),
            Message::Promise {
                request,
                accepted,
                committed,
                committed_stamp,
                recent,
                sessions,
            } => {
                let promise = Promise {
                    accepted,
                    committed,
                    committed_stamp,
                    recent,
                };
                self.promised(request, from, promise, sessions, now_ms);
            }
            Message::Accepted { request } => self.accepted(request, from, now_ms),
            Message::Committed { request } => self.committed(request, from),
            Message::Rejected { request, promised } => {
                self.round_rejected(request, from, promised, now_ms)
            }
            Message::Moving { request } => self.round_moving(request, from, now_ms),
            Message::HandoffAck { request } => self.handoff_acknowledged(request),
            Message::ClockReply { sent_ms, clock_ms } => {
                self.clock_measured(from, clock_ms, sent_ms, now_ms);
            }
            // Anti-entropy (anti_entropy.rs).
            Message::DigestRoots { roots } => self.compare_roots(from, &roots),
            Message::DigestBuckets { partition, buckets } => {
                self.compare_buckets(from, partition, &buckets)
            }
            Message::DigestKeys {
                partition,
                bucket,
                keys,
            } => self.compare_keys(from, partition, bucket, &keys, now_ms),
            Message::FetchKeys {
                partition,
                key_hashes,
            } => self.send_entries(from, partition, &key_hashes, now_ms),
            // Connection set-up is the transport's; gossip arrives as datagrams.
            Message::Hello | Message::Welcome | Message::Gossip(_) => {}
        }
        self.evict_if_over(now_ms);
        self.collect();
    }

    /// The replicas of `key`, or an answer refusing the call.
    fn replicas_of(&mut self, key: &[u8], call: CallId) -> Option<ReplicaSet> {
        let refuse = |reason: String| Effect::Done {
            call,
            outcome: Outcome::Refused(reason),
        };
        if key.len() > MAX_KEY_LEN {
            self.effects.push(refuse(
                Error::KeyTooLong {
                    len: key.len(),
                    max: MAX_KEY_LEN,
                }
                .to_string(),
            ));
            return None;
        }
        let replicas = &self.replica_sets[self.store.partition_of(key).0 as usize];
        if replicas.is_empty() {
            self.effects
                .push(refuse("no member replicates this key's partition".into()));
            return None;
        }
        Some(Arc::clone(replicas))
    }

    fn schedule_deadline(&mut self, id: u64) {
        self.schedule(self.config.request_timeout_ms, Timer::Request(id));
    }

    fn expire_request(&mut self, id: u64, now_ms: u64) {
        match self.in_flight.remove(id) {
            Some(Pending::Write(pending)) => self.write_expired(pending, now_ms),
            Some(Pending::Read(pending)) => self.read_expired(pending, now_ms),
            // Not acknowledged: kept for the next attempt.
            Some(Pending::Replay(hint)) => self.hints.push(hint),
            Some(Pending::Handoff(batch)) => self.handoff_expired(batch),
            Some(Pending::Round(round)) => self.round_expired(*round),
            Some(Pending::Clear(pending)) => self.clear_expired(pending),
            Some(Pending::List(pending)) => self.list_expired(pending),
            None => {}
        }
    }

    fn schedule(&mut self, after_ms: u64, timer: Timer) {
        self.effects.push(Effect::Schedule {
            after: Duration::from_millis(after_ms),
            timer,
        });
    }

    fn collect(&mut self) {
        let mut membership_changed = false;
        let mut returned = false;
        for effect in self.membership.take_effects() {
            self.effects.push(match effect {
                MembershipEffect::Send { to, payload } => Effect::Gossip { to, payload },
                MembershipEffect::Schedule { after, timer } => Effect::Schedule {
                    after,
                    timer: Timer::Membership(timer),
                },
                MembershipEffect::Event(event) => {
                    membership_changed |= !matches!(event, MemberEvent::Refused { .. });
                    returned |= matches!(event, MemberEvent::Up(_));
                    Effect::Event(NodeEvent::Member(event))
                }
            });
        }
        if membership_changed {
            self.refresh_addresses();
            self.rebalance();
            // A member came or went: replicas may have diverged, or moved.
            self.anti_entropy_round();
            self.probe_clocks_soon();
            self.ask_to_learn();
        }
        if returned {
            self.replay_hints();
        }
    }
}

/// A bit for each replica of `replicas`.
fn all_of(replicas: &[Replica]) -> u64 {
    match replicas.len() {
        MAX_REPLICAS.. => u64::MAX,
        n => (1 << n) - 1,
    }
}

/// The bit of the replica at `from`, if the request still waits for it.
fn waiting_on(replicas: &[Replica], waiting: u64, from: SocketAddr) -> Option<u64> {
    replicas_in(waiting)
        .find(|&i| replicas[i].addr == Some(from))
        .map(|i| 1 << i)
}
