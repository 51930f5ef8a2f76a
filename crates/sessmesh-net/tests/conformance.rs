//! One conformance suite, run against both transports: QUIC on loopback and
//! the in-memory twin. Each test is written once against [`Net`], and the
//! `conformance!` macro instantiates it for each.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sessmesh_core::{ClusterId, Codec, Message, PartitionId};
use sessmesh_net::mem::MemNetwork;
use sessmesh_net::{
    ClusterCa, Incoming, QuicSettings, QuicTransport, SendError, Transport, TransportConfig,
};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn config() -> TransportConfig {
    TransportConfig {
        max_queue_bytes: 64 << 10,
        max_frame_bytes: 16 << 10,
        ..TransportConfig::default()
    }
}

/// A network the suite can create nodes on and cut links in.
trait Net {
    type T: Transport;
    fn node(&mut self, name: &str) -> (Self::T, mpsc::Receiver<Incoming>);
    fn cut(&self, a: &Self::T, b: &Self::T);
    fn heal(&self, a: &Self::T, b: &Self::T);
    /// An address where no node listens.
    fn nowhere(&self) -> SocketAddr;
}

struct QuicNet {
    ca: ClusterCa,
}

impl QuicNet {
    fn new() -> Self {
        QuicNet {
            ca: ClusterCa::generate("conformance").unwrap(),
        }
    }
}

impl Net for QuicNet {
    type T = QuicTransport;

    fn node(&mut self, name: &str) -> (QuicTransport, mpsc::Receiver<Incoming>) {
        let identity = self
            .ca
            .issue(name, &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let settings = QuicSettings {
            identity,
            ca: self.ca.certificate().clone(),
            cluster: ClusterId::from_name("conformance"),
            config: config(),
        };
        QuicTransport::bind("127.0.0.1:0".parse().unwrap(), settings).unwrap()
    }

    fn cut(&self, a: &QuicTransport, b: &QuicTransport) {
        a.faults().block(b.local_addr());
        b.faults().block(a.local_addr());
    }

    fn heal(&self, a: &QuicTransport, b: &QuicTransport) {
        a.faults().unblock(b.local_addr());
        b.faults().unblock(a.local_addr());
    }

    fn nowhere(&self) -> SocketAddr {
        // A port that was just free: bind, read it, release it.
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }
}

struct MemNet {
    net: MemNetwork,
}

impl MemNet {
    fn new() -> Self {
        MemNet {
            net: MemNetwork::new(7),
        }
    }
}

impl Net for MemNet {
    type T = sessmesh_net::mem::MemTransport;

    fn node(&mut self, name: &str) -> (Self::T, mpsc::Receiver<Incoming>) {
        self.net
            .join(name, ClusterId::from_name("conformance"), config())
    }

    fn cut(&self, a: &Self::T, b: &Self::T) {
        self.net.cut(a.local_addr(), b.local_addr());
    }

    fn heal(&self, a: &Self::T, b: &Self::T) {
        self.net.heal(a.local_addr(), b.local_addr());
    }

