//! The transport's error types.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors setting a node up: certificates, TLS, sockets. Each says what was
/// wrong; nothing was started or written when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Generating or encoding a certificate or key failed.
    #[error("{context}: {reason}")]
    Certificate {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        reason: String,
    },
    /// Text that should be PEM did not parse.
    #[error("{what} is not valid PEM: {reason}")]
    Pem {
        /// Which file or value.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A certificate was refused: expired, not yet valid, from another CA,
    /// malformed, or not issued for node-to-node use.
    #[error("{subject} is refused: {reason}")]
    CertificateRejected {
        /// Whose certificate.
        subject: String,
        /// Why, in words.
        reason: String,
    },
    /// A node name that cannot go into a certificate.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rustls refused the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The UDP socket could not be set up.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn certificate(context: &'static str, err: impl std::fmt::Display) -> Self {
        Error::Certificate {
            context,
            reason: err.to_string(),
        }
    }

    pub(crate) fn pem(what: &'static str, reason: String) -> Self {
        Error::Pem { what, reason }
    }

    pub(crate) fn rejected(subject: &str, reason: String) -> Self {
        Error::CertificateRejected {
            subject: subject.to_owned(),
            reason,
        }
    }
}

/// Why a message could not be queued or sent. Nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer's send queue holds its byte limit already: the peer is slow
    /// or gone. The caller keeps the data (as a hint) or drops it.
    #[error("send queue to {peer} is full ({queued} bytes queued, limit {limit})")]
    QueueFull {
        /// The peer.
        peer: SocketAddr,
        /// Bytes waiting.
        queued: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A datagram larger than the path to the peer carries.
    #[error("datagram of {len} bytes is over the {limit}-byte limit of the path to {peer}")]
    DatagramTooLarge {
        /// The peer.
        peer: SocketAddr,
        /// The encoded size.
        len: usize,
        /// What the connection accepts now.
        limit: usize,
    },
    /// The message is over the frame limit.
    #[error(transparent)]
    Encode(#[from] sessmesh_core::Error),
    /// The transport is shut down.
    #[error("the transport is closed")]
    Closed,
}
