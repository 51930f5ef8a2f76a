//! Real processes racing atomic commands: three `sessmesh serve` nodes,
//! with clients on all three at once. Of the `SET k v NX`s raced for one
//! key, exactly one wins; shared counters end at the number of `INCR`s
//! acknowledged.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;

use support::{Server, cluster};

/// A plain RESP connection.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        Client {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        }
    }

    /// Sends a command; its reply as text (`+OK`, `:3`, `$v` for a bulk,
    /// `nil`, `-ERR ...`).
    fn call(&mut self, args: &[&str]) -> String {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.writer.write_all(request.as_bytes()).expect("send");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("reply");
        let line = line.trim_end().to_owned();
        if line == "$-1" || line == "_" {
            return "nil".into();
        }
        if let Some(len) = line.strip_prefix('$') {
            let len: usize = len.parse().expect("bulk length");
            let mut value = String::new();
            while value.len() < len + 2 {
                self.reader.read_line(&mut value).expect("bulk");
            }
            return format!("${}", value.trim_end());
        }
        line
    }
}

fn servers_resp(servers: &[Server]) -> Vec<SocketAddr> {
    servers.iter().map(|s| s.resp).collect()
}

#[test]
fn set_nx_has_one_winner_and_counters_add_up_across_three_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let servers = cluster(dir.path(), &[]);
    let addrs = servers_resp(&servers);
    const KEYS: usize = 60;
    const INCRS: usize = 100;

    // Every key raced by one client per node, started together.
    let barrier = Arc::new(Barrier::new(addrs.len()));
    let racers: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                (0..KEYS)
                    .map(|k| {
                        barrier.wait();
                        client.call(&["SET", &format!("race:{k}"), &format!("node-{i}"), "NX"])
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let replies: Vec<Vec<String>> = racers
        .into_iter()
        .map(|r| r.join().expect("racer"))
        .collect();
    let mut uncertain = 0;
    for k in 0..KEYS {
        let of_key: Vec<&String> = replies.iter().map(|r| &r[k]).collect();
        let wins = of_key.iter().filter(|r| r.as_str() == "+OK").count();
        let unsure = of_key
            .iter()
            .filter(|r| r.starts_with("-UNCERTAIN"))
            .count();
        uncertain += unsure;
        assert!(
            wins == 1 || (wins == 0 && unsure > 0),
            "race:{k}: {of_key:?}"
        );
        assert!(
            of_key.iter().all(|r| *r == "+OK"
                || *r == "nil"
                || r.starts_with("-TRYAGAIN")
                || r.starts_with("-UNCERTAIN")),
            "race:{k}: {of_key:?}"
        );
        // Every node reads the winner's value.
        let mut reader = Client::connect(addrs[k % addrs.len()]);
        let held = reader.call(&["GET", &format!("race:{k}")]);
        if wins == 1 {
            let winner = of_key
                .iter()
                .position(|r| r.as_str() == "+OK")
                .expect("a winner");
            assert_eq!(held, format!("$node-{winner}"), "race:{k}: {of_key:?}");
        }
    }

    // Shared counters, incremented from every node at once.
    let counters: Vec<_> = addrs
        .iter()
        .map(|&addr| {
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut acknowledged = [0u64; 2];
                let mut unsure = [0u64; 2];
                for n in 0..INCRS {
                    let counter = n % 2;
                    let reply = client.call(&["INCR", &format!("hits:{counter}")]);
                    if reply.starts_with(':') {
                        acknowledged[counter] += 1;
                    } else if reply.starts_with("-UNCERTAIN") {
                        unsure[counter] += 1;
                    } else {
                        assert!(reply.starts_with("-TRYAGAIN"), "INCR answered {reply}");
                    }
                }
                (acknowledged, unsure)
            })
        })
        .collect();
    let mut acknowledged = [0u64; 2];
    let mut unsure = [0u64; 2];
    for counter in counters {
        let (a, u) = counter.join().expect("incrementer");
        for c in 0..2 {
            acknowledged[c] += a[c];
            unsure[c] += u[c];
        }
    }
    let mut reader = Client::connect(addrs[1]);
    for c in 0..2 {
        let value: u64 = reader
            .call(&["GET", &format!("hits:{c}")])
            .trim_start_matches('$')
            .parse()
            .expect("a count");
        assert!(
            value >= acknowledged[c] && value <= acknowledged[c] + unsure[c],
            "hits:{c} is {value}; {} increments acknowledged, {} uncertain",
            acknowledged[c],
            unsure[c]
        );
    }
    eprintln!(
        "{KEYS} keys raced from 3 processes: one winner each ({uncertain} uncertain replies); counters {acknowledged:?} acknowledged, {unsure:?} uncertain"
    );
}
