//! Bytes per session: the store against plain hash maps, in one run.
//!
//! ```text
//! cargo bench -p sessmesh-core --bench store_memory
//! ```
//! Each structure is filled with 1,000,000 sessions of 64-byte keys and
//! 256-byte values in a child process of its own, and its resident-set growth
//! divided by the session count is reported with its ratio to the baselines.
//! `SESSIONS=n` changes the count.

use std::hint::black_box;
use std::process::Command;

use bytes::Bytes;
use sessmesh_core::{Config, Expiry, HlcTime, NodeId, Stamp, Store};

const KINDS: [(&str, &str); 4] = [
    ("hashmap-vec", "HashMap<Vec<u8>, Vec<u8>>"),
    ("hashmap-boxed", "HashMap<Box<[u8]>, Box<[u8]>>"),
    ("store", "sessmesh Store"),
    ("store-ttl", "sessmesh Store, with a TTL"),
];

fn sessions() -> u64 {
    std::env::var("SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn key(i: u64) -> Vec<u8> {
    format!("session:{i:056}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8; 256]
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

/// Fills one structure and prints its bytes per session.
fn measure(kind: &str) {
    let n = sessions();
    let before = rss_bytes();
    match kind {
        "hashmap-vec" => {
            let mut map = std::collections::HashMap::new();
            for i in 0..n {
                map.insert(key(i), value(i));
            }
            report(before, n, map.len());
            black_box(map);
        }
        "hashmap-boxed" => {
            let mut map = std::collections::HashMap::new();
            for i in 0..n {
                map.insert(key(i).into_boxed_slice(), value(i).into_boxed_slice());
            }
            report(before, n, map.len());
            black_box(map);
        }
        "store" | "store-ttl" => {
            let now_ms = 1_700_000_000_000;
            let expiry = if kind == "store-ttl" {
                Expiry {
                    expires_at_ms: Some(now_ms + 1_800_000),
                    max_idle_ms: None,
                }
            } else {
                Expiry::default()
            };
            let mut store = Store::new(&Config::default());
            for i in 0..n {
                let stamp = Stamp::new(HlcTime::from_wall_ms(now_ms).tick(), NodeId(0x5EED));
                let fields = vec![(Bytes::new(), Bytes::from(value(i)))];
                store
                    .put(&key(i), fields, expiry, stamp, now_ms)
                    .expect("64-byte keys fit");
            }
            report(before, n, store.len());
            black_box(store);
        }
        other => panic!("unknown structure {other}"),
    }
}

fn report(before: u64, n: u64, len: usize) {
    assert_eq!(len as u64, n);
    let per_session = (rss_bytes() - before) as f64 / n as f64;
    println!("{per_session:.1}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        measure(&args[i + 1]);
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let n = sessions();
    println!("{n} sessions, 64-byte keys, 256-byte values; resident bytes per session");
    let mut results = Vec::new();
    for (kind, label) in KINDS {
        let out = Command::new(&exe)
            .args(["--measure", kind])
            .output()
            .expect("child runs");
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a number");
        results.push((label, bytes));
    }
    let (vec_baseline, boxed_baseline) = (results[0].1, results[1].1);
    println!(
        "{:<34} {:>10} {:>16} {:>18}",
        "structure", "bytes", "vs HashMap<Vec>", "vs HashMap<Box>"
    );
    for (label, bytes) in results {
        println!(
            "{label:<34} {bytes:>10.1} {:>15.2}x {:>17.2}x",
            bytes / vec_baseline,
            bytes / boxed_baseline
        );
    }
}
