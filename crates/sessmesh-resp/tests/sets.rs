//! Sets across three in-memory peers in paused time: adds from several
//! nodes all survive, pops never take one member twice, and every other
//! type refuses set commands with `WRONGTYPE`.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use std::collections::BTreeSet;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

/// The members a reply lists, sorted.
fn members(reply: &Reply) -> BTreeSet<String> {
    let Reply::Array(items) = reply else {
        panic!("not an array: {reply:?}");
    };
    items
        .iter()
        .map(|i| match i {
            Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("not a member: {other:?}"),
        })
        .collect()
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(start_paused = true)]
async fn adds_on_every_node_all_survive() {
    let cluster = Cluster::start().await;
    let (a, b, c) = tokio::join!(
        cluster.run(0, &["SADD", "index", "s1", "s2"]),
        cluster.run(1, &["SADD", "index", "s3"]),
        cluster.run(2, &["SADD", "index", "s4", "s4"]),
    );
    assert_eq!((a, b, c), (Reply::Int(2), Reply::Int(1), Reply::Int(1)));
    cluster
        .wait_everywhere(&["SCARD", "index"], &Reply::Int(4))
        .await;
    assert_eq!(
        members(&cluster.run(1, &["SMEMBERS", "index"]).await),
        set_of(&["s1", "s2", "s3", "s4"])
    );
    assert_eq!(
        cluster.run(0, &["SADD", "index", "s1", "s5"]).await,
        Reply::Int(1)
    );
    assert_eq!(
        cluster.run(1, &["SREM", "index", "s1", "nope"]).await,
        Reply::Int(1)
    );
    assert_eq!(
        cluster.run(2, &["SISMEMBER", "index", "s1"]).await,
        Reply::Int(0)
    );
    assert_eq!(
        cluster
            .run(2, &["SMISMEMBER", "index", "s2", "s1", "s5"])
            .await,
        Reply::Array(vec![Reply::Int(1), Reply::Int(0), Reply::Int(1)])
    );
    let scan = cluster
        .run(0, &["SSCAN", "index", "0", "MATCH", "s[23]"])
        .await;
    let Reply::Array(parts) = &scan else {
        panic!("{scan:?}");
    };
    assert_eq!(parts[0], bulk("0"));
    assert_eq!(members(&parts[1]), set_of(&["s2", "s3"]));
    assert_eq!(
        cluster.run(0, &["TYPE", "index"]).await,
        Reply::Simple("set")
    );
    assert_eq!(
        cluster.run(0, &["OBJECT", "ENCODING", "index"]).await,
        bulk("listpack")
    );
    // Removing every member removes the key.
    cluster
        .run(0, &["SREM", "index", "s2", "s3", "s4", "s5"])
        .await;
    assert_eq!(cluster.run(1, &["EXISTS", "index"]).await, Reply::Int(0));
    assert_eq!(cluster.run(1, &["SCARD", "index"]).await, Reply::Int(0));
    assert_eq!(
        cluster.run(1, &["SMEMBERS", "index"]).await,
        Reply::Array(vec![])
    );
}

#[tokio::test(start_paused = true)]
async fn pops_raced_from_every_node_never_take_a_member_twice() {
    let cluster = Cluster::start().await;
    let all: Vec<String> = (0..9).map(|i| format!("m{i}")).collect();
    let mut add = vec!["SADD", "pool"];
    add.extend(all.iter().map(String::as_str));
    cluster.run(0, &add).await;
    let mut popped = Vec::new();
    for _ in 0..4 {
        let (a, b, c) = tokio::join!(
            cluster.run(0, &["SPOP", "pool"]),
            cluster.run(1, &["SPOP", "pool", "1"]),
            cluster.run(2, &["SPOP", "pool"]),
        );
        for reply in [a, b, c] {
            match reply {
                Reply::Bulk(m) => popped.push(String::from_utf8_lossy(&m).into_owned()),
                Reply::Array(ms) => popped.extend(members(&Reply::Array(ms))),
                Reply::Nil => {}
                // Contended past its proposal: it may or may not have popped.
                Reply::Error(e) if e.starts_with("UNCERTAIN") || e.starts_with("TRYAGAIN") => {}
                other => panic!("{other:?}"),
            }
        }
    }
    let unique: BTreeSet<_> = popped.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        popped.len(),
        "a member popped twice: {popped:?}"
    );
    let left = members(&cluster.run(1, &["SMEMBERS", "pool"]).await);
    assert!(left.is_disjoint(&unique), "popped yet left: {left:?}");
    assert!(popped.len() >= 5, "only {} popped", popped.len());
    assert_eq!(cluster.run(0, &["SPOP", "none"]).await, Reply::Nil);
    assert_eq!(
        cluster.run(0, &["SPOP", "none", "2"]).await,
        Reply::Array(vec![])
    );
}

