//! One node's state machines, as its runtime drives them.
//!
//! A [`Node`] owns the node's [`Membership`], [`Partitioner`], [`Store`] and
//! [`Hlc`]. The runtime passes in gossip packets, peer messages, client
//! calls and expired [`Timer`]s, each with the wall-clock time `now_ms`. It
//! carries out the [`Effect`]s the node hands back: packets and messages to
//! send, timers to set, events to report, and answers to client calls.
//!
//! - **Placement.** Membership changes recompute the replica sets at once. A
//!   member counts as a replica while it is up and not leaving, so a leaving
//!   member's partitions move before it goes.
//! - **Writes.** The node that receives a client write coordinates it. It
//!   stamps the write, applies it locally when it is a replica, sends it to
//!   the other replicas, and answers once the call's [`Level`] of them have
//!   acknowledged. If too few acknowledge in time, the client hears how many
//!   did. The write is not rolled back, and the replicas that missed it get a
//!   hint, replayed when they are seen again.
//! - **Reads.** The coordinator asks the replicas for their state of the key,
//!   answers with the merge of the level's worth of answers (newest stamp wins
//!   per field), and sends that merge to every answering replica that held less
//!   (read repair).
//! - **Clocks.** A peer's stamp further ahead than `max_clock_drift_ms` is
//!   refused: the write is not applied and not acknowledged, and the refusal
//!   is reported.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::clock::{Hlc, NodeId};
use crate::digest::{KeyDigest, differing_keys};
use crate::membership::{
    Member, MemberEvent, MemberState, Membership, MembershipConfig, MembershipEffect,
    MembershipTimer,
};
use crate::partition::{PartitionId, Partitioner, rendezvous_score};
use crate::peer_clocks::{PROBE_PERIOD_MS, PeerClocks};
use crate::replication::{
    CallId, Hint, Hints, InFlight, Level, MAX_REPLICAS, Outcome, PendingRead, PendingWrite,
    Replica, ReplicaSet, replicas_in,
};
use crate::session::{Session, Write};
use crate::store::{Entry, KeyChange, MAX_KEY_LEN, Store};
use crate::wire::Message;
use crate::{Config, Error};

mod clocks;

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
}

