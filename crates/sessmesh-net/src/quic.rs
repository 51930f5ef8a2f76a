//! The QUIC transport: one quinn endpoint per node that both dials and
//! accepts, mutual TLS against the cluster CA, and one cached connection per peer.
//!
//! - **Connections.** A dial is trusted only after the first application-level
//!   exchange (`Hello`, answered by `Welcome`): under TLS 1.3 the acceptor
//!   checks the dialer's certificate after the dialer considers the handshake
//!   done. Concurrent users of a peer share one dial; a failed dial waits an
//!   exponential backoff before the next. A connection a peer dialed to us is
//!   used for our sends to it as well.
//! - **One-way messages** are encoded when queued, counted against the peer's
//!   byte limit, and written by the peer's sender task onto one long-lived
//!   unidirectional stream: whatever is queued when a write starts goes in that
//!   write, so small messages batch under load without waiting.
//! - **Requests** each use a bidirectional stream: one frame each way.
//! - **Datagrams** carry gossip, enveloped like every message; their size
//!   limit is the connection's current one.
//! - **Bad input** (junk, a truncated frame, a length over the limit) stops
//!   that stream with [`close_code::BAD_FRAME`]; a message from another
//!   cluster or protocol version closes the connection with
//!   [`close_code::FOREIGN`]. Each is logged with its reason and counted in
//!   [`TransportStats`]; other streams and peers carry on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Connection, Endpoint, EndpointConfig, Runtime, UdpPoller, VarInt};
use rustls_pki_types::CertificateDer;
use sessmesh_core::{ClusterId, Codec, DecodeError, Message};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::certs::{CaCertificate, NodeIdentity, node_name_of};
use crate::transport::{
    DATAGRAM_BACKLOG, Incoming, Peer, QueueBudget, Responder, ResponderKind, Transport,
    TransportConfig, timed_out,
};
use crate::{Error, RequestError, SendError, tls};

/// Application error codes on closed streams and connections.
pub mod close_code {
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// A stream carried bytes that are not a valid frame.
    pub const BAD_FRAME: u32 = 1;
    /// The peer belongs to another cluster or speaks another protocol version.
    pub const FOREIGN: u32 = 2;
    /// The connection did not open with a valid `Hello`.
    pub const HANDSHAKE: u32 = 3;
    /// The peer was forgotten (it left the cluster).
    pub const FORGOTTEN: u32 = 4;
    /// The connection lived through an outage and is being replaced.
    pub const STALE: u32 = 5;
}

/// Size of the UDP socket's kernel buffers, as quinn's own benchmarks set them.
pub const SOCKET_BUFFER_BYTES: usize = 2 << 20;
/// Largest batch of queued messages written at once.
const BATCH_BYTES: usize = 256 << 10;
/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 256 << 10;

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
struct Stats {
    bad_frames: AtomicU64,
    refused_connections: AtomicU64,
    failed_handshakes: AtomicU64,
    queue_full: AtomicU64,
    datagrams_dropped: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Link faults for tests and demonstrations: datagrams to or from blocked
/// addresses are dropped at this node's socket, so QUIC sees a cut link and
/// recovers by itself when it heals.
#[derive(Debug, Default)]
pub struct LinkFaults {
    active: AtomicBool,
    blocked: RwLock<Blocked>,
}

#[derive(Debug, Default)]
struct Blocked {
    outgoing: HashSet<SocketAddr>,
    incoming: HashSet<SocketAddr>,
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

    fn update(&self, f: impl FnOnce(&mut Blocked)) {
        let mut blocked = self.blocked.write().unwrap_or_else(|e| e.into_inner());
        f(&mut blocked);
        self.active.store(
            !blocked.outgoing.is_empty() || !blocked.incoming.is_empty(),
            Ordering::Release,
        );
    }

