//! What clients ask about keys besides their values: `TOUCH`, `HSTRLEN`,
//! `HRANDFIELD`, `OBJECT ENCODING`, and the keyspace (`SCAN`, `KEYS`,
//! `RANDOMKEY`, `DBSIZE`), across three in-memory peers in paused time.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

#[tokio::test(start_paused = true)]
async fn touch_hstrlen_and_encodings_answer_as_redis_does() {
    let cluster = Cluster::start().await;
    cluster.run(0, &["SET", "n", "12345"]).await;
    cluster.run(0, &["SET", "short", "hello"]).await;
    cluster.run(0, &["SET", "long", &"x".repeat(45)]).await;
    cluster.run(0, &["HSET", "h", "field", "value"]).await;
    cluster.run(0, &["HSET", "big", "f", &"y".repeat(65)]).await;
    assert_eq!(
        cluster.run(1, &["TOUCH", "n", "h", "none"]).await,
        Reply::Int(2)
    );
    assert_eq!(
        cluster.run(2, &["HSTRLEN", "h", "field"]).await,
        Reply::Int(5)
    );
    assert_eq!(
        cluster.run(2, &["HSTRLEN", "h", "nope"]).await,
        Reply::Int(0)
    );
    assert!(is_error(
        &cluster.run(2, &["HSTRLEN", "n", "f"]).await,
        "WRONGTYPE"
    ));
    for (key, encoding) in [
        ("n", "int"),
        ("short", "embstr"),
        ("long", "raw"),
        ("h", "listpack"),
        ("big", "hashtable"),
    ] {
        assert_eq!(
            cluster.run(1, &["OBJECT", "ENCODING", key]).await,
            bulk(encoding),
            "{key}"
        );
    }
    assert_eq!(
        cluster.run(1, &["OBJECT", "encoding", "none"]).await,
        Reply::Nil
    );
    assert!(is_error(
        &cluster.run(1, &["OBJECT", "FREQ", "n"]).await,
        "ERR unknown subcommand 'FREQ'"
    ));
}

#[tokio::test(start_paused = true)]
async fn hrandfield_picks_fields_as_redis_does() {
    let cluster = Cluster::start().await;
    cluster
        .run(0, &["HSET", "h", "a", "1", "b", "2", "c", "3"])
        .await;
    let fields = [bulk("a"), bulk("b"), bulk("c")];
    let one = cluster.run(1, &["HRANDFIELD", "h"]).await;
    assert!(fields.contains(&one), "{one:?}");
    // A positive count: distinct fields, at most all of them.
    let Reply::Array(two) = cluster.run(1, &["HRANDFIELD", "h", "2"]).await else {
        panic!("not an array");
    };
    assert_eq!(two.len(), 2);
    assert_ne!(two[0], two[1]);
    let Reply::Array(all) = cluster.run(2, &["HRANDFIELD", "h", "10"]).await else {
        panic!("not an array");
    };
    let mut all = all;
    all.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(all, fields);
    // A negative count: that many picks, which may repeat.
    let Reply::Array(picks) = cluster.run(0, &["HRANDFIELD", "h", "-7"]).await else {
        panic!("not an array");
    };
    assert_eq!(picks.len(), 7);
    assert!(picks.iter().all(|p| fields.contains(p)));
    // With values: each field followed by its value.
    let Reply::Array(pairs) = cluster
        .run(0, &["HRANDFIELD", "h", "3", "WITHVALUES"])
        .await
    else {
        panic!("not an array");
    };
    for pair in pairs.chunks(2) {
        let expected = match &pair[0] {
            Reply::Bulk(f) if f.as_ref() == b"a" => bulk("1"),
            Reply::Bulk(f) if f.as_ref() == b"b" => bulk("2"),
            _ => bulk("3"),
        };
        assert_eq!(pair[1], expected, "{pairs:?}");
    }
    assert_eq!(cluster.run(0, &["HRANDFIELD", "none"]).await, Reply::Nil);
    assert_eq!(
        cluster.run(0, &["HRANDFIELD", "none", "3"]).await,
        Reply::Array(vec![])
    );
    assert!(is_error(
        &cluster.run(0, &["HRANDFIELD", "h", "1", "NOPE"]).await,
        "ERR syntax error"
    ));
}

#[tokio::test(start_paused = true)]
async fn scan_keys_randomkey_and_dbsize_cover_the_whole_cluster() {
    // One copy per key: each node stores about a third of them.
    let cluster = Cluster::start_with_copies(1).await;
    for i in 0..120 {
        assert_eq!(
            cluster.run(0, &["SET", &format!("w:{i}"), "v"]).await,
            Reply::Ok
        );
    }
    let peer = cluster.peer(2);
    let local: usize = (0..peer.partition_count())
        .map(|p| peer.local_keys(p).len())
        .sum();
    assert!(
        local < 120,
        "node-2 stores all {local} keys: the test shows nothing"
    );
    for node in 0..3 {
        assert_eq!(cluster.run(node, &["DBSIZE"]).await, Reply::Int(120));
        let Reply::Array(keys) = cluster.run(node, &["KEYS", "w:*"]).await else {
            panic!("KEYS answers an array");
        };
        assert_eq!(keys.len(), 120);
        // A whole SCAN, a few keys at a time.
        let mut cursor = "0".to_owned();
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let Reply::Array(page) = cluster
                .run(node, &["SCAN", &cursor, "MATCH", "w:*", "COUNT", "7"])
                .await
            else {
                panic!("SCAN answers an array");
            };
            let [Reply::Bulk(next), Reply::Array(found)] = page.as_slice() else {
                panic!("SCAN answers a cursor and keys: {page:?}");
            };
            seen.extend(found.iter().map(|k| format!("{k:?}")));
            cursor = String::from_utf8(next.to_vec()).unwrap();
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(seen.len(), 120, "SCAN through node-{node}");
        assert!(matches!(
            cluster.run(node, &["RANDOMKEY"]).await,
            Reply::Bulk(_)
        ));
    }
    // TYPE keeps only the keys of that type.
    cluster.run(1, &["HSET", "w:hash", "f", "v"]).await;
    let Reply::Array(page) = cluster
        .run(1, &["SCAN", "0", "TYPE", "hash", "COUNT", "1000"])
        .await
    else {
        panic!("SCAN answers an array");
    };
    assert_eq!(page[1], Reply::Array(vec![bulk("w:hash")]));
}
