//! One node's state machines, as its runtime drives them.
//!
//! A [`Node`] owns the node's [`Membership`] and [`Partitioner`]. The runtime
//! passes in gossip packets and expired [`Timer`]s, and carries out the
//! [`Effect`]s the node hands back: packets to send, timers to set, events to
//! report. Membership changes recompute the replica sets at once. A member
//! counts as a replica while it is up and not leaving, so a leaving member's
//! partitions move before it goes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::membership::{
    Member, MemberEvent, MemberState, Membership, MembershipConfig, MembershipEffect,
    MembershipTimer,
};
use crate::partition::{PartitionId, Partitioner};
use crate::{Config, Error};

/// A timer a node asked for; hand it back through [`Node::handle_timer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timer {
    /// A membership timer.
    Membership(MembershipTimer),
}

/// Something the node reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A membership change.
    Member(MemberEvent),
    /// These partitions' replica sets changed.
    ReplicasChanged(Vec<PartitionId>),
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
    /// Hand `timer` back after `after`.
    Schedule {
        /// How long from now.
        after: Duration,
        /// The timer.
        timer: Timer,
    },
    /// Report an event.
    Event(NodeEvent),
}

/// One node. See the [module docs](self).
#[derive(Debug)]
pub struct Node {
    membership: Membership,
    partitioner: Partitioner<String>,
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
        let mut node = Node {
            membership: Membership::new(me, membership, seed)?,
            partitioner: Partitioner::new(config.partition_count, config.replication_factor),
            effects: Vec::new(),
        };
        node.rebalance();
        node.collect();
        Ok(node)
    }

    /// This node's identity.
    pub fn me(&self) -> &Member {
        self.membership.me()
    }

    /// Its membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
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
        self.collect();
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
    pub fn handle_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Membership(timer) => self.membership.handle_timer(timer),
        }
        self.collect();
    }

    /// Takes the effects produced since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    fn collect(&mut self) {
        let mut membership_changed = false;
        for effect in self.membership.take_effects() {
            self.effects.push(match effect {
                MembershipEffect::Send { to, payload } => Effect::Gossip { to, payload },
                MembershipEffect::Schedule { after, timer } => Effect::Schedule {
                    after,
                    timer: Timer::Membership(timer),
                },
                MembershipEffect::Event(event) => {
                    membership_changed |= !matches!(event, MemberEvent::Refused { .. });
                    Effect::Event(NodeEvent::Member(event))
                }
            });
        }
        if membership_changed {
            self.rebalance();
        }
    }

    /// Recomputes the replica sets from the members that are up and not leaving.
    fn rebalance(&mut self) {
        let me = self.membership.me();
        let mut owners: Vec<String> = self
            .membership
            .members()
            .filter(|m| self.membership.state_of(&m.name) != Some(MemberState::Leaving))
            .map(|m| m.name.clone())
            .collect();
        if self.membership.state() != MemberState::Leaving {
            owners.push(me.name.clone());
        }
        let changed = self.partitioner.set_members(owners);
        if !changed.is_empty() {
            self.effects
                .push(Effect::Event(NodeEvent::ReplicasChanged(changed)));
        }
    }
}