    fn drops(&self, peer: SocketAddr, outgoing: bool) -> bool {
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

/// The QUIC [`Transport`]. Cloning gives another handle; the endpoint closes
/// when the last handle is dropped or [`QuicTransport::close`] is called.
#[derive(Clone, Debug)]
pub struct QuicTransport {
    inner: Arc<Inner>,
    _guard: Arc<CloseOnDrop>,
}

#[derive(Debug)]
struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.shut_down();
    }
}

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    codec: Codec,
    config: TransportConfig,
    local_addr: SocketAddr,
    name: Arc<str>,
    peers: Mutex<HashMap<SocketAddr, Arc<PeerLink>>>,
    incoming: mpsc::Sender<Incoming>,
    faults: Arc<LinkFaults>,
    stats: Stats,
    closed: AtomicBool,
}

/// Everything this node keeps about one peer.
#[derive(Debug)]
struct PeerLink {
    addr: SocketAddr,
    /// The connection in use, once its `Hello` was answered.
    conn: Mutex<Option<Connection>>,
    /// Serialises dials so concurrent users share one.
    dial: tokio::sync::Mutex<DialState>,
    queue: mpsc::UnboundedSender<Bytes>,
    queued: QueueBudget,
    datagrams: Mutex<VecDeque<Bytes>>,
    wake: Notify,
    /// Wakes a dial waiting out its backoff: a connection arrived, or the
    /// peer is known to be back (`retry` set).
    connected: Notify,
    retry: AtomicBool,
    sender: Mutex<Option<tokio::task::AbortHandle>>,
}

#[derive(Debug)]
struct DialState {
    next_attempt: Option<Instant>,
    backoff: Duration,
    last_error: String,
}

impl PeerLink {
    fn current(&self) -> Option<Connection> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Uses `conn` for sends unless a live connection is in use already.
    fn offer(&self, conn: &Connection) {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|c| c.close_reason().is_some()) {
            *slot = Some(conn.clone());
        }
        drop(slot);
        self.wake.notify_one();
        self.connected.notify_waiters();
    }
}

/// Writes the answer to a request on its stream.
#[derive(Debug)]
pub(crate) struct QuicReply {
    stream: quinn::SendStream,
    codec: Codec,
}

impl QuicReply {
    pub(crate) fn send(self, answer: Message) {
        let QuicReply { mut stream, codec } = self;
        tokio::spawn(async move {
            let mut frame = Vec::new();
            if let Err(e) = codec.encode_frame(&answer, &mut frame) {
                warn!("cannot answer a request: {e}");
                let _ = stream.reset(VarInt::from_u32(close_code::BAD_FRAME));
                return;
            }
            if stream.write_all(&frame).await.is_ok() {
                let _ = stream.finish();
            }
        });
    }
}

/// Everything needed to set up a node's endpoint.
#[derive(Clone, Debug)]
pub struct QuicSettings {
    /// This node's certificate and key.
    pub identity: NodeIdentity,
    /// The cluster CA's certificate.
    pub ca: CaCertificate,
    /// The cluster this node belongs to.
    pub cluster: ClusterId,
    /// Transport settings.
    pub config: TransportConfig,
}

impl QuicTransport {
    /// Binds a UDP socket at `addr` (port 0 picks a free port) with 2 MiB
    /// kernel buffers and starts the endpoint on the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Bind`] when the socket cannot be bound; [`Error::Tls`] when
    /// rustls refuses the identity.
    pub fn bind(
        addr: SocketAddr,
        settings: QuicSettings,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), Error> {
        let socket = udp_socket(addr).map_err(|source| Error::Bind { addr, source })?;
        let runtime: Arc<dyn Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = runtime
            .wrap_udp_socket(socket)
            .map_err(|source| Error::Bind { addr, source })?;
        Self::with_socket(socket, runtime, EndpointConfig::default(), settings)
    }

    /// Starts the endpoint on an already bound socket: how the simulator puts
    /// quinn on a simulated network.
    ///
    /// # Errors
    /// As [`QuicTransport::bind`].
    pub fn with_socket(
        socket: Arc<dyn AsyncUdpSocket>,
        runtime: Arc<dyn Runtime>,
        endpoint_config: EndpointConfig,
        settings: QuicSettings,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), Error> {
        let QuicSettings {
            identity,
            ca,
            cluster,
            config,
        } = settings;
        let transport = Arc::new(transport_config(&config));
        let server_crypto = QuicServerConfig::try_from(tls::server_config(&identity, &ca)?)
            .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let client_crypto = QuicClientConfig::try_from(tls::client_config(&identity, &ca)?)
            .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);

