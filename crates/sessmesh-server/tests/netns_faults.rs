//! Three `sessmesh serve` processes, each in a network namespace of its own
//! on a bridge, under real faults: a partition under write load on every
//! node, logouts on the minority side, `kill -9` and a restart, loss and
//! delay on one link, and a node whose clock runs two seconds ahead. Clients
//! write all along; every write is recorded with its outcome, and after each
//! heal the test checks that the nodes agree, that no acknowledged write was
//! lost unless a later one superseded it, and that no delete was undone
//! (see `lab/history.rs`). Each scenario prints its writes, the lost ones
//! and how long after the heal the nodes agreed.
//!
//! node-1 and node-2 write at Quorum, node-3 at One (it stands for a site
//! that must keep taking writes when cut off); all read at One, so a read
//! shows that node's own copy.
//!
//! Needs root, iproute2, iptables (`iptables-legacy`) and faketime; without
//! them it says so and passes, unless `SESSMESH_REQUIRE_NETNS=1` (CI sets
//! it). Run it alone with
//! `sudo -E cargo test -p sessmesh-server --test netns_faults -- --nocapture`.
//! It removes its namespaces when it ends, when interrupted, and (after a
//! run killed outright) at the start of the next run.
#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod lab;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lab::history::{self, Directory, History, Load, Op, Outcome};
use lab::resp::Client;
use lab::{Lab, NodeSpec, wait_for};

/// Keys per scenario: few enough that the nodes write the same keys.
const KEYS: u64 = 40;
/// An anti-entropy period of the lab's nodes, and a little more.
const SETTLE: Duration = Duration::from_millis(2_500);
const WITHIN: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);
/// How long each fault lasts under load, at least.
const PHASE: Duration = Duration::from_secs(5);

struct Run {
    lab: Lab,
    directory: Directory,
    seed: u64,
}

impl Run {
    /// Points the clients at the nodes' current Redis endpoints.
    fn publish(&self) {
        let addrs = self.lab.nodes.iter().map(|n| n.resp).collect();
        *self.directory.write().unwrap() = addrs;
    }

    fn start(&mut self, node: usize, clock_offset: Option<&str>) {
        self.lab.start(node, clock_offset);
        self.publish();
    }

    fn kill(&mut self, node: usize) {
        self.lab.kill(node);
        self.publish();
    }

    fn client(&self, node: usize) -> Client {
        Client::connect(self.lab.nodes[node].resp(), Duration::from_secs(10)).unwrap()
    }

    /// Waits until node `node` sees `count` members, itself included.
    fn wait_members(&self, node: usize, count: usize) {
        wait_for(
            &format!("node-{} to see {count} members", node + 1),
            WITHIN,
            || {
                self.lab
                    .status(node)
                    .is_some_and(|s| s["members"].as_array().map(Vec::len) == Some(count))
            },
        );
    }

    /// Lets the load run for `at_least`, and until each of `nodes` has made
    /// `more` writes.
    fn progress(&self, history: &History, nodes: &[usize], more: usize, at_least: Duration) {
        let count = |n: usize| history.records().iter().filter(|r| r.node == n).count();
        let base: Vec<usize> = nodes.iter().map(|&n| count(n)).collect();
        let start = Instant::now();
        wait_for(
            &format!("{more} more writes through {nodes:?}"),
            WITHIN,
            || {
                start.elapsed() >= at_least
                    && nodes.iter().zip(&base).all(|(&n, &b)| count(n) >= b + more)
            },
        );
    }

    /// After a heal: waits until the running nodes agree, checks the
    /// history against what they hold, and prints the scenario's figures.
    fn check(&self, name: &str, history: &History, healed: Instant) -> history::Tally {
        let records = history.records();
        let mut keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
        keys.sort();
        keys.dedup();
        let addrs: Vec<_> = self.lab.nodes.iter().filter_map(|n| n.resp).collect();
        let waited = healed.elapsed();
        let (took, finals) = history::converge(&addrs, &keys, SETTLE, WITHIN);
        let tally = history::check(&records, &finals);
        println!(
            "{name}: {} writes, {} acknowledged, {:?} refused, {} unanswered; {} lost; the nodes agreed {:.1} s after the heal",
            tally.writes,
            tally.acknowledged,
            tally.failed,
            tally.unknown,
            tally.violations.len(),
            (waited + took).as_secs_f64()
        );
        assert!(
            tally.violations.is_empty(),
            "{name} (seed {}): {:#?}",
            self.seed,
            tally.violations
        );
        assert!(tally.acknowledged > 0, "{name}: nothing was acknowledged");
        tally
    }
}

