//! Parts of strings (`APPEND`, `STRLEN`, `GETRANGE`, `SETRANGE`) across
//! three in-memory peers in paused time, each with the command handler.
//! `APPEND` and `SETRANGE` are consensus operations: appends raced from
//! every node all land.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

#[tokio::test(start_paused = true)]
async fn appends_raced_from_every_node_all_land() {
    let cluster = Cluster::start().await;
    let mut decided = 0;
    for round in 0..8 {
        let key = format!("log:{round}");
        let requests = ["a", "b", "c"].map(|letter| ["APPEND", key.as_str(), letter]);
        let (a, b, c) = tokio::join!(
            cluster.run(0, &requests[0]),
            cluster.run(1, &requests[1]),
            cluster.run(2, &requests[2]),
        );
        // A decided append saw the ones decided before it: each length once.
        let mut lengths = Vec::new();
        let mut landed = Vec::new();
        for (reply, letter) in [a, b, c].into_iter().zip([b'a', b'b', b'c']) {
            match reply {
                Reply::Int(n) => {
                    lengths.push(n);
                    landed.push(letter);
                }
                // Contended past its proposal: it may or may not land.
                Reply::Error(e) if e.starts_with("UNCERTAIN") => {}
                other => panic!("{key}: {other:?}"),
            }
        }
        decided += landed.len();
        let Reply::Bulk(value) = cluster.run(round % 3, &["GET", &key]).await else {
            panic!("{key}: no value");
        };
        let mut letters = value.to_vec();
        letters.sort_unstable();
        letters.dedup();
        assert_eq!(
            letters.len(),
            value.len(),
            "{key}: an append landed twice: {value:?}"
        );
        for letter in landed {
            assert!(letters.contains(&letter), "{key}: {letter} lost: {value:?}");
        }
        let answered = lengths.len();
        lengths.sort_unstable();
        lengths.dedup();
        assert_eq!(lengths.len(), answered, "{key}: two appends saw one length");
        assert!(
            lengths
                .iter()
                .all(|n| usize::try_from(*n).unwrap() <= value.len()),
            "{key}: lengths {lengths:?} of {value:?}"
        );
    }
    assert!(decided >= 12, "only {decided} of 24 appends decided");
}

#[tokio::test(start_paused = true)]
async fn ranges_read_and_write_as_redis_does() {
    let cluster = Cluster::start().await;
    assert_eq!(
        cluster.run(0, &["APPEND", "k", "Hello"]).await,
        Reply::Int(5)
    );
    assert_eq!(
        cluster.run(1, &["APPEND", "k", " World"]).await,
        Reply::Int(11)
    );
    assert_eq!(cluster.run(2, &["STRLEN", "k"]).await, Reply::Int(11));
    assert_eq!(cluster.run(2, &["STRLEN", "none"]).await, Reply::Int(0));
    assert_eq!(
        cluster.run(0, &["GETRANGE", "k", "-5", "-1"]).await,
        bulk("World")
    );
    assert_eq!(
        cluster.run(0, &["SUBSTR", "k", "0", "4"]).await,
        bulk("Hello")
    );
    assert_eq!(
        cluster.run(1, &["SETRANGE", "k", "6", "Redis"]).await,
        Reply::Int(11)
    );
    assert_eq!(cluster.run(2, &["GET", "k"]).await, bulk("Hello Redis"));
    // Past the end: padded with zero bytes.
    assert_eq!(
        cluster.run(0, &["SETRANGE", "pad", "3", "x"]).await,
        Reply::Int(4)
    );
    assert_eq!(
        cluster.run(1, &["GET", "pad"]).await,
        Reply::Bulk(bytes::Bytes::from_static(b"\0\0\0x"))
    );
    // Nothing onto no key writes nothing.
    assert_eq!(
        cluster.run(2, &["SETRANGE", "empty", "0", ""]).await,
        Reply::Int(0)
    );
    assert_eq!(cluster.run(0, &["EXISTS", "empty"]).await, Reply::Int(0));
    // The key keeps its expiry.
    cluster.run(0, &["SET", "t", "a", "PX", "60000"]).await;
    cluster.run(1, &["APPEND", "t", "b"]).await;
    let Reply::Int(ttl) = cluster.run(2, &["PTTL", "t"]).await else {
        panic!("no ttl");
    };
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    // Errors, as Redis gives them.
    cluster.run(0, &["HSET", "h", "f", "1"]).await;
    for request in [
        &["APPEND", "h", "x"][..],
        &["SETRANGE", "h", "0", "x"],
        &["STRLEN", "h"],
        &["GETRANGE", "h", "0", "1"],
    ] {
        assert!(
            is_error(&cluster.run(1, request).await, "WRONGTYPE"),
            "{request:?}"
        );
    }
    assert!(is_error(
        &cluster.run(1, &["SETRANGE", "k", "-1", "x"]).await,
        "ERR offset is out of range"
    ));
    assert!(is_error(
        &cluster.run(1, &["GETRANGE", "k", "a", "1"]).await,
        "ERR value is not an integer or out of range"
    ));
}
