//! The Lua 5.1 interpreter scripts run in, as Redis sets it up: `KEYS` and
//! `ARGV`, the `redis` table (`call`, `pcall`, `error_reply`,
//! `status_reply`, `sha1hex`, `log`), and Redis's conversions between Lua
//! values and replies.
//!
//! Each run gets a fresh interpreter (a few tens of microseconds), so no
//! script sees another's globals. It has Lua's `string`, `table` and
//! `math` libraries and the base functions, without `dofile`, `loadfile`
//! and `print`: no file, process or network is within reach. Its memory is
//! bounded, and a run longer than `lua-time-limit` is stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, VmState};

use super::*;

/// How much memory one run may take.
const MEMORY_LIMIT: usize = 64 << 20;

/// How many instructions run between checks of the time limit.
const CHECK_EVERY: u32 = 10_000;

/// What the prelude adds, in Lua: `redis.call` raises the error reply that
/// `redis.pcall` returns, and `pcall` cannot catch a stopped run.
const PRELUDE: &str = r#"
local raw_pcall, raw_xpcall, stopped = pcall, xpcall, redis.__stopped
local redis_pcall = redis.pcall
redis.__stopped = nil
redis.call = function(...)
  local reply = redis_pcall(...)
  if type(reply) == 'table' and reply.err then error(reply, 0) end
  return reply
end
local function rethrow_if_stopped(ok, ...)
  if not ok and stopped() then error((...), 0) end
  return ok, ...
end
pcall = function(...) return rethrow_if_stopped(raw_pcall(...)) end
xpcall = function(...) return rethrow_if_stopped(raw_xpcall(...)) end
function __run(f)
  local ok, result = raw_pcall(f)
  if ok then return result end
  if type(result) == 'table' and type(result.err) == 'string' then return result end
  return {err = 'ERR Error running script: ' .. tostring(result)}
end
"#;

/// A script to run.
pub(super) struct Script<'a> {
    /// Its source.
    pub(super) source: &'a [u8],
    /// `KEYS`, as the client named them.
    pub(super) keys: &'a [Bytes],
    /// `ARGV`.
    pub(super) argv: &'a [Bytes],
    /// How long it may run.
    pub(super) limit: Duration,
}

/// Runs `script`, its `redis.call`s answered by `call`, to its reply.
pub(super) fn run(script: &Script<'_>, call: impl FnMut(Vec<Bytes>) -> Reply) -> Reply {
    let stopped = Arc::new(AtomicBool::new(false));
    match run_in_lua(script, call, &stopped) {
        _ if stopped.load(Ordering::Relaxed) => Reply::Error(format!(
            "ERR Error running script: it ran longer than lua-time-limit ({} ms) and was stopped",
            script.limit.as_millis()
        )),
        Ok(reply) => reply,
        Err(e) => Reply::Error(format!("ERR Error running script: {e}")),
    }
}

