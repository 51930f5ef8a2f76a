//! The connection: `AUTH`, `HELLO`, `CLIENT`, `PING`, `ECHO`, `SELECT`,
//! `MONITOR`, `QUIT`.

use super::*;

/// The connection's commands, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Auth,
    Client,
    Echo,
    Hello,
    Monitor,
    Ping,
    Quit,
    Select,
}

/// A connection command, its arguments parsed.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ConnectionCommand {
    /// `AUTH [user] password`.
    Auth {
        user: Option<Bytes>,
        password: Bytes,
    },
    /// `HELLO [protover [option ...]]`.
    Hello {
        /// The protocol to switch to; `None` keeps the connection's.
        protocol: Option<Protocol>,
        options: Vec<HelloOption>,
    },
    /// `CLIENT subcommand ...`.
    Client(ClientCommand),
    /// `PING [message]`.
    Ping { message: Option<Bytes> },
    /// `ECHO message`.
    Echo { message: Bytes },
    /// `SELECT index`: only database 0 exists.
    Select { index: i64 },
    /// `QUIT`.
    Quit,
    /// `MONITOR`.
    Monitor,
}

/// An option of `HELLO`, in the order given: they take effect in that
/// order, and the first that fails is the reply.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum HelloOption {
    /// `AUTH user password`, checked when reached: one that passes
    /// authenticates the connection even if a later option fails.
    Auth { user: Bytes, password: Bytes },
    /// `SETNAME name`, kept for when every option has passed.
    SetName(Bytes),
    /// A word that is not an option (or lacks its arguments): the syntax
    /// error it gets is the reply once the options before it have run. It
    /// ends the list.
    Unknown(Bytes),
}

