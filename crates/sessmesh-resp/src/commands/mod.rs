//! The command set: each Redis command as calls on a sessmesh peer.
//!
//! A string is a session with one field whose name is empty; a hash is a
//! session's fields. Any node serves any key: the node coordinates the call
//! with the key's replicas at the configured levels.
//!
//! Layout: `table.rs` names every command (arity, whether it only reads)
//! and looks a request's name up once; this file dispatches and holds what
//! the families share (reads of a key, writes handed over together, error
//! replies); each family has a file: `strings.rs`, `keys.rs` (and expiry),
//! `hashes.rs`, `connection.rs`, `server.rs`. A new command is a row in the
//! table, a line in the dispatch and a method in its family's file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::join_all;
use sessmesh::{Error, Expiry, Level, Node, SessionData, Submitted, Write};

use crate::glob;
use crate::reply::{Protocol, Reply};

mod connection;
mod hashes;
mod keys;
mod server;
mod strings;
mod table;

pub use table::Command;
use table::{check_arity, unknown};

/// The field a string value is stored under.
const STRING_FIELD: &[u8] = b"";
/// The Redis version reported to clients, for the features they probe.
pub const REDIS_VERSION: &str = "7.2.0";

/// Settings of the command set.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The password `AUTH` and `HELLO ... AUTH` check; `None` lets every
    /// connection in.
    pub requirepass: Option<String>,
}

/// What every connection of one node shares.
#[derive(Debug)]
pub struct Handler {
    node: Node,
    settings: Settings,
    next_client: AtomicU64,
}

/// One connection's state.
#[derive(Debug)]
pub struct Client {
    id: u64,
    /// The protocol replies use.
    pub protocol: Protocol,
    authenticated: bool,
    name: Option<Bytes>,
}

impl Client {
    /// The connection's id, as `CLIENT ID` reports it.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Whether the connection goes on after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Send the reply, then close (`QUIT`).
    Close,
}

fn err(text: &str) -> Reply {
    Reply::Error(text.to_owned())
}

fn wrong_type() -> Reply {
    err("WRONGTYPE Operation against a key holding the wrong kind of value")
}

fn not_integer() -> Reply {
    err("ERR value is not an integer or out of range")
}

fn syntax() -> Reply {
    err("ERR syntax error")
}

