//! What clients ask about keys besides their values: `TOUCH`, `HSTRLEN`,
//! `OBJECT ENCODING`, across three in-memory peers in paused time.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use sessmesh_resp::Reply;
use support::{Cluster, bulk, is_error};

#[tokio::test(start_paused = true)]
async fn touch_hstrlen_and_encodings_answer_as_redis_does() {
    let cluster = Cluster::start().await;
    cluster.run(0, &["SET", "n", "12345"]).await;
    cluster.run(0, &["SET", "short", "hello"]).await;
    cluster.run(0, &["SET", "long", &"x".repeat(45)]).await;
    cluster.run(0, &["HSET", "h", "field", "value"]).await;
    cluster.run(0, &["HSET", "big", "f", &"y".repeat(65)]).await;
    assert_eq!(
        cluster.run(1, &["TOUCH", "n", "h", "none"]).await,
        Reply::Int(2)
    );
    assert_eq!(
        cluster.run(2, &["HSTRLEN", "h", "field"]).await,
        Reply::Int(5)
    );
    assert_eq!(
        cluster.run(2, &["HSTRLEN", "h", "nope"]).await,
        Reply::Int(0)
    );
    assert!(is_error(
        &cluster.run(2, &["HSTRLEN", "n", "f"]).await,
        "WRONGTYPE"
    ));
    for (key, encoding) in [
        ("n", "int"),
        ("short", "embstr"),
        ("long", "raw"),
        ("h", "listpack"),
        ("big", "hashtable"),
    ] {
        assert_eq!(
            cluster.run(1, &["OBJECT", "ENCODING", key]).await,
            bulk(encoding),
            "{key}"
        );
    }
    assert_eq!(
        cluster.run(1, &["OBJECT", "encoding", "none"]).await,
        Reply::Nil
    );
    assert!(is_error(
        &cluster.run(1, &["OBJECT", "FREQ", "n"]).await,
        "ERR unknown subcommand 'FREQ'"
    ));
}
