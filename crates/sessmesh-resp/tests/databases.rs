//! `SELECT`: each database its own keyspace, across three in-memory peers
//! in paused time.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

#[tokio::test(start_paused = true)]
async fn each_database_is_its_own_keyspace() {
    let cluster = Cluster::start().await;
    let mut one = cluster.handlers[0].client();
    let mut two = cluster.handlers[1].client();
    let mut zero = cluster.handlers[2].client();
    assert_eq!(
        cluster.run_as(0, &mut one, &["SELECT", "1"]).await,
        Reply::Ok
    );
    assert_eq!(
        cluster.run_as(1, &mut two, &["SELECT", "15"]).await,
        Reply::Ok
    );
    cluster.run_as(0, &mut one, &["SET", "k", "in-1"]).await;
    cluster.run_as(1, &mut two, &["SET", "k", "in-15"]).await;
    cluster.run_as(2, &mut zero, &["SET", "k", "in-0"]).await;
    assert_eq!(
        cluster.run_as(0, &mut one, &["GET", "k"]).await,
        bulk("in-1")
    );
    assert_eq!(
        cluster.run_as(1, &mut two, &["GET", "k"]).await,
        bulk("in-15")
    );
    assert_eq!(
        cluster.run_as(2, &mut zero, &["GET", "k"]).await,
        bulk("in-0")
    );
    // Multi-key commands, hashes, counters and transactions stay in theirs.
    cluster
        .run_as(0, &mut one, &["MSET", "a", "1", "b", "2"])
        .await;
    assert_eq!(
        cluster.run_as(0, &mut one, &["MGET", "a", "b", "k"]).await,
        Reply::Array(vec![bulk("1"), bulk("2"), bulk("in-1")])
    );
    assert_eq!(
        cluster.run_as(2, &mut zero, &["MGET", "a", "b"]).await,
        Reply::Array(vec![Reply::Nil, Reply::Nil])
    );
    assert_eq!(
        cluster.run_as(0, &mut one, &["INCR", "a"]).await,
        Reply::Int(2)
    );
    cluster.run_as(0, &mut one, &["HSET", "h", "f", "v"]).await;
    assert_eq!(
        cluster.run_as(2, &mut zero, &["EXISTS", "h"]).await,
        Reply::Int(0)
    );
    cluster.run_as(0, &mut one, &["MULTI"]).await;
    cluster.run_as(0, &mut one, &["DEL", "b"]).await;
    assert_eq!(
        cluster.run_as(0, &mut one, &["EXEC"]).await,
        Reply::Array(vec![Reply::Int(1)])
    );
    // Counting and listing see only the database's keys, by their names.
    assert_eq!(
        cluster.run_as(0, &mut one, &["DBSIZE"]).await,
        Reply::Int(3)
    );
    assert_eq!(
        cluster.run_as(1, &mut two, &["DBSIZE"]).await,
        Reply::Int(1)
    );
    assert_eq!(
        cluster.run_as(2, &mut zero, &["DBSIZE"]).await,
        Reply::Int(1)
    );
    let Reply::Array(scan) = cluster
        .run_as(0, &mut one, &["SCAN", "0", "COUNT", "1000"])
        .await
    else {
        panic!("no scan");
    };
    let Reply::Array(keys) = &scan[1] else {
        panic!("no keys");
    };
    let mut keys = keys.to_vec();
    keys.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(keys, [bulk("a"), bulk("h"), bulk("k")]);
    let Reply::Array(mut listed) = cluster.run_as(0, &mut one, &["KEYS", "*"]).await else {
        panic!("no keys");
    };
    listed.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(listed, [bulk("a"), bulk("h"), bulk("k")]);
    assert_eq!(
        cluster.run_as(0, &mut one, &["KEYS", "[ab]"]).await,
        Reply::Array(vec![bulk("a")])
    );
    let random = cluster.run_as(1, &mut two, &["RANDOMKEY"]).await;
    assert_eq!(random, bulk("k"));
    let mut empty = cluster.handlers[2].client();
    cluster.run_as(2, &mut empty, &["SELECT", "9"]).await;
    assert_eq!(
        cluster.run_as(2, &mut empty, &["RANDOMKEY"]).await,
        Reply::Nil
    );
    assert_eq!(
        cluster.run_as(2, &mut empty, &["KEYS", "*"]).await,
        Reply::Array(vec![])
    );
    // Out of range, or not a number.
    for bad in ["16", "-1", "99999999999"] {
        assert!(
            is_error(
                &cluster.run_as(2, &mut zero, &["SELECT", bad]).await,
                "ERR DB index is out of range"
            ),
            "{bad}"
        );
    }
    assert!(is_error(
        &cluster.run_as(2, &mut zero, &["SELECT", "x"]).await,
        "ERR value is not an integer"
    ));
    // The connection stays in its database after a refused SELECT.
    assert_eq!(
        cluster.run_as(2, &mut zero, &["GET", "k"]).await,
        bulk("in-0")
    );
    // A key of database 0 cannot pose as another database's.
    assert!(is_error(
        &cluster
            .run_as(2, &mut zero, &["SET", "\0db1\0k", "x"])
            .await,
        "ERR keys that begin with"
    ));
    assert_eq!(
        cluster
            .run_as(2, &mut zero, &["CONFIG", "GET", "databases"])
            .await,
        Reply::Map(vec![(bulk("databases"), bulk("16"))])
    );
}
