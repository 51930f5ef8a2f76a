//! How sessmesh peers talk.
//!
//! - [`certs`]: the cluster CA, node certificates, PEM files.
//! - [`tls`]: TLS 1.3 with mutual authentication against the cluster CA.
//! - [`transport`]: the [`Transport`] trait the runtime drives.
//! - [`quic`]: the QUIC implementation ([`QuicTransport`]).
//! - [`mem`]: its in-memory twin with fault controls ([`mem::MemNetwork`]).
//! - `turmoil` (feature `turmoil`): quinn over turmoil's simulated network.
//!
//! Feature `test-support` adds `LinkFaults` (`QuicTransport::faults`): the
//! QUIC socket drops the packets of links a test or demo cuts. Production
//! builds leave it out; this crate's tests and benches turn it on.
#![forbid(unsafe_code)]

pub mod certs;
mod error;
pub mod mem;
pub mod quic;
pub mod tls;
pub mod transport;
#[cfg(feature = "turmoil")]
pub mod turmoil;

pub use certs::{CaCertificate, ClusterCa, NodeIdentity};
pub use error::{Error, SendError};
#[cfg(feature = "test-support")]
pub use quic::LinkFaults;
pub use quic::{PeerBytes, QuicSettings, QuicTransport, TransportObserver, TransportStats};
pub use transport::{Incoming, Peer, Transport, TransportConfig};
