//! A soak, run by hand: three `sessmesh serve` processes in network
//! namespaces (see `lab/mod.rs`) take mixed session traffic for ten
//! minutes while node-3 is killed with SIGKILL and started again every
//! 30 s. At the end no acknowledged write is lost, and the resident memory
//! of each node, sampled every 30 s, stays bounded.
//!
//! ```text
//! sudo -E cargo test --release -p sessmesh-server --test soak -- --ignored --nocapture
//! ```
//!
//! `SESSMESH_SOAK_SECS` sets the length (600 by default). Needs what the
//! fault test needs: root, iproute2, iptables and faketime.
#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod lab;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lab::history::{self, Directory, History, Load, Reconnecting};
use lab::{Lab, NodeSpec};

/// Session keys written (and deleted); the data a node holds is bounded
/// by them.
const KEYS: u64 = 20_000;
/// How often node-3 is killed and started again, and memory is sampled.
const ROUND: Duration = Duration::from_secs(30);

/// Resident memory of the node process in namespace `ns`, in KiB.
fn rss_kib(ns: &str) -> Option<u64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter(|status| status.contains("Name:\tsessmesh"))
        .find_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
}

/// A gauge from node `i`'s metrics.
fn gauge(lab: &Lab, i: usize, name: &str) -> Option<u64> {
    lab.http_get(i, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
#[ignore = "a ten-minute soak, run by hand"]
fn three_nodes_keep_every_acknowledged_write_with_one_killed_every_30_seconds() {
    if !lab::available() {
        return;
    }
    let secs: u64 = std::env::var("SESSMESH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let quorum = NodeSpec {
        write_level: "quorum",
    };
    let mut lab = Lab::new(&[quorum.clone(), quorum.clone(), quorum]);
    for node in 0..3 {
        lab.start(node, None);
    }
    lab.wait_all_alive(Duration::from_secs(60));
    let directory: Directory = Arc::new(RwLock::new(lab.nodes.iter().map(|n| n.resp).collect()));
    let history = Arc::new(History::default());
    let seed = u64::from(std::process::id());
    // Writes (SET, one in ten a DEL) from one client per node, checked...
    let load = Load::start(&history, &directory, &[0, 1, 2], "soak", KEYS, 10, seed);
    // ...and reads from one more client per node, not checked.
    let reading = Arc::new(AtomicBool::new(true));
    let readers: Vec<_> = (0..3)
        .map(|node| {
            let (directory, reading) = (Arc::clone(&directory), Arc::clone(&reading));
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut client = Reconnecting::new(&directory, node);
                while reading.load(Ordering::Acquire) {
                    let Some(c) = client.get() else {
                        continue;
                    };
                    let key = format!("soak:{}", (reads * 7_919) % KEYS);
                    if c.call(&[b"GET", key.as_bytes()]).is_err() {
                        client.broken();
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let start = Instant::now();
    let mut samples: Vec<[Option<u64>; 3]> = Vec::new();
    let sample = |lab: &Lab| [0, 1, 2].map(|i| rss_kib(&lab.nodes[i].ns));
    let mut next = start;
    let mut restarts = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        next += ROUND;
        lab::wait_for("the next round", ROUND * 2, || Instant::now() >= next);
        samples.push(sample(&lab));
        lab.kill(2);
        directory.write().unwrap()[2] = None;
        lab.start(2, None);
        directory.write().unwrap()[2] = lab.nodes[2].resp;
        restarts += 1;
        println!(
            "{:>4} s: resident KiB {:?}; node-1 holds {:?} transport links, {:?} bytes queued, {:?} hints; {} writes so far; node-3 restarted",
            start.elapsed().as_secs(),
            samples.last().unwrap(),
            gauge(&lab, 0, "sessmesh_transport_links"),
            gauge(&lab, 0, "sessmesh_transport_queued_bytes"),
            gauge(&lab, 0, "sessmesh_hints_pending"),
            history.records().len()
        );
    }
    let healed = Instant::now();
    load.stop();
    reading.store(false, Ordering::Release);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    lab.wait_all_alive(Duration::from_secs(60));
    let records = history.records();
    let mut keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
    keys.sort();
    keys.dedup();
    let addrs: Vec<_> = lab.nodes.iter().filter_map(|n| n.resp).collect();
    let before = healed.elapsed();
    let (took, finals) = history::converge(
        &addrs,
        &keys,
        Duration::from_millis(2_500),
        Duration::from_secs(120),
    );
    let tally = history::check(&records, &finals);
    let end = sample(&lab);
    println!(
        "soak: {} s, {restarts} kills of node-3, {} writes ({} acknowledged, {:?} refused, {} unanswered), {reads} reads; {} lost; agreed {:.1} s after the load stopped",
        start.elapsed().as_secs(),
        tally.writes,
        tally.acknowledged,
        tally.failed,
        tally.unknown,
        tally.violations.len(),
        (before + took).as_secs_f64()
    );
    println!(
        "resident KiB at the first sample: {:?}; at the end: {end:?}",
        samples.first()
    );
    let peak = |i: usize| samples.iter().filter_map(|s| s[i]).max();
    println!(
        "peak resident KiB of node-1 and node-2: {:?}, {:?}",
        peak(0),
        peak(1)
    );
    assert!(tally.violations.is_empty(), "{:#?}", tally.violations);
}
