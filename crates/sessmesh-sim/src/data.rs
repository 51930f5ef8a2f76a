//! Data in a simulation: the writes, deletes and reads a test issues
//! through [`Sim::put`], [`Sim::remove`] and [`Sim::read_value`] (or the
//! scenario steps built on them), the answers they got, and the checks over
//! them: the replicas of every key agree, and acknowledged writes survive;
//! and the check every run ends with, of each node's partition digests.

use bytes::Bytes;
use sessmesh_core::{
    CallId, Cas, GroupCas, Level, Node, Outcome, PartitionId, Session, Stamp, Write,
};

use crate::Sim;

/// The field every value a scenario writes is stored under.
pub const FIELD: &[u8] = b"v";

/// How long a read step waits for its answer, ms of virtual time
/// (requests time out after the request timeout, 2 s by default).
const READ_WAIT_MS: u64 = 10_000;

/// A write or delete a test issued, as the checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataCall {
    /// The call, for its outcome.
    pub call: CallId,
    /// The coordinating node.
    pub node: usize,
    /// The key.
    pub key: String,
    /// The value written; `None` for a delete.
    pub value: Option<String>,
}

impl Sim {
    /// Has `node` write `value` under `key` (in [`FIELD`]) at `level`, and
    /// records it for the data checks.
    pub fn put(&mut self, node: usize, key: &str, value: &str, level: Level) -> CallId {
        let write = Write::PutField {
            name: Bytes::from_static(FIELD),
            value: Bytes::from(value.to_owned()),
        };
        let call = self.write(node, key.as_bytes(), write, level);
        self.ledger.push(DataCall {
            call,
            node,
            key: key.to_owned(),
            value: Some(value.to_owned()),
        });
        call
    }

    /// Has `node` delete `key` at `level`, and records it for the data checks.
    pub fn remove(&mut self, node: usize, key: &str, level: Level) -> CallId {
        let call = self.write(node, key.as_bytes(), Write::Delete, level);
        self.ledger.push(DataCall {
            call,
            node,
            key: key.to_owned(),
            value: None,
        });
        call
    }

