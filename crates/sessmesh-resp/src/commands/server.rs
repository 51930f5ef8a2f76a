//! The server and introspection: `COMMAND`, `CONFIG`, `INFO`.

use super::table::COMMANDS;
use super::*;

impl Handler {
    pub(super) fn command_command(args: &[Bytes]) -> Reply {
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

    pub(super) fn config(args: &[Bytes]) -> Reply {
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

    pub(super) fn info(&self) -> Reply {
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