#[test]
fn real_processes_lose_no_acknowledged_write_under_partitions_crashes_loss_and_skew() {
    if !lab::available() {
        return;
    }
    let seed = std::env::var("SESSMESH_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()));
    println!("seed {seed} (SESSMESH_FAULT_SEED={seed} draws the same keys, writes and delays)");
    let quorum = NodeSpec {
        write_level: "quorum",
    };
    let one = NodeSpec { write_level: "one" };
    let lab = Lab::new(&[quorum.clone(), quorum, one]);
    let mut run = Run {
        lab,
        directory: Arc::new(RwLock::new(vec![None; 3])),
        seed,
    };
    for node in 0..3 {
        run.start(node, None);
    }
    run.lab.wait_all_alive(WITHIN);

    partition_under_load(&mut run);
    logouts_on_the_minority_side(&mut run);
    kill_and_restart(&mut run);
    loss_and_delay_on_one_link(&mut run);
    a_clock_ahead(&mut run);
}

/// {node-1, node-2} | {node-3} while every node takes writes.
fn partition_under_load(run: &mut Run) {
    let history = Arc::new(History::default());
    let load = Load::start(
        &history,
        &run.directory,
        &[0, 1, 2],
        "part",
        KEYS,
        8,
        run.seed,
    );
    run.progress(&history, &[0, 1, 2], 50, SECOND);
    run.lab.cut(&[0, 1], &[2]);
    run.wait_members(2, 1);
    run.wait_members(0, 2);
    run.progress(&history, &[0, 1, 2], 200, PHASE);
    let dropped: u64 = (0..3).map(|i| run.lab.dropped(i)).sum();
    run.lab.heal();
    let healed = Instant::now();
    load.stop();
    println!("partition: {dropped} packets dropped at the cut");
    run.check("partition under load", &history, healed);
    run.lab.wait_all_alive(WITHIN);
}

/// Sessions created on the majority side during a cut, logged out through
/// the cut-off node that never saw them: the logouts hold after the heal.
fn logouts_on_the_minority_side(run: &mut Run) {
    let history = Arc::new(History::default());
    run.lab.cut(&[0, 1], &[2]);
    run.wait_members(2, 1);
    run.wait_members(0, 2);
    let load = Load::start(&history, &run.directory, &[0, 1], "busy", KEYS, 8, run.seed);
    let (mut majority, mut minority) = (run.client(0), run.client(2));
    let sessions: Vec<String> = (0..30).map(|i| format!("logout:{i}")).collect();
    for (i, key) in sessions.iter().enumerate() {
        let created = history.write(&mut majority, 0, key, Op::Set(format!("session-{i}")));
        assert_eq!(
            created,
            Some(Outcome::Acked),
            "{key} created on the majority side"
        );
    }
    for key in &sessions {
        let logout = history.write(&mut minority, 2, key, Op::Del);
        assert_eq!(
            logout,
            Some(Outcome::Acked),
            "{key} logged out on node-3 (level One)"
        );
    }
    run.lab.heal();
    let healed = Instant::now();
    load.stop();
    run.check("logouts on the minority side", &history, healed);
    for node in 0..3 {
        let values = history::read_all(run.lab.nodes[node].resp(), &sessions).unwrap();
        assert!(
            values.iter().all(Option::is_none),
            "node-{} still holds sessions logged out on the minority side: {values:?}",
            node + 1
        );
    }
    run.lab.wait_all_alive(WITHIN);
}

/// node-1 killed with SIGKILL under load, then started again: it comes back
/// empty (the cache is in memory), learns every member's state, and refills.
fn kill_and_restart(run: &mut Run) {
    let history = Arc::new(History::default());
    let load = Load::start(
        &history,
        &run.directory,
        &[0, 1, 2],
        "kill",
        KEYS,
        8,
        run.seed,
    );
    run.progress(&history, &[0, 1, 2], 50, SECOND);
    run.kill(0);
    run.wait_members(1, 2);
    run.progress(&history, &[1, 2], 200, PHASE);
    run.start(0, None);
    // The restarted node sees every member alive, and they it.
    run.lab.wait_all_alive(WITHIN);
    run.progress(&history, &[0, 1, 2], 50, SECOND);
    let healed = Instant::now();
    load.stop();
    run.check("kill -9 and restart", &history, healed);
}

/// 20% loss and 50 ± 20 ms delay each way between node-2 and node-1.
fn loss_and_delay_on_one_link(run: &mut Run) {
    let history = Arc::new(History::default());
    let load = Load::start(
        &history,
        &run.directory,
        &[0, 1, 2],
        "lossy",
        KEYS,
        8,
        run.seed,
    );
    run.lab.degrade(
        1,
        0,
        20,
        Duration::from_millis(50),
        Duration::from_millis(20),
        run.seed,
    );
    run.progress(&history, &[0, 1, 2], 200, PHASE);
    let dropped = run.lab.dropped(1);
    let delayed = run.lab.heal();
    let healed = Instant::now();
    load.stop();
    assert!(delayed > 0, "no packet went through the delay");
    assert!(dropped > 0, "no packet was lost");
    println!("loss and delay: {dropped} packets lost, {delayed} delayed");
    run.check("loss and delay on one link", &history, healed);
}

/// node-2 restarted with its clock two seconds ahead (faketime): it finds
/// out from its peers, refuses to stamp writes, says so once in its log,
/// and shows each peer's offset; a write it refused never wins.
fn a_clock_ahead(run: &mut Run) {
    run.kill(1);
    run.start(1, Some("+2s"));
    run.lab.wait_all_alive(WITHIN);
    wait_for(
        "node-2 to measure its peers about 2 s behind it",
        WITHIN,
        || {
            run.lab.status(1).is_some_and(|s| {
                let members = s["members"].as_array().cloned().unwrap_or_default();
                members.iter().filter(|m| m["name"] != "node-2").all(|m| {
                    m["clock_offset_ms"]
                        .as_i64()
                        .is_some_and(|o| (-2_400..=-1_600).contains(&o))
                })
            })
        },
    );
    let history = Arc::new(History::default());
    let (mut ahead, mut right) = (run.client(1), run.client(0));
    let refused = history.write(&mut ahead, 1, "clock:k", Op::Set("X".into()));
    assert_eq!(refused, Some(Outcome::Failed("CLOCKDRIFT".into())));
    let newer = history.write(&mut right, 0, "clock:k", Op::Set("Y".into()));
    assert_eq!(newer, Some(Outcome::Acked));
    let load = Load::start(
        &history,
        &run.directory,
        &[0, 1, 2],
        "clock",
        KEYS,
        8,
        run.seed,
    );
    run.progress(&history, &[0, 1, 2], 100, PHASE);
    load.stop();
    // Had node-2 kept a refused write, real time now comes within the
    // bound of its stamp, and repair would spread it: node-2 keeps running
    // through that, and the check comes after.
    let stopped = Instant::now();
    wait_for("real time to pass node-2's stamps", WITHIN, || {
        stopped.elapsed() > Duration::from_millis(2_500)
    });
    let tally = run.check("a clock 2 s ahead", &history, stopped);
    let refusals = tally.failed.get("CLOCKDRIFT").copied().unwrap_or(0);
    assert!(
        refusals > 100,
        "node-2's writes were refused for drift: {refusals}"
    );
    let values = history::read_all(run.lab.nodes[0].resp(), &["clock:k".to_owned()]).unwrap();
    assert_eq!(values, [Some("Y".to_owned())]);
    let said = run.lab.log_lines(1, "clock runs ahead of its peers");
    assert_eq!(said.len(), 1, "logged once per episode: {said:#?}");
    // With its clock right again, node-2 takes writes.
    run.kill(1);
    run.start(1, None);
    run.lab.wait_all_alive(WITHIN);
    let mut fixed = run.client(1);
    let write = history.write(&mut fixed, 1, "clock:k", Op::Set("Z".into()));
    assert_eq!(write, Some(Outcome::Acked));
}