fn arity(name: &str) -> Reply {
    Reply::Error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// A peer error as a Redis error reply.
fn failed(error: &Error) -> Reply {
    match error {
        Error::TooFewAcks { .. } => Reply::Error(format!("NOREPLICAS {error}")),
        Error::TooFewAnswers { .. } => Reply::Error(format!("TRYAGAIN {error}")),
        Error::ClockAhead {
            ahead_ms,
            max_drift_ms,
        } => Reply::Error(format!(
            "CLOCKDRIFT this node's clock runs {ahead_ms} ms ahead of its peers, over max_clock_drift_ms = {max_drift_ms}; it takes no writes until the clock is corrected"
        )),
        other => Reply::Error(format!("ERR {other}")),
    }
}

fn int(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn at_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn eq(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// What a session holds, in Redis's terms.
enum Value {
    String {
        value: Bytes,
        deadline_ms: Option<u64>,
    },
    Hash(SessionData),
}

fn value_of(data: SessionData) -> Value {
    let string = {
        let mut fields = data.fields();
        match (fields.next(), fields.next()) {
            (Some((name, value)), None) if name == STRING_FIELD => {
                Some(Bytes::copy_from_slice(value))
            }
            _ => None,
        }
    };
    match string {
        Some(value) => Value::String {
            value,
            deadline_ms: data.deadline_ms(),
        },
        None => Value::Hash(data),
    }
}

/// A deadline to set, from `EX`/`PX`/`EXAT`/`PXAT` and their argument.
fn deadline(option: &[u8], arg: &[u8], command: &str) -> Result<i64, Reply> {
    let n = int(arg).ok_or_else(not_integer)?;
    let invalid = || Reply::Error(format!("ERR invalid expire time in '{command}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let at = if eq(option, "EX") {
        n.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms()))
    } else if eq(option, "PX") {
        n.checked_add(now_ms())
    } else if eq(option, "EXAT") {
        n.checked_mul(1000)
    } else {
        Some(n)
    };
    at.ok_or_else(invalid)
}

impl Handler {
    /// A command set served by `node`.
    pub fn new(node: Node, settings: Settings) -> Self {
        Handler {
            node,
            settings,
            next_client: AtomicU64::new(1),
        }
    }

    /// The node the commands run on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// State for a new connection.
    pub fn client(&self) -> Client {
        Client {
            id: self.next_client.fetch_add(1, Ordering::Relaxed),
            protocol: Protocol::Resp2,
            authenticated: self.settings.requirepass.is_none(),
            name: None,
        }
    }

    /// A plain `SET key value` (no options) from an authenticated client,
    /// handed to the peer without waiting for it to be acknowledged, so a
    /// pipeline of them costs one round trip, not one each. `None` for any
    /// other command, which [`execute`](Self::execute) runs.
    pub async fn submit_set(
        &self,
        client: &Client,
        command: Command,
        args: &[Bytes],
    ) -> Option<Result<Submitted, Reply>> {
        if args.len() != 3 || !client.authenticated || command.name() != "SET" {
            return None;
        }
        let write = Write::Put {
            fields: vec![(Bytes::from_static(STRING_FIELD), args[2].clone())],
            expiry: Expiry::NEVER,
        };
        let submitted = self
            .node
            .submit(args[1].clone(), write, self.node.write_level())
            .await;
        Some(submitted.map_err(|e| failed(&e)))
    }

    /// The reply to a submitted `SET`, once it is acknowledged.
    pub async fn finish_set(submitted: Submitted) -> Reply {
        match submitted.outcome().await {
            Ok(()) => Reply::Ok,
            Err(e) => failed(&e),
        }
    }

    /// Runs one request for `client`: `args` is the whole request, its
    /// name first, and `command` what [`Command::lookup`] found for that
    /// name. Returns the reply and whether the connection goes on.
    pub async fn execute(
        &self,
        client: &mut Client,
        command: Option<Command>,
        args: &[Bytes],
    ) -> (Reply, Flow) {
        match command {
            Some(command) => self.execute_known(client, command, args).await,
            None => (unknown(args), Flow::Continue),
        }
    }

    /// Whether `command` only reads data (`GET`, `HGETALL`, `TTL`...) and
    /// `client` may run it: such requests next to each other in a pipeline
    /// may run at the same time ([`execute_read`](Self::execute_read)),
    /// their replies still in order.
    pub fn reads_only(&self, client: &Client, command: Command) -> bool {
        client.authenticated && command.reads_only()
    }

    /// Runs a request whose command [`reads_only`](Self::reads_only)
    /// accepted.
    pub async fn execute_read(&self, command: Command, args: &[Bytes]) -> Reply {
        if let Some(wrong) = check_arity(command, args) {
            return wrong;
        }
        self.data_command(command.name(), args).await
    }

    async fn execute_known(
        &self,
        client: &mut Client,
        command: Command,
        args: &[Bytes],
    ) -> (Reply, Flow) {
        if let Some(wrong) = check_arity(command, args) {
            return (wrong, Flow::Continue);
        }
        let name = command.name();
        if !client.authenticated && !matches!(name, "AUTH" | "HELLO" | "QUIT") {
            return (err("NOAUTH Authentication required."), Flow::Continue);
        }
        let reply = match name {
            "QUIT" => return (Reply::Ok, Flow::Close),
            "AUTH" => self.auth(client, &args[1..]),
            "HELLO" => self.hello(client, &args[1..]),
            "PING" => match args.len() {
                1 => Reply::Simple("PONG"),
                2 => Reply::Bulk(args[1].clone()),
                _ => arity(name),
            },
            "ECHO" => Reply::Bulk(args[1].clone()),
            "SELECT" => match int(&args[1]) {
                Some(0) => Reply::Ok,
                Some(_) => err("ERR DB index is out of range"),
                None => not_integer(),
            },
            "CLIENT" => Self::client_command(client, &args[1..]),
            "COMMAND" => Self::command_command(&args[1..]),
            "CONFIG" => Self::config(&args[1..]),
            "INFO" => self.info(),
            "DBSIZE" => Reply::Int(i64::try_from(self.local_keys().len()).unwrap_or(i64::MAX)),
            other => self.data_command(other, args).await,
        };
        (reply, Flow::Continue)
    }

    async fn data_command(&self, name: &str, args: &[Bytes]) -> Reply {
        let result = match name {
            "GET" => self.get(&args[1]).await,
            "SET" => self.set(&args[1], &args[2], &args[3..]).await,
            "SETEX" | "PSETEX" => {
                let unit = if name == "SETEX" { "EX" } else { "PX" };
                let options = [Bytes::from_static(unit.as_bytes()), args[2].clone()];
                self.set_with(&args[1], &args[3], &options, &name.to_ascii_lowercase())
                    .await
            }
            "GETDEL" => self.getdel(&args[1]).await,
            "GETEX" => self.getex(&args[1], &args[2..]).await,
            "MGET" => self.mget(&args[1..]).await,
            "MSET" => self.mset(&args[1..]).await,
            "DEL" | "UNLINK" => self.del(&args[1..]).await,
            "EXISTS" => self.exists(&args[1..]).await,
            "TYPE" => self.type_of(&args[1]).await,
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
                self.expire(name, &args[1], &args[2], &args[3..]).await
            }
            "TTL" | "PTTL" => self.ttl(&args[1], name == "PTTL").await,
            "PERSIST" => self.persist(&args[1]).await,
            "HSET" | "HMSET" => self.hset(name, &args[1], &args[2..]).await,
            "HSETNX" => self.hsetnx(&args[1], &args[2], &args[3]).await,
            "HGET" => self.hget(&args[1], &args[2]).await,
            "HMGET" => self.hmget(&args[1], &args[2..]).await,
            "HGETALL" | "HKEYS" | "HVALS" | "HLEN" => self.hread(name, &args[1]).await,
            "HDEL" => self.hdel(&args[1], &args[2..]).await,
            "HEXISTS" => self.hexists(&args[1], &args[2]).await,
            "HINCRBY" => self.hincrby(&args[1], &args[2], &args[3]).await,
            "SCAN" => Ok(self.scan(&args[1..])),
            _ => Ok(unknown(args)),
        };
        result.unwrap_or_else(|reply| reply)
    }

    async fn read(&self, key: &Bytes) -> Result<Option<Value>, Reply> {
        let data = self.node.get(key.clone()).await.map_err(|e| failed(&e))?;
        Ok(data.map(value_of))
    }

    /// What one replica holds of a hash, for a write that reads only to
    /// count what it changes (`HSET`, `HDEL`): the nearest copy (this
    /// node's own when it is a replica), and nothing when no replica
    /// answers, so the write goes ahead whatever the read does. Only a
    /// string under the key refuses the write.
    async fn glance_hash(&self, key: &Bytes) -> Result<Option<SessionData>, Reply> {
        match self.node.at(Level::One).get(key.clone()).await {
            Ok(data) => match data.map(value_of) {
                None => Ok(None),
                Some(Value::Hash(data)) => Ok(Some(data)),
                Some(Value::String { .. }) => Err(wrong_type()),
            },
            Err(Error::TooFewAnswers { .. }) => Ok(None),
            Err(e) => Err(failed(&e)),
        }
    }

    async fn read_hash(&self, key: &Bytes) -> Result<Option<SessionData>, Reply> {
        match self.read(key).await? {
            None => Ok(None),
            Some(Value::Hash(data)) => Ok(Some(data)),
            Some(Value::String { .. }) => Err(wrong_type()),
        }
    }

    /// Reads every key at the same time.
    async fn read_all(&self, keys: &[Bytes]) -> Result<Vec<Option<Value>>, Reply> {
        join_all(keys.iter().map(|key| self.read(key)))
            .await
            .into_iter()
            .collect()
    }

    /// Hands `writes` to the peer in order (a key or field named twice ends
    /// with its last value), then waits for them together. One that fails
    /// does not stop the others (and is kept all the same); the first
    /// failure is the reply.
    async fn write_all(&self, writes: impl Iterator<Item = (Bytes, Write)>) -> Result<(), Reply> {
        let level = self.node.write_level();
        let mut submitted = Vec::new();
        for (key, write) in writes {
            submitted.push(
                self.node
                    .submit(key, write, level)
                    .await
                    .map_err(|e| failed(&e))?,
            );
        }
        let mut first_failure = None;
        for outcome in join_all(submitted.into_iter().map(Submitted::outcome)).await {
            if let Err(e) = outcome {
                first_failure.get_or_insert(failed(&e));
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}
