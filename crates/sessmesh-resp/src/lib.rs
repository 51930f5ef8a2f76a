//! The Redis protocol for a sessmesh peer, so that any Redis client can use
//! a sessmesh cluster.
//!
//! - [`request`]: requests framed in one pass (RESP arrays, and inline
//!   commands), with size limits checked from the headers before the bytes
//!   are buffered; replies are encoded by `redis-protocol`.
//! - [`commands`]: the command set. A string is a session with one value; a
//!   hash is a session's fields, so `HSET`s of different fields on different
//!   nodes merge.
//! - [`reply`]: replies, encoded in RESP2 or, after `HELLO 3`, RESP3.
//! - [`connection`]: one client connection, pipelining included.
#![forbid(unsafe_code)]

pub mod commands;
pub mod connection;
mod glob;
pub mod reply;
pub mod request;

pub use commands::{Client, Flow, Handler, MONITOR_BACKLOG, Settings};
pub use connection::{NoObserver, Observer, serve, serve_client};
pub use reply::{Protocol, Reply};
pub use request::{Limits, Parsed};
