//! The connection: `AUTH`, `HELLO`, `CLIENT`.

use super::*;

impl Handler {
    pub(super) fn auth(&self, client: &mut Client, args: &[Bytes]) -> Reply {
        let (user, password) = match args {
            [password] => (None, password),
            [user, password] => (Some(user), password),
            _ => return syntax(),
        };
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

    pub(super) fn hello(&self, client: &mut Client, args: &[Bytes]) -> Reply {
        let mut protocol = client.protocol;
        let mut rest = args;
        if let Some((version, tail)) = rest.split_first() {
            protocol = match int(version) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return err("NOPROTO unsupported protocol version"),
                None => return err("ERR Protocol version is not an integer or out of range"),
            };
            rest = tail;
        }
        let mut name = None;
        while let Some((option, tail)) = rest.split_first() {
            if eq(option, "AUTH") && tail.len() >= 2 {
                let reply = self.auth(client, &tail[..2]);
                if reply.is_error() {
                    return reply;
                }
                rest = &tail[2..];
            } else if eq(option, "SETNAME") && !tail.is_empty() {
                name = Some(tail[0].clone());
                rest = &tail[1..];
            } else {
                return Reply::Error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(option)
                ));
            }
        }
        if !client.authenticated {
            return err(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
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

    pub(super) fn client_command(client: &mut Client, args: &[Bytes]) -> Reply {
        let sub = &args[0];
        if eq(sub, "ID") && args.len() == 1 {
            Reply::Int(i64::try_from(client.id).unwrap_or(i64::MAX))
        } else if eq(sub, "GETNAME") && args.len() == 1 {
            client.name.clone().map_or(Reply::Nil, Reply::Bulk)
        } else if eq(sub, "SETNAME") && args.len() == 2 {
            if args[1].iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                return err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            client.name = (!args[1].is_empty()).then(|| args[1].clone());
            Reply::Ok
        } else if eq(sub, "SETINFO") && args.len() == 3 {
            if eq(&args[1], "LIB-NAME") || eq(&args[1], "LIB-VER") {
                Reply::Ok
            } else {
                Reply::Error(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&args[1])
                ))
            }
        } else {
            Reply::Error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            ))
        }
    }
}