        let faults = Arc::new(LinkFaults::default());
        let local_addr = socket.local_addr().map_err(|source| Error::Bind {
            addr: ([0, 0, 0, 0], 0).into(),
            source,
        })?;
        let socket: Arc<dyn AsyncUdpSocket> = Arc::new(FaultySocket {
            inner: socket,
            faults: faults.clone(),
        });
        let endpoint =
            Endpoint::new_with_abstract_socket(endpoint_config, Some(server), socket, runtime)
                .map_err(|source| Error::Bind {
                    addr: local_addr,
                    source,
                })?;
        let (incoming, rx) = mpsc::channel(config.incoming_capacity);
        let inner = Arc::new(Inner {
            endpoint,
            client,
            codec: Codec::new(cluster, config.max_frame_bytes),
            config,
            local_addr,
            name: identity.name().into(),
            peers: Mutex::new(HashMap::new()),
            incoming,
            faults,
            stats: Stats::default(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(accept_loop(inner.clone()));
        info!(node = %inner.name, addr = %local_addr, "QUIC endpoint listening");
        Ok((
            QuicTransport {
                _guard: Arc::new(CloseOnDrop(inner.clone())),
                inner,
            },
            rx,
        ))
    }

    /// This node's name, from its certificate.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The link fault controls of this node's socket.
    pub fn faults(&self) -> &LinkFaults {
        &self.inner.faults
    }

    /// The fault controls, shared: they act on this node's socket for as
    /// long as the endpoint lives.
    pub fn shared_faults(&self) -> Arc<LinkFaults> {
        Arc::clone(&self.inner.faults)
    }

    /// A read-only view of this transport's counters that does not keep it
    /// open: once the transport is gone, it reports nothing.
    pub fn observer(&self) -> TransportObserver {
        TransportObserver {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Counters of refused and dropped input.
    pub fn stats(&self) -> TransportStats {
        self.inner.stats()
    }

    /// Bytes sent to and received from each peer over its current
    /// connection (UDP payload, QUIC overhead included), by address. A
    /// reconnection starts the peer's counts again.
    pub fn peer_bytes(&self) -> Vec<PeerBytes> {
        self.inner.peer_bytes()
    }
}

/// Counters of a [`QuicTransport`], from [`QuicTransport::observer`].
#[derive(Clone, Debug)]
pub struct TransportObserver {
    inner: Weak<Inner>,
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
    fn stats(&self) -> TransportStats {
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
            refused_connections: s.refused_connections.load(Ordering::Relaxed),
            failed_handshakes: s.failed_handshakes.load(Ordering::Relaxed),
            queue_full: s.queue_full.load(Ordering::Relaxed),
            datagrams_dropped: s.datagrams_dropped.load(Ordering::Relaxed),
        }
    }

    fn peer_bytes(&self) -> Vec<PeerBytes> {
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

impl QuicTransport {
    /// Closes every connection and the endpoint, and waits until peers were told.
    pub async fn close(&self) {
        self.inner.shut_down();
        self.inner.endpoint.wait_idle().await;
    }

    /// The underlying quinn endpoint, for tests that speak raw QUIC to a node.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // The kernel caps these at net.core.{r,w}mem_max; a smaller buffer still works.
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        debug!("cannot size the UDP receive buffer: {e}");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        debug!("cannot size the UDP send buffer: {e}");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn transport_config(config: &TransportConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(config.idle_timeout.try_into().ok());
    t.keep_alive_interval(Some(config.keep_alive));
    t.max_concurrent_bidi_streams(VarInt::from_u32(4096));
    t.max_concurrent_uni_streams(VarInt::from_u32(64));
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    t.datagram_receive_buffer_size(Some(1 << 20));
    t.datagram_send_buffer_size(1 << 20);
    t
}

impl Inner {
    fn shut_down(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutting down");
        let peers = std::mem::take(&mut *self.peers.lock().unwrap_or_else(|e| e.into_inner()));
        for link in peers.values() {
            if let Some(task) = link.sender.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
        }
    }

    fn link(self: &Arc<Self>, addr: SocketAddr) -> Result<Arc<PeerLink>, SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = peers.get(&addr) {
            return Ok(link.clone());
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let link = Arc::new(PeerLink {
            addr,
            conn: Mutex::new(None),
            dial: tokio::sync::Mutex::new(DialState {
                next_attempt: None,
                backoff: self.config.min_backoff,
                last_error: String::new(),
            }),
            queue,
            queued: QueueBudget::default(),
            datagrams: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            connected: Notify::new(),
            retry: AtomicBool::new(false),
            sender: Mutex::new(None),
        });
        let task = tokio::spawn(run_sender(Arc::downgrade(self), link.clone(), rx));
        *link.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        peers.insert(addr, link.clone());
        Ok(link)
    }

    /// The connection to `addr`, dialing if needed. With `wait`, sleeps out
    /// the backoff of an earlier failure; without, fails at once during it.
    async fn connection(
        self: &Arc<Self>,
        addr: SocketAddr,
        wait: bool,
    ) -> Result<Connection, String> {
        let link = self.link(addr).map_err(|e| e.to_string())?;
        if let Some(conn) = link.current() {
            return Ok(conn);
        }
        let mut dial = link.dial.lock().await;
        if let Some(conn) = link.current() {
            return Ok(conn);
        }
        if let Some(at) = dial.next_attempt
            && Instant::now() < at
            && !link.retry.swap(false, Ordering::AcqRel)
        {
            if !wait {
                return Err(dial.last_error.clone());
            }
            let woken = link.connected.notified();
            if let Some(conn) = link.current() {
                return Ok(conn);
            }
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = woken => {}
            }
            link.retry.store(false, Ordering::Release);
            if let Some(conn) = link.current() {
                return Ok(conn);
            }
        }
        match self.dial(addr).await {
            Ok(conn) => {
                dial.next_attempt = None;
                dial.backoff = self.config.min_backoff;
                link.offer(&conn);
                Ok(conn)
            }
            Err(e) => {
                debug!(peer = %addr, "dial failed: {e}; next attempt in {:?}", dial.backoff);
                dial.next_attempt = Some(Instant::now() + dial.backoff);
                dial.backoff = (dial.backoff * 2).min(self.config.max_backoff);
                dial.last_error = e.clone();
                Err(e)
            }
        }
    }

    async fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<Connection, String> {
        let handshake = async {
            let connecting = self
                .endpoint
                .connect_with(self.client.clone(), addr, "sessmesh")
                .map_err(|e| format!("cannot connect: {e}"))?;
            let conn = connecting
                .await
                .map_err(|e| format!("handshake failed: {e}"))?;
            // Under TLS 1.3 the acceptor may still refuse our certificate: the
            // first exchange shows it, wherever in the exchange it lands.
            let exchange = async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                write_frame(&self.codec, &mut send, &Message::Hello).await?;
                let _ = send.finish();
                read_frame(&self.codec, &mut recv)
                    .await
                    .map_err(String::from)
            };
            match exchange.await {
                Ok(Message::Welcome) => Ok(conn),
                Ok(other) => Err(format!("expected Welcome, got {}", kind(&other))),
                Err(e) => Err(conn
                    .close_reason()
                    .map_or(e, |reason| format!("refused: {reason}"))),
            }
        };
        let conn = tokio::time::timeout(self.config.connect_timeout, handshake)
            .await
            .map_err(|_| format!("no answer within {:?}", self.config.connect_timeout))??;
        let peer = peer_of(&conn)?;
        debug!(peer = %peer.name, addr = %addr, "connected");
        tokio::spawn(serve_connection(self.clone(), conn.clone(), peer));
        Ok(conn)
    }

    fn refuse_stream(
        &self,
        from: &Peer,
        recv: &mut quinn::RecvStream,
        err: &DecodeError,
        conn: &Connection,
    ) {
        match err {
            DecodeError::Version { .. } | DecodeError::ForeignCluster { .. } => {
                warn!(peer = %from.name, addr = %from.addr, "closing connection: {err}");
                bump(&self.stats.refused_connections);
                conn.close(
                    VarInt::from_u32(close_code::FOREIGN),
                    err.to_string().as_bytes(),
                );
            }
            _ => {
                warn!(peer = %from.name, addr = %from.addr, "stopping stream: {err}");
                bump(&self.stats.bad_frames);
                let _ = recv.stop(VarInt::from_u32(close_code::BAD_FRAME));
            }
        }
    }

    async fn deliver(&self, item: Incoming) -> bool {
        self.incoming.send(item).await.is_ok()
    }
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello => "Hello",
        Message::Welcome => "Welcome",
        Message::Gossip(_) => "Gossip",
        Message::Write { .. } => "Write",
        Message::WriteAck { .. } => "WriteAck",
        Message::Read { .. } => "Read",
        Message::ReadReply { .. } => "ReadReply",
        Message::ReadDigest { .. } => "ReadDigest",
        Message::DigestReply { .. } => "DigestReply",
        Message::Merge { .. } => "Merge",
        Message::Handoff { .. } => "Handoff",
        Message::DigestRoots { .. } => "DigestRoots",
        Message::DigestBuckets { .. } => "DigestBuckets",
        Message::DigestKeys { .. } => "DigestKeys",
        Message::FetchKeys { .. } => "FetchKeys",
        Message::ClockProbe { .. } => "ClockProbe",
        Message::ClockReply { .. } => "ClockReply",
        Message::StampRefused { .. } => "StampRefused",
    }
}

fn peer_of(conn: &Connection) -> Result<Peer, String> {
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("the peer presented no certificate")?;
    let cert = certs.first().ok_or("the peer presented no certificate")?;
    let name = node_name_of(cert).map_err(|e| e.to_string())?;
    Ok(Peer {
        addr: conn.remote_address(),
        name: name.into(),
    })
}

async fn write_frame(
    codec: &Codec,
    send: &mut quinn::SendStream,
    message: &Message,
) -> Result<(), String> {
    let mut frame = Vec::new();
    codec
        .encode_frame(message, &mut frame)
        .map_err(|e| e.to_string())?;
    send.write_all(&frame)
        .await
        .map_err(|e| format!("write failed: {e}"))
}

#[derive(Debug)]
enum FrameError {
    Decode(DecodeError),
    Stream(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Decode(e) => e.fmt(f),
            FrameError::Stream(e) => f.write_str(e),
        }
    }
}

impl From<FrameError> for String {
    fn from(e: FrameError) -> String {
        e.to_string()
    }
}

/// Reads exactly one frame; the length is checked before the body is allocated.
async fn read_frame(codec: &Codec, recv: &mut quinn::RecvStream) -> Result<Message, FrameError> {
    let stream_error = |e: quinn::ReadExactError| match e {
        quinn::ReadExactError::FinishedEarly(0) => {
            FrameError::Stream("the stream ended before a frame".into())
        }
        quinn::ReadExactError::FinishedEarly(_) => FrameError::Decode(DecodeError::Truncated),
        quinn::ReadExactError::ReadError(e) => FrameError::Stream(e.to_string()),
    };
    let mut prefix = [0; sessmesh_core::wire::FRAME_PREFIX_LEN];
    recv.read_exact(&mut prefix).await.map_err(stream_error)?;
    let len = codec.frame_len(prefix).map_err(FrameError::Decode)?;
    let mut body = vec![0; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| match stream_error(e) {
            FrameError::Stream(s) if s.contains("ended before") => {
                FrameError::Decode(DecodeError::Truncated)
            }
            other => other,
        })?;
    codec.decode(&body).map_err(FrameError::Decode)
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        tokio::spawn(accept_one(inner.clone(), incoming));
    }
}

async fn accept_one(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            warn!(addr = %remote, "refused a connection: {e}");
            bump(&inner.stats.failed_handshakes);
            return;
        }
    };
    let peer = match peer_of(&conn) {
        Ok(peer) => peer,
        Err(e) => {
            warn!(addr = %remote, "refused a connection: {e}");
            bump(&inner.stats.refused_connections);
            conn.close(VarInt::from_u32(close_code::HANDSHAKE), e.as_bytes());
            return;
        }
    };
    let hello = async {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| FrameError::Stream(e.to_string()))?;
        let message = read_frame(&inner.codec, &mut recv).await?;
        Ok::<_, FrameError>((
            send_welcome(&inner.codec, &mut send, &message).await,
            message,
        ))
    };
    match tokio::time::timeout(inner.config.connect_timeout, hello).await {
        Ok(Ok((Ok(()), Message::Hello))) => {}
        Ok(Ok((_, other))) => {
            let reason = format!("expected Hello first, got {}", kind(&other));
            warn!(peer = %peer.name, addr = %remote, "closing connection: {reason}");
            bump(&inner.stats.refused_connections);
            conn.close(VarInt::from_u32(close_code::HANDSHAKE), reason.as_bytes());
            return;
        }
        Ok(Err(FrameError::Decode(e))) => {
            let code = match e {
                DecodeError::Version { .. } | DecodeError::ForeignCluster { .. } => {
                    close_code::FOREIGN
                }
                _ => close_code::HANDSHAKE,
            };
            warn!(peer = %peer.name, addr = %remote, "closing connection: {e}");
            bump(&inner.stats.refused_connections);
            conn.close(VarInt::from_u32(code), e.to_string().as_bytes());
            return;
        }
        Ok(Err(FrameError::Stream(e))) => {
            debug!(peer = %peer.name, addr = %remote, "connection ended before Hello: {e}");
            return;
        }
        Err(_) => {
            warn!(peer = %peer.name, addr = %remote, "closing connection: no Hello");
            bump(&inner.stats.refused_connections);
            conn.close(VarInt::from_u32(close_code::HANDSHAKE), b"no Hello");
            return;
        }
    }
    debug!(peer = %peer.name, addr = %remote, "accepted");
    if let Ok(link) = inner.link(remote) {
        link.offer(&conn);
    }
    serve_connection(inner, conn, peer).await;
}

