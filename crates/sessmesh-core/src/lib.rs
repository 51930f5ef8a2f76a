//! The sans-IO heart of sessmesh: every rule about session data, with no
//! sockets, no clock and no threads.
//!
//! # What it owns
//! - [`clock`]: the hybrid logical clock ([`Hlc`]) and the [`Stamp`] on every write.
//! - [`session`]: the session CRDT ([`Session`]), the [`Write`]s clients make,
//!   and the precedence rules (clear stamp, expiry, tombstones).
//! - [`store`]: a node's sessions grouped by partition ([`Store`]), with reads
//!   as of a given time, merges, sweeping, and anti-entropy digests kept current.
//! - [`partition`]: the stable key hash and rendezvous replica sets ([`Partitioner`]).
//! - [`digest`]: how replicas find the keys they disagree on.
//! - [`wire`]: the versioned [`Message`] enum and its framing ([`Codec`]).
//! - [`membership`]: SWIM membership through foca, as effects ([`Membership`]).
//! - [`node`]: one node's state machines together ([`Node`]), as the runtime drives them.
//! - [`replication`]: consistency levels, requests in flight, hints.
//! - [`consensus`]: linearizable operations on one key ([`Cas`]), decided by
//!   Paxos among the key's replicas.
//!
//! # How to drive it
//! The caller owns the I/O. It passes the wall-clock time in as `now_ms`
//! (milliseconds since the Unix epoch) to every call that needs one, stamps
//! local writes with its [`Hlc`], and moves [`Message`]s between peers.
//!
//! ```
//! use bytes::Bytes;
//! use sessmesh_core::{Config, Hlc, NodeId, Store, Write};
//!
//! let config = Config::default();
//! let (mut a, mut b) = (Store::new(&config), Store::new(&config));
//! let (clock_a, clock_b) = (Hlc::new(NodeId(1), 500), Hlc::new(NodeId(2), 500));
//! let now_ms = 1_700_000_000_000;
//!
//! // Two replicas update different fields of one session at the same time...
//! let cart = Write::PutField { name: Bytes::from("cart"), value: Bytes::from("3 items") };
//! let theme = Write::PutField { name: Bytes::from("theme"), value: Bytes::from("dark") };
//! a.apply(b"session:42", &cart, clock_a.stamp(now_ms), now_ms)?;
//! b.apply(b"session:42", &theme, clock_b.stamp(now_ms), now_ms)?;
//!
//! // ...and exchange their states: both updates survive, on both replicas.
//! let from_a = a.session(b"session:42").expect("stored");
//! let from_b = b.session(b"session:42").expect("stored");
//! a.merge_remote(b"session:42", from_b, now_ms)?;
//! b.merge_remote(b"session:42", from_a, now_ms)?;
//! for store in [&a, &b] {
//!     store.read(b"session:42", now_ms, |session| {
//!         assert_eq!(session.field(b"cart"), Some(&b"3 items"[..]));
//!         assert_eq!(session.field(b"theme"), Some(&b"dark"[..]));
//!     }).expect("visible");
//! }
//! # Ok::<(), sessmesh_core::Error>(())
//! ```
#![forbid(unsafe_code)]

pub mod clock;
mod config;
pub mod consensus;
pub mod digest;
mod error;
pub mod membership;
pub mod memory;
pub mod node;
mod packed;
pub mod partition;
pub mod peer_clocks;
pub mod replication;
pub mod session;
pub mod store;
#[cfg(test)]
mod testing;
pub mod wire;

pub use clock::{Hlc, HlcTime, NodeId, Stamp};
pub use config::Config;
pub use consensus::{
    AcceptorStanding, Ballot, Cas, CasError, Computation, ComputeFn, Condition, GroupCas,
    GroupComputation, GroupComputeFn, MAX_GROUP_KEYS, Proposal, Standings, instance_of, view_of,
};
pub use digest::{KeyDigest, PartitionDigest};
pub use error::Error;
pub use membership::{
    Member, MemberEvent, MemberState, Membership, MembershipConfig, MembershipEffect,
    MembershipTimer,
};
pub use memory::{EvictionPolicy, MemoryReport, parse_bytes};
pub use node::{Effect, Node, NodeEvent, NodeStats, Timer};
pub use partition::{PartitionId, Partitioner, key_hash};
pub use replication::{CallId, Decision, GroupDecision, Hint, Hints, Level, Outcome};
pub use session::{Expiry, Session, Write};
pub use store::{
    Candidate, ChangeKind, Entry, KeyChange, KeyRange, MAX_KEY_LEN, MemoryUse, NotReplicated,
    SessionData, SessionRef, Store, StoreReader, SweepStats,
};
pub use wire::{ClusterId, Codec, DecodeError, Message, PROTOCOL_VERSION};
