//! Links to peers: the state kept per peer, dialling with backoff, the
//! `Hello`/`Welcome` exchange, and handing what arrives to the node.

use super::*;

/// Everything this node keeps about one peer.
#[derive(Debug)]
pub(super) struct PeerLink {
    pub(super) addr: SocketAddr,
    /// The connection in use, once its `Hello` was answered.
    pub(super) conn: Mutex<Option<Connection>>,
    /// Serialises dials so concurrent users share one.
    pub(super) dial: tokio::sync::Mutex<DialState>,
    pub(super) queue: mpsc::UnboundedSender<Bytes>,
    pub(super) queued: QueueBudget,
    pub(super) datagrams: Mutex<VecDeque<Bytes>>,
    pub(super) wake: Notify,
    /// Wakes a dial waiting out its backoff: a connection arrived, or the
    /// peer is known to be back (`retry` set).
    pub(super) connected: Notify,
    pub(super) retry: AtomicBool,
    pub(super) sender: Mutex<Option<tokio::task::AbortHandle>>,
}

#[derive(Debug)]
pub(super) struct DialState {
    pub(super) next_attempt: Option<Instant>,
    pub(super) backoff: Duration,
}

impl PeerLink {
    pub(super) fn current(&self) -> Option<Connection> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Uses `conn` for sends unless a live connection is in use already.
    pub(super) fn offer(&self, conn: &Connection) {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|c| c.close_reason().is_some()) {
            *slot = Some(conn.clone());
        }
        drop(slot);
        self.wake.notify_one();
        self.connected.notify_waiters();
    }
}

impl Inner {
    pub(super) fn shut_down(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutting down");
        let peers = std::mem::take(&mut *self.peers.lock().unwrap_or_else(|e| e.into_inner()));
        for link in peers.values() {
            if let Some(task) = link.sender.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
        }
    }

    pub(super) fn link(self: &Arc<Self>, addr: SocketAddr) -> Result<Arc<PeerLink>, SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = peers.get(&addr) {
            return Ok(link.clone());
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let link = Arc::new(PeerLink {
            addr,
            conn: Mutex::new(None),
            dial: tokio::sync::Mutex::new(DialState {
                next_attempt: None,
                backoff: self.config.min_backoff,
            }),
            queue,
            queued: QueueBudget::default(),
            datagrams: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            connected: Notify::new(),
            retry: AtomicBool::new(false),
            sender: Mutex::new(None),
        });
        let task = tokio::spawn(run_sender(Arc::downgrade(self), link.clone(), rx));
        *link.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        peers.insert(addr, link.clone());
        Ok(link)
    }

    /// The connection to `addr`, dialing if needed, after sleeping out the
    /// backoff of an earlier failure (cut short when a connection arrives or
    /// the peer is known to be back).
    pub(super) async fn connection(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<Connection, String> {
        let link = self.link(addr).map_err(|e| e.to_string())?;
        if let Some(conn) = link.current() {
            return Ok(conn);
        }
        let mut dial = link.dial.lock().await;
        if let Some(conn) = link.current() {
            return Ok(conn);
        }
        if let Some(at) = dial.next_attempt
            && Instant::now() < at
            && !link.retry.swap(false, Ordering::AcqRel)
        {
            let woken = link.connected.notified();
            if let Some(conn) = link.current() {
                return Ok(conn);
            }
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = woken => {}
            }
            link.retry.store(false, Ordering::Release);
            if let Some(conn) = link.current() {
                return Ok(conn);
            }
        }
        match self.dial(addr).await {
            Ok(conn) => {
                dial.next_attempt = None;
                dial.backoff = self.config.min_backoff;
                link.offer(&conn);
                Ok(conn)
            }
            Err(e) => {
                debug!(peer = %addr, "dial failed: {e}; next attempt in {:?}", dial.backoff);
                dial.next_attempt = Some(Instant::now() + dial.backoff);
                dial.backoff = (dial.backoff * 2).min(self.config.max_backoff);
                Err(e)
            }
        }
    }

    pub(super) async fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<Connection, String> {
        let handshake = async {
            let connecting = self
                .endpoint
                .connect_with(self.client.clone(), addr, "sessmesh")
                .map_err(|e| format!("cannot connect: {e}"))?;
            let conn = connecting
                .await
                .map_err(|e| format!("handshake failed: {e}"))?;
            // Under TLS 1.3 the acceptor may still refuse our certificate: the
            // first exchange shows it, wherever in the exchange it lands.
            let exchange = async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                write_frame(&self.codec, &mut send, &Message::Hello).await?;
                let _ = send.finish();
                read_frame(&self.codec, &mut recv)
                    .await
                    .map_err(String::from)
            };
            match exchange.await {
                Ok(Message::Welcome) => Ok(conn),
                Ok(other) => Err(format!("expected Welcome, got {}", kind(&other))),
                Err(e) => Err(conn
                    .close_reason()
                    .map_or(e, |reason| format!("refused: {reason}"))),
            }
        };
        let conn = tokio::time::timeout(self.config.connect_timeout, handshake)
            .await
            .map_err(|_| format!("no answer within {:?}", self.config.connect_timeout))??;
        let peer = peer_of(&conn)?;
        debug!(peer = %peer.name, addr = %addr, "connected");
        tokio::spawn(serve_connection(self.clone(), conn.clone(), peer));
        Ok(conn)
    }

    pub(super) fn refuse_stream(
        &self,
        from: &Peer,
        recv: &mut quinn::RecvStream,
        err: &DecodeError,
        conn: &Connection,
    ) {
        match err {
            DecodeError::Version { .. } | DecodeError::ForeignCluster { .. } => {
                warn!(peer = %from.name, addr = %from.addr, "closing connection: {err}");
                bump(&self.stats.refused_connections);
                conn.close(
                    VarInt::from_u32(close_code::FOREIGN),
                    err.to_string().as_bytes(),
                );
            }
            _ => {
                warn!(peer = %from.name, addr = %from.addr, "stopping stream: {err}");
                bump(&self.stats.bad_frames);
                let _ = recv.stop(VarInt::from_u32(close_code::BAD_FRAME));
            }
        }
    }

    /// Refuses a bidirectional stream a peer opened after the `Hello`
    /// exchange: peers send one-way messages only. The connection and the
    /// peer's other streams carry on.
    pub(super) fn refuse_bidi(
        &self,
        from: &Peer,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        warn!(
            peer = %from.name,
            addr = %from.addr,
            "refusing a bidirectional stream: peers send one-way messages only"
        );
        bump(&self.stats.refused_streams);
        let code = VarInt::from_u32(close_code::UNEXPECTED_STREAM);
        let _ = recv.stop(code);
        let _ = send.reset(code);
    }
}