async fn send_welcome(
    codec: &Codec,
    send: &mut quinn::SendStream,
    hello: &Message,
) -> Result<(), String> {
    if *hello != Message::Hello {
        return Err("not a Hello".into());
    }
    write_frame(codec, send, &Message::Welcome).await?;
    let _ = send.finish();
    Ok(())
}

/// Reads everything a peer sends on one connection until it closes.
async fn serve_connection(inner: Arc<Inner>, conn: Connection, peer: Peer) {
    loop {
        // Biased: a fixed polling order keeps simulated runs repeatable.
        tokio::select! {
            biased;
            uni = conn.accept_uni() => match uni {
                Ok(recv) => { tokio::spawn(read_messages(inner.clone(), conn.clone(), peer.clone(), recv)); }
                Err(_) => break,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => { tokio::spawn(read_request(inner.clone(), conn.clone(), peer.clone(), send, recv)); }
                Err(_) => break,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => match inner.codec.decode(&bytes) {
                    Ok(Message::Gossip(payload)) => {
                        // A full incoming queue drops gossip rather than stall the connection.
                        let _ = inner.incoming.try_send(Incoming::Datagram { from: peer.clone(), payload });
                    }
                    Ok(other) => {
                        warn!(peer = %peer.name, "dropping a datagram: {} is not gossip", kind(&other));
                        bump(&inner.stats.bad_frames);
                    }
                    Err(e @ (DecodeError::Version { .. } | DecodeError::ForeignCluster { .. })) => {
                        warn!(peer = %peer.name, addr = %peer.addr, "closing connection: {e}");
                        bump(&inner.stats.refused_connections);
                        conn.close(VarInt::from_u32(close_code::FOREIGN), e.to_string().as_bytes());
                    }
                    Err(e) => {
                        warn!(peer = %peer.name, "dropping a datagram: {e}");
                        bump(&inner.stats.bad_frames);
                    }
                },
                Err(_) => break,
            },
        }
    }
    if let Some(reason) = conn.close_reason() {
        debug!(peer = %peer.name, addr = %peer.addr, "connection closed: {reason}");
    }
}

