//! Scripts (`EVAL`, `EVALSHA`, `EVAL_RO`, `SCRIPT`) across three in-memory
//! peers in paused time, each with the command handler: a script runs
//! atomically on its key through the consensus path, whichever node runs it.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

/// phpredis's session lock release: delete the lock only if it is still ours.
const RELEASE: &str = "if redis.call(\"get\",KEYS[1]) == ARGV[1] then return redis.call(\"del\",KEYS[1]) else return 0 end";

/// A read-modify-write that loses updates unless it runs atomically.
const BUMP: &str = "local n = tonumber(redis.call('GET', KEYS[1]) or '0') + 1 \
                    redis.call('SET', KEYS[1], n) return n";

/// `request` sent through each node at once; the three replies.
async fn from_every_node(cluster: &Cluster, request: &[&str]) -> [Reply; 3] {
    let (a, b, c) = tokio::join!(
        cluster.run(0, request),
        cluster.run(1, request),
        cluster.run(2, request),
    );
    [a, b, c]
}

#[tokio::test(start_paused = true)]
async fn the_phpredis_lock_release_script_deletes_only_its_own_lock() {
    let cluster = Cluster::start().await;
    let lock = "PHPREDIS_SESSION:abc_LOCK";
    assert_eq!(
        cluster
            .run(0, &["SET", lock, "host|42", "NX", "PX", "30000"])
            .await,
        Reply::Ok
    );
    // Someone else's token leaves it.
    assert_eq!(
        cluster
            .run(1, &["EVAL", RELEASE, "1", lock, "other|7"])
            .await,
        Reply::Int(0)
    );
    assert_eq!(cluster.run(2, &["GET", lock]).await, bulk("host|42"));
    // phpredis tries EVALSHA first: unknown on a node that never saw it.
    let sha = cluster.run(1, &["SCRIPT", "LOAD", RELEASE]).await;
    let Reply::Bulk(sha) = sha else {
        panic!("SCRIPT LOAD: {sha:?}")
    };
    let sha = std::str::from_utf8(&sha).unwrap().to_owned();
    assert_eq!(sha.len(), 40);
    let unknown = cluster
        .run(2, &["EVALSHA", &sha, "1", lock, "host|42"])
        .await;
    assert!(
        matches!(&unknown, Reply::Error(e) if e.starts_with("NOSCRIPT")),
        "{unknown:?}"
    );
    // Its own token deletes it, everywhere.
    assert_eq!(
        cluster
            .run(1, &["EVALSHA", &sha, "1", lock, "host|42"])
            .await,
        Reply::Int(1)
    );
    for node in 0..3 {
        assert_eq!(cluster.run(node, &["EXISTS", lock]).await, Reply::Int(0));
    }
    assert_eq!(
        cluster
            .run(1, &["SCRIPT", "EXISTS", &sha, &"0".repeat(40)])
            .await,
        Reply::Array(vec![Reply::Int(1), Reply::Int(0)])
    );
    assert_eq!(cluster.run(1, &["SCRIPT", "FLUSH"]).await, Reply::Ok);
    assert!(is_error(
        &cluster.run(1, &["EVALSHA", &sha, "1", lock, "x"]).await,
        "NOSCRIPT"
    ));
}

