//! `RENAME`, `RENAMENX` and `COPY` across three in-memory peers in paused
//! time: the value and its expiry move, in any database.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

#[tokio::test(start_paused = true)]
async fn values_move_between_keys_as_redis_does() {
    let cluster = Cluster::start().await;
    // A session hash, renamed when its id changes (Spring Session does).
    cluster
        .run(0, &["HSET", "session:old", "user", "ann", "cart", "3"])
        .await;
    cluster.run(0, &["PEXPIRE", "session:old", "60000"]).await;
    assert_eq!(
        cluster
            .run(1, &["RENAME", "session:old", "session:new"])
            .await,
        Reply::Ok
    );
    assert_eq!(
        cluster.run(2, &["EXISTS", "session:old"]).await,
        Reply::Int(0)
    );
    assert_eq!(
        cluster.run(2, &["HGET", "session:new", "user"]).await,
        bulk("ann")
    );
    let Reply::Int(ttl) = cluster.run(0, &["PTTL", "session:new"]).await else {
        panic!("no ttl");
    };
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    // RENAME replaces; RENAMENX does not.
    cluster.run(0, &["SET", "a", "1"]).await;
    cluster.run(0, &["SET", "b", "2"]).await;
    assert_eq!(cluster.run(1, &["RENAMENX", "a", "b"]).await, Reply::Int(0));
    assert_eq!(cluster.run(2, &["GET", "a"]).await, bulk("1"));
    assert_eq!(cluster.run(1, &["RENAME", "a", "b"]).await, Reply::Ok);
    assert_eq!(cluster.run(2, &["GET", "b"]).await, bulk("1"));
    assert_eq!(cluster.run(1, &["RENAMENX", "b", "c"]).await, Reply::Int(1));
    assert_eq!(cluster.run(2, &["GET", "c"]).await, bulk("1"));
    // COPY keeps the source, and replaces only when told to.
    cluster.run(0, &["SET", "d", "4"]).await;
    assert_eq!(cluster.run(1, &["COPY", "c", "d"]).await, Reply::Int(0));
    assert_eq!(
        cluster.run(1, &["COPY", "c", "d", "REPLACE"]).await,
        Reply::Int(1)
    );
    assert_eq!(
        cluster.run(2, &["MGET", "c", "d"]).await,
        Reply::Array(vec![bulk("1"), bulk("1")])
    );
    // Errors.
    assert!(is_error(
        &cluster.run(0, &["RENAME", "none", "x"]).await,
        "ERR no such key"
    ));
    assert_eq!(
        cluster.run(0, &["RENAMENX", "none", "x"]).await,
        Reply::Int(0)
    );
    assert_eq!(cluster.run(0, &["COPY", "none", "x"]).await, Reply::Int(0));
    assert_eq!(cluster.run(0, &["RENAME", "c", "c"]).await, Reply::Ok);
    assert!(is_error(
        &cluster.run(0, &["COPY", "c", "c"]).await,
        "ERR source and destination objects are the same"
    ));
    assert!(is_error(
        &cluster.run(0, &["COPY", "c", "e", "DB", "1"]).await,
        "ERR syntax error"
    ));
    // In another database, both keys are that database's.
    let mut client = cluster.handlers[1].client();
    cluster.run_as(1, &mut client, &["SELECT", "2"]).await;
    cluster.run_as(1, &mut client, &["SET", "x", "in-2"]).await;
    assert_eq!(
        cluster.run_as(1, &mut client, &["RENAME", "x", "y"]).await,
        Reply::Ok
    );
    assert_eq!(
        cluster.run_as(1, &mut client, &["GET", "y"]).await,
        bulk("in-2")
    );
    assert_eq!(cluster.run(0, &["EXISTS", "x", "y"]).await, Reply::Int(0));
}
