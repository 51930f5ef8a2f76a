//! What the QUIC transport counts: refusals, drops, links and queued
//! bytes, and the traffic of each peer.

use super::*;

/// Counters of what the transport refused or dropped, and what it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Peers it holds a link for: a send queue, a connection, or redials
    /// (until the peer is forgotten).
    pub links: u64,
    /// Bytes waiting in the send queues of every link.
    pub queued_bytes: u64,
    /// Streams stopped for bad frames.
    pub bad_frames: u64,
    /// Bidirectional streams refused because a peer opened them after the
    /// `Hello` exchange (peers send one-way messages only).
    pub refused_streams: u64,
    /// Connections closed because the peer is foreign or skipped `Hello`.
    pub refused_connections: u64,
    /// TLS handshakes that failed (refused certificates among them).
    pub failed_handshakes: u64,
    /// Sends refused because the peer's queue was full.
    pub queue_full: u64,
    /// Datagrams dropped from a full backlog while connecting.
    pub datagrams_dropped: u64,
}

/// Traffic with one peer, from [`QuicTransport::peer_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerBytes {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Bytes sent to it.
    pub sent: u64,
    /// Bytes received from it.
    pub received: u64,
}

#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) bad_frames: AtomicU64,
    pub(super) refused_streams: AtomicU64,
    pub(super) refused_connections: AtomicU64,
    pub(super) failed_handshakes: AtomicU64,
    pub(super) queue_full: AtomicU64,
    pub(super) datagrams_dropped: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counters of a [`QuicTransport`], from [`QuicTransport::observer`].
#[derive(Clone, Debug)]
pub struct TransportObserver {
    pub(super) inner: Weak<Inner>,
}

impl TransportObserver {
    /// [`QuicTransport::stats`], or zeros once the transport is gone.
    pub fn stats(&self) -> TransportStats {
        self.inner.upgrade().map(|i| i.stats()).unwrap_or_default()
    }

    /// [`QuicTransport::peer_bytes`], or nothing once the transport is gone.
    pub fn peer_bytes(&self) -> Vec<PeerBytes> {
        self.inner
            .upgrade()
            .map(|i| i.peer_bytes())
            .unwrap_or_default()
    }
}

impl Inner {
    pub(super) fn stats(&self) -> TransportStats {
        let s = &self.stats;
        let (links, queued_bytes) = {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            let queued: usize = peers.values().map(|link| link.queued.queued()).sum();
            (peers.len() as u64, queued as u64)
        };
        TransportStats {
            links,
            queued_bytes,
            bad_frames: s.bad_frames.load(Ordering::Relaxed),
            refused_streams: s.refused_streams.load(Ordering::Relaxed),
            refused_connections: s.refused_connections.load(Ordering::Relaxed),
            failed_handshakes: s.failed_handshakes.load(Ordering::Relaxed),
            queue_full: s.queue_full.load(Ordering::Relaxed),
            datagrams_dropped: s.datagrams_dropped.load(Ordering::Relaxed),
        }
    }

    pub(super) fn peer_bytes(&self) -> Vec<PeerBytes> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<PeerBytes> = peers
            .iter()
            .filter_map(|(addr, link)| {
                let stats = link.current()?.stats();
                Some(PeerBytes {
                    addr: *addr,
                    sent: stats.udp_tx.bytes,
                    received: stats.udp_rx.bytes,
                })
            })
            .collect();
        all.sort_by_key(|p| p.addr);
        all
    }
}
