//! Accepting: the handshake of connections peers dial, and reading what
//! peers send on a connection: one-way messages and datagrams. A
//! bidirectional stream after the handshake is refused.

use super::*;

pub(super) fn peer_of(conn: &Connection) -> Result<Peer, String> {
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("the peer presented no certificate")?;
    let cert = certs.first().ok_or("the peer presented no certificate")?;
    let name = node_name_of(cert).map_err(|e| e.to_string())?;
    Ok(Peer {
        addr: conn.remote_address(),
        name: name.into(),
    })
}

pub(super) async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        tokio::spawn(accept_one(inner.clone(), incoming));
    }
}

pub(super) async fn accept_one(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            warn!(addr = %remote, "refused a connection: {e}");
            bump(&inner.stats.failed_handshakes);
            return;
        }
    };
    let peer = match peer_of(&conn) {
        Ok(peer) => peer,
        Err(e) => {
            warn!(addr = %remote, "refused a connection: {e}");
            bump(&inner.stats.refused_connections);
            conn.close(VarInt::from_u32(close_code::HANDSHAKE), e.as_bytes());
            return;
        }
    };
    let hello = async {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| FrameError::Stream(e.to_string()))?;
        let message = read_frame(&inner.codec, &mut recv).await?;
        Ok::<_, FrameError>((
            send_welcome(&inner.codec, &mut send, &message).await,
            message,
        ))
    };
    match tokio::time::timeout(inner.config.connect_timeout, hello).await {
        Ok(Ok((Ok(()), Message::Hello))) => {}
        Ok(Ok((_, other))) => {
            let reason = format!("expected Hello first, got {}", kind(&other));
            warn!(peer = %peer.name, addr = %remote, "closing connection: {reason}");
            bump(&inner.stats.refused_connections);
            conn.close(VarInt::from_u32(close_code::HANDSHAKE), reason.as_bytes());
            return;
        }
        Ok(Err(FrameError::Decode(e))) => {
            let code = match e {
                DecodeError::Version { .. } | DecodeError::ForeignCluster { .. } => {
                    close_code::FOREIGN
                }
                _ => close_code::HANDSHAKE,
            };
            warn!(peer = %peer.name, addr = %remote, "closing connection: {e}");
            bump(&inner.stats.refused_connections);
            conn.close(VarInt::from_u32(code), e.to_string().as_bytes());
            return;
        }
        Ok(Err(FrameError::Stream(e))) => {
            debug!(peer = %peer.name, addr = %remote, "connection ended before Hello: {e}");
            return;
        }
        Err(_) => {
            warn!(peer = %peer.name, addr = %remote, "closing connection: no Hello");
            bump(&inner.stats.refused_connections);
            conn.close(VarInt::from_u32(close_code::HANDSHAKE), b"no Hello");
            return;
        }
    }
    debug!(peer = %peer.name, addr = %remote, "accepted");
    if let Ok(link) = inner.link(remote) {
        link.offer(&conn);
    }
    serve_connection(inner, conn, peer).await;
}

pub(super) async fn send_welcome(
    codec: &Codec,
    send: &mut quinn::SendStream,
    hello: &Message,
) -> Result<(), String> {
    if *hello != Message::Hello {
        return Err("not a Hello".into());
    }
    write_frame(codec, send, &Message::Welcome).await?;
    let _ = send.finish();
    Ok(())
}

/// Reads everything a peer sends on one connection until it closes.
pub(super) async fn serve_connection(inner: Arc<Inner>, conn: Connection, peer: Peer) {
    loop {
        // Biased: a fixed polling order keeps simulated runs repeatable.
        tokio::select! {
            biased;
            uni = conn.accept_uni() => match uni {
                Ok(recv) => { tokio::spawn(read_messages(inner.clone(), conn.clone(), peer.clone(), recv)); }
                Err(_) => break,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => inner.refuse_bidi(&peer, send, recv),
                Err(_) => break,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => match inner.codec.decode(&bytes) {
                    Ok(Message::Gossip(payload)) => {
                        // A full incoming queue drops gossip rather than stall the connection.
                        let _ = inner.incoming.try_send(Incoming::Datagram { from: peer.clone(), payload });
                    }
                    Ok(other) => {
                        warn!(peer = %peer.name, "dropping a datagram: {} is not gossip", kind(&other));
                        bump(&inner.stats.bad_frames);
                    }
                    Err(e @ (DecodeError::Version { .. } | DecodeError::ForeignCluster { .. })) => {
                        warn!(peer = %peer.name, addr = %peer.addr, "closing connection: {e}");
                        bump(&inner.stats.refused_connections);
                        conn.close(VarInt::from_u32(close_code::FOREIGN), e.to_string().as_bytes());
                    }
                    Err(e) => {
                        warn!(peer = %peer.name, "dropping a datagram: {e}");
                        bump(&inner.stats.bad_frames);
                    }
                },
                Err(_) => break,
            },
        }
    }
    if let Some(reason) = conn.close_reason() {
        debug!(peer = %peer.name, addr = %peer.addr, "connection closed: {reason}");
    }
}

/// Reads the frames of one unidirectional stream, many per read, and hands
/// them on in groups (one channel reservation per group, not per message).
pub(super) async fn read_messages(
    inner: Arc<Inner>,
    conn: Connection,
    peer: Peer,
    mut recv: quinn::RecvStream,
) {
    const GROUP: usize = 256;
    let mut buf = BytesMut::new();
    let mut decoded = Vec::with_capacity(GROUP);
    loop {
        let mut refused = None;
        loop {
            while decoded.len() < GROUP {
                match inner.codec.decode_frame(&buf) {
                    Ok(Some((message, used))) => {
                        buf.advance(used);
                        decoded.push(message);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            if decoded.is_empty() {
                break;
            }
            let Ok(permits) = inner.incoming.reserve_many(decoded.len()).await else {
                return;
            };
            for (permit, message) in permits.zip(decoded.drain(..)) {
                permit.send(Incoming::Message {
                    from: peer.clone(),
                    message,
                });
            }
            if refused.is_some() {
                break;
            }
        }
        if let Some(e) = refused {
            // What arrived before the bad frame was valid and is delivered above.
            inner.refuse_stream(&peer, &mut recv, &e, &conn);
            return;
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                if !buf.is_empty() {
                    inner.refuse_stream(&peer, &mut recv, &DecodeError::Truncated, &conn);
                }
                return;
            }
            Err(e) => {
                debug!(peer = %peer.name, "stream ended: {e}");
                return;
            }
        }
    }
}