#[tokio::test(start_paused = true)]
async fn types_keep_to_their_commands() {
    let cluster = Cluster::start().await;
    cluster.run(0, &["SADD", "s", "x"]).await;
    cluster.run(0, &["SET", "str", "v"]).await;
    cluster.run(0, &["HSET", "h", "f", "v"]).await;
    for request in [
        &["GET", "s"][..],
        &["HGETALL", "s"],
        &["HSET", "s", "f", "v"],
        &["HINCRBY", "s", "f", "1"],
        &["HSETNX", "s", "f", "1"],
        &["INCR", "s"],
        &["APPEND", "s", "x"],
        &["SADD", "str", "x"],
        &["SADD", "h", "x"],
        &["SMEMBERS", "str"],
        &["SPOP", "h"],
    ] {
        assert!(
            is_error(&cluster.run(1, request).await, "WRONGTYPE"),
            "{request:?}"
        );
    }
    assert!(is_error(
        &cluster.run(1, &["HSET", "h2", "\0x", "v"]).await,
        "ERR hash field names that begin with a zero byte"
    ));
    // A set renames, and lives in its database.
    assert_eq!(cluster.run(2, &["RENAME", "s", "s2"]).await, Reply::Ok);
    assert_eq!(
        members(&cluster.run(0, &["SMEMBERS", "s2"]).await),
        set_of(&["x"])
    );
    let mut client = cluster.handlers[0].client();
    cluster.run_as(0, &mut client, &["SELECT", "3"]).await;
    cluster.run_as(0, &mut client, &["SADD", "s2", "y"]).await;
    assert_eq!(
        members(&cluster.run_as(0, &mut client, &["SMEMBERS", "s2"]).await),
        set_of(&["y"])
    );
    assert_eq!(
        members(&cluster.run(0, &["SMEMBERS", "s2"]).await),
        set_of(&["x"])
    );
}

#[tokio::test(start_paused = true)]
async fn a_remove_removes_the_adds_it_saw_and_an_add_it_did_not_see_survives() {
    let cluster = Cluster::start().await;
    assert_eq!(
        cluster.run(0, &["SADD", "tags", "keep", "drop"]).await,
        Reply::Int(2)
    );
    cluster.cut_off(2);
    // On the cut-off node, `keep` is added again (the cut-off side cannot
    // reach a quorum: the add is kept all the same)...
    let again = cluster.run(2, &["SADD", "tags", "keep"]).await;
    assert!(is_error(&again, "NOREPLICAS"), "{again:?}");
    // ...and later, on the other side, both members are removed. That
    // remove never saw the add on node-2.
    assert_eq!(
        cluster.run(0, &["SREM", "tags", "keep", "drop"]).await,
        Reply::Int(2)
    );
    cluster.net.heal_all();
    cluster.wait_for_members(&[3, 3, 3]).await;
    // The add the remove did not see survives, though it was made before
    // the remove; what the remove saw stays removed.
    cluster
        .wait_everywhere(&["SMEMBERS", "tags"], &Reply::Array(vec![bulk("keep")]))
        .await;
    assert_eq!(cluster.run(1, &["SCARD", "tags"]).await, Reply::Int(1));
}