/// `CLIENT`'s subcommands.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ClientCommand {
    /// `CLIENT ID`.
    Id,
    /// `CLIENT GETNAME`.
    GetName,
    /// `CLIENT SETNAME name`: `None` (an empty name) clears it.
    SetName(Option<Bytes>),
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value`, accepted and not kept.
    SetInfo,
}

impl Client {
    /// Whether this connection may run `command` yet: before `AUTH`, only
    /// `AUTH`, `HELLO` and `QUIT`.
    pub(super) fn may_run(&self, command: Command) -> Result<(), Reply> {
        let before_auth = matches!(
            command.family(),
            Family::Connection(Op::Auth | Op::Hello | Op::Quit)
        );
        if self.authenticated || before_auth {
            Ok(())
        } else {
            Err(err("NOAUTH Authentication required."))
        }
    }
}

impl ConnectionCommand {
    /// Parses the arguments after the name, their number already checked.
    pub(super) fn parse(op: Op, args: &[Bytes]) -> Result<Self, Reply> {
        Ok(match op {
            Op::Auth => match args {
                [password] => ConnectionCommand::Auth {
                    user: None,
                    password: password.clone(),
                },
                [user, password] => ConnectionCommand::Auth {
                    user: Some(user.clone()),
                    password: password.clone(),
                },
                _ => return Err(syntax()),
            },
            Op::Hello => Self::parse_hello(args)?,
            Op::Client => ConnectionCommand::Client(ClientCommand::parse(args)?),
            Op::Ping => match args {
                [] => ConnectionCommand::Ping { message: None },
                [message] => ConnectionCommand::Ping {
                    message: Some(message.clone()),
                },
                _ => return Err(arity("ping")),
            },
            Op::Echo => ConnectionCommand::Echo {
                message: args[0].clone(),
            },
            Op::Select => ConnectionCommand::Select {
                index: int(&args[0]).ok_or_else(not_integer)?,
            },
            Op::Quit => ConnectionCommand::Quit,
            Op::Monitor => ConnectionCommand::Monitor,
        })
    }

    fn parse_hello(args: &[Bytes]) -> Result<Self, Reply> {
        let mut protocol = None;
        let mut rest = args;
        if let Some((version, tail)) = rest.split_first() {
            protocol = Some(match int(version) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return Err(err("NOPROTO unsupported protocol version")),
                None => {
                    return Err(err(
                        "ERR Protocol version is not an integer or out of range",
                    ));
                }
            });
            rest = tail;
        }
        let mut options = Vec::new();
        while let Some((option, tail)) = rest.split_first() {
            if eq(option, "AUTH") && tail.len() >= 2 {
                options.push(HelloOption::Auth {
                    user: tail[0].clone(),
                    password: tail[1].clone(),
                });
                rest = &tail[2..];
            } else if eq(option, "SETNAME") && !tail.is_empty() {
                options.push(HelloOption::SetName(tail[0].clone()));
                rest = &tail[1..];
            } else {
                options.push(HelloOption::Unknown(option.clone()));
                break;
            }
        }
        Ok(ConnectionCommand::Hello { protocol, options })
    }

    /// Runs the command on `client`'s connection.
    pub(super) fn run(self, handler: &Handler, client: &mut Client) -> (Reply, Flow) {
        let reply = match self {
            ConnectionCommand::Quit => return (Reply::Ok, Flow::Close),
            ConnectionCommand::Monitor => return (Reply::Ok, Flow::Monitor),
            ConnectionCommand::Auth { user, password } => {
                handler.auth(client, user.as_ref(), &password)
            }
            ConnectionCommand::Hello { protocol, options } => {
                handler.hello(client, protocol, options)
            }
            ConnectionCommand::Client(command) => command.run(client),
            ConnectionCommand::Ping { message: None } => Reply::Simple("PONG"),
            ConnectionCommand::Ping {
                message: Some(message),
            }
            | ConnectionCommand::Echo { message } => Reply::Bulk(message),
            ConnectionCommand::Select { index } => {
                match u32::try_from(index)
                    .ok()
                    .filter(|&db| db < handler.settings.databases)
                {
                    Some(db) => {
                        client.db = db;
                        Reply::Ok
                    }
                    None => err("ERR DB index is out of range"),
                }
            }
        };
        (reply, Flow::Continue)
    }
}

impl ClientCommand {
    fn parse(args: &[Bytes]) -> Result<Self, Reply> {
        let sub = &args[0];
        if eq(sub, "ID") && args.len() == 1 {
            Ok(ClientCommand::Id)
        } else if eq(sub, "GETNAME") && args.len() == 1 {
            Ok(ClientCommand::GetName)
        } else if eq(sub, "SETNAME") && args.len() == 2 {
            if args[1].iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                return Err(err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            Ok(ClientCommand::SetName(
                (!args[1].is_empty()).then(|| args[1].clone()),
            ))
        } else if eq(sub, "SETINFO") && args.len() == 3 {
            if eq(&args[1], "LIB-NAME") || eq(&args[1], "LIB-VER") {
                Ok(ClientCommand::SetInfo)
            } else {
                Err(Reply::Error(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&args[1])
                )))
            }
        } else {
            Err(Reply::Error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            )))
        }
    }

    fn run(self, client: &mut Client) -> Reply {
        match self {
            ClientCommand::Id => Reply::Int(i64::try_from(client.id).unwrap_or(i64::MAX)),
            ClientCommand::GetName => client.name.clone().map_or(Reply::Nil, Reply::Bulk),
            ClientCommand::SetName(name) => {
                client.name = name;
                Reply::Ok
            }
            ClientCommand::SetInfo => Reply::Ok,
        }
    }
}

impl Handler {
    fn auth(&self, client: &mut Client, user: Option<&Bytes>, password: &Bytes) -> Reply {
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

    fn hello(
        &self,
        client: &mut Client,
        protocol: Option<Protocol>,
        options: Vec<HelloOption>,
    ) -> Reply {
        let mut name = None;
        for option in options {
            match option {
                HelloOption::Auth { user, password } => {
                    let reply = self.auth(client, Some(&user), &password);
                    if reply.is_error() {
                        return reply;
                    }
                }
                HelloOption::SetName(new) => name = Some(new),
                HelloOption::Unknown(option) => {
                    return Reply::Error(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&option)
                    ));
                }
            }
        }
        if !client.authenticated {
            return err(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        let protocol = protocol.unwrap_or(client.protocol);
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{b, parse};
    use super::*;

    #[test]
    fn hello_keeps_its_options_in_order_up_to_the_first_bad_one() {
        assert_eq!(
            parse("HELLO 3 AUTH default pw SETNAME app BAD SETNAME other"),
            Ok(Call::Connection(ConnectionCommand::Hello {
                protocol: Some(Protocol::Resp3),
                options: vec![
                    HelloOption::Auth {
                        user: b("default"),
                        password: b("pw"),
                    },
                    HelloOption::SetName(b("app")),
                    HelloOption::Unknown(b("BAD")),
                ],
            }))
        );
        assert_eq!(
            parse("HELLO 2 AUTH default"),
            Ok(Call::Connection(ConnectionCommand::Hello {
                protocol: Some(Protocol::Resp2),
                options: vec![HelloOption::Unknown(b("AUTH"))],
            }))
        );
    }

    #[test]
    fn client_subcommands_parse() {
        assert_eq!(
            parse("CLIENT SETNAME "),
            Ok(Call::Connection(ConnectionCommand::Client(
                ClientCommand::SetName(None)
            )))
        );
        assert_eq!(
            parse("client setinfo lib-ver 1.0"),
            Ok(Call::Connection(ConnectionCommand::Client(
                ClientCommand::SetInfo
            )))
        );
    }
}