    /// Has `node` decide `op` on `key` by consensus; its outcome appears in
    /// [`Sim::outcome`].
    pub fn cas(&mut self, node: usize, key: &str, op: Cas) -> CallId {
        let call = self.next_call();
        let now = self.wall_ms(node);
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.consensus(call, Bytes::from(key.to_owned()), op, now);
            self.drain(node);
        }
        call
    }

    /// Has `node` decide `op` on `keys` (keys of one hash tag) by
    /// consensus; the outcome comes later, see [`Sim::outcome`].
    pub fn cas_group(&mut self, node: usize, keys: &[String], op: GroupCas) -> CallId {
        let call = self.next_call();
        let now = self.wall_ms(node);
        if let Some(core) = self.nodes[node].core.as_mut() {
            let keys = keys.iter().map(|k| Bytes::from(k.clone())).collect();
            core.consensus_group(call, keys, op, now);
            self.drain(node);
        }
        call
    }

    /// The writes and deletes issued through [`Sim::put`] and [`Sim::remove`].
    pub fn ledger(&self) -> &[DataCall] {
        &self.ledger
    }

    /// Has `node` read `key` at a quorum and waits for the answer: the
    /// value in [`FIELD`], if the session is visible.
    ///
    /// # Errors
    /// What the read was answered instead of a state, or that it was not
    /// answered in time.
    pub fn read_value(&mut self, node: usize, key: &str) -> Result<Option<String>, String> {
        let call = self.read(node, key.as_bytes(), Level::Quorum);
        self.run_until(READ_WAIT_MS, 10, |sim| sim.outcome(call).is_some());
        let now = self.wall_ms(node);
        match self.outcome(call) {
            Some(Outcome::Read(session)) => Ok(session
                .as_ref()
                .and_then(|s| s.visible_fields(now)?.find(|(n, _)| n.as_ref() == FIELD))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())),
            Some(other) => Err(format!(
                "node-{node}'s read of {key} was answered {other:?}"
            )),
            None => Err(format!("node-{node}'s read of {key} has no answer")),
        }
    }

    /// The running nodes that, by their own placement, replicate `key`,
    /// with their cores.
    fn replicas_holding(&self, key: &str) -> Vec<(usize, &Node)> {
        self.up_nodes()
            .into_iter()
            .filter_map(|n| self.core(n).map(|core| (n, core)))
            .filter(|(_, core)| {
                let partition = core.store().partition_of(key.as_bytes());
                core.replicas_for(partition).contains(&core.me().name)
            })
            .collect()
    }

    /// The keys the ledger names, each once, in the order first written.
    fn ledger_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for call in &self.ledger {
            if !keys.contains(&call.key.as_str()) {
                keys.push(&call.key);
            }
        }
        keys
    }

    /// Whether every running node's partition digests, kept current on
    /// every change, equal digests computed afresh from its sessions.
    ///
    /// # Errors
    /// The first node and partition whose digest is off.
    pub fn check_digests(&self) -> Result<(), String> {
        for node in self.up_nodes() {
            let Some(store) = self.core(node).map(Node::store) else {
                continue;
            };
            for partition in (0..store.partition_count()).map(PartitionId) {
                if store.digest(partition) != store.recompute_digest(partition) {
                    return Err(format!(
                        "node-{node}'s digest of {partition:?} differs from its sessions'"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether every running replica of every key written holds the same
    /// state of it (the same fingerprint: the key and every stamp).
    ///
    /// # Errors
    /// The first key whose replicas differ, and how.
    pub fn check_replicas_agree(&self) -> Result<(), String> {
        for key in self.ledger_keys() {
            let held: Vec<(usize, Option<u64>)> = self
                .replicas_holding(key)
                .into_iter()
                .map(|(n, core)| (n, core.store().fingerprint(key.as_bytes())))
                .collect();
            if held.windows(2).any(|w| w[0].1 != w[1].1) {
                return Err(format!(
                    "the replicas of {key} differ: {}",
                    describe_held(self, key)
                ));
            }
        }
        Ok(())
    }

    /// Whether every running replica of every key holds its newest
    /// acknowledged write (by stamp), or something newer: a put's value,
    /// or for a delete no value from before it.
    ///
    /// # Errors
    /// The first replica and key that lost an acknowledged write.
    pub fn check_acknowledged_writes_survive(&self) -> Result<(), String> {
        for key in self.ledger_keys() {
            let newest = self
                .ledger
                .iter()
                .filter(|c| c.key == key)
                .filter_map(|c| match self.outcome(c.call) {
                    Some(Outcome::Written { stamp, .. }) => Some((*stamp, c)),
                    _ => None,
                })
                .max_by_key(|(stamp, _)| *stamp);
            let Some((stamp, call)) = newest else {
                continue;
            };
            for (n, core) in self.replicas_holding(key) {
                let session = core.store().session(key.as_bytes());
                if !holds(session.as_ref(), stamp, call.value.as_deref()) {
                    return Err(format!(
                        "node-{n} lost the acknowledged {} of {key} by node-{} (stamp {stamp:?}): {}",
                        call.value
                            .as_ref()
                            .map_or_else(|| "delete".to_owned(), |v| format!("write of {v:?}")),
                        call.node,
                        describe_held(self, key)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether `session` holds the write stamped `stamp` of `value` (`None`: a
/// delete), or something newer.
pub(crate) fn holds(session: Option<&Session>, stamp: Stamp, value: Option<&str>) -> bool {
    let Some(session) = session else {
        return false;
    };
    if session.newest_stamp() > stamp {
        return true;
    }
    match value {
        None => session.header().clear >= stamp,
        Some(value) => session.registers().any(|(name, register)| {
            name.as_ref() == FIELD
                && register.marker == stamp
                && register.val.as_deref() == Some(value.as_bytes())
        }),
    }
}

fn describe_held(sim: &Sim, key: &str) -> String {
    sim.replicas_holding(key)
        .into_iter()
        .map(|(n, core)| {
            let held = core.store().session(key.as_bytes()).map(|s| {
                let value = s
                    .registers()
                    .find(|(name, _)| name.as_ref() == FIELD)
                    .and_then(|(_, r)| r.val.clone())
                    .map(|v| String::from_utf8_lossy(&v).into_owned());
                (value, s.newest_stamp())
            });
            format!("node-{n} holds {held:?}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}
