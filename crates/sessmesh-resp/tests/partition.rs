//! Redis commands through a node cut off from the rest of its cluster:
//! three in-memory peers in paused time, each with the command handler.
//! A logout (`DEL`) or a field update (`HSET`, `HDEL`) made on the cut-off
//! side is written whatever its preliminary read returns, and holds after
//! the heal; a cut-off node does not call its one copy a quorum.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use std::time::Duration;

use sessmesh_resp::Reply;
use support::{Cluster, is_error};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn removals_and_field_writes_on_the_cut_off_side_hold_after_the_heal() {
    let cluster = Cluster::start().await;
    assert_eq!(cluster.run(0, &["SET", "old", "v"]).await, Reply::Ok);
    assert_eq!(
        cluster.run(0, &["HSET", "cart", "a", "1", "b", "2"]).await,
        Reply::Int(2)
    );

    // node-0 is cut off; nobody has declared anybody down yet.
    cluster.cut_off(0);
    // Created on the majority side: node-0 never sees it.
    assert_eq!(cluster.run(1, &["SET", "new", "v"]).await, Reply::Ok);
    // Each of these reads first and cannot reach a quorum; the removal or
    // the field is written anyway, and the reply says that too few copies
    // acknowledged it.
    let del = cluster.run(0, &["DEL", "new", "old"]).await;
    assert!(is_error(&del, "NOREPLICAS"), "{del:?}");
    let hset = cluster.run(0, &["HSET", "cart", "c", "3"]).await;
    assert!(is_error(&hset, "NOREPLICAS"), "{hset:?}");
    let hdel = cluster.run(0, &["HDEL", "cart", "a"]).await;
    assert!(is_error(&hdel, "NOREPLICAS"), "{hdel:?}");

    // Once node-0 has declared the others down, it is the only replica it
    // reaches: a quorum of three copies is still two, and it says so at once.
    cluster.wait_for_members(&[1, 2, 2]).await;
    let before = Instant::now();
    let set = cluster.run(0, &["SET", "alone", "v"]).await;
    assert!(is_error(&set, "NOREPLICAS"), "{set:?}");
    assert!(
        before.elapsed() < Duration::from_millis(100),
        "answered at once, not at the request deadline: {:?}",
        before.elapsed()
    );
    // A delete of a session it never saw is written all the same.
    assert_eq!(cluster.run(1, &["SET", "later", "v"]).await, Reply::Ok);
    let del = cluster.run(0, &["DEL", "later"]).await;
    assert!(is_error(&del, "NOREPLICAS"), "{del:?}");

    cluster.net.heal_all();
    cluster.wait_for_members(&[3, 3, 3]).await;
    for key in ["old", "new", "later"] {
        cluster
            .wait_everywhere(&["EXISTS", key], &Reply::Int(0))
            .await;
    }
    cluster
        .wait_everywhere(&["GET", "alone"], &Reply::bulk("v"))
        .await;
    let cart = Reply::Map(vec![
        (Reply::bulk("b"), Reply::bulk("2")),
        (Reply::bulk("c"), Reply::bulk("3")),
    ]);
    cluster.wait_everywhere(&["HGETALL", "cart"], &cart).await;
}
