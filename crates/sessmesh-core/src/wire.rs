//! The wire format: one versioned message enum, encoded with postcard.
//!
//! Every message travels in an envelope `(version: u16, cluster: ClusterId,
//! message: Message)`. On a stream, envelopes are framed with a 4-byte
//! little-endian length prefix. Decoding checks, in this order, before it
//! decodes the message body:
//!
//! 1. the frame length against the configured limit (before allocating),
//! 2. the protocol version ([`PROTOCOL_VERSION`]),
//! 3. the cluster id, so two clusters sharing a network never merge data.
//!
//! A body that does not decode, or is followed by stray bytes, is refused as a
//! whole: the caller closes that stream and keeps serving others.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::Error;
use crate::clock::Stamp;
use crate::consensus::{AcceptorState, Ballot, Proposal, Standings};
use crate::digest::KeyDigest;
use crate::partition::PartitionId;
use crate::session::{Session, Write};
use crate::store::{Entry, KeyRange};

/// The protocol version this build speaks. Version 2 added `ReadDigest`
/// and `DigestReply`; version 3 added `ClockProbe`, `ClockReply` and
/// `StampRefused`.
pub const PROTOCOL_VERSION: u16 = 9;

/// Bytes of the length prefix in front of each framed envelope.
pub const FRAME_PREFIX_LEN: usize = 4;

/// Identifies a cluster; peers refuse messages from another cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// The id of the cluster named `name` (its XXH3-64 hash).
    pub fn from_name(name: &str) -> Self {
        ClusterId(xxh3_64(name.as_bytes()))
    }
}

