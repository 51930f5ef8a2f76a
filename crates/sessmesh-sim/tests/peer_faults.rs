//! The real peer under faults: embedded peers (their tasks and handles) over
//! the in-memory transport in virtual time, with partitions, loss,
//! duplication, delay, and a crash and restart, then a heal; the replicas of
//! every key must agree and every acknowledged write survive (see
//! `sessmesh_sim::peers`). 1,000 seeds by default, on two threads;
//! `SIM_SEEDS=n` runs more; `SIM_SEED=s` replays one.

use std::sync::atomic::{AtomicU64, Ordering};

use sessmesh_sim::peers::run_seed;

#[test]
fn peers_keep_acknowledged_writes_and_agree_after_faults() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.parse().expect("SIM_SEED is a number");
        if let Err(failure) = run_seed(seed) {
            panic!("{failure}");
        }
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    let next = AtomicU64::new(0);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut failures = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        if seed >= seeds {
                            return failures;
                        }
                        if let Err(failure) = run_seed(seed) {
                            failures.push(failure);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a worker panicked"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17] {
        let first = run_seed(seed).unwrap_or_else(|f| panic!("{f}"));
        let second = run_seed(seed).unwrap_or_else(|f| panic!("{f}"));
        assert!(
            first == second,
            "two runs of seed {seed} differ:\n{first}\n---\n{second}"
        );
    }
}
