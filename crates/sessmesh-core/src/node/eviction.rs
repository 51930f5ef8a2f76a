//! Eviction: over its memory bound, under an eviction policy, a node picks
//! sessions to evict as Redis does (sampling, with a pool of the best
//! candidates kept between samplings) and removes each from every replica
//! by a replicated [`Write::Evict`].
//!
//! An eviction leaves a tombstone, marked as an eviction, so that a replica
//! that still holds the session cannot bring it back by anti-entropy, a
//! handoff or a hint: the clear stamp hides it, as a delete's does. Unlike a
//! delete's, that tombstone is not kept for the tombstone grace when
//! nothing can still bring the session back, so that a stream of new
//! sessions through a full node does not fill it with tombstones: the
//! coordinator tells the replicas to forget it
//! ([`Message::ForgetEvicted`]) some time after every replica acknowledged
//! the eviction: a request timeout (for older writes still on their way),
//! plus the membership's detection bound (so that a member cut off by then
//! has been declared down), plus a hint replay period (so that hints of
//! older writes to replicas that are up have been replayed); and only when
//! - the cluster was whole when the eviction was acknowledged, and still
//!   is: every member copies are counted against is up and not leaving, so
//!   no member cut off or on its way out holds a copy the eviction missed;
//! - and the placement has not changed for an anti-entropy period, so no
//!   handoff of an older copy is under way (until then they wait).
//!
//! Otherwise the tombstone stays for the grace, as a delete's, and hints
//! and anti-entropy carry it to the replicas that missed it: it is
//! forgotten once the cluster has been whole for two anti-entropy periods
//! since the eviction. A valve bounds the acknowledged ones: when the
//! evictions waiting to be forgotten take more than an eighth of
//! `maxmemory`, the oldest acknowledged are forgotten before they are due
//! (counted in [`NodeStats::evicted_tombstones_forced`]), trading the wait
//! for older writes in flight for room. The others are never forced: a
//! node that keeps evicting while a member is down fills with their
//! tombstones (about 100 bytes each) and, with no session left to evict,
//! refuses writes that add until the member is back or removed.

use std::collections::VecDeque;

use super::*;
use crate::memory::EvictionPolicy;
use crate::store::{Candidate, allocation_bytes};

/// Call ids with this bit are the node's own evictions: their outcomes
/// stay inside the node.
const EVICTION_CALLS: u64 = 1 << 63;
/// Sessions looked at per sampling (Redis's `maxmemory-samples`).
const SAMPLES: usize = 5;
/// The best candidates kept between samplings (Redis's pool size).
const POOL: usize = 16;
/// Most sessions evicted to make room for one write: past it the write goes
/// on and the next one evicts more.
const MAX_PER_WRITE: usize = 32;
/// Room the queues and tables of evictions keep when they shrink, entries.
const KEPT_ROOM: usize = 64;

/// What eviction keeps between calls.
#[derive(Debug, Default)]
pub(super) struct Eviction {
    /// The sampling's random draws: a counter through a mixer.
    draws: u64,
    /// The best victims found so far, best last.
    pool: Vec<Candidate>,
    /// Evictions coordinated and not yet answered, by call id, and their
    /// keys: a key being evicted is not picked again (its eviction may
    /// wait for another replica before this node's copy takes it).
    evicting: HashMap<u64, (Bytes, Stamp)>,
    evicting_keys: HashSet<Bytes>,
    next_call: u64,
    /// Evictions every replica acknowledged while the cluster was whole,
    /// in that order, to forget once due.
    forgetting: VecDeque<Tombstone>,
    /// The other evictions, in order: some replica may have missed them,
    /// so they wait for anti-entropy to carry them to it.
    unsure: VecDeque<Tombstone>,
    /// What their keys take, bytes, as [`queued_bytes`] counts them.
    bytes: usize,
    /// Since when every member copies are counted against has been up.
    whole_since_ms: Option<u64>,
    /// Acknowledged evictions forgotten early by the valve, not yet counted.
    forced: u64,
    /// Hints and consensus state, bytes, as last counted (memory.rs).
    pub(super) counted_elsewhere: usize,
    /// The rest, bytes, as the host last measured it (memory.rs).
    pub(super) other: usize,
    /// When the replica sets last changed, wall-clock ms.
    pub(super) placement_changed_ms: u64,
}