/// Every message peers exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Dialer to acceptor, first on a new connection. Under TLS 1.3 the
    /// acceptor checks the dialer's certificate after the dialer's handshake
    /// has finished, so a connection is trusted only once this is answered.
    Hello,
    /// Acceptor to dialer: the connection is accepted.
    Welcome,
    /// Membership gossip; the bytes are the membership layer's own encoding.
    Gossip(Bytes),
    /// Coordinator to replica: apply this stamped write.
    Write {
        /// Echoed in the acknowledgement.
        request: u64,
        /// The session's key.
        key: Bytes,
        /// The change.
        write: Write,
        /// The coordinator's stamp for it.
        stamp: Stamp,
    },
    /// Replica to coordinator: the write `request` is applied.
    WriteAck {
        /// The acknowledged request.
        request: u64,
    },
    /// Coordinator to replica: send your state of `key`.
    Read {
        /// Echoed in the reply.
        request: u64,
        /// The session's key.
        key: Bytes,
    },
    /// Replica to coordinator: the state of the key read, if it holds any.
    ReadReply {
        /// The request answered.
        request: u64,
        /// The full state, tombstones included.
        session: Option<Session>,
    },
    /// Sessions of a partition the sender no longer replicates, for a
    /// current replica to merge and acknowledge (with `HandoffAck`), after
    /// which the sender may drop its copy.
    Handoff {
        /// Echoed in the acknowledgement.
        request: u64,
        /// The partition.
        partition: PartitionId,
        /// Its sessions, or a batch of them.
        entries: Vec<Entry>,
    },
    /// Replica to the node handing off: the batch `request` is merged.
    HandoffAck {
        /// The acknowledged batch.
        request: u64,
    },
    /// A write the receiving replica missed, replayed from a hint: apply it
    /// and acknowledge with `HintAck`, after which the sender drops the hint.
    HintReplay {
        /// Echoed in the acknowledgement.
        request: u64,
        /// The session's key.
        key: Bytes,
        /// The change.
        write: Write,
        /// Its original stamp.
        stamp: Stamp,
    },
    /// Replica to the node replaying a hint: the replay `request` is applied.
    HintAck {
        /// The acknowledged replay.
        request: u64,
    },
    /// Sessions to merge: read repair, hinted handoff and anti-entropy.
    Merge {
        /// The sessions.
        entries: Vec<Entry>,
    },
    /// Anti-entropy step 1: the digest roots of partitions both peers replicate.
    DigestRoots {
        /// `(partition, root)` pairs.
        roots: Vec<(PartitionId, u64)>,
    },
    /// Anti-entropy step 2: the buckets of a partition whose root differed.
    DigestBuckets {
        /// The partition.
        partition: PartitionId,
        /// Its bucket sums.
        buckets: Vec<u64>,
    },
    /// Anti-entropy step 3: the key digests of a bucket that differed.
    DigestKeys {
        /// The partition.
        partition: PartitionId,
        /// The bucket.
        bucket: u8,
        /// Every key in that bucket.
        keys: Vec<KeyDigest>,
    },
    /// Anti-entropy step 4: send the sessions with these key hashes.
    FetchKeys {
        /// The partition.
        partition: PartitionId,
        /// The key hashes wanted.
        key_hashes: Vec<u64>,
    },
    /// Coordinator to replica: send the fingerprint of your state of `key`
    /// (a read whose coordinator holds a copy to compare it with).
    ReadDigest {
        /// Echoed in the reply.
        request: u64,
        /// The session's key.
        key: Bytes,
    },
    /// Replica to coordinator: the fingerprint of the key's state (the one
    /// anti-entropy compares: a hash of the key and every stamp), if it
    /// holds any.
    DigestReply {
        /// The request answered.
        request: u64,
        /// The fingerprint, tombstones included; `None` when absent.
        fingerprint: Option<u64>,
    },
    /// Consensus phase 1, coordinator to replica: promise `ballot` for
    /// consensus instance `instance`, and report the state of `keys` (see
    /// [`crate::consensus`]).
    Prepare {
        /// Echoed in the answer.
        request: u64,
        /// The instance ([`crate::consensus::instance_of`]).
        instance: Bytes,
        /// The keys the operation reads, all of the instance.
        keys: Vec<Bytes>,
        /// The ballot.
        ballot: Ballot,
        /// The coordinator's view of the key's replica set
        /// ([`crate::consensus::view_of`]): a replica that sees another
        /// answers `Moving`.
        view: u64,
    },
    /// Replica to coordinator: `ballot` promised, with what the replica
    /// accepted and has not seen committed, the ballot of the newest
    /// proposal it saw committed, and its state of each key asked about.
    Promise {
        /// The request answered.
        request: u64,
        /// The proposal it accepted and has not seen committed.
        accepted: Option<Proposal>,
        /// The ballot of the newest proposal it saw committed.
        committed: Ballot,
        /// That proposal's write stamp.
        committed_stamp: Stamp,
        /// The write stamps of the last proposals it saw committed.
        recent: Vec<Stamp>,
        /// Its state of each key, in the order the prepare named them,
        /// tombstones included.
        sessions: Vec<Option<Session>>,
    },
    /// Consensus phase 2, coordinator to replica: accept this proposal.
    Propose {
        /// Echoed in the answer.
        request: u64,
        /// The instance.
        instance: Bytes,
        /// The proposal.
        proposal: Proposal,
        /// The coordinator's view of the key's replica set, as in `Prepare`.
        view: u64,
    },
    /// Replica to coordinator: the proposal `request` is accepted.
    Accepted {
        /// The request answered.
        request: u64,
    },
    /// Replica to coordinator: the prepare or proposal `request` is refused,
    /// for the replica promised a newer ballot.
    Rejected {
        /// The request answered.
        request: u64,
        /// The ballot it promised.
        promised: Ballot,
    },
    /// Replica to coordinator: the prepare or proposal `request` is refused,
    /// for the replica sees another replica set for the key (the membership
    /// is changing, and views of it differ until the change has spread).
    Moving {
        /// The request answered.
        request: u64,
    },
    /// A replica that lost its memory (every node when it starts) or gained
    /// partitions, to the partitions' other replicas: send what you keep of
    /// their keys' consensus. It acts as an acceptor for a partition only
    /// once enough of them answered.
    SyncAcceptors {
        /// The partitions, each with the asker's view of its replica set:
        /// only a node that sees the same set answers for it.
        partitions: Vec<(PartitionId, u64)>,
    },
    /// Answers `SyncAcceptors`: the consensus state of every instance of
    /// the partitions whose replica set the two nodes see alike, with this
    /// node's state of every key the instances decide.
    AcceptorStates {
        /// The partitions answered for, and this node's standing in each.
        standings: Standings,
        /// Each instance and its consensus state.
        states: Vec<(Bytes, AcceptorState)>,
        /// This node's state of each key of those instances.
        sessions: Vec<(Bytes, Session)>,
    },
    /// Coordinator to replicas: the proposal is chosen; apply its writes
    /// and record it committed.
    Commit {
        /// The request to acknowledge with `Committed`, when the
        /// coordinator waits for it (its own operation's commit).
        request: Option<u64>,
        /// The instance.
        instance: Bytes,
        /// The chosen proposal.
        proposal: Proposal,
    },
    /// Answers a `Commit` that asked: its write is applied here.
    Committed {
        /// The request answered.
        request: u64,
    },
    /// Asks a replica for the keys it stores in a partition (a Redis
    /// layer's `SCAN`, `KEYS`, `DBSIZE`).
    ListKeys {
        /// The request, for the answer.
        request: u64,
        /// The partition.
        partition: PartitionId,
    },
    /// Answers `ListKeys`: the keys a reader sees there now.
    Keys {
        /// The request answered.
        request: u64,
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// Asks a peer for its wall clock, to measure the offset between the
    /// two (see [`crate::peer_clocks`]).
    ClockProbe {
        /// The sender's wall clock when it sent this, ms; echoed back.
        sent_ms: u64,
    },
    /// Answers a `ClockProbe`.
    ClockReply {
        /// The probe's `sent_ms`.
        sent_ms: u64,
        /// The answering peer's wall clock when it answered, ms.
        clock_ms: u64,
    },
    /// Replica to coordinator: the write (or hint replay) `request` carried
    /// a stamp further ahead of this replica's clock than
    /// `max_clock_drift_ms`; it was not applied.
    StampRefused {
        /// The refused request.
        request: u64,
        /// The replica's wall clock when it refused, ms.
        clock_ms: u64,
    },
    /// Coordinator to every member: clear every key in `range` written
    /// before `stamp` (a Redis `FLUSHDB`), and keep the clear.
    Clear {
        /// The request, for the acknowledgement.
        request: u64,
        /// The keys cleared.
        range: KeyRange,
        /// The clear's stamp.
        stamp: Stamp,
    },
    /// Answers `Clear`: applied and kept.
    ClearAck {
        /// The request answered.
        request: u64,
    },
    /// Anti-entropy: the clears the sender keeps, for a peer that may have
    /// missed one.
    Clears {
        /// Each clear's range and stamp.
        clears: Vec<(KeyRange, Stamp)>,
    },
    /// Every replica acknowledged these evictions: their tombstones may go
    /// (see `node/eviction.rs`), each only if nothing was stored since.
    ForgetEvicted {
        /// Each evicted session's key and its eviction's stamp.
        evictions: Vec<(Bytes, Stamp)>,
    },
}

