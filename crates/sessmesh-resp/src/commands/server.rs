//! The server and introspection: `COMMAND`, `CONFIG`, `INFO`, `DBSIZE`,
//! and `FLUSHDB` and `FLUSHALL`, each one stamped clear the cluster keeps
//! (see `sessmesh::Node::clear`).

use sessmesh::MemoryReport;

use super::table::COMMANDS;
use super::*;

/// The server commands, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Command,
    Config,
    DbSize,
    FlushAll,
    FlushDb,
    Info,
}

/// A server command, its arguments parsed.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ServerCommand {
    /// `COMMAND`: every command's name and arity.
    ListCommands,
    /// `COMMAND COUNT`.
    CountCommands,
    /// `COMMAND DOCS [name ...]`: no docs are kept.
    CommandDocs,
    /// `COMMAND INFO [name ...]`: no details are kept, one nil per name.
    CommandInfo { names: usize },
    /// `CONFIG GET pattern [pattern ...]`, the patterns lower-cased.
    ConfigGet { patterns: Vec<Vec<u8>> },
    /// `CONFIG SET parameter value`, for the settings a client may change
    /// at run time here, kept on this node.
    ConfigSet(Setting),
    /// `INFO [section ...]`: every section, whichever are asked for.
    Info,
    /// `DBSIZE`: the keys of the client's database, in the whole cluster.
    DbSize { db: u32 },
    /// `FLUSHDB` (`Some`: the client's database) and `FLUSHALL` (`None`),
    /// with `ASYNC` or `SYNC`, which are the same here.
    Flush { db: Option<u32> },
}

impl ServerCommand {
    /// Parses the arguments after the name, their number already checked.
    pub(super) fn parse(op: Op, args: &[Bytes], db: u32) -> Result<Self, Reply> {
        match op {
            Op::Command => match args.first() {
                None => Ok(ServerCommand::ListCommands),
                Some(sub) if eq(sub, "COUNT") => Ok(ServerCommand::CountCommands),
                Some(sub) if eq(sub, "DOCS") => Ok(ServerCommand::CommandDocs),
                Some(sub) if eq(sub, "INFO") => Ok(ServerCommand::CommandInfo {
                    names: args.len() - 1,
                }),
                Some(sub) => Err(Reply::Error(format!(
                    "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                    String::from_utf8_lossy(sub)
                ))),
            },
            Op::Config if eq(&args[0], "SET") => parse_config_set(&args[1..]),
            Op::Config => {
                if !eq(&args[0], "GET") {
                    return Err(Reply::Error(format!(
                        "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                        String::from_utf8_lossy(&args[0])
                    )));
                }
                if args.len() < 2 {
                    return Err(arity("config|get"));
                }
                Ok(ServerCommand::ConfigGet {
                    patterns: args[1..].iter().map(|p| p.to_ascii_lowercase()).collect(),
                })
            }
            Op::Info => Ok(ServerCommand::Info),
            Op::FlushAll | Op::FlushDb => match args {
                [] => Ok(()),
                [mode] if eq(mode, "ASYNC") || eq(mode, "SYNC") => Ok(()),
                _ => Err(syntax()),
            }
            .map(|()| ServerCommand::Flush {
                db: (op == Op::FlushDb).then_some(db),
            }),
            Op::DbSize => Ok(ServerCommand::DbSize { db }),
        }
    }

    pub(super) async fn run(self, handler: &Handler) -> Reply {
        match self {
            ServerCommand::Flush { db } => match handler.node.clear(flushed(db)).await {
                Ok(()) => Reply::Ok,
                Err(e) => failed(&e),
            },
            ServerCommand::ListCommands => Reply::Array(
                COMMANDS
                    .iter()
                    .map(|(name, arity, ..)| {
                        Reply::Array(vec![
                            Reply::bulk(name.to_ascii_lowercase()),
                            Reply::Int(i64::from(*arity)),
                        ])
                    })
                    .collect(),
            ),
            ServerCommand::CountCommands => {
                Reply::Int(i64::try_from(COMMANDS.len()).unwrap_or(i64::MAX))
            }
            ServerCommand::CommandDocs => Reply::Map(Vec::new()),
            ServerCommand::CommandInfo { names } => Reply::Array(vec![Reply::Nil; names]),
            ServerCommand::ConfigGet { patterns } => match handler.node.status().await {
                Ok(status) => config_get(&patterns, &handler.settings_now(&status.memory)),
                Err(e) => failed(&e),
            },
            ServerCommand::ConfigSet(Setting::MaxMemory(bytes)) => {
                match handler.node.set_max_memory(bytes).await {
                    Ok(()) => Reply::Ok,
                    Err(e) => failed(&e),
                }
            }
            ServerCommand::ConfigSet(Setting::MaxMemoryPolicy(policy)) => {
                match handler.node.set_eviction_policy(policy).await {
                    Ok(()) => Reply::Ok,
                    Err(e) => failed(&e),
                }
            }
            ServerCommand::ConfigSet(Setting::NotifyKeyspaceEvents(flags)) => {
                handler.set_notify_keyspace_events(flags);
                Reply::Ok
            }
            ServerCommand::ConfigSet(Setting::LuaTimeLimit(ms)) => {
                handler.scripts.set_time_limit_ms(ms);
                Reply::Ok
            }
            ServerCommand::Info => match handler.node.status().await {
                Ok(status) => handler.info(&status.memory),
                Err(e) => failed(&e),
            },
            ServerCommand::DbSize { db } => handler.dbsize(db).await.unwrap_or_else(|e| e),
        }
    }
}

