//! One client connection: read requests, run them in order, write replies.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::commands::{Flow, Handler, command_name};
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
    loop {
        let mut close = false;
        loop {
            match next_request(&mut input, limits) {
                Parsed::Incomplete => break,
                Parsed::Empty => {}
                Parsed::Command(args) => {
                    let started = Instant::now();
                    let (reply, flow) = handler.execute(&mut client, &args).await;
                    observer.command(command_name(&args[0]), started.elapsed(), reply.is_error());
                    reply.encode(client.protocol, &mut output);
                    if flow == Flow::Close {
                        close = true;
                        break;
                    }
                }
                Parsed::Fatal(error) => {
                    debug!(client = client.id(), "closing the connection: {error}");
                    observer.protocol_error();
                    Reply::Error(error).encode(client.protocol, &mut output);
                    close = true;
                    break;
                }
            }
        }
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
