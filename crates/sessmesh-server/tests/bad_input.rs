//! Bad input from clients, over raw TCP against one `sessmesh serve`: Redis's
//! error replies, the connection closed where Redis closes it and kept where
//! Redis keeps it, and everyone else still served.
#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{Server, start};

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.resp).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends `request` and reads until `expected` bytes arrived (or the
/// connection closed).
fn exchange(stream: &mut TcpStream, request: &[u8], expected: usize) -> String {
    stream.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < expected {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the server closed the connection.
fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Ok(0))
}

fn ping(server: &Server) -> String {
    exchange(&mut connect(server), b"*1\r\n$4\r\nPING\r\n", 7)
}

#[test]
fn malformed_or_oversized_requests_close_only_their_connection() {
    let server = start(&[
        "--development",
        "--max-bulk-bytes",
        "1024",
        "--max-array-len",
        "8",
    ]);
    let mut bystander = connect(&server);
    assert_eq!(
        exchange(&mut bystander, b"*1\r\n$4\r\nPING\r\n", 7),
        "+PONG\r\n"
    );

    let cases: [(&[u8], &str); 4] = [
        (
            b"*1\r\n:12\r\n",
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"*x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*9\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
    ];
    for (request, reply) in cases {
        let mut stream = connect(&server);
        assert_eq!(exchange(&mut stream, request, reply.len()), reply);
        assert!(closed(&mut stream), "closed after {request:?}");
    }
    // A value at the limit is fine.
    let value = "v".repeat(1024);
    let set = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1024\r\n{value}\r\n");
    assert_eq!(
        exchange(&mut connect(&server), set.as_bytes(), 5),
        "+OK\r\n"
    );

    // The others were served throughout.
    let expected = format!("$1024\r\n{value}\r\n");
    let got = exchange(
        &mut bystander,
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        expected.len(),
    );
    assert_eq!(got, expected);
    assert_eq!(ping(&server), "+PONG\r\n");
}

#[test]
fn unknown_commands_and_wrong_arity_keep_the_connection() {
    let server = start(&["--development"]);
    let mut stream = connect(&server);
    let reply = "-ERR unknown command 'NOPE', with args beginning with: 'a' \r\n";
    assert_eq!(
        exchange(&mut stream, b"*2\r\n$4\r\nNOPE\r\n$1\r\na\r\n", reply.len()),
        reply
    );
    let reply = "-ERR wrong number of arguments for 'get' command\r\n";
    assert_eq!(
        exchange(&mut stream, b"*1\r\n$3\r\nGET\r\n", reply.len()),
        reply
    );
    let reply = "-ERR syntax error\r\n";
    let request = b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$4\r\nNOPE\r\n";
    assert_eq!(exchange(&mut stream, request, reply.len()), reply);
    // Inline commands, as typed into telnet, work too.
    assert_eq!(exchange(&mut stream, b"PING\r\n", 7), "+PONG\r\n");
    // Pipelined: all answered, in order.
    let reply = "+OK\r\n$1\r\nv\r\n:1\r\n";
    let request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*2\r\n$3\r\nDEL\r\n$1\r\nk\r\n";
    assert_eq!(exchange(&mut stream, request, reply.len()), reply);
    assert_eq!(exchange(&mut stream, b"*1\r\n$4\r\nQUIT\r\n", 5), "+OK\r\n");
    assert!(closed(&mut stream));
}

#[test]
fn connections_past_max_clients_are_refused_until_one_leaves() {
    let server = start(&["--development", "--max-clients", "2"]);
    let mut first = connect(&server);
    let mut second = connect(&server);
    assert_eq!(exchange(&mut first, b"PING\r\n", 7), "+PONG\r\n");
    assert_eq!(exchange(&mut second, b"PING\r\n", 7), "+PONG\r\n");
    let reply = "-ERR max number of clients reached\r\n";
    let mut third = connect(&server);
    assert_eq!(exchange(&mut third, b"PING\r\n", reply.len()), reply);
    assert!(closed(&mut third));
    drop(first);
    support::wait_for("a slot to free up", Duration::from_secs(10), || {
        ping(&server) == "+PONG\r\n"
    });
    assert_eq!(exchange(&mut second, b"PING\r\n", 7), "+PONG\r\n");
}
