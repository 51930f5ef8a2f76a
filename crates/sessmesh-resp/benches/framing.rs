//! Request framing against `redis-protocol`'s decoder, in one run.
//!
//! ```text
//! cargo bench -p sessmesh-resp --bench framing
//! ```
//! Each side splits the same buffer into requests, each an owned list of
//! arguments: a pipeline of 16 `SET key value` requests (14-byte keys,
//! 256-byte values, as `redis-benchmark -d 256 -P 16` sends), or of 16
//! `GET key`. The baseline decodes with
//! `redis_protocol::resp2::decode::decode_bytes_mut` and turns each frame
//! into the argument list, without the size limits the node also checks.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use divan::Bencher;
use redis_protocol::resp2::types::BytesFrame;
use sessmesh_resp::request::{Limits, Parsed, next_request};

const PIPELINE: usize = 16;

fn encoded(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn pipeline(command: &str) -> Vec<u8> {
    let value = vec![b'x'; 256];
    (0..PIPELINE)
        .flat_map(|i| {
            let key = format!("key:{i:010}");
            match command {
                "SET" => encoded(&[b"SET", key.as_bytes(), &value]),
                _ => encoded(&[b"GET", key.as_bytes()]),
            }
        })
        .collect()
}

/// The baseline: the crate's decoder, then the frame as arguments.
fn crate_decode(buf: &mut BytesMut) -> Option<Vec<Bytes>> {
    let (frame, _, _) = redis_protocol::resp2::decode::decode_bytes_mut(buf).ok()??;
    match frame {
        BytesFrame::Array(items) => Some(
            items
                .into_iter()
                .filter_map(|item| match item {
                    BytesFrame::BulkString(b) => Some(b),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn main() {
    divan::main();
}

#[divan::bench(args = ["SET", "GET"], sample_count = 1000, sample_size = 100)]
fn redis_protocol_decoder(bencher: Bencher<'_, '_>, command: &str) {
    let bytes = pipeline(command);
    bencher
        .with_inputs(|| BytesMut::from(&bytes[..]))
        .bench_local_values(|mut buf| {
            let mut requests = 0;
            while let Some(args) = crate_decode(&mut buf) {
                requests += black_box(args).len();
            }
            assert_eq!(requests, PIPELINE * if command == "SET" { 3 } else { 2 });
        });
}

#[divan::bench(args = ["SET", "GET"], sample_count = 1000, sample_size = 100)]
fn sessmesh_framing(bencher: Bencher<'_, '_>, command: &str) {
    let bytes = pipeline(command);
    let limits = Limits::default();
    bencher
        .with_inputs(|| BytesMut::from(&bytes[..]))
        .bench_local_values(|mut buf| {
            let mut requests = 0;
            while let Parsed::Command(args) = next_request(&mut buf, &limits) {
                requests += black_box(args).len();
            }
            assert_eq!(requests, PIPELINE * if command == "SET" { 3 } else { 2 });
        });
}
