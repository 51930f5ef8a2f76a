//! Settings for a new peer, and starting it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use sessmesh_core::{ClusterId, Config, EvictionPolicy, Level, Member, MembershipConfig};
use sessmesh_net::{
    CaCertificate, ClusterCa, NodeIdentity, QuicSettings, QuicTransport, Transport, TransportConfig,
};
use tracing::warn;

use crate::Error;
use crate::memory_probe::MemoryProbe;
use crate::node::{Node, Options, spawn_with};

/// The UDP port peers listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7379;

/// How a peer proves who it is to the others.
#[derive(Clone, Debug)]
enum Security {
    Tls {
        ca: CaCertificate,
        identity: NodeIdentity,
    },
    Files {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
    Development,
}

/// Settings for a new peer: `Node::builder()`, then [`start`](Self::start).
///
/// Only the TLS material has no default: give the cluster CA's certificate
/// and this peer's certificate ([`tls`](Self::tls), [`tls_files`](Self::tls_files);
/// `sessmesh certs` makes them), or ask for [`development`](Self::development)
/// mode explicitly.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `start`"]
pub struct NodeBuilder {
    name: Option<String>,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    seeds: Vec<SocketAddr>,
    security: Option<Security>,
    cluster: String,
    config: Config,
    membership: Option<MembershipConfig>,
    read_level: Level,
    write_level: Level,
    shutdown_timeout: Duration,
    join_timeout: Duration,
    transport: TransportConfig,
    memory_probe: Option<MemoryProbe>,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        let options = Options::default();
        NodeBuilder {
            name: None,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
            advertise: None,
            seeds: Vec::new(),
            security: None,
            cluster: "sessmesh".into(),
            config: Config::default(),
            membership: None,
            read_level: options.read_level,
            write_level: options.write_level,
            shutdown_timeout: options.shutdown_timeout,
            join_timeout: Duration::from_secs(10),
            transport: TransportConfig::default(),
            memory_probe: None,
        }
    }
}

/// The throwaway CA every development-mode peer of this process shares.
fn development_ca() -> Result<&'static ClusterCa, Error> {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    if let Some(ca) = CA.get() {
        return Ok(ca);
    }
    let ca = ClusterCa::generate("sessmesh-development").map_err(Error::Transport)?;
    let ca = CA.get_or_init(|| {
        warn!(
            "DEVELOPMENT MODE: generated a throwaway cluster CA for this process; only peers of this \
             process can join, and nothing is secret. Use `sessmesh certs` in production."
        );
        ca
    });
    Ok(ca)
}

