//! The command table: every command's name, arity, whether it only reads
//! and which family parses and runs it, and the one lookup a request's
//! name gets.

use super::*;
use Family::{
    Connection, Hashes, Keys, Locks, Moves, Ranges, Scripts, Server, Sets, Strings, Transactions,
};

/// The family a command belongs to, and which of its commands it is: the
/// family's file parses the request into its typed command and runs that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    /// `connection.rs`: the connection's own state.
    Connection(connection::Op),
    /// `strings.rs`.
    Strings(strings::Op),
    /// `keys.rs`: whole keys and their expiry.
    Keys(keys::Op),
    /// `hashes.rs`.
    Hashes(hashes::Op),
    /// `locks.rs`: fenced locks (`SESSMESH.LOCK`...).
    Locks(locks::Op),
    /// `ranges.rs`: parts of strings (`APPEND`, `GETRANGE`...).
    Ranges(ranges::Op),
    /// `moves.rs`: values moved between keys (`RENAME`, `COPY`...).
    Moves(moves::Op),
    /// `sets.rs`: sets (`SADD`, `SMEMBERS`...).
    Sets(sets::Op),
    /// `scripts.rs`: `EVAL`, `EVALSHA`, `SCRIPT`...
    Scripts(scripts::Op),
    /// `server.rs`: the server and introspection.
    Server(server::Op),
    /// `transactions.rs`: `MULTI`, `EXEC`, `WATCH`...
    Transactions(transactions::Op),
}

/// Every command this node knows, sorted by name: its name, arity (negative:
/// at least), whether it only reads data (`GET`, `HGETALL`, `TTL`...), and
/// the family that parses and runs it.
pub(super) const COMMANDS: &[(&str, i32, bool, Family)] = &[
    ("APPEND", 3, false, Ranges(ranges::Op::Append)),
    ("AUTH", -2, false, Connection(connection::Op::Auth)),
    ("CLIENT", -2, false, Connection(connection::Op::Client)),
    ("COMMAND", -1, false, Server(server::Op::Command)),
    ("CONFIG", -2, false, Server(server::Op::Config)),
    ("COPY", -3, false, Moves(moves::Op::Copy)),
    ("DBSIZE", 1, false, Server(server::Op::DbSize)),
    ("DECR", 2, false, Strings(strings::Op::Decr)),
    ("DECRBY", 3, false, Strings(strings::Op::DecrBy)),
    ("DEL", -2, false, Keys(keys::Op::Del)),
    ("DISCARD", 1, false, Transactions(transactions::Op::Discard)),
    ("ECHO", 2, false, Connection(connection::Op::Echo)),
    ("EVAL", -3, false, Scripts(scripts::Op::Eval)),
    ("EVALSHA", -3, false, Scripts(scripts::Op::EvalSha)),
    ("EVALSHA_RO", -3, true, Scripts(scripts::Op::EvalShaRo)),
    ("EVAL_RO", -3, true, Scripts(scripts::Op::EvalRo)),
    ("EXEC", 1, false, Transactions(transactions::Op::Exec)),
    ("EXISTS", -2, true, Keys(keys::Op::Exists)),
    ("EXPIRE", -3, false, Keys(keys::Op::Expire)),
    ("EXPIREAT", -3, false, Keys(keys::Op::ExpireAt)),
    ("FLUSHALL", -1, false, Server(server::Op::FlushAll)),
    ("FLUSHDB", -1, false, Server(server::Op::FlushDb)),
    ("GET", 2, true, Strings(strings::Op::Get)),
    ("GETDEL", 2, false, Strings(strings::Op::GetDel)),
    ("GETEX", -2, false, Strings(strings::Op::GetEx)),
    ("GETRANGE", 4, true, Ranges(ranges::Op::GetRange)),
    ("GETSET", 3, false, Strings(strings::Op::GetSet)),
    ("HDEL", -3, false, Hashes(hashes::Op::Del)),
    ("HELLO", -1, false, Connection(connection::Op::Hello)),
    ("HEXISTS", 3, true, Hashes(hashes::Op::Exists)),
    ("HGET", 3, true, Hashes(hashes::Op::Get)),
    ("HGETALL", 2, true, Hashes(hashes::Op::GetAll)),
    ("HINCRBY", 4, false, Hashes(hashes::Op::IncrBy)),
    ("HINCRBYFLOAT", 4, false, Hashes(hashes::Op::IncrByFloat)),
    ("HKEYS", 2, true, Hashes(hashes::Op::Keys)),
    ("HLEN", 2, true, Hashes(hashes::Op::Len)),
    ("HMGET", -3, true, Hashes(hashes::Op::MGet)),
    ("HMSET", -4, false, Hashes(hashes::Op::MSet)),
    ("HRANDFIELD", -2, true, Hashes(hashes::Op::RandField)),
    ("HSET", -4, false, Hashes(hashes::Op::Set)),
    ("HSETNX", 4, false, Hashes(hashes::Op::SetNx)),
    ("HSTRLEN", 3, true, Hashes(hashes::Op::StrLen)),
    ("HVALS", 2, true, Hashes(hashes::Op::Vals)),
    ("INCR", 2, false, Strings(strings::Op::Incr)),
    ("INCRBY", 3, false, Strings(strings::Op::IncrBy)),
    ("INCRBYFLOAT", 3, false, Strings(strings::Op::IncrByFloat)),
    ("INFO", -1, false, Server(server::Op::Info)),
    ("KEYS", 2, false, Keys(keys::Op::Keys)),
    ("MGET", -2, true, Strings(strings::Op::MGet)),
    ("MONITOR", 1, false, Connection(connection::Op::Monitor)),
    ("MSET", -3, false, Strings(strings::Op::MSet)),
    ("MSETNX", -3, false, Strings(strings::Op::MSetNx)),
    ("MULTI", 1, false, Transactions(transactions::Op::Multi)),
    ("OBJECT", -2, true, Keys(keys::Op::Object)),
    ("PERSIST", 2, false, Keys(keys::Op::Persist)),
    ("PEXPIRE", -3, false, Keys(keys::Op::PExpire)),
    ("PEXPIREAT", -3, false, Keys(keys::Op::PExpireAt)),
    ("PING", -1, false, Connection(connection::Op::Ping)),
    ("PSETEX", 4, false, Strings(strings::Op::PSetEx)),
    ("PTTL", 2, true, Keys(keys::Op::PTtl)),
    ("QUIT", -1, false, Connection(connection::Op::Quit)),
    ("RANDOMKEY", 1, false, Keys(keys::Op::RandomKey)),
    ("RENAME", 3, false, Moves(moves::Op::Rename)),
    ("RENAMENX", 3, false, Moves(moves::Op::RenameNx)),
    ("SADD", -3, false, Sets(sets::Op::Add)),
    ("SCAN", -2, false, Keys(keys::Op::Scan)),
    ("SCARD", 2, true, Sets(sets::Op::Card)),
    ("SCRIPT", -2, false, Scripts(scripts::Op::Script)),
    ("SELECT", 2, false, Connection(connection::Op::Select)),
    ("SESSMESH.LOCK", 3, false, Locks(locks::Op::Lock)),
    ("SESSMESH.RENEW", 4, false, Locks(locks::Op::Renew)),
    ("SESSMESH.UNLOCK", 3, false, Locks(locks::Op::Unlock)),
    ("SET", -3, false, Strings(strings::Op::Set)),
    ("SETEX", 4, false, Strings(strings::Op::SetEx)),
    ("SETNX", 3, false, Strings(strings::Op::SetNx)),
    ("SETRANGE", 4, false, Ranges(ranges::Op::SetRange)),
    ("SISMEMBER", 3, true, Sets(sets::Op::IsMember)),
    ("SMEMBERS", 2, true, Sets(sets::Op::Members)),
    ("SMISMEMBER", -3, true, Sets(sets::Op::MIsMember)),
    ("SPOP", -2, false, Sets(sets::Op::Pop)),
    ("SREM", -3, false, Sets(sets::Op::Rem)),
    ("SSCAN", -3, true, Sets(sets::Op::Scan)),
    ("STRLEN", 2, true, Ranges(ranges::Op::StrLen)),
    ("SUBSTR", 4, true, Ranges(ranges::Op::GetRange)),
    ("TOUCH", -2, true, Keys(keys::Op::Touch)),
    ("TTL", 2, true, Keys(keys::Op::Ttl)),
    ("TYPE", 2, true, Keys(keys::Op::Type)),
    ("UNLINK", -2, false, Keys(keys::Op::Unlink)),
    ("UNWATCH", 1, false, Transactions(transactions::Op::Unwatch)),
    ("WATCH", -2, false, Transactions(transactions::Op::Watch)),
];

