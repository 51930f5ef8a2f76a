//! The command set: each Redis command as calls on a sessmesh peer.
//!
//! A string is a session with one field whose name is empty; a hash is a
//! session's fields. Any node serves any key: the node coordinates the call
//! with the key's replicas at the configured levels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::join_all;
use sessmesh::{Error, Expiry, Level, Node, SessionData, Submitted, Write};

use crate::glob;
use crate::reply::{Protocol, Reply};

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

/// Every command this node knows, sorted by name: its name, arity (negative:
/// at least) and whether it only reads data (`GET`, `HGETALL`, `TTL`...).
const COMMANDS: &[(&str, i32, bool)] = &[
    ("AUTH", -2, false),
    ("CLIENT", -2, false),
    ("COMMAND", -1, false),
    ("CONFIG", -2, false),
    ("DBSIZE", 1, false),
    ("DEL", -2, false),
    ("ECHO", 2, false),
    ("EXISTS", -2, true),
    ("EXPIRE", -3, false),
    ("EXPIREAT", -3, false),
    ("GET", 2, true),
    ("GETDEL", 2, false),
    ("GETEX", -2, false),
    ("HDEL", -3, false),
    ("HELLO", -1, false),
    ("HEXISTS", 3, true),
    ("HGET", 3, true),
    ("HGETALL", 2, true),
    ("HINCRBY", 4, false),
    ("HKEYS", 2, true),
    ("HLEN", 2, true),
    ("HMGET", -3, true),
    ("HMSET", -4, false),
    ("HSET", -4, false),
    ("HSETNX", 4, false),
    ("HVALS", 2, true),
    ("INFO", -1, false),
    ("MGET", -2, true),
    ("MSET", -3, false),
    ("PERSIST", 2, false),
    ("PEXPIRE", -3, false),
    ("PEXPIREAT", -3, false),
    ("PING", -1, false),
    ("PSETEX", 4, false),
    ("PTTL", 2, true),
    ("QUIT", -1, false),
    ("SCAN", -2, false),
    ("SELECT", 2, false),
    ("SET", -3, false),
    ("SETEX", 4, false),
    ("TTL", 2, true),
    ("TYPE", 2, true),
    ("UNLINK", -2, false),
];

/// The longest command name [`Command::lookup`] can find.
const MAX_NAME: usize = 15;

/// A command name packed into one number that sorts as the name does: the
/// name's upper-cased bytes, zero-padded, then its length.
const fn pack(name: &[u8]) -> Option<u128> {
    if name.len() > MAX_NAME {
        return None;
    }
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < name.len() {
        bytes[i] = name[i].to_ascii_uppercase();
        i += 1;
    }
    #[expect(clippy::cast_possible_truncation, reason = "at most MAX_NAME")]
    {
        bytes[MAX_NAME] = name.len() as u8;
    }
    Some(u128::from_be_bytes(bytes))
}

/// [`COMMANDS`]' names, packed, in the same order.
const PACKED: [u128; COMMANDS.len()] = {
    let mut packed = [0; COMMANDS.len()];
    let mut i = 0;
    while i < COMMANDS.len() {
        packed[i] = match pack(COMMANDS[i].0.as_bytes()) {
            Some(p) => p,
            None => panic!("a command name is too long"),
        };
        i += 1;
    }
    packed
};

/// A command this node knows. A request's name is looked up once
/// ([`Command::lookup`]) and the command handed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Command(u8);

impl Command {
    /// The command named `name`, in any case; `None` for a command this
    /// node does not know.
    pub fn lookup(name: &[u8]) -> Option<Command> {
        let packed = pack(name)?;
        let i = PACKED.binary_search(&packed).ok()?;
        Some(Command(u8::try_from(i).ok()?))
    }

    /// Every command, in name order.
    pub fn all() -> impl Iterator<Item = Command> {
        (0..COMMANDS.len()).filter_map(|i| u8::try_from(i).ok().map(Command))
    }

