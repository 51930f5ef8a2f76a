//! Unit tests of the command layer's parsing and replies.

use super::*;

/// The clock the parses below read: 14 November 2023, in Unix ms.
pub(super) const NOW_MS: i64 = 1_700_000_000_000;

/// Parses a request written as words split on single spaces (two
/// spaces make an empty argument), as a connection would once the
/// client may run it.
pub(super) fn parse(request: &str) -> Result<Call, Reply> {
    let args: Vec<Bytes> = request
        .split(' ')
        .map(|word| Bytes::copy_from_slice(word.as_bytes()))
        .collect();
    let command = Command::lookup(&args[0]).expect("a known command");
    check_arity(command, &args)?;
    Call::parse(command, &args, NOW_MS, 0)
}

pub(super) fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

#[test]
fn arguments_are_refused_before_anything_runs_with_redis_errors() {
    let syntax = "ERR syntax error";
    let not_integer = "ERR value is not an integer or out of range";
    for (request, error) in [
        ("GET", "ERR wrong number of arguments for 'get' command"),
        ("SET k v NX XX", syntax),
        ("SET k v EX 10 PX 10", syntax),
        ("SET k v EX 10 KEEPTTL", syntax),
        ("SET k v KEEPTTL EX 10", syntax),
        ("SET k v EX", syntax),
        ("SET k v FOO", syntax),
        ("SET k v NX GET EX x", not_integer),
        (
            "SET k v EX 0 FOO",
            "ERR invalid expire time in 'set' command",
        ),
        (
            "SET k v EX 9223372036854775",
            "ERR invalid expire time in 'set' command",
        ),
        ("SETEX k -1 v", "ERR invalid expire time in 'setex' command"),
        ("SETEX k x v", not_integer),
        (
            "PSETEX k 9223372036854775807 v",
            "ERR invalid expire time in 'psetex' command",
        ),
        ("GETEX k PERSIST x", syntax),
        ("GETEX k FOO", syntax),
        ("GETEX k EX 0", "ERR invalid expire time in 'getex' command"),
        (
            "MSET a 1 b",
            "ERR wrong number of arguments for 'mset' command",
        ),
        ("EXPIRE k x FOO", not_integer),
        (
            "PEXPIRE k 9223372036854775807",
            "ERR invalid expire time in 'pexpire' command",
        ),
        ("EXPIRE k 10 NX FOO", "ERR Unsupported option FOO"),
        (
            "EXPIRE k 10 NX GT",
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ),
        (
            "EXPIRE k 10 GT LT",
            "ERR GT and LT options at the same time are not compatible",
        ),
        ("SCAN -1", "ERR invalid cursor"),
        ("SCAN 0 COUNT 0", syntax),
        ("SCAN 0 COUNT x FOO", not_integer),
        ("SCAN 0 MATCH", syntax),
        (
            "HSET h f v g",
            "ERR wrong number of arguments for 'hset' command",
        ),
        (
            "HMSET h f",
            "ERR wrong number of arguments for 'hmset' command",
        ),
        (
            "HSET h f v  v",
            "ERR empty hash field names are not supported",
        ),
        (
            "HSETNX h  v",
            "ERR empty hash field names are not supported",
        ),
        ("HINCRBY h  x", not_integer),
        (
            "HINCRBY h  1",
            "ERR empty hash field names are not supported",
        ),
        (
            "PING a b",
            "ERR wrong number of arguments for 'ping' command",
        ),
        ("SELECT x", not_integer),
        ("AUTH a b c", syntax),
        ("HELLO 4", "NOPROTO unsupported protocol version"),
        (
            "HELLO x AUTH a b",
            "ERR Protocol version is not an integer or out of range",
        ),
        (
            "CLIENT SETNAME a\u{1}b",
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ),
        ("CLIENT SETINFO foo x", "ERR Unrecognized option 'foo'"),
        (
            "CLIENT ID x",
            "ERR unknown subcommand or wrong number of arguments for 'ID'. Try CLIENT HELP.",
        ),
        (
            "COMMAND NOPE",
            "ERR unknown subcommand 'NOPE'. Try COMMAND HELP.",
        ),
        (
            "CONFIG SET a b",
            "ERR Unknown option or number of arguments for CONFIG SET - 'a'",
        ),
        (
            "CONFIG REWRITE",
            "ERR unknown subcommand 'REWRITE'. Try CONFIG HELP.",
        ),
        (
            "CONFIG GET",
            "ERR wrong number of arguments for 'config|get' command",
        ),
    ] {
        assert_eq!(parse(request), Err(err(error)), "{request}");
    }
}

#[test]
fn a_request_is_parsed_by_its_commands_family() {
    assert!(matches!(parse("AUTH p"), Ok(Call::Connection(_))));
    assert!(matches!(parse("get k"), Ok(Call::Strings(_))));
    assert!(matches!(parse("TTL k"), Ok(Call::Keys(_))));
    assert!(matches!(parse("HGETALL h"), Ok(Call::Hashes(_))));
    assert!(matches!(parse("DBSIZE"), Ok(Call::Server(_))));
}

#[test]
fn deadlines_count_from_now_or_from_the_epoch() {
    let now = NOW_MS;
    let at = |unit, n| DeadlineUnit::deadline_ms(unit, n, now);
    assert_eq!(at(DeadlineUnit::Seconds, 10), Some(now + 10_000));
    assert_eq!(at(DeadlineUnit::Millis, 10), Some(now + 10));
    assert_eq!(at(DeadlineUnit::UnixSeconds, 10), Some(10_000));
    assert_eq!(at(DeadlineUnit::UnixMillis, 10), Some(10));
    assert_eq!(at(DeadlineUnit::Seconds, i64::MAX / 1000), None);
    assert_eq!(at(DeadlineUnit::UnixMillis, i64::MAX), Some(i64::MAX));
    assert_eq!(DeadlineUnit::parse(b"pXaT"), Some(DeadlineUnit::UnixMillis));
    assert_eq!(DeadlineUnit::parse(b"EXA"), None);
}