/// `INFO`'s memory section: Redis's names for what the node counts
/// (`used_memory`; `mem_not_counted_for_evict`, what the allocator holds
/// beyond the node's own count, which the bound leaves out; `maxmemory`,
/// `maxmemory_policy`, `evicted_keys`: the evictions this node
/// coordinated), then this node's own break-down.
fn memory_lines(memory: &MemoryReport) -> String {
    format!(
        "used_memory:{}\r\nmem_not_counted_for_evict:{}\r\nmaxmemory:{}\r\n\
         maxmemory_policy:{}\r\nevicted_keys:{}\r\n\
         sessmesh_memory_sessions:{}\r\nsessmesh_memory_tables:{}\r\n\
         sessmesh_memory_hints:{}\r\nsessmesh_memory_consensus:{}\r\n\
         sessmesh_memory_evictions:{}\r\n",
        memory.used(),
        memory.other,
        memory.max,
        memory.policy,
        memory.evicted_keys,
        memory.sessions.entries,
        memory.sessions.tables,
        memory.hints,
        memory.consensus,
        memory.evictions,
    )
}

/// The keys `FLUSHDB` in database `db` clears (`None`: `FLUSHALL`, every
/// key).
fn flushed(db: Option<u32>) -> sessmesh::KeyRange {
    match db {
        None => sessmesh::KeyRange {
            prefix: Bytes::new(),
            except: Vec::new(),
        },
        Some(0) => sessmesh::KeyRange {
            prefix: Bytes::new(),
            except: vec![Bytes::from_static(databases::RESERVED)],
        },
        Some(db) => sessmesh::KeyRange {
            prefix: Bytes::from(databases::prefix(db)),
            except: Vec::new(),
        },
    }
}

/// A setting `CONFIG SET` changes.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Setting {
    /// `notify-keyspace-events`: the event classes, as given.
    NotifyKeyspaceEvents(String),
    /// `maxmemory`, bytes.
    MaxMemory(usize),
    /// `maxmemory-policy noeviction`, the one carried out.
    MaxMemoryPolicy(sessmesh::EvictionPolicy),
    /// `lua-time-limit`, ms: how long a script may run.
    LuaTimeLimit(u64),
}

/// `CONFIG SET parameter value`: `notify-keyspace-events`, with the flags
/// Redis knows, and `lua-time-limit`; any other parameter is refused as
/// Redis refuses an unknown one.
fn parse_config_set(args: &[Bytes]) -> Result<ServerCommand, Reply> {
    let [name, value] = args else {
        return Err(arity("config|set"));
    };
    let failed = |name: &str, why: String| {
        Reply::Error(format!(
            "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
        ))
    };
    if eq(name, "maxmemory") {
        return sessmesh::parse_bytes(&String::from_utf8_lossy(value))
            .map(|bytes| ServerCommand::ConfigSet(Setting::MaxMemory(bytes)))
            .map_err(|why| failed("maxmemory", why));
    }
    if eq(name, "maxmemory-policy") {
        let policy: sessmesh::EvictionPolicy = String::from_utf8_lossy(value)
            .parse()
            .map_err(|why| failed("maxmemory-policy", why))?;
        return Ok(ServerCommand::ConfigSet(Setting::MaxMemoryPolicy(policy)));
    }
    if eq(name, "lua-time-limit") {
        return match int(value).and_then(|ms| u64::try_from(ms).ok()) {
            Some(ms) if ms > 0 => Ok(ServerCommand::ConfigSet(Setting::LuaTimeLimit(ms))),
            _ => Err(Reply::Error(format!(
                "ERR CONFIG SET failed (possibly related to argument 'lua-time-limit') - argument must be a positive number of milliseconds ('{}')",
                String::from_utf8_lossy(value)
            ))),
        };
    }
    if !eq(name, "notify-keyspace-events") {
        return Err(Reply::Error(format!(
            "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
            String::from_utf8_lossy(name)
        )));
    }
    let flags = String::from_utf8_lossy(value).into_owned();
    if !flags.chars().all(|c| "KEg$lshzxeAtmdn".contains(c)) {
        return Err(Reply::Error(format!(
            "ERR CONFIG SET failed (possibly related to argument 'notify-keyspace-events') - Invalid event class character. Use 'Ag$lshzxeKEtmdn'. ('{flags}')"
        )));
    }
    Ok(ServerCommand::ConfigSet(Setting::NotifyKeyspaceEvents(
        flags,
    )))
}

