//! The one error type of the embedded API.

use std::path::PathBuf;

/// Everything a peer's calls can fail with. Each variant says what state the
/// call left behind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is invalid; nothing was started.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        /// The setting, named as the builder method that sets it.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate or key file could not be used; nothing was started.
    #[error("{}: {source}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        source: sessmesh_net::Error,
    },
    /// The transport could not start (the address is taken, or rustls refused
    /// the identity); nothing was started.
    #[error("cannot start the transport: {0}")]
    Transport(#[source] sessmesh_net::Error),
    /// The key is longer than [`MAX_KEY_LEN`](sessmesh_core::MAX_KEY_LEN)
    /// bytes; nothing was sent.
    #[error("key is {len} bytes, over the {max}-byte limit")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Fewer copies than the call's level counts acknowledged a write:
    /// replicas did not answer in time, or fewer are up than the level
    /// counts (levels count against the replication factor, not against
    /// the replicas that happen to be reachable). The write is **not**
    /// rolled back: the replicas that took it keep it, hints and
    /// anti-entropy spread it to the rest, and a retry is harmless. Use
    /// [`Level::One`](sessmesh_core::Level::One) for writes that must
    /// succeed on any side of a partition.
    #[error(
        "write acknowledged by {acks} of the {needed} copies its level needs; it is kept and spreads to the others when they are back"
    )]
    TooFewAcks {
        /// Replicas that acknowledged.
        acks: usize,
        /// Copies the level needed.
        needed: usize,
    },
    /// Fewer copies than the call's level counts answered a read: replicas
    /// did not answer in time, or fewer are up than the level counts.
    #[error("read answered by {answers} of the {needed} copies its level needs")]
    TooFewAnswers {
        /// Replicas that answered.
        answers: usize,
        /// Copies the level needed.
        needed: usize,
    },
    /// This peer's clock runs further ahead of its peers' than they accept
    /// (`max_clock_drift_ms`), so it stamps no writes until the clock is
    /// corrected (or real time catches up with the stamps it issued before
    /// it noticed). Nothing was stored. Fix the clock (NTP); other peers
    /// take writes meanwhile.
    #[error(
        "clock drift: this peer's clock runs {ahead_ms} ms ahead of its peers, over max_clock_drift_ms = {max_drift_ms}; it takes no writes until the clock is corrected"
    )]
    ClockAhead {
        /// How far ahead of a majority of its peers, ms.
        ahead_ms: u64,
        /// The bound, ms.
        max_drift_ms: u64,
    },
    /// The write would add to what this peer holds, and it is over its
    /// memory bound (`max_memory_bytes`, under the `noeviction` policy).
    /// Deletes, deadlines and reads still go through.
    #[error(
        "out of memory: this peer uses {used} bytes, over its bound of {max}; it takes no writes that add until it is below"
    )]
    OutOfMemory {
        /// What the peer uses, bytes.
        used: usize,
        /// Its bound.
        max: usize,
    },
    /// A consensus operation could not be decided: too few of the key's
    /// replicas answered, or other coordinators' rounds kept pre-empting
    /// it. Retry it, unless `maybe_applied`: then its write was proposed and
    /// may still take effect, and a retry could apply it twice (read the
    /// key first).
    #[error("{reason}; {}", if *maybe_applied { "it may still take effect" } else { "nothing was written" })]
    Undecided {
        /// Why.
        reason: String,
        /// Whether its write may still take effect.
        maybe_applied: bool,
    },
    /// The lease is no longer its holder's: it ran out, or was ended.
    #[error("lease {token} on {key:?} is no longer held")]
    NotHeld {
        /// The lock's key.
        key: bytes::Bytes,
        /// The lease's token.
        token: u64,
    },
    /// A lock was not free within the wait.
    #[error("lock {key:?} still held by another after {waited_ms} ms")]
    LockTimeout {
        /// The lock's key.
        key: bytes::Bytes,
        /// How long it waited, ms.
        waited_ms: u64,
    },
    /// The peer refused the call before sending anything (for example, the
    /// key's partition has no live replica).
    #[error("refused: {0}")]
    Refused(String),
    /// The peer has shut down (or its task ended); nothing was done.
    #[error("the peer has shut down")]
    Stopped,
    /// A graceful shutdown ran out of time before every partition this peer
    /// held was handed to its new owners. The peer has left anyway; the
    /// partitions' other replicas still hold whatever reached them, and
    /// writes only this peer held are lost.
    #[error("shut down with {partitions} partitions not yet handed off")]
    HandoffIncomplete {
        /// Partitions whose data was not acknowledged by their new owners.
        partitions: usize,
    },
}
