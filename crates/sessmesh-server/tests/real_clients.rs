//! Real Redis clients against a three-node cluster of `sessmesh serve`
//! processes on loopback: redis-cli, and redis-py with RESP2 and RESP3.
//!
//! Needs `redis-cli` (Debian's redis-tools) and the `redis` Python package.
//! Without them the test says so and passes, unless
//! `SESSMESH_REQUIRE_CLIENTS=1` (which CI sets) makes their absence a failure.
#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Server, cluster, http_get, wait_for};

fn clients_available() -> bool {
    let cli = Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let py = Command::new("python3")
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if cli && py {
        return true;
    }
    let missing =
        "redis-cli (apt install redis-tools) and the redis Python package (pip install redis)";
    assert!(
        std::env::var("SESSMESH_REQUIRE_CLIENTS").as_deref() != Ok("1"),
        "SESSMESH_REQUIRE_CLIENTS=1 but {missing} are not both installed"
    );
    eprintln!("skipping the real-client test: it needs {missing}");
    false
}

fn cli(server: &Server, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &server.resp.port().to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

#[test]
fn redis_cli_and_redis_py_use_a_three_node_cluster() {
    if !clients_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), &[]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // redis-cli: written via one node, read via another.
    assert_eq!(cli(a, &["SET", "cli:session", "ada"]), "OK");
    assert_eq!(cli(b, &["GET", "cli:session"]), "ada");
    // Hash fields written on two nodes merge.
    assert_eq!(cli(a, &["HSET", "cli:cart", "items", "2"]), "1");
    assert_eq!(cli(b, &["HSET", "cli:cart", "theme", "dark"]), "1");
    assert_eq!(cli(c, &["HGETALL", "cli:cart"]), "items\n2\ntheme\ndark");
    // DEL on one node removes it everywhere.
    assert_eq!(cli(c, &["DEL", "cli:session"]), "1");
    for node in &nodes {
        assert_eq!(cli(node, &["EXISTS", "cli:session"]), "0");
    }
    // TTLs are honoured.
    assert_eq!(cli(a, &["SET", "cli:short", "v", "PX", "500"]), "OK");
    let ttl: i64 = cli(b, &["PTTL", "cli:short"]).parse().unwrap();
    assert!((1..=500).contains(&ttl), "{ttl}");
    wait_for("cli:short to expire", Duration::from_secs(10), || {
        cli(c, &["GET", "cli:short"]).is_empty()
    });
    // A pipeline of 1,000 commands in raw protocol through --pipe.
    let mut pipe = Command::new("redis-cli")
        .args(["-p", &b.resp.port().to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = Vec::new();
    for i in 0..1_000 {
        let (k, v) = (format!("cli:p{i}"), i.to_string());
        write!(
            input,
            "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
            k.len(),
            v.len()
        )
        .unwrap();
    }
    pipe.stdin.take().unwrap().write_all(&input).unwrap();
    let out = pipe.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("errors: 0, replies: 1000"), "{summary}");
    assert_eq!(cli(c, &["GET", "cli:p999"]), "999");

    // redis-py, RESP2 and RESP3.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients.py");
    for protocol in ["2", "3"] {
        let addrs: Vec<String> = nodes.iter().map(|n| n.resp.to_string()).collect();
        let out = Command::new("python3")
            .args([script, "--protocol", protocol])
            .args(&addrs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-py RESP{protocol}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The metrics counted what ran.
    let metrics = http_get(a, "/metrics");
    assert!(
        metrics.contains("sessmesh_commands_total{command=\"SET\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("sessmesh_members{state="), "{metrics}");
    assert_eq!(http_get(a, "/health"), "ok\n");
}

#[test]
fn clients_can_connect_over_tls() {
    if !clients_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    support::certificates(dir.path(), &["node-1"]);
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    let (cert, key, ca) = (path("node-1.pem"), path("node-1.key"), path("ca.pem"));
    let node = support::start(&[
        "--development",
        "--resp-tls-cert",
        &cert,
        "--resp-tls-key",
        &key,
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients.py");
    let addr = node.resp.to_string();
    for protocol in ["2", "3"] {
        let out = Command::new("python3")
            .args([script, "--protocol", protocol, "--tls-ca", &ca])
            .args([&addr, &addr, &addr])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-py RESP{protocol} over TLS:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Plain text is not served on the TLS port.
    let plain = Command::new("redis-cli")
        .args(["-p", &node.resp.port().to_string(), "PING"])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout).trim(), "PONG");
}

#[test]
fn a_password_is_required_when_set() {
    if !clients_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), &["--requirepass", "s3cret"]);
    let a = &nodes[0];
    assert_eq!(cli(a, &["GET", "k"]), "NOAUTH Authentication required.");
    assert_eq!(
        cli(a, &["--no-auth-warning", "-a", "s3cret", "SET", "k", "v"]),
        "OK"
    );
    // redis-cli reports the refused AUTH on stderr and sends the command anyway.
    assert_eq!(
        cli(a, &["--no-auth-warning", "-a", "wrong", "GET", "k"]),
        "NOAUTH Authentication required."
    );
    assert_eq!(
        cli(a, &["--no-auth-warning", "-a", "s3cret", "GET", "k"]),
        "v"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients.py");
    let addrs: Vec<String> = nodes.iter().map(|n| n.resp.to_string()).collect();
    for protocol in ["2", "3"] {
        let out = Command::new("python3")
            .args([script, "--protocol", protocol, "--password", "s3cret"])
            .args(&addrs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-py RESP{protocol} with AUTH:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
