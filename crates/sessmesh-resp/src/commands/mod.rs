//! The command set: each Redis command as calls on a sessmesh peer.
//!
//! A string is a session with one field whose name is empty; a hash is a
//! session's fields. Any node serves any key: the node coordinates the call
//! with the key's replicas at the configured levels.
//!
//! # Layout
//!
//! A request goes through three steps, each once:
//!
//! 1. **Lookup**, in `table.rs`: the request's name is found in the table,
//!    which gives the [`Command`]'s arity, whether it only reads, and its
//!    family.
//! 2. **Parse**, in the family's file: once the arity (and, before `AUTH`,
//!    the connection's right to run it) is checked, the family turns the
//!    arguments into its typed command: keys as `Bytes`, integers parsed,
//!    options such as `NX`, `GET` or `EX` as enums, deadlines in Unix
//!    milliseconds. Every error the arguments alone earn (`ERR syntax
//!    error`, `ERR value is not an integer or out of range`, ...) is given
//!    here, before anything is read or written; only `HELLO` keeps a bad
//!    option's error until the options before it (an `AUTH`) have run.
//! 3. **Run**: one match on the parsed command (a `Call`, in this file)
//!    hands it to its family, which runs it on the peer.
//!
//! A pipelined plain `SET key value` skips the last two steps: the table
//! names it, and [`Handler::submit_set`] hands it to the peer at once.
//!
//! The families, each owning the parsing and the running of its commands:
//! `connection.rs` (`AUTH`, `HELLO`, `CLIENT`, `PING`...), `strings.rs`,
//! `ranges.rs` (`APPEND`, `GETRANGE`...), `keys.rs` (and expiry),
//! `keyspace.rs` (`SCAN`, `KEYS`, `RANDOMKEY`, `DBSIZE` over the whole
//! cluster), `moves.rs` (`RENAME`, `COPY`), `hashes.rs`, `sets.rs`, `locks.rs`,
//! `transactions.rs` (`MULTI`, `EXEC`, `WATCH`...), `scripts.rs` (`EVAL`,
//! `SCRIPT`..., with the interpreter in `lua.rs` and the commands a script
//! calls in `script_calls.rs`), and `server.rs` (`COMMAND`, `CONFIG`,
//! `INFO`, `DBSIZE`). `deadlines.rs` reads deadlines (`EX`, `EXPIRE`...). Beside them: `values.rs` (what
//! a session holds, in Redis's types), `databases.rs` (`SELECT`'s
//! keyspaces and each command's key spec) and `atomic.rs` (the consensus
//! operations' shared parts). This file holds what they share: the
//! handler and a connection's state, the dispatch, reads of a key, writes
//! handed over together, and the error replies.
//!
//! To add a command: a row in the table naming its family and its `Op` in
//! that family; then, in the family's file, the `Op`, the typed command, and
//! an arm in the family's `parse` and in its `run`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::join_all;
use sessmesh::{Error, Expiry, Level, Node, SessionData, Submitted, Write};

use crate::glob;
use crate::reply::{Protocol, Reply};

mod atomic;
mod connection;
mod databases;
mod deadlines;
mod hashes;
mod key_state;
mod keys;
mod keyspace;
mod locks;
mod lua;
mod monitor;
mod moves;
mod ranges;
mod script_calls;
mod scripts;
mod server;
mod sets;
mod strings;
mod table;
mod transactions;
mod values;

use connection::ConnectionCommand;
use deadlines::{DeadlineUnit, deadline, invalid_expire};
use hashes::HashCommand;
use keys::KeyCommand;
use locks::LockCommand;
pub use monitor::BACKLOG as MONITOR_BACKLOG;
use moves::Move;
use ranges::RangeCommand;
use scripts::ScriptCommand;
use server::ServerCommand;
use sets::SetCommand;
use strings::StringCommand;
pub use table::Command;
use table::{Family, check_arity, unknown};
use transactions::{Transaction, TransactionCommand};
use values::{SET_PREFIX, STRING_FIELD, Value, member_field, members_of, value_of};

/// The Redis version reported to clients, for the features they probe.
pub const REDIS_VERSION: &str = "7.2.0";

/// Settings of the command set.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The password `AUTH` and `HELLO ... AUTH` check; `None` lets every
    /// connection in.
    pub requirepass: Option<String>,
    /// How many databases `SELECT` may choose from (`databases`): 16, as
    /// in Redis.
    pub databases: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            requirepass: None,
            databases: 16,
        }
    }
}

/// What every connection of one node shares.
#[derive(Debug)]
pub struct Handler {
    node: Node,
    settings: Settings,
    next_client: AtomicU64,
    /// `notify-keyspace-events`, as `CONFIG SET` left it on this node.
    notify_keyspace_events: std::sync::Mutex<String>,
    /// The scripts this node has seen, and `lua-time-limit`.
    scripts: scripts::Scripts,
    /// Tags for the adds of set members.
    tags: values::Tags,
    /// The connections that sent `MONITOR`.
    monitors: monitor::Monitors,
}

