//! `sessmesh serve`: the peer, its Redis endpoint, and its HTTP endpoint.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use sessmesh::{MemberState, Node};
use sessmesh_resp::{Handler, Limits};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{Overrides, PeerTls, Settings};
use crate::metrics::{CommandObserver, Metrics};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Reads the settings and runs the node until SIGINT or SIGTERM.
pub(crate) fn run(overrides: Overrides) -> Result {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = Settings::load(overrides)?;
    crate::allocator::without_thread_cache();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(crate::allocator::without_thread_cache)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let shards = Shards::start(settings.worker_threads - 1)?;
    runtime.block_on(serve(settings, shards))
}

/// The threads client connections are spread over: the main one, which also
/// runs the peer, and `worker_threads - 1` more, each with a single-threaded
/// runtime of its own. A connection stays on the thread it was given, so
/// its tasks never move between threads or wake one another across them;
/// reads the node answers locally run there too. Only calls the peer
/// coordinates cross to the main thread. (A work-stealing runtime measured
/// no better unpipelined and slower on pipelines: see docs/BENCHMARKS.md.)
struct Shards {
    others: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
}

impl Shards {
    fn start(extra: usize) -> Result<Shards> {
        let mut others = Vec::with_capacity(extra);
        for i in 0..extra {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("sessmesh-clients-{}", i + 1))
                .spawn(move || {
                    crate::allocator::without_thread_cache();
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .on_thread_start(crate::allocator::without_thread_cache)
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(runtime.handle().clone()));
                    // Serves until the process exits.
                    runtime.block_on(std::future::pending::<()>());
                })
                .map_err(|e| format!("cannot start a worker thread: {e}"))?;
            let handle = rx
                .recv()
                .map_err(|e| format!("cannot start a worker thread: {e}"))?
                .map_err(|e| format!("cannot start a worker thread's runtime: {e}"))?;
            others.push(handle);
        }
        Ok(Shards {
            others,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs a client connection on the next thread in turn.
    fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % (self.others.len() + 1);
        let Some(other) = turn.checked_sub(1).and_then(|i| self.others.get(i)) else {
            tokio::spawn(serve(stream));
            return;
        };
        // A socket belongs to the runtime that registered it: move it over.
        match stream.into_std() {
            Ok(stream) => {
                other.spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => serve(stream).await,
                        Err(e) => warn!("a client connection could not be moved: {e}"),
                    }
                });
            }
            Err(e) => warn!("a client connection could not be moved: {e}"),
        }
    }
}

fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Joining => "joining",
        MemberState::Alive => "alive",
        MemberState::Leaving => "leaving",
    }
}