fn run_in_lua(
    script: &Script<'_>,
    mut call: impl FnMut(Vec<Bytes>) -> Reply,
    stopped: &Arc<AtomicBool>,
) -> mlua::Result<Reply> {
    let lua = Lua::new_with(
        StdLib::STRING | StdLib::TABLE | StdLib::MATH,
        LuaOptions::default(),
    )?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let globals = lua.globals();
    for unsafe_function in ["dofile", "loadfile", "print"] {
        globals.set(unsafe_function, mlua::Value::Nil)?;
    }
    globals.set("KEYS", strings(&lua, script.keys)?)?;
    globals.set("ARGV", strings(&lua, script.argv)?)?;

    let started = Instant::now();
    let limit = script.limit;
    let stop = Arc::clone(stopped);
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(CHECK_EVERY),
        move |_, _| {
            if stop.load(Ordering::Relaxed) || started.elapsed() > limit {
                stop.store(true, Ordering::Relaxed);
                return Err(mlua::Error::runtime("the script ran out of time"));
            }
            Ok(VmState::Continue)
        },
    )?;

    let function = match lua
        .load(script.source)
        .set_name("=user_script")
        .into_function()
    {
        Ok(f) => f,
        Err(e) => {
            return Ok(Reply::Error(format!(
                "ERR Error compiling script (new function): {}",
                first_line(&e)
            )));
        }
    };
    lua.scope(|scope| {
        let redis = redis_table(&lua)?;
        let stop = Arc::clone(stopped);
        redis.set(
            "__stopped",
            lua.create_function(move |_, ()| Ok(stop.load(Ordering::Relaxed)))?,
        )?;
        redis.set(
            "pcall",
            scope.create_function_mut(|lua, args: MultiValue| {
                let reply = match arguments(args) {
                    Ok(args) => call(args),
                    Err(reply) => reply,
                };
                to_lua(lua, reply)
            })?,
        )?;
        lua.globals().set("redis", redis)?;
        lua.load(PRELUDE).set_name("=prelude").exec()?;
        let run: mlua::Function = lua.globals().get("__run")?;
        let result: mlua::Value = run.call(function)?;
        Ok(from_lua(&result))
    })
}

/// The `redis` table, but for `call` and `pcall`.
fn redis_table(lua: &Lua) -> mlua::Result<Table> {
    let redis = lua.create_table()?;
    redis.set(
        "error_reply",
        lua.create_function(|lua, message: mlua::LuaString| {
            let reply = lua.create_table()?;
            reply.set("err", message)?;
            Ok(reply)
        })?,
    )?;
    redis.set(
        "status_reply",
        lua.create_function(|lua, message: mlua::LuaString| {
            let reply = lua.create_table()?;
            reply.set("ok", message)?;
            Ok(reply)
        })?,
    )?;
    redis.set(
        "sha1hex",
        lua.create_function(|_, text: mlua::LuaString| Ok(sha1_hex(&text.as_bytes())))?,
    )?;
    // Logged at debug level: a script's log lines are its author's.
    redis.set(
        "log",
        lua.create_function(|_, (level, message): (i64, mlua::LuaString)| {
            tracing::debug!(level, "script: {}", message.to_string_lossy());
            Ok(())
        })?,
    )?;
    for (name, value) in [
        ("LOG_DEBUG", 0),
        ("LOG_VERBOSE", 1),
        ("LOG_NOTICE", 2),
        ("LOG_WARNING", 3),
        ("REPL_NONE", 0),
        ("REPL_AOF", 1),
        ("REPL_SLAVE", 2),
        ("REPL_REPLICA", 2),
        ("REPL_ALL", 3),
    ] {
        redis.set(name, value)?;
    }
    // Effects are what replicates here, as in Redis 7: these change nothing.
    redis.set("replicate_commands", lua.create_function(|_, ()| Ok(true))?)?;
    redis.set("set_repl", lua.create_function(|_, _: i64| Ok(()))?)?;
    redis.set(
        "setresp",
        lua.create_function(|_, version: i64| {
            if version == 2 {
                Ok(())
            } else {
                Err(mlua::Error::runtime(
                    "scripts on this node speak RESP2 to redis.call",
                ))
            }
        })?,
    )?;
    Ok(redis)
}

fn strings(lua: &Lua, items: &[Bytes]) -> mlua::Result<Table> {
    lua.create_sequence_from(
        items
            .iter()
            .map(|item| lua.create_string(item))
            .collect::<mlua::Result<Vec<_>>>()?,
    )
}

/// A `redis.call`'s arguments: strings, or numbers as Redis prints them.
fn arguments(args: MultiValue) -> Result<Vec<Bytes>, Reply> {
    if args.is_empty() {
        return Err(err(
            "ERR Please specify at least one argument for this redis lib call",
        ));
    }
    args.into_iter()
        .map(|arg| match arg {
            mlua::Value::String(s) => Ok(Bytes::copy_from_slice(&s.as_bytes())),
            mlua::Value::Integer(i) => Ok(Bytes::from(i.to_string())),
            mlua::Value::Number(n) => Ok(Bytes::from(number_text(n))),
            _ => Err(err(
                "ERR Lua redis lib command arguments must be strings or integers",
            )),
        })
        .collect()
}

