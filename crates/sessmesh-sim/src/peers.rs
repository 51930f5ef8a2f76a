//! The real peer in the simulator: embedded peers (their tasks and handles,
//! as applications run them) over the in-memory transport, in tokio's
//! paused clock, so virtual time passes as soon as every task waits.
//!
//! [`run_seed`] runs one seeded story on a current-thread runtime: start a
//! cluster, then writes and deletes through every peer's handle while the
//! network partitions, loses and duplicates datagrams and delays messages,
//! and a peer crashes and comes back as its next generation (empty: the
//! cache is in memory); then a heal. It ends with the checks the core
//! simulator runs: the replicas of every key agree, and every acknowledged
//! write survives (in runs with a crash, those acknowledged by two or more
//! copies). Every random choice (the story, the network's faults) comes from
//! the seed, the peers' wall clocks move with virtual time, and a failure
//! names the seed; `SIM_SEED=<seed>` replays it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sessmesh::{Level, Node as Peer, Outcome, Write};
use sessmesh_core::{ClusterId, Config, Member, MembershipConfig, Node, Session, Stamp};
use sessmesh_net::TransportConfig;
use sessmesh_net::mem::MemNetwork;
use tokio::time::Instant;

use crate::data::{FIELD, holds};

/// Peers in a run.
const PEERS: usize = 4;
/// Keys the story writes.
const KEYS: usize = 6;
/// Writes and deletes the story issues.
const OPERATIONS: usize = 40;

/// One write or delete, and how it ended.
#[derive(Clone, Debug)]
struct Issued {
    peer: usize,
    key: String,
    /// `None` for a delete.
    value: Option<String>,
    /// The stamp and acknowledgements of an acknowledged write.
    written: Option<(Stamp, usize)>,
}

/// A cluster of embedded peers on one in-memory network.
struct Cluster {
    net: MemNetwork,
    config: Config,
    /// Each peer's handle while it runs.
    peers: Vec<Option<Peer>>,
    addrs: Vec<SocketAddr>,
    generations: Vec<u64>,
}

impl Cluster {
    fn start(&mut self, i: usize, seed: u64) {
        let name = format!("node-{i}");
        let (transport, incoming) = self.net.join(
            &name,
            ClusterId::from_name("sim"),
            TransportConfig::default(),
        );
        let addr = sessmesh_net::Transport::local_addr(&transport);
        self.generations[i] += 1;
        let me = Member {
            name,
            addr,
            client_addr: None,
            generation: self.generations[i],
            partition_count: self.config.partition_count,
            replication_factor: u32::try_from(self.config.replication_factor).unwrap_or(3),
        };
        let node_seed = seed ^ (i as u64).rotate_left(32) ^ self.generations[i];
        let node = Node::new(me, &self.config, MembershipConfig::local(), node_seed)
            .unwrap_or_else(|e| panic!("the simulated peers' settings are valid: {e}"));
        // Every peer joins through the others' last addresses.
        let seeds: Vec<SocketAddr> = (0..PEERS)
            .filter(|&j| j != i && self.peers[j].is_some())
            .map(|j| self.addrs[j])
            .collect();
        self.addrs[i] = addr;
        self.peers[i] = Some(sessmesh::spawn(node, transport, incoming, seeds));
    }

    fn crash(&mut self, i: usize) {
        self.net.crash(self.addrs[i]);
        // The last handle gone, the peer's task stops.
        self.peers[i] = None;
    }

    fn up(&self) -> Vec<usize> {
        (0..PEERS).filter(|&i| self.peers[i].is_some()).collect()
    }

    /// Whether every running peer sees exactly the running peers; if not,
    /// what each sees.
    async fn converged(&self) -> Result<(), String> {
        let truth: BTreeSet<String> = self.up().iter().map(|i| format!("node-{i}")).collect();
        let mut views = Vec::new();
        for peer in self.peers.iter().flatten() {
            let members = peer.members().await.map_err(|e| e.to_string())?;
            let mut seen: BTreeSet<String> = members
                .into_iter()
                .map(|m| format!("{}@{}", m.name, m.generation))
                .collect();
            seen.insert(format!("{}@{}", peer.me().name, peer.me().generation));
            views.push(seen);
        }
        let names = |view: &BTreeSet<String>| -> BTreeSet<String> {
            view.iter()
                .filter_map(|m| m.split('@').next().map(str::to_owned))
                .collect()
        };
        if views.iter().all(|v| names(v) == truth) {
            Ok(())
        } else {
            Err(format!("the peers see {views:?}, not {truth:?}"))
        }
    }