/// Why bytes from a peer were refused. Nothing was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is longer than the configured limit; refused before allocating.
    #[error("frame of {len} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The bytes end in the middle of a message.
    #[error("message is truncated")]
    Truncated,
    /// Another protocol version.
    #[error("protocol version {got} is not supported (this node speaks version {supported})")]
    Version {
        /// The version the peer sent.
        got: u16,
        /// The version this node speaks.
        supported: u16,
    },
    /// Another cluster.
    #[error("message is from cluster {got:#018x}, this node is in cluster {expected:#018x}")]
    ForeignCluster {
        /// The peer's cluster id.
        got: u64,
        /// This node's cluster id.
        expected: u64,
    },
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(postcard::Error),
    /// Bytes follow a complete message.
    #[error("{0} stray bytes after the message")]
    TrailingBytes(usize),
}

fn decode_error(err: postcard::Error) -> DecodeError {
    match err {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
        other => DecodeError::Malformed(other),
    }
}

/// Encodes and decodes envelopes for one cluster, with a size limit.
#[derive(Clone, Debug)]
pub struct Codec {
    cluster: ClusterId,
    max_frame_bytes: usize,
}

impl Codec {
    /// A codec for `cluster` that refuses envelopes over `max_frame_bytes`.
    pub fn new(cluster: ClusterId, max_frame_bytes: usize) -> Self {
        Codec {
            cluster,
            max_frame_bytes,
        }
    }

