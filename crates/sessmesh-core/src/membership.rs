//! Cluster membership: SWIM with suspicion and incarnations ([`foca`]),
//! driven sans-IO.
//!
//! [`Membership`] wraps one `foca::Foca`. It turns foca's runtime calls into
//! [`MembershipEffect`]s: packets to send, timers to set, and [`MemberEvent`]s.
//! The caller carries them out and feeds back packets and expired timers. It
//! never reads a clock or a socket, and its randomness comes from a seed.
//!
//! - **Identity.** A [`Member`] is a node name, its QUIC address, its client
//!   address, its generation, and the partition settings it runs with. A
//!   restarted node comes back with a higher generation, so it is a new member.
//!   At one address, the higher generation wins, and messages about the old
//!   one are ignored.
//! - **Settings.** A packet from a member whose partition count or replication
//!   factor differs from ours is refused before foca sees it, with a
//!   [`MemberEvent::Refused`] naming both values. Two clusters that disagree
//!   on placement never merge their views, and so never split the data silently.
//! - **State.** Each member's [`MemberState`] (joining, alive, leaving) spreads as
//!   a foca custom broadcast. A broadcast is piggybacked for a few rounds
//!   only, so a member says its state again whenever it sees a member come
//!   up (a late joiner, a restarted node, the other side of a healed
//!   partition) and every ten probe periods, in case one was missed. A
//!   member that announced `Leaving` before going down is reported
//!   [`MemberEvent::Left`], not [`MemberEvent::Down`].
//! - **Joining.** [`Membership::join`] announces to every seed, and repeats
//!   every `rejoin_period_ms` until some member answers. An unreachable seed
//!   is retried, not fatal, and a seed that is not a member is announced to
//!   every `rejoin_period_ms` for as long as it is not: a node whose seed was
//!   cut off when it joined may have formed a cluster apart from the seed's,
//!   and the seed is what links the two once the network heals.
//! - **Reconnecting.** Foca stops its timers when a node renews its identity
//!   after being declared down, and starts them again only when a peer
//!   answers. If every node of a healed partition renewed at once, each would
//!   address the others' old identities and none would ever answer. So while
//!   foca is not connected, the node also announces to a few members it knows,
//!   by address, which reaches them whatever generation they now run as.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use foca::{BroadcastHandler, Foca, Invalidates, Notification, PostcardCodec, Timer};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::{Error, NodeId};

mod config;

pub use config::MembershipConfig;

/// A member of the cluster, as gossip carries it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// The node's name (from its certificate); stable across restarts.
    pub name: String,
    /// The address peers reach it at (QUIC).
    pub addr: SocketAddr,
    /// The address clients reach it at (the Redis protocol endpoint), if any.
    pub client_addr: Option<SocketAddr>,
    /// Incremented on every start and every rejoin, so a restarted node is a new member.
    pub generation: u64,
    /// The partition count it runs with.
    pub partition_count: u32,
    /// The replication factor it runs with.
    pub replication_factor: u32,
}

impl Member {
    /// The id this incarnation stamps its writes with: a hash of its name and
    /// generation, so it differs across restarts.
    pub fn node_id(&self) -> NodeId {
        let mut h = Xxh3::new();
        h.update(self.name.as_bytes());
        h.update(&self.generation.to_le_bytes());
        NodeId(h.digest())
    }

    /// A stand-in for a seed known only by its address: foca accepts an
    /// announce sent to an identity with the receiver's address.
    fn seed(addr: SocketAddr) -> Member {
        Member {
            name: String::new(),
            addr,
            client_addr: None,
            generation: 0,
            partition_count: 0,
            replication_factor: 0,
        }
    }
}

impl foca::Identity for Member {
    type Addr = SocketAddr;

    /// A member declared down rejoins as the next generation.
    fn renew(&self) -> Option<Self> {
        Some(Member {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, &self.name) > (adversary.generation, &adversary.name)
    }
}

/// What a member is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberState {
    /// Started, still receiving its partitions.
    Joining,
    /// Serving.
    Alive,
    /// Leaving the cluster on purpose.
    Leaving,
}

/// A member's state, as its custom broadcast carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StateUpdate {
    name: String,
    generation: u64,
    version: u64,
    state: MemberState,
}

impl StateUpdate {
    fn newer_than(&self, other: &StateUpdate) -> bool {
        (self.generation, self.version) > (other.generation, other.version)
    }
}

impl Invalidates for StateUpdate {
    fn invalidates(&self, other: &Self) -> bool {
        self.name == other.name && !other.newer_than(self)
    }
}

