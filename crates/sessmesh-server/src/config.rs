//! `sessmesh serve` settings: a TOML file, overridden by `SESSMESH_*`
//! environment variables, overridden by flags. Every setting is checked, and
//! an error names the setting and what is wrong with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use sessmesh::Level;
use sessmesh_core::{Config, MembershipConfig};
use sessmesh_resp::Limits;

/// A setting that is wrong, and why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// The setting, as the config file names it.
    pub(crate) setting: String,
    /// What is wrong.
    pub(crate) reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_owned(),
        reason: reason.into(),
    }
}

/// A size in the config file: a number of bytes, or text with a unit
/// (`"64mb"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Bytes(n) => write!(f, "{n}"),
            Size::Text(text) => f.write_str(text),
        }
    }
}

/// The config file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    name: Option<String>,
    cluster_name: Option<String>,
    peer_listen: Option<String>,
    peer_advertise: Option<String>,
    resp_listen: Option<String>,
    http_listen: Option<String>,
    seeds: Option<Vec<String>>,
    development: Option<bool>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    resp_tls_cert: Option<PathBuf>,
    resp_tls_key: Option<PathBuf>,
    requirepass: Option<String>,
    databases: Option<u32>,
    partition_count: Option<u32>,
    replication_factor: Option<usize>,
    read_level: Option<String>,
    write_level: Option<String>,
    request_timeout_ms: Option<u64>,
    anti_entropy_period_ms: Option<u64>,
    membership: Option<String>,
    max_clients: Option<usize>,
    maxmemory: Option<Size>,
    maxmemory_policy: Option<String>,
    max_bulk_bytes: Option<usize>,
    max_array_len: Option<usize>,
    max_request_bytes: Option<usize>,
    worker_threads: Option<usize>,
}

/// Flags of `sessmesh serve`; each also reads `SESSMESH_<NAME>`.
#[derive(Args, Debug, Default)]
pub(crate) struct Overrides {
    /// The TOML config file.
    #[arg(long, env = "SESSMESH_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// This node's name (must match its certificate).
    #[arg(long, env = "SESSMESH_NAME")]
    name: Option<String>,
    /// The cluster's name; nodes of other clusters are refused.
    #[arg(long, env = "SESSMESH_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// UDP address for peer traffic (QUIC) [default: 127.0.0.1:7379].
    #[arg(long, env = "SESSMESH_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// The address peers reach this node at, when not the listen address.
    #[arg(long, env = "SESSMESH_PEER_ADVERTISE")]
    peer_advertise: Option<String>,
    /// TCP address of the Redis protocol endpoint [default: 127.0.0.1:6379].
    #[arg(long, env = "SESSMESH_RESP_LISTEN")]
    resp_listen: Option<String>,
    /// TCP address of the metrics, health and status endpoint [default: 127.0.0.1:9379].
    #[arg(long, env = "SESSMESH_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Peer addresses to join through, comma-separated.
    #[arg(long, env = "SESSMESH_SEEDS", value_delimiter = ',')]
    seeds: Option<Vec<String>>,
    /// Use a throwaway CA instead of certificates: one node only, never in production.
    #[arg(long, env = "SESSMESH_DEVELOPMENT", num_args = 0..=1, default_missing_value = "true")]
    development: Option<bool>,
    /// The cluster CA's certificate (PEM).
    #[arg(long, env = "SESSMESH_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    #[arg(long, env = "SESSMESH_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "SESSMESH_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Certificate for TLS on the Redis endpoint (PEM); with resp-tls-key.
    #[arg(long, env = "SESSMESH_RESP_TLS_CERT")]
    resp_tls_cert: Option<PathBuf>,
    /// Key for TLS on the Redis endpoint (PEM).
    #[arg(long, env = "SESSMESH_RESP_TLS_KEY")]
    resp_tls_key: Option<PathBuf>,
    /// Password clients must give with AUTH or HELLO ... AUTH.
    #[arg(long, env = "SESSMESH_REQUIREPASS")]
    requirepass: Option<String>,
    /// Databases SELECT may choose from, 1 to 1024 [default: 16].
    #[arg(long, env = "SESSMESH_DATABASES")]
    databases: Option<String>,
    /// Partitions (a power of two; the same on every node) [default: 256].
    #[arg(long, env = "SESSMESH_PARTITION_COUNT")]
    partition_count: Option<String>,
    /// Copies of each session (the same on every node) [default: 3].
    #[arg(long, env = "SESSMESH_REPLICATION_FACTOR")]
    replication_factor: Option<String>,
    /// one, quorum or all [default: quorum].
    #[arg(long, env = "SESSMESH_READ_LEVEL")]
    read_level: Option<String>,
    /// one, quorum or all [default: quorum].
    #[arg(long, env = "SESSMESH_WRITE_LEVEL")]
    write_level: Option<String>,
    /// How long a call waits for replicas [default: 2000].
    #[arg(long, env = "SESSMESH_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<String>,
    /// How often replicas compare digests [default: 10000].
    #[arg(long, env = "SESSMESH_ANTI_ENTROPY_PERIOD_MS")]
    anti_entropy_period_ms: Option<String>,
    /// Failure-detection preset: lan, wan or local [default: lan].
    #[arg(long, env = "SESSMESH_MEMBERSHIP")]
    membership: Option<String>,
    /// Most client connections at once [default: 10000].
    #[arg(long, env = "SESSMESH_MAX_CLIENTS")]
    max_clients: Option<String>,
    /// This node's memory bound: bytes, or with kb, mb, gb (k, m, g: powers
    /// of 1000); 0 for none [default: 0].
    #[arg(long, env = "SESSMESH_MAXMEMORY")]
    maxmemory: Option<String>,
    /// What the node does at maxmemory: noeviction refuses writes that add
    /// [default: noeviction].
    #[arg(long, env = "SESSMESH_MAXMEMORY_POLICY")]
    maxmemory_policy: Option<String>,
    /// Longest bulk string a client may send, in bytes [default: 67108864].
    #[arg(long, env = "SESSMESH_MAX_BULK_BYTES")]
    max_bulk_bytes: Option<String>,
    /// Most elements in a request [default: 1048576].
    #[arg(long, env = "SESSMESH_MAX_ARRAY_LEN")]
    max_array_len: Option<String>,
    /// Most bytes one request may carry in all [default: 536870912].
    #[arg(long, env = "SESSMESH_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<String>,
    /// Threads serving clients and peers [default: one per core].
    #[arg(long, env = "SESSMESH_WORKER_THREADS")]
    worker_threads: Option<String>,
}