#[tokio::test(start_paused = true)]
async fn scripts_raced_from_every_node_lose_no_update() {
    let cluster = Cluster::start().await;
    let mut answered = Vec::new();
    let mut uncertain = 0;
    for _ in 0..10 {
        for reply in from_every_node(&cluster, &["EVAL", BUMP, "1", "counter"]).await {
            match reply {
                Reply::Int(n) => answered.push(n),
                Reply::Error(e) if e.starts_with("UNCERTAIN") => uncertain += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    // Each decided run saw every one decided before it: no two saw one value.
    let runs = answered.len();
    answered.sort_unstable();
    answered.dedup();
    assert_eq!(answered.len(), runs, "two scripts read the same count");
    let Reply::Bulk(total) = cluster.run(1, &["GET", "counter"]).await else {
        panic!("no counter");
    };
    let total: usize = std::str::from_utf8(&total).unwrap().parse().unwrap();
    assert!(
        (runs..=runs + uncertain).contains(&total),
        "{total} after {runs} decided and {uncertain} uncertain runs"
    );
    assert!(runs >= 20, "only {runs} of 30 runs were decided");
}

/// Moves one unit from `KEYS[1]` to `KEYS[2]`; both counts after.
const MOVE: &str = "local a = redis.call('DECR', KEYS[1]) local b = redis.call('INCR', KEYS[2]) \
                    return {a, b}";

#[tokio::test(start_paused = true)]
async fn scripts_over_keys_of_one_hash_tag_are_all_or_nothing() {
    let cluster = Cluster::start().await;
    let mut moved = Vec::new();
    let mut uncertain = 0;
    for _ in 0..8 {
        let request = ["EVAL", MOVE, "2", "{acct}:from", "{acct}:to"];
        for reply in from_every_node(&cluster, &request).await {
            match reply {
                Reply::Array(counts) => {
                    let [Reply::Int(from), Reply::Int(to)] = counts.as_slice() else {
                        panic!("{counts:?}");
                    };
                    // Each run saw both keys as the one before left them.
                    assert_eq!(from + to, 0, "{counts:?}");
                    moved.push(*to);
                }
                Reply::Error(e) if e.starts_with("UNCERTAIN") || e.starts_with("TRYAGAIN") => {
                    uncertain += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let runs = moved.len();
    moved.sort_unstable();
    moved.dedup();
    assert_eq!(moved.len(), runs, "two scripts read the same counts");
    assert!(runs >= 16, "only {runs} of 24 runs were decided");
    let both = cluster.run(1, &["MGET", "{acct}:from", "{acct}:to"]).await;
    let Reply::Array(both) = both else {
        panic!("{both:?}")
    };
    let count = |r: &Reply| match r {
        Reply::Bulk(v) => std::str::from_utf8(v).unwrap().parse::<usize>().ok(),
        _ => None,
    };
    let to = count(&both[1]).unwrap();
    assert!((runs..=runs + uncertain).contains(&to), "{both:?}");
    assert_eq!(both[0], Reply::Bulk(format!("-{to}").into()), "{both:?}");
}

#[tokio::test(start_paused = true)]
async fn scripts_answer_as_redis_answers() {
    let cluster = Cluster::start().await;
    // Hashes, expiry and conversions.
    let session = "local n = redis.call('HSET', KEYS[1], 'user', ARGV[1], 'cart', '2') \
                   redis.call('PEXPIRE', KEYS[1], 60000) \
                   return {n, redis.call('HGET', KEYS[1], 'user'), redis.call('PTTL', KEYS[1]) > 0}";
    assert_eq!(
        cluster.run(0, &["EVAL", session, "1", "s:1", "ada"]).await,
        Reply::Array(vec![Reply::Int(2), bulk("ada"), Reply::Int(1)])
    );
    assert_eq!(cluster.run(2, &["HGET", "s:1", "cart"]).await, bulk("2"));
    let Reply::Int(ttl) = cluster.run(1, &["PTTL", "s:1"]).await else {
        panic!("no ttl");
    };
    assert!((1..=60_000).contains(&ttl), "{ttl}");
    // A command's error ends the script with that error, keeping what it
    // did before (as Redis does).
    let wrong = "redis.call('SET', KEYS[1], 'x') return redis.call('HGET', KEYS[1], 'f')";
    let reply = cluster.run(1, &["EVAL", wrong, "1", "s:2"]).await;
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("WRONGTYPE")),
        "{reply:?}"
    );
    assert_eq!(cluster.run(0, &["GET", "s:2"]).await, bulk("x"));
    // redis.pcall hands the error to the script.
    let caught = "local r = redis.pcall('INCR', KEYS[1]) return r.err";
    assert_eq!(
        cluster.run(2, &["EVAL", caught, "1", "s:2"]).await,
        bulk("ERR value is not an integer or out of range")
    );
    // Read-only scripts may not write; keys must be declared; one key.
    let reply = cluster
        .run(
            0,
            &["EVAL_RO", "return redis.call('DEL', KEYS[1])", "1", "s:2"],
        )
        .await;
    assert!(
        matches!(&reply, Reply::Error(e) if e.contains("read-only scripts")),
        "{reply:?}"
    );
    assert_eq!(
        cluster
            .run(
                0,
                &["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "s:2"]
            )
            .await,
        bulk("x")
    );
    let reply = cluster
        .run(
            0,
            &["EVAL", "return redis.call('GET', 'elsewhere')", "1", "s:2"],
        )
        .await;
    assert!(
        matches!(&reply, Reply::Error(e) if e.contains("declares in KEYS")),
        "{reply:?}"
    );
    assert!(is_error(
        &cluster
            .run(0, &["EVAL", "return 1", "2", "s:1", "s:2"])
            .await,
        "CROSSSLOT Keys in request don't hash to the same slot"
    ));
    assert_eq!(
        cluster
            .run(0, &["EVAL", "return 1", "2", "s:1", "s:1"])
            .await,
        Reply::Int(1)
    );
    assert!(is_error(
        &cluster.run(0, &["EVAL", "return 1", "3", "k"]).await,
        "ERR Number of keys can't be greater"
    ));
    assert!(is_error(
        &cluster.run(0, &["EVAL", "return 1", "-1"]).await,
        "ERR Number of keys can't be negative"
    ));
    // A script stopped by lua-time-limit writes nothing.
    assert_eq!(
        cluster
            .run(1, &["CONFIG", "SET", "lua-time-limit", "50"])
            .await,
        Reply::Ok
    );
    let runaway = "redis.call('SET', KEYS[1], 'never') while true do end";
    let reply = cluster.run(1, &["EVAL", runaway, "1", "s:3"]).await;
    assert!(
        matches!(&reply, Reply::Error(e) if e.contains("lua-time-limit (50 ms)")),
        "{reply:?}"
    );
    assert_eq!(cluster.run(0, &["EXISTS", "s:3"]).await, Reply::Int(0));
}

#[tokio::test(start_paused = true)]
async fn a_script_runs_in_its_clients_database() {
    let cluster = Cluster::start().await;
    let mut one = cluster.handlers[0].client();
    assert_eq!(
        cluster.run_as(0, &mut one, &["SELECT", "1"]).await,
        Reply::Ok
    );
    let set = "redis.call('SET', KEYS[1], ARGV[1]) return KEYS[1]";
    assert_eq!(
        cluster
            .run_as(0, &mut one, &["EVAL", set, "1", "k", "in-1"])
            .await,
        bulk("k")
    );
    assert_eq!(
        cluster.run_as(0, &mut one, &["GET", "k"]).await,
        bulk("in-1")
    );
    assert_eq!(cluster.run(1, &["EXISTS", "k"]).await, Reply::Int(0));
}