/// The latest state broadcast of each member, and those not yet reported.
#[derive(Debug, Default)]
struct StateBook {
    latest: HashMap<String, StateUpdate>,
    fresh: Vec<StateUpdate>,
}

/// Shares the [`StateBook`] between foca (which owns its broadcast handler) and
/// [`Membership`]. One task drives both, so the lock is never contended; it is
/// a mutex only so that the membership stays `Send`.
#[derive(Debug, Default, Clone)]
struct SharedStates(Arc<Mutex<StateBook>>);

impl SharedStates {
    fn with<R>(&self, f: impl FnOnce(&mut StateBook) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A custom broadcast that is not a state update.
#[derive(Debug, thiserror::Error)]
#[error("malformed member state broadcast: {0}")]
pub struct BadStateUpdate(postcard::Error);

impl BroadcastHandler<Member> for SharedStates {
    type Key = StateUpdate;
    type Error = BadStateUpdate;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Member>,
    ) -> Result<Option<StateUpdate>, BadStateUpdate> {
        let update: StateUpdate = postcard::from_bytes(data).map_err(BadStateUpdate)?;
        Ok(self.with(|book| {
            let known = book.latest.get(&update.name);
            if known.is_some_and(|k| !update.newer_than(k)) {
                return None;
            }
            // A member repeats its state now and then so newcomers hear it;
            // only a new state (or a new incarnation's) is an event.
            let changed =
                known.is_none_or(|k| (k.generation, k.state) != (update.generation, update.state));
            book.latest.insert(update.name.clone(), update.clone());
            if changed {
                book.fresh.push(update.clone());
            }
            // Passed on either way, so the repeat spreads.
            Some(update)
        }))
    }
}

/// A membership timer, to hand back through [`Membership::handle_timer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipTimer {
    /// One of foca's own timers; stale ones are ignored by their token.
    Swim(Timer<Member>),
    /// Announce to the seeds again if still alone.
    AnnounceSeeds,
    /// Spread this node's state again, for members that missed it.
    RepeatState,
}

/// A change in the cluster, as membership sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member became active.
    Up(Member),
    /// A member was declared down (crashed or cut off).
    Down(Member),
    /// A member left on purpose.
    Left(Member),
    /// A member's state changed.
    State {
        /// The member's name.
        name: String,
        /// Its generation.
        generation: u64,
        /// Its new state.
        state: MemberState,
    },
    /// A packet from a member with other settings was refused.
    Refused {
        /// Where it came from.
        from: SocketAddr,
        /// The sender's name.
        name: String,
        /// What differs, in words.
        reason: String,
    },
    /// This node was declared down; it rejoins as its next generation.
    Rejoined(Member),
}

/// Something the caller must do for [`Membership`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEffect {
    /// Send a gossip packet (as a datagram).
    Send {
        /// The destination.
        to: SocketAddr,
        /// The packet.
        payload: Bytes,
    },
    /// Hand `timer` back after `after`.
    Schedule {
        /// How long from now.
        after: Duration,
        /// The timer.
        timer: MembershipTimer,
    },
    /// Something changed.
    Event(MemberEvent),
}

type Swim = Foca<Member, PostcardCodec, SmallRng, SharedStates>;

/// One node's view of the cluster. See the [module docs](self).
pub struct Membership {
    swim: Swim,
    states: SharedStates,
    /// Whether foca has heard from an active member since it last (re)joined.
    connected: bool,
    /// Whether it ever has: until then, the seeds stand for the members.
    joined: bool,
    /// For choosing which known members to announce to while disconnected.
    rng: SmallRng,
    seeds: Vec<SocketAddr>,
    my_state: MemberState,
    my_state_version: u64,
    config: MembershipConfig,
    effects: Vec<MembershipEffect>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", self.me())
            .field("state", &self.my_state)
            .finish_non_exhaustive()
    }
}

/// Collects foca's runtime calls as effects.
struct Collect<'a> {
    effects: &'a mut Vec<MembershipEffect>,
    notifications: Vec<foca::OwnedNotification<Member>>,
}

impl foca::Runtime<Member> for Collect<'_> {
    fn notify(&mut self, notification: Notification<'_, Member>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: Member, data: &[u8]) {
        self.effects.push(MembershipEffect::Send {
            to: to.addr,
            payload: Bytes::copy_from_slice(data),
        });
    }

    fn submit_after(&mut self, timer: Timer<Member>, after: Duration) {
        self.effects.push(MembershipEffect::Schedule {
            after,
            timer: MembershipTimer::Swim(timer),
        });
    }
}