/// Counts of what a node's replication did since it started, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Acknowledgements from replicas of writes this node coordinated.
    pub replica_acks: u64,
    /// Coordinated writes answered `TooFewAcks` because replicas did not
    /// answer in time.
    pub write_timeouts: u64,
    /// Coordinated reads answered `TooFewAnswers` because replicas did not
    /// answer in time.
    pub read_timeouts: u64,
    /// Coordinated writes answered `TooFewAcks` as soon as every replica up
    /// had answered, because fewer are up than the level counts.
    pub writes_short_of_copies: u64,
    /// Coordinated reads answered `TooFewAnswers` for the same reason.
    pub reads_short_of_copies: u64,
    /// Hints kept for replicas that missed a write.
    pub hints_queued: u64,
    /// Hints replayed and acknowledged.
    pub hints_replayed: u64,
    /// Anti-entropy rounds started.
    pub anti_entropy_rounds: u64,
    /// Sessions changed by a merge from a peer (anti-entropy or read repair).
    pub keys_repaired: u64,
    /// Stamps refused for being too far ahead of this node's clock.
    pub clock_drift_refused: u64,
    /// Writes this node refused to stamp, or that every other replica
    /// refused, because its own clock ran ahead of its peers'.
    pub writes_refused_clock_ahead: u64,
    /// Reads where a replica's fingerprint differed from this node's copy,
    /// so its state was fetched.
    pub digest_mismatches: u64,
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
    /// The next partition to sweep.
    sweep_cursor: u32,
    /// Start of the current repair metering window, ms.
    repair_window_start_ms: u64,
    /// Repair bytes sent in it.
    repair_window_bytes: u64,
    /// Whether an answer was skipped for the budget since the last round.
    repair_throttled: bool,
    /// When the last anti-entropy round started, wall-clock ms.
    last_anti_entropy_ms: Option<u64>,
    stats: NodeStats,
    /// Handoff batches in flight: request id to partition and replica.
    handoff_batches: HashMap<u64, (PartitionId, String)>,
    /// Partitions being handed off: batches still unacknowledged, per replica.
    handoffs: HashMap<PartitionId, HashMap<String, usize>>,
    /// Address of every active member by name, this node included.
    addrs: HashMap<String, SocketAddr>,
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
    /// Keys whose delete this node coordinates and is still reading (its
    /// stamp not taken yet), with the writes of the key handed over since,
    /// in order: they wait for the delete's stamp so that they come after it.
    deleting: HashMap<Bytes, Vec<(CallId, Write, Level)>>,
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
            hints: Hints::new(config.max_hint_bytes),
            sweep_cursor: 0,
            repair_window_start_ms: 0,
            repair_window_bytes: 0,
            repair_throttled: false,
            last_anti_entropy_ms: None,
            stats: NodeStats::default(),
            handoff_batches: HashMap::new(),
            handoffs: HashMap::new(),
            addrs: HashMap::new(),
            names: HashMap::new(),
            replica_sets: Vec::new(),
            counted: BTreeSet::new(),
            copies: 1,
            clocks: PeerClocks::default(),
            refusing: HashSet::new(),
            deleting: HashMap::new(),
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
        match timer {
            Timer::AntiEntropy => {
                // The exchanges a join starts have had a whole period to fill
                // this node's partitions: it now announces itself serving.
                if self.membership.state() == MemberState::Joining {
                    self.membership.set_state(MemberState::Alive);
                }
                self.last_anti_entropy_ms = Some(now_ms);
                self.anti_entropy_round();
                // A throttled repair goes on in the next window, and a leaving
                // node retries its handoffs as often.
                let leaving = self.membership.state() == MemberState::Leaving;
                let next = if std::mem::take(&mut self.repair_throttled) || leaving {
                    self.config.anti_entropy_period_ms.min(1_000)
                } else {
                    self.config.anti_entropy_period_ms
                };
                self.schedule(next, Timer::AntiEntropy);
            }
            Timer::Sweep => {
                self.sweep(now_ms);
                self.schedule(self.config.sweep_period_ms, Timer::Sweep);
            }
            Timer::Membership(timer) => self.membership.handle_timer(timer),
            Timer::Request(id) => self.expire_request(id, now_ms),
            Timer::Speculate(id) => self.speculate(id),
            Timer::ReplayHints => {
                self.replay_hints();
                self.schedule_hint_replay();
            }
            Timer::ProbeClocks { periodic } => {
                self.probe_clocks(now_ms);
                if periodic {
                    self.schedule(PROBE_PERIOD_MS, Timer::ProbeClocks { periodic: true });
                }
            }
        }
        self.collect();
    }

    /// Takes the effects produced since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
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
        self.last_anti_entropy_ms
    }

    /// Partitions this node holds data for but no longer replicates, and
    /// that have a replica to take them: what a leaving node still has to
    /// hand off. (When every member leaves at once, nobody can take them.)
    pub fn partitions_to_hand_off(&self) -> usize {
        let me = &self.membership.me().name;
        (0..self.store.partition_count())
            .map(PartitionId)
            .filter(|&p| {
                let replicas = self.partitioner.replicas_for(p);
                !replicas.is_empty() && !replicas.contains(me) && self.store.partition_len(p) > 0
            })
            .count()
    }

    /// Coordinates a client write of `key`; its [`Outcome`] comes as an
    /// [`Effect::Done`] for `call`.
    ///
    /// A [`Write::Delete`] first reads `key` at the same level, so that its
    /// stamp is newer than every stamp that read saw: a logout supersedes
    /// every write acknowledged at that level before it began, whatever the
    /// coordinators' clocks (within the drift bound) say. Writes of the same
    /// key handed to this node while that read runs wait for it and are
    /// stamped after the delete: writes are applied in the order they came.
    pub fn write(&mut self, call: CallId, key: Bytes, write: Write, level: Level, now_ms: u64) {
        if let Some(ahead_ms) = self.hlc.ahead_of_peers_ms(now_ms) {
            self.refuse_ahead(call, ahead_ms);
        } else if let Some(waiting) = self.deleting.get_mut(&key) {
            waiting.push((call, write, level));
        } else if write == Write::Delete {
            self.deleting.insert(key.clone(), Vec::new());
            if !self.start_read(call, key.clone(), level, Some(level), now_ms) {
                self.deleting.remove(&key);
            }
        } else {
            self.write_now(call, key, write, level, None, now_ms);
        }
    }

    /// Coordinates a delete whose read is done (or timed out, or answered
    /// by every replica up), then the writes of its key that waited for
    /// it, in order. `existed` is whether the read saw a live session.
    fn write_delete(&mut self, call: CallId, key: Bytes, level: Level, existed: bool, now_ms: u64) {
        self.write_now(
            call,
            key.clone(),
            Write::Delete,
            level,
            Some(existed),
            now_ms,
        );
        for (call, write, level) in self.deleting.remove(&key).unwrap_or_default() {
            // A later delete among them starts its own read, and the rest
            // wait for that one.
            self.write(call, key.clone(), write, level, now_ms);
        }
    }

    fn write_now(
        &mut self,
        call: CallId,
        key: Bytes,
        write: Write,
        level: Level,
        existed: Option<bool>,
        now_ms: u64,
    ) {
        let Some(replicas) = self.replicas_of(&key, call) else {
            return;
        };
        let stamp = match self.hlc.try_stamp(now_ms) {
            Ok(stamp) => stamp,
            Err(Error::ClockAhead { ahead_ms, .. }) => {
                self.refuse_ahead(call, ahead_ms);
                return;
            }
            Err(_) => unreachable!("stamping fails only for a clock ahead"),
        };
        // Until this node's clock is measured, its own copy waits for
        // another replica to accept the stamp.
        let defer = !self.clocks.measured() && replicas.iter().any(|r| r.addr.is_some());
        let id = self.in_flight.next_id();
        let mut pending = PendingWrite {
            call,
            key: key.clone(),
            write: write.clone(),
            stamp,
            needed: level.required(self.copies),
            waiting: all_of(&replicas),
            replicas: Arc::clone(&replicas),
            acks: 0,
            answered: false,
            existed,
            deferred: None,
            refused_ahead_ms: 0,
        };
        for (i, replica) in replicas.iter().enumerate() {
            if replica.local {
                if defer {
                    pending.deferred = Some(i);
                } else if self.store.apply(&key, &write, stamp, now_ms).is_ok() {
                    pending.waiting &= !(1 << i);
                    pending.acks += 1;
                }
            } else if let Some(to) = replica.addr {
                let message = Message::Write {
                    request: id,
                    key: key.clone(),
                    write: write.clone(),
                    stamp,
                };
                self.effects.push(Effect::Send { to, message });
            }
        }
        self.track_write(id, pending);
    }

    /// Coordinates a client read of `key`; its [`Outcome`] comes as an
    /// [`Effect::Done`] for `call`.
    pub fn read(&mut self, call: CallId, key: Bytes, level: Level, now_ms: u64) {
        self.start_read(call, key, level, None, now_ms);
    }

    /// Starts a read; `false` if it was refused at once (and answered so).
    fn start_read(
        &mut self,
        call: CallId,
        key: Bytes,
        level: Level,
        then: Option<Level>,
        now_ms: u64,
    ) -> bool {
        let Some(replicas) = self.replicas_of(&key, call) else {
            return false;
        };
        let id = self.in_flight.next_id();
        let mut pending = PendingRead {
            call,
            key: key.clone(),
            needed: level.required(self.copies),
            waiting: all_of(&replicas),
            replicas: Arc::clone(&replicas),
            answers: Vec::with_capacity(replicas.len()),
            then,
            unasked: Vec::new(),
            local: None,
        };
        let mut remote: Vec<usize> = Vec::with_capacity(replicas.len());
        for (i, replica) in replicas.iter().enumerate() {
            if replica.local {
                pending.waiting &= !(1 << i);
                let (session, fingerprint) = self.store.session_and_fingerprint(&key).unzip();
                pending.answers.push((i, session.clone()));
                pending.local = Some((session, fingerprint));
            } else {
                remote.push(i);
            }
        }
        // Ask only as many as the level still needs, starting at a replica
        // that changes from read to read so the load spreads; the rest
        // are asked if these are slow.
        let ask = pending.needed.saturating_sub(pending.answers.len());
        if self.config.speculative_read_ms > 0 && ask < remote.len() {
            let start = usize::try_from(id % remote.len() as u64).unwrap_or(0);
            remote.rotate_left(start);
            pending.unasked = remote.split_off(ask);
            if ask > 0 && !pending.unasked.is_empty() {
                self.schedule(self.config.speculative_read_ms, Timer::Speculate(id));
            }
        }
        let digest = pending.local.is_some();
        for &i in &remote {
            send_read(&mut self.effects, id, &replicas[i], &key, digest);
        }
        self.track_read(id, pending, now_ms);
        true
    }

    /// Asks a slow read's remaining replicas.
    fn speculate(&mut self, request: u64) {
        let Some(pending) = self.in_flight.reads.get_mut(&request) else {
            return;
        };
        let digest = pending.local.is_some();
        for i in std::mem::take(&mut pending.unasked) {
            send_read(
                &mut self.effects,
                request,
                &pending.replicas[i],
                &pending.key,
                digest,
            );
        }
    }

    /// Handles a message from the peer at `from`.
    pub fn handle_message(&mut self, from: SocketAddr, message: Message, now_ms: u64) {
        match message {
            Message::Write {
                request,
                key,
                write,
                stamp,
            } => {
                if let Err(e) = self.hlc.observe(stamp, now_ms) {
                    self.refuse_drift(from, &e);
                    self.effects.push(Effect::Send {
                        to: from,
                        message: Message::StampRefused {
                            request,
                            clock_ms: now_ms,
                        },
                    });
                } else if self.store.apply(&key, &write, stamp, now_ms).is_ok() {
                    self.effects.push(Effect::Send {
                        to: from,
                        message: Message::WriteAck { request },
                    });
                }
            }
            Message::WriteAck { request } => self.acknowledge(request, from, now_ms),
            Message::Read { request, key } => {
                let session = self.store.session(&key);
                self.effects.push(Effect::Send {
                    to: from,
                    message: Message::ReadReply { request, session },
                });
            }
            Message::ReadReply { request, session } => self.answer(request, from, session, now_ms),
            Message::ReadDigest { request, key } => {
                let fingerprint = self.store.fingerprint(&key);
                self.effects.push(Effect::Send {
                    to: from,
                    message: Message::DigestReply {
                        request,
                        fingerprint,
                    },
                });
            }
            Message::DigestReply {
                request,
                fingerprint,
            } => self.answer_digest(request, from, fingerprint, now_ms),
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
            Message::Handoff {
                request, entries, ..
            } => {
                let mut all_applied = true;
                for Entry { key, session } in entries {
                    match self.hlc.observe(session.newest_stamp(), now_ms) {
                        Err(e) => {
                            self.refuse_drift(from, &e);
                            all_applied = false;
                        }
                        Ok(()) => {
                            all_applied &= self.store.merge_remote(&key, session, now_ms).is_ok()
                        }
                    }
                }
                // Acknowledged only when all of it is here: the sender drops its copy then.
                if all_applied {
                    self.effects.push(Effect::Send {
                        to: from,
                        message: Message::WriteAck { request },
                    });
                }
            }
            Message::Merge { entries } => {
                for Entry { key, session } in entries {
                    match self.hlc.observe(session.newest_stamp(), now_ms) {
                        Err(e) => self.refuse_drift(from, &e),
                        Ok(()) => {
                            // A key over the limit comes only from a broken peer; skip it.
                            if self.store.merge_remote(&key, session, now_ms) == Ok(true) {
                                self.stats.keys_repaired += 1;
                            }
                        }
                    }
                }
            }
            Message::ClockProbe { sent_ms } => self.effects.push(Effect::Send {
                to: from,
                message: Message::ClockReply {
                    sent_ms,
                    clock_ms: now_ms,
                },
            }),
            Message::ClockReply { sent_ms, clock_ms } => {
                self.clock_measured(from, clock_ms, sent_ms, now_ms);
            }
            Message::StampRefused { request, clock_ms } => {
                self.stamp_refused(request, from, clock_ms, now_ms);
            }
            // Connection set-up is the transport's; gossip arrives as datagrams.
            Message::Hello | Message::Welcome | Message::Gossip(_) => {}
        }
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

    fn track_write(&mut self, id: u64, mut pending: PendingWrite) {
        answer_when_written(&mut self.effects, &mut pending);
        if pending.waiting == 0 {
            self.write_settled(pending);
        } else {
            self.schedule_deadline(id);
            self.in_flight.writes.insert(id, pending);
        }
    }

    /// Every replica up has acknowledged a write. If that was too few for
    /// its level (fewer replicas are up than it counts), the client hears
    /// so now rather than at the deadline, and the members that are down
    /// but would hold a copy get hints.
    fn write_settled(&mut self, mut pending: PendingWrite) {
        debug_assert_eq!(pending.waiting, 0);
        if pending.answered {
            return;
        }
        debug_assert!(pending.acks < pending.needed);
        pending.answered = true;
        self.stats.writes_short_of_copies += 1;
        self.effects.push(Effect::Done {
            call: pending.call,
            outcome: Outcome::TooFewAcks {
                acks: pending.acks,
                needed: pending.needed,
            },
        });
        self.hint_copies_down(&pending);
    }

    /// Hints for the members that are down (or not known to be up) but
    /// would replicate `pending`'s key if they were up: what placement over
    /// every counted member gives, less the replicas it has now.
    fn hint_copies_down(&mut self, pending: &PendingWrite) {
        if pending.replicas.len() >= self.copies {
            return;
        }
        let partition = self.store.partition_of(&pending.key);
        let mut ranked: Vec<(u64, &String)> = self
            .counted
            .iter()
            .map(|name| (rendezvous_score(partition, name.as_bytes()), name))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        for (_, name) in ranked.into_iter().take(self.config.replication_factor) {
            if pending.replicas.iter().any(|r| r.name == *name) {
                continue;
            }
            self.stats.hints_queued += 1;
            self.hints.push(Hint {
                replica: name.clone(),
                key: pending.key.clone(),
                write: pending.write.clone(),
                stamp: pending.stamp,
            });
        }
    }

    fn track_read(&mut self, id: u64, pending: PendingRead, now_ms: u64) {
        if pending.answers.len() >= pending.needed || pending.waiting == 0 {
            self.finish_read(pending, now_ms);
        } else {
            self.schedule_deadline(id);
            self.in_flight.reads.insert(id, pending);
        }
    }

    fn schedule_deadline(&mut self, id: u64) {
        self.schedule(self.config.request_timeout_ms, Timer::Request(id));
    }

    fn acknowledge(&mut self, request: u64, from: SocketAddr, now_ms: u64) {
        if self.in_flight.replays.remove(&request).is_some() {
            self.stats.hints_replayed += 1;
            return;
        }
        if let Some((partition, replica)) = self.handoff_batches.remove(&request) {
            self.handoff_acknowledged(partition, &replica);
            return;
        }
        let Some(pending) = self.in_flight.writes.get_mut(&request) else {
            return;
        };
        let Some(bit) = waiting_on(&pending.replicas, pending.waiting, from) else {
            return;
        };
        pending.waiting &= !bit;
        pending.acks += 1;
        self.stats.replica_acks += 1;
        if let Some(i) = pending.deferred.take() {
            // A replica accepted the stamp: this node's copy takes it too.
            if self
                .store
                .apply(&pending.key, &pending.write, pending.stamp, now_ms)
                .is_ok()
            {
                pending.waiting &= !(1 << i);
                pending.acks += 1;
            }
        }
        answer_when_written(&mut self.effects, pending);
        if pending.waiting == 0
            && let Some(pending) = self.in_flight.writes.remove(&request)
        {
            self.write_settled(pending);
        }
    }

    fn answer(&mut self, request: u64, from: SocketAddr, session: Option<Session>, now_ms: u64) {
        if let Some(session) = &session
            && let Err(e) = self.hlc.observe(session.newest_stamp(), now_ms)
        {
            self.refuse_drift(from, &e);
            return;
        }
        let Some(pending) = self.in_flight.reads.get_mut(&request) else {
            return;
        };
        let Some(bit) = waiting_on(&pending.replicas, pending.waiting, from) else {
            return;
        };
        pending.waiting &= !bit;
        pending
            .answers
            .push((bit.trailing_zeros() as usize, session));
        if (pending.answers.len() >= pending.needed || pending.waiting == 0)
            && let Some(pending) = self.in_flight.reads.remove(&request)
        {
            self.finish_read(pending, now_ms);
        }
    }

    /// A replica's fingerprint for a read: the same as this node's copy
    /// counts as an answer with that copy; a different one asks the replica
    /// for its state, which [`answer`](Self::answer) then takes.
    fn answer_digest(
        &mut self,
        request: u64,
        from: SocketAddr,
        fingerprint: Option<u64>,
        now_ms: u64,
    ) {
        let Some(pending) = self.in_flight.reads.get_mut(&request) else {
            return;
        };
        let Some((local, local_fingerprint)) = &pending.local else {
            return;
        };
        let Some(bit) = waiting_on(&pending.replicas, pending.waiting, from) else {
            return;
        };
        if fingerprint != *local_fingerprint {
            self.stats.digest_mismatches += 1;
            self.effects.push(Effect::Send {
                to: from,
                message: Message::Read {
                    request,
                    key: pending.key.clone(),
                },
            });
            return;
        }
        let same = local.clone();
        pending.waiting &= !bit;
        pending.answers.push((bit.trailing_zeros() as usize, same));
        if (pending.answers.len() >= pending.needed || pending.waiting == 0)
            && let Some(pending) = self.in_flight.reads.remove(&request)
        {
            self.finish_read(pending, now_ms);
        }
    }

    /// Answers a read with the merge of its answers, and repairs the
    /// replicas that answered with less. A read that every replica up
    /// answered, but fewer than its level counts, is answered so (and a
    /// delete's read goes on to the delete).
    fn finish_read(&mut self, pending: PendingRead, now_ms: u64) {
        let merged = merge_answers(&pending);
        if let Some(newest) = &merged {
            for &(i, ref held) in &pending.answers {
                if held.as_ref() == Some(newest) {
                    continue;
                }
                let replica = &pending.replicas[i];
                let entries = vec![Entry {
                    key: pending.key.clone(),
                    session: newest.clone(),
                }];
                if replica.local {
                    // Our own copy is behind: repair it directly. The key was
                    // checked when the read began.
                    let _ = self
                        .store
                        .merge_remote(&pending.key, newest.clone(), now_ms);
                } else if let Some(to) = replica.addr {
                    self.effects.push(Effect::Send {
                        to,
                        message: Message::Merge { entries },
                    });
                }
            }
        }
        if let Some(level) = pending.then {
            let existed = merged.as_ref().is_some_and(|s| s.is_visible(now_ms));
            self.write_delete(pending.call, pending.key, level, existed, now_ms);
            return;
        }
        let outcome = if pending.answers.len() >= pending.needed {
            Outcome::Read(merged)
        } else {
            self.stats.reads_short_of_copies += 1;
            Outcome::TooFewAnswers {
                answers: pending.answers.len(),
                needed: pending.needed,
            }
        };
        self.effects.push(Effect::Done {
            call: pending.call,
            outcome,
        });
    }

    fn expire_request(&mut self, id: u64, now_ms: u64) {
        if let Some(mut pending) = self.in_flight.writes.remove(&id) {
            if let Some(i) = pending.deferred.take() {
                if pending.refused_ahead_ms > 0 {
                    // Refused, and accepted nowhere: it is stored nowhere.
                    self.refuse_ahead(pending.call, pending.refused_ahead_ms);
                    return;
                }
                // Nobody answered: nothing says the stamp is bad.
                if self
                    .store
                    .apply(&pending.key, &pending.write, pending.stamp, now_ms)
                    .is_ok()
                {
                    pending.waiting &= !(1 << i);
                    pending.acks += 1;
                }
            }
            self.stats.hints_queued += u64::from(pending.waiting.count_ones());
            if !pending.answered {
                self.stats.write_timeouts += 1;
                let outcome = Outcome::TooFewAcks {
                    acks: pending.acks,
                    needed: pending.needed,
                };
                self.effects.push(Effect::Done {
                    call: pending.call,
                    outcome,
                });
                self.hint_copies_down(&pending);
            }
            for i in replicas_in(pending.waiting) {
                self.hints.push(Hint {
                    replica: pending.replicas[i].name.clone(),
                    key: pending.key.clone(),
                    write: pending.write.clone(),
                    stamp: pending.stamp,
                });
            }
        }
        if let Some(mut pending) = self.in_flight.reads.remove(&id) {
            if let Some(level) = pending.then.take() {
                // The clock has seen what the answers carried; the delete
                // goes ahead and its own level decides its outcome.
                let existed = merge_answers(&pending).is_some_and(|s| s.is_visible(now_ms));
                self.write_delete(pending.call, pending.key, level, existed, now_ms);
                return;
            }
            self.stats.read_timeouts += 1;
            let outcome = Outcome::TooFewAnswers {
                answers: pending.answers.len(),
                needed: pending.needed,
            };
            self.effects.push(Effect::Done {
                call: pending.call,
                outcome,
            });
        }
        if let Some(hint) = self.in_flight.replays.remove(&id) {
            // Not acknowledged: keep it for the next attempt.
            self.hints.push(hint);
        }
        if let Some((partition, _)) = self.handoff_batches.remove(&id) {
            // Abandon this attempt; the next round starts another.
            self.handoffs.remove(&partition);
        }
    }

    /// Hands each partition we hold data for but do not replicate to its
    /// current replicas, in acknowledged batches.
    fn start_handoffs(&mut self) {
        let me = self.membership.me().name.clone();
        let orphans: Vec<PartitionId> = (0..self.store.partition_count())
            .map(PartitionId)
            .filter(|p| !self.handoffs.contains_key(p))
            .filter(|&p| {
                !self.partitioner.replicas_for(p).contains(&me) && self.store.partition_len(p) > 0
            })
            .collect();
        for partition in orphans {
            let replicas: Vec<(String, SocketAddr)> = self
                .partitioner
                .replicas_for(partition)
                .iter()
                .filter_map(|r| self.addrs.get(r).map(|a| (r.clone(), *a)))
                .collect();
            if replicas.is_empty() {
                continue;
            }
            let entries: Vec<Entry> = self.store.entries(partition);
            let mut outstanding = HashMap::new();
            for (replica, to) in replicas {
                for batch in entries.chunks(self.config.anti_entropy_max_entries) {
                    let request = self.in_flight.next_id();
                    let message = Message::Handoff {
                        request,
                        partition,
                        entries: batch.to_vec(),
                    };
                    self.effects.push(Effect::Send { to, message });
                    self.handoff_batches
                        .insert(request, (partition, replica.clone()));
                    self.schedule_deadline(request);
                    *outstanding.entry(replica.clone()).or_insert(0) += 1;
                }
            }
            self.handoffs.insert(partition, outstanding);
        }
    }

    /// Drops a handed-off partition once every one of its current replicas
    /// acknowledged every batch, if we still do not replicate it.
    fn handoff_acknowledged(&mut self, partition: PartitionId, replica: &str) {
        let Some(outstanding) = self.handoffs.get_mut(&partition) else {
            return;
        };
        if let Some(count) = outstanding.get_mut(replica) {
            *count = count.saturating_sub(1);
        }
        if outstanding.values().any(|&c| c > 0) {
            return;
        }
        let acknowledged: BTreeSet<String> = outstanding.keys().cloned().collect();
        self.handoffs.remove(&partition);
        let owners: BTreeSet<String> = self
            .partitioner
            .replicas_for(partition)
            .iter()
            .cloned()
            .collect();
        let me = &self.membership.me().name;
        if !owners.contains(me) && !owners.is_empty() && owners.is_subset(&acknowledged) {
            self.store.drop_partition(partition);
        }
    }

    /// How often hints are retried, at most.
    const HINT_REPLAY_MS: u64 = 1_000;

    fn schedule_hint_replay(&mut self) {
        self.schedule(Self::HINT_REPLAY_MS, Timer::ReplayHints);
    }

    fn schedule(&mut self, after_ms: u64, timer: Timer) {
        self.effects.push(Effect::Schedule {
            after: Duration::from_millis(after_ms),
            timer,
        });
    }

    /// Partitions this node replicates.
    fn my_partitions(&self) -> Vec<PartitionId> {
        let me = &self.membership.me().name;
        self.partitioner.partitions_of(me).collect()
    }

    /// Starts an anti-entropy round: to every other replica of our
    /// partitions, the digest roots of the partitions we share; and for each
    /// partition we hold data for but no longer replicate (after a membership
    /// change, or while leaving), a handoff to its replicas.
    fn anti_entropy_round(&mut self) {
        self.stats.anti_entropy_rounds += 1;
        self.start_handoffs();
        let me = self.membership.me().name.clone();
        let mut shared: HashMap<String, Vec<(PartitionId, u64)>> = HashMap::new();
        for partition in self.my_partitions() {
            let root = self.store.digest_root(partition);
            for replica in self.partitioner.replicas_for(partition) {
                if *replica != me {
                    shared
                        .entry(replica.clone())
                        .or_default()
                        .push((partition, root));
                }
            }
        }
        let mut peers: Vec<(String, Vec<(PartitionId, u64)>)> = shared.into_iter().collect();
        peers.sort();
        for (replica, roots) in peers {
            if let Some(&to) = self.addrs.get(&replica) {
                self.effects.push(Effect::Send {
                    to,
                    message: Message::DigestRoots { roots },
                });
            }
        }
    }

    /// Step 2: for each shared partition whose root differs, our buckets.
    fn compare_roots(&mut self, from: SocketAddr, roots: &[(PartitionId, u64)]) {
        let mine: BTreeSet<PartitionId> = self.my_partitions().into_iter().collect();
        for &(partition, root) in roots {
            if mine.contains(&partition) && self.store.digest_root(partition) != root {
                let buckets = self.store.digest(partition).buckets().to_vec();
                self.effects.push(Effect::Send {
                    to: from,
                    message: Message::DigestBuckets { partition, buckets },
                });
            }
        }
    }

    /// Whether `partition` exists here (a peer may name any number).
    fn known(&self, partition: PartitionId) -> bool {
        partition.0 < self.store.partition_count()
    }

    /// Step 3: for each bucket that differs, our key digests.
    fn compare_buckets(&mut self, from: SocketAddr, partition: PartitionId, buckets: &[u64]) {
        if !self.known(partition) {
            return;
        }
        for bucket in self.store.digest(partition).differing_buckets(buckets) {
            let keys = self.store.bucket_keys(partition, bucket);
            self.effects.push(Effect::Send {
                to: from,
                message: Message::DigestKeys {
                    partition,
                    bucket,
                    keys,
                },
            });
        }
    }

    /// Step 4: push our versions of the keys that differ, and ask for theirs.
    fn compare_keys(
        &mut self,
        from: SocketAddr,
        partition: PartitionId,
        bucket: u8,
        keys: &[KeyDigest],
        now_ms: u64,
    ) {
        if !self.known(partition) {
            return;
        }
        let mut differing = differing_keys(&self.store.bucket_keys(partition, bucket), keys);
        differing.truncate(self.config.anti_entropy_max_entries);
        if differing.is_empty() {
            return;
        }
        self.send_entries(from, partition, &differing, now_ms);
        self.effects.push(Effect::Send {
            to: from,
            message: Message::FetchKeys {
                partition,
                key_hashes: differing,
            },
        });
    }

    /// Sends our sessions with these key hashes (at most the round's bound).
    ///
    /// Repair traffic is metered in one-second windows against
    /// `anti_entropy_bytes_per_sec`: an answer that would pass the window's
    /// budget is skipped (the first answer of a window always goes), and the
    /// next round comes a window later instead of a period later.
    fn send_entries(
        &mut self,
        to: SocketAddr,
        partition: PartitionId,
        key_hashes: &[u64],
        now_ms: u64,
    ) {
        if !self.known(partition) {
            return;
        }
        let limit = key_hashes.len().min(self.config.anti_entropy_max_entries);
        let entries = self.store.entries_by_hash(partition, &key_hashes[..limit]);
        if entries.is_empty() {
            return;
        }
        let bytes: u64 = entries
            .iter()
            .map(|e| (e.key.len() + e.session.approx_bytes()) as u64)
            .sum();
        if now_ms >= self.repair_window_start_ms + 1_000 {
            self.repair_window_start_ms = now_ms;
            self.repair_window_bytes = 0;
        }
        if self.repair_window_bytes > 0
            && self.repair_window_bytes + bytes > self.config.anti_entropy_bytes_per_sec
        {
            self.repair_throttled = true;
            return;
        }
        self.repair_window_bytes += bytes;
        self.effects.push(Effect::Send {
            to,
            message: Message::Merge { entries },
        });
    }

    /// Sweeps the next few partitions, so the whole store is swept every
    /// `partition_count / PARTITIONS_PER_SWEEP` sweep periods.
    fn sweep(&mut self, now_ms: u64) {
        const PARTITIONS_PER_SWEEP: u32 = 4;
        for _ in 0..PARTITIONS_PER_SWEEP.min(self.store.partition_count()) {
            self.store.sweep(PartitionId(self.sweep_cursor), now_ms);
            self.sweep_cursor = (self.sweep_cursor + 1) % self.store.partition_count();
        }
    }

    /// Sends every replica that is up the writes it missed, as writes to
    /// acknowledge: a hint goes only once its replica has it.
    fn replay_hints(&mut self) {
        let addrs = &self.addrs;
        let hints = self.hints.take_where(|h| addrs.contains_key(&h.replica));
        for hint in hints {
            let Some(&to) = self.addrs.get(&hint.replica) else {
                continue;
            };
            let id = self.in_flight.next_id();
            let message = Message::Write {
                request: id,
                key: hint.key.clone(),
                write: hint.write.clone(),
                stamp: hint.stamp,
            };
            self.effects.push(Effect::Send { to, message });
            self.schedule_deadline(id);
            self.in_flight.replays.insert(id, hint);
        }
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
        }
        if returned {
            self.replay_hints();
        }
    }

    fn refresh_addresses(&mut self) {
        let me = self.membership.me();
        self.addrs = self
            .membership
            .members()
            .chain(std::iter::once(me))
            .map(|m| (m.name.clone(), m.addr))
            .collect();
        self.names = self
            .addrs
            .iter()
            .map(|(name, addr)| (*addr, name.clone()))
            .collect();
    }

    /// Recomputes the replica sets from the members that are up and not
    /// leaving, and the copies levels count against from every member.
    fn rebalance(&mut self) {
        if self.addrs.is_empty() {
            self.refresh_addresses();
        }
        let me = self.membership.me();
        let mut owners: BTreeSet<String> = self
            .membership
            .members()
            .filter(|m| self.membership.state_of(&m.name) != Some(MemberState::Leaving))
            .map(|m| m.name.clone())
            .collect();
        if self.membership.state() != MemberState::Leaving {
            owners.insert(me.name.clone());
        }
        let changed = self.partitioner.set_members(owners);
        self.counted = self.membership.counted_names();
        self.copies = self
            .membership
            .counted_members()
            .clamp(1, self.config.replication_factor);
        self.replica_sets.clear();
        for partition in (0..self.store.partition_count()).map(PartitionId) {
            let replicas = self.partitioner.replicas_for(partition);
            debug_assert!(replicas.len() <= self.copies);
            let local = if replicas.contains(&me.name) {
                self.copies
            } else {
                0
            };
            self.store.set_replicated(partition, local);
            self.replica_sets.push(
                replicas
                    .iter()
                    .map(|name| Replica {
                        name: name.clone(),
                        addr: self.addrs.get(name).copied().filter(|_| *name != me.name),
                        local: *name == me.name,
                    })
                    .collect(),
            );
        }
        if !changed.is_empty() {
            self.effects
                .push(Effect::Event(NodeEvent::ReplicasChanged(changed)));
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

/// Asks `replica` for its state of `key`, or only for its fingerprint.
fn send_read(
    effects: &mut Vec<Effect>,
    request: u64,
    replica: &Replica,
    key: &Bytes,
    digest: bool,
) {
    if let Some(to) = replica.addr {
        let key = key.clone();
        let message = if digest {
            Message::ReadDigest { request, key }
        } else {
            Message::Read { request, key }
        };
        effects.push(Effect::Send { to, message });
    }
}

/// The merge of a read's answers (newest stamp per field), if any held the key.
fn merge_answers(pending: &PendingRead) -> Option<Session> {
    let mut merged: Option<Session> = None;
    for (_, session) in &pending.answers {
        if let Some(session) = session {
            merged
                .get_or_insert_with(Session::default)
                .merge(session.clone());
        }
    }
    merged
}

/// Answers a write's client, once, when enough replicas have acknowledged it.
fn answer_when_written(effects: &mut Vec<Effect>, pending: &mut PendingWrite) {
    if !pending.answered && pending.acks >= pending.needed {
        pending.answered = true;
        let outcome = Outcome::Written {
            acks: pending.acks,
            stamp: pending.stamp,
            existed: pending.existed,
        };
        effects.push(Effect::Done {
            call: pending.call,
            outcome,
        });
    }
}