/// One connection's state.
#[derive(Debug)]
pub struct Client {
    id: u64,
    /// The protocol replies use.
    pub protocol: Protocol,
    authenticated: bool,
    name: Option<Bytes>,
    transaction: Transaction,
    /// The database `SELECT` chose.
    db: u32,
    /// Where the connection comes from, if known (`MONITOR` prints it).
    peer: Option<SocketAddr>,
}

impl Client {
    /// The connection's id, as `CLIENT ID` reports it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The database `SELECT` chose.
    pub fn db(&self) -> u32 {
        self.db
    }
}

/// Whether the connection goes on after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Send the reply, then close (`QUIT`).
    Close,
    /// Send the reply, then the lines of the commands the node's
    /// connections send (`MONITOR`; see [`Handler::monitor`]).
    Monitor,
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
        Error::OutOfMemory { .. } => err("OOM command not allowed when used memory > 'maxmemory'."),
        Error::ClockAhead {
            ahead_ms,
            max_drift_ms,
        } => Reply::Error(format!(
            "CLOCKDRIFT this node's clock runs {ahead_ms} ms ahead of its peers, over max_clock_drift_ms = {max_drift_ms}; it takes no writes until the clock is corrected"
        )),
        other => Reply::Error(format!("ERR {other}")),
    }
}

/// A Redis float argument: a finite number, no spaces.
fn float(arg: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.is_empty() || text.trim() != text {
        return None;
    }
    text.parse::<f64>().ok().filter(|f| f.is_finite())
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

/// A request parsed: a known command, its arguments typed by its family.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    Connection(ConnectionCommand),
    Strings(StringCommand),
    Keys(KeyCommand),
    Hashes(HashCommand),
    Locks(LockCommand),
    Moves(Move),
    Ranges(RangeCommand),
    Scripts(ScriptCommand),
    Sets(SetCommand),
    Server(ServerCommand),
    Transactions(TransactionCommand),
}

impl Call {
    /// The one parse step: `args` is the whole request, its name first, its
    /// number of arguments already checked against `command`'s arity.
    /// Relative deadlines (`EX`, `EXPIRE`...) count from `now_ms`.
    /// `db` is the client's database, for the commands that list or count
    /// its keys.
    fn parse(command: Command, args: &[Bytes], now_ms: i64, db: u32) -> Result<Call, Reply> {
        debug_assert!(check_arity(command, args).is_ok());
        let args = &args[1..];
        match command.family() {
            Family::Connection(op) => ConnectionCommand::parse(op, args).map(Call::Connection),
            Family::Strings(op) => StringCommand::parse(op, args, now_ms).map(Call::Strings),
            Family::Keys(op) => KeyCommand::parse(op, args, now_ms, db).map(Call::Keys),
            Family::Hashes(op) => HashCommand::parse(op, args).map(Call::Hashes),
            Family::Locks(op) => LockCommand::parse(op, args).map(Call::Locks),
            Family::Moves(op) => Move::parse(op, args).map(Call::Moves),
            Family::Sets(op) => SetCommand::parse(op, args).map(Call::Sets),
            Family::Scripts(op) => ScriptCommand::parse(op, args, db).map(Call::Scripts),
            Family::Ranges(op) => RangeCommand::parse(op, args).map(Call::Ranges),
            Family::Transactions(op) => Ok(Call::Transactions(TransactionCommand::parse(op, args))),
            Family::Server(op) => ServerCommand::parse(op, args, db).map(Call::Server),
        }
    }
}

impl Handler {
    /// A command set served by `node`.
    pub fn new(node: Node, settings: Settings) -> Self {
        let tags = values::Tags::new(&node.me().name);
        Handler {
            tags,
            node,
            settings,
            next_client: AtomicU64::new(1),
            notify_keyspace_events: std::sync::Mutex::new(String::new()),
            scripts: scripts::Scripts::default(),
            monitors: monitor::Monitors::default(),
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
            transaction: Transaction::default(),
            db: 0,
            peer: None,
        }
    }

    /// State for a new connection from `peer`.
    pub fn client_at(&self, peer: SocketAddr) -> Client {
        Client {
            peer: Some(peer),
            ..self.client()
        }
    }

    /// The lines of the commands this node's connections send from now on,
    /// as `MONITOR` prints them (each a simple-string reply, CR LF
    /// included). A receiver more than [`MONITOR_BACKLOG`] lines behind
    /// skips the lines it missed.
    pub fn monitor(&self) -> tokio::sync::broadcast::Receiver<Bytes> {
        self.monitors.watch()
    }