impl Membership {
    /// Membership for `me`, with every random choice drawn from `seed`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] from [`MembershipConfig::validate`].
    pub fn new(me: Member, config: MembershipConfig, seed: u64) -> Result<Self, Error> {
        config.validate()?;
        let states = SharedStates::default();
        let mut rng = SmallRng::seed_from_u64(seed);
        let swim_rng = SmallRng::seed_from_u64(rng.random());
        let swim = Foca::with_custom_broadcast(
            me,
            config.to_foca(),
            swim_rng,
            PostcardCodec,
            states.clone(),
        );
        let mut membership = Membership {
            swim,
            states,
            connected: false,
            joined: false,
            rng,
            seeds: Vec::new(),
            my_state: MemberState::Joining,
            my_state_version: 0,
            config,
            effects: Vec::new(),
        };
        membership.publish_state();
        Ok(membership)
    }

    /// This node's current identity.
    pub fn me(&self) -> &Member {
        self.swim.identity()
    }

    /// This node's state.
    pub fn state(&self) -> MemberState {
        self.my_state
    }

    /// The settings in force.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// The members this node considers active, itself excluded.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.swim.iter_members().map(|m| m.id())
    }

    /// The last known state of the member named `name`.
    pub fn state_of(&self, name: &str) -> Option<MemberState> {
        self.states
            .with(|book| book.latest.get(name).map(|u| u.state))
    }

    /// The names of the members copies are counted against: this node and
    /// every member it knows of, up, suspected or declared down, except
    /// those that announced they are leaving. A member declared down is
    /// forgotten `remove_down_after_ms` after (24 hours by default).
    pub fn counted_names(&self) -> BTreeSet<String> {
        let leaving = |name: &str| self.state_of(name) == Some(MemberState::Leaving);
        let mut names: BTreeSet<String> = self
            .swim
            .iter_membership_state()
            .map(|m| &m.id().name)
            .filter(|name| !name.is_empty() && !leaving(name))
            .cloned()
            .collect();
        if self.my_state != MemberState::Leaving {
            names.insert(self.me().name.clone());
        }
        names
    }

    /// How many members the cluster has, as copies are counted: the
    /// [`counted_names`](Self::counted_names), or, before this node has
    /// heard from any member, itself and one member per seed: a node told
    /// to join a cluster does not act as a cluster of one meanwhile.
    pub fn counted_members(&self) -> usize {
        let named = self.counted_names().len();
        if self.joined {
            named
        } else {
            named.max(1 + self.seeds.len())
        }
    }

    /// Takes the effects produced since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<MembershipEffect> {
        std::mem::take(&mut self.effects)
    }

    /// Joins through `seeds`: announces to each now, and again every
    /// `rejoin_period_ms` until a member answers.
    pub fn join(&mut self, seeds: &[SocketAddr]) {
        self.seeds = seeds
            .iter()
            .copied()
            .filter(|s| *s != self.me().addr)
            .collect();
        self.seeds.sort_unstable();
        self.seeds.dedup();
        self.reconnect();
        self.effects.push(MembershipEffect::Schedule {
            after: Duration::from_millis(self.config.rejoin_period_ms),
            timer: MembershipTimer::AnnounceSeeds,
        });
        self.schedule_state_repeat();
    }

    /// How many probe periods pass between repeats of this node's state.
    const STATE_REPEAT_PROBES: u64 = 10;

    fn schedule_state_repeat(&mut self) {
        self.effects.push(MembershipEffect::Schedule {
            after: Duration::from_millis(self.config.probe_period_ms * Self::STATE_REPEAT_PROBES),
            timer: MembershipTimer::RepeatState,
        });
    }

    /// While disconnected, announces to the seeds and to a few known
    /// members. While connected, announces to the seeds that are not
    /// members: a seed cut off when this node joined may lead to the part
    /// of the cluster that formed around it, which nothing else links to
    /// this one once the network heals.
    fn reconnect(&mut self) {
        if self.connected {
            let members: BTreeSet<SocketAddr> = self.members().map(|m| m.addr).collect();
            let strangers: Vec<SocketAddr> = self
                .seeds
                .iter()
                .copied()
                .filter(|s| !members.contains(s))
                .collect();
            for addr in strangers {
                self.call(|swim, rt| swim.announce(Member::seed(addr), rt));
            }
            return;
        }
        let mut targets = self.seeds.clone();
        let known: Vec<SocketAddr> = self
            .swim
            .iter_membership_state()
            .map(|m| m.id().addr)
            .collect();
        for _ in 0..known.len().min(Self::RECONNECT_FANOUT) {
            targets.push(known[self.rng.random_range(0..known.len())]);
        }
        targets.sort_unstable();
        targets.dedup();
        for addr in targets {
            self.call(|swim, rt| swim.announce(Member::seed(addr), rt));
        }
    }

    /// Known members announced to, per attempt, while disconnected.
    const RECONNECT_FANOUT: usize = 3;

    /// Sets this node's state and spreads it.
    pub fn set_state(&mut self, state: MemberState) {
        if state != self.my_state {
            self.my_state = state;
            self.publish_state();
        }
    }

    fn publish_state(&mut self) {
        self.my_state_version += 1;
        let update = StateUpdate {
            name: self.me().name.clone(),
            generation: self.me().generation,
            version: self.my_state_version,
            state: self.my_state,
        };
        let data = postcard::to_allocvec(&update).expect("state updates serialize");
        // Fresh updates of our own are not events.
        let _ = self.swim.add_broadcast(&data);
        self.states.with(|book| book.fresh.clear());
    }

    /// First half of leaving on purpose: announces `Leaving`, so peers stop
    /// counting this member as a replica (and take over its data) while it
    /// still answers. Give it a few gossip periods to spread, then [`Membership::leave`].
    pub fn prepare_leave(&mut self) {
        self.set_state(MemberState::Leaving);
        self.call(|swim, rt| swim.broadcast(rt));
    }

    /// Leaves the cluster: peers drop this member at once rather than after
    /// suspicion, and those that heard it was `Leaving` report it [`MemberEvent::Left`].
    pub fn leave(&mut self) {
        self.set_state(MemberState::Leaving);
        self.call(|swim, rt| swim.leave_cluster(rt));
    }

    /// Handles a gossip packet from `from`.
    pub fn handle_packet(&mut self, from: SocketAddr, packet: &[u8]) {
        if let Ok((header, _)) = postcard::take_from_bytes::<foca::Header<Member>>(packet) {
            let me = self.swim.identity();
            let src = &header.src;
            if (src.partition_count, src.replication_factor)
                != (me.partition_count, me.replication_factor)
            {
                let reason = format!(
                    "it runs with partition_count {} and replication_factor {}; this node runs with {} and {}",
                    src.partition_count,
                    src.replication_factor,
                    me.partition_count,
                    me.replication_factor
                );
                self.effects
                    .push(MembershipEffect::Event(MemberEvent::Refused {
                        from,
                        name: src.name.clone(),
                        reason,
                    }));
                return;
            }
        }
        // Undecodable packets are foca's to refuse; it changes nothing for them.
        self.call(|swim, rt| swim.handle_data(packet, rt));
    }

    /// Handles a timer this membership scheduled.
    pub fn handle_timer(&mut self, timer: MembershipTimer) {
        match timer {
            MembershipTimer::Swim(timer) => self.call(|swim, rt| swim.handle_timer(timer, rt)),
            MembershipTimer::AnnounceSeeds => {
                self.reconnect();
                self.effects.push(MembershipEffect::Schedule {
                    after: Duration::from_millis(self.config.rejoin_period_ms),
                    timer: MembershipTimer::AnnounceSeeds,
                });
            }
            MembershipTimer::RepeatState => {
                self.publish_state();
                self.schedule_state_repeat();
            }
        }
    }

    fn call(&mut self, f: impl FnOnce(&mut Swim, &mut Collect<'_>) -> Result<(), foca::Error>) {
        let mut collect = Collect {
            effects: &mut self.effects,
            notifications: Vec::new(),
        };
        // Foca's errors are about the input (a malformed or stale packet, data
        // from ourselves): the state is unchanged, and the packet is dropped.
        let _ = f(&mut self.swim, &mut collect);
        let notifications = collect.notifications;
        for notification in notifications {
            self.notify(notification);
        }
        let fresh = self.states.with(|book| std::mem::take(&mut book.fresh));
        for StateUpdate {
            name,
            generation,
            state,
            ..
        } in fresh
        {
            self.effects
                .push(MembershipEffect::Event(MemberEvent::State {
                    name,
                    generation,
                    state,
                }));
        }
    }

    fn notify(&mut self, notification: foca::OwnedNotification<Member>) {
        use foca::OwnedNotification as N;
        let event = match notification {
            N::MemberUp(member) => {
                // A state broadcast spreads for a few rounds only; one that
                // went out before this member came (or came back) never
                // reached it. Say ours again.
                self.publish_state();
                MemberEvent::Up(member)
            }
            N::MemberDown(member) => {
                let leaving = self.states.with(|book| {
                    book.latest.get(&member.name).is_some_and(|u| {
                        u.generation == member.generation && u.state == MemberState::Leaving
                    })
                });
                if leaving {
                    MemberEvent::Left(member)
                } else {
                    MemberEvent::Down(member)
                }
            }
            N::Rejoin(me) => {
                self.connected = false;
                self.publish_state();
                self.reconnect();
                MemberEvent::Rejoined(me)
            }
            N::Active => {
                self.connected = true;
                self.joined = true;
                return;
            }
            N::Idle | N::Defunct => {
                self.connected = false;
                return;
            }
            // A member restarted at the same address (foca reports it as a
            // rename, with no Up when both were active): a new member that
            // has heard nobody's state yet.
            N::Rename(..) => {
                self.publish_state();
                return;
            }
        };
        self.effects.push(MembershipEffect::Event(event));
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn member(name: &str, port: u16, generation: u64) -> Member {
        Member {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            client_addr: None,
            generation,
            partition_count: 256,
            replication_factor: 3,
        }
    }

    #[test]
    fn presets_are_valid_and_scale_with_the_cluster() {
        for config in [
            MembershipConfig::lan(5),
            MembershipConfig::lan(1_000),
            MembershipConfig::wan(50),
        ] {
            config.validate().unwrap();
        }
        let (small, large) = (MembershipConfig::lan(5), MembershipConfig::lan(1_000));
        assert!(large.max_transmissions > small.max_transmissions);
        assert_eq!(large.max_transmissions, 21, "ceil(3 ln 1001)");
        assert!(large.detection_bound_ms() > small.detection_bound_ms());
        assert!(MembershipConfig::wan(5).probe_period_ms > small.probe_period_ms);
    }

    #[test]
    fn validation_names_the_setting_and_the_reason() {
        let base = MembershipConfig::lan(5);
        let cases = [
            (
                MembershipConfig {
                    probe_rtt_ms: 1_000,
                    ..base.clone()
                },
                "probe_rtt_ms",
                "below probe_period_ms",
            ),
            (
                MembershipConfig {
                    probe_period_ms: 0,
                    ..base.clone()
                },
                "probe_period_ms",
                "above 0",
            ),
            (
                MembershipConfig {
                    max_packet_bytes: 1_400,
                    ..base.clone()
                },
                "max_packet_bytes",
                "one QUIC datagram",
            ),
            (
                MembershipConfig {
                    gossip_fanout: 0,
                    ..base.clone()
                },
                "gossip_fanout",
                "at least 1",
            ),
        ];
        for (config, setting, reason) in cases {
            let text = config.validate().unwrap_err().to_string();
            assert!(text.contains(setting) && text.contains(reason), "{text}");
        }
    }

    #[test]
    fn a_restart_is_a_new_member_that_wins_its_address() {
        let first = member("node-1", 7000, 1);
        let renewed = first.renew().unwrap();
        assert_eq!(renewed.generation, 2);
        assert_eq!(renewed.addr(), first.addr());
        assert!(renewed.win_addr_conflict(&first));
        assert!(!first.win_addr_conflict(&renewed));
        assert_ne!(
            renewed.node_id(),
            first.node_id(),
            "stamps differ across incarnations"
        );
    }

    #[test]
    fn a_packet_from_a_member_with_other_settings_is_refused() {
        let mut ours =
            Membership::new(member("node-1", 7001, 1), MembershipConfig::lan(3), 1).unwrap();
        let mut theirs_member = member("node-2", 7002, 1);
        theirs_member.partition_count = 128;
        let mut theirs = Membership::new(theirs_member, MembershipConfig::lan(3), 2).unwrap();
        theirs.join(&[ours.me().addr]);
        let announce = theirs
            .take_effects()
            .into_iter()
            .find_map(|e| match e {
                MembershipEffect::Send { payload, .. } => Some(payload),
                _ => None,
            })
            .expect("an announce to the seed");
        ours.take_effects();
        ours.handle_packet(theirs.me().addr, &announce);
        let effects = ours.take_effects();
        let refused = effects.iter().find_map(|e| match e {
            MembershipEffect::Event(MemberEvent::Refused { name, reason, .. }) => {
                Some((name.clone(), reason.clone()))
            }
            _ => None,
        });
        let (name, reason) = refused.expect("refused");
        assert_eq!(name, "node-2");
        assert!(
            reason.contains("partition_count 128") && reason.contains("256"),
            "{reason}"
        );
        assert!(
            !effects
                .iter()
                .any(|e| matches!(e, MembershipEffect::Send { .. })),
            "no answer to a refused node"
        );
        assert_eq!(ours.members().count(), 0);
    }
}
