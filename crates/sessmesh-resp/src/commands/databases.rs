//! Databases: `SELECT 0` to `databases - 1`, each its own keyspace.
//!
//! Database 0 is the keyspace itself, the one embedded peers see. A key of
//! database `n > 0` is stored under the prefix `\0db<n>\0`, so databases
//! never share a key, and placement, replication and consensus treat them
//! alike. A request's keys are rewritten once, as it arrives
//! ([`in_database`]), by where the command keeps its keys (Redis's
//! key specs); the commands that answer with keys (`SCAN`) take the prefix
//! off, and those that count keys (`DBSIZE`) count the database's own. A
//! key of database 0 that begins with `\0db` is refused: it would read as
//! another database's.

use std::borrow::Cow;
use std::sync::OnceLock;

use super::*;

/// The prefix of every stored key of a database other than 0.
pub(super) const RESERVED: &[u8] = b"\0db";

/// Where a command keeps its keys among the request's arguments (the name
/// being argument 0): the first, the last (`None`: to the end) and the
/// step between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeySpec {
    first: usize,
    last: Option<usize>,
    step: usize,
}

/// Each command's key spec, by [`Command::index`]; `None` for commands
/// with no keys.
fn key_specs() -> &'static [Option<KeySpec>] {
    static SPECS: OnceLock<Vec<Option<KeySpec>>> = OnceLock::new();
    SPECS.get_or_init(|| Command::all().map(|c| key_spec(c.name())).collect())
}

fn key_spec(name: &str) -> Option<KeySpec> {
    let one = |at| KeySpec {
        first: at,
        last: Some(at),
        step: 1,
    };
    let all = KeySpec {
        first: 1,
        last: None,
        step: 1,
    };
    Some(match name {
        "DEL" | "UNLINK" | "EXISTS" | "TOUCH" | "MGET" | "WATCH" => all,
        "MSET" | "MSETNX" => KeySpec { step: 2, ..all },
        "COPY" | "RENAME" | "RENAMENX" => KeySpec {
            last: Some(2),
            ..all
        },
        "OBJECT" => one(2),
        "APPEND" | "DECR" | "DECRBY" | "EXPIRE" | "EXPIREAT" | "GET" | "GETDEL" | "GETEX"
        | "GETRANGE" | "GETSET" | "HDEL" | "HEXISTS" | "HGET" | "HGETALL" | "HINCRBY"
        | "HINCRBYFLOAT" | "HKEYS" | "HLEN" | "HMGET" | "HMSET" | "HSET" | "HSETNX" | "HSTRLEN"
        | "HRANDFIELD" | "HVALS" | "INCR" | "INCRBY" | "INCRBYFLOAT" | "PERSIST" | "PEXPIRE"
        | "PEXPIREAT" | "PSETEX" | "PTTL" | "SESSMESH.LOCK" | "SESSMESH.RENEW"
        | "SESSMESH.UNLOCK" | "SET" | "SETEX" | "SETNX" | "SETRANGE" | "STRLEN" | "SUBSTR"
        | "TTL" | "TYPE" | "SADD" | "SREM" | "SMEMBERS" | "SISMEMBER" | "SMISMEMBER" | "SCARD"
        | "SPOP" | "SSCAN" => one(1),
        _ => return None,
    })
}

/// The keys a request names, by its command's key spec (in the request's
/// own form: rewrite the request first for the stored keys); `None` for a
/// command that names none.
pub(super) fn keys_of(command: Command, args: &[Bytes]) -> Option<Vec<Bytes>> {
    let spec = key_specs()[command.index()]?;
    let last = spec
        .last
        .unwrap_or(usize::MAX)
        .min(args.len().saturating_sub(1));
    Some(
        (spec.first..=last)
            .step_by(spec.step)
            .map(|i| args[i].clone())
            .collect(),
    )
}

/// A database's prefix: empty for database 0.
pub(super) fn prefix(db: u32) -> Vec<u8> {
    if db == 0 {
        Vec::new()
    } else {
        format!("\0db{db}\0").into_bytes()
    }
}

/// The database a stored key belongs to: 0 unless it carries a prefix.
pub(super) fn db_of(stored: &[u8]) -> Option<u32> {
    let Some(rest) = stored.strip_prefix(RESERVED) else {
        return Some(0);
    };
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Whether a stored key belongs to database `db`; its name there.
pub(super) fn in_db(db: u32, stored: &Bytes) -> Option<Bytes> {
    if db == 0 {
        return (!stored.starts_with(RESERVED)).then(|| stored.clone());
    }
    let prefix = prefix(db);
    stored
        .starts_with(&prefix)
        .then(|| stored.slice(prefix.len()..))
}

/// The request with its keys in database `db`: unchanged in database 0
/// (where a key that begins with `\0db` is refused), each key prefixed in
/// the others.
pub(super) fn in_database(
    db: u32,
    command: Command,
    args: &[Bytes],
) -> Result<Cow<'_, [Bytes]>, Reply> {
    let Some(spec) = key_specs()[command.index()] else {
        return Ok(Cow::Borrowed(args));
    };
    let last = spec
        .last
        .unwrap_or(usize::MAX)
        .min(args.len().saturating_sub(1));
    let positions = (spec.first..=last).step_by(spec.step);
    if db == 0 {
        if positions.into_iter().any(|i| args[i].starts_with(RESERVED)) {
            return Err(err(
                "ERR keys that begin with \\x00db are reserved for databases other than 0",
            ));
        }
        return Ok(Cow::Borrowed(args));
    }
    let prefix = prefix(db);
    let mut args = args.to_vec();
    for i in positions {
        let mut key = Vec::with_capacity(prefix.len() + args[i].len());
        key.extend_from_slice(&prefix);
        key.extend_from_slice(&args[i]);
        args[i] = Bytes::from(key);
    }
    Ok(Cow::Owned(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_with_keys_has_a_spec() {
        // A command whose first argument is a key and that the table knows
        // must be listed: the commands that take no key, or not first.
        let keyless = [
            "AUTH",
            "CLIENT",
            "COMMAND",
            "CONFIG",
            "DBSIZE",
            "DISCARD",
            "ECHO",
            // Scripts name their keys after a count, and put them in the
            // client's database themselves.
            "EVAL",
            "EVALSHA",
            "EVALSHA_RO",
            "EVAL_RO",
            "EXEC",
            "FLUSHALL",
            "FLUSHDB",
            "HELLO",
            "INFO",
            "KEYS",
            "MONITOR",
            "MULTI",
            "PING",
            "QUIT",
            "RANDOMKEY",
            "SCAN",
            "SCRIPT",
            "SELECT",
            "UNWATCH",
        ];
        for command in Command::all() {
            let name = command.name();
            let spec = key_specs()[command.index()];
            assert_eq!(
                spec.is_none(),
                keyless.contains(&name),
                "{name}: a key spec, or listed as keyless"
            );
        }
    }

    #[test]
    fn stored_keys_belong_to_one_database() {
        let stored = Bytes::from_static(b"\0db3\0session");
        assert_eq!(in_db(3, &stored), Some(Bytes::from_static(b"session")));
        assert_eq!(in_db(0, &stored), None);
        assert_eq!(in_db(1, &stored), None);
        assert_eq!(in_db(31, &stored), None);
        let plain = Bytes::from_static(b"session");
        assert_eq!(in_db(0, &plain), Some(plain.clone()));
        assert_eq!(in_db(3, &plain), None);
        assert_eq!(db_of(&stored), Some(3));
        assert_eq!(db_of(&plain), Some(0));
        assert_eq!(db_of(b"\0dbx"), None);
    }
}
