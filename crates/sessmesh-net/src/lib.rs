//! How sessmesh peers talk.
//!
//! - [`certs`]: the cluster CA, node certificates, PEM files.
//! - [`tls`]: TLS 1.3 with mutual authentication against the cluster CA.
//! - [`transport`]: the [`Transport`] trait the runtime drives.
#![forbid(unsafe_code)]

pub mod certs;
mod error;
pub mod tls;

pub use certs::{CaCertificate, ClusterCa, NodeIdentity};
pub use error::{Error, RequestError, SendError};