/// The few settings clients ask for, with the values that tell them what
/// this node does not do, as `CONFIG GET` reports them.
fn config_get(patterns: &[Vec<u8>], known: &[(&str, String)]) -> Reply {
    let pairs = known
        .iter()
        .filter(|(name, _)| patterns.iter().any(|p| glob::matches(p, name.as_bytes())))
        .map(|(name, value)| (Reply::bulk(name), Reply::bulk(value)))
        .collect();
    Reply::Map(pairs)
}

impl Handler {
    /// The settings `CONFIG GET` reports, with their values now.
    fn settings_now(&self, memory: &MemoryReport) -> Vec<(&'static str, String)> {
        vec![
            ("appendonly", "no".to_owned()),
            ("databases", self.settings.databases.to_string()),
            ("lua-time-limit", self.scripts.time_limit_ms().to_string()),
            ("maxmemory", memory.max.to_string()),
            ("maxmemory-policy", memory.policy.to_string()),
            ("notify-keyspace-events", self.notify_keyspace_events()),
            ("save", String::new()),
        ]
    }

    /// `notify-keyspace-events` as `CONFIG SET` left it (empty at start).
    pub fn notify_keyspace_events(&self) -> String {
        self.notify_keyspace_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_notify_keyspace_events(&self, flags: String) {
        *self
            .notify_keyspace_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = flags;
    }

    /// `INFO`'s keyspace lines: `db<n>:keys=<count>` for each database
    /// with keys this node stores (database 0 always).
    fn keyspace(&self) -> String {
        // Counted in place: INFO costs no memory however many keys there are.
        let mut counts = std::collections::BTreeMap::from([(0, 0usize)]);
        for partition in 0..self.node.partition_count() {
            self.node.for_each_local_key(partition, |key| {
                if let Some(db) = databases::db_of(key) {
                    *counts.entry(db).or_default() += 1;
                }
            });
        }
        counts
            .into_iter()
            .filter(|&(db, n)| db == 0 || n > 0)
            .map(|(db, n)| format!("db{db}:keys={n}\r\n"))
            .collect()
    }

    fn info(&self, memory: &MemoryReport) -> Reply {
        let me = self.node.me();
        let text = format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nsessmesh_version:{}\r\nredis_mode:standalone\r\nsessmesh_node:{}\r\nsessmesh_peer_addr:{}\r\n\r\n# Memory\r\n{}\r\n# Keyspace\r\n{}",
            env!("CARGO_PKG_VERSION"),
            me.name,
            me.addr,
            memory_lines(memory),
            self.keyspace(),
        );
        Reply::Bulk(Bytes::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::*;

    #[test]
    fn server_commands_parse() {
        assert_eq!(
            parse("COMMAND INFO get set"),
            Ok(Call::Server(ServerCommand::CommandInfo { names: 2 }))
        );
        assert_eq!(
            parse("CONFIG get MAX*"),
            Ok(Call::Server(ServerCommand::ConfigGet {
                patterns: vec![b"max*".to_vec()],
            }))
        );
        assert_eq!(
            config_get(
                &[b"max*".to_vec(), b"save".to_vec()],
                &[
                    ("databases", "16".into()),
                    ("maxmemory", "0".into()),
                    ("save", String::new())
                ]
            ),
            Reply::Map(vec![
                (Reply::bulk("maxmemory"), Reply::bulk("0")),
                (Reply::bulk("save"), Reply::bulk("")),
            ])
        );
        assert_eq!(
            config_get(
                &[b"notify*".to_vec()],
                &[("notify-keyspace-events", "Egx".into())]
            ),
            Reply::Map(vec![(
                Reply::bulk("notify-keyspace-events"),
                Reply::bulk("Egx")
            )])
        );
        // What Spring Session sends; flags Redis does not know are refused.
        assert_eq!(
            parse("CONFIG set notify-keyspace-events Egx"),
            Ok(Call::Server(ServerCommand::ConfigSet(
                Setting::NotifyKeyspaceEvents("Egx".into())
            )))
        );
        assert_eq!(
            parse("CONFIG SET notify-keyspace-events "),
            Ok(Call::Server(ServerCommand::ConfigSet(
                Setting::NotifyKeyspaceEvents(String::new())
            )))
        );
        assert!(matches!(
            parse("CONFIG SET notify-keyspace-events Eq"),
            Err(Reply::Error(e)) if e.contains("Invalid event class character")
        ));
        assert_eq!(
            parse("CONFIG SET lua-time-limit 100"),
            Ok(Call::Server(ServerCommand::ConfigSet(
                Setting::LuaTimeLimit(100)
            )))
        );
        assert!(matches!(
            parse("CONFIG SET lua-time-limit -1"),
            Err(Reply::Error(e)) if e.contains("'lua-time-limit'")
        ));
        assert_eq!(
            parse("CONFIG SET notify-keyspace-events"),
            Err(err(
                "ERR wrong number of arguments for 'config|set' command"
            ))
        );
    }
}