/// An eviction whose tombstone waits to be forgotten.
#[derive(Debug)]
struct Tombstone {
    key: Bytes,
    stamp: Stamp,
    /// When it may be forgotten, ms: set at the first sweep after the
    /// acknowledgements.
    due_ms: Option<u64>,
}

/// What a waiting eviction's key takes here, bytes: its own allocation
/// (sampling copies it out of the store), and the header its shared copies
/// keep. Its entry in the queues is counted apart.
fn queued_bytes(key: &Bytes) -> usize {
    allocation_bytes(key.len()) + allocation_bytes(SHARED_HEADER)
}

/// What a shared `Bytes` keeps beside its buffer: the buffer's pointer and
/// capacity, and the count of its copies.
const SHARED_HEADER: usize = 3 * size_of::<usize>();

impl Eviction {
    pub(super) fn new(seed: u64) -> Eviction {
        Eviction {
            draws: seed,
            ..Eviction::default()
        }
    }

    /// Gives back the room a burst of evictions grew the queues and tables
    /// to, once they hold less than a quarter of it.
    fn shrink(&mut self) {
        fn drained(len: usize, capacity: usize) -> Option<usize> {
            (capacity > KEPT_ROOM && len * 4 < capacity).then(|| KEPT_ROOM.max(len * 2))
        }
        for queue in [&mut self.forgetting, &mut self.unsure] {
            if let Some(room) = drained(queue.len(), queue.capacity()) {
                queue.shrink_to(room);
            }
        }
        if let Some(room) = drained(self.evicting.len(), self.evicting.capacity()) {
            self.evicting.shrink_to(room);
        }
        if let Some(room) = drained(self.evicting_keys.len(), self.evicting_keys.capacity()) {
            self.evicting_keys.shrink_to(room);
        }
    }

    /// The next draw: a step of the counter, which the store's sampling
    /// mixes ([`Store::sample_victims`]).
    fn draw(&mut self) -> u64 {
        self.draws = self.draws.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.draws
    }
}

impl Node {
    /// Makes room for a write that adds: over the bound, evicts sessions by
    /// the policy. Returns whether the write may go on: not under
    /// `noeviction`, nor when nothing the policy may evict is left.
    pub(super) fn make_room(&mut self, now_ms: u64) -> bool {
        let policy = self.config.eviction_policy;
        if self.store.over_limit().is_none() {
            return true;
        }
        if policy == EvictionPolicy::NoEviction {
            return false;
        }
        let mut evicted = 0;
        while self.store.over_limit().is_some() && evicted < MAX_PER_WRITE {
            let Some(victim) = self.next_victim(policy, now_ms) else {
                break;
            };
            self.evict(victim, now_ms);
            evicted += 1;
        }
        self.settle_evictions();
        if evicted == 0 && self.store.over_limit().is_some() {
            // Nothing left to evict but what waits to be forgotten: the
            // valve need not wait for the sweep.
            self.forget_evictions(now_ms);
        }
        evicted > 0 || self.store.over_limit().is_none()
    }

    /// The next session to evict: for `allkeys-random` the first sampled;
    /// for the others the best of the pool, after a new sampling and with
    /// the pool's scores taken afresh (its sessions may have been used,
    /// changed or removed since).
    fn next_victim(&mut self, policy: EvictionPolicy, now_ms: u64) -> Option<Bytes> {
        let draw = self.eviction.draw();
        let mut sampled = self.store.sample_victims(policy, draw, SAMPLES, now_ms);
        let evicting = &self.eviction.evicting_keys;
        sampled.retain(|c| !evicting.contains(&c.key));
        if policy == EvictionPolicy::AllKeysRandom {
            return sampled.into_iter().next().map(|c| c.key);
        }
        let mut pool = std::mem::take(&mut self.eviction.pool);
        pool.retain(|c| !sampled.iter().any(|s| s.key == c.key));
        pool.retain_mut(|c| {
            if self.eviction.evicting_keys.contains(&c.key) {
                return false;
            }
            match self.store.victim_score(&c.key, policy, now_ms) {
                Some(score) => {
                    c.score = score;
                    true
                }
                None => false,
            }
        });
        pool.extend(sampled);
        pool.sort_unstable_by_key(|c| c.score);
        if pool.len() > POOL {
            pool.drain(..pool.len() - POOL);
        }
        let victim = pool.pop().map(|c| c.key);
        self.eviction.pool = pool;
        victim
    }

