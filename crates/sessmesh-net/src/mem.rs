//! The in-memory twin of [`crate::QuicTransport`], with fault controls.
//!
//! Nodes joined to one [`MemNetwork`] exchange messages through channels,
//! with the same observable behaviour as QUIC, so the runtime and its tests
//! cannot tell them apart (the conformance suite checks this):
//!
//! - datagrams can be lost or duplicated ([`MemNetwork::set_loss_percent`],
//!   [`MemNetwork::set_duplicate_percent`]) and are dropped on a cut link;
//! - one-way messages are never lost or duplicated by those faults (QUIC
//!   retransmits and deduplicates), but wait while a link is cut: they queue
//!   within the sender's byte limit and arrive, in order, once it heals;
//! - every delivery can be delayed, with jitter ([`MemNetwork::set_delay`]).
//!
//! Every random choice comes from one generator seeded at construction, so a
//! run in paused tokio time repeats exactly.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sessmesh_core::{ClusterId, Codec, Message};
use tokio::sync::{Notify, mpsc};

use crate::SendError;
use crate::transport::{Incoming, Peer, QueueBudget, Transport, TransportConfig};

/// The largest datagram a path of the in-memory network carries, like a QUIC
/// connection before path MTU discovery raises its limit.
pub const DATAGRAM_LIMIT: usize = 1_200;

/// A network of in-memory nodes and the faults between them.
#[derive(Clone, Debug)]
pub struct MemNetwork {
    hub: Arc<Hub>,
}

#[derive(Debug)]
struct Hub {
    state: Mutex<HubState>,
    /// Signalled whenever a node joins or leaves or a link changes.
    changed: Notify,
}

#[derive(Debug)]
struct HubState {
    /// Each node's inbox.
    nodes: HashMap<SocketAddr, mpsc::Sender<Incoming>>,
    /// `(from, to)` pairs whose traffic is dropped.
    blocked: HashSet<(SocketAddr, SocketAddr)>,
    loss_percent: u32,
    duplicate_percent: u32,
    delay: Duration,
    jitter: Duration,
    rng: SmallRng,
    next_host: u32,
}

impl MemNetwork {
    /// An empty network whose random choices all come from `seed`.
    pub fn new(seed: u64) -> Self {
        MemNetwork {
            hub: Arc::new(Hub {
                state: Mutex::new(HubState {
                    nodes: HashMap::new(),
                    blocked: HashSet::new(),
                    loss_percent: 0,
                    duplicate_percent: 0,
                    delay: Duration::ZERO,
                    jitter: Duration::ZERO,
                    rng: SmallRng::seed_from_u64(seed),
                    next_host: 1,
                }),
                changed: Notify::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.hub.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut HubState)) {
        f(&mut self.state());
        self.hub.changed.notify_waiters();
    }

    /// Adds a node named `name` with the next free address.
    pub fn join(
        &self,
        name: &str,
        cluster: ClusterId,
        config: TransportConfig,
    ) -> (MemTransport, mpsc::Receiver<Incoming>) {
        let (incoming, rx) = mpsc::channel(config.incoming_capacity);
        let mut addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let name: Arc<str> = name.into();
        self.update(|s| {
            let host = s.next_host;
            s.next_host += 1;
            addr = SocketAddr::from((Ipv4Addr::from(0x7f00_0000 | host), 7946));
            s.nodes.insert(addr, incoming);
        });
        let transport = MemTransport {
            inner: Arc::new(MemInner {
                net: self.clone(),
                me: Peer { addr, name },
                codec: Codec::new(cluster, config.max_frame_bytes),
                config,
                links: Mutex::new(HashMap::new()),
            }),
        };
        (transport, rx)
    }

    /// Removes a node, as if it crashed: what is sent to it waits in queues or is lost.
    pub fn crash(&self, addr: SocketAddr) {
        self.update(|s| {
            s.nodes.remove(&addr);
        });
    }

    /// Cuts the link between `a` and `b`, both ways.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        self.update(|s| {
            s.blocked.insert((a, b));
            s.blocked.insert((b, a));
        });
    }

    /// Cuts only what `from` sends to `to`.
    pub fn cut_one_way(&self, from: SocketAddr, to: SocketAddr) {
        self.update(|s| {
            s.blocked.insert((from, to));
        });
    }

    /// Restores the link between `a` and `b`, both ways.
    pub fn heal(&self, a: SocketAddr, b: SocketAddr) {
        self.update(|s| {
            s.blocked.remove(&(a, b));
            s.blocked.remove(&(b, a));
        });
    }

    /// Restores every link.
    pub fn heal_all(&self) {
        self.update(|s| s.blocked.clear());
    }

    /// Drops this percentage of datagrams (0 to 100).
    pub fn set_loss_percent(&self, percent: u32) {
        self.update(|s| s.loss_percent = percent.min(100));
    }

    /// Delivers this percentage of datagrams twice (0 to 100).
    pub fn set_duplicate_percent(&self, percent: u32) {
        self.update(|s| s.duplicate_percent = percent.min(100));
    }

    /// Delays every delivery by `base` plus up to `jitter`, chosen at random.
    pub fn set_delay(&self, base: Duration, jitter: Duration) {
        self.update(|s| {
            s.delay = base;
            s.jitter = jitter;
        });
    }

    fn is_open(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let s = self.state();
        s.nodes.contains_key(&to) && !s.blocked.contains(&(from, to))
    }

    /// Waits until `from` can reach `to`.
    async fn wait_open(&self, from: SocketAddr, to: SocketAddr) {
        loop {
            let changed = self.hub.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_open(from, to) {
                return;
            }
            changed.await;
        }
    }

    fn sample_delay(&self) -> Duration {
        let mut s = self.state();
        let jitter = if s.jitter.is_zero() {
            Duration::ZERO
        } else {
            s.jitter.mul_f64(s.rng.random_range(0.0..1.0))
        };
        s.delay + jitter
    }

    fn inbox(&self, to: SocketAddr) -> Option<mpsc::Sender<Incoming>> {
        self.state().nodes.get(&to).cloned()
    }

    /// How many copies of a datagram arrive: 0 (lost), 1, or 2 (duplicated).
    fn datagram_copies(&self, from: SocketAddr, to: SocketAddr) -> usize {
        let mut s = self.state();
        if !s.nodes.contains_key(&to) || s.blocked.contains(&(from, to)) {
            return 0;
        }
        let (loss, duplicate) = (s.loss_percent, s.duplicate_percent);
        if s.rng.random_range(0..100) < loss {
            0
        } else if s.rng.random_range(0..100) < duplicate {
            2
        } else {
            1
        }
    }
}