/// Reads the frames of one unidirectional stream, many per read, and hands
/// them on in groups (one channel reservation per group, not per message).
async fn read_messages(
    inner: Arc<Inner>,
    conn: Connection,
    peer: Peer,
    mut recv: quinn::RecvStream,
) {
    const GROUP: usize = 256;
    let mut buf = BytesMut::new();
    let mut decoded = Vec::with_capacity(GROUP);
    loop {
        let mut refused = None;
        loop {
            while decoded.len() < GROUP {
                match inner.codec.decode_frame(&buf) {
                    Ok(Some((message, used))) => {
                        buf.advance(used);
                        decoded.push(message);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            if decoded.is_empty() {
                break;
            }
            let Ok(permits) = inner.incoming.reserve_many(decoded.len()).await else {
                return;
            };
            for (permit, message) in permits.zip(decoded.drain(..)) {
                permit.send(Incoming::Message {
                    from: peer.clone(),
                    message,
                });
            }
            if refused.is_some() {
                break;
            }
        }
        if let Some(e) = refused {
            // What arrived before the bad frame was valid and is delivered above.
            inner.refuse_stream(&peer, &mut recv, &e, &conn);
            return;
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                if !buf.is_empty() {
                    inner.refuse_stream(&peer, &mut recv, &DecodeError::Truncated, &conn);
                }
                return;
            }
            Err(e) => {
                debug!(peer = %peer.name, "stream ended: {e}");
                return;
            }
        }
    }
}

async fn read_request(
    inner: Arc<Inner>,
    conn: Connection,
    peer: Peer,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    match read_frame(&inner.codec, &mut recv).await {
        Ok(message) => {
            let reply = Responder(ResponderKind::Quic(QuicReply {
                stream: send,
                codec: inner.codec.clone(),
            }));
            inner
                .deliver(Incoming::Request {
                    from: peer,
                    message,
                    reply,
                })
                .await;
        }
        Err(FrameError::Decode(e)) => inner.refuse_stream(&peer, &mut recv, &e, &conn),
        Err(FrameError::Stream(e)) => debug!(peer = %peer.name, "request stream ended: {e}"),
    }
}

/// Writes one peer's queued messages in batches, reconnecting as needed, and
/// flushes datagrams that waited for a connection.
async fn run_sender(
    inner: Weak<Inner>,
    link: Arc<PeerLink>,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut batch = BytesMut::new();
    let mut stream: Option<(quinn::SendStream, usize)> = None;
    loop {
        if batch.is_empty() {
            let has_datagrams = !link
                .datagrams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            if !has_datagrams {
                tokio::select! {
                    biased;
                    next = queue.recv() => match next {
                        Some(frame) => batch.extend_from_slice(&frame),
                        None => return,
                    },
                    () = link.wake.notified() => {}
                }
            }
        }
        while batch.len() < BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let waiting = !batch.is_empty()
            || !link
                .datagrams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        if !waiting {
            continue;
        }
        let Ok(conn) = inner.connection(link.addr, true).await else {
            continue;
        };
        let backlog: Vec<Bytes> = link
            .datagrams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for datagram in backlog {
            let _ = conn.send_datagram(datagram);
        }
        if batch.is_empty() {
            continue;
        }
        if stream
            .as_ref()
            .is_none_or(|(_, id)| *id != conn.stable_id())
        {
            stream = match conn.open_uni().await {
                Ok(s) => Some((s, conn.stable_id())),
                Err(e) => {
                    debug!(peer = %link.addr, "cannot open a stream: {e}");
                    continue;
                }
            };
        }
        let Some((send, _)) = stream.as_mut() else {
            continue;
        };
        match send.write_all(&batch).await {
            Ok(()) => {
                link.queued.release(batch.len());
                batch.clear();
            }
            Err(e) => {
                // The batch goes again on the next connection: at least once
                // across reconnects, which merges and acknowledgements tolerate.
                debug!(peer = %link.addr, "write failed, retrying: {e}");
                stream = None;
            }
        }
    }
}

impl Transport for QuicTransport {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    fn send_datagram(&self, to: SocketAddr, payload: Bytes) -> Result<(), SendError> {
        let mut envelope = Vec::new();
        self.inner
            .codec
            .encode(&Message::Gossip(payload), &mut envelope)?;
        let envelope = Bytes::from(envelope);
        let link = self.inner.link(to)?;
        if let Some(conn) = link.current() {
            let limit = conn.max_datagram_size().unwrap_or(0);
            if envelope.len() > limit {
                return Err(SendError::DatagramTooLarge {
                    peer: to,
                    len: envelope.len(),
                    limit,
                });
            }
            if conn.send_datagram(envelope.clone()).is_ok() {
                return Ok(());
            }
        }
        let mut backlog = link.datagrams.lock().unwrap_or_else(|e| e.into_inner());
        if backlog.len() == DATAGRAM_BACKLOG {
            backlog.pop_front();
            bump(&self.inner.stats.datagrams_dropped);
        }
        backlog.push_back(envelope);
        drop(backlog);
        link.wake.notify_one();
        Ok(())
    }

    fn max_datagram_payload(&self, to: SocketAddr) -> Option<usize> {
        let link = self.inner.link(to).ok()?;
        self.inner
            .codec
            .max_gossip_payload(link.current()?.max_datagram_size()?)
    }

    fn send(&self, to: SocketAddr, message: &Message) -> Result<(), SendError> {
        self.send_all(to, std::slice::from_ref(message))
    }

    /// Encodes the messages back to back into one buffer and queues it once.
    fn send_all(&self, to: SocketAddr, messages: &[Message]) -> Result<(), SendError> {
        let mut frames = Vec::new();
        let mut refused = None;
        for message in messages {
            // A message that cannot be encoded is left out; the rest go.
            if let Err(e) = self.inner.codec.encode_frame(message, &mut frames) {
                refused.get_or_insert(SendError::from(e));
            }
        }
        if !frames.is_empty() {
            let link = self.inner.link(to)?;
            if let Err(e) = link
                .queued
                .admit(to, frames.len(), self.inner.config.max_queue_bytes)
            {
                bump(&self.inner.stats.queue_full);
                return Err(e);
            }
            link.queue
                .send(Bytes::from(frames))
                .map_err(|_| SendError::Closed)?;
        }
        refused.map_or(Ok(()), Err)
    }

    async fn request(
        &self,
        to: SocketAddr,
        message: &Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let mut frame = Vec::new();
        self.inner.codec.encode_frame(message, &mut frame)?;
        let inner = &self.inner;
        let exchange = async {
            let conn = inner
                .connection(to, false)
                .await
                .map_err(|reason| RequestError::Unreachable { peer: to, reason })?;
            let failed = |reason: String| RequestError::Failed { peer: to, reason };
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(e.to_string()))?;
            send.write_all(&frame)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let _ = send.finish();
            read_frame(&inner.codec, &mut recv)
                .await
                .map_err(|e| failed(e.to_string()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| timed_out(to, timeout))?
    }

    fn forget(&self, peer: SocketAddr) {
        let link = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
        if let Some(link) = link {
            if let Some(task) = link.sender.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
            if let Some(conn) = link.current() {
                conn.close(VarInt::from_u32(close_code::FORGOTTEN), b"forgotten");
            }
        }
    }

    fn retry_now(&self, peer: SocketAddr) {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = peers.get(&peer) {
            if let Some(conn) = link.current() {
                debug!(peer = %peer, "replacing a connection that lived through an outage");
                conn.close(
                    VarInt::from_u32(close_code::STALE),
                    b"stale after an outage",
                );
            }
            link.retry.store(true, Ordering::Release);
            link.connected.notify_waiters();
            link.wake.notify_one();
        }
    }

    fn queued_bytes(&self, peer: SocketAddr) -> usize {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&peer).map_or(0, |link| link.queued.queued())
    }
}
