//! The transport the runtime drives, and what it delivers.
//!
//! A transport moves [`Message`]s between peers in two ways:
//!
//! | call | delivery | used for |
//! | --- | --- | --- |
//! | [`Transport::send_datagram`] | unreliable, unordered, no queue | membership gossip |
//! | [`Transport::send`] | reliable and ordered per peer while the connection lives; queued, bounded | everything else: writes, reads and repair, hints, handoff, anti-entropy, clock probes, and their answers |
//!
//! There is no request/response call: a request and its answer are two
//! one-way messages, matched by the request id they carry, and the core
//! keeps the deadline. So the same state machine runs over the simulator,
//! which delivers only one-way messages.
//!
//! What arrives comes out of the [`Incoming`] receiver that the transport's
//! constructor returns, so the runtime task selects on it with its other inputs.
//! Peers are named by the address their node listens on: each node uses one
//! endpoint for dialing and accepting, so the address a connection comes from
//! is the address to dial back.
//!
//! Two implementations pass one conformance suite (`tests/conformance.rs`):
//! [`crate::quic::QuicTransport`] and the in-memory [`crate::mem::MemTransport`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sessmesh_core::Message;

use crate::SendError;

/// A peer as the transport knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The address its node listens on.
    pub addr: SocketAddr,
    /// Its node name, from its certificate (the in-memory transport's own naming).
    pub name: Arc<str>,
}

/// Something a peer sent.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "messages are most of what arrives; boxing them would cost each an allocation"
)]
pub enum Incoming {
    /// The payload of a gossip datagram.
    Datagram {
        /// The sender.
        from: Peer,
        /// What it gossiped.
        payload: Bytes,
    },
    /// A one-way message.
    Message {
        /// The sender.
        from: Peer,
        /// The message.
        message: Message,
    },
}

/// Moves messages between peers. Cloning gives another handle to the same transport.
pub trait Transport: Clone + Send + Sync + 'static {
    /// The address this node listens on, which peers dial.
    fn local_addr(&self) -> SocketAddr;

    /// Sends a gossip datagram. It is dropped silently when the path loses
    /// it; when no connection to the peer exists yet, one is started and the
    /// datagram waits in a small bounded backlog.
    ///
    /// # Errors
    /// [`SendError::DatagramTooLarge`] when it is over the path's current
    /// limit ([`Transport::max_datagram_payload`]), [`SendError::Closed`].
    fn send_datagram(&self, to: SocketAddr, payload: Bytes) -> Result<(), SendError>;

    /// The largest datagram payload the path to `to` carries now, once
    /// connected (QUIC discovers the path MTU, so it can grow).
    fn max_datagram_payload(&self, to: SocketAddr) -> Option<usize>;

    /// Queues a one-way message. Messages to one peer arrive in order, at most
    /// once per connection; a message queued while the peer is unreachable
    /// waits (within the queue's byte limit) and goes when a connection is made.
    ///
    /// # Errors
    /// [`SendError::QueueFull`] when the peer's queue is at its byte limit,
    /// [`SendError::Encode`] for a message over the frame limit, [`SendError::Closed`].
    fn send(&self, to: SocketAddr, message: &Message) -> Result<(), SendError>;

    /// Queues one-way messages to one peer, in order, as [`send`](Self::send)
    /// would one after another. A transport may queue them together: then
    /// all or none of them fit the queue's byte limit.
    ///
    /// # Errors
    /// As [`send`](Self::send), for the first message refused; the others
    /// are queued.
    fn send_all(&self, to: SocketAddr, messages: &[Message]) -> Result<(), SendError> {
        let mut refused = None;
        for message in messages {
            if let Err(e) = self.send(to, message) {
                refused.get_or_insert(e);
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Drops the peer's queue and connection, as when it left the cluster.
    fn forget(&self, peer: SocketAddr);

    /// The peer is back after being unreachable (say, a partition healed):
    /// replace a connection that lived through the outage, whose
    /// retransmission timers have backed off, and dial at once instead of
    /// waiting out a redial backoff. What was queued for the peer is sent on
    /// the new connection. The default does nothing, for transports without
    /// connections.
    fn retry_now(&self, peer: SocketAddr) {
        let _ = peer;
    }

    /// Bytes waiting in the send queue to `peer`.
    fn queued_bytes(&self, peer: SocketAddr) -> usize;
}

/// Settings shared by both transports.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest encoded message accepted from or sent to a peer, in bytes.
    pub max_frame_bytes: usize,
    /// Bytes that may wait in one peer's send queue; past it `send` fails with
    /// [`SendError::QueueFull`], so a slow or vanished peer costs bounded memory.
    pub max_queue_bytes: usize,
    /// How long a dial may take before the attempt counts as failed.
    pub connect_timeout: Duration,
    /// First wait before redialing an unreachable peer; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between dial attempts.
    pub max_backoff: Duration,
    /// A connection with no traffic (keep-alives included) for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval, well under `idle_timeout`, so idle peers stay
    /// connected and a dead one is noticed.
    pub keep_alive: Duration,
    /// Capacity of the [`Incoming`] channel; when full, readers stop reading
    /// and QUIC flow control slows the senders.
    pub incoming_capacity: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_bytes: 16 << 20,
            max_queue_bytes: 16 << 20,
            connect_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            incoming_capacity: 4096,
        }
    }
}

/// Datagrams kept per peer while its connection is being made.
pub(crate) const DATAGRAM_BACKLOG: usize = 16;

/// The bytes waiting in one peer's send queue, held under the configured limit.
#[derive(Debug, Default)]
pub(crate) struct QueueBudget(AtomicUsize);

impl QueueBudget {
    /// Counts `len` more bytes, or refuses them if that would pass `limit`.
    pub(crate) fn admit(
        &self,
        peer: SocketAddr,
        len: usize,
        limit: usize,
    ) -> Result<(), SendError> {
        let queued = self.0.fetch_add(len, Ordering::AcqRel);
        if queued + len > limit {
            self.0.fetch_sub(len, Ordering::AcqRel);
            return Err(SendError::QueueFull {
                peer,
                queued,
                limit,
            });
        }
        Ok(())
    }

    /// Counts `len` bytes as sent.
    pub(crate) fn release(&self, len: usize) {
        self.0.fetch_sub(len, Ordering::AcqRel);
    }

    /// The bytes waiting now.
    pub(crate) fn queued(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}
