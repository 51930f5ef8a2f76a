//! Replies, and their encoding in RESP2 or RESP3 through `redis-protocol`.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;

/// The protocol a connection speaks: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, every connection's start.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// A reply, before it is encoded for a connection's protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A status line.
    Simple(&'static str),
    /// A status line made at run time (a script's `redis.status_reply`).
    Status(String),
    /// An error line, with its code first (`ERR ...`, `WRONGTYPE ...`).
    Error(String),
    /// An integer.
    Int(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// No value: a nil bulk string in RESP2, `_` in RESP3.
    Nil,
    /// An array.
    Array(Vec<Reply>),
    /// A map: a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// An error reply from its code and message: `Reply::error("ERR", "syntax error")`.
    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    /// A bulk string copied from `text`.
    pub fn bulk(text: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(text.as_ref()))
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    fn into_resp2(self) -> Frame2 {
        match self {
            Reply::Ok => Frame2::SimpleString(Bytes::from_static(b"OK")),
            Reply::Simple(s) => Frame2::SimpleString(Bytes::from_static(s.as_bytes())),
            Reply::Status(s) => Frame2::SimpleString(Bytes::from(one_line(s))),
            Reply::Error(e) => Frame2::Error(one_line(e).into()),
            Reply::Int(i) => Frame2::Integer(i),
            Reply::Bulk(b) => Frame2::BulkString(b),
            Reply::Nil => Frame2::Null,
            Reply::Array(items) => {
                Frame2::Array(items.into_iter().map(Reply::into_resp2).collect())
            }
            Reply::Map(pairs) => Frame2::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| [k.into_resp2(), v.into_resp2()])
                    .collect(),
            ),
        }
    }

    fn into_resp3(self) -> Frame3 {
        match self {
            Reply::Ok => Frame3::SimpleString {
                data: Bytes::from_static(b"OK"),
                attributes: None,
            },
            Reply::Simple(s) => Frame3::SimpleString {
                data: Bytes::from_static(s.as_bytes()),
                attributes: None,
            },
            Reply::Status(s) => Frame3::SimpleString {
                data: Bytes::from(one_line(s)),
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: one_line(e).into(),
                attributes: None,
            },
            Reply::Int(i) => Frame3::Number {
                data: i,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b,
                attributes: None,
            },
            Reply::Nil => Frame3::Null,
            Reply::Array(items) => Frame3::Array {
                data: items.into_iter().map(Reply::into_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => Frame3::Map {
                data: pairs
                    .into_iter()
                    .map(|(k, v)| (k.into_resp3(), v.into_resp3()))
                    .collect(),
                attributes: None,
            },
        }
    }

    /// Appends the encoded reply to `out`.
    pub fn encode(self, protocol: Protocol, out: &mut BytesMut) {
        // Encoding a well-formed frame into a growing buffer cannot fail;
        // were it to, the client would see a missing reply, not bad bytes.
        let result = match protocol {
            Protocol::Resp2 => {
                redis_protocol::resp2::encode::extend_encode(out, &self.into_resp2(), false)
            }
            Protocol::Resp3 => redis_protocol::resp3::encode::complete::extend_encode(
                out,
                &self.into_resp3(),
                false,
            ),
        };
        if let Err(e) = result {
            tracing::error!("a reply could not be encoded: {e}");
        }
    }
}

/// A status or error line as Redis sends one: carriage returns and line
/// feeds (from a client's arguments, or a script's reply) become spaces,
/// so the line cannot break the framing of the replies after it.
fn one_line(mut text: String) -> String {
    if text.contains(['\r', '\n']) {
        text = text.replace(['\r', '\n'], " ");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: Reply, protocol: Protocol) -> String {
        let mut out = BytesMut::new();
        reply.encode(protocol, &mut out);
        String::from_utf8(out.to_vec()).expect("text")
    }

    #[test]
    fn encodes_as_redis_does_in_both_protocols() {
        assert_eq!(encoded(Reply::Ok, Protocol::Resp2), "+OK\r\n");
        assert_eq!(encoded(Reply::Nil, Protocol::Resp2), "$-1\r\n");
        assert_eq!(encoded(Reply::Nil, Protocol::Resp3), "_\r\n");
        assert_eq!(encoded(Reply::Int(-2), Protocol::Resp3), ":-2\r\n");
        assert_eq!(
            encoded(Reply::error("ERR syntax error"), Protocol::Resp2),
            "-ERR syntax error\r\n"
        );
        // A line break in an error or a status would end the line early.
        assert_eq!(
            encoded(Reply::error("ERR a\r\nb\nc"), Protocol::Resp2),
            "-ERR a  b c\r\n"
        );
        assert_eq!(
            encoded(Reply::Status("x\ny".into()), Protocol::Resp3),
            "+x y\r\n"
        );
        let map = || Reply::Map(vec![(Reply::bulk("f"), Reply::bulk("v"))]);
        assert_eq!(
            encoded(map(), Protocol::Resp2),
            "*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
        );
        assert_eq!(
            encoded(map(), Protocol::Resp3),
            "%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
        );
    }
}