    /// The cluster this codec speaks for.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// Appends `message` in its envelope to `out`.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] when the envelope is over the limit the peer
    /// would enforce; `out` is then as it was.
    pub fn encode(&self, message: &Message, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        // Most messages fit in this; it saves postcard growing the buffer from empty.
        out.reserve(512);
        let encoded = postcard::to_extend(
            &(PROTOCOL_VERSION, self.cluster, message),
            std::mem::take(out),
        );
        // Serializing into a Vec cannot fail: every type here has a serde form.
        *out = encoded.expect("messages always serialize");
        let len = out.len() - start;
        if len > self.max_frame_bytes {
            out.truncate(start);
            return Err(Error::MessageTooLarge {
                len,
                limit: self.max_frame_bytes,
            });
        }
        Ok(())
    }

    /// The largest gossip payload whose envelope fits in `datagram_bytes`.
    pub fn max_gossip_payload(&self, datagram_bytes: usize) -> Option<usize> {
        let mut empty = Vec::new();
        self.encode(&Message::Gossip(Bytes::new()), &mut empty)
            .ok()?;
        // The empty payload's length takes one byte; a payload of n bytes takes varint_len(n).
        let fixed = empty.len() - 1;
        let varint_len = |n: usize| (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize;
        let mut payload = datagram_bytes.checked_sub(fixed + 1)?;
        while payload > 0 && fixed + varint_len(payload) + payload > datagram_bytes {
            payload -= 1;
        }
        Some(payload)
    }

    /// Appends `message` as a length-prefixed frame to `out`.
    ///
    /// # Errors
    /// As [`Codec::encode`].
    pub fn encode_frame(&self, message: &Message, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_PREFIX_LEN]);
        if let Err(err) = self.encode(message, out) {
            out.truncate(start);
            return Err(err);
        }
        let len = u32::try_from(out.len() - start - FRAME_PREFIX_LEN)
            .expect("the frame limit fits in u32");
        out[start..start + FRAME_PREFIX_LEN].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// The body length a frame prefix announces, checked against the limit, so
    /// a stream reader knows how much to read before allocating for it.
    ///
    /// # Errors
    /// [`DecodeError::TooLarge`].
    pub fn frame_len(&self, prefix: [u8; FRAME_PREFIX_LEN]) -> Result<usize, DecodeError> {
        let len = u32::from_le_bytes(prefix) as usize;
        if len > self.max_frame_bytes {
            return Err(DecodeError::TooLarge {
                len,
                limit: self.max_frame_bytes,
            });
        }
        Ok(len)
    }