/// A Lua number as an argument, as Redis formats it (`%.17g`).
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e17 {
        #[expect(clippy::cast_possible_truncation, reason = "a whole number under 1e17")]
        return (n as i64).to_string();
    }
    format!("{n}")
}

/// A reply as Lua sees it (Redis's rules): integers as numbers, bulk
/// strings as strings, nil as `false`, arrays as tables, a status as
/// `{ok = ...}`, an error as `{err = ...}`.
fn to_lua(lua: &Lua, reply: Reply) -> mlua::Result<mlua::Value> {
    Ok(match reply {
        Reply::Int(i) => mlua::Value::Integer(i),
        Reply::Bulk(b) => mlua::Value::String(lua.create_string(&b)?),
        Reply::Nil => mlua::Value::Boolean(false),
        Reply::Ok => status(lua, "OK")?,
        Reply::Simple(s) => status(lua, s)?,
        Reply::Status(s) => status(lua, &s)?,
        Reply::Error(e) => {
            let table = lua.create_table()?;
            table.set("err", e)?;
            mlua::Value::Table(table)
        }
        Reply::Array(items) => {
            let values = items
                .into_iter()
                .map(|item| to_lua(lua, item))
                .collect::<mlua::Result<Vec<_>>>()?;
            mlua::Value::Table(lua.create_sequence_from(values)?)
        }
        Reply::Map(pairs) => {
            let values = pairs
                .into_iter()
                .flat_map(|(k, v)| [k, v])
                .map(|item| to_lua(lua, item))
                .collect::<mlua::Result<Vec<_>>>()?;
            mlua::Value::Table(lua.create_sequence_from(values)?)
        }
    })
}

fn status(lua: &Lua, text: &str) -> mlua::Result<mlua::Value> {
    let table = lua.create_table()?;
    table.set("ok", text)?;
    Ok(mlua::Value::Table(table))
}

/// A script's result as a reply (Redis's rules): numbers truncated to
/// integers, `true` as 1, `false` and `nil` as nil, a table with `err` or
/// `ok` as an error or a status, any other table as an array up to its
/// first nil.
fn from_lua(value: &mlua::Value) -> Reply {
    match value {
        mlua::Value::Nil | mlua::Value::Boolean(false) => Reply::Nil,
        mlua::Value::Boolean(true) => Reply::Int(1),
        mlua::Value::Integer(i) => Reply::Int(*i),
        #[expect(clippy::cast_possible_truncation, reason = "Redis truncates")]
        mlua::Value::Number(n) => Reply::Int(*n as i64),
        mlua::Value::String(s) => Reply::Bulk(Bytes::copy_from_slice(&s.as_bytes())),
        mlua::Value::Table(table) => {
            if let Ok(mlua::Value::String(e)) = table.raw_get::<mlua::Value>("err") {
                return Reply::Error(e.to_string_lossy());
            }
            if let Ok(mlua::Value::String(s)) = table.raw_get::<mlua::Value>("ok") {
                return Reply::Status(s.to_string_lossy());
            }
            let mut items = Vec::new();
            for i in 1.. {
                match table.raw_get::<mlua::Value>(i) {
                    Ok(mlua::Value::Nil) | Err(_) => break,
                    Ok(item) => items.push(from_lua(&item)),
                }
            }
            Reply::Array(items)
        }
        _ => Reply::Nil,
    }
}

/// An error's first line (a compile error's message, without mlua's
/// traceback).
fn first_line(e: &mlua::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("syntax error: ")
        .unwrap_or(line)
        .to_owned()
}