    /// Evicts `key` from every replica.
    fn evict(&mut self, key: Bytes, now_ms: u64) {
        let id = self.eviction.next_call;
        self.eviction.next_call += 1;
        self.stats.evicted_keys += 1;
        let call = CallId(EVICTION_CALLS | id);
        if let Some(stamp) =
            self.write_now(call, key.clone(), Write::Evict, Level::All, None, now_ms)
        {
            self.eviction.evicting.insert(id, (key.clone(), stamp));
            self.eviction.evicting_keys.insert(key.clone());
            self.effects
                .push(Effect::Event(NodeEvent::Evicted { key, stamp }));
        }
    }

    /// Takes the answers to this node's evictions out of the effects. An
    /// eviction every copy acknowledged while the cluster was whole waits
    /// to be forgotten (at once when this node is its only replica); the
    /// others wait for anti-entropy to repair the replicas that missed them
    /// (see [`forget_evictions`](Self::forget_evictions)).
    pub(super) fn settle_evictions(&mut self) {
        if self.eviction.evicting.is_empty() {
            return;
        }
        let mut settled = Vec::new();
        self.effects.retain(|effect| match effect {
            Effect::Done { call, outcome } if call.0 & EVICTION_CALLS != 0 => {
                settled.push((call.0 & !EVICTION_CALLS, outcome.clone()));
                false
            }
            _ => true,
        });
        for (id, outcome) in settled {
            let Some((key, stamp)) = self.eviction.evicting.remove(&id) else {
                continue;
            };
            self.eviction.evicting_keys.remove(&key);
            let partition = self.store.partition_of(&key);
            let acknowledged = matches!(outcome, Outcome::Written { .. }) && self.whole();
            if acknowledged && self.partitioner.replicas_for(partition).len() <= 1 {
                self.store.forget_evicted(&key, stamp);
                continue;
            }
            let queue = if acknowledged {
                &mut self.eviction.forgetting
            } else {
                &mut self.eviction.unsure
            };
            self.eviction.bytes += queued_bytes(&key);
            queue.push_back(Tombstone {
                key,
                stamp,
                due_ms: None,
            });
        }
        self.sync_other_memory();
    }

    /// Whether every member copies are counted against is up and not
    /// leaving: none holds a copy that writes cannot reach.
    fn whole(&self) -> bool {
        let owners = self.partitioner.members();
        self.counted.iter().all(|name| owners.contains(name))
    }

