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
//! - **Bidirectional streams** carry only the `Hello`/`Welcome` exchange that
//!   opens a connection. Peers send one-way messages only, so a
//!   bidirectional stream a peer opens afterwards is unexpected input: it is
//!   stopped and reset with [`close_code::UNEXPECTED_STREAM`], logged and
//!   counted, and the connection serves on.
//! - **Datagrams** carry gossip, enveloped like every message; their size
//!   limit is the connection's current one.
//! - **Bad input** (junk, a truncated frame, a length over the limit) stops
//!   that stream with [`close_code::BAD_FRAME`]; a message from another
//!   cluster or protocol version closes the connection with
//!   [`close_code::FOREIGN`]. Each is logged with its reason and counted in
//!   [`TransportStats`]; other streams and peers carry on.
//!
//! Layout: this file holds the endpoint and the [`Transport`] implementation;
//! `link.rs` the per-peer state and dialling, `sender.rs` the per-peer sender
//! task, `accept.rs` accepting connections and reading from them,
//! `framing.rs` frames on streams, `stats.rs` the counters, and `faults.rs`
//! the socket that drops packets of blocked links (`LinkFaults`, only with
//! the `test-support` feature: tests, benches and demos cut links with it).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AsyncUdpSocket, Connection, Endpoint, EndpointConfig, Runtime, VarInt};
use rustls_pki_types::CertificateDer;
use sessmesh_core::{ClusterId, Codec, DecodeError, Message};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::certs::{CaCertificate, NodeIdentity, node_name_of};
use crate::transport::{DATAGRAM_BACKLOG, Incoming, Peer, QueueBudget, Transport, TransportConfig};
use crate::{Error, SendError, tls};

mod accept;
#[cfg(feature = "test-support")]
mod faults;
mod framing;
mod link;
mod sender;
mod stats;

use accept::{accept_loop, peer_of, serve_connection};
#[cfg(feature = "test-support")]
use faults::FaultySocket;
use framing::{FrameError, kind, read_frame, write_frame};
use link::PeerLink;
use sender::run_sender;
use stats::{Stats, bump};

#[cfg(feature = "test-support")]
pub use faults::LinkFaults;
pub use stats::{PeerBytes, TransportObserver, TransportStats};

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
    /// The peer opened a bidirectional stream after the `Hello` exchange;
    /// peers send one-way messages only.
    pub const UNEXPECTED_STREAM: u32 = 6;
}

/// Size of the UDP socket's kernel buffers, as quinn's own benchmarks set them.
pub const SOCKET_BUFFER_BYTES: usize = 2 << 20;
/// Largest batch of queued messages written at once.
const BATCH_BYTES: usize = 256 << 10;
/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 256 << 10;

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
    #[cfg(feature = "test-support")]
    faults: Arc<LinkFaults>,
    stats: Stats,
    closed: AtomicBool,
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

        let local_addr = socket.local_addr().map_err(|source| Error::Bind {
            addr: ([0, 0, 0, 0], 0).into(),
            source,
        })?;
        #[cfg(feature = "test-support")]
        let faults = Arc::new(LinkFaults::default());
        #[cfg(feature = "test-support")]
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
            #[cfg(feature = "test-support")]
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

    /// The link fault controls of this node's socket (feature `test-support`).
    #[cfg(feature = "test-support")]
    pub fn faults(&self) -> &LinkFaults {
        &self.inner.faults
    }

    /// The fault controls, shared: they act on this node's socket for as
    /// long as the endpoint lives (feature `test-support`).
    #[cfg(feature = "test-support")]
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
    // A connection's only bidirectional stream is the dialer's `Hello`;
    // any other is refused, so a peer may not hold more than one open.
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(64));
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    t.datagram_receive_buffer_size(Some(1 << 20));
    t.datagram_send_buffer_size(1 << 20);
    t
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