impl NodeBuilder {
    /// This peer's name, unique in the cluster. With TLS material it must
    /// match the name in the certificate (and defaults to it); in
    /// development mode it defaults to `peer-` and 8 random hex digits.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The UDP address to listen on for peers (default `127.0.0.1:7379`;
    /// port 0 picks a free one).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The address other peers reach this one at, when it is not the listen
    /// address (required when listening on `0.0.0.0` or `::`).
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise = Some(addr);
        self
    }

    /// Addresses of peers to join through; none starts a new cluster. Seeds
    /// that are down are retried.
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.seeds = seeds.into_iter().collect();
        self
    }

    /// The cluster CA's certificate and this peer's identity (certificate
    /// and key, signed by that CA).
    pub fn tls(mut self, ca: CaCertificate, identity: NodeIdentity) -> Self {
        self.security = Some(Security::Tls { ca, identity });
        self
    }

    /// Like [`tls`](Self::tls), read from PEM files when the peer starts.
    pub fn tls_files(
        mut self,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.security = Some(Security::Files {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Development mode: instead of TLS material, a throwaway CA generated
    /// once per process (and announced as such in the log at `WARN`), so
    /// peers of one process form a cluster with no files. Peers in other
    /// processes cannot join it. Never for production.
    pub fn development(mut self) -> Self {
        self.security = Some(Security::Development);
        self
    }

    /// The cluster's name (default `sessmesh`): peers of another cluster are
    /// refused even with a valid certificate.
    pub fn cluster_name(mut self, name: impl Into<String>) -> Self {
        self.cluster = name.into();
        self
    }

    /// The number of partitions (default 256, a power of two); every member
    /// must use the same.
    pub fn partition_count(mut self, count: u32) -> Self {
        self.config.partition_count = count;
        self
    }

    /// Copies of each session (default 3); every member must use the same.
    pub fn replication_factor(mut self, factor: usize) -> Self {
        self.config.replication_factor = factor;
        self
    }

    /// This peer's memory bound, bytes (default 0: none; Redis's
    /// `maxmemory`, see [`parse_bytes`](crate::parse_bytes) for `"64mb"`).
    /// Over it, the [eviction policy](Self::eviction_policy) evicts
    /// sessions from every replica, or under `NoEviction` (the default)
    /// writes that add are refused with
    /// [`Error::OutOfMemory`](crate::Error::OutOfMemory); reads, deletes and
    /// deadlines go on. Each peer has its own.
    pub fn max_memory(mut self, bytes: usize) -> Self {
        self.config.max_memory_bytes = bytes;
        self
    }

    /// What this peer does over its memory bound (default `NoEviction`;
    /// Redis's `maxmemory-policy`).
    pub fn eviction_policy(mut self, policy: EvictionPolicy) -> Self {
        self.config.eviction_policy = policy;
        self
    }

    /// How to ask the process's allocator what it has handed out (default:
    /// not at all). With it the peer reports, as
    /// [`MemoryReport::other`](crate::MemoryReport::other) and inside
    /// [`MemoryReport::used`](crate::MemoryReport::used), what the process
    /// took since the peer started beyond what the peer counts itself:
    /// messages queued and in flight, timers, the transport's buffers.
    /// Redis's `used_memory` is its allocator's figure too. It is not
    /// evicted for (Redis's `mem_not_counted_for_evict`). For a process
    /// that runs nothing but the peer, as the `sessmesh` server does: in an
    /// application that embeds a peer, the application's own allocations
    /// would show as the peer's.
    pub fn memory_probe(mut self, probe: MemoryProbe) -> Self {
        self.memory_probe = Some(probe);
        self
    }

    /// The level reads use unless a call says otherwise (default `Quorum`).
    pub fn read_level(mut self, level: Level) -> Self {
        self.read_level = level;
        self
    }

    /// The level writes use unless a call says otherwise (default `Quorum`).
    pub fn write_level(mut self, level: Level) -> Self {
        self.write_level = level;
        self
    }

    /// Every other replication, anti-entropy and expiry setting (see
    /// [`Config`]); partition count and replication factor included.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Failure-detection timing (default [`MembershipConfig::lan`] for 16
    /// members).
    pub fn membership(mut self, membership: MembershipConfig) -> Self {
        self.membership = Some(membership);
        self
    }

    /// Transport limits (queues, frame size, timeouts).
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// How long [`start`](Self::start) waits to join the cluster through its
    /// seeds (default 10 s).
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// How long [`Node::shutdown`] waits for handoffs (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    fn security(&self) -> Result<(CaCertificate, Option<NodeIdentity>), Error> {
        let failed = |path: &PathBuf| {
            let path = path.clone();
            move |source| Error::Certificate { path, source }
        };
        match &self.security {
            None => Err(Error::Config {
                setting: "tls",
                reason: "no TLS material: call tls() or tls_files() with the cluster CA and this \
                         peer's certificate (see `sessmesh certs`), or development() for a \
                         throwaway CA"
                    .into(),
            }),
            Some(Security::Tls { ca, identity }) => Ok((ca.clone(), Some(identity.clone()))),
            Some(Security::Files { ca, cert, key }) => Ok((
                CaCertificate::load(ca).map_err(failed(ca))?,
                Some(NodeIdentity::load(cert, key).map_err(failed(cert))?),
            )),
            Some(Security::Development) => Ok((development_ca()?.certificate().clone(), None)),
        }
    }

    /// Starts the peer on the current tokio runtime and returns its handle.
    ///
    /// With seeds, it returns once the peer has joined the cluster through
    /// one of them, so its first calls already see the cluster's data. If no
    /// seed answers within the `join_timeout`, it logs a warning and
    /// returns anyway: the peer keeps trying its seeds and, meanwhile, serves
    /// alone, as the first member of a cluster would.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid setting;
    /// [`Error::Certificate`] for unusable TLS files; [`Error::Transport`]
    /// when the address cannot be bound.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn start(self) -> Result<Node, Error> {
        let config_error = |e: sessmesh_core::Error| match e {
            sessmesh_core::Error::InvalidConfig { setting, reason } => {
                Error::Config { setting, reason }
            }
            other => Error::Refused(other.to_string()),
        };
        self.config.validate().map_err(config_error)?;
        let membership = self
            .membership
            .clone()
            .unwrap_or_else(|| MembershipConfig::lan(16));
        membership.validate().map_err(config_error)?;
        if self.listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(Error::Config {
                setting: "advertise",
                reason: format!(
                    "listening on {} is not an address peers can reach: set advertise() to this \
                     host's address",
                    self.listen
                ),
            });
        }
        let generation = generation();
        let (ca, identity) = self.security()?;
        let identity = match identity {
            Some(identity) => {
                if let Some(name) = self.name.as_ref().filter(|n| *n != identity.name()) {
                    return Err(Error::Config {
                        setting: "name",
                        reason: format!(
                            "{name:?} is not the name in this peer's certificate, {:?}",
                            identity.name()
                        ),
                    });
                }
                identity
            }
            None => {
                let ca = development_ca()?;
                let ip = self.advertise.map_or(self.listen.ip(), |a| a.ip());
                let name = self.name.clone().unwrap_or_else(|| {
                    let unique = sessmesh_core::key_hash(&generation.to_le_bytes());
                    format!("peer-{:08x}", unique >> 32)
                });
                ca.issue(&name, &[ip]).map_err(|e| Error::Config {
                    setting: "name",
                    reason: e.to_string(),
                })?
            }
        };
        let settings = QuicSettings {
            identity: identity.clone(),
            ca,
            cluster: ClusterId::from_name(&self.cluster),
            config: self.transport.clone(),
        };
        let (transport, incoming) =
            QuicTransport::bind(self.listen, settings).map_err(Error::Transport)?;
        let bound = Transport::local_addr(&transport);
        let addr = match self.advertise {
            Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), bound.port()),
            Some(a) => a,
            None => bound,
        };
        let me = Member {
            name: identity.name().to_owned(),
            addr,
            client_addr: None,
            generation,
            partition_count: self.config.partition_count,
            replication_factor: u32::try_from(self.config.replication_factor).unwrap_or(u32::MAX),
        };
        let seed = generation ^ sessmesh_core::key_hash(me.name.as_bytes());
        let core =
            sessmesh_core::Node::new(me, &self.config, membership, seed).map_err(config_error)?;
        let options = Options {
            read_level: self.read_level,
            write_level: self.write_level,
            shutdown_timeout: self.shutdown_timeout,
            #[cfg(feature = "test-support")]
            faults: Some(transport.shared_faults()),
            transport: Some(transport.observer()),
            memory_probe: self.memory_probe,
        };
        let seeds = self.seeds.clone();
        let node = spawn_with(core, transport, incoming, self.seeds, options);
        if !seeds.is_empty() {
            let mut events = node.subscribe();
            let joined = async {
                while node.members().await.is_ok_and(|m| m.is_empty()) {
                    // Any event may be the join; look again after each.
                    if events.recv().await.is_err() {
                        events = node.subscribe();
                    }
                }
            };
            if tokio::time::timeout(self.join_timeout, joined)
                .await
                .is_err()
            {
                warn!(
                    ?seeds,
                    timeout = ?self.join_timeout,
                    "no seed answered; serving alone until one does"
                );
            }
        }
        Ok(node)
    }
}

/// A generation that grows across restarts: the wall clock in microseconds.
fn generation() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}
