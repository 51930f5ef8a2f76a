//! How membership scales, in the simulator: virtual time for clusters of 50,
//! 200 and 1,000 nodes to converge after starting (all joining through one
//! seed) and after 10% of them crash, and gossip bytes per node per second
//! once the cluster is quiet.
//!
//! ```text
//! cargo bench -p sessmesh-sim --bench convergence
//! ```
//! `SIZES=50,200` picks the cluster sizes; `SIM_SEED` the seed.

use std::time::Instant;

use sessmesh_core::MembershipConfig;
use sessmesh_sim::{Sim, seed_from_env};

fn main() {
    let sizes: Vec<usize> = std::env::var("SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 200, 1_000]);
    let seed = seed_from_env(1);
    println!("LAN preset per cluster size, seed {seed}; times are virtual");
    println!(
        "{:>6} {:>14} {:>20} {:>22} {:>16} {:>10}",
        "nodes",
        "start -> one view",
        "10% crash -> one view",
        "detection bound",
        "gossip B/node/s",
        "wall"
    );
    for n in sizes {
        let wall = Instant::now();
        let config = MembershipConfig::lan(u32::try_from(n).expect("fits"));
        let bound = config.detection_bound_ms();
        let mut sim = Sim::new(n, config, seed);
        sim.start(0, &[]);
        for node in 1..n {
            sim.start(node, &[0]);
        }
        let started = sim
            .run_until(600_000, 250, Sim::converged)
            .map_or("never".into(), |ms| format!("{:.1} s", ms as f64 / 1e3));
        // Quiet cluster: traffic over a minute.
        let before = sim.traffic();
        sim.run_for(60_000);
        let bytes = sim.traffic().bytes - before.bytes;
        let per_node = bytes as f64 / n as f64 / 60.0;
        for node in (7..n).step_by(10) {
            sim.crash(node);
        }
        let crashed = sim
            .run_until(600_000, 250, Sim::converged)
            .map_or("never".into(), |ms| format!("{:.1} s", ms as f64 / 1e3));
        println!(
            "{n:>6} {started:>14} {crashed:>20} {:>20.1} s {per_node:>16.0} {:>9.1}s",
            bound as f64 / 1e3,
            wall.elapsed().as_secs_f64()
        );
    }
}
