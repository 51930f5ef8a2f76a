//! Embedded local reads against a plain concurrent hash map, in one run.
//!
//! ```text
//! cargo bench -p sessmesh --bench local_read
//! ```
//! A single peer (it replicates every partition) holds 200,000 sessions of
//! one 256-byte field under 64-byte keys; a `DashMap<Box<[u8]>, Box<[u8]>>`
//! holds the same. Two threads then read pseudo-random keys as fast as they
//! can: the peer through `node.at(Level::One).get(key)` (which answers from
//! the local store, returning an owned copy of the session), the map through
//! `get` plus a copy of the value (what a caller that keeps the value needs).
//! Each side runs three rounds; the best round counts. Prints both rates and
//! their ratio. `THREADS` and `SESSIONS` override the defaults.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use sessmesh::{Level, Node};
use sessmesh_core::{Config, MembershipConfig};

const READS_PER_THREAD: usize = 2_000_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(i: usize) -> Vec<u8> {
    format!("session:{i:056}").into_bytes()
}

/// A cheap pseudo-random walk over the keys (xorshift), the same for both sides.
fn walk(seed: u64, sessions: usize) -> impl Iterator<Item = usize> {
    let mut x = seed;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        usize::try_from(x % sessions as u64).expect("fits")
    })
}

/// Runs `read` on `threads` threads over pre-built keys; reads per second.
fn rate<K: Sync>(threads: usize, keys: &[K], read: impl Fn(&K) -> usize + Sync) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let read = &read;
            s.spawn(move || {
                let mut found = 0;
                for i in walk(0x9E37_79B9 + t as u64, keys.len()).take(READS_PER_THREAD) {
                    found += read(&keys[i]);
                }
                assert_eq!(found, READS_PER_THREAD, "every key is present");
            });
        }
    });
    (threads * READS_PER_THREAD) as f64 / start.elapsed().as_secs_f64()
}

fn best(rounds: usize, mut run: impl FnMut() -> f64) -> f64 {
    (0..rounds).map(|_| run()).fold(0.0, f64::max)
}

fn main() {
    let threads = env_or("THREADS", 2);
    let sessions = env_or("SESSIONS", 200_000);
    let keys: Vec<Vec<u8>> = (0..sessions).map(key).collect();
    let value = vec![b'v'; 256];

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let node = runtime.block_on(async {
        let node = Node::builder()
            .name("bench")
            .listen(([127, 0, 0, 1], 0).into())
            .development()
            .membership(MembershipConfig::local())
            .config(Config::default())
            .read_level(Level::One)
            .write_level(Level::One)
            .start()
            .await
            .expect("the peer starts");
        for k in &keys {
            node.put_field(k.clone(), "", value.clone())
                .await
                .expect("written");
        }
        node
    });
    let map: DashMap<Box<[u8]>, Box<[u8]>> = keys
        .iter()
        .map(|k| {
            (
                k.clone().into_boxed_slice(),
                value.clone().into_boxed_slice(),
            )
        })
        .collect();

    // Async calls that never suspend, polled on the reading thread itself.
    let waker = std::task::Waker::noop();
    // Keys the caller already holds: `Bytes` over static memory clone for free.
    let shared_keys: Vec<Bytes> = keys
        .iter()
        .map(|k| Bytes::from_static(Box::leak(k.clone().into_boxed_slice())))
        .collect();
    let embedded = |k: &Bytes| {
        let mut get = std::pin::pin!(node.at(Level::One).get(k.clone()));
        let mut cx = std::task::Context::from_waker(waker);
        match get.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(Some(session))) => {
                usize::from(!black_box(session).key().is_empty())
            }
            other => panic!("a local read did not answer at once: {other:?}"),
        }
    };
    let baseline = |k: &Vec<u8>| {
        let copy: Option<Vec<u8>> = map.get(k.as_slice()).map(|v| v.to_vec());
        usize::from(black_box(copy).is_some())
    };

    let map_rate = best(3, || rate(threads, &keys, baseline));
    let node_rate = best(3, || rate(threads, &shared_keys, embedded));
    println!(
        "{sessions} sessions, {threads} threads, {READS_PER_THREAD} reads per thread, best of 3"
    );
    println!("DashMap get + copy:          {:>12.0} reads/s", map_rate);
    println!("embedded get at Level::One:  {:>12.0} reads/s", node_rate);
    println!(
        "ratio embedded / DashMap:    {:>12.2}x",
        node_rate / map_rate
    );
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), node.shutdown())
            .await
            .ok();
    });
}