// A command that only reads runs beside others with no connection to
// change, so it is never one of the connection's.
const _: () = {
    let mut i = 0;
    while i < COMMANDS.len() {
        assert!(
            !(COMMANDS[i].2 && matches!(COMMANDS[i].3, Connection(_))),
            "a connection command that only reads"
        );
        i += 1;
    }
};

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

    pub(super) fn arity(self) -> i32 {
        COMMANDS[self.index()].1
    }

    pub(super) fn reads_only(self) -> bool {
        COMMANDS[self.index()].2
    }

    pub(super) fn family(self) -> Family {
        COMMANDS[self.index()].3
    }
}

/// The error for a wrong number of arguments, if it is wrong.
pub(super) fn check_arity(command: Command, args: &[Bytes]) -> Result<(), Reply> {
    let n = i32::try_from(args.len()).unwrap_or(i32::MAX);
    let rule = command.arity();
    if (rule > 0 && n != rule) || (rule < 0 && n < -rule) {
        Err(arity(command.name()))
    } else {
        Ok(())
    }
}

pub(super) fn unknown(args: &[Bytes]) -> Reply {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0])
    );
    for arg in args.iter().skip(1).take(20) {
        text.push_str(&format!("'{}' ", String::from_utf8_lossy(arg)));
    }
    Reply::Error(text)
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
                "EVALSHA_RO",
                "EVAL_RO",
                "EXISTS",
                "GET",
                "GETRANGE",
                "HEXISTS",
                "HGET",
                "HGETALL",
                "HKEYS",
                "HLEN",
                "HMGET",
                "HRANDFIELD",
                "HSTRLEN",
                "HVALS",
                "MGET",
                "OBJECT",
                "PTTL",
                "SCARD",
                "SISMEMBER",
                "SMEMBERS",
                "SMISMEMBER",
                "SSCAN",
                "STRLEN",
                "SUBSTR",
                "TOUCH",
                "TTL",
                "TYPE"
            ]
        );
        let unknown = unknown(&[Bytes::from_static(b"foo"), Bytes::from_static(b"a")]);
        assert_eq!(
            unknown,
            err("ERR unknown command 'foo', with args beginning with: 'a' ")
        );
    }
}
