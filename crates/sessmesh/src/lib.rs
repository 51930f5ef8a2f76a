//! The embedded sessmesh peer.
//!
//! Each replica of an application embeds a peer; the peers find each other by
//! gossip over QUIC (mutual TLS), split the sessions into partitions, keep
//! `replication_factor` copies of each, and merge concurrent updates field by
//! field. Any peer serves any key.
//!
//! ```
//! use std::time::Duration;
//! use sessmesh::{Expiry, Node};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), sessmesh::Error> {
//! let node = Node::builder()
//!     .listen("127.0.0.1:0".parse().expect("an address"))
//!     // Production peers pass .tls_files(ca, cert, key) and .seeds([...]).
//!     .development()
//!     .start()
//!     .await?;
//!
//! node.put("session:42", [("user", "ada")], Expiry::idle_for(Duration::from_secs(1800)))
//!     .await?;
//! node.put_field("session:42", "cart", "3 books").await?;
//! let session = node.get("session:42").await?.expect("just written");
//! assert_eq!(session.field(b"user"), Some(&b"ada"[..]));
//! assert_eq!(session.field(b"cart"), Some(&b"3 books"[..]));
//!
//! node.delete("session:42").await?; // logout: it never comes back
//! assert!(node.get("session:42").await?.is_none());
//! node.shutdown().await
//! # }
//! ```
//!
//! Inside, a peer is one tokio task that owns one core
//! [`sessmesh_core::Node`] (membership, partition map, store, replication)
//! and drives it over a [`Transport`](sessmesh_net::Transport): it hands the
//! node gossip, messages and expired timers, and carries out the node's
//! effects. Calls reach the task through the cloneable [`Node`] handle, on a
//! channel; only local reads at [`Level::One`] skip it and read the store's
//! concurrent tables directly. The same driver runs over QUIC, over the
//! in-memory transport, and over quinn on turmoil's simulated network
//! ([`spawn`]).
#![forbid(unsafe_code)]

mod builder;
mod driver;
mod error;
mod local_writes;
mod memory_probe;
mod node;
mod status;
mod timers;
mod wall_clock;

#[doc(hidden)]
pub use wall_clock::simulate_on_this_thread;

pub use builder::{DEFAULT_PORT, NodeBuilder};
pub use error::Error;
pub use memory_probe::MemoryProbe;
pub use node::{At, Lease, Node, Submitted, spawn};
pub use sessmesh_core::{
    Cas, CasError, ChangeKind, Computation, Condition, Decision, EvictionPolicy, Expiry, GroupCas,
    GroupComputation, GroupDecision, KeyChange, KeyRange, Level, MAX_GROUP_KEYS, Member,
    MemberEvent, MemberState, MemoryReport, NodeEvent, Outcome, Session, SessionData, Write,
    parse_bytes,
};
pub use status::{MemberStatus, Status};
