//! `maxmemory` on real `sessmesh serve` processes, over raw TCP: under
//! `noeviction` the flag reaches the node, writes that add are refused with
//! Redis's OOM error once it is over, reads and deletes go on, and deleting
//! brings it back under; under `allkeys-lru` three nodes take every write,
//! stay under the bound, and agree on what they evicted; a bad setting is
//! refused at start, naming it.
#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{BIN, http_get, start, wait_for};

/// One connection speaking RESP, a request at a time.
struct Client(BufReader<TcpStream>);

impl Client {
    fn new(server: &support::Server) -> Self {
        let stream = TcpStream::connect(server.resp).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client(BufReader::new(stream))
    }

    /// Sends `args` and reads the reply: a status, error or integer line
    /// as is, a bulk string's contents, or "(nil)".
    fn run(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.reply()
    }

    /// Sends every request, then reads their replies, in order.
    fn pipeline(&mut self, requests: &[Vec<String>]) -> Vec<String> {
        for request in requests {
            let args: Vec<&str> = request.iter().map(String::as_str).collect();
            self.send(&args);
        }
        requests.iter().map(|_| self.reply()).collect()
    }

    fn send(&mut self, args: &[&str]) {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        self.0.get_mut().write_all(&request).unwrap();
    }

    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let line = line.trim_end().to_owned();
        match line.strip_prefix('$') {
            Some("-1") => "(nil)".to_owned(),
            Some(len) => {
                let mut body = vec![0; len.parse::<usize>().unwrap() + 2];
                self.0.read_exact(&mut body).unwrap();
                String::from_utf8_lossy(&body[..body.len() - 2]).into_owned()
            }
            None => line,
        }
    }
}

/// A field of `INFO`'s text.
fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {info}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_node_over_its_maxmemory_flag_refuses_writes_and_recovers_after_deletes() {
    let server = start(&["--development", "--maxmemory", "1mb"]);
    let mut client = Client::new(&server);
    let value = "v".repeat(1024);
    // 1,024-byte sessions: about a thousand fit.
    let mut stored = 0;
    let refusal = loop {
        let reply = client.run(&["SET", &format!("s:{stored}"), &value]);
        if reply != "+OK" {
            break reply;
        }
        stored += 1;
        assert!(stored < 5_000, "no refusal after {stored} writes");
    };
    assert_eq!(
        refusal,
        "-OOM command not allowed when used memory > 'maxmemory'."
    );
    assert!((500..2_000).contains(&stored), "{stored} stored");
    let info = client.run(&["INFO"]);
    assert_eq!(info_field(&info, "maxmemory"), 1 << 20);
    // Over the bound: what it counts, besides what its allocator holds
    // beyond that.
    let beyond = info_field(&info, "mem_not_counted_for_evict");
    assert!(
        info_field(&info, "used_memory") - beyond > 1 << 20,
        "{info}"
    );
    let status: serde_json::Value = serde_json::from_str(&http_get(&server, "/status")).unwrap();
    assert_eq!(status["memory"]["max"], 1 << 20);
    assert_eq!(status["memory"]["policy"], "noeviction");
    // Reads and deletes go on; deleting a tenth brings the node under.
    assert_eq!(client.run(&["GET", "s:0"]), value);
    for i in 0..stored / 10 {
        assert_eq!(client.run(&["DEL", &format!("s:{i}")]), ":1");
    }
    wait_for(
        "the node to take writes again",
        Duration::from_secs(10),
        || client.run(&["SET", "after", "x"]) == "+OK",
    );
    assert_eq!(client.run(&["GET", "after"]), "x");
}

#[test]
fn three_nodes_under_allkeys_lru_take_every_write_stay_bounded_and_agree() {
    const BOUND: u64 = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let servers = support::cluster(
        dir.path(),
        &["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"],
    );
    let mut clients: Vec<Client> = servers.iter().map(Client::new).collect();
    // 15,000 sessions of 256 bytes, about three times what a node holds,
    // spread over the three nodes in pipelines of 500.
    let value = "v".repeat(256);
    for batch in 0..30 {
        let requests: Vec<Vec<String>> = (0..500)
            .map(|i| {
                vec![
                    "SET".into(),
                    format!("s:{}", batch * 500 + i),
                    value.clone(),
                ]
            })
            .collect();
        let replies = clients[batch % 3].pipeline(&requests);
        assert!(
            replies.iter().all(|r| r == "+OK"),
            "batch {batch}: {replies:?}"
        );
    }
    let info = |client: &mut Client| client.run(&["INFO"]);
    let keys = |info: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix("db0:keys="))
            .and_then(|l| l.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    // Every node ends under its bound, and the three hold the same keys.
    wait_for(
        "the nodes to agree, each under its bound",
        Duration::from_secs(30),
        || {
            let infos: Vec<String> = clients.iter_mut().map(info).collect();
            infos.iter().all(|i| {
                info_field(i, "used_memory") - info_field(i, "mem_not_counted_for_evict") <= BOUND
            }) && infos.windows(2).all(|w| keys(&w[0]) == keys(&w[1]))
        },
    );
    let infos: Vec<String> = clients.iter_mut().map(info).collect();
    let evicted: u64 = infos.iter().map(|i| info_field(i, "evicted_keys")).sum();
    let held = keys(&infos[0]);
    assert!(evicted >= 15_000 - held, "{evicted} evicted, {held} held");
    assert!((1_000..10_000).contains(&held), "{held} held");
    println!("{evicted} evicted, {held} held by each node");
    // The newest sessions are held and read alike from every node.
    for i in 14_900..15_000 {
        let key = format!("s:{i}");
        for client in &mut clients {
            assert_eq!(client.run(&["GET", &key]), value, "{key}");
        }
    }
}

#[test]
fn a_bad_memory_setting_is_refused_at_start_by_name() {
    let output = Command::new(BIN)
        .args(["serve", "--development", "--maxmemory", "64mb"])
        .args(["--maxmemory-policy", "lru"])
        .args([
            "--resp-listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .args(["--http-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("maxmemory") && stderr.contains("allkeys-lru"),
        "{stderr}"
    );
    let output = Command::new(BIN)
        .args(["serve", "--development", "--maxmemory", "12 parsecs"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("maxmemory"),
        "{:?}",
        output.stderr
    );
}
