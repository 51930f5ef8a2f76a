//! The per-peer sender task: it writes what is queued for a peer, batched,
//! onto one long-lived stream, and carries datagrams.

use super::*;

/// Writes one peer's queued messages in batches, reconnecting as needed, and
/// flushes datagrams that waited for a connection.
pub(super) async fn run_sender(
    inner: Weak<Inner>,
    link: Arc<PeerLink>,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut batch = BytesMut::new();
    let mut stream: Option<(quinn::SendStream, usize)> = None;
    loop {
        if batch.is_empty() {
            let has_datagrams = !link
                .datagrams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            if !has_datagrams {
                tokio::select! {
                    biased;
                    next = queue.recv() => match next {
                        Some(frame) => batch.extend_from_slice(&frame),
                        None => return,
                    },
                    () = link.wake.notified() => {}
                }
            }
        }
        while batch.len() < BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let waiting = !batch.is_empty()
            || !link
                .datagrams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        if !waiting {
            continue;
        }
        let Ok(conn) = inner.connection(link.addr).await else {
            continue;
        };
        let backlog: Vec<Bytes> = link
            .datagrams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for datagram in backlog {
            let _ = conn.send_datagram(datagram);
        }
        if batch.is_empty() {
            continue;
        }
        if stream
            .as_ref()
            .is_none_or(|(_, id)| *id != conn.stable_id())
        {
            stream = match conn.open_uni().await {
                Ok(s) => Some((s, conn.stable_id())),
                Err(e) => {
                    debug!(peer = %link.addr, "cannot open a stream: {e}");
                    continue;
                }
            };
        }
        let Some((send, _)) = stream.as_mut() else {
            continue;
        };
        match send.write_all(&batch).await {
            Ok(()) => {
                link.queued.release(batch.len());
                batch.clear();
            }
            Err(e) => {
                // The batch goes again on the next connection: at least once
                // across reconnects, which merges and acknowledgements tolerate.
                debug!(peer = %link.addr, "write failed, retrying: {e}");
                stream = None;
            }
        }
    }
}
