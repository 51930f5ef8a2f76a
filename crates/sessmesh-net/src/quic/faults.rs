//! Link faults for tests and demonstrations: a UDP socket that drops
//! datagrams to or from blocked peers. Compiled only with the `test-support`
//! feature, so a production build carries no fault injection.

use std::collections::HashSet;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Link faults for tests and demonstrations: datagrams to or from blocked
/// addresses are dropped at this node's socket, so QUIC sees a cut link and
/// recovers by itself when it heals.
#[derive(Debug, Default)]
pub struct LinkFaults {
    pub(super) active: AtomicBool,
    pub(super) blocked: RwLock<Blocked>,
}

#[derive(Debug, Default)]
pub(super) struct Blocked {
    pub(super) outgoing: HashSet<SocketAddr>,
    pub(super) incoming: HashSet<SocketAddr>,
}

impl LinkFaults {
    /// Drops everything to and from `peer`.
    pub fn block(&self, peer: SocketAddr) {
        self.update(|b| {
            b.outgoing.insert(peer);
            b.incoming.insert(peer);
        });
    }

    /// Drops everything this node sends to `peer`; what it sends still arrives.
    pub fn block_outgoing(&self, peer: SocketAddr) {
        self.update(|b| {
            b.outgoing.insert(peer);
        });
    }

    /// Drops everything `peer` sends to this node.
    pub fn block_incoming(&self, peer: SocketAddr) {
        self.update(|b| {
            b.incoming.insert(peer);
        });
    }

    /// Restores the link to `peer`, both ways.
    pub fn unblock(&self, peer: SocketAddr) {
        self.update(|b| {
            b.outgoing.remove(&peer);
            b.incoming.remove(&peer);
        });
    }

    /// Restores every link.
    pub fn unblock_all(&self) {
        self.update(|b| *b = Blocked::default());
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut Blocked)) {
        let mut blocked = self.blocked.write().unwrap_or_else(|e| e.into_inner());
        f(&mut blocked);
        self.active.store(
            !blocked.outgoing.is_empty() || !blocked.incoming.is_empty(),
            Ordering::Release,
        );
    }

    pub(super) fn drops(&self, peer: SocketAddr, outgoing: bool) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let blocked = self.blocked.read().unwrap_or_else(|e| e.into_inner());
        if outgoing {
            blocked.outgoing.contains(&peer)
        } else {
            blocked.incoming.contains(&peer)
        }
    }
}

/// A UDP socket that applies [`LinkFaults`] to what passes through it.
#[derive(Debug)]
pub(crate) struct FaultySocket {
    pub(crate) inner: Arc<dyn AsyncUdpSocket>,
    pub(crate) faults: Arc<LinkFaults>,
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.faults.drops(transmit.destination, true) {
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            // Keep the datagrams from unblocked sources, in order.
            let mut kept = 0;
            for i in 0..n {
                if self.faults.drops(meta[i].addr, false) {
                    continue;
                }
                if kept != i {
                    meta[kept] = meta[i];
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..meta[i].len].copy_from_slice(&tail[0][..meta[i].len]);
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
