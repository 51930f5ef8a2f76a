//! One client connection: read requests, run them in order, write replies.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast;
use tracing::debug;

use sessmesh::Submitted;

use crate::commands::{Client, Command, Flow, Handler};
use crate::reply::Reply;
use crate::request::{Limits, Parsed, next_request};

/// What a connection reports as it goes, for metrics.
pub trait Observer: Send + Sync {
    /// A request was answered: its command (`None` for an unknown one),
    /// the time from its arrival to its reply, and whether the reply is an
    /// error.
    fn command(&self, command: Option<Command>, elapsed: Duration, error: bool);
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
    fn command(&self, _: Option<Command>, _: Duration, _: bool) {}
}

/// Waits for the submitted writes, in order, and encodes their replies.
async fn finish(
    submitted: &mut VecDeque<(Submitted, Command, Instant)>,
    client: &Client,
    output: &mut BytesMut,
    observer: &dyn Observer,
) {
    while let Some((set, command, arrived)) = submitted.pop_front() {
        let reply = Handler::finish_set(set).await;
        observer.command(Some(command), arrived.elapsed(), reply.is_error());
        reply.encode(client.protocol, output);
    }
}

/// Runs the reads gathered from a pipeline at the same time, and encodes
/// their replies in order.
async fn run_reads(
    reads: &mut Vec<(Vec<Bytes>, Command, Instant)>,
    handler: &Handler,
    client: &Client,
    output: &mut BytesMut,
    observer: &dyn Observer,
) {
    if reads.is_empty() {
        return;
    }
    let replies = join_all(
        reads
            .iter()
            .map(|(args, command, _)| handler.execute_read(client.db(), *command, args)),
    )
    .await;
    let done = Instant::now();
    for (reply, (_, command, arrived)) in replies.into_iter().zip(reads.drain(..)) {
        observer.command(Some(command), done - arrived, reply.is_error());
        reply.encode(client.protocol, output);
    }
}

/// The most reads of one pipeline that run at the same time.
const MAX_READS: usize = 256;

/// Serves one client until it quits, disconnects or breaks the protocol.
///
/// Pipelined requests take effect in order, and their replies go out
/// together, in order. Plain `SET`s are handed to the peer one after
/// another without waiting for each; reads next to each other run at the
/// same time, after the writes before them are acknowledged; anything
/// else runs alone, after everything before it.
///
/// # Errors
/// The connection's I/O errors.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    handler: &Handler,
    stream: &mut S,
    limits: &Limits,
    observer: &dyn Observer,
) -> std::io::Result<()> {
    serve_client(handler, handler.client(), stream, limits, observer).await
}