/// The SHA-1 of `text`, in lower-case hex: a script's name in the cache.
pub(super) fn sha1_hex(text: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(source: &str, keys: &[&str], argv: &[&str]) -> Reply {
        let keys: Vec<Bytes> = keys.iter().map(|k| Bytes::from(k.to_string())).collect();
        let argv: Vec<Bytes> = argv.iter().map(|a| Bytes::from(a.to_string())).collect();
        let script = Script {
            source: source.as_bytes(),
            keys: &keys,
            argv: &argv,
            limit: Duration::from_millis(200),
        };
        // `redis.call` answers with its arguments, or an error for `FAIL`.
        run(&script, |args| {
            if args[0].as_ref() == b"FAIL" {
                return err("WRONGTYPE Operation against a key holding the wrong kind of value");
            }
            Reply::Array(args.into_iter().map(Reply::Bulk).collect())
        })
    }

    #[test]
    fn values_convert_as_redis_converts_them() {
        assert_eq!(eval("return 3.99", &[], &[]), Reply::Int(3));
        assert_eq!(eval("return true", &[], &[]), Reply::Int(1));
        assert_eq!(eval("return false", &[], &[]), Reply::Nil);
        assert_eq!(
            eval("return {1, 'two', nil, 4}", &[], &[]),
            Reply::Array(vec![Reply::Int(1), Reply::bulk("two")])
        );
        assert_eq!(
            eval("return redis.status_reply('FINE')", &[], &[]),
            Reply::Status("FINE".into())
        );
        assert_eq!(
            eval("return redis.error_reply('MY failure')", &[], &[]),
            Reply::error("MY failure")
        );
        assert_eq!(
            eval("return {KEYS[1], ARGV[2]}", &["k"], &["a", "b"]),
            Reply::Array(vec![Reply::bulk("k"), Reply::bulk("b")])
        );
        assert_eq!(
            eval("return redis.sha1hex('')", &[], &[]),
            Reply::bulk("da39a3ee5e6b4b0d3255bfef95601890afd80709")
        );
    }

    #[test]
    fn call_raises_what_pcall_returns() {
        assert_eq!(
            eval("return redis.call('GET', KEYS[1], 7)", &["k"], &[]),
            Reply::Array(vec![Reply::bulk("GET"), Reply::bulk("k"), Reply::bulk("7")])
        );
        assert_eq!(
            eval("redis.call('FAIL'); return 1", &[], &[]),
            Reply::error("WRONGTYPE Operation against a key holding the wrong kind of value")
        );
        assert_eq!(
            eval(
                "local r = redis.pcall('FAIL'); return type(r.err)",
                &[],
                &[]
            ),
            Reply::bulk("string")
        );
        assert_eq!(
            eval("return redis.call({})", &[], &[]),
            Reply::error("ERR Lua redis lib command arguments must be strings or integers")
        );
    }

    #[test]
    fn errors_name_what_went_wrong() {
        let Reply::Error(compile) = eval("return (", &[], &[]) else {
            panic!("a syntax error compiles");
        };
        assert!(
            compile.starts_with("ERR Error compiling script (new function): user_script:1:"),
            "{compile}"
        );
        let Reply::Error(runtime) = eval("return nil + 1", &[], &[]) else {
            panic!("arithmetic on nil runs");
        };
        assert!(
            runtime.starts_with("ERR Error running script: user_script:1:"),
            "{runtime}"
        );
    }

    #[test]
    fn a_script_reaches_no_file_process_or_network() {
        for source in [
            "return io.open('/etc/passwd')",
            "return os.execute('true')",
            "return dofile('/etc/passwd')",
            "return loadfile('/etc/passwd')",
            "return require('socket')",
        ] {
            assert!(eval(source, &[], &[]).is_error(), "{source} ran");
        }
    }

    #[test]
    fn a_runaway_script_is_stopped_even_inside_pcall() {
        for source in [
            "while true do end",
            "while true do pcall(function() while true do end end) end",
        ] {
            let Reply::Error(e) = eval(source, &[], &[]) else {
                panic!("{source} returned");
            };
            assert!(e.contains("lua-time-limit (200 ms)"), "{e}");
        }
    }
}
