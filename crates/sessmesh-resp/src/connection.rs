//! One client connection: read requests, run them in order, write replies.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use sessmesh::Submitted;

use crate::commands::{Client, Flow, Handler};
use crate::reply::Reply;
use crate::request::{Limits, Parsed, next_request};

/// What a connection reports as it goes, for metrics.
pub trait Observer: Send + Sync {
    /// A command ran: its canonical name (`None` for an unknown command),
    /// how long it took, and whether it answered with an error.
    fn command(&self, name: Option<&'static str>, elapsed: Duration, error: bool);
    /// The connection sent something that is not RESP and was closed.
    fn protocol_error(&self) {}
    /// Bytes read from and written to the client.
    fn bytes(&self, read: usize, written: usize) {
        let _ = (read, written);
    }
}

/// An observer that records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn command(&self, _: Option<&'static str>, _: Duration, _: bool) {}
}

/// Waits for the submitted writes, in order, and encodes their replies.
async fn finish(
    submitted: &mut VecDeque<(Submitted, Instant)>,
    client: &Client,
    output: &mut BytesMut,
    observer: &dyn Observer,
) {
    while let Some((set, started)) = submitted.pop_front() {
        let reply = Handler::finish_set(set).await;
        observer.command(Some("SET"), started.elapsed(), reply.is_error());
        reply.encode(client.protocol, output);
    }
}

/// Serves one client until it quits, disconnects or breaks the protocol.
/// Pipelined requests run one after the other, in order, and their replies
/// go out together.
///
/// # Errors
/// The connection's I/O errors.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    handler: &Handler,
    stream: &mut S,
    limits: &Limits,
    observer: &dyn Observer,
) -> std::io::Result<()> {
    let mut client = handler.client();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    // Plain SETs of the current pipeline, handed to the peer and not yet
    // acknowledged, in order.
    let mut submitted: VecDeque<(Submitted, Instant)> = VecDeque::new();
    loop {
        let mut close = false;
        loop {
            match next_request(&mut input, limits) {
                Parsed::Incomplete => break,
                Parsed::Empty => {}
                Parsed::Command(args) => {
                    let started = Instant::now();
                    match handler.submit_set(&client, &args).await {
                        Some(Ok(set)) => {
                            submitted.push_back((set, started));
                            continue;
                        }
                        Some(Err(reply)) => {
                            finish(&mut submitted, &client, &mut output, observer).await;
                            observer.command(Some("SET"), started.elapsed(), true);
                            reply.encode(client.protocol, &mut output);
                            continue;
                        }
                        None => {}
                    }
                    // Anything else runs after the writes before it.
                    finish(&mut submitted, &client, &mut output, observer).await;
                    let (reply, flow, name) = handler.execute(&mut client, &args).await;
                    observer.command(name, started.elapsed(), reply.is_error());
                    reply.encode(client.protocol, &mut output);
                    if flow == Flow::Close {
                        close = true;
                        break;
                    }
                }
                Parsed::Fatal(error) => {
                    finish(&mut submitted, &client, &mut output, observer).await;
                    debug!(client = client.id(), "closing the connection: {error}");
                    observer.protocol_error();
                    Reply::Error(error).encode(client.protocol, &mut output);
                    close = true;
                    break;
                }
            }
        }
        finish(&mut submitted, &client, &mut output, observer).await;
        if !output.is_empty() {
            stream.write_all(&output).await?;
            observer.bytes(0, output.len());
            output.clear();
        }
        if close {
            stream.shutdown().await?;
            return Ok(());
        }
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
        let read = stream.read_buf(&mut input).await?;
        if read == 0 {
            return Ok(());
        }
        observer.bytes(read, 0);
    }
}
