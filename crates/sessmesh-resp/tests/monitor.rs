//! `MONITOR` over real connections (in-memory streams) to one node of
//! three in-memory peers, in paused time: the lines of the commands other
//! connections send, as Redis prints them.

#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use sessmesh_resp::{Limits, NoObserver, serve_client};
use support::Cluster;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::time::timeout;

/// Reads one line (CR LF included), failing after ten seconds of virtual
/// time.
async fn line(from: &mut BufReader<DuplexStream>) -> String {
    let mut line = String::new();
    timeout(Duration::from_secs(10), from.read_line(&mut line))
        .await
        .expect("a line within ten seconds")
        .unwrap();
    line
}

#[tokio::test(start_paused = true)]
async fn a_monitor_sees_each_command_other_connections_send() {
    let cluster = Cluster::start().await;
    let handler = &cluster.handlers[0];
    let app_addr: SocketAddr = "10.0.0.7:41000".parse().unwrap();
    let (monitor_end, mut monitor_server) = tokio::io::duplex(64 * 1024);
    let (app_end, mut app_server) = tokio::io::duplex(64 * 1024);
    let limits = Limits::default();
    let serving = async {
        let (a, b) = tokio::join!(
            serve_client(
                handler,
                handler.client(),
                &mut monitor_server,
                &limits,
                &NoObserver
            ),
            serve_client(
                handler,
                handler.client_at(app_addr),
                &mut app_server,
                &limits,
                &NoObserver
            ),
        );
        a.unwrap();
        b.unwrap();
    };
    let talking = async {
        let mut monitor = BufReader::new(monitor_end);
        let mut app = BufReader::new(app_end);
        monitor.get_mut().write_all(b"MONITOR\r\n").await.unwrap();
        assert_eq!(line(&mut monitor).await, "+OK\r\n");
        // A pipeline of a plain SET, a read and an atomic write, in database 2.
        let mut requests = b"SELECT 2\r\n".to_vec();
        requests.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$8\r\ngreeting\r\n$8\r\nhi there\r\n");
        requests.extend_from_slice(b"GET greeting\r\nINCR n\r\n");
        app.get_mut().write_all(&requests).await.unwrap();
        for expected in ["+OK\r\n", "+OK\r\n", "$8\r\n", "hi there\r\n", ":1\r\n"] {
            assert_eq!(line(&mut app).await, expected);
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(line(&mut monitor).await);
        }
        let expected = [
            "[0 10.0.0.7:41000] \"SELECT\" \"2\"\r\n",
            "[2 10.0.0.7:41000] \"SET\" \"greeting\" \"hi there\"\r\n",
            "[2 10.0.0.7:41000] \"GET\" \"greeting\"\r\n",
            "[2 10.0.0.7:41000] \"INCR\" \"n\"\r\n",
        ];
        for (seen, expected) in seen.iter().zip(expected) {
            // "+<seconds>.<microseconds> " then the rest.
            let (time, rest) = seen.split_once(' ').unwrap();
            let (secs, micros) = time.strip_prefix('+').unwrap().split_once('.').unwrap();
            assert!(secs.parse::<u64>().unwrap() >= 1_700_000_000, "{seen}");
            assert_eq!(micros.len(), 6, "{seen}");
            assert_eq!(rest, expected);
        }
        // Only QUIT is answered on a monitoring connection.
        monitor
            .get_mut()
            .write_all(b"GET greeting\r\n")
            .await
            .unwrap();
        assert!(line(&mut monitor).await.starts_with("-ERR only QUIT"));
        // MONITOR inside MULTI aborts the transaction, as in Redis.
        app.get_mut()
            .write_all(b"MULTI\r\nMONITOR\r\nEXEC\r\n")
            .await
            .unwrap();
        assert_eq!(line(&mut app).await, "+OK\r\n");
        assert!(
            line(&mut app)
                .await
                .starts_with("-ERR Command not allowed inside a transaction")
        );
        assert!(line(&mut app).await.starts_with("-EXECABORT"));
        for connection in [&mut monitor, &mut app] {
            connection.get_mut().write_all(b"QUIT\r\n").await.unwrap();
        }
        // The monitor saw the three, then its own connection's QUIT is not
        // a line for it; the app's QUIT may come before its own.
        assert_eq!(line(&mut app).await, "+OK\r\n");
    };
    tokio::join!(serving, talking);
}
