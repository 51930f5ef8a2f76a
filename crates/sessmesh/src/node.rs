//! The handle applications hold: a running peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sessmesh_core::{
    EvictionPolicy, Expiry, KeyChange, KeyRange, Level, MAX_KEY_LEN, Member, NodeEvent, Outcome,
    Session, SessionData, Write,
};
#[cfg(feature = "test-support")]
use sessmesh_net::LinkFaults;
use sessmesh_net::{Incoming, PeerBytes, Transport, TransportObserver, TransportStats};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::Error;
use crate::builder::NodeBuilder;
use crate::driver::{self, Command, now_ms};
use crate::local_writes::LocalWrites;
use crate::memory_probe::MemoryProbe;

mod at;
mod atomic;

pub use atomic::Lease;

use crate::status::Status;
pub use at::At;

/// A running peer: cheap to clone, and every clone talks to the same peer.
///
/// Made by [`Node::builder`] (or [`spawn`] for a transport of your own). The
/// peer runs as one task on the tokio runtime that started it, and stops
/// after [`shutdown`](Node::shutdown) or once every clone is dropped (the
/// latter without handing anything off: prefer `shutdown`).
///
/// Calls use the default levels the builder set (both [`Level::Quorum`]
/// unless changed, which gives read-your-writes across peers); override them
/// per call with [`at`](Node::at). A read that one copy answers (level
/// [`Level::One`], or any level when the key has a single replica) of a key
/// whose partition this peer replicates is answered from the local store on
/// the caller's thread, without a hop through the task.
#[derive(Clone, Debug)]
pub struct Node {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NodeEvent>,
    /// Writes (and reads) on the caller's thread.
    local: Arc<LocalWrites>,
    me: Member,
    read_level: Level,
    write_level: Level,
    shutdown_timeout: Duration,
    #[cfg(feature = "test-support")]
    faults: Option<Arc<LinkFaults>>,
    transport: Option<TransportObserver>,
}

/// A write handed to the peer by [`Node::submit`].
#[derive(Debug)]
pub struct Submitted(Submission);

#[derive(Debug)]
enum Submission {
    /// Coordinated by the peer's task.
    Queued(oneshot::Receiver<Outcome>),
    /// Stored already: this peer alone replicates the key.
    Done(Outcome),
}

impl Submitted {
    /// Waits for the write's outcome.
    ///
    /// # Errors
    /// [`Error::TooFewAcks`] (the write is kept), [`Error::Refused`],
    /// [`Error::Stopped`].
    pub async fn outcome(self) -> Result<(), Error> {
        let outcome = match self.0 {
            Submission::Queued(rx) => rx.await.map_err(|_| Error::Stopped)?,
            Submission::Done(outcome) => outcome,
        };
        match outcome {
            Outcome::Written { .. } => Ok(()),
            other => Err(failure(other)),
        }
    }
}

/// What [`spawn`] needs besides the core node and its transport.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) read_level: Level,
    pub(crate) write_level: Level,
    pub(crate) shutdown_timeout: Duration,
    #[cfg(feature = "test-support")]
    pub(crate) faults: Option<Arc<LinkFaults>>,
    pub(crate) transport: Option<TransportObserver>,
    pub(crate) memory_probe: Option<MemoryProbe>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            read_level: Level::Quorum,
            write_level: Level::Quorum,
            shutdown_timeout: Duration::from_secs(30),
            #[cfg(feature = "test-support")]
            faults: None,
            transport: None,
            memory_probe: None,
        }
    }
}

/// Starts a peer around a core node and a transport of your choosing (the
/// in-memory twin, quinn over a simulated network, ...) on the current tokio
/// runtime, joining the cluster through `seeds`. Most applications want
/// [`Node::builder`], which sets up QUIC with TLS.
pub fn spawn<T: Transport>(
    node: sessmesh_core::Node,
    transport: T,
    incoming: mpsc::Receiver<Incoming>,
    seeds: Vec<SocketAddr>,
) -> Node {
    spawn_with(node, transport, incoming, seeds, Options::default())
}

pub(crate) fn spawn_with<T: Transport>(
    node: sessmesh_core::Node,
    transport: T,
    incoming: mpsc::Receiver<Incoming>,
    seeds: Vec<SocketAddr>,
    options: Options,
) -> Node {
    let local = LocalWrites::new(node.store().reader(), node.clock());
    let me = node.me().clone();
    let channels = driver::start(
        node,
        transport,
        incoming,
        seeds,
        Arc::clone(&local),
        options.memory_probe,
    );
    Node {
        inner: Arc::new(Inner {
            commands: channels.commands,
            events: channels.events,
            local,
            me,
            read_level: options.read_level,
            write_level: options.write_level,
            shutdown_timeout: options.shutdown_timeout,
            #[cfg(feature = "test-support")]
            faults: options.faults,
            transport: options.transport,
        }),
    }
}

fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLong {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

fn millis_since_epoch(at: SystemTime) -> u64 {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Node {
    /// Settings for a new peer; see [`NodeBuilder`].
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// Calls at `level` instead of the defaults:
    /// `node.at(Level::All).put_field(..)`.
    pub fn at(&self, level: Level) -> At<'_> {
        At { node: self, level }
    }

    /// This peer's identity.
    pub fn me(&self) -> &Member {
        &self.inner.me
    }

    /// The session under `key`, at the default read level; `None` when
    /// there is none (never written, deleted, or expired).
    ///
    /// # Errors
    /// See [`Error`]: [`Error::TooFewAnswers`], [`Error::KeyTooLong`], [`Error::Stopped`].
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<SessionData>, Error> {
        self.at(self.inner.read_level).get(key).await
    }

    /// One field of the session under `key`, at the default read level.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_field(
        &self,
        key: impl Into<Bytes>,
        name: impl AsRef<[u8]>,
    ) -> Result<Option<Bytes>, Error> {
        self.at(self.inner.read_level).get_field(key, name).await
    }

    /// Replaces the whole session under `key` with `fields` and `expiry`,
    /// at the default write level.
    ///
    /// # Errors
    /// See [`Error`]: [`Error::TooFewAcks`] (the write is kept), [`Error::KeyTooLong`], ...
    pub async fn put<N, V>(
        &self,
        key: impl Into<Bytes>,
        fields: impl IntoIterator<Item = (N, V)>,
        expiry: Expiry,
    ) -> Result<(), Error>
    where
        N: Into<Bytes>,
        V: Into<Bytes>,
    {
        self.at(self.inner.write_level)
            .put(key, fields, expiry)
            .await
    }

    /// Sets one field of the session under `key`, keeping the others; a
    /// concurrent write of another field on another peer survives too.
    ///
    /// # Errors
    /// As [`put`](Self::put).
    pub async fn put_field(
        &self,
        key: impl Into<Bytes>,
        name: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), Error> {
        self.at(self.inner.write_level)
            .put_field(key, name, value)
            .await
    }

    /// Deletes one field of the session under `key`.
    ///
    /// # Errors
    /// As [`put`](Self::put).
    pub async fn delete_field(
        &self,
        key: impl Into<Bytes>,
        name: impl Into<Bytes>,
    ) -> Result<(), Error> {
        self.at(self.inner.write_level)
            .delete_field(key, name)
            .await
    }

    /// Deletes the session under `key` (logout): nothing written to it
    /// before comes back, on any peer, after any partition heals. The
    /// delete is written whether or not this peer sees the session, so a
    /// logout through a peer cut off from where the session was created
    /// still holds once the partition heals. Returns whether a live
    /// session was there, as the read that precedes the delete saw it.
    ///
    /// # Errors
    /// As [`put`](Self::put). On [`Error::TooFewAcks`] the delete is kept
    /// and spreads as any write does.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool, Error> {
        self.at(self.inner.write_level).delete(key).await
    }

    /// Deletes every session whose key is in `range` (a Redis `FLUSHDB`),
    /// on every peer: one stamped clear, kept for the tombstone grace
    /// period, that hides every session in the range written before it,
    /// wherever that session comes from later (a peer that missed the
    /// clear, a hint, anti-entropy after a partition heals). Sessions
    /// written after it stay. Answers once every active member holds it.
    ///
    /// # Errors
    /// [`Error::TooFewAcks`] when some members did not acknowledge it
    /// within the request timeout: it is kept and reaches them with the
    /// next anti-entropy rounds. [`Error::ClockAhead`] as for writes.
    pub async fn clear(&self, range: KeyRange) -> Result<(), Error> {
        match self.ask(|reply| Command::Clear(range, reply)).await? {
            Outcome::Written { .. } => Ok(()),
            other => Err(failure(other)),
        }
    }

    /// Marks activity on the session under `key`, restarting its sliding
    /// idle limit (see [`Expiry::max_idle_ms`]).
    ///
    /// # Errors
    /// As [`put`](Self::put).
    pub async fn touch(&self, key: impl Into<Bytes>) -> Result<(), Error> {
        self.at(self.inner.write_level).touch(key).await
    }

    /// Sets (or with `None` clears) the moment the session under `key`
    /// expires.
    ///
    /// # Errors
    /// As [`put`](Self::put).
    pub async fn expire_at(
        &self,
        key: impl Into<Bytes>,
        at: Option<SystemTime>,
    ) -> Result<(), Error> {
        self.at(self.inner.write_level).expire_at(key, at).await
    }

    /// Sets (or with `None` clears) the sliding idle limit of the session
    /// under `key`: it expires once that long passes without a write or
    /// [`touch`](Self::touch).
    ///
    /// # Errors
    /// As [`put`](Self::put).
    pub async fn set_max_idle(
        &self,
        key: impl Into<Bytes>,
        idle: Option<Duration>,
    ) -> Result<(), Error> {
        self.at(self.inner.write_level)
            .set_max_idle(key, idle)
            .await
    }

    async fn ask<R>(
        &self,
        command: impl FnOnce(oneshot::Sender<R>) -> Command,
    ) -> Result<R, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(command(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// This peer's view of itself and the cluster.
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn status(&self) -> Result<Status, Error> {
        self.ask(Command::Status).await
    }

    /// Sets this peer's memory bound, bytes (0: none): over it, the
    /// eviction policy evicts sessions, or under `noeviction` writes that
    /// add are refused with [`Error::OutOfMemory`].
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn set_max_memory(&self, bytes: usize) -> Result<(), Error> {
        self.ask(|reply| Command::SetMaxMemory(bytes, reply)).await
    }

    /// Sets what this peer does over its memory bound (`maxmemory-policy`).
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn set_eviction_policy(&self, policy: EvictionPolicy) -> Result<(), Error> {
        self.ask(|reply| Command::SetEvictionPolicy(policy, reply))
            .await
    }

    /// The members this peer considers active, itself excluded.
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn members(&self) -> Result<Vec<Member>, Error> {
        self.ask(Command::Members).await
    }

    /// Changes to sessions this peer stores, from now on: writes it
    /// coordinated or replicated, merges from repair, deletes and expiries.
    /// A receiver that falls more than 4,096 changes behind gets
    /// [`RecvError::Lagged`](broadcast::error::RecvError::Lagged) and
    /// should re-read what it cares about.
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn watch(&self) -> Result<broadcast::Receiver<KeyChange>, Error> {
        self.ask(Command::Watch).await
    }

    /// Membership and placement events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.events.subscribe()
    }

    /// Leaves the cluster gracefully and stops: announces `Leaving` so the
    /// others stop routing to it, hands every partition it holds to the
    /// partitions' remaining owners, and returns once they all acknowledged
    /// (or the builder's `shutdown_timeout` passed). The peer keeps serving
    /// calls meanwhile. Other clones see [`Error::Stopped`] afterwards.
    ///
    /// # Errors
    /// [`Error::HandoffIncomplete`] when time ran out first (the peer has
    /// left all the same); [`Error::Stopped`] when it had already stopped.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let within = self.inner.shutdown_timeout;
        self.ask(|reply| Command::Shutdown(within, reply)).await?
    }

    /// The QUIC transport's counters of refused input, and the bytes sent
    /// to and received from each peer; `None` for other transports.
    pub fn transport_stats(&self) -> Option<(TransportStats, Vec<PeerBytes>)> {
        let observer = self.inner.transport.as_ref()?;
        Some((observer.stats(), observer.peer_bytes()))
    }

    /// The cluster's partition count.
    pub fn partition_count(&self) -> u32 {
        self.inner.local.reader().partition_count()
    }

    /// The keys of the sessions this peer stores in `partition` that a
    /// reader sees now (read from the local store, without the task).
    pub fn local_keys(&self, partition: u32) -> Vec<Bytes> {
        self.inner
            .local
            .reader()
            .visible_keys(sessmesh_core::PartitionId(partition), now_ms())
    }

    /// Calls `f` with the key of each session this peer stores in
    /// `partition` that a reader sees now, copying none (so counting them
    /// costs no memory); writes to the partition wait while `f` runs.
    pub fn for_each_local_key(&self, partition: u32, f: impl FnMut(&[u8])) {
        self.inner.local.reader().for_each_visible_key(
            sessmesh_core::PartitionId(partition),
            now_ms(),
            f,
        );
    }

    /// The keys of the sessions stored in `partition` that a reader sees
    /// now, wherever the partition is: from this peer's store when it
    /// replicates the partition, otherwise from one of its replicas.
    ///
    /// # Errors
    /// [`Error::TooFewAnswers`] when no replica of it answers in time.
    pub async fn partition_keys(&self, partition: u32) -> Result<Vec<Bytes>, Error> {
        let partition = sessmesh_core::PartitionId(partition);
        match self
            .ask(|reply| Command::PartitionKeys(partition, reply))
            .await?
        {
            Outcome::Keys(keys) => Ok(keys),
            other => Err(failure(other)),
        }
    }

    /// The transport's fault controls, when this peer runs on QUIC: for
    /// tests and demos that cut the network. Only with the `test-support`
    /// feature; production builds carry no fault injection.
    #[cfg(feature = "test-support")]
    pub fn faults(&self) -> Option<&LinkFaults> {
        self.inner.faults.as_deref()
    }

    /// Writes `key`, coordinated by this peer, and answers once `level`
    /// replicas acknowledged or the request timed out: the raw [`Outcome`].
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn write(
        &self,
        key: impl Into<Bytes>,
        write: Write,
        level: Level,
    ) -> Result<Outcome, Error> {
        let key = key.into();
        if let Some(outcome) = self.inner.local.try_write(&key, &write) {
            return Ok(outcome);
        }
        let queued = self.inner.local.queue();
        self.ask(|reply| Command::Write(key, write, level, reply, queued))
            .await
    }

    /// Hands a write to the peer's task and returns as soon as the task has
    /// it, before any replica acknowledged it; [`Submitted::outcome`] waits
    /// for the [`Outcome`]. Writes submitted one after another are applied
    /// in that order, so a caller can have many in flight (a pipeline)
    /// without a round trip each. A read that should see them must wait
    /// for their outcomes first: a local read does not queue behind them.
    ///
    /// # Errors
    /// [`Error::KeyTooLong`], [`Error::Stopped`].
    pub async fn submit(
        &self,
        key: impl Into<Bytes>,
        write: Write,
        level: Level,
    ) -> Result<Submitted, Error> {
        let key = key.into();
        check_key(&key)?;
        if let Some(outcome) = self.inner.local.try_write(&key, &write) {
            return Ok(Submitted(Submission::Done(outcome)));
        }
        let (tx, rx) = oneshot::channel();
        let queued = self.inner.local.queue();
        self.inner
            .commands
            .send(Command::Write(key, write, level, tx, queued))
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(Submitted(Submission::Queued(rx)))
    }

    /// The level writes use unless a call says otherwise.
    pub fn write_level(&self) -> Level {
        self.inner.write_level
    }

    /// Reads `key` from `level` replicas: the raw [`Outcome`], with the
    /// replicated state (tombstones included).
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn read(&self, key: impl Into<Bytes>, level: Level) -> Result<Outcome, Error> {
        let key = key.into();
        self.ask(|reply| Command::Read(key, level, reply)).await
    }

    /// This peer's own copy of `key` (tombstones included), without asking
    /// other replicas: for status and for checking that replicas agree.
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn local_session(&self, key: impl Into<Bytes>) -> Result<Option<Session>, Error> {
        let key = key.into();
        self.ask(|reply| Command::Local(key, reply)).await
    }

    /// The anti-entropy digest root of every partition of this peer's store:
    /// two peers that replicate the same partitions hold the same data when
    /// their roots are equal.
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn digest_roots(&self) -> Result<Vec<u64>, Error> {
        self.ask(Command::Roots).await
    }

    /// The names of the members that replicate `key`, as this peer sees them.
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn replicas_of(&self, key: impl Into<Bytes>) -> Result<Vec<String>, Error> {
        let key = key.into();
        self.ask(|reply| Command::Replicas(key, reply)).await
    }
}

/// The error an outcome other than success stands for.
fn failure(outcome: Outcome) -> Error {
    match outcome {
        Outcome::TooFewAcks { acks, needed } => Error::TooFewAcks { acks, needed },
        Outcome::TooFewAnswers { answers, needed } => Error::TooFewAnswers { answers, needed },
        Outcome::Refused(reason) => Error::Refused(reason),
        Outcome::ClockAhead {
            ahead_ms,
            max_drift_ms,
        } => Error::ClockAhead {
            ahead_ms,
            max_drift_ms,
        },
        Outcome::Undecided {
            reason,
            maybe_applied,
        } => Error::Undecided {
            reason,
            maybe_applied,
        },
        Outcome::OverMemory { used, max } => Error::OutOfMemory { used, max },
        Outcome::Written { .. }
        | Outcome::Read(_)
        | Outcome::Decided(_)
        | Outcome::DecidedGroup(_)
        | Outcome::Keys(_) => Error::Refused(format!("unexpected answer {outcome:?}")),
    }
}
