//! The core's error type.

use crate::clock::NodeId;
use crate::wire::DecodeError;

/// Everything the core can refuse. Each variant says whether state changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A remote stamp was further ahead of local time than
    /// `max_clock_drift_ms` allows. The clock is unchanged and the write that
    /// carried the stamp must not be applied.
    #[error(
        "stamp from node {from:?} is {ahead_ms} ms ahead of local time, over max_clock_drift_ms = {max_drift_ms}"
    )]
    ClockDrift {
        /// How far ahead the remote stamp was.
        ahead_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
        /// The node that issued the stamp.
        from: NodeId,
    },
    /// This node's clock runs further ahead of its peers than they accept
    /// (see [`crate::peer_clocks`]): it stamps no write until the clock is
    /// corrected, or real time catches up with the stamps it already
    /// issued. Nothing was stamped or stored.
    #[error(
        "clock drift: this node's clock runs {ahead_ms} ms ahead of its peers, over max_clock_drift_ms = {max_drift_ms}; it takes no writes until the clock is corrected"
    )]
    ClockAhead {
        /// How far ahead of a majority of the peers a stamp would be.
        ahead_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
    },
    /// A key longer than [`crate::MAX_KEY_LEN`]. Nothing was stored.
    #[error("key is {len} bytes, over the {max}-byte limit")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A setting is out of range. Nothing was started or changed.
    #[error("invalid setting {setting}: {reason}")]
    InvalidConfig {
        /// The setting's name, as in [`crate::Config`].
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A message would be over the frame limit its receiver enforces. Nothing
    /// was written to the output.
    #[error("message of {len} bytes is over the {limit}-byte frame limit")]
    MessageTooLarge {
        /// The encoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Bytes from a peer were refused. Nothing was applied.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}