/// How the node proves who it is to its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PeerTls {
    /// Certificate files made by `sessmesh certs`.
    Files {
        /// The cluster CA's certificate.
        ca: PathBuf,
        /// This node's certificate.
        cert: PathBuf,
        /// This node's key.
        key: PathBuf,
    },
    /// A throwaway CA: a one-node development cluster.
    Development,
}

/// Everything `sessmesh serve` runs with, checked.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// This node's name; `None` takes it from the certificate.
    pub(crate) name: Option<String>,
    /// The cluster's name.
    pub(crate) cluster_name: String,
    /// UDP address for peers.
    pub(crate) peer_listen: SocketAddr,
    /// The address peers dial.
    pub(crate) peer_advertise: Option<SocketAddr>,
    /// The Redis endpoint.
    pub(crate) resp_listen: SocketAddr,
    /// Metrics, health and status.
    pub(crate) http_listen: SocketAddr,
    /// Peers to join through.
    pub(crate) seeds: Vec<SocketAddr>,
    /// Peer TLS.
    pub(crate) peer_tls: PeerTls,
    /// TLS on the Redis endpoint: certificate and key.
    pub(crate) resp_tls: Option<(PathBuf, PathBuf)>,
    /// The password clients must give.
    pub(crate) requirepass: Option<String>,
    /// How many databases `SELECT` may choose from.
    pub(crate) databases: u32,
    /// Data settings.
    pub(crate) config: Config,
    /// Default read level.
    pub(crate) read_level: Level,
    /// Default write level.
    pub(crate) write_level: Level,
    /// Failure detection.
    pub(crate) membership: MembershipConfig,
    /// Most client connections.
    pub(crate) max_clients: usize,
    /// Request size limits.
    pub(crate) limits: Limits,
    /// Runtime threads.
    pub(crate) worker_threads: usize,
}