    /// The canonical (upper-case) name.
    pub fn name(self) -> &'static str {
        COMMANDS[self.index()].0
    }

    /// The command's place in [`all`](Self::all), from 0: for tables
    /// indexed by command.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    fn arity(self) -> i32 {
        COMMANDS[self.index()].1
    }

    fn reads_only(self) -> bool {
        COMMANDS[self.index()].2
    }
}

/// The error for a wrong number of arguments, if it is wrong.
fn check_arity(command: Command, args: &[Bytes]) -> Option<Reply> {
    let n = i32::try_from(args.len()).unwrap_or(i32::MAX);
    let rule = command.arity();
    ((rule > 0 && n != rule) || (rule < 0 && n < -rule)).then(|| arity(command.name()))
}

fn unknown(args: &[Bytes]) -> Reply {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0])
    );
    for arg in args.iter().skip(1).take(20) {
        text.push_str(&format!("'{}' ", String::from_utf8_lossy(arg)));
    }
    Reply::Error(text)
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

    async fn get(&self, key: &Bytes) -> Result<Reply, Reply> {
        match self.read(key).await? {
            None => Ok(Reply::Nil),
            Some(Value::String { value: v, .. }) => Ok(Reply::Bulk(v)),
            Some(Value::Hash(_)) => Err(wrong_type()),
        }
    }

    async fn set(&self, key: &Bytes, value: &Bytes, options: &[Bytes]) -> Result<Reply, Reply> {
        self.set_with(key, value, options, "set").await
    }

    async fn set_with(
        &self,
        key: &Bytes,
        value: &Bytes,
        options: &[Bytes],
        command: &str,
    ) -> Result<Reply, Reply> {
        let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
        let mut expires: Option<i64> = None;
        let mut i = 0;
        while i < options.len() {
            let o = &options[i];
            if eq(o, "NX") && !xx {
                nx = true;
            } else if eq(o, "XX") && !nx {
                xx = true;
            } else if eq(o, "GET") {
                get = true;
            } else if eq(o, "KEEPTTL") && expires.is_none() {
                keep_ttl = true;
            } else if ["EX", "PX", "EXAT", "PXAT"].iter().any(|w| eq(o, w))
                && expires.is_none()
                && !keep_ttl
                && i + 1 < options.len()
            {
                expires = Some(deadline(o, &options[i + 1], command)?);
                i += 1;
            } else {
                return Err(syntax());
            }
            i += 1;
        }
        let old = if nx || xx || get || keep_ttl {
            self.read(key).await?
        } else {
            None
        };
        let (old_value, old_deadline) = match &old {
            Some(Value::String { value, deadline_ms }) => (Some(value.clone()), *deadline_ms),
            Some(Value::Hash(_)) if get => return Err(wrong_type()),
            Some(Value::Hash(data)) => (None, data.deadline_ms()),
            None => (None, None),
        };
        let old_reply = || old_value.clone().map_or(Reply::Nil, Reply::Bulk);
        if (nx && old.is_some()) || (xx && old.is_none()) {
            return Ok(if get { old_reply() } else { Reply::Nil });
        }
        let expiry = match expires {
            Some(at) => Expiry::at_ms(u64::try_from(at).unwrap_or(0)),
            None if keep_ttl => old_deadline.map_or(Expiry::NEVER, Expiry::at_ms),
            None => Expiry::NEVER,
        };
        self.node
            .put(
                key.clone(),
                [(Bytes::from_static(STRING_FIELD), value.clone())],
                expiry,
            )
            .await
            .map_err(|e| failed(&e))?;
        Ok(if get { old_reply() } else { Reply::Ok })
    }

    async fn getdel(&self, key: &Bytes) -> Result<Reply, Reply> {
        match self.read(key).await? {
            None => Ok(Reply::Nil),
            Some(Value::Hash(_)) => Err(wrong_type()),
            Some(Value::String { value: v, .. }) => {
                self.node
                    .delete(key.clone())
                    .await
                    .map_err(|e| failed(&e))?;
                Ok(Reply::Bulk(v))
            }
        }
    }

    async fn getex(&self, key: &Bytes, options: &[Bytes]) -> Result<Reply, Reply> {
        let change = match options {
            [] => None,
            [o] if eq(o, "PERSIST") => Some(None),
            [o, arg] if ["EX", "PX", "EXAT", "PXAT"].iter().any(|w| eq(o, w)) => {
                Some(Some(deadline(o, arg, "getex")?))
            }
            _ => return Err(syntax()),
        };
        let value = match self.read(key).await? {
            None => return Ok(Reply::Nil),
            Some(Value::Hash(_)) => return Err(wrong_type()),
            Some(Value::String { value: v, .. }) => v,
        };
        match change {
            None => {}
            Some(None) => self.clear_expiry(key).await?,
            Some(Some(at)) => {
                self.node
                    .expire_at(key.clone(), Some(at_ms(at)))
                    .await
                    .map_err(|e| failed(&e))?;
            }
        }
        Ok(Reply::Bulk(value))
    }

    async fn clear_expiry(&self, key: &Bytes) -> Result<(), Reply> {
        self.node
            .expire_at(key.clone(), None)
            .await
            .map_err(|e| failed(&e))?;
        self.node
            .set_max_idle(key.clone(), None)
            .await
            .map_err(|e| failed(&e))
    }

    /// Reads every key at the same time.
    async fn read_all(&self, keys: &[Bytes]) -> Result<Vec<Option<Value>>, Reply> {
        join_all(keys.iter().map(|key| self.read(key)))
            .await
            .into_iter()
            .collect()
    }

    async fn mget(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let values = self.read_all(keys).await?;
        Ok(Reply::Array(
            values
                .into_iter()
                .map(|value| match value {
                    Some(Value::String { value: v, .. }) => Reply::Bulk(v),
                    _ => Reply::Nil,
                })
                .collect(),
        ))
    }

    async fn mset(&self, pairs: &[Bytes]) -> Result<Reply, Reply> {
        if !pairs.len().is_multiple_of(2) {
            return Err(arity("mset"));
        }
        let writes = pairs.chunks(2).map(|pair| {
            let write = Write::Put {
                fields: vec![(Bytes::from_static(STRING_FIELD), pair[1].clone())],
                expiry: Expiry::NEVER,
            };
            (pair[0].clone(), write)
        });
        self.write_all(writes).await?;
        Ok(Reply::Ok)
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

    /// Deletes every key, seen or not: a logout through a node that never
    /// saw the session (it was created across a partition) must still hold
    /// once the partition heals. The keys are deleted together, and one
    /// that fails (the delete is kept all the same) does not stop the
    /// others. The count is of the keys the deletes' reads saw.
    async fn del(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let deletes = keys.iter().map(|key| self.node.delete(key.clone()));
        let mut deleted = 0;
        for outcome in join_all(deletes).await {
            deleted += i64::from(outcome.map_err(|e| failed(&e))?);
        }
        Ok(Reply::Int(deleted))
    }

    async fn exists(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let values = self.read_all(keys).await?;
        Ok(Reply::Int(
            i64::try_from(values.iter().filter(|v| v.is_some()).count()).unwrap_or(i64::MAX),
        ))
    }

    async fn type_of(&self, key: &Bytes) -> Result<Reply, Reply> {
        Ok(Reply::Simple(match self.read(key).await? {
            None => "none",
            Some(Value::String { .. }) => "string",
            Some(Value::Hash(_)) => "hash",
        }))
    }

    async fn expire(
        &self,
        name: &str,
        key: &Bytes,
        amount: &Bytes,
        options: &[Bytes],
    ) -> Result<Reply, Reply> {
        let n = int(amount).ok_or_else(not_integer)?;
        let at = match name {
            "EXPIRE" => n.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms())),
            "PEXPIRE" => n.checked_add(now_ms()),
            "EXPIREAT" => n.checked_mul(1000),
            _ => Some(n),
        }
        .ok_or_else(|| {
            Reply::Error(format!(
                "ERR invalid expire time in '{}' command",
                name.to_ascii_lowercase()
            ))
        })?;
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for o in options {
            if eq(o, "NX") {
                nx = true;
            } else if eq(o, "XX") {
                xx = true;
            } else if eq(o, "GT") {
                gt = true;
            } else if eq(o, "LT") {
                lt = true;
            } else {
                return Err(Reply::Error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(o)
                )));
            }
        }
        if nx && (xx || gt || lt) {
            return Err(err(
                "ERR NX and XX, GT or LT options at the same time are not compatible",
            ));
        }
        if gt && lt {
            return Err(err(
                "ERR GT and LT options at the same time are not compatible",
            ));
        }
        let Some(data) = self.node.get(key.clone()).await.map_err(|e| failed(&e))? else {
            return Ok(Reply::Int(0));
        };
        let current = data
            .deadline_ms()
            .map(|d| i64::try_from(d).unwrap_or(i64::MAX));
        let allowed = match current {
            None => !xx && !gt,
            Some(c) => !nx && (!gt || at > c) && (!lt || at < c),
        };
        if !allowed {
            return Ok(Reply::Int(0));
        }
        if at <= now_ms() {
            self.node
                .delete(key.clone())
                .await
                .map_err(|e| failed(&e))?;
        } else {
            self.node
                .expire_at(key.clone(), Some(at_ms(at)))
                .await
                .map_err(|e| failed(&e))?;
        }
        Ok(Reply::Int(1))
    }

    async fn ttl(&self, key: &Bytes, millis: bool) -> Result<Reply, Reply> {
        let Some(data) = self.node.get(key.clone()).await.map_err(|e| failed(&e))? else {
            return Ok(Reply::Int(-2));
        };
        let Some(deadline) = data.deadline_ms() else {
            return Ok(Reply::Int(-1));
        };
        let left = (i64::try_from(deadline).unwrap_or(i64::MAX) - now_ms()).max(0);
        Ok(Reply::Int(if millis { left } else { (left + 500) / 1000 }))
    }

    async fn persist(&self, key: &Bytes) -> Result<Reply, Reply> {
        let Some(data) = self.node.get(key.clone()).await.map_err(|e| failed(&e))? else {
            return Ok(Reply::Int(0));
        };
        if data.deadline_ms().is_none() {
            return Ok(Reply::Int(0));
        }
        self.clear_expiry(key).await?;
        Ok(Reply::Int(1))
    }

    async fn hset(&self, name: &str, key: &Bytes, pairs: &[Bytes]) -> Result<Reply, Reply> {
        if !pairs.len().is_multiple_of(2) {
            return Err(arity(name));
        }
        if pairs.chunks(2).any(|p| p[0].as_ref() == STRING_FIELD) {
            return Err(err("ERR empty hash field names are not supported"));
        }
        let existing = self.glance_hash(key).await?;
        let mut seen = std::collections::HashSet::new();
        let added = pairs
            .chunks(2)
            .filter(|pair| seen.insert(&pair[0]))
            .filter(|pair| existing.as_ref().and_then(|d| d.field(&pair[0])).is_none())
            .count();
        let writes = pairs.chunks(2).map(|pair| {
            let write = Write::PutField {
                name: pair[0].clone(),
                value: pair[1].clone(),
            };
            (key.clone(), write)
        });
        self.write_all(writes).await?;
        let added = i64::try_from(added).unwrap_or(i64::MAX);
        Ok(if name == "HMSET" {
            Reply::Ok
        } else {
            Reply::Int(added)
        })
    }

    async fn hsetnx(&self, key: &Bytes, field: &Bytes, value: &Bytes) -> Result<Reply, Reply> {
        if field.as_ref() == STRING_FIELD {
            return Err(err("ERR empty hash field names are not supported"));
        }
        if self
            .read_hash(key)
            .await?
            .is_some_and(|d| d.field(field).is_some())
        {
            return Ok(Reply::Int(0));
        }
        self.node
            .put_field(key.clone(), field.clone(), value.clone())
            .await
            .map_err(|e| failed(&e))?;
        Ok(Reply::Int(1))
    }

    async fn hget(&self, key: &Bytes, field: &Bytes) -> Result<Reply, Reply> {
        Ok(self
            .read_hash(key)
            .await?
            .and_then(|d| d.field(field).map(Reply::bulk))
            .unwrap_or(Reply::Nil))
    }

    async fn hmget(&self, key: &Bytes, fields: &[Bytes]) -> Result<Reply, Reply> {
        let data = self.read_hash(key).await?;
        Ok(Reply::Array(
            fields
                .iter()
                .map(|f| {
                    data.as_ref()
                        .and_then(|d| d.field(f).map(Reply::bulk))
                        .unwrap_or(Reply::Nil)
                })
                .collect(),
        ))
    }

    async fn hread(&self, name: &str, key: &Bytes) -> Result<Reply, Reply> {
        let data = self.read_hash(key).await?;
        let fields: Vec<(&[u8], &[u8])> = data
            .as_ref()
            .map(|d| d.fields().collect())
            .unwrap_or_default();
        Ok(match name {
            "HLEN" => Reply::Int(i64::try_from(fields.len()).unwrap_or(i64::MAX)),
            "HKEYS" => Reply::Array(fields.iter().map(|(n, _)| Reply::bulk(n)).collect()),
            "HVALS" => Reply::Array(fields.iter().map(|(_, v)| Reply::bulk(v)).collect()),
            _ => Reply::Map(
                fields
                    .iter()
                    .map(|(n, v)| (Reply::bulk(n), Reply::bulk(v)))
                    .collect(),
            ),
        })
    }

    /// Deletes every named field, seen or not (as `DEL` does whole
    /// sessions); the count is of the fields the read before saw.
    async fn hdel(&self, key: &Bytes, fields: &[Bytes]) -> Result<Reply, Reply> {
        let data = self.glance_hash(key).await?;
        let mut seen = std::collections::HashSet::new();
        let removed = fields
            .iter()
            .filter(|field| seen.insert(*field))
            .filter(|field| data.as_ref().is_some_and(|d| d.field(field).is_some()))
            .count();
        let writes = fields.iter().map(|field| {
            let write = Write::DeleteField {
                name: field.clone(),
            };
            (key.clone(), write)
        });
        self.write_all(writes).await?;
        Ok(Reply::Int(i64::try_from(removed).unwrap_or(i64::MAX)))
    }

    async fn hexists(&self, key: &Bytes, field: &Bytes) -> Result<Reply, Reply> {
        let data = self.read_hash(key).await?;
        Ok(Reply::Int(i64::from(
            data.is_some_and(|d| d.field(field).is_some()),
        )))
    }

    async fn hincrby(&self, key: &Bytes, field: &Bytes, by: &Bytes) -> Result<Reply, Reply> {
        let by = int(by).ok_or_else(not_integer)?;
        if field.as_ref() == STRING_FIELD {
            return Err(err("ERR empty hash field names are not supported"));
        }
        let current = match self
            .read_hash(key)
            .await?
            .and_then(|d| d.field(field).map(int))
        {
            None => 0,
            Some(Some(n)) => n,
            Some(None) => return Err(err("ERR hash value is not an integer")),
        };
        let next = current
            .checked_add(by)
            .ok_or_else(|| err("ERR increment or decrement would overflow"))?;
        self.node
            .put_field(key.clone(), field.clone(), Bytes::from(next.to_string()))
            .await
            .map_err(|e| failed(&e))?;
        Ok(Reply::Int(next))
    }

    /// Every key this node stores that a reader sees now.
    fn local_keys(&self) -> Vec<Bytes> {
        (0..self.node.partition_count())
            .flat_map(|p| self.node.local_keys(p))
            .collect()
    }

    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]`. The cursor is the
    /// next partition to list; each call lists whole partitions until it has
    /// `COUNT` keys, so a key present for the whole scan is returned.
    fn scan(&self, args: &[Bytes]) -> Reply {
        let Some(cursor) = std::str::from_utf8(&args[0])
            .ok()
            .and_then(|c| c.parse::<u64>().ok())
        else {
            return err("ERR invalid cursor");
        };
        let (mut pattern, mut count, mut kind) = (None, 10usize, None);
        let mut options = args[1..].chunks(2);
        for option in options.by_ref() {
            match option {
                [o, v] if eq(o, "MATCH") => pattern = Some(v.clone()),
                [o, v] if eq(o, "COUNT") => match int(v) {
                    Some(n) if n >= 1 => count = usize::try_from(n).unwrap_or(usize::MAX),
                    Some(_) => return syntax(),
                    None => return not_integer(),
                },
                [o, v] if eq(o, "TYPE") => kind = Some(v.to_ascii_lowercase()),
                _ => return syntax(),
            }
        }
        let partitions = u64::from(self.node.partition_count());
        let mut keys = Vec::new();
        let mut next = cursor;
        while next < partitions && keys.len() < count {
            let partition = u32::try_from(next).unwrap_or(u32::MAX);
            keys.extend(
                self.node
                    .local_keys(partition)
                    .into_iter()
                    .filter(|k| pattern.as_ref().is_none_or(|p| glob::matches(p, k))),
            );
            next += 1;
        }
        if let Some(kind) = kind {
            // TYPE filters by what each key holds; only strings and hashes exist.
            if kind != b"string" && kind != b"hash" {
                keys.clear();
            }
        }
        let next = if next >= partitions { 0 } else { next };
        Reply::Array(vec![
            Reply::bulk(next.to_string()),
            Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
        ])
    }

    fn auth(&self, client: &mut Client, args: &[Bytes]) -> Reply {
        let (user, password) = match args {
            [password] => (None, password),
            [user, password] => (Some(user), password),
            _ => return syntax(),
        };
        let Some(expected) = &self.settings.requirepass else {
            return err(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            );
        };
        let user_ok = user.is_none_or(|u| u.as_ref() == b"default");
        if user_ok && password.as_ref() == expected.as_bytes() {
            client.authenticated = true;
            Reply::Ok
        } else {
            err("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    fn hello(&self, client: &mut Client, args: &[Bytes]) -> Reply {
        let mut protocol = client.protocol;
        let mut rest = args;
        if let Some((version, tail)) = rest.split_first() {
            protocol = match int(version) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return err("NOPROTO unsupported protocol version"),
                None => return err("ERR Protocol version is not an integer or out of range"),
            };
            rest = tail;
        }
        let mut name = None;
        while let Some((option, tail)) = rest.split_first() {
            if eq(option, "AUTH") && tail.len() >= 2 {
                let reply = self.auth(client, &tail[..2]);
                if reply.is_error() {
                    return reply;
                }
                rest = &tail[2..];
            } else if eq(option, "SETNAME") && !tail.is_empty() {
                name = Some(tail[0].clone());
                rest = &tail[1..];
            } else {
                return Reply::Error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(option)
                ));
            }
        }
        if !client.authenticated {
            return err(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        client.protocol = protocol;
        if name.is_some() {
            client.name = name;
        }
        let proto = match protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("redis")),
            (Reply::bulk("version"), Reply::bulk(REDIS_VERSION)),
            (Reply::bulk("proto"), Reply::Int(proto)),
            (
                Reply::bulk("id"),
                Reply::Int(i64::try_from(client.id).unwrap_or(i64::MAX)),
            ),
            (Reply::bulk("mode"), Reply::bulk("standalone")),
            (Reply::bulk("role"), Reply::bulk("master")),
            (Reply::bulk("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn client_command(client: &mut Client, args: &[Bytes]) -> Reply {
        let sub = &args[0];
        if eq(sub, "ID") && args.len() == 1 {
            Reply::Int(i64::try_from(client.id).unwrap_or(i64::MAX))
        } else if eq(sub, "GETNAME") && args.len() == 1 {
            client.name.clone().map_or(Reply::Nil, Reply::Bulk)
        } else if eq(sub, "SETNAME") && args.len() == 2 {
            if args[1].iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                return err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            client.name = (!args[1].is_empty()).then(|| args[1].clone());
            Reply::Ok
        } else if eq(sub, "SETINFO") && args.len() == 3 {
            if eq(&args[1], "LIB-NAME") || eq(&args[1], "LIB-VER") {
                Reply::Ok
            } else {
                Reply::Error(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&args[1])
                ))
            }
        } else {
            Reply::Error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            ))
        }
    }

    fn command_command(args: &[Bytes]) -> Reply {
        match args.first() {
            None => Reply::Array(
                COMMANDS
                    .iter()
                    .map(|(name, arity, _)| {
                        Reply::Array(vec![
                            Reply::bulk(name.to_ascii_lowercase()),
                            Reply::Int(i64::from(*arity)),
                        ])
                    })
                    .collect(),
            ),
            Some(sub) if eq(sub, "COUNT") => {
                Reply::Int(i64::try_from(COMMANDS.len()).unwrap_or(i64::MAX))
            }
            Some(sub) if eq(sub, "DOCS") => Reply::Map(Vec::new()),
            Some(sub) if eq(sub, "INFO") => {
                Reply::Array(args[1..].iter().map(|_| Reply::Nil).collect())
            }
            Some(sub) => Reply::Error(format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(sub)
            )),
        }
    }

    fn config(args: &[Bytes]) -> Reply {
        const KNOWN: &[(&str, &str)] = &[
            ("appendonly", "no"),
            ("databases", "1"),
            ("maxmemory", "0"),
            ("save", ""),
        ];
        if !eq(&args[0], "GET") {
            return Reply::Error(format!(
                "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                String::from_utf8_lossy(&args[0])
            ));
        }
        if args.len() < 2 {
            return arity("config|get");
        }
        let pairs = KNOWN
            .iter()
            .filter(|(name, _)| {
                args[1..]
                    .iter()
                    .any(|p| glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
            })
            .map(|(name, value)| (Reply::bulk(name), Reply::bulk(value)))
            .collect();
        Reply::Map(pairs)
    }

    fn info(&self) -> Reply {
        let me = self.node.me();
        let text = format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nsessmesh_version:{}\r\nredis_mode:standalone\r\nsessmesh_node:{}\r\nsessmesh_peer_addr:{}\r\n\r\n# Keyspace\r\ndb0:keys={}\r\n",
            env!("CARGO_PKG_VERSION"),
            me.name,
            me.addr,
            self.local_keys().len(),
        );
        Reply::Bulk(Bytes::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_found_in_any_case() {
        assert!(
            COMMANDS.windows(2).all(|w| w[0].0 < w[1].0),
            "the table is sorted"
        );
        assert!(
            PACKED.windows(2).all(|w| w[0] < w[1]),
            "packed names sort as the names do"
        );
        for command in Command::all() {
            let name = command.name();
            assert_eq!(Command::lookup(name.as_bytes()), Some(command));
            assert_eq!(
                Command::lookup(name.to_ascii_lowercase().as_bytes()),
                Some(command)
            );
        }
        assert_eq!(Command::all().count(), COMMANDS.len());
        let get = Command::lookup(b"gEt").map(Command::name);
        assert_eq!(get, Some("GET"));
        for unknown in [&b"GETX"[..], b"GE", b"GET\0", b"\0GET", b"", b"nosuch"] {
            assert_eq!(Command::lookup(unknown), None, "{unknown:?}");
        }
        assert_eq!(Command::lookup(&[b'a'; 40]), None);
        assert_eq!(Command::lookup(b"PEXPIREAT\0\0\0\0\0\0"), None);
        let reads: Vec<_> = Command::all()
            .filter(|c| c.reads_only())
            .map(Command::name)
            .collect();
        assert_eq!(
            reads,
            [
                "EXISTS", "GET", "HEXISTS", "HGET", "HGETALL", "HKEYS", "HLEN", "HMGET", "HVALS",
                "MGET", "PTTL", "TTL", "TYPE"
            ]
        );
        let unknown = unknown(&[Bytes::from_static(b"foo"), Bytes::from_static(b"a")]);
        assert_eq!(
            unknown,
            err("ERR unknown command 'foo', with args beginning with: 'a' ")
        );
    }
}
