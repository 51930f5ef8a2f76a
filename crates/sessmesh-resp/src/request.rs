//! Requests: arrays of bulk strings (decoded by `redis-protocol`), or inline
//! commands, checked against the size limits before anything is buffered
//! past them.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::{BytesFrame, Resp2Frame};

/// Size limits on what a client may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest bulk string (key, field or value) accepted, in bytes.
    pub max_bulk_bytes: usize,
    /// The most elements a request array may have.
    pub max_array_len: usize,
    /// The longest inline command line (a request not in RESP form).
    pub max_inline_bytes: usize,
    /// The most bytes one request may declare in all, so that one
    /// connection cannot make the node buffer `max_array_len` values of
    /// `max_bulk_bytes` each.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_bytes: 64 * 1024 * 1024,
            max_array_len: 1024 * 1024,
            max_inline_bytes: 64 * 1024,
            max_request_bytes: 512 * 1024 * 1024,
        }
    }
}

/// What the front of a connection's buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request: the command name and its arguments.
    Command(Vec<Bytes>),
    /// An empty inline line, which Redis ignores.
    Empty,
    /// Not a whole request yet.
    Incomplete,
    /// A request Redis would answer with this error and then close the
    /// connection: it cannot tell where the next request starts.
    Fatal(String),
}

/// Reads the first request off `buf`, consuming it when whole.
pub fn next_request(buf: &mut BytesMut, limits: &Limits) -> Parsed {
    match buf.first() {
        None => Parsed::Incomplete,
        Some(b'*') => {
            if let Err(error) = check_lengths(buf, limits) {
                return Parsed::Fatal(error);
            }
            match redis_protocol::resp2::decode::decode_bytes_mut(buf) {
                Ok(None) => Parsed::Incomplete,
                Ok(Some((frame, _, _))) => command_of(frame),
                Err(e) => Parsed::Fatal(format!("ERR Protocol error: {}", e.details())),
            }
        }
        Some(_) => inline(buf, limits),
    }
}

fn command_of(frame: BytesFrame) -> Parsed {
    match frame {
        BytesFrame::Array(items) => {
            let mut args = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    BytesFrame::BulkString(b) => args.push(b),
                    other => {
                        return Parsed::Fatal(format!(
                            "ERR Protocol error: expected '$', got '{}'",
                            char::from(other.kind().to_byte())
                        ));
                    }
                }
            }
            if args.is_empty() {
                Parsed::Empty
            } else {
                Parsed::Command(args)
            }
        }
        // `*-1`, a null array.
        _ => Parsed::Empty,
    }
}

/// The number after a type byte, up to CRLF: `None` while the line is not
/// whole, `Err` when it is not a number.
fn header(buf: &[u8], at: usize) -> Option<Result<(i64, usize), ()>> {
    let line_end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
    let digits = std::str::from_utf8(&buf[at + 1..line_end]).map_err(|_| ());
    Some(
        digits
            .and_then(|d| d.parse().map_err(|_| ()))
            .map(|n| (n, line_end + 2)),
    )
}

/// Walks the array and bulk headers received so far, so that a length over
/// the limits is refused before its bytes are waited for.
fn check_lengths(buf: &[u8], limits: &Limits) -> Result<(), String> {
    let invalid_multibulk = || "ERR Protocol error: invalid multibulk length".to_string();
    let invalid_bulk = || "ERR Protocol error: invalid bulk length".to_string();
    let (count, mut at) = match header(buf, 0) {
        None if buf.len() > limits.max_inline_bytes => return Err(invalid_multibulk()),
        None => return Ok(()),
        Some(Err(())) => return Err(invalid_multibulk()),
        Some(Ok(found)) => found,
    };
    if count > i64::try_from(limits.max_array_len).unwrap_or(i64::MAX) {
        return Err(invalid_multibulk());
    }
    let mut declared: usize = 0;
    for _ in 0..count.max(0) {
        match buf.get(at) {
            None => return Ok(()),
            Some(b'$') => {}
            // Not a bulk string: the decoder says what it is.
            Some(_) => return Ok(()),
        }
        let (len, body) = match header(buf, at) {
            None if buf.len() - at > 64 => return Err(invalid_bulk()),
            None => return Ok(()),
            Some(Err(())) => return Err(invalid_bulk()),
            Some(Ok(found)) => found,
        };
        let len = usize::try_from(len).map_err(|_| invalid_bulk())?;
        if len > limits.max_bulk_bytes {
            return Err(invalid_bulk());
        }
        declared = declared.saturating_add(len);
        if declared > limits.max_request_bytes {
            return Err("ERR Protocol error: request larger than max_request_bytes".to_string());
        }
        at = body + len + 2;
    }
    Ok(())
}