/// A node's transport on a [`MemNetwork`].
#[derive(Clone, Debug)]
pub struct MemTransport {
    inner: Arc<MemInner>,
}

#[derive(Debug)]
struct MemInner {
    net: MemNetwork,
    me: Peer,
    codec: Codec,
    config: TransportConfig,
    links: Mutex<HashMap<SocketAddr, Arc<MemLink>>>,
}

#[derive(Debug)]
struct MemLink {
    /// Bytes queued on this link; the link task releases what it delivers.
    queued: Arc<QueueBudget>,
    queue: mpsc::UnboundedSender<(Message, usize)>,
    task: tokio::task::AbortHandle,
}

impl MemTransport {
    /// The network this node is on.
    pub fn network(&self) -> &MemNetwork {
        &self.inner.net
    }

    fn link(&self, to: SocketAddr) -> Arc<MemLink> {
        let mut links = self.inner.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .entry(to)
            .or_insert_with(|| {
                let (queue, rx) = mpsc::unbounded_channel();
                let queued = Arc::new(QueueBudget::default());
                let task = tokio::spawn(run_link(
                    self.inner.net.clone(),
                    self.inner.me.clone(),
                    to,
                    rx,
                    queued.clone(),
                ));
                Arc::new(MemLink {
                    queued,
                    queue,
                    task: task.abort_handle(),
                })
            })
            .clone()
    }
}

/// Delivers one link's one-way messages in order, waiting out cuts.
async fn run_link(
    net: MemNetwork,
    from: Peer,
    to: SocketAddr,
    mut queue: mpsc::UnboundedReceiver<(Message, usize)>,
    queued: Arc<QueueBudget>,
) {
    while let Some((message, len)) = queue.recv().await {
        net.wait_open(from.addr, to).await;
        tokio::time::sleep(net.sample_delay()).await;
        if let Some(inbox) = net.inbox(to) {
            let _ = inbox
                .send(Incoming::Message {
                    from: from.clone(),
                    message,
                })
                .await;
        }
        queued.release(len);
    }
}

impl Transport for MemTransport {
    fn local_addr(&self) -> SocketAddr {
        self.inner.me.addr
    }

    fn send_datagram(&self, to: SocketAddr, payload: Bytes) -> Result<(), SendError> {
        let mut envelope = Vec::new();
        self.inner
            .codec
            .encode(&Message::Gossip(payload.clone()), &mut envelope)?;
        if envelope.len() > DATAGRAM_LIMIT {
            return Err(SendError::DatagramTooLarge {
                peer: to,
                len: envelope.len(),
                limit: DATAGRAM_LIMIT,
            });
        }
        let net = &self.inner.net;
        for _ in 0..net.datagram_copies(self.inner.me.addr, to) {
            let (net, from, payload) = (net.clone(), self.inner.me.clone(), payload.clone());
            tokio::spawn(async move {
                tokio::time::sleep(net.sample_delay()).await;
                if let Some(inbox) = net.inbox(to) {
                    let _ = inbox.try_send(Incoming::Datagram { from, payload });
                }
            });
        }
        Ok(())
    }

    fn max_datagram_payload(&self, to: SocketAddr) -> Option<usize> {
        self.inner.net.inbox(to)?;
        self.inner.codec.max_gossip_payload(DATAGRAM_LIMIT)
    }