async fn start_node(settings: &Settings) -> Result<Node> {
    let mut builder = Node::builder()
        .listen(settings.peer_listen)
        .seeds(settings.seeds.clone())
        .cluster_name(settings.cluster_name.clone())
        .config(settings.config.clone())
        .membership(settings.membership.clone())
        .read_level(settings.read_level)
        .write_level(settings.write_level)
        .shutdown_timeout(settings.shutdown_timeout())
        .memory_probe(crate::allocator::allocated);
    if let Some(addr) = settings.peer_advertise {
        builder = builder.advertise(addr);
    }
    if let Some(name) = &settings.name {
        builder = builder.name(name.clone());
    }
    builder = match &settings.peer_tls {
        PeerTls::Files { ca, cert, key } => builder.tls_files(ca, cert, key),
        PeerTls::Development => builder.development(),
    };
    Ok(builder.start().await?)
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| format!("resp_tls_cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("resp_tls_key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| format!("TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("resp_tls_cert: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(settings: Settings, shards: Shards) -> Result {
    let tls = settings
        .resp_tls
        .as_ref()
        .map(|(cert, key)| tls_acceptor(cert, key))
        .transpose()?;
    // Bind the client-facing ports first: a taken port is reported before
    // the peer joins anyone.
    let resp = TcpListener::bind(settings.resp_listen)
        .await
        .map_err(|e| format!("resp_listen {}: {e}", settings.resp_listen))?;
    let http = TcpListener::bind(settings.http_listen)
        .await
        .map_err(|e| format!("http_listen {}: {e}", settings.http_listen))?;
    let node = start_node(&settings).await?;
    let metrics = Arc::new(Metrics::new());
    let handler = Arc::new(Handler::new(
        node.clone(),
        sessmesh_resp::Settings {
            requirepass: settings.requirepass.clone(),
            databases: settings.databases,
        },
    ));
    let resp_addr = resp.local_addr()?;
    let http_addr = http.local_addr()?;
    tokio::spawn(accept_clients(
        resp,
        handler,
        settings.limits,
        Arc::new(Semaphore::new(settings.max_clients)),
        tls,
        metrics.clone(),
        shards,
    ));
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health", get(health))
        .route("/status", get(status_page))
        .with_state((node.clone(), metrics));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(http, app).await {
            warn!("the HTTP endpoint stopped: {e}");
        }
    });
    info!(node = %node.me().name, peer = %node.me().addr, resp = %resp_addr, http = %http_addr, "serving");
    if settings.config.max_memory_bytes == 0 {
        warn!(
            "maxmemory is not set: this node stores whatever it is sent until the system runs \
             out of memory; bound it with maxmemory (for example maxmemory = \"1gb\" in the \
             config file, or --maxmemory 1gb)"
        );
    }
    // One line on stdout for scripts and tests that start nodes on port 0.
    println!(
        "sessmesh ready: name={} peer={} resp={} http={}",
        node.me().name,
        node.me().addr,
        resp_addr,
        http_addr
    );
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    info!("shutting down: handing partitions off");
    match node.shutdown().await {
        Ok(()) => info!("left the cluster"),
        Err(e) => warn!("left the cluster: {e}"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    warn!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn accept_clients(
    listener: TcpListener,
    handler: Arc<Handler>,
    limits: Limits,
    slots: Arc<Semaphore>,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    shards: Shards,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: keep serving those connected.
                warn!("accepting a client failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connection_refused();
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (handler, tls, metrics) = (handler.clone(), tls.clone(), metrics.clone());
        shards.spawn(stream, move |stream| async move {
            let _slot = slot;
            metrics.connection(true);
            let observer = CommandObserver(metrics.clone());
            let result = match tls {
                None => {
                    let mut stream = stream;
                    let client = handler.client_at(peer);
                    sessmesh_resp::serve_client(&handler, client, &mut stream, &limits, &observer)
                        .await
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(mut stream) => {
                        let client = handler.client_at(peer);
                        sessmesh_resp::serve_client(
                            &handler,
                            client,
                            &mut stream,
                            &limits,
                            &observer,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                },
            };
            metrics.connection(false);
            if let Err(e) = result {
                tracing::debug!(client = %peer, "connection ended: {e}");
            }
        });
    }
}

/// Tells a client over the connection limit why, as Redis does, and closes.
async fn refuse(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = stream.shutdown().await;
}

async fn metrics_page(State((node, metrics)): State<(Node, Arc<Metrics>)>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(&node).await,
    )
}

async fn health(State((node, _)): State<(Node, Arc<Metrics>)>) -> impl IntoResponse {
    match node.status().await {
        Ok(status) if status.state != MemberState::Leaving => (StatusCode::OK, "ok\n"),
        Ok(_) => (StatusCode::SERVICE_UNAVAILABLE, "leaving\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopped\n"),
    }
}

async fn status_page(State((node, _)): State<(Node, Arc<Metrics>)>) -> impl IntoResponse {
    let Ok(status) = node.status().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "stopped"})),
        );
    };
    let members: Vec<_> = status
        .members
        .iter()
        .map(|m| {
            json!({
                "name": m.member.name,
                "state": state_name(m.state),
                "partitions": m.partitions,
                "peer_addr": m.member.addr.to_string(),
                "generation": m.member.generation,
                "clock_offset_ms": m.clock_offset_ms,
            })
        })
        .collect();
    let ago = status
        .last_anti_entropy
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs());
    let r = status.replication;
    (
        StatusCode::OK,
        axum::Json(json!({
            "name": status.me.name,
            "peer_addr": status.me.addr.to_string(),
            "state": state_name(status.state),
            "partition_count": status.partition_count,
            "partitions_owned": status.partitions_owned,
            "sessions_stored": status.sessions_stored,
            "hints_pending": status.hints_pending,
            "hints_dropped": status.hints_dropped,
            "memory": {
                "used": status.memory.used(),
                "max": status.memory.max,
                "policy": status.memory.policy.name(),
                "sessions": status.memory.sessions.entries,
                "tables": status.memory.sessions.tables,
                "hints": status.memory.hints,
                "consensus": status.memory.consensus,
                "evictions": status.memory.evictions,
                "other": status.memory.other,
                "evicted_keys": status.memory.evicted_keys,
            },
            "last_anti_entropy_seconds_ago": ago,
            "members": members,
            "replication": {
                "replica_acks": r.replica_acks,
                "write_timeouts": r.write_timeouts,
                "read_timeouts": r.read_timeouts,
                "hints_queued": r.hints_queued,
                "hints_replayed": r.hints_replayed,
                "anti_entropy_rounds": r.anti_entropy_rounds,
                "keys_repaired": r.keys_repaired,
                "clock_drift_refused": r.clock_drift_refused,
                "writes_refused_clock_ahead": r.writes_refused_clock_ahead,
                "writes_short_of_copies": r.writes_short_of_copies,
                "reads_short_of_copies": r.reads_short_of_copies,
                "digest_mismatches": r.digest_mismatches,
            },
        })),
    )
}