    /// Shows a command `client` sent to the connections that monitor.
    pub fn feed_monitors(&self, client: &Client, args: &[Bytes]) {
        self.monitors.feed(client, args);
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
        let set = Family::Strings(strings::Op::Set);
        if args.len() != 3
            || !client.authenticated
            || command.family() != set
            || client.transaction.queuing()
        {
            return None;
        }
        let args = match databases::in_database(client.db, command, args) {
            Ok(args) => args,
            Err(reply) => return Some(Err(reply)),
        };
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
        let Some(command) = command else {
            if client.transaction.queuing() {
                return (
                    client.transaction.queue(Err(unknown(args)), None),
                    Flow::Continue,
                );
            }
            return (unknown(args), Flow::Continue);
        };
        let mut keys = None;
        let call = databases::in_database(client.db, command, args).and_then(|args| {
            keys = databases::keys_of(command, &args);
            check_arity(command, &args)
                .and_then(|()| client.may_run(command))
                .and_then(|()| Call::parse(command, &args, now_ms(), client.db))
        });
        if client.transaction.queues(command) {
            // As Redis: MONITOR cannot wait for EXEC, and aborts it.
            let call = match call {
                Ok(Call::Connection(ConnectionCommand::Monitor)) => {
                    Err(err("ERR Command not allowed inside a transaction"))
                }
                call => call,
            };
            return (client.transaction.queue(call, keys), Flow::Continue);
        }
        match call {
            Ok(call) => self.run(Some(client), call).await,
            Err(reply) => (reply, Flow::Continue),
        }
    }

    /// Whether `command` only reads data (`GET`, `HGETALL`, `TTL`...) and
    /// `client` may run it: such requests next to each other in a pipeline
    /// may run at the same time ([`execute_read`](Self::execute_read)),
    /// their replies still in order.
    pub fn reads_only(&self, client: &Client, command: Command) -> bool {
        client.authenticated && command.reads_only() && !client.transaction.queuing()
    }

    /// Runs a request whose command [`reads_only`](Self::reads_only)
    /// accepted, for a client in database `db`.
    pub async fn execute_read(&self, db: u32, command: Command, args: &[Bytes]) -> Reply {
        debug_assert!(command.reads_only());
        let call = databases::in_database(db, command, args).and_then(|args| {
            check_arity(command, &args).and_then(|()| Call::parse(command, &args, now_ms(), db))
        });
        match call {
            Ok(call) => self.run(None, call).await.0,
            Err(reply) => reply,
        }
    }

    /// The one dispatch: runs a parsed command in its family. `client` is
    /// `None` for a read run beside others, which needs no connection.
    async fn run(&self, client: Option<&mut Client>, call: Call) -> (Reply, Flow) {
        match (call, client) {
            (Call::Transactions(command), Some(client)) => {
                (command.run(self, client).await, Flow::Continue)
            }
            (call, client) => self.run_data(client, call).await,
        }
    }

    /// Runs a command of any family but the transaction's own (which
    /// `EXEC` runs the queued commands through).
    async fn run_data(&self, client: Option<&mut Client>, call: Call) -> (Reply, Flow) {
        let reply = match call {
            Call::Connection(command) => match client {
                Some(client) => return command.run(self, client),
                // Only reads run without their connection, and the table
                // makes sure no connection command only reads.
                None => err("ERR this command needs its connection"),
            },
            Call::Strings(command) => command.run(self).await,
            Call::Keys(command) => command.run(self).await,
            Call::Hashes(command) => command.run(self).await,
            Call::Locks(command) => command.run(self).await,
            Call::Ranges(command) => command.run(self).await,
            Call::Moves(command) => command.run(self).await,
            Call::Sets(command) => command.run(self).await,
            Call::Scripts(command) => Box::pin(command.run(self)).await,
            Call::Server(command) => command.run(self).await,
            Call::Transactions(_) => err("ERR a transaction command cannot run here"),
        };
        (reply, Flow::Continue)
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
        match self.glance(key).await? {
            None => Ok(None),
            Some(Value::Hash(data)) => Ok(Some(data)),
            Some(Value::String { .. } | Value::Set(_)) => Err(wrong_type()),
        }
    }

    /// What the nearest replica holds of `key`, nothing when none answers.
    async fn glance(&self, key: &Bytes) -> Result<Option<Value>, Reply> {
        match self.node.at(Level::One).get(key.clone()).await {
            Ok(data) => Ok(data.map(value_of)),
            Err(Error::TooFewAnswers { .. }) => Ok(None),
            Err(e) => Err(failed(&e)),
        }
    }

    async fn read_hash(&self, key: &Bytes) -> Result<Option<SessionData>, Reply> {
        match self.read(key).await? {
            None => Ok(None),
            Some(Value::Hash(data)) => Ok(Some(data)),
            Some(Value::String { .. } | Value::Set(_)) => Err(wrong_type()),
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

#[cfg(test)]
mod tests;