/// As [`serve`], for the connection `client` stands for (made with
/// [`Handler::client_at`] when its peer's address is known).
///
/// # Errors
/// The connection's I/O errors.
pub async fn serve_client<S: AsyncRead + AsyncWrite + Unpin>(
    handler: &Handler,
    mut client: Client,
    stream: &mut S,
    limits: &Limits,
    observer: &dyn Observer,
) -> std::io::Result<()> {
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    // Plain SETs of the current pipeline, handed to the peer and not yet
    // acknowledged, in order.
    let mut submitted: VecDeque<(Submitted, Command, Instant)> = VecDeque::new();
    // Reads of the current pipeline not run yet, in order.
    let mut reads: Vec<(Vec<Bytes>, Command, Instant)> = Vec::new();
    // When the last bytes came in: the requests they complete arrived then.
    let mut arrived = Instant::now();
    loop {
        let mut close = false;
        let mut monitor = None;
        loop {
            match next_request(&mut input, limits) {
                Parsed::Incomplete => break,
                Parsed::Empty => {}
                Parsed::Command(args) => {
                    handler.feed_monitors(&client, &args);
                    let command = Command::lookup(&args[0]);
                    if let Some(read) = command.filter(|&c| handler.reads_only(&client, c)) {
                        // They must see the writes before them.
                        finish(&mut submitted, &client, &mut output, observer).await;
                        reads.push((args, read, arrived));
                        if reads.len() == MAX_READS {
                            run_reads(&mut reads, handler, &client, &mut output, observer).await;
                        }
                        continue;
                    }
                    run_reads(&mut reads, handler, &client, &mut output, observer).await;
                    if let Some(known) = command {
                        match handler.submit_set(&client, known, &args).await {
                            Some(Ok(set)) => {
                                submitted.push_back((set, known, arrived));
                                continue;
                            }
                            Some(Err(reply)) => {
                                finish(&mut submitted, &client, &mut output, observer).await;
                                observer.command(command, arrived.elapsed(), true);
                                reply.encode(client.protocol, &mut output);
                                continue;
                            }
                            None => {}
                        }
                    }
                    // Anything else runs after the writes before it.
                    finish(&mut submitted, &client, &mut output, observer).await;
                    let (reply, flow) = handler.execute(&mut client, command, &args).await;
                    observer.command(command, arrived.elapsed(), reply.is_error());
                    reply.encode(client.protocol, &mut output);
                    match flow {
                        Flow::Continue => {}
                        Flow::Close => {
                            close = true;
                            break;
                        }
                        Flow::Monitor => {
                            // From the next command on, not this one.
                            monitor = Some(handler.monitor());
                            break;
                        }
                    }
                }
                Parsed::Fatal(error) => {
                    run_reads(&mut reads, handler, &client, &mut output, observer).await;
                    finish(&mut submitted, &client, &mut output, observer).await;
                    debug!(client = client.id(), "closing the connection: {error}");
                    observer.protocol_error();
                    Reply::Error(error).encode(client.protocol, &mut output);
                    close = true;
                    break;
                }
            }
        }
        run_reads(&mut reads, handler, &client, &mut output, observer).await;
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
        if let Some(lines) = monitor {
            return monitoring(lines, &mut client, stream, input, limits, observer).await;
        }
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
        let read = stream.read_buf(&mut input).await?;
        if read == 0 {
            return Ok(());
        }
        arrived = Instant::now();
        observer.bytes(read, 0);
    }
}

/// A connection that sent `MONITOR`: from then on it gets the line of each
/// command the node's connections send, and may only send `QUIT` (other
/// commands are answered with an error; Redis ignores them).
async fn monitoring<S: AsyncRead + AsyncWrite + Unpin>(
    mut lines: broadcast::Receiver<Bytes>,
    client: &mut Client,
    stream: &mut S,
    mut input: BytesMut,
    limits: &Limits,
    observer: &dyn Observer,
) -> std::io::Result<()> {
    let mut output = BytesMut::new();
    loop {
        loop {
            match next_request(&mut input, limits) {
                Parsed::Incomplete => break,
                Parsed::Empty => {}
                Parsed::Command(args) if args[0].eq_ignore_ascii_case(b"QUIT") => {
                    Reply::Ok.encode(client.protocol, &mut output);
                    stream.write_all(&output).await?;
                    stream.shutdown().await?;
                    return Ok(());
                }
                Parsed::Command(_) => {
                    err_reply("ERR only QUIT is allowed on a connection in MONITOR mode")
                        .encode(client.protocol, &mut output);
                }
                Parsed::Fatal(error) => {
                    observer.protocol_error();
                    Reply::Error(error).encode(client.protocol, &mut output);
                    stream.write_all(&output).await?;
                    stream.shutdown().await?;
                    return Ok(());
                }
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            observer.bytes(0, output.len());
            output.clear();
        }
        tokio::select! {
            line = lines.recv() => match line {
                Ok(line) => {
                    stream.write_all(&line).await?;
                    observer.bytes(0, line.len());
                }
                // Too far behind: the lines missed are skipped.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            read = stream.read_buf(&mut input) => {
                let read = read?;
                if read == 0 {
                    return Ok(());
                }
                observer.bytes(read, 0);
            }
        }
    }
}

fn err_reply(text: &str) -> Reply {
    Reply::Error(text.to_owned())
}
