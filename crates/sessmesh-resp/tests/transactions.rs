//! `MULTI`, `EXEC`, `DISCARD`, `WATCH` and `UNWATCH` with Redis's replies,
//! across three in-memory peers in paused time.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

const QUEUED: Reply = Reply::Simple("QUEUED");

#[tokio::test(start_paused = true)]
async fn queued_commands_run_at_exec_and_not_before() {
    let cluster = Cluster::start().await;
    let mut client = cluster.handlers[0].client();
    assert_eq!(cluster.run_as(0, &mut client, &["MULTI"]).await, Reply::Ok);
    assert_eq!(
        cluster.run_as(0, &mut client, &["SET", "a", "1"]).await,
        QUEUED
    );
    assert_eq!(cluster.run_as(0, &mut client, &["INCR", "a"]).await, QUEUED);
    assert_eq!(cluster.run_as(0, &mut client, &["GET", "a"]).await, QUEUED);
    assert_eq!(
        cluster
            .run_as(0, &mut client, &["EXPIRE", "a", "100"])
            .await,
        QUEUED
    );
    // Nothing ran yet, here or elsewhere.
    assert_eq!(cluster.run(1, &["GET", "a"]).await, Reply::Nil);
    assert_eq!(
        cluster.run_as(0, &mut client, &["EXEC"]).await,
        Reply::Array(vec![Reply::Ok, Reply::Int(2), bulk("2"), Reply::Int(1)])
    );
    assert_eq!(cluster.run(2, &["GET", "a"]).await, bulk("2"));
    // The connection is out of the transaction.
    assert_eq!(
        cluster.run_as(0, &mut client, &["GET", "a"]).await,
        bulk("2")
    );
    assert!(is_error(
        &cluster.run_as(0, &mut client, &["EXEC"]).await,
        "ERR EXEC without MULTI"
    ));
}

#[tokio::test(start_paused = true)]
async fn a_refused_command_aborts_the_whole_transaction() {
    let cluster = Cluster::start().await;
    for bad in [
        &["GET"][..],
        &["NOSUCH", "x"],
        &["SET", "b", "1", "EX", "0"],
    ] {
        let mut client = cluster.handlers[1].client();
        cluster.run_as(1, &mut client, &["MULTI"]).await;
        assert_eq!(
            cluster
                .run_as(1, &mut client, &["SET", "b", "written"])
                .await,
            QUEUED
        );
        let refused = cluster.run_as(1, &mut client, bad).await;
        assert!(refused.is_error(), "{bad:?}: {refused:?}");
        assert!(
            is_error(
                &cluster.run_as(1, &mut client, &["EXEC"]).await,
                "EXECABORT Transaction discarded because of previous errors."
            ),
            "{bad:?}"
        );
        assert_eq!(cluster.run(2, &["GET", "b"]).await, Reply::Nil, "{bad:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn discard_and_misuse_answer_as_redis_does() {
    let cluster = Cluster::start().await;
    let mut client = cluster.handlers[2].client();
    assert!(is_error(
        &cluster.run_as(2, &mut client, &["DISCARD"]).await,
        "ERR DISCARD without MULTI"
    ));
    cluster.run_as(2, &mut client, &["MULTI"]).await;
    assert!(is_error(
        &cluster.run_as(2, &mut client, &["MULTI"]).await,
        "ERR MULTI calls can not be nested"
    ));
    assert!(is_error(
        &cluster.run_as(2, &mut client, &["WATCH", "c"]).await,
        "ERR WATCH inside MULTI is not allowed"
    ));
    cluster.run_as(2, &mut client, &["SET", "c", "1"]).await;
    assert_eq!(
        cluster.run_as(2, &mut client, &["DISCARD"]).await,
        Reply::Ok
    );
    assert_eq!(cluster.run(0, &["GET", "c"]).await, Reply::Nil);
    // Misuse inside MULTI does not abort it.
    cluster.run_as(2, &mut client, &["MULTI"]).await;
    cluster.run_as(2, &mut client, &["MULTI"]).await;
    cluster.run_as(2, &mut client, &["SET", "c", "2"]).await;
    assert_eq!(
        cluster.run_as(2, &mut client, &["EXEC"]).await,
        Reply::Array(vec![Reply::Ok])
    );
}

#[tokio::test(start_paused = true)]
async fn exec_answers_nil_when_a_watched_key_changed() {
    let cluster = Cluster::start().await;
    cluster.run(0, &["SET", "w", "0"]).await;
    let mut client = cluster.handlers[0].client();
    assert_eq!(
        cluster
            .run_as(0, &mut client, &["WATCH", "w", "other"])
            .await,
        Reply::Ok
    );
    // Another client on another node writes the same value.
    cluster.run(1, &["SET", "w", "0"]).await;
    cluster.run_as(0, &mut client, &["MULTI"]).await;
    cluster.run_as(0, &mut client, &["SET", "w", "mine"]).await;
    assert_eq!(cluster.run_as(0, &mut client, &["EXEC"]).await, Reply::Nil);
    assert_eq!(cluster.run(2, &["GET", "w"]).await, bulk("0"));
    // EXEC unwatched everything: the next transaction runs.
    cluster.run_as(0, &mut client, &["MULTI"]).await;
    cluster.run_as(0, &mut client, &["SET", "w", "mine"]).await;
    assert_eq!(
        cluster.run_as(0, &mut client, &["EXEC"]).await,
        Reply::Array(vec![Reply::Ok])
    );
    // Watched and unchanged (a key that does not exist included): runs.
    cluster
        .run_as(0, &mut client, &["WATCH", "w", "absent"])
        .await;
    cluster.run_as(0, &mut client, &["MULTI"]).await;
    cluster.run_as(0, &mut client, &["GET", "w"]).await;
    assert_eq!(
        cluster.run_as(0, &mut client, &["EXEC"]).await,
        Reply::Array(vec![bulk("mine")])
    );
    // UNWATCH forgets: a change after it does not abort.
    cluster.run_as(0, &mut client, &["WATCH", "w"]).await;
    cluster.run_as(0, &mut client, &["UNWATCH"]).await;
    cluster.run(1, &["SET", "w", "theirs"]).await;
    cluster.run_as(0, &mut client, &["MULTI"]).await;
    cluster.run_as(0, &mut client, &["DEL", "w"]).await;
    assert_eq!(
        cluster.run_as(0, &mut client, &["EXEC"]).await,
        Reply::Array(vec![Reply::Int(1)])
    );
}
