//! Scripts: `EVAL`, `EVALSHA`, `EVAL_RO`, `EVALSHA_RO` and `SCRIPT`.
//!
//! A script runs atomically on the keys it declares (one key, or keys of
//! one hash tag: `{user42}:a`, `{user42}:b`), through the consensus path,
//! optimistically:
//!
//! 1. the keys' states are read together by consensus (a linearizable
//!    read, so the script starts from every write decided before it);
//! 2. the script runs in Lua (`lua.rs`) on those states, in memory, its
//!    `redis.call`s changing them (`script_calls.rs`), on a blocking thread
//!    so a long script holds up no other client;
//! 3. a script that changed nothing answers at once; otherwise the writes
//!    taking each key from the state read to the state left are decided
//!    together by consensus, on the condition that every key is as read
//!    (the stamp of its newest write, deletes included). If another write
//!    came first, the script runs again on the new states.
//!
//! So what a script does to its keys is linearizable with every consensus
//! operation on them, all or nothing, and a plain write in between makes
//! it run again, not get lost. As in Redis, what a script did before an
//! error it raised is kept; a script stopped by `lua-time-limit` writes
//! nothing.
//!
//! A script may declare no key (it may then call no command on a key), or
//! keys of one hash tag; keys of several tags answer `CROSSSLOT`, as in
//! Redis Cluster. Scripts are cached per node, as in Redis Cluster:
//! `EVALSHA` on a node that has not seen the script answers `NOSCRIPT`,
//! and clients send `EVAL` then.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use std::sync::Arc;

use sessmesh::{CasError, GroupCas, GroupComputation};
use sessmesh_core::Stamp;

use super::key_state::{KeyState, KeyStates};
use super::lua::{self, Script};
use super::script_calls;
use super::*;

/// How many times a script runs again when its key changed under it.
const ATTEMPTS: usize = 16;

/// The refusal that says a key changed since the script read it.
const CHANGED: &str = "a key changed since the script read it";

/// The script commands, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Eval,
    EvalRo,
    EvalSha,
    EvalShaRo,
    Script,
}

/// A script command, its arguments parsed.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ScriptCommand {
    /// `EVAL`, `EVALSHA` and their `_RO` forms.
    Eval(Eval),
    /// `SCRIPT LOAD script`.
    Load { source: Bytes },
    /// `SCRIPT EXISTS sha1 [sha1 ...]`.
    Exists { hashes: Vec<String> },
    /// `SCRIPT FLUSH [ASYNC|SYNC]`.
    Flush,
    /// `SCRIPT KILL`: no script runs long enough to be killed.
    Kill,
}

/// A script to run.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Eval {
    body: Body,
    /// `KEYS`, as the client named them.
    keys: Vec<Bytes>,
    /// The same keys, as stored (the client's database's prefix added).
    stored: Vec<Bytes>,
    argv: Vec<Bytes>,
    read_only: bool,
    /// The client's database, for the keys the script's calls name.
    db: u32,
}

#[derive(Clone, Debug, PartialEq)]
enum Body {
    Source(Bytes),
    Sha(String),
}

