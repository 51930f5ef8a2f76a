//! `maxmemory` under `noeviction` across three in-memory peers in paused
//! time: a node over its bound refuses the writes that add, as Redis does,
//! and goes on reading, deleting and taking its peers' replication.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

/// A field of `INFO`'s text.
fn info_field(info: &Reply, name: &str) -> String {
    let Reply::Bulk(text) = info else {
        panic!("{info:?}")
    };
    let text = std::str::from_utf8(text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_owned()
}

#[tokio::test(start_paused = true)]
async fn a_node_over_maxmemory_refuses_writes_that_add_and_serves_the_rest() {
    let cluster = Cluster::start().await;
    let config = |node| cluster.run(node, &["CONFIG", "GET", "maxmemory*"]);
    assert_eq!(
        config(0).await,
        Reply::Map(vec![
            (bulk("maxmemory"), bulk("0")),
            (bulk("maxmemory-policy"), bulk("noeviction")),
        ])
    );
    let value = "v".repeat(100);
    for i in 0..40 {
        let key = format!("s:{i}");
        assert_eq!(cluster.run(0, &["SET", &key, &value]).await, Reply::Ok);
    }
    let used: usize = info_field(&cluster.run(0, &["INFO"]).await, "used_memory")
        .parse()
        .unwrap();
    // Forty sessions of 100 bytes and more each.
    assert!(used > 40 * 100, "used_memory {used}");
    assert_eq!(
        cluster.run(0, &["CONFIG", "SET", "maxmemory", "2kb"]).await,
        Reply::Ok
    );
    assert_eq!(
        config(0).await,
        Reply::Map(vec![
            (bulk("maxmemory"), bulk("2048")),
            (bulk("maxmemory-policy"), bulk("noeviction")),
        ])
    );
    // Writes that add are refused: plain, atomic and scripted.
    for request in [
        &["SET", "new", "x"][..],
        &["HSET", "h", "f", "x"],
        &["INCR", "counter"],
        &["SET", "lock", "x", "NX"],
        &[
            "EVAL",
            "return redis.call('SET', KEYS[1], 'x')",
            "1",
            "scripted",
        ],
    ] {
        let reply = cluster.run(0, request).await;
        assert!(is_error(&reply, OOM), "{request:?}: {reply:?}");
    }
    // Reads, deletes and expiries go on.
    assert_eq!(cluster.run(0, &["GET", "s:3"]).await, bulk(&value));
    assert_eq!(cluster.run(0, &["DEL", "s:4"]).await, Reply::Int(1));
    assert_eq!(
        cluster.run(0, &["EXPIRE", "s:5", "100"]).await,
        Reply::Int(1)
    );
    let info = cluster.run(0, &["INFO"]).await;
    assert_eq!(info_field(&info, "maxmemory"), "2048");
    assert_eq!(info_field(&info, "maxmemory_policy"), "noeviction");
    // The bound is this node's: another node takes the write, and this
    // node, one of the key's replicas, stores it all the same.
    assert_eq!(cluster.run(1, &["SET", "new", "from-1"]).await, Reply::Ok);
    assert_eq!(cluster.run(0, &["GET", "new"]).await, bulk("from-1"));
    // Lifted, the node takes writes again.
    assert_eq!(
        cluster.run(0, &["CONFIG", "SET", "maxmemory", "0"]).await,
        Reply::Ok
    );
    assert_eq!(cluster.run(0, &["SET", "new", "x"]).await, Reply::Ok);
}

#[tokio::test(start_paused = true)]
async fn maxmemory_settings_are_checked_as_redis_checks_them() {
    let cluster = &Cluster::start().await;
    let set = |name: &'static str, value: &'static str| async move {
        cluster.run(0, &["CONFIG", "SET", name, value]).await
    };
    assert_eq!(set("maxmemory", "64MB").await, Reply::Ok);
    assert!(is_error(
        &set("maxmemory", "lots").await,
        "ERR CONFIG SET failed (possibly related to argument 'maxmemory')"
    ));
    assert!(is_error(
        &set("maxmemory-policy", "lru").await,
        "ERR CONFIG SET failed (possibly related to argument 'maxmemory-policy')"
    ));
    let later = set("maxmemory-policy", "allkeys-lru").await;
    assert!(
        matches!(&later, Reply::Error(e) if e.contains("only noeviction")),
        "{later:?}"
    );
    assert_eq!(set("maxmemory-policy", "noeviction").await, Reply::Ok);
    let info = cluster.run(0, &["INFO"]).await;
    assert_eq!(info_field(&info, "maxmemory"), (64 << 20).to_string());
}