    fn nowhere(&self) -> SocketAddr {
        "127.255.255.254:1".parse().unwrap()
    }
}

/// The next incoming item, within [`WAIT`].
async fn next(rx: &mut mpsc::Receiver<Incoming>) -> Incoming {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("something arrives in time")
        .expect("transport open")
}

/// Answers every `Read { request, .. }` with a one-way
/// `ReadReply { request, None }` to the address it came from, as a replica
/// answers a coordinator, and forwards everything else to the returned channel.
fn serve_reads<T: Transport>(
    transport: T,
    mut rx: mpsc::Receiver<Incoming>,
) -> mpsc::Receiver<Incoming> {
    let (tx, out) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            match item {
                Incoming::Message {
                    from,
                    message: Message::Read { request, .. },
                } => {
                    let answer = Message::ReadReply {
                        request,
                        session: None,
                    };
                    transport.send(from.addr, &answer).unwrap();
                }
                other => {
                    if tx.send(other).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    out
}

fn read(request: u64) -> Message {
    Message::Read {
        request,
        key: Bytes::from_static(b"k"),
    }
}

/// The request id of the next answer to arrive, which must come from `peer`.
async fn next_answer(rx: &mut mpsc::Receiver<Incoming>, peer: SocketAddr) -> u64 {
    match next(rx).await {
        Incoming::Message {
            from,
            message: Message::ReadReply { request, .. },
        } => {
            assert_eq!(from.addr, peer, "the answer comes from the peer asked");
            request
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Sends `Read { request }` and waits for its answer: after it, the link is
/// connected both ways.
async fn round_trip<T: Transport>(
    from: &T,
    from_rx: &mut mpsc::Receiver<Incoming>,
    to: SocketAddr,
    request: u64,
) {
    from.send(to, &read(request)).unwrap();
    assert_eq!(next_answer(from_rx, to).await, request);
}

/// The encoded size of `message` as the suite's nodes frame it.
fn frame_len(message: &Message) -> usize {
    let mut frame = Vec::new();
    Codec::new(
        ClusterId::from_name("conformance"),
        config().max_frame_bytes,
    )
    .encode_frame(message, &mut frame)
    .unwrap();
    frame.len()
}

async fn one_way_messages_arrive_in_order_from_the_named_sender(mut net: impl Net) {
    let (a, _a_rx) = net.node("node-a");
    let (b, mut b_rx) = net.node("node-b");
    for request in 0..2_000 {
        a.send(b.local_addr(), &Message::WriteAck { request })
            .unwrap();
    }
    for expected in 0..2_000 {
        match next(&mut b_rx).await {
            Incoming::Message {
                from,
                message: Message::WriteAck { request },
            } => {
                assert_eq!(request, expected);
                assert_eq!(&*from.name, "node-a");
                assert_eq!(from.addr, a.local_addr());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn messages_sent_together_arrive_in_order_without_an_oversized_one(mut net: impl Net) {
    let (a, _a_rx) = net.node("node-a");
    let (b, mut b_rx) = net.node("node-b");
    let mut batch: Vec<Message> = (0..100)
        .map(|request| Message::WriteAck { request })
        .collect();
    // Over the 16 KiB frame limit.
    batch.insert(
        50,
        Message::DigestRoots {
            roots: (0..4_096).map(|p| (PartitionId(p), u64::MAX)).collect(),
        },
    );
    let err = a.send_all(b.local_addr(), &batch).unwrap_err();
    assert!(matches!(err, SendError::Encode(_)), "{err}");
    for expected in 0..100 {
        match next(&mut b_rx).await {
            Incoming::Message {
                message: Message::WriteAck { request },
                ..
            } => assert_eq!(request, expected),
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn fifty_requests_in_flight_are_all_answered_by_the_peer_asked(mut net: impl Net) {
    let (a, mut a_rx) = net.node("node-a");
    let (b, b_rx) = net.node("node-b");
    let _rest = serve_reads(b.clone(), b_rx);
    let to = b.local_addr();
    // Fifty senders at once, as many requests of a node's task are in flight;
    // each answer goes back to the address its request came from.
    futures_join_all((0..50u64).map(|i| {
        let a = a.clone();
        async move { a.send(to, &read(i)).unwrap() }
    }))
    .await;
    let mut answered = Vec::new();
    for _ in 0..50 {
        answered.push(next_answer(&mut a_rx, to).await);
    }
    answered.sort_unstable();
    assert_eq!(answered, (0..50).collect::<Vec<_>>());
}

async fn datagrams_arrive_and_oversized_ones_are_refused(mut net: impl Net) {
    let (a, mut a_rx) = net.node("node-a");
    let (b, b_rx) = net.node("node-b");
    let mut b_rx = serve_reads(b.clone(), b_rx);
    let to = b.local_addr();
    round_trip(&a, &mut a_rx, to, 1).await;
    // Path MTU discovery may raise the limit at any moment after the
    // connection opens: a payload one byte over the limit read just before
    // is refused, unless the limit grew meanwhile; then try again at the
    // new one (it grows a few times at most).
    let mut limit = a
        .max_datagram_payload(to)
        .expect("connected, so the limit is known");
    let err = loop {
        assert!(
            limit >= 1_000,
            "a path carries at least 1,000 bytes of gossip, got {limit}"
        );
        match a.send_datagram(to, Bytes::from(vec![0; limit + 1])) {
            Err(err) => break err,
            Ok(()) => {
                let grown = a.max_datagram_payload(to).expect("still connected");
                assert!(
                    grown > limit,
                    "{} bytes went out over a {limit}-byte limit",
                    limit + 1
                );
                // What went out is not a message the receiver checks.
                limit = grown;
            }
        }
    };
    assert!(matches!(err, SendError::DatagramTooLarge { .. }), "{err}");
    a.send_datagram(to, Bytes::from(vec![7; limit])).unwrap();
    loop {
        match next(&mut b_rx).await {
            // One sent while the limit grew, above.
            Incoming::Datagram { payload, .. } if payload.iter().all(|&b| b == 0) => {}
            Incoming::Datagram { from, payload } => {
                assert_eq!(payload.len(), limit);
                assert_eq!(&*from.name, "node-a");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn a_cut_link_holds_messages_back_until_it_heals(mut net: impl Net) {
    let (a, mut a_rx) = net.node("node-a");
    let (b, b_rx) = net.node("node-b");
    let mut b_rx = serve_reads(b.clone(), b_rx);
    let to = b.local_addr();
    round_trip(&a, &mut a_rx, to, 1).await;

    net.cut(&a, &b);
    a.send(to, &read(2)).unwrap();
    a.send(to, &Message::WriteAck { request: 99 }).unwrap();
    // Nothing crosses the cut: no request reaches b, so no answer comes back.
    let crossed = tokio::time::timeout(Duration::from_millis(300), a_rx.recv()).await;
    assert!(crossed.is_err(), "an answer crossed the cut: {crossed:?}");
    assert!(b_rx.try_recv().is_err(), "a message crossed the cut");

    net.heal(&a, &b);
    // What was sent during the cut arrives after it, in order, and is answered.
    match next(&mut b_rx).await {
        Incoming::Message {
            message: Message::WriteAck { request: 99 },
            ..
        } => {}
        other => panic!("the message sent during the cut should arrive after it: {other:?}"),
    }
    assert_eq!(next_answer(&mut a_rx, to).await, 2);
    round_trip(&a, &mut a_rx, to, 3).await;
}

async fn a_vanished_peer_costs_bounded_memory(mut net: impl Net) {
    let (a, _a_rx) = net.node("node-a");
    let gone = net.nowhere();
    let message = Message::Gossip(Bytes::from(vec![0; 1_000]));
    let mut accepted = 0usize;
    let refused = loop {
        match a.send(gone, &message) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000, "the queue never filled");
    };
    let limit = config().max_queue_bytes;
    assert!(
        matches!(refused, SendError::QueueFull { limit: l, .. } if l == limit),
        "{refused}"
    );
    assert!(a.queued_bytes(gone) <= limit);
    assert!(
        accepted * 1_000 > limit * 9 / 10,
        "only {accepted} messages fit in {limit} bytes"
    );
    // Still refused, still bounded.
    assert!(a.send(gone, &message).is_err());
    a.forget(gone);
    assert_eq!(a.queued_bytes(gone), 0);
}

async fn a_missing_peer_keeps_its_messages_queued_and_holds_up_no_one_else(mut net: impl Net) {
    let (a, _a_rx) = net.node("node-a");
    let (b, mut b_rx) = net.node("node-b");
    let gone = net.nowhere();
    let lost = Message::WriteAck { request: 1 };
    a.send(gone, &lost).unwrap();
    a.send(b.local_addr(), &Message::WriteAck { request: 2 })
        .unwrap();
    match next(&mut b_rx).await {
        Incoming::Message {
            message: Message::WriteAck { request: 2 },
            ..
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    // Nobody took the message: it still counts against the peer's queue...
    assert_eq!(a.queued_bytes(gone), frame_len(&lost));
    // ...until the peer is forgotten.
    a.forget(gone);
    assert_eq!(a.queued_bytes(gone), 0);
}

/// `futures::future::join_all` without the dependency: run them as tasks.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod quic {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::QuicNet::new()).await;
                }
            )*
        }
        mod mem {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::MemNet::new()).await;
                }
            )*
        }
    };
}

conformance!(
    one_way_messages_arrive_in_order_from_the_named_sender,
    messages_sent_together_arrive_in_order_without_an_oversized_one,
    fifty_requests_in_flight_are_all_answered_by_the_peer_asked,
    datagrams_arrive_and_oversized_ones_are_refused,
    a_cut_link_holds_messages_back_until_it_heals,
    a_vanished_peer_costs_bounded_memory,
    a_missing_peer_keeps_its_messages_queued_and_holds_up_no_one_else,
);