fn addr(setting: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            setting,
            format!("{value:?} is not an address like 127.0.0.1:6379"),
        )
    })
}

fn number<T: std::str::FromStr>(setting: &str, value: &str) -> Result<T, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            setting,
            format!("{value:?} is not a non-negative whole number"),
        )
    })
}

fn level(setting: &str, value: &str) -> Result<Level, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "one" => Ok(Level::One),
        "quorum" => Ok(Level::Quorum),
        "all" => Ok(Level::All),
        _ => Err(invalid(
            setting,
            format!("{value:?} is not one of one, quorum, all"),
        )),
    }
}

/// The flag value if given, else the file's (as text), else `None`.
fn pick(flag: Option<String>, file: Option<impl ToString>) -> Option<String> {
    flag.or_else(|| file.map(|v| v.to_string()))
}

impl Settings {
    /// Reads the file `overrides.config` names (if any) and applies the overrides.
    ///
    /// # Errors
    /// The first setting that is wrong, or a file that cannot be read or parsed.
    pub(crate) fn load(overrides: Overrides) -> Result<Settings, ConfigError> {
        let file = match &overrides.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid("config", format!("cannot read {}: {e}", path.display()))
                })?;
                toml::from_str(&text)
                    .map_err(|e| invalid("config", format!("{}: {e}", path.display())))?
            }
        };
        Self::resolve(file, overrides)
    }

    /// The settings from a parsed file and the overrides.
    ///
    /// # Errors
    /// The first setting that is wrong.
    pub(crate) fn resolve(file: FileConfig, o: Overrides) -> Result<Settings, ConfigError> {
        let peer_listen = addr(
            "peer_listen",
            &pick(o.peer_listen, file.peer_listen).unwrap_or_else(|| "127.0.0.1:7379".into()),
        )?;
        let peer_advertise = pick(o.peer_advertise, file.peer_advertise)
            .map(|a| addr("peer_advertise", &a))
            .transpose()?;
        if peer_listen.ip().is_unspecified() && peer_advertise.is_none() {
            return Err(invalid(
                "peer_advertise",
                format!(
                    "peer_listen is {peer_listen}, which peers cannot dial: set peer_advertise to this host's address"
                ),
            ));
        }
        let resp_listen = addr(
            "resp_listen",
            &pick(o.resp_listen, file.resp_listen).unwrap_or_else(|| "127.0.0.1:6379".into()),
        )?;
        let http_listen = addr(
            "http_listen",
            &pick(o.http_listen, file.http_listen).unwrap_or_else(|| "127.0.0.1:9379".into()),
        )?;
        let seeds = o
            .seeds
            .or(file.seeds)
            .unwrap_or_default()
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| addr("seeds", s.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let development = o.development.or(file.development).unwrap_or(false);
        let tls_files = (
            o.tls_ca.or(file.tls_ca),
            o.tls_cert.or(file.tls_cert),
            o.tls_key.or(file.tls_key),
        );
        let peer_tls = match (development, tls_files) {
            (true, (None, None, None)) => PeerTls::Development,
            (true, _) => {
                return Err(invalid(
                    "development",
                    "development mode makes its own CA: remove tls_ca, tls_cert and tls_key, or development",
                ));
            }
            (false, (Some(ca), Some(cert), Some(key))) => PeerTls::Files { ca, cert, key },
            (false, (ca, cert, _)) => {
                let missing = if ca.is_none() {
                    "tls_ca"
                } else if cert.is_none() {
                    "tls_cert"
                } else {
                    "tls_key"
                };
                return Err(invalid(
                    missing,
                    "missing: peers authenticate with certificates (make them with `sessmesh certs`), or set development = true for a throwaway one-node setup",
                ));
            }
        };
        let resp_tls = match (
            o.resp_tls_cert.or(file.resp_tls_cert),
            o.resp_tls_key.or(file.resp_tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "resp_tls_key",
                    "missing: resp_tls_cert needs its key",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "resp_tls_cert",
                    "missing: resp_tls_key needs its certificate",
                ));
            }
        };
        let requirepass = o.requirepass.or(file.requirepass);
        if requirepass.as_deref() == Some("") {
            return Err(invalid(
                "requirepass",
                "empty: leave it out to let every client in",
            ));
        }
        let databases = match pick(o.databases, file.databases) {
            None => 16,
            Some(v) => match number::<u32>("databases", &v)? {
                n @ 1..=1024 => n,
                n => {
                    return Err(invalid(
                        "databases",
                        format!("{n} is not between 1 and 1024"),
                    ));
                }
            },
        };
        let mut config = Config::default();
        if let Some(v) = pick(o.partition_count, file.partition_count) {
            config.partition_count = number("partition_count", &v)?;
        }
        if let Some(v) = pick(o.replication_factor, file.replication_factor) {
            config.replication_factor = number("replication_factor", &v)?;
        }
        if let Some(v) = pick(o.request_timeout_ms, file.request_timeout_ms) {
            config.request_timeout_ms = number("request_timeout_ms", &v)?;
        }
        if let Some(v) = pick(o.anti_entropy_period_ms, file.anti_entropy_period_ms) {
            config.anti_entropy_period_ms = number("anti_entropy_period_ms", &v)?;
        }
        if let Some(v) = pick(o.maxmemory, file.maxmemory) {
            config.max_memory_bytes =
                sessmesh_core::parse_bytes(&v).map_err(|why| invalid("maxmemory", why))?;
        }
        if let Some(v) = pick(o.maxmemory_policy, file.maxmemory_policy) {
            config.eviction_policy = v.parse().map_err(|why| invalid("maxmemory_policy", why))?;
        }
        config.validate().map_err(|e| match e {
            sessmesh_core::Error::InvalidConfig { setting, reason } => invalid(setting, reason),
            other => invalid("config", other.to_string()),
        })?;
        let membership = match pick(o.membership, file.membership)
            .unwrap_or_else(|| "lan".into())
            .as_str()
        {
            "lan" => MembershipConfig::lan(16),
            "wan" => MembershipConfig::wan(16),
            "local" => MembershipConfig::local(),
            other => {
                return Err(invalid(
                    "membership",
                    format!("{other:?} is not one of lan, wan, local"),
                ));
            }
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_bulk_bytes: pick(o.max_bulk_bytes, file.max_bulk_bytes)
                .map(|v| number("max_bulk_bytes", &v))
                .transpose()?
                .unwrap_or(defaults.max_bulk_bytes),
            max_array_len: pick(o.max_array_len, file.max_array_len)
                .map(|v| number("max_array_len", &v))
                .transpose()?
                .unwrap_or(defaults.max_array_len),
            max_inline_bytes: defaults.max_inline_bytes,
            max_request_bytes: pick(o.max_request_bytes, file.max_request_bytes)
                .map(|v| number("max_request_bytes", &v))
                .transpose()?
                .unwrap_or(defaults.max_request_bytes),
        };
        if limits.max_request_bytes < limits.max_bulk_bytes {
            return Err(invalid(
                "max_request_bytes",
                format!(
                    "{} is below max_bulk_bytes ({}): no request could carry the largest value",
                    limits.max_request_bytes, limits.max_bulk_bytes
                ),
            ));
        }
        if limits.max_bulk_bytes == 0 {
            return Err(invalid("max_bulk_bytes", "must be at least 1"));
        }
        if limits.max_array_len == 0 {
            return Err(invalid("max_array_len", "must be at least 1"));
        }
        let max_clients: usize = pick(o.max_clients, file.max_clients)
            .map(|v| number("max_clients", &v))
            .transpose()?
            .unwrap_or(10_000);
        if max_clients == 0 {
            return Err(invalid("max_clients", "must be at least 1"));
        }
        let worker_threads: usize = match pick(o.worker_threads, file.worker_threads) {
            Some(v) => number("worker_threads", &v)?,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if worker_threads == 0 {
            return Err(invalid("worker_threads", "must be at least 1"));
        }
        Ok(Settings {
            name: pick(o.name, file.name),
            cluster_name: pick(o.cluster_name, file.cluster_name)
                .unwrap_or_else(|| "sessmesh".into()),
            peer_listen,
            peer_advertise,
            resp_listen,
            http_listen,
            seeds,
            peer_tls,
            resp_tls,
            requirepass,
            databases,
            config,
            read_level: level(
                "read_level",
                &pick(o.read_level, file.read_level).unwrap_or_else(|| "quorum".into()),
            )?,
            write_level: level(
                "write_level",
                &pick(o.write_level, file.write_level).unwrap_or_else(|| "quorum".into()),
            )?,
            membership,
            max_clients,
            limits,
            worker_threads,
        })
    }

    /// How long a graceful shutdown may take.
    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessmesh_core::EvictionPolicy;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("valid TOML")
    }

    fn error(text: &str, overrides: Overrides) -> ConfigError {
        Settings::resolve(file(text), overrides).expect_err("invalid")
    }

    #[test]
    fn each_wrong_setting_is_named() {
        let dev = "development = true\n";
        for databases in ["0", "1025"] {
            assert_eq!(
                error(
                    &format!("{dev}databases = {databases}"),
                    Overrides::default()
                )
                .setting,
                "databases"
            );
        }
        assert_eq!(
            error(
                &format!("{dev}resp_listen = \"nope\""),
                Overrides::default()
            )
            .setting,
            "resp_listen"
        );
        assert_eq!(
            error(&format!("{dev}partition_count = 100"), Overrides::default()).setting,
            "partition_count"
        );
        assert_eq!(
            error(&format!("{dev}read_level = \"most\""), Overrides::default()).setting,
            "read_level"
        );
        assert_eq!(
            error(&format!("{dev}membership = \"mars\""), Overrides::default()).setting,
            "membership"
        );
        assert_eq!(
            error(&format!("{dev}seeds = [\"x\"]"), Overrides::default()).setting,
            "seeds"
        );
        assert_eq!(error("", Overrides::default()).setting, "tls_ca");
        assert_eq!(
            error("tls_ca = \"a\"\ntls_cert = \"b\"", Overrides::default()).setting,
            "tls_key"
        );
        assert_eq!(
            error(
                &format!("{dev}peer_listen = \"0.0.0.0:7379\""),
                Overrides::default()
            )
            .setting,
            "peer_advertise"
        );
        assert!(
            toml::from_str::<FileConfig>("resp_listn = \"x\"").is_err(),
            "typos are refused"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let overrides = Overrides {
            resp_listen: Some("127.0.0.1:7000".into()),
            partition_count: Some("64".into()),
            ..Overrides::default()
        };
        let settings = Settings::resolve(
            file("development = true\nresp_listen = \"127.0.0.1:6000\"\nreplication_factor = 2"),
            overrides,
        )
        .expect("valid");
        assert_eq!(settings.resp_listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(settings.config.partition_count, 64);
        assert_eq!(settings.config.replication_factor, 2);
        assert_eq!(settings.peer_tls, PeerTls::Development);
    }

    #[test]
    fn maxmemory_reads_redis_units_and_policies() {
        let resolve = |text: &str| Settings::resolve(file(text), Overrides::default());
        let settings = resolve("development = true\nmaxmemory = \"64mb\"").expect("valid");
        assert_eq!(settings.config.max_memory_bytes, 64 << 20);
        let settings = resolve("development = true\nmaxmemory = 1000").expect("valid");
        assert_eq!(settings.config.max_memory_bytes, 1000);
        let settings = resolve("development = true").expect("valid");
        assert_eq!(settings.config.max_memory_bytes, 0, "none by default");
        let wrong = resolve("development = true\nmaxmemory = \"64 parsecs\"").unwrap_err();
        assert_eq!(wrong.setting, "maxmemory");
        assert!(wrong.reason.contains("kb, m, mb"), "{}", wrong.reason);
        let wrong = resolve("development = true\nmaxmemory_policy = \"lru\"").unwrap_err();
        assert_eq!(wrong.setting, "maxmemory_policy");
        let settings =
            resolve("development = true\nmaxmemory_policy = \"allkeys-lru\"").expect("valid");
        assert_eq!(settings.config.eviction_policy, EvictionPolicy::AllKeysLru);
        let overrides = Overrides {
            maxmemory: Some("2gb".into()),
            ..Overrides::default()
        };
        let settings =
            Settings::resolve(file("development = true\nmaxmemory = 5"), overrides).expect("valid");
        assert_eq!(settings.config.max_memory_bytes, 2 << 30);
    }
}
