//! Transactions: `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`, with
//! Redis's replies.
//!
//! After `MULTI` a connection's commands are parsed and queued (`QUEUED`),
//! and nothing runs until `EXEC`. A queued command that Redis would refuse
//! before running it (an unknown command, a wrong number of arguments, a
//! syntax error) is answered with its error at once, and `EXEC` then
//! discards the transaction with `EXECABORT`. `EXEC` runs the queued
//! commands in order, each with its own cluster semantics (the atomic ones
//! through consensus, plain writes merged), and answers their replies as
//! one array.
//!
//! `WATCH` reads each key by consensus and keeps the stamp of its newest
//! write; `EXEC` reads them again the same way and answers nil, running
//! nothing, when any changed (a write of the same value counts). Those
//! reads are linearizable, so a change decided or acknowledged before
//! `EXEC` began aborts it.
//!
//! A transaction whose commands (and watched keys) name one key, or keys of
//! one hash tag (`{user42}:a`, `{user42}:b`), runs all-or-nothing, as a
//! script does: on the keys' states read together by consensus, in
//! memory, with one conditional consensus operation writing them all. Over
//! keys of several hash tags (Django's `set_many`), the queued commands run
//! one after another, each with its own semantics: they are not
//! all-or-nothing with each other or with the check, and a write that lands
//! between the check and a queued command is not detected
//! (docs/protocol.md). Redis Cluster refuses such a transaction with
//! `CROSSSLOT`; session middlewares send them, so this node runs them.

use sessmesh::Cas;
use sessmesh_core::Stamp;

use super::script_calls;
use super::scripts::{self, Step};
use super::*;

/// The transaction commands, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Discard,
    Exec,
    Multi,
    Unwatch,
    Watch,
}

/// A transaction command, its arguments parsed.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum TransactionCommand {
    Multi,
    Exec,
    Discard,
    Watch { keys: Vec<Bytes> },
    Unwatch,
}

/// A connection's transaction: what `MULTI` queued, and what `WATCH`
/// watches.
#[derive(Debug, Default)]
pub(super) struct Transaction {
    /// The commands queued since `MULTI`; `None` outside one.
    queued: Option<Vec<Call>>,
    /// Whether a command was refused while queuing: `EXEC` aborts.
    refused: bool,
    /// Each watched key, with the stamp of its newest write when watched.
    watched: Vec<(Bytes, Option<Stamp>)>,
    /// The keys the queued commands name (stored form), and whether one
    /// named none: a transaction over one key runs all-or-nothing.
    keys: std::collections::BTreeSet<Bytes>,
    keyless: bool,
}

impl Transaction {
    /// Whether `MULTI` is queuing this connection's commands.
    pub(super) fn queuing(&self) -> bool {
        self.queued.is_some()
    }

    /// Queues a parsed command, or notes that one was refused: the reply
    /// is `QUEUED`, or the refusal.
    pub(super) fn queue(&mut self, call: Result<Call, Reply>, keys: Option<Vec<Bytes>>) -> Reply {
        match (call, &mut self.queued) {
            (Ok(call), Some(queued)) => {
                queued.push(call);
                match keys {
                    Some(keys) => self.keys.extend(keys),
                    None => self.keyless = true,
                }
                Reply::Simple("QUEUED")
            }
            (Ok(_), None) => err("ERR no transaction to queue in"),
            (Err(reply), _) => {
                self.refused = true;
                reply
            }
        }
    }

    /// Whether `command` is queued while `MULTI` is on: all but the
    /// transaction's own commands (`UNWATCH` is queued, as in Redis) and
    /// `QUIT`.
    pub(super) fn queues(&self, command: Command) -> bool {
        self.queuing()
            && !matches!(
                command.family(),
                Family::Transactions(Op::Multi | Op::Exec | Op::Discard | Op::Watch)
                    | Family::Connection(connection::Op::Quit)
            )
    }
}

impl TransactionCommand {
    pub(super) fn parse(op: Op, args: &[Bytes]) -> Self {
        match op {
            Op::Multi => TransactionCommand::Multi,
            Op::Exec => TransactionCommand::Exec,
            Op::Discard => TransactionCommand::Discard,
            Op::Watch => TransactionCommand::Watch {
                keys: args.to_vec(),
            },
            Op::Unwatch => TransactionCommand::Unwatch,
        }
    }

