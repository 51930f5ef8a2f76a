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
    assert_eq!(set("maxmemory-policy", "AllKeys-LFU").await, Reply::Ok);
    let info = cluster.run(0, &["INFO"]).await;
    assert_eq!(info_field(&info, "maxmemory"), (64 << 20).to_string());
    assert_eq!(info_field(&info, "maxmemory_policy"), "allkeys-lfu");
    assert_eq!(set("maxmemory-policy", "noeviction").await, Reply::Ok);
}

/// Each node's `INFO` figure `name`, as a number.
async fn info_number(cluster: &Cluster, node: usize, name: &str) -> usize {
    info_field(&cluster.run(node, &["INFO"]).await, name)
        .parse()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn under_allkeys_lru_every_write_succeeds_and_evictions_reach_every_replica() {
    const BOUND: usize = 96 * 1024;
    let cluster = Cluster::start().await;
    for node in 0..3 {
        for (name, value) in [("maxmemory", "96kb"), ("maxmemory-policy", "allkeys-lru")] {
            assert_eq!(
                cluster.run(node, &["CONFIG", "SET", name, value]).await,
                Reply::Ok
            );
        }
    }
    let value = |i: usize| format!("{i:0>500}");
    // Five times what fits, from every node, with the first session read
    // all along, from each node in turn (each node ranks by the uses it
    // sees), so that it stays recently used.
    for i in 0..1_000 {
        let key = format!("s:{i}");
        let reply = cluster.run(i % 3, &["SET", &key, &value(i)]).await;
        assert_eq!(reply, Reply::Ok, "SET {key}");
        // Requests come a little apart: recency is measured in time.
        tokio::time::advance(std::time::Duration::from_millis(10)).await;
        if i % 10 == 0 {
            let node = i / 10 % 3;
            assert_eq!(
                cluster.run(node, &["GET", "s:0"]).await,
                bulk(&value(0)),
                "at {i}"
            );
        }
    }
    let mut evicted = 0;
    for node in 0..3 {
        let used = info_number(&cluster, node, "used_memory").await;
        assert!(used <= BOUND, "node {node} holds {used} bytes");
        evicted += info_number(&cluster, node, "evicted_keys").await;
    }
    assert!(evicted > 500, "{evicted} evicted");
    // The replicas agree on every session, evicted or kept, and the
    // recently used ones are kept.
    let mut kept = 0;
    for i in 0..1_000 {
        let key = format!("s:{i}");
        let seen = cluster.run(0, &["GET", &key]).await;
        for node in 1..3 {
            assert_eq!(cluster.run(node, &["GET", &key]).await, seen, "{key}");
        }
        kept += usize::from(seen != Reply::Nil);
    }
    assert!(kept > 50 && kept < 300, "{kept} kept");
    assert_eq!(cluster.run(1, &["GET", "s:0"]).await, bulk(&value(0)));
    assert_eq!(cluster.run(2, &["GET", "s:999"]).await, bulk(&value(999)));
    // A write of an evicted session's key starts it anew, everywhere.
    assert_eq!(cluster.run(0, &["GET", "s:1"]).await, Reply::Nil);
    assert_eq!(cluster.run(1, &["SET", "s:1", "again"]).await, Reply::Ok);
    assert_eq!(cluster.run(2, &["GET", "s:1"]).await, bulk("again"));
}
