//! The command table: every command's name, arity and whether it only
//! reads, and the one lookup a request's name gets.

use super::*;

/// Every command this node knows, sorted by name: its name, arity (negative:
/// at least) and whether it only reads data (`GET`, `HGETALL`, `TTL`...).
pub(super) const COMMANDS: &[(&str, i32, bool)] = &[
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

    pub(super) fn arity(self) -> i32 {
        COMMANDS[self.index()].1
    }

    pub(super) fn reads_only(self) -> bool {
        COMMANDS[self.index()].2
    }
}

/// The error for a wrong number of arguments, if it is wrong.
pub(super) fn check_arity(command: Command, args: &[Bytes]) -> Option<Reply> {
    let n = i32::try_from(args.len()).unwrap_or(i32::MAX);
    let rule = command.arity();
    ((rule > 0 && n != rule) || (rule < 0 && n < -rule)).then(|| arity(command.name()))
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
