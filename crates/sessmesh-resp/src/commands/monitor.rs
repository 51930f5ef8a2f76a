//! `MONITOR`: every command this node's connections send, as Redis prints
//! it, to each connection that asked. Node-local, as in Redis Cluster: a
//! client that monitors one node sees the commands sent to that node, not
//! to the others (nor the replication between nodes).
//!
//! Lines go through a broadcast channel; formatting one costs nothing while
//! nobody monitors. A monitor that falls more than [`BACKLOG`] lines behind
//! skips the lines it missed rather than hold up the connections it
//! watches.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::broadcast;

use super::Client;

/// Lines kept for a monitor that is behind.
pub const BACKLOG: usize = 4096;

/// The monitors of one node.
#[derive(Debug)]
pub(super) struct Monitors(broadcast::Sender<Bytes>);

impl Default for Monitors {
    fn default() -> Self {
        Monitors(broadcast::channel(BACKLOG).0)
    }
}

impl Monitors {
    /// A new monitor: the lines of the commands sent from now on.
    pub(super) fn watch(&self) -> broadcast::Receiver<Bytes> {
        self.0.subscribe()
    }

    /// Sends the line of a command `client` sent, if anyone monitors.
    pub(super) fn feed(&self, client: &Client, args: &[Bytes]) {
        if self.0.receiver_count() == 0 {
            return;
        }
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let _ = self
            .0
            .send(line(since_epoch.as_micros(), client.db, client.peer, args));
    }
}

/// One monitor line, as Redis writes it:
/// `+1700000000.123456 [0 127.0.0.1:52100] "SET" "k" "v"` and CR LF.
/// The arguments of `AUTH` and `HELLO` are hidden.
fn line(micros: u128, db: u32, peer: Option<SocketAddr>, args: &[Bytes]) -> Bytes {
    let (secs, fraction) = (micros / 1_000_000, micros % 1_000_000);
    let from = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    let mut out = format!("+{secs}.{fraction:06} [{db} {from}]");
    let secret = args.first().is_some_and(|name| {
        name.eq_ignore_ascii_case(b"AUTH") || name.eq_ignore_ascii_case(b"HELLO")
    });
    for (i, arg) in args.iter().enumerate() {
        out.push(' ');
        if secret && i > 0 {
            out.push_str("\"(redacted)\"");
        } else {
            quote(arg, &mut out);
        }
    }
    out.push_str("\r\n");
    Bytes::from(out)
}

/// `arg` in double quotes, escaped as Redis's `sdscatrepr` does, so a line
/// never holds a CR or LF of its own.
fn quote(arg: &[u8], out: &mut String) {
    out.push('"');
    for &b in arg {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x07 => out.push_str("\\a"),
            0x08 => out.push_str("\\b"),
            b if b.is_ascii_graphic() || b == b' ' => out.push(char::from(b)),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&[u8]]) -> Vec<Bytes> {
        list.iter().map(|a| Bytes::copy_from_slice(a)).collect()
    }

    #[test]
    fn a_line_is_as_redis_writes_it() {
        let peer = "127.0.0.1:52100".parse().ok();
        let line = line(1_700_000_000_000_042, 3, peer, &args(&[b"SET", b"k", b"v"]));
        assert_eq!(
            &line[..],
            b"+1700000000.000042 [3 127.0.0.1:52100] \"SET\" \"k\" \"v\"\r\n"
        );
    }

    #[test]
    fn arguments_are_escaped_and_secrets_hidden() {
        let escaped = line(0, 0, None, &args(&[b"SET", b"a\"b\r\n\x01\\", b"x y"]));
        assert_eq!(
            &escaped[..],
            b"+0.000000 [0 unknown] \"SET\" \"a\\\"b\\r\\n\\x01\\\\\" \"x y\"\r\n"
        );
        let auth = line(0, 0, None, &args(&[b"auth", b"user", b"secret"]));
        assert!(!auth.windows(6).any(|w| w == b"secret"), "{auth:?}");
        assert!(auth.ends_with(b"\"auth\" \"(redacted)\" \"(redacted)\"\r\n"));
    }
}
