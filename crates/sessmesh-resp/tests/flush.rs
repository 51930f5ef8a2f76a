//! `FLUSHDB` and `FLUSHALL` across three in-memory peers in paused time,
//! each with the command handler: one stamped clear per database that the
//! whole cluster keeps, so a cleared session never comes back, not even
//! from a node that was cut off when the clear was made.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

#[tokio::test(start_paused = true)]
async fn flushdb_clears_its_database_on_every_node_and_flushall_every_one() {
    let cluster = Cluster::start().await;
    let mut one = cluster.handlers[1].client();
    assert_eq!(
        cluster.run_as(1, &mut one, &["SELECT", "1"]).await,
        Reply::Ok
    );
    for i in 0..20 {
        let key = format!("s:{i}");
        cluster.run(0, &["SET", &key, "zero"]).await;
        cluster.run_as(1, &mut one, &["SET", &key, "one"]).await;
    }
    assert_eq!(
        cluster.run_as(1, &mut one, &["FLUSHDB", "ASYNC"]).await,
        Reply::Ok
    );
    // Database 1 is empty through every node at once; database 0 is whole.
    for node in 0..3 {
        let mut client = cluster.handlers[node].client();
        cluster.run_as(node, &mut client, &["SELECT", "1"]).await;
        for i in 0..20 {
            let key = format!("s:{i}");
            assert_eq!(
                cluster.run_as(node, &mut client, &["EXISTS", &key]).await,
                Reply::Int(0),
                "{key} in database 1 through node {node}"
            );
            assert_eq!(cluster.run(node, &["GET", &key]).await, bulk("zero"));
        }
    }
    // A write after the clear stays.
    cluster.run_as(1, &mut one, &["SET", "after", "v"]).await;
    assert_eq!(
        cluster.run_as(1, &mut one, &["GET", "after"]).await,
        bulk("v")
    );
    assert_eq!(cluster.run(2, &["FLUSHALL"]).await, Reply::Ok);
    assert_eq!(cluster.run(0, &["EXISTS", "s:3"]).await, Reply::Int(0));
    assert_eq!(
        cluster.run_as(1, &mut one, &["EXISTS", "after"]).await,
        Reply::Int(0)
    );
    assert!(is_error(
        &cluster.run(0, &["FLUSHDB", "NOW"]).await,
        "ERR syntax error"
    ));
}

#[tokio::test(start_paused = true)]
async fn a_cleared_session_does_not_come_back_from_a_node_that_missed_the_clear() {
    let cluster = Cluster::start().await;
    for i in 0..10 {
        cluster.run(0, &["SET", &format!("old:{i}"), "v"]).await;
    }
    // node-2 is cut off; a session it takes now, before the clear, is one
    // the clear must hide once the two sides meet.
    cluster.cut_off(2);
    let write = cluster.run(2, &["SET", "cut:before", "v"]).await;
    assert!(is_error(&write, "NOREPLICAS"), "{write:?}");
    // The clear cannot reach node-2: it is kept, and answered once every
    // member up holds it (node-2 may be declared down by then) or with
    // NOREPLICAS at the request timeout.
    let flush = cluster.run(0, &["FLUSHDB"]).await;
    assert!(
        flush == Reply::Ok || is_error(&flush, "NOREPLICAS"),
        "{flush:?}"
    );
    assert_eq!(cluster.run(1, &["EXISTS", "old:1"]).await, Reply::Int(0));
    cluster.net.heal_all();
    cluster.wait_for_members(&[3, 3, 3]).await;
    // Written after the clear, on the healed side: stays.
    assert_eq!(cluster.run(1, &["SET", "new", "v"]).await, Reply::Ok);
    // Anti-entropy brings node-2 the clear, and its old sessions stay hidden.
    for i in 0..10 {
        cluster
            .wait_everywhere(&["EXISTS", &format!("old:{i}")], &Reply::Int(0))
            .await;
    }
    cluster
        .wait_everywhere(&["EXISTS", "cut:before"], &Reply::Int(0))
        .await;
    cluster.wait_everywhere(&["GET", "new"], &bulk("v")).await;
    // node-2's own copy holds the clear too: a key from before it stays
    // hidden when node-2 alone answers.
    let local = cluster.peer(2).local_session("cut:before").await.unwrap();
    assert!(
        local.as_ref().is_none_or(sessmesh::Session::is_tombstone),
        "node-2 still holds the session it took before the clear: {local:?}"
    );
}
