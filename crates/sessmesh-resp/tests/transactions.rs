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

/// One transaction of three `INCR k` then `GET k` through `node`: the
/// replies, or the error EXEC answered.
async fn incr_then_get(cluster: &Cluster, node: usize) -> Reply {
    let mut client = cluster.handlers[node].client();
    let incr = &["INCR", "tx:k"][..];
    for request in [&["MULTI"][..], incr, incr, incr, &["GET", "tx:k"]] {
        cluster.run_as(node, &mut client, request).await;
    }
    cluster.run_as(node, &mut client, &["EXEC"]).await
}

#[tokio::test(start_paused = true)]
async fn a_transaction_over_one_key_is_all_or_nothing_across_nodes() {
    let cluster = Cluster::start().await;
    let mut counts = Vec::new();
    for _ in 0..8 {
        let (a, b, c) = tokio::join!(
            incr_then_get(&cluster, 0),
            incr_then_get(&cluster, 1),
            incr_then_get(&cluster, 2),
        );
        for reply in [a, b, c] {
            match reply {
                // Nothing ran between the INCRs and the GET.
                Reply::Array(replies) => {
                    let [
                        Reply::Int(a),
                        Reply::Int(b),
                        Reply::Int(c),
                        Reply::Bulk(read),
                    ] = replies.as_slice()
                    else {
                        panic!("{replies:?}");
                    };
                    assert_eq!((*b, *c), (a + 1, a + 2), "{replies:?}");
                    assert_eq!(read.as_ref(), c.to_string().as_bytes(), "{replies:?}");
                    counts.push(*a);
                }
                Reply::Error(e) if e.starts_with("UNCERTAIN") || e.starts_with("TRYAGAIN") => {}
                other => panic!("{other:?}"),
            }
        }
    }
    let decided = counts.len();
    counts.sort_unstable();
    counts.dedup();
    assert_eq!(counts.len(), decided, "two transactions saw one count");
    assert!(
        decided >= 16,
        "only {decided} of 24 transactions were decided"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reader_never_sees_a_transaction_over_one_key_half_done() {
    let cluster = Cluster::start().await;
    let writer = async {
        for _ in 0..6 {
            assert!(matches!(incr_then_get(&cluster, 0).await, Reply::Array(_)));
        }
    };
    let reader = async {
        let mut seen = Vec::new();
        for _ in 0..300 {
            if let Reply::Bulk(value) = cluster.run(1, &["GET", "tx:k"]).await {
                seen.push(std::str::from_utf8(&value).unwrap().parse::<i64>().unwrap());
            }
            tokio::task::yield_now().await;
        }
        seen
    };
    let ((), seen) = tokio::join!(writer, reader);
    assert!(
        seen.iter().all(|n| n % 3 == 0),
        "a reader saw a transaction of three INCRs part-way: {seen:?}"
    );
    assert!(seen.iter().any(|n| *n > 0 && *n < 18), "{seen:?}");
}

/// One transaction moving one unit from `{acct}:a` to `{acct}:b` through
/// `node`, then reading both: the replies, or the error EXEC answered.
async fn transfer(cluster: &Cluster, node: usize) -> Reply {
    let mut client = cluster.handlers[node].client();
    let requests: [&[&str]; 5] = [
        &["MULTI"],
        &["DECRBY", "{acct}:a", "1"],
        &["INCRBY", "{acct}:b", "1"],
        &["MGET", "{acct}:a", "{acct}:b"],
        &["EXEC"],
    ];
    let mut reply = Reply::Nil;
    for request in requests {
        reply = cluster.run_as(node, &mut client, request).await;
    }
    reply
}

/// Both keys read together in a transaction through `node`.
async fn read_both(cluster: &Cluster, node: usize) -> Vec<Option<i64>> {
    let mut client = cluster.handlers[node].client();
    cluster.run_as(node, &mut client, &["MULTI"]).await;
    let mget = ["MGET", "{acct}:a", "{acct}:b"];
    cluster.run_as(node, &mut client, &mget).await;
    let reply = cluster.run_as(node, &mut client, &["EXEC"]).await;
    let Reply::Array(replies) = reply else {
        panic!("{reply:?}")
    };
    let [Reply::Array(values)] = replies.as_slice() else {
        panic!("{replies:?}")
    };
    values
        .iter()
        .map(|v| match v {
            Reply::Bulk(v) => std::str::from_utf8(v).unwrap().parse().ok(),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_transaction_over_keys_of_one_hash_tag_is_all_or_nothing() {
    let cluster = Cluster::start().await;
    let done = std::cell::Cell::new(false);
    let writers = async {
        let mut decided = 0;
        for _ in 0..6 {
            let (a, b, c) = tokio::join!(
                transfer(&cluster, 0),
                transfer(&cluster, 1),
                transfer(&cluster, 2)
            );
            for reply in [a, b, c] {
                match reply {
                    Reply::Array(replies) => {
                        let [Reply::Int(a), Reply::Int(b), Reply::Array(read)] = replies.as_slice()
                        else {
                            panic!("{replies:?}");
                        };
                        // Nothing ran between the two writes and the read.
                        assert_eq!(a + b, 0, "{replies:?}");
                        let wrote = vec![bulk(&a.to_string()), bulk(&b.to_string())];
                        assert_eq!(read, &wrote, "{replies:?}");
                        decided += 1;
                    }
                    Reply::Error(e) if e.starts_with("UNCERTAIN") || e.starts_with("TRYAGAIN") => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        done.set(true);
        decided
    };
    let reader = async {
        let mut seen = Vec::new();
        // Bursts of reads until the transfers are done. Each burst runs in
        // the same instant as the steps the writers take after their
        // pauses (whole milliseconds of paused time); the tick between
        // bursts is what lets that time pass, not a wait for anything.
        while !done.get() {
            for _ in 0..5 {
                seen.push(read_both(&cluster, 1).await);
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        seen
    };
    let (decided, seen) = tokio::join!(writers, reader);
    assert!(decided >= 12, "only {decided} of 18 transfers were decided");
    // A reader never sees one key moved and not the other.
    for values in &seen {
        let sum = values.iter().map(|v| v.unwrap_or(0)).sum::<i64>();
        assert_eq!(sum, 0, "a reader saw a transfer half done: {seen:?}");
    }
    assert!(
        seen.iter().any(|v| v[1].is_some_and(|b| b > 0 && b < 12)),
        "the reader never overlapped a transfer: {seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_transaction_over_several_hash_tags_runs_its_commands_in_order() {
    let cluster = Cluster::start().await;
    let mut client = cluster.handlers[0].client();
    for request in [
        &["MULTI"][..],
        &["SET", "{a}:1", "x"],
        &["SET", "{b}:1", "y"],
        &["MGET", "{a}:1", "{b}:1"],
    ] {
        cluster.run_as(0, &mut client, request).await;
    }
    assert_eq!(
        cluster.run_as(0, &mut client, &["EXEC"]).await,
        Reply::Array(vec![
            Reply::Ok,
            Reply::Ok,
            Reply::Array(vec![bulk("x"), bulk("y")]),
        ])
    );
}