    pub(super) async fn run(self, handler: &Handler, client: &mut Client) -> Reply {
        let transaction = &mut client.transaction;
        match self {
            TransactionCommand::Multi if transaction.queuing() => {
                err("ERR MULTI calls can not be nested")
            }
            TransactionCommand::Multi => {
                transaction.queued = Some(Vec::new());
                transaction.refused = false;
                transaction.keys.clear();
                transaction.keyless = false;
                Reply::Ok
            }
            TransactionCommand::Discard => match transaction.queued.take() {
                None => err("ERR DISCARD without MULTI"),
                Some(_) => {
                    transaction.refused = false;
                    transaction.watched.clear();
                    Reply::Ok
                }
            },
            TransactionCommand::Watch { .. } if transaction.queuing() => {
                err("ERR WATCH inside MULTI is not allowed")
            }
            TransactionCommand::Watch { keys } => {
                for key in keys {
                    match handler.newest_write(&key).await {
                        Ok(stamp) => client.transaction.watched.push((key, stamp)),
                        Err(reply) => return reply,
                    }
                }
                Reply::Ok
            }
            TransactionCommand::Unwatch => {
                transaction.watched.clear();
                Reply::Ok
            }
            TransactionCommand::Exec => handler.exec(client).await,
        }
    }
}

impl Handler {
    /// The stamp of the newest write of `key` (deletes included), read by
    /// consensus.
    async fn newest_write(&self, key: &Bytes) -> Result<Option<Stamp>, Reply> {
        let decision = self.decide(key, Cas::Read, "value").await?;
        Ok(decision
            .before
            .as_ref()
            .map(sessmesh::Session::newest_stamp))
    }

    /// `EXEC` of a transaction over one key or keys of one hash tag: as a
    /// script is run (see `scripts.rs`), the queued commands run in memory
    /// on the keys' states read together by consensus, and the writes they
    /// make are decided together by consensus if the keys are still as
    /// read; otherwise they run again on the new states. A watched key
    /// changed since `WATCH` answers nil.
    async fn exec_on_keys(
        &self,
        keys: &[Bytes],
        queued: &[Call],
        watched: &[(Bytes, Option<Stamp>)],
    ) -> Reply {
        let ran = self
            .on_keys(keys, |mut states, newest| async move {
                let changed = watched.iter().any(|(key, stamp)| {
                    let at = keys.iter().position(|k| k == key);
                    at.is_none_or(|at| newest[at] != *stamp)
                });
                if changed {
                    return Step::Done(Reply::Nil);
                }
                let now = now_ms();
                let replies = queued
                    .iter()
                    .map(|call| {
                        script_calls::run(&mut states, call.clone(), now).unwrap_or_else(|e| e)
                    })
                    .collect();
                Step::Write(Reply::Array(replies), states)
            })
            .await;
        ran.unwrap_or_else(|reply| reply)
    }

    /// `EXEC`: the queued commands' replies, nil when a watched key
    /// changed, `EXECABORT` when one was refused while queuing.
    async fn exec(&self, client: &mut Client) -> Reply {
        let transaction = &mut client.transaction;
        let Some(queued) = transaction.queued.take() else {
            return err("ERR EXEC without MULTI");
        };
        let refused = std::mem::take(&mut transaction.refused);
        let watched = std::mem::take(&mut transaction.watched);
        let keys = std::mem::take(&mut transaction.keys);
        let keyless = std::mem::take(&mut transaction.keyless);
        if refused {
            return err("EXECABORT Transaction discarded because of previous errors.");
        }
        // Over one key or keys of one hash tag (the watched ones too), with
        // commands a script may call: all-or-nothing.
        let mut keys: Vec<Bytes> = keys.into_iter().collect();
        for (key, _) in &watched {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        if !keyless
            && !keys.is_empty()
            && keys.len() <= sessmesh::MAX_GROUP_KEYS
            && scripts::one_hash_tag(&keys).is_ok()
            && queued.iter().all(script_calls::supports)
        {
            return self.exec_on_keys(&keys, &queued, &watched).await;
        }
        // The watched keys are read together.
        let now = join_all(watched.iter().map(|(key, _)| self.newest_write(key))).await;
        for ((_, stamp), now) in watched.iter().zip(now) {
            match now {
                Ok(now) if now == *stamp => {}
                Ok(_) => return Reply::Nil,
                Err(reply) => return reply,
            }
        }
        let mut replies = Vec::with_capacity(queued.len());
        for call in queued {
            let reply = match call {
                Call::Transactions(TransactionCommand::Unwatch) => Reply::Ok,
                call => self.run_data(Some(&mut *client), call).await.0,
            };
            replies.push(reply);
        }
        Reply::Array(replies)
    }
}
