//! quinn over turmoil's simulated UDP, so full-stack tests can partition and
//! heal real QUIC connections in virtual time, deterministically.
//!
//! [`bind`] gives a [`QuicTransport`] whose socket is a turmoil socket and
//! whose endpoint draws its randomness (connection ids and the like) from a
//! seed. Call it inside a turmoil host. Timers run on the host's tokio clock,
//! which turmoil controls. TLS still draws its keys from the operating
//! system; that changes the bytes on the wire, but not their sizes or timing,
//! and so not the course of a run.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, EndpointConfig, UdpPoller};
use tokio::sync::mpsc;

use crate::Error;
use crate::quic::{QuicSettings, QuicTransport};
use crate::transport::Incoming;

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A turmoil UDP socket seen through quinn's socket trait.
pub struct TurmoilUdpSocket {
    socket: Arc<turmoil::net::UdpSocket>,
    local_addr: SocketAddr,
    /// The pending wait for the next datagram, kept across polls.
    readable: Mutex<Option<Readable>>,
}

impl fmt::Debug for TurmoilUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurmoilUdpSocket")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl TurmoilUdpSocket {
    /// Binds a simulated UDP socket at `addr` on the current turmoil host.
    ///
    /// # Errors
    /// [`Error::Bind`] when turmoil refuses the address.
    pub async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let socket = turmoil::net::UdpSocket::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(TurmoilUdpSocket {
            socket: Arc::new(socket),
            local_addr,
            readable: Mutex::new(None),
        })
    }
}

/// Turmoil's sockets never push back on senders.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for TurmoilUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(segment) {
            self.socket.try_send_to(datagram, transmit.destination)?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.socket.try_recv_from(&mut bufs[0]) {
                Ok((len, addr)) => {
                    meta[0] = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: Some(self.local_addr.ip()),
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let mut readable = self.readable.lock().unwrap_or_else(|e| e.into_inner());
            let wait = readable.get_or_insert_with(|| {
                let socket = self.socket.clone();
                Box::pin(async move { socket.readable().await })
            });
            match wait.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    *readable = None;
                    result?;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// Starts a QUIC transport on a simulated socket at `addr`, with the endpoint's
/// randomness drawn from `seed`. Call it inside a turmoil host.
///
/// # Errors
/// As [`QuicTransport::bind`].
pub async fn bind(
    addr: SocketAddr,
    settings: QuicSettings,
    seed: u64,
) -> Result<(QuicTransport, mpsc::Receiver<Incoming>), Error> {
    let socket = TurmoilUdpSocket::bind(addr).await?;
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut endpoint_config = EndpointConfig::default();
    endpoint_config.rng_seed(Some(seed_bytes));
    QuicTransport::with_socket(
        Arc::new(socket),
        Arc::new(quinn::TokioRuntime),
        endpoint_config,
        settings,
    )
}