    /// Each sweep: tells the replicas to forget the tombstones of
    /// evictions acknowledged long enough ago, when the cluster is whole
    /// and its placement settled; of the others once the cluster has been
    /// whole for two anti-entropy periods since (see the module docs); and,
    /// past the valve, of the oldest acknowledged ones.
    pub(super) fn forget_evictions(&mut self, now_ms: u64) {
        let due_by = now_ms
            + self.config.request_timeout_ms
            + self.membership.config().detection_bound_ms()
            + Self::HINT_REPLAY_MS;
        let period = self.config.anti_entropy_period_ms;
        let whole = self.whole();
        let safe = whole && now_ms >= self.eviction.placement_changed_ms + period;
        let whole_since = match (whole, self.eviction.whole_since_ms) {
            (false, _) => None,
            (true, since) => Some(since.unwrap_or(now_ms)),
        };
        self.eviction.whole_since_ms = whole_since;
        let grace_ms = self.config.tombstone_grace_ms;
        let valve = self.config.max_memory_bytes / 8;
        let mut forget = Vec::new();
        // A hint this node still holds for the key may be an older write:
        // its tombstone waits for the hint to go.
        let waiting = !(self.eviction.forgetting.is_empty() && self.eviction.unsure.is_empty());
        let hinted: HashSet<&Bytes> = if waiting {
            self.hints.keys().collect()
        } else {
            HashSet::new()
        };
        let eviction = &mut self.eviction;
        // The ones acknowledged since the last sweep are at the back: date
        // them, and stop at the first one already dated.
        for entry in eviction.forgetting.iter_mut().rev() {
            if entry.due_ms.is_some() {
                break;
            }
            entry.due_ms = Some(due_by);
        }
        // The sweep collects a tombstone at the grace anyway.
        let old = |t: &Tombstone| t.stamp.wall_ms().saturating_add(grace_ms) <= now_ms;
        loop {
            let waiting = eviction.forgetting.len() + eviction.unsure.len();
            let over = eviction.bytes + waiting * size_of::<Tombstone>() > valve;
            let acknowledged = eviction.forgetting.front().filter(|t| {
                let hinted = hinted.contains(&t.key);
                let due = safe && t.due_ms.is_some_and(|d| d <= now_ms) && !hinted;
                let forced = over && !due && !hinted && !old(t);
                eviction.forced += u64::from(forced);
                due || forced || old(t)
            });
            // Anti-entropy has had two periods of a whole cluster to
            // bring the tombstone to any replica that missed it.
            let repaired = eviction.unsure.front().filter(|t| {
                let since = whole_since.map(|s| s.max(t.stamp.wall_ms()));
                (safe
                    && since.is_some_and(|s| s + 2 * period <= now_ms)
                    && !hinted.contains(&t.key))
                    || old(t)
            });
            let queue = if acknowledged.is_some() {
                &mut eviction.forgetting
            } else if repaired.is_some() {
                &mut eviction.unsure
            } else {
                break;
            };
            let Some(tombstone) = queue.pop_front() else {
                break;
            };
            eviction.bytes -= queued_bytes(&tombstone.key);
            forget.push(tombstone);
        }
        self.stats.evicted_tombstones_forced += std::mem::take(&mut self.eviction.forced);
        self.eviction.shrink();
        self.sync_other_memory();
        let mut due: BTreeMap<String, Vec<(Bytes, Stamp)>> = BTreeMap::new();
        let me = self.membership.me().name.clone();
        for Tombstone { key, stamp, .. } in forget {
            let partition = self.store.partition_of(&key);
            for replica in self.partitioner.replicas_for(partition) {
                due.entry(replica.clone())
                    .or_default()
                    .push((key.clone(), stamp));
            }
        }
        for (replica, evictions) in due {
            if replica == me {
                for (key, stamp) in &evictions {
                    self.store.forget_evicted(key, *stamp);
                }
            } else if let Some(&to) = self.addrs.get(&replica) {
                self.effects.push(Effect::Send {
                    to,
                    message: Message::ForgetEvicted { evictions },
                });
            }
        }
    }

    /// What the evictions waiting to be forgotten or answered take, bytes:
    /// their keys, and their entries in the queues and tables (the room
    /// those keep beyond a quarter full is given back each sweep).
    pub(super) fn eviction_memory(&self) -> usize {
        let eviction = &self.eviction;
        let queued = eviction.forgetting.len() + eviction.unsure.len();
        eviction.bytes
            + queued * size_of::<Tombstone>()
            + eviction.evicting.len() * (size_of::<(u64, (Bytes, Stamp))>() + 1)
            + eviction.evicting_keys.len() * (size_of::<Bytes>() + 1)
    }

    /// A coordinator says every replica has these evictions.
    pub(super) fn forget_evicted(&mut self, evictions: &[(Bytes, Stamp)]) {
        for (key, stamp) in evictions {
            self.store.forget_evicted(key, *stamp);
        }
    }

    /// After a replicated change: a replica over its bound evicts too, so
    /// the writes other nodes coordinate do not take it past the bound.
    pub(super) fn evict_if_over(&mut self, now_ms: u64) {
        // Evictions answered by this input wait to be forgotten, which
        // counts: take them first.
        self.settle_evictions();
        if self.store.over_limit().is_some()
            && self.config.eviction_policy != EvictionPolicy::NoEviction
        {
            self.make_room(now_ms);
        }
    }
}