    /// Waits until every running peer sees exactly the running peers.
    async fn wait_converged(&self, within: Duration) -> Result<(), String> {
        wait_until(within, || self.converged()).await
    }

    /// Each running replica of `key`, by its own placement, with what it holds.
    async fn held(&self, key: &str) -> Vec<(usize, Option<Session>)> {
        let mut held = Vec::new();
        for i in self.up() {
            let Some(peer) = &self.peers[i] else { continue };
            let replicates = peer
                .replicas_of(key.to_owned())
                .await
                .is_ok_and(|r| r.contains(&peer.me().name));
            if replicates && let Ok(session) = peer.local_session(key.to_owned()).await {
                held.push((i, session));
            }
        }
        held
    }
}

/// Waits until `done` holds, checking every 100 ms of virtual time, for at
/// most `within`; what `done` last said when it did not.
async fn wait_until<F, Fut>(within: Duration, mut done: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let why = match done().await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(format!("not within {within:?}: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one seeded story; `Err` says what failed, with the seed. `Ok`
/// carries a trace of the run (each write's outcome, in the order they
/// ended, and what every replica of every key holds at the end), the same
/// for every run of one seed.
pub fn run_seed(seed: u64) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("no runtime: {e}"))?;
    runtime
        .block_on(story(seed))
        .map_err(|why| format!("seed {seed}: {why}\nreplay with SIM_SEED={seed}"))
}

async fn story(seed: u64) -> Result<String, String> {
    // Stamps from virtual time, so that a seed replays exactly.
    sessmesh::simulate_on_this_thread(crate::EPOCH_MS);
    let mut rng = SmallRng::seed_from_u64(seed);
    let config = Config {
        partition_count: 64,
        anti_entropy_period_ms: 2_000,
        ..Config::default()
    };
    let mut cluster = Cluster {
        net: MemNetwork::new(seed),
        config,
        peers: vec![None; PEERS],
        addrs: vec![SocketAddr::from(([127, 0, 0, 1], 0)); PEERS],
        generations: vec![0; PEERS],
    };
    // Some runs start with one peer alone, which stores writes on the
    // callers' thread, and start the others while writes go on: its
    // partitions gain replicas under the writes.
    let alone_until = (rng.random_range(0..4) == 0).then(|| rng.random_range(1..OPERATIONS / 2));
    for i in 0..PEERS {
        if i == 0 || alone_until.is_none() {
            cluster.start(i, seed);
        }
    }
    cluster.wait_converged(Duration::from_secs(30)).await?;

    // The faults of this run.
    let net = cluster.net.clone();
    let loss = rng.random_range(0..3) == 0;
    if loss {
        net.set_loss_percent(10);
        net.set_duplicate_percent(10);
    }
    let delayed = rng.random_range(0..3) == 0;
    if delayed {
        net.set_delay(
            Duration::from_millis(rng.random_range(0..20)),
            Duration::from_millis(rng.random_range(0..50)),
        );
    }
    let started = alone_until.unwrap_or(0);
    let cut_at = rng.random_range(started..OPERATIONS);
    let minority: Vec<usize> = {
        let first = rng.random_range(0..PEERS);
        if rng.random_range(0..2) == 0 {
            vec![first]
        } else {
            vec![first, (first + 1) % PEERS]
        }
    };
    let crash = (rng.random_range(0..3) == 0)
        .then(|| (rng.random_range(0..OPERATIONS), rng.random_range(0..PEERS)))
        .filter(|&(at, _)| at > started);
    let restart_after = rng.random_range(5..OPERATIONS);
    let plan = format!(
        "alone until op {alone_until:?}, {minority:?} cut off at op {cut_at}, crash (op, peer) {crash:?} restarted {restart_after} ops later, loss and duplication 10%: {}, delay: {}",
        loss, delayed
    );
    async {

        let issued = Arc::new(Mutex::new(Vec::<Issued>::new()));
        let mut tasks = Vec::new();
        let mut crashed: Option<(usize, usize)> = None;
        for op in 0..OPERATIONS {
            if Some(op) == alone_until {
                for i in 1..PEERS {
                    cluster.start(i, seed);
                }
            }
            if op == cut_at {
                for &a in &minority {
                    for b in (0..PEERS).filter(|b| !minority.contains(b)) {
                        net.cut(cluster.addrs[a], cluster.addrs[b]);
                    }
                }
            }
            if let Some((at, victim)) = crash
                && op == at
            {
                cluster.crash(victim);
                crashed = Some((victim, op));
            }
            if let Some((victim, at)) = crashed
                && op == at + restart_after
                && cluster.peers[victim].is_none()
            {
                cluster.start(victim, seed);
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            let up = cluster.up();
            let peer = up[rng.random_range(0..up.len())];
            let key = format!("session:{}", rng.random_range(0..KEYS));
            let value = (rng.random_range(0..5) != 0).then(|| format!("v{op}"));
            let level = if rng.random_range(0..4) == 0 {
                Level::One
            } else {
                Level::Quorum
            };
            let write = match &value {
                Some(v) => Write::PutField {
                    name: bytes::Bytes::from_static(FIELD),
                    value: bytes::Bytes::from(v.clone()),
                },
                None => Write::Delete,
            };
            let handle = cluster.peers[peer].clone().ok_or("a running peer")?;
            let issued = Arc::clone(&issued);
            tasks.push(tokio::spawn(async move {
                let outcome = handle.write(key.clone(), write, level).await;
                let written = match outcome {
                    Ok(Outcome::Written { stamp, acks, .. }) => Some((stamp, acks)),
                    _ => None,
                };
                issued
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Issued {
                        peer,
                        key,
                        value,
                        written,
                    });
            }));
        }
        for task in tasks {
            task.await
                .map_err(|e| format!("a write's task failed: {e}"))?;
        }

        // The heal: every link back, no loss, the crashed peer running again.
        net.heal_all();
        net.set_loss_percent(0);
        net.set_duplicate_percent(0);
        net.set_delay(Duration::ZERO, Duration::ZERO);
        if let Some((victim, _)) = crashed
            && cluster.peers[victim].is_none()
        {
            cluster.start(victim, seed);
        }
        cluster
            .wait_converged(Duration::from_secs(60))
            .await
            .map_err(|why| format!("after the heal: {why}"))?;
        let issued = issued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let keys: BTreeSet<String> = issued.iter().map(|i| i.key.clone()).collect();
        wait_until(Duration::from_secs(60), || async {
            for key in &keys {
                let held = cluster.held(key).await;
                if held.windows(2).any(|w| w[0].1 != w[1].1) {
                    return Err(format!("the replicas of {key} differ: {held:?}"));
                }
            }
            Ok(())
        })
        .await?;
        // A restarted peer came back empty: a write only one copy took may be
        // gone with it.
        let min_acks = if crashed.is_some() { 2 } else { 1 };
        for write in &issued {
            let Some((stamp, acks)) = write.written else {
                continue;
            };
            if acks < min_acks {
                continue;
            }
            let key = &write.key;
            for (i, session) in cluster.held(key).await {
                if !holds(session.as_ref(), stamp, write.value.as_deref()) {
                    return Err(format!(
                        "node-{i} lost the acknowledged {:?} of {key} through node-{} ({acks} acks, stamp {stamp:?}): it holds {session:?}",
                        write.value, write.peer
                    ));
                }
            }
        }
        let mut trace = format!("{issued:?}");
        for key in &keys {
            trace.push_str(&format!("\n{key}: {:?}", cluster.held(key).await));
        }
        Ok(trace)
    }
    .await
    .map_err(|why: String| format!("{why}\nthe story: {plan}"))
}
