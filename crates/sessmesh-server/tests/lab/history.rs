//! What the clients did and whether the cluster kept it: every write with
//! its outcome and the real-time interval it ran in, load from one client
//! per node, and the check once the nodes agree after a heal.
//!
//! Every `SET` writes a value no other write uses, so the value a key ends
//! with names the write that won. Within one machine's clock, a write that
//! completed before another began has the older stamp. So once the nodes
//! agree, a key's value is wrong when an acknowledged `SET` or `DEL` began
//! after the write that won had completed: the acknowledged one was lost
//! (a delete was undone). The value must also come from a write the
//! clients made, and never from one refused for clock drift.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::resp::{Client, Reply};
use super::wait_for;

/// The nodes' Redis endpoints as they are now (`None` while one is down).
pub(crate) type Directory = Arc<RwLock<Vec<Option<SocketAddr>>>>;

/// A client's write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `SET key value`.
    Set(String),
    /// `DEL key`.
    Del,
}

/// How a write ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `+OK` to a `SET`, an integer to a `DEL`.
    Acked,
    /// An error reply; its code (`NOREPLICAS`, `CLOCKDRIFT`, ...).
    Failed(String),
    /// No reply (the connection broke or timed out): it may or may not
    /// have happened.
    Unknown,
}

/// One write.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) key: String,
    pub(crate) op: Op,
    pub(crate) node: usize,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) outcome: Outcome,
}

/// Every write of a scenario.
#[derive(Default)]
pub(crate) struct History {
    records: Mutex<Vec<Record>>,
}

impl History {
    pub(crate) fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn push(&self, record: Record) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }

    /// Runs `op` on `key` through `client` (connected to `node`), and
    /// records it; `None` for a broken connection, which the caller drops.
    pub(crate) fn write(
        &self,
        client: &mut Client,
        node: usize,
        key: &str,
        op: Op,
    ) -> Option<Outcome> {
        let start = Instant::now();
        let reply = match &op {
            Op::Set(value) => client.call(&[b"SET", key.as_bytes(), value.as_bytes()]),
            Op::Del => client.call(&[b"DEL", key.as_bytes()]),
        };
        let end = Instant::now();
        let (outcome, broken) = match reply {
            Ok(Reply::Simple(ok)) if ok == "OK" => (Outcome::Acked, false),
            Ok(Reply::Int(_)) => (Outcome::Acked, false),
            Ok(Reply::Error(e)) => {
                let code = e.split_whitespace().next().unwrap_or("").to_owned();
                (Outcome::Failed(code), false)
            }
            Ok(_) | Err(_) => (Outcome::Unknown, true),
        };
        self.push(Record {
            key: key.to_owned(),
            op,
            node,
            start,
            end,
            outcome: outcome.clone(),
        });
        (!broken).then_some(outcome)
    }
}

/// A connection to one node that reconnects, to wherever the node now
/// listens, after it broke.
pub(crate) struct Reconnecting {
    directory: Directory,
    node: usize,
    client: Option<Client>,
}

impl Reconnecting {
    pub(crate) fn new(directory: &Directory, node: usize) -> Reconnecting {
        Reconnecting {
            directory: Arc::clone(directory),
            node,
            client: None,
        }
    }

    /// The connection, or `None` while the node is down (after a short
    /// pause, so that a caller's loop does not spin).
    pub(crate) fn get(&mut self) -> Option<&mut Client> {
        if self.client.is_none() {
            let addr = self.directory.read().unwrap_or_else(|e| e.into_inner())[self.node];
            self.client = addr.and_then(|a| Client::connect(a, Duration::from_secs(10)).ok());
            if self.client.is_none() {
                std::thread::park_timeout(Duration::from_millis(50));
            }
        }
        self.client.as_mut()
    }

    /// Drops a connection that broke.
    pub(crate) fn broken(&mut self) {
        self.client = None;
    }
}