    /// Decodes one envelope that fills `bytes` exactly.
    ///
    /// # Errors
    /// Any [`DecodeError`]; see the [module docs](self) for the order of checks.
    pub fn decode(&self, bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > self.max_frame_bytes {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit: self.max_frame_bytes,
            });
        }
        let (version, rest): (u16, _) = postcard::take_from_bytes(bytes).map_err(decode_error)?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::Version {
                got: version,
                supported: PROTOCOL_VERSION,
            });
        }
        let (cluster, rest): (ClusterId, _) =
            postcard::take_from_bytes(rest).map_err(decode_error)?;
        if cluster != self.cluster {
            return Err(DecodeError::ForeignCluster {
                got: cluster.0,
                expected: self.cluster.0,
            });
        }
        let (message, rest) = postcard::take_from_bytes(rest).map_err(decode_error)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(message)
    }

    /// Decodes the first frame in `buf`: `Ok(None)` while it is incomplete,
    /// otherwise the message and how many bytes of `buf` it used.
    ///
    /// # Errors
    /// Any [`DecodeError`]; an oversized prefix is refused before the body arrives.
    pub fn decode_frame(&self, buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
        let Some(prefix) = buf.first_chunk::<FRAME_PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = self.frame_len(*prefix)?;
        let Some(body) = buf.get(FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + len) else {
            return Ok(None);
        };
        Ok(Some((self.decode(body)?, FRAME_PREFIX_LEN + len)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::digest::KeyDigest;
    use crate::session::Expiry;
    use crate::testing::{arb_session, stamp};

    const LIMIT: usize = 1 << 20;

    fn codec() -> Codec {
        Codec::new(ClusterId::from_name("test"), LIMIT)
    }

    fn session() -> Session {
        let mut s = Session::from_write(
            &Write::Put {
                fields: vec![(Bytes::from_static(b"user"), Bytes::from_static(b"ada"))],
                expiry: Expiry {
                    expires_at_ms: Some(9_000),
                    max_idle_ms: Some(1_000),
                },
            },
            stamp(1_000, 1),
        );
        s.apply(
            &Write::DeleteField {
                name: Bytes::from_static(b"cart"),
            },
            stamp(1_001, 2),
        );
        s
    }

    /// One of every message kind: the round-trip test covers each.
    fn every_message() -> Vec<Message> {
        let key = Bytes::from_static(b"session:1");
        vec![
            Message::Hello,
            Message::Welcome,
            Message::Gossip(Bytes::from_static(b"\x00\x01swim")),
            Message::Write {
                request: 7,
                key: key.clone(),
                write: Write::PutField {
                    name: Bytes::from_static(b"f"),
                    value: Bytes::from_static(b"v"),
                },
                stamp: stamp(5, 3),
            },
            Message::Write {
                request: 8,
                key: key.clone(),
                write: Write::Delete,
                stamp: stamp(6, 3),
            },
            Message::Write {
                request: 9,
                key: key.clone(),
                write: Write::Touch,
                stamp: stamp(7, 3),
            },
            Message::WriteAck { request: u64::MAX },
            Message::Read {
                request: 1,
                key: key.clone(),
            },
            Message::ReadReply {
                request: 1,
                session: Some(session()),
            },
            Message::ReadReply {
                request: 2,
                session: None,
            },
            Message::ReadDigest {
                request: 3,
                key: key.clone(),
            },
            Message::DigestReply {
                request: 3,
                fingerprint: Some(u64::MAX),
            },
            Message::DigestReply {
                request: 4,
                fingerprint: None,
            },
            Message::Merge {
                entries: vec![Entry {
                    key: key.clone(),
                    session: session(),
                }],
            },
            Message::Handoff {
                request: 4,
                partition: PartitionId(9),
                entries: vec![Entry {
                    key,
                    session: session(),
                }],
            },
            Message::HandoffAck { request: 4 },
            Message::HintReplay {
                request: 5,
                key: Bytes::from_static(b"hinted"),
                write: Write::Touch,
                stamp: stamp(8, 3),
            },
            Message::HintAck { request: 5 },
            Message::Clear {
                request: 10,
                range: KeyRange {
                    prefix: Bytes::from_static(b"\0db1\0"),
                    except: vec![Bytes::from_static(b"\0db")],
                },
                stamp: stamp(9, 2),
            },
            Message::ClearAck { request: 10 },
            Message::ForgetEvicted {
                evictions: vec![(Bytes::from_static(b"session:2"), stamp(9, 2))],
            },
            Message::Clears {
                clears: vec![(
                    KeyRange {
                        prefix: Bytes::new(),
                        except: Vec::new(),
                    },
                    stamp(9, 2),
                )],
            },
            Message::Prepare {
                request: 6,
                instance: Bytes::from_static(b"{u}"),
                keys: vec![Bytes::from_static(b"{u}:a"), Bytes::from_static(b"{u}:b")],
                ballot: stamp(9, 3),
                view: 0xfeed,
            },
            Message::Promise {
                request: 6,
                accepted: Some(Proposal {
                    ballot: stamp(8, 2),
                    writes: vec![(Bytes::from_static(b"lock"), Write::Delete)],
                    stamp: stamp(8, 2),
                    recent: Vec::new(),
                }),
                committed: stamp(7, 1),
                committed_stamp: stamp(7, 1),
                recent: vec![stamp(6, 2), stamp(7, 1)],
                sessions: vec![Some(session()), None],
            },
            Message::Propose {
                request: 7,
                instance: Bytes::from_static(b"lock"),
                proposal: Proposal {
                    ballot: stamp(9, 3),
                    writes: vec![(Bytes::from_static(b"lock"), Write::Touch)],
                    stamp: stamp(10, 3),
                    recent: Vec::new(),
                },
                view: 0xfeed,
            },
            Message::Accepted { request: 7 },
            Message::Moving { request: 7 },
            Message::SyncAcceptors {
                partitions: vec![(PartitionId(1), 0xfeed), (PartitionId(2), 0xbeef)],
            },
            Message::AcceptorStates {
                standings: Standings {
                    sets: vec![vec!["node-1".into(), "node-2".into()]],
                    gone: vec!["node-2".into()],
                    partitions: vec![crate::consensus::AcceptorStanding {
                        partition: PartitionId(1),
                        view: 0xfeed,
                        ready: true,
                        previous: vec![0],
                    }],
                },
                states: vec![(Bytes::from_static(b"lock"), AcceptorState::default())],
                sessions: vec![(Bytes::from_static(b"lock"), session())],
            },
            Message::Rejected {
                request: 7,
                promised: stamp(11, 4),
            },
            Message::Committed { request: 7 },
            Message::ListKeys {
                request: 11,
                partition: PartitionId(3),
            },
            Message::Keys {
                request: 11,
                keys: vec![Bytes::from_static(b"k")],
            },
            Message::Commit {
                request: Some(7),
                instance: Bytes::from_static(b"lock"),
                proposal: Proposal {
                    ballot: stamp(9, 3),
                    writes: vec![(Bytes::from_static(b"lock"), Write::Touch)],
                    stamp: stamp(10, 3),
                    recent: Vec::new(),
                },
            },
            Message::DigestRoots {
                roots: vec![(PartitionId(0), 1), (PartitionId(255), u64::MAX)],
            },
            Message::DigestBuckets {
                partition: PartitionId(3),
                buckets: vec![0; 64],
            },
            Message::DigestKeys {
                partition: PartitionId(3),
                bucket: 63,
                keys: vec![KeyDigest {
                    key_hash: 1,
                    fingerprint: 2,
                }],
            },
            Message::FetchKeys {
                partition: PartitionId(3),
                key_hashes: vec![1, 2, 3],
            },
            Message::ClockProbe { sent_ms: 1 },
            Message::ClockReply {
                sent_ms: 1,
                clock_ms: u64::MAX,
            },
            Message::StampRefused {
                request: 5,
                clock_ms: 1_700_000_000_000,
            },
        ]
    }

    #[test]
    fn every_message_kind_round_trips() {
        let codec = codec();
        for message in every_message() {
            let mut bytes = Vec::new();
            codec.encode(&message, &mut bytes).expect("encodes");
            assert_eq!(codec.decode(&bytes), Ok(message.clone()));
            let mut frame = vec![0xAA];
            codec.encode_frame(&message, &mut frame).expect("encodes");
            assert_eq!(
                codec.decode_frame(&frame[1..]),
                Ok(Some((message, frame.len() - 1)))
            );
        }
    }

    #[test]
    fn the_gossip_payload_limit_is_exact() {
        let codec = codec();
        for datagram in [20, 100, 127, 128, 129, 1_200, 1_452, 20_000] {
            let max = codec.max_gossip_payload(datagram).unwrap();
            let size = |n: usize| {
                let mut out = Vec::new();
                codec
                    .encode(&Message::Gossip(Bytes::from(vec![0; n])), &mut out)
                    .unwrap();
                out.len()
            };
            assert!(size(max) <= datagram, "{max} in {datagram}");
            assert!(
                size(max + 1) > datagram,
                "{} would fit in {datagram} too",
                max + 1
            );
        }
        assert_eq!(codec.max_gossip_payload(3), None);
    }

    #[test]
    fn refuses_another_version() {
        let next = PROTOCOL_VERSION + 1;
        let mut bytes =
            postcard::to_allocvec(&(next, codec().cluster(), &Message::WriteAck { request: 1 }))
                .unwrap();
        assert_eq!(
            codec().decode(&bytes),
            Err(DecodeError::Version {
                got: next,
                supported: PROTOCOL_VERSION
            })
        );
        // The version is checked before the body, so an unknown body in a future version is named as such.
        bytes.truncate(3);
        bytes.push(0xFF);
        assert_eq!(
            codec().decode(&bytes),
            Err(DecodeError::Version {
                got: next,
                supported: PROTOCOL_VERSION
            })
        );
    }

    #[test]
    fn refuses_another_cluster_and_names_both() {
        let mut bytes = Vec::new();
        Codec::new(ClusterId(0xBEEF), LIMIT)
            .encode(&Message::WriteAck { request: 1 }, &mut bytes)
            .unwrap();
        let err = codec().decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            DecodeError::ForeignCluster {
                got: 0xBEEF,
                expected: codec().cluster().0
            }
        );
        assert!(err.to_string().contains("0x000000000000beef"), "{err}");
    }

    #[test]
    fn refuses_truncated_input() {
        let codec = codec();
        let mut bytes = Vec::new();
        codec
            .encode(
                &Message::Merge {
                    entries: vec![Entry {
                        key: Bytes::from_static(b"k"),
                        session: session(),
                    }],
                },
                &mut bytes,
            )
            .unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(
                codec.decode(&bytes[..cut]),
                Err(DecodeError::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn refuses_stray_bytes() {
        let mut bytes = Vec::new();
        codec()
            .encode(&Message::WriteAck { request: 1 }, &mut bytes)
            .unwrap();
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(codec().decode(&bytes), Err(DecodeError::TrailingBytes(2)));
    }

    #[test]
    fn refuses_an_oversized_frame_before_its_body_arrives() {
        let codec = Codec::new(ClusterId(1), 2048);
        // Only the prefix has arrived: a 4 GiB announcement is refused now, not buffered.
        assert_eq!(
            codec.decode_frame(&u32::MAX.to_le_bytes()),
            Err(DecodeError::TooLarge {
                len: u32::MAX as usize,
                limit: 2048
            })
        );
        assert_eq!(
            codec.frame_len(2049u32.to_le_bytes()),
            Err(DecodeError::TooLarge {
                len: 2049,
                limit: 2048
            })
        );
        assert_eq!(codec.frame_len(2048u32.to_le_bytes()), Ok(2048));
        assert_eq!(
            codec.decode_frame(&[1, 0]),
            Ok(None),
            "an incomplete prefix waits"
        );
        assert_eq!(
            codec.decode_frame(&[9, 0, 0, 0, 1]),
            Ok(None),
            "an incomplete body waits"
        );
        assert!(matches!(
            codec.decode(&[0; 2049]),
            Err(DecodeError::TooLarge { len: 2049, .. })
        ));
    }

    #[test]
    fn a_sender_refuses_to_encode_what_its_peer_would_refuse() {
        let codec = Codec::new(ClusterId(1), 1024);
        let big = Message::Gossip(Bytes::from(vec![0; 2000]));
        let mut out = vec![1, 2, 3];
        let err = codec.encode_frame(&big, &mut out).unwrap_err();
        assert!(
            matches!(err, Error::MessageTooLarge { limit: 1024, .. }),
            "{err}"
        );
        assert_eq!(out, vec![1, 2, 3], "nothing is left half-written");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = codec().decode(&bytes);
            let _ = codec().decode_frame(&bytes);
        }

        /// Junk after a valid envelope prefix reaches the body decoder, where
        /// the most code runs.
        #[test]
        fn decoding_junk_bodies_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = postcard::to_allocvec(&(PROTOCOL_VERSION, codec().cluster())).unwrap();
            bytes.extend_from_slice(&body);
            let _ = codec().decode(&bytes);
        }

        #[test]
        fn merge_messages_round_trip(key in prop::collection::vec(any::<u8>(), 0..64), session in arb_session()) {
            let message = Message::Merge { entries: vec![Entry { key: key.into(), session }] };
            let mut bytes = Vec::new();
            codec().encode(&message, &mut bytes).unwrap();
            prop_assert_eq!(codec().decode(&bytes), Ok(message));
        }
    }
}
