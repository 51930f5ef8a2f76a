//! Prometheus metrics: client commands as they run, and the peer's state and
//! replication counters, read when scraped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use sessmesh::{MemberState, Node};
use sessmesh_resp::Observer;
use sessmesh_resp::commands::Command;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerNameLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// One command's series, made once so that counting allocates nothing.
#[derive(Clone, Debug)]
struct CommandSeries {
    calls: Counter,
    errors: Counter,
    latency: Latency,
}

/// Latency buckets: the first holds up to 10 µs, each next one twice the
/// last, the 20th up to about 5 s; a last one holds the rest.
const LATENCY_BUCKETS: usize = 20;
const LATENCY_FIRST_NANOS: u64 = 10_000;

/// A latency histogram that counts without a lock: one atomic add for the
/// bucket and one for the sum. (`prometheus_client`'s `Histogram` takes a
/// write lock per observation, which every thread serving the same command
/// would contend for.)
#[derive(Clone, Debug, Default)]
struct Latency(Arc<LatencyCounts>);

#[derive(Debug, Default)]
struct LatencyCounts {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

/// The bucket an observation of `elapsed` goes into: the first whose bound
/// is at least `elapsed`.
fn latency_bucket(elapsed: Duration) -> usize {
    let firsts = elapsed.as_nanos().div_ceil(u128::from(LATENCY_FIRST_NANOS));
    // The smallest i with 2^i >= firsts.
    let i = if firsts <= 1 {
        0
    } else {
        128 - (firsts - 1).leading_zeros()
    };
    usize::try_from(i).map_or(LATENCY_BUCKETS, |i| i.min(LATENCY_BUCKETS))
}

impl Latency {
    fn observe(&self, elapsed: Duration) {
        let counts = &self.0;
        counts.buckets[latency_bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        counts.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut bound = Duration::from_nanos(LATENCY_FIRST_NANOS).as_secs_f64();
        let mut count = 0;
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .enumerate()
            .map(|(i, bucket)| {
                let n = bucket.load(Ordering::Relaxed);
                count += n;
                let upper = if i == LATENCY_BUCKETS {
                    f64::MAX
                } else {
                    bound
                };
                bound *= 2.0;
                (upper, n)
            })
            .collect();
        #[expect(clippy::cast_precision_loss, reason = "a sum of latencies, for rates")]
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Every metric the node exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// By [`Command::index`].
    commands: Vec<CommandSeries>,
    unknown: CommandSeries,
    connections: Gauge,
    connections_refused: Counter,
    protocol_errors: Counter,
    client_read: Counter,
    client_written: Counter,
    members: Family<StateLabels, Gauge>,
    partitions_owned: Gauge,
    sessions_stored: Gauge,
    hints_pending: Gauge,
    memory_used: Gauge,
    memory_max: Gauge,
    writes_refused_over_memory: Counter,
    evicted_keys: Counter,
    evicted_tombstones_forced: Counter,
    last_anti_entropy: Gauge,
    replica_acks: Counter,
    write_timeouts: Counter,
    read_timeouts: Counter,
    hints_queued: Counter,
    hints_replayed: Counter,
    hints_dropped: Counter,
    anti_entropy_rounds: Counter,
    keys_repaired: Counter,
    clock_drift_refused: Counter,
    writes_refused_clock_ahead: Counter,
    writes_short_of_copies: Counter,
    reads_short_of_copies: Counter,
    digest_mismatches: Counter,
    peer_bytes: Family<PeerLabels, Counter>,
    peer_clock_offset: Family<PeerNameLabels, Gauge>,
    transport_links: Gauge,
    transport_queued: Gauge,
    /// Per-peer byte totals already counted, by peer and direction; a
    /// reconnection restarts the transport's counts.
    peer_seen: std::sync::Mutex<HashMap<(String, &'static str), u64>>,
    scrapes: AtomicU64,
}

/// Raises `counter` to `total`, a count kept elsewhere.
fn sync(counter: &Counter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

fn gauge(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Metrics for a node's commands and peer.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("sessmesh");
        let calls = Family::<CommandLabels, Counter>::default();
        let errors = Family::<CommandLabels, Counter>::default();
        let latency = Family::<CommandLabels, Latency>::default();
        registry.register("commands", "Redis commands run, by command", calls.clone());
        registry.register(
            "command_errors",
            "Redis commands answered with an error, by command",
            errors.clone(),
        );
        registry.register(
            "command_duration_seconds",
            "Time to run a Redis command, by command",
            latency.clone(),
        );
        let series = |command: &'static str| {
            let labels = CommandLabels { command };
            CommandSeries {
                calls: calls.get_or_create_owned(&labels),
                errors: errors.get_or_create_owned(&labels),
                latency: latency.get_or_create_owned(&labels),
            }
        };
        let commands = Command::all().map(|c| series(c.name())).collect();
        let unknown = series("unknown");

        let mut metric = |name: &str, help: &str, m: Counter| {
            registry.register(name, help, m.clone());
            m
        };
        let connections_refused = metric(
            "resp_connections_refused",
            "Client connections refused at max_clients",
            Counter::default(),
        );
        let protocol_errors = metric(
            "resp_protocol_errors",
            "Client connections closed for malformed RESP or a request over the limits",
            Counter::default(),
        );
        let replica_acks = metric(
            "replication_acks",
            "Replica acknowledgements of writes this node coordinated",
            Counter::default(),
        );
        let write_timeouts = metric(
            "replication_write_timeouts",
            "Writes answered before enough replicas acknowledged",
            Counter::default(),
        );
        let read_timeouts = metric(
            "replication_read_timeouts",
            "Reads answered before enough replicas did",
            Counter::default(),
        );
        let hints_queued = metric(
            "hints_queued",
            "Hints kept for replicas that missed a write",
            Counter::default(),
        );
        let hints_replayed = metric(
            "hints_replayed",
            "Hints replayed and acknowledged",
            Counter::default(),
        );
        let hints_dropped = metric(
            "hints_dropped",
            "Hints dropped because max_hint_bytes was reached",
            Counter::default(),
        );
        let anti_entropy_rounds = metric(
            "anti_entropy_rounds",
            "Anti-entropy rounds started",
            Counter::default(),
        );
        let keys_repaired = metric(
            "anti_entropy_repaired_keys",
            "Sessions changed by a merge from a peer (anti-entropy or read repair)",
            Counter::default(),
        );
        let clock_drift_refused = metric(
            "clock_drift_refused",
            "Peer stamps refused for being ahead of this node's clock by more than max_clock_drift_ms",
            Counter::default(),
        );
        let writes_refused_clock_ahead = metric(
            "clock_ahead_refused_writes",
            "Writes this node refused to stamp, or that every other replica refused, because its clock ran ahead of its peers by more than max_clock_drift_ms",
            Counter::default(),
        );
        let writes_short_of_copies = metric(
            "replication_writes_short_of_copies",
            "Writes answered with too few acknowledgements at once, because fewer replicas were up than the level counts",
            Counter::default(),
        );
        let reads_short_of_copies = metric(
            "replication_reads_short_of_copies",
            "Reads answered with too few answers at once, because fewer replicas were up than the level counts",
            Counter::default(),
        );
        let digest_mismatches = metric(
            "read_digest_mismatches",
            "Reads where a replica's fingerprint differed from this node's copy, so its state was fetched",
            Counter::default(),
        );
        let connections = Gauge::default();
        registry.register(
            "resp_connections",
            "Client connections open",
            connections.clone(),
        );
        let client_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "resp_bytes",
            "Bytes from and to clients",
            client_bytes.clone(),
        );
        let client_read = client_bytes.get_or_create_owned(&DirectionLabels { direction: "in" });
        let client_written =
            client_bytes.get_or_create_owned(&DirectionLabels { direction: "out" });
        let members = Family::<StateLabels, Gauge>::default();
        registry.register(
            "members",
            "Cluster members this node sees, itself included, by state",
            members.clone(),
        );
        let partitions_owned = Gauge::default();
        registry.register(
            "partitions_owned",
            "Partitions this node replicates",
            partitions_owned.clone(),
        );
        let sessions_stored = Gauge::default();
        registry.register(
            "sessions_stored",
            "Sessions this node stores, tombstones included",
            sessions_stored.clone(),
        );
        let hints_pending = Gauge::default();
        registry.register(
            "hints_pending",
            "Hints waiting for their replica",
            hints_pending.clone(),
        );
        let memory_used = Gauge::default();
        registry.register(
            "memory_used_bytes",
            "What this node holds, as it counts it against maxmemory: sessions, tables, hints, consensus state, evictions waiting to be forgotten, and the rest of what its allocator handed out since it started",
            memory_used.clone(),
        );
        let memory_max = Gauge::default();
        registry.register(
            "memory_max_bytes",
            "This node's memory bound, maxmemory (0: none)",
            memory_max.clone(),
        );
        let writes_refused_over_memory = Counter::default();
        registry.register(
            "memory_refused_writes",
            "Writes refused because this node was over maxmemory (noeviction, or nothing left to evict)",
            writes_refused_over_memory.clone(),
        );
        let evicted_keys = Counter::default();
        registry.register(
            "evicted_keys",
            "Sessions this node evicted from every replica to stay under maxmemory",
            evicted_keys.clone(),
        );
        let evicted_tombstones_forced = Counter::default();
        registry.register(
            "evicted_tombstones_forced",
            "Eviction tombstones forgotten before every replica was known to have them, to stay under maxmemory",
            evicted_tombstones_forced.clone(),
        );
        let last_anti_entropy = Gauge::default();
        registry.register(
            "last_anti_entropy_timestamp_seconds",
            "When the last anti-entropy round started (Unix time)",
            last_anti_entropy.clone(),
        );
        let peer_bytes = Family::<PeerLabels, Counter>::default();
        registry.register(
            "peer_bytes",
            "Bytes to and from each peer over QUIC, by peer and direction",
            peer_bytes.clone(),
        );
        let transport_links = Gauge::default();
        registry.register(
            "transport_links",
            "Peers the transport holds a link for (a send queue, a connection or redials); a member gone for good is dropped",
            transport_links.clone(),
        );
        let transport_queued = Gauge::default();
        registry.register(
            "transport_queued_bytes",
            "Bytes waiting in the transport's send queues, every peer together",
            transport_queued.clone(),
        );
        let peer_clock_offset = Family::<PeerNameLabels, Gauge>::default();
        registry.register(
            "peer_clock_offset_milliseconds",
            "Each peer's wall clock less this node's, as last measured (negative: this node runs ahead of it)",
            peer_clock_offset.clone(),
        );
        Metrics {
            registry,
            commands,
            unknown,
            connections,
            connections_refused,
            protocol_errors,
            client_read,
            client_written,
            members,
            partitions_owned,
            sessions_stored,
            hints_pending,
            last_anti_entropy,
            replica_acks,
            write_timeouts,
            read_timeouts,
            hints_queued,
            hints_replayed,
            hints_dropped,
            anti_entropy_rounds,
            keys_repaired,
            clock_drift_refused,
            writes_refused_clock_ahead,
            writes_refused_over_memory,
            evicted_keys,
            evicted_tombstones_forced,
            memory_used,
            memory_max,
            writes_short_of_copies,
            reads_short_of_copies,
            digest_mismatches,
            peer_bytes,
            peer_clock_offset,
            transport_links,
            transport_queued,
            peer_seen: std::sync::Mutex::new(HashMap::new()),
            scrapes: AtomicU64::new(0),
        }
    }

    /// A client connected (`true`) or went away.
    pub(crate) fn connection(&self, open: bool) {
        if open {
            self.connections.inc();
        } else {
            self.connections.dec();
        }
    }

    /// A client was refused at the connection limit.
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// The metrics in the OpenMetrics text format, with the peer's state
    /// read now.
    pub(crate) async fn render(&self, node: &Node) -> String {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        if let Ok(status) = node.status().await {
            for state in [
                MemberState::Joining,
                MemberState::Alive,
                MemberState::Leaving,
            ] {
                let count = status.members.iter().filter(|m| m.state == state).count();
                let state = match state {
                    MemberState::Joining => "joining",
                    MemberState::Alive => "alive",
                    MemberState::Leaving => "leaving",
                };
                self.members
                    .get_or_create(&StateLabels { state })
                    .set(gauge(count));
            }
            self.partitions_owned.set(gauge(status.partitions_owned));
            self.sessions_stored.set(gauge(status.sessions_stored));
            self.hints_pending.set(gauge(status.hints_pending));
            self.memory_used.set(gauge(status.memory.used()));
            self.memory_max.set(gauge(status.memory.max));
            let last = status
                .last_anti_entropy
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.last_anti_entropy.set(last);
            let r = status.replication;
            sync(&self.replica_acks, r.replica_acks);
            sync(&self.write_timeouts, r.write_timeouts);
            sync(&self.read_timeouts, r.read_timeouts);
            sync(&self.hints_queued, r.hints_queued);
            sync(&self.hints_replayed, r.hints_replayed);
            sync(&self.hints_dropped, status.hints_dropped);
            sync(&self.anti_entropy_rounds, r.anti_entropy_rounds);
            sync(&self.keys_repaired, r.keys_repaired);
            sync(&self.clock_drift_refused, r.clock_drift_refused);
            sync(
                &self.writes_refused_clock_ahead,
                r.writes_refused_clock_ahead,
            );
            sync(&self.writes_short_of_copies, r.writes_short_of_copies);
            sync(
                &self.writes_refused_over_memory,
                r.writes_refused_over_memory,
            );
            sync(&self.evicted_keys, r.evicted_keys);
            sync(&self.evicted_tombstones_forced, r.evicted_tombstones_forced);
            sync(&self.reads_short_of_copies, r.reads_short_of_copies);
            sync(&self.digest_mismatches, r.digest_mismatches);
            // Members gone drop out of the gauge.
            self.peer_clock_offset.clear();
            for m in &status.members {
                if let Some(offset) = m.clock_offset_ms {
                    self.peer_clock_offset
                        .get_or_create(&PeerNameLabels {
                            peer: m.member.name.clone(),
                        })
                        .set(offset);
                }
            }
            let names: HashMap<_, _> = status
                .members
                .iter()
                .map(|m| (m.member.addr, m.member.name.clone()))
                .collect();
            if let Some((stats, peers)) = node.transport_stats() {
                self.transport_links
                    .set(i64::try_from(stats.links).unwrap_or(i64::MAX));
                self.transport_queued
                    .set(i64::try_from(stats.queued_bytes).unwrap_or(i64::MAX));
                let mut seen = self.peer_seen.lock().unwrap_or_else(|e| e.into_inner());
                for peer in peers {
                    let name = names
                        .get(&peer.addr)
                        .cloned()
                        .unwrap_or_else(|| peer.addr.to_string());
                    for (direction, total) in [("out", peer.sent), ("in", peer.received)] {
                        let last = seen.entry((name.clone(), direction)).or_insert(0);
                        // A new connection counts from zero again.
                        let delta = if total >= *last { total - *last } else { total };
                        *last = total;
                        self.peer_bytes
                            .get_or_create(&PeerLabels {
                                peer: name.clone(),
                                direction,
                            })
                            .inc_by(delta);
                    }
                }
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("metrics could not be encoded: {e}");
        }
        out
    }
}

/// Counts a connection's commands into the shared [`Metrics`].
#[derive(Clone, Debug)]
pub(crate) struct CommandObserver(pub Arc<Metrics>);

impl Observer for CommandObserver {
    fn command(&self, command: Option<Command>, elapsed: Duration, error: bool) {
        let m = &self.0;
        let series = command
            .and_then(|c| m.commands.get(c.index()))
            .unwrap_or(&m.unknown);
        series.calls.inc();
        if error {
            series.errors.inc();
        }
        series.latency.observe(elapsed);
    }

    fn protocol_error(&self) {
        self.0.protocol_errors.inc();
    }

    fn bytes(&self, read: usize, written: usize) {
        if read > 0 {
            self.0.client_read.inc_by(read as u64);
        }
        if written > 0 {
            self.0.client_written.inc_by(written as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn latencies_fall_in_the_first_bucket_whose_bound_holds_them() {
        let us = Duration::from_micros;
        let cases = [
            (Duration::ZERO, 0),
            (us(10), 0),
            (us(10) + Duration::from_nanos(1), 1),
            (us(20), 1),
            (us(21), 2),
            (us(40), 2),
            (us(10 << 19), 19),
            (us(10 << 19) + Duration::from_nanos(1), 20),
            (Duration::MAX, 20),
        ];
        for (elapsed, bucket) in cases {
            assert_eq!(latency_bucket(elapsed), bucket, "{elapsed:?}");
        }
    }

    #[test]
    fn latencies_encode_as_a_cumulative_histogram() {
        let mut registry = Registry::default();
        let latency = Latency::default();
        registry.register("latency", "test", latency.clone());
        for micros in [5, 15, 15, 30, 10_000_000] {
            latency.observe(Duration::from_micros(micros));
        }
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .to_owned()
        };
        assert!(line("# TYPE latency ").ends_with("histogram"), "{text}");
        assert_eq!(line("latency_count"), "latency_count 5");
        assert_eq!(line("latency_sum"), "latency_sum 10.000065");
        let buckets: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("latency_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(buckets.len(), LATENCY_BUCKETS + 1, "{text}");
        assert_eq!(&buckets[..4], ["1", "3", "4", "4"]);
        assert_eq!(
            buckets[LATENCY_BUCKETS - 1],
            "4",
            "5.24 s holds all but 10 s"
        );
        assert_eq!(buckets[LATENCY_BUCKETS], "5");
        assert!(
            line("latency_bucket{le=\"+Inf\"}").ends_with(" 5"),
            "{text}"
        );
    }
}