impl ScriptCommand {
    /// Parses the arguments after the name, their number already checked.
    pub(super) fn parse(op: Op, args: &[Bytes], db: u32) -> Result<Self, Reply> {
        let body = |arg: &Bytes| match op {
            Op::Eval | Op::EvalRo => Body::Source(arg.clone()),
            _ => Body::Sha(String::from_utf8_lossy(arg).to_ascii_lowercase()),
        };
        match op {
            Op::Eval | Op::EvalRo | Op::EvalSha | Op::EvalShaRo => {
                let count = int(&args[1]).ok_or_else(not_integer)?;
                let rest = &args[2..];
                let count = usize::try_from(count)
                    .map_err(|_| err("ERR Number of keys can't be negative"))?;
                if count > rest.len() {
                    return Err(err(
                        "ERR Number of keys can't be greater than number of args",
                    ));
                }
                let keys = rest[..count].to_vec();
                let prefix = databases::prefix(db);
                let stored = keys
                    .iter()
                    .map(|k| {
                        if db == 0 && databases::in_db(0, k).is_none() {
                            return Err(err(
                                "ERR keys that begin with \\x00db are reserved for databases other than 0",
                            ));
                        }
                        Ok(Bytes::from([prefix.as_slice(), k].concat()))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(ScriptCommand::Eval(Eval {
                    body: body(&args[0]),
                    keys,
                    stored,
                    argv: rest[count..].to_vec(),
                    read_only: matches!(op, Op::EvalRo | Op::EvalShaRo),
                    db,
                }))
            }
            Op::Script => {
                let sub = &args[0];
                match &args[1..] {
                    [source] if eq(sub, "LOAD") => Ok(ScriptCommand::Load {
                        source: source.clone(),
                    }),
                    [_, ..] if eq(sub, "EXISTS") => Ok(ScriptCommand::Exists {
                        hashes: args[1..]
                            .iter()
                            .map(|h| String::from_utf8_lossy(h).to_ascii_lowercase())
                            .collect(),
                    }),
                    [] if eq(sub, "FLUSH") => Ok(ScriptCommand::Flush),
                    [mode] if eq(sub, "FLUSH") && (eq(mode, "ASYNC") || eq(mode, "SYNC")) => {
                        Ok(ScriptCommand::Flush)
                    }
                    [] if eq(sub, "KILL") => Ok(ScriptCommand::Kill),
                    _ if ["LOAD", "EXISTS", "FLUSH", "KILL"]
                        .iter()
                        .any(|known| eq(sub, known)) =>
                    {
                        Err(arity(&format!("script|{}", String::from_utf8_lossy(sub))))
                    }
                    _ => Err(Reply::Error(format!(
                        "ERR unknown subcommand '{}'. Try SCRIPT HELP.",
                        String::from_utf8_lossy(sub)
                    ))),
                }
            }
        }
    }

    pub(super) async fn run(self, handler: &Handler) -> Reply {
        let cache = &handler.scripts;
        match self {
            ScriptCommand::Eval(eval) => handler.eval(eval).await,
            ScriptCommand::Load { source } => Reply::bulk(cache.insert(source)),
            ScriptCommand::Exists { hashes } => Reply::Array(
                hashes
                    .iter()
                    .map(|h| Reply::Int(i64::from(cache.get(h).is_some())))
                    .collect(),
            ),
            ScriptCommand::Flush => {
                cache.flush();
                Reply::Ok
            }
            ScriptCommand::Kill => err("NOTBUSY No scripts in execution right now."),
        }
    }
}

/// How a run on some keys ends ([`Handler::on_keys`]).
pub(super) enum Step<R> {
    /// With this answer, writing nothing.
    Done(R),
    /// With this answer and the keys' states as the run left them, to write.
    Write(R, KeyStates),
}

/// What scripts share on one node: the scripts seen, by SHA-1, and
/// `lua-time-limit`.
#[derive(Debug)]
pub(super) struct Scripts {
    cache: Mutex<HashMap<String, Bytes>>,
    time_limit_ms: AtomicU64,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            cache: Mutex::new(HashMap::new()),
            time_limit_ms: AtomicU64::new(5_000),
        }
    }
}

impl Scripts {
    /// Keeps `source`; its SHA-1.
    fn insert(&self, source: Bytes) -> String {
        let sha = lua::sha1_hex(&source);
        self.lock().insert(sha.clone(), source);
        sha
    }

    fn get(&self, sha: &str) -> Option<Bytes> {
        self.lock().get(sha).cloned()
    }

    fn flush(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `lua-time-limit`, ms.
    pub(super) fn time_limit_ms(&self) -> u64 {
        self.time_limit_ms.load(Ordering::Relaxed)
    }

    /// Sets `lua-time-limit`, ms.
    pub(super) fn set_time_limit_ms(&self, ms: u64) {
        self.time_limit_ms.store(ms, Ordering::Relaxed);
    }
}

impl Handler {
    async fn eval(&self, eval: Eval) -> Reply {
        let source = match &eval.body {
            Body::Source(source) => {
                self.scripts.insert(source.clone());
                source.clone()
            }
            Body::Sha(sha) => match self.scripts.get(sha) {
                Some(source) => source,
                None => return err("NOSCRIPT No matching script. Please use EVAL."),
            },
        };
        let mut distinct = eval.stored.clone();
        distinct.sort();
        distinct.dedup();
        let eval = Arc::new((eval, source));
        if distinct.is_empty() {
            return self.run_script(&eval, None).await.0;
        }
        if let Err(reply) = one_hash_tag(&distinct) {
            return reply;
        }
        self.eval_on(eval, distinct).await
    }

    /// Runs a script on `keys`, again each time one changed under it.
    async fn eval_on(&self, eval: Arc<(Eval, Bytes)>, keys: Vec<Bytes>) -> Reply {
        let ran = self
            .on_keys(&keys, |state, _| {
                let eval = Arc::clone(&eval);
                async move {
                    match self.run_script(&eval, Some(state)).await {
                        (reply, Some(state)) => Step::Write(reply, state),
                        (reply, None) => Step::Done(reply),
                    }
                }
            })
            .await;
        ran.unwrap_or_else(|reply| reply)
    }