/// Clients writing as fast as their node answers, one per node.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// One client per node in `nodes`, each writing keys `{prefix}:0` to
    /// `{prefix}:{keys - 1}` (deleting one write in `1 / delete_every`).
    pub(crate) fn start(
        history: &Arc<History>,
        directory: &Directory,
        nodes: &[usize],
        prefix: &str,
        keys: u64,
        delete_every: u64,
        seed: u64,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = nodes
            .iter()
            .map(|&node| {
                let (history, directory, stop) = (
                    Arc::clone(history),
                    Arc::clone(directory),
                    Arc::clone(&stop),
                );
                let prefix = prefix.to_owned();
                let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (node as u64 + 1);
                std::thread::spawn(move || {
                    let mut client = Reconnecting::new(&directory, node);
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        let Some(c) = client.get() else {
                            continue;
                        };
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let key = format!("{prefix}:{}", rng % keys);
                        seq += 1;
                        let op = if (rng >> 32).is_multiple_of(delete_every) {
                            Op::Del
                        } else {
                            Op::Set(format!("n{}-{seq}", node + 1))
                        };
                        if history.write(c, node, &key, op).is_none() {
                            client.broken();
                        }
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops every client once its write in flight has its answer.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().expect("a client thread ends");
        }
    }
}

/// The values of `keys` on the node at `addr` (its own copy: the nodes read
/// at level One, and each replicates every key).
pub(crate) fn read_all(addr: SocketAddr, keys: &[String]) -> Option<Vec<Option<String>>> {
    let mut client = Client::connect(addr, Duration::from_secs(10)).ok()?;
    let mut args: Vec<&[u8]> = vec![b"MGET"];
    args.extend(keys.iter().map(|k| k.as_bytes()));
    match client.call(&args).ok()? {
        Reply::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Reply::Bulk(v) => Some(v.map(|v| String::from_utf8_lossy(&v).into_owned())),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Waits until every node in `addrs` holds the same values for `keys`, and
/// still does an anti-entropy period later; returns how long it took and
/// the values.
pub(crate) fn converge(
    addrs: &[SocketAddr],
    keys: &[String],
    settle: Duration,
    within: Duration,
) -> (Duration, BTreeMap<String, Option<String>>) {
    let agreed = || {
        let views: Vec<Vec<Option<String>>> =
            addrs.iter().filter_map(|&a| read_all(a, keys)).collect();
        (views.len() == addrs.len() && views.windows(2).all(|w| w[0] == w[1]))
            .then(|| views[0].clone())
    };
    let started = Instant::now();
    'agree: loop {
        let mut first = None;
        wait_for(
            "every node to hold the same values",
            within.saturating_sub(started.elapsed()),
            || {
                first = agreed();
                first.is_some()
            },
        );
        let converged_after = started.elapsed();
        // They must still agree, on the same values, an anti-entropy
        // period later: nothing was still on its way.
        let stable_until = Instant::now() + settle;
        while Instant::now() < stable_until {
            if agreed() != first {
                assert!(started.elapsed() < within, "the nodes kept changing");
                continue 'agree;
            }
        }
        let values = keys
            .iter()
            .cloned()
            .zip(first.unwrap_or_default())
            .collect();
        return (converged_after, values);
    }
}

/// What a scenario did and found.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) writes: usize,
    pub(crate) acknowledged: usize,
    pub(crate) failed: BTreeMap<String, usize>,
    pub(crate) unknown: usize,
    pub(crate) violations: Vec<String>,
}

/// Checks `records` against the values the nodes agreed on; see the
/// [module docs](self).
pub(crate) fn check(records: &[Record], finals: &BTreeMap<String, Option<String>>) -> Tally {
    /// Two writes this far apart in real time are stamped in that order.
    const MARGIN: Duration = Duration::from_millis(5);
    let mut tally = Tally::default();
    let mut by_key: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in records {
        tally.writes += 1;
        match &r.outcome {
            Outcome::Acked => tally.acknowledged += 1,
            Outcome::Failed(code) => *tally.failed.entry(code.clone()).or_default() += 1,
            Outcome::Unknown => tally.unknown += 1,
        }
        by_key.entry(&r.key).or_default().push(r);
    }
    for (key, writes) in by_key {
        let Some(final_value) = finals.get(key) else {
            tally.violations.push(format!("{key} was not read back"));
            continue;
        };
        // The write that won: the SET of that value, or for no value the
        // DEL that completed last (the most lenient choice) among those
        // that could have taken effect.
        let winner = match final_value {
            Some(v) => {
                let set = writes.iter().find(|w| w.op == Op::Set(v.clone()));
                if set.is_none() {
                    tally
                        .violations
                        .push(format!("{key} holds {v:?}, which no client wrote"));
                    continue;
                }
                set.copied()
            }
            None => writes
                .iter()
                .filter(|w| w.op == Op::Del && w.outcome != Outcome::Failed("CLOCKDRIFT".into()))
                .max_by_key(|w| w.end)
                .copied(),
        };
        if let Some(w) = winner
            && w.outcome == Outcome::Failed("CLOCKDRIFT".into())
        {
            let origin = writes[0].start;
            let story: Vec<String> = writes
                .iter()
                .map(|r| {
                    format!(
                        "{:?} through node-{} from {} ms to {} ms: {:?}",
                        r.op,
                        r.node + 1,
                        (r.start - origin).as_millis(),
                        (r.end - origin).as_millis(),
                        r.outcome
                    )
                })
                .collect();
            tally.violations.push(format!(
                "{key} holds {final_value:?}, a write refused for clock drift (through node-{}); its writes: {story:#?}",
                w.node + 1
            ));
        }
        for a in writes.iter().filter(|w| w.outcome == Outcome::Acked) {
            let kept = match (&a.op, final_value) {
                (Op::Set(v), Some(f)) => v == f,
                (Op::Del, None) => true,
                _ => false,
            };
            let superseded = winner.is_some_and(|w| w.end + MARGIN >= a.start);
            if !kept && !superseded {
                let what = match &a.op {
                    Op::Set(v) => format!("SET {key} {v}"),
                    Op::Del => format!("DEL {key}"),
                };
                let by = winner.map_or("nothing".to_owned(), |w| {
                    format!("{:?} through node-{}", w.op, w.node + 1)
                });
                tally.violations.push(format!(
                    "acknowledged {what} through node-{} was lost: the key ended with {final_value:?} from {by}, which completed before it began",
                    a.node + 1
                ));
            }
        }
    }
    tally
}