/// An inline command: space-separated words on one line (as typed into a
/// telnet session), with Redis's quoting left out.
fn inline(buf: &mut BytesMut, limits: &Limits) -> Parsed {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > limits.max_inline_bytes {
            Parsed::Fatal("ERR Protocol error: too big inline request".into())
        } else {
            Parsed::Incomplete
        };
    };
    let line = buf.split_to(newline + 1).freeze();
    let text = line.strip_suffix(b"\n").unwrap_or(&line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let args: Vec<Bytes> = text
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| line.slice_ref(w))
        .collect();
    if args.is_empty() {
        Parsed::Empty
    } else {
        Parsed::Command(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> (Parsed, usize) {
        let mut buf = BytesMut::from(bytes);
        let parsed = next_request(&mut buf, &Limits::default());
        (parsed, buf.len())
    }

    fn command(words: &[&str]) -> Parsed {
        Parsed::Command(
            words
                .iter()
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn decodes_arrays_pipelines_and_inline_commands() {
        let (parsed, left) = parse(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(parsed, command(&["GET", "k"]));
        assert_eq!(left, 14, "the pipelined PING stays buffered");
        assert_eq!(parse(b"*2\r\n$3\r\nGET\r\n$1\r\n").0, Parsed::Incomplete);
        assert_eq!(parse(b"PING  hello\r\n").0, command(&["PING", "hello"]));
        assert_eq!(parse(b"\r\n").0, Parsed::Empty);
    }

    #[test]
    fn refuses_lengths_over_the_limits_before_the_bytes_arrive() {
        let limits = Limits::default();
        let huge_bulk = format!("*2\r\n$3\r\nSET\r\n${}\r\n", limits.max_bulk_bytes + 1);
        assert_eq!(
            parse(huge_bulk.as_bytes()).0,
            Parsed::Fatal("ERR Protocol error: invalid bulk length".into())
        );
        let huge_array = format!("*{}\r\n", limits.max_array_len + 1);
        assert_eq!(
            parse(huge_array.as_bytes()).0,
            Parsed::Fatal("ERR Protocol error: invalid multibulk length".into())
        );
        assert_eq!(
            parse(b"*x\r\n").0,
            Parsed::Fatal("ERR Protocol error: invalid multibulk length".into())
        );
        assert_eq!(
            parse(&vec![b'a'; limits.max_inline_bytes + 1]).0,
            Parsed::Fatal("ERR Protocol error: too big inline request".into())
        );
    }

    #[test]
    fn a_request_over_its_total_size_limit_is_refused() {
        let limits = Limits {
            max_bulk_bytes: 100,
            max_request_bytes: 150,
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$100\r\n"[..]);
        buf.extend_from_slice(&[b'k'; 100]);
        buf.extend_from_slice(b"\r\n$100\r\n");
        assert_eq!(
            next_request(&mut buf, &limits),
            Parsed::Fatal("ERR Protocol error: request larger than max_request_bytes".into())
        );
    }

    #[test]
    fn junk_inside_an_array_is_a_protocol_error() {
        let (parsed, _) = parse(b"*1\r\n:12\r\n");
        assert_eq!(
            parsed,
            Parsed::Fatal("ERR Protocol error: expected '$', got ':'".into())
        );
        assert!(matches!(parse(b"*1\r\n$x\r\n").0, Parsed::Fatal(_)));
    }
}