    /// Runs `run` on the states of `keys` (distinct keys of one hash tag)
    /// read together by consensus, with the stamp of each one's newest
    /// write, and decides the writes that take the keys to the states `run`
    /// left, on the condition that every key is still as read; if another
    /// write came first, `run` runs again on the new states. The answer is
    /// `run`'s.
    pub(super) async fn on_keys<R, Fut>(
        &self,
        keys: &[Bytes],
        mut run: impl FnMut(KeyStates, Vec<Option<Stamp>>) -> Fut,
    ) -> Result<R, Reply>
    where
        Fut: Future<Output = Step<R>>,
    {
        for _ in 0..ATTEMPTS {
            let read = match self.node.cas_group(keys.to_vec(), GroupCas::Read).await {
                Ok(decision) => decision,
                Err(e) => return Err(atomic::decide_failed(&e, "value")),
            };
            let stamps: Vec<Option<Stamp>> = read
                .before
                .iter()
                .map(|s| s.as_ref().map(sessmesh::Session::newest_stamp))
                .collect();
            let now = u64::try_from(now_ms()).unwrap_or(0);
            let states = keys
                .iter()
                .zip(&read.before)
                .map(|(key, before)| {
                    KeyState::of(key.clone(), before.as_ref(), now, self.tags.next())
                })
                .collect();
            let (answer, states) = match run(KeyStates::new(states), stamps.clone()).await {
                Step::Done(answer) => return Ok(answer),
                Step::Write(answer, states) => (answer, states),
            };
            let writes = states.writes();
            if writes.iter().all(Option::is_none) {
                return Ok(answer);
            }
            match self.commit(keys, stamps, writes).await {
                Ok(()) => return Ok(answer),
                Err(Error::Refused(why)) if why == CHANGED => {}
                Err(e) => return Err(atomic::decide_failed(&e, "value")),
            }
        }
        Err(Reply::Error(format!(
            "TRYAGAIN the keys changed under the script or transaction {ATTEMPTS} times in a row; nothing was written"
        )))
    }

    /// Decides `writes` on `keys` if each key's newest write is still the
    /// one in `stamps`.
    async fn commit(
        &self,
        keys: &[Bytes],
        stamps: Vec<Option<Stamp>>,
        writes: Vec<Option<Write>>,
    ) -> Result<(), Error> {
        let check = GroupComputation::new(move |sessions, _now| {
            let now: Vec<Option<Stamp>> = sessions
                .iter()
                .map(|s| s.map(sessmesh::Session::newest_stamp))
                .collect();
            if now == stamps {
                Ok(writes.clone())
            } else {
                Err(CasError::Refused(CHANGED.to_owned()))
            }
        });
        self.node
            .cas_group(keys.to_vec(), GroupCas::Compute(check))
            .await
            .map(|_| ())
    }

    /// Runs the script on a blocking thread, on `state` if it declares a
    /// key; the reply and the state it left. A script stopped by the time
    /// limit leaves no state to write.
    async fn run_script(
        &self,
        eval: &Arc<(Eval, Bytes)>,
        state: Option<KeyStates>,
    ) -> (Reply, Option<KeyStates>) {
        let eval = Arc::clone(eval);
        let limit = Duration::from_millis(self.scripts.time_limit_ms());
        let ran = tokio::task::spawn_blocking(move || {
            let (eval, source) = &*eval;
            let mut state = state;
            let script = Script {
                source,
                keys: &eval.keys,
                argv: &eval.argv,
                limit,
            };
            let reply = lua::run(&script, |args| call(&args, eval, state.as_mut()));
            let stopped = matches!(&reply, Reply::Error(e) if e.contains("lua-time-limit"));
            (reply, state.filter(|_| !stopped))
        })
        .await;
        ran.unwrap_or_else(|e| {
            (
                Reply::Error(format!("ERR the script's run failed: {e}")),
                None,
            )
        })
    }
}

/// Refuses keys of several hash tags (or several keys without one) as
/// Redis Cluster does: one consensus operation decides keys of one tag.
pub(super) fn one_hash_tag(keys: &[Bytes]) -> Result<(), Reply> {
    let mut instances = keys.iter().map(|k| sessmesh_core::instance_of(k));
    let first = instances.next();
    if instances.all(|i| Some(i) == first) {
        Ok(())
    } else {
        Err(err(
            "CROSSSLOT Keys in request don't hash to the same slot (a script runs atomically \
             on one key or on keys of one hash tag, such as {user42}:a and {user42}:b)",
        ))
    }
}

/// One `redis.call` of a script: looked up, its keys put in the script's
/// database, parsed, and run on the script's keys.
fn call(args: &[Bytes], eval: &Eval, state: Option<&mut KeyStates>) -> Reply {
    let Some(command) = Command::lookup(&args[0]) else {
        return Reply::Error(format!(
            "ERR Unknown Redis command called from script '{}'",
            String::from_utf8_lossy(&args[0])
        ));
    };
    if eval.read_only && !command.reads_only() {
        return err("ERR Write commands are not allowed from read-only scripts.");
    }
    let now = now_ms();
    let parsed = databases::in_database(eval.db, command, args).and_then(|args| {
        check_arity(command, &args).and_then(|()| Call::parse(command, &args, now, eval.db))
    });
    let call = match parsed {
        Ok(call) => call,
        Err(reply) => return reply,
    };
    let Some(state) = state else {
        return err("ERR a script that declares no keys may not call commands on keys");
    };
    script_calls::run(state, call, now).unwrap_or_else(|reply| reply)
}
