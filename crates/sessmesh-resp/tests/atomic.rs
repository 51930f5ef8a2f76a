//! The Redis commands made atomic across the cluster, each one consensus
//! operation among the key's replicas: three in-memory peers in paused
//! time, each with the command handler.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

#[tokio::test(start_paused = true)]
async fn set_nx_raced_from_every_node_has_one_winner() {
    let cluster = Cluster::start().await;
    for round in 0..10 {
        let key = format!("session:{round}");
        let set_a = ["SET", &key, "from-0", "NX", "PX", "60000"];
        let set_b = ["SET", &key, "from-1", "NX", "PX", "60000"];
        let set_c = ["SETNX", &key, "from-2"];
        let (a, b, c) = tokio::join!(
            cluster.run(0, &set_a),
            cluster.run(1, &set_b),
            cluster.run(2, &set_c),
        );
        let winners =
            [&a, &b].iter().filter(|r| ***r == Reply::Ok).count() + usize::from(c == Reply::Int(1));
        assert_eq!(winners, 1, "{key}: {a:?} {b:?} {c:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn increments_add_up_and_keep_redis_errors() {
    let cluster = Cluster::start().await;
    let mut expected = 0;
    for i in 0..12 {
        let by = i64::try_from(i % 3).unwrap() + 1;
        let reply = cluster
            .run(i % 3, &["INCRBY", "hits", &by.to_string()])
            .await;
        expected += by;
        assert_eq!(reply, Reply::Int(expected));
    }
    assert_eq!(
        cluster.run(1, &["DECR", "hits"]).await,
        Reply::Int(expected - 1)
    );
    assert_eq!(
        cluster.run(2, &["GET", "hits"]).await,
        bulk(&(expected - 1).to_string())
    );
    cluster.run(0, &["SET", "text", "abc"]).await;
    let not_int = cluster.run(1, &["INCR", "text"]).await;
    assert_eq!(
        not_int,
        Reply::Error("ERR value is not an integer or out of range".into())
    );
    cluster.run(0, &["SET", "big", &i64::MAX.to_string()]).await;
    assert!(is_error(
        &cluster.run(2, &["INCR", "big"]).await,
        "ERR increment or decrement would overflow"
    ));
    cluster.run(0, &["HSET", "h", "f", "1"]).await;
    assert!(is_error(&cluster.run(1, &["INCR", "h"]).await, "WRONGTYPE"));
    assert_eq!(
        cluster.run(1, &["INCRBYFLOAT", "f", "2.5"]).await,
        bulk("2.5")
    );
    assert_eq!(
        cluster.run(2, &["INCRBYFLOAT", "f", "0.25"]).await,
        bulk("2.75")
    );
}

#[tokio::test(start_paused = true)]
async fn get_set_get_del_and_hash_counterparts() {
    let cluster = Cluster::start().await;
    assert_eq!(cluster.run(0, &["GETSET", "k", "a"]).await, Reply::Nil);
    assert_eq!(cluster.run(1, &["SET", "k", "b", "GET"]).await, bulk("a"));
    assert_eq!(
        cluster.run(2, &["SET", "k", "c", "XX", "GET"]).await,
        bulk("b")
    );
    assert_eq!(
        cluster.run(0, &["SET", "nothing", "c", "XX"]).await,
        Reply::Nil
    );
    assert_eq!(cluster.run(1, &["GETDEL", "k"]).await, bulk("c"));
    assert_eq!(cluster.run(2, &["GET", "k"]).await, Reply::Nil);
    assert_eq!(
        cluster.run(0, &["HSETNX", "h", "f", "1"]).await,
        Reply::Int(1)
    );
    assert_eq!(
        cluster.run(1, &["HSETNX", "h", "f", "2"]).await,
        Reply::Int(0)
    );
    assert_eq!(
        cluster.run(2, &["HINCRBY", "h", "f", "41"]).await,
        Reply::Int(42)
    );
    assert_eq!(
        cluster.run(0, &["HINCRBYFLOAT", "h", "g", "1.5"]).await,
        bulk("1.5")
    );
    assert!(is_error(
        &cluster.run(1, &["GETDEL", "h"]).await,
        "WRONGTYPE"
    ));
    assert!(is_error(
        &cluster.run(1, &["SET", "h", "x", "GET"]).await,
        "WRONGTYPE"
    ));
    cluster.run(0, &["SET", "s", "x"]).await;
    assert!(is_error(
        &cluster.run(2, &["HSETNX", "s", "f", "1"]).await,
        "WRONGTYPE"
    ));
    assert!(is_error(
        &cluster.run(2, &["HINCRBY", "s", "f", "1"]).await,
        "WRONGTYPE"
    ));
}

#[tokio::test(start_paused = true)]
async fn a_fenced_lock_for_redis_clients() {
    let cluster = Cluster::start().await;
    let Reply::Int(first) = cluster.run(0, &["SESSMESH.LOCK", "lock", "5000"]).await else {
        panic!("no token");
    };
    assert_eq!(
        cluster.run(1, &["SESSMESH.LOCK", "lock", "5000"]).await,
        Reply::Nil
    );
    let token = first.to_string();
    assert_eq!(
        cluster
            .run(2, &["SESSMESH.RENEW", "lock", &token, "5000"])
            .await,
        Reply::Int(1)
    );
    assert_eq!(
        cluster.run(1, &["SESSMESH.UNLOCK", "lock", &token]).await,
        Reply::Int(1)
    );
    assert_eq!(
        cluster.run(1, &["SESSMESH.UNLOCK", "lock", &token]).await,
        Reply::Int(0)
    );
    let Reply::Int(second) = cluster.run(2, &["SESSMESH.LOCK", "lock", "100"]).await else {
        panic!("no token");
    };
    assert!(second > first);
    // The lease runs out; the lock is free again, under a newer token.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        cluster
            .run(0, &["SESSMESH.RENEW", "lock", &second.to_string(), "100"])
            .await,
        Reply::Int(0)
    );
    let Reply::Int(third) = cluster.run(0, &["SESSMESH.LOCK", "lock", "100"]).await else {
        panic!("no token");
    };
    assert!(third > second);
    assert!(is_error(
        &cluster.run(0, &["SESSMESH.LOCK", "lock", "-1"]).await,
        "ERR"
    ));
}

#[tokio::test(start_paused = true)]
async fn msetnx_sets_every_key_or_none() {
    let cluster = Cluster::start().await;
    assert_eq!(
        cluster.run(0, &["MSETNX", "m:a", "1", "m:b", "2"]).await,
        Reply::Int(1)
    );
    assert_eq!(cluster.run(1, &["GET", "m:b"]).await, bulk("2"));
    // One key taken: none of the others is left set.
    assert_eq!(
        cluster
            .run(1, &["MSETNX", "m:c", "3", "m:d", "4", "m:a", "9"])
            .await,
        Reply::Int(0)
    );
    for key in ["m:c", "m:d"] {
        assert_eq!(cluster.run(2, &["EXISTS", key]).await, Reply::Int(0));
    }
    assert_eq!(cluster.run(2, &["GET", "m:a"]).await, bulk("1"));
    // Raced from every node over the same keys: exactly one wins, whole.
    let requests = ["x", "y", "z"].map(|v| ["MSETNX", "r:1", v, "r:2", v, "r:3", v]);
    let (a, b, c) = tokio::join!(
        cluster.run(0, &requests[0]),
        cluster.run(1, &requests[1]),
        cluster.run(2, &requests[2]),
    );
    let winners: Vec<&str> = [a, b, c]
        .iter()
        .zip(["x", "y", "z"])
        .filter(|(reply, _)| **reply == Reply::Int(1))
        .map(|(_, v)| v)
        .collect();
    assert!(winners.len() <= 1, "{winners:?}");
    if let [winner] = winners.as_slice() {
        for key in ["r:1", "r:2", "r:3"] {
            assert_eq!(cluster.run(0, &["GET", key]).await, bulk(winner));
        }
    }
    assert!(is_error(
        &cluster.run(0, &["MSETNX", "m:e", "1", "m:f"]).await,
        "ERR wrong number of arguments for 'msetnx'"
    ));
}
