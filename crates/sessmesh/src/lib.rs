//! The embedded sessmesh peer.
//!
//! A peer is one tokio task that owns one core [`Node`] (its membership and
//! partition map) and drives it over a [`Transport`](sessmesh_net::Transport): it hands the node
//! gossip datagrams and expired timers, and carries out the node's effects.
//! Nothing else touches the node. Callers talk to the task through a
//! cloneable [`Handle`], with commands on a channel and answers on oneshots.
//! The same driver runs over QUIC, over the in-memory transport, and over
//! quinn on turmoil's simulated network.
#![forbid(unsafe_code)]

mod driver;

pub use driver::{Handle, spawn};
pub use sessmesh_core::{
    Level, Member, MemberEvent, MemberState, Node, NodeEvent, Outcome, Session, Write,
};