    fn send(&self, to: SocketAddr, message: &Message) -> Result<(), SendError> {
        let mut frame = Vec::new();
        self.inner.codec.encode_frame(message, &mut frame)?;
        let link = self.link(to);
        link.queued
            .admit(to, frame.len(), self.inner.config.max_queue_bytes)?;
        link.queue
            .send((message.clone(), frame.len()))
            .map_err(|_| SendError::Closed)
    }

    fn forget(&self, peer: SocketAddr) {
        if let Some(link) = self
            .inner
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer)
        {
            link.task.abort();
        }
    }

    fn queued_bytes(&self, peer: SocketAddr) -> usize {
        let links = self.inner.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(&peer).map_or(0, |link| link.queued.queued())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(
        net: &MemNetwork,
    ) -> (
        (MemTransport, mpsc::Receiver<Incoming>),
        (MemTransport, mpsc::Receiver<Incoming>),
    ) {
        let cluster = ClusterId::from_name("mem");
        (
            net.join("a", cluster, TransportConfig::default()),
            net.join("b", cluster, TransportConfig::default()),
        )
    }

    /// Sends `n` datagrams and counts what arrives once every delivery is due.
    async fn datagrams_through(net: &MemNetwork, n: usize) -> usize {
        let ((a, _), (b, mut b_rx)) = pair(net);
        for i in 0..n {
            a.send_datagram(b.local_addr(), Bytes::from(i.to_string()))
                .unwrap();
        }
        // In paused time, sleeping past the longest delay runs every delivery.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut arrived = 0;
        while b_rx.try_recv().is_ok() {
            arrived += 1;
        }
        arrived
    }

    #[tokio::test(start_paused = true)]
    async fn loss_drops_about_the_configured_share_of_datagrams() {
        let net = MemNetwork::new(1);
        net.set_loss_percent(30);
        let arrived = datagrams_through(&net, 1_000).await;
        assert!(
            (620..=780).contains(&arrived),
            "{arrived} of 1,000 arrived at 30% loss"
        );
        // Streams are not lossy: QUIC retransmits.
        let ((a, _), (b, mut b_rx)) = pair(&net);
        for request in 0..100 {
            a.send(b.local_addr(), &Message::WriteAck { request })
                .unwrap();
        }
        for request in 0..100 {
            match b_rx.recv().await.unwrap() {
                Incoming::Message { message, .. } => {
                    assert_eq!(message, Message::WriteAck { request })
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn duplication_delivers_datagrams_twice() {
        let net = MemNetwork::new(2);
        net.set_duplicate_percent(100);
        assert_eq!(datagrams_through(&net, 50).await, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_seed_drops_the_same_datagrams() {
        let run = |seed| async move {
            let net = MemNetwork::new(seed);
            net.set_loss_percent(50);
            let ((a, _), (b, mut b_rx)) = pair(&net);
            for i in 0..200u32 {
                a.send_datagram(b.local_addr(), Bytes::from(i.to_le_bytes().to_vec()))
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut got = Vec::new();
            while let Ok(Incoming::Datagram { payload, .. }) = b_rx.try_recv() {
                got.push(payload);
            }
            got.sort();
            got
        };
        assert_eq!(run(9).await, run(9).await);
        assert_ne!(run(9).await, run(10).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_way_cut_stops_one_direction_only() {
        let net = MemNetwork::new(3);
        let ((a, mut a_rx), (b, mut b_rx)) = pair(&net);
        net.cut_one_way(a.local_addr(), b.local_addr());
        b.send(a.local_addr(), &Message::WriteAck { request: 1 })
            .unwrap();
        assert!(matches!(a_rx.recv().await, Some(Incoming::Message { .. })));
        a.send(b.local_addr(), &Message::WriteAck { request: 2 })
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(b_rx.try_recv().is_err(), "nothing crosses the cut");
        net.heal_all();
        assert!(matches!(
            b_rx.recv().await,
            Some(Incoming::Message {
                message: Message::WriteAck { request: 2 },
                ..
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_every_delivery_back() {
        let net = MemNetwork::new(4);
        net.set_delay(Duration::from_millis(40), Duration::from_millis(20));
        let ((a, _), (b, mut b_rx)) = pair(&net);
        let start = tokio::time::Instant::now();
        a.send(b.local_addr(), &Message::WriteAck { request: 1 })
            .unwrap();
        b_rx.recv().await.unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(40) && took <= Duration::from_millis(60),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_to_a_crashed_node_waits_in_its_queue() {
        let net = MemNetwork::new(5);
        let ((a, _), (b, _b_rx)) = pair(&net);
        net.crash(b.local_addr());
        let message = Message::WriteAck { request: 1 };
        a.send(b.local_addr(), &message).unwrap();
        // In paused time, this runs every delivery that could happen: the
        // message is not dropped, it waits, counted against the queue's limit.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut frame = Vec::new();
        a.inner.codec.encode_frame(&message, &mut frame).unwrap();
        assert_eq!(a.queued_bytes(b.local_addr()), frame.len());
        a.forget(b.local_addr());
        assert_eq!(a.queued_bytes(b.local_addr()), 0);
    }
}
