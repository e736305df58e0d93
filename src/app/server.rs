//! Assembles the gRPC server (our service, health, reflection, limits), serves one listener
//! until shutdown is asked for, then drains within a bound.

use std::{
    future::Future,
    io,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    codegen::http,
    transport::{server::TcpIncoming, Server},
    Code, Status,
};
use tonic_health::ServingStatus;
use tower::util::MapResponseLayer;
use tracing::{info, warn};

use crate::{
    app::config::{Config, ListenAddr},
    app::{housekeeping::ProcessHooks, outbound::Outbound},
    grpc::auth::{self, AuthLayer},
    grpc::limits::{self, WatchSlots},
    grpc::proto::{self, v1::end_call_service_server::EndCallServiceServer},
    grpc::service::EndCallApi,
    grpc::tls,
    sessions::journal::{self, Opened},
    sessions::registry::{Registry, TimerThread},
    telemetry::{self, metrics},
    webhooks::{self, StoreSettings, Webhooks},
};

/// With `--state-dir`, a finished webhook delivery's record is kept this much longer than
/// closed sessions are (`--closed-retention`), so that a restart can still tell that a restored
/// session's event was delivered (`webhooks::Submitter::restored`).
const KEEP_DONE_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: ListenAddr, source: io::Error },
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot start the timer thread: {0}")]
    Timers(io::Error),
    #[error(transparent)]
    State(#[from] journal::OpenError),
    #[error("--state-dir: cannot start the journal: {0}")]
    Journal(io::Error),
    #[error("--state-dir: the state journal failed (see the error above); stopped so that a restart replays what is on disk")]
    JournalFailed,
    #[error("{0}")]
    Auth(#[from] auth::AuthError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    /// LiveKit's configuration, or the outbound HTTP client (its TLS roots), as text (their
    /// types are the crate's own).
    #[error("{0}")]
    Outbound(String),
    #[error("{0}")]
    WebhookConfig(#[from] webhooks::WebhookConfigError),
    #[error("{0}")]
    Webhooks(#[from] webhooks::StartError),
    #[error("--state-dir: the webhook store failed (see the error above); stopped so that a restart delivers what is on disk")]
    WebhookStoreFailed,
}

/// A bound listener: TCP, or a Unix socket shared with the agent through a volume.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> Result<Self, ServeError> {
        let bind_error = |source| ServeError::Bind {
            addr: addr.clone(),
            source,
        };
        match addr {
            ListenAddr::Tcp(socket) => Ok(Listener::Tcp(
                TcpListener::bind(socket).await.map_err(bind_error)?,
            )),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).map_err(bind_error)?;
                let listener = UnixListener::bind(path).map_err(bind_error)?;
                // Connecting takes write permission: owner and group (an agent container in the
                // same pod's fsGroup), nobody else.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                    .map_err(bind_error)?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// The address actually bound (with the port chosen when asked for port 0).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(_, path) => Ok(ListenAddr::Unix(path.clone())),
        }
    }
}

/// A socket file left by a previous process would make `bind` fail; anything else at that
/// path is not ours to delete.
fn remove_stale_socket(path: &PathBuf) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        )),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// How often an idle connection is pinged, and how long the ping's answer may take: a
/// half-open connection is noticed within their sum (10 s), about the default worker-lost
/// window, so a worker whose host vanished is torn down about 20 s after, not never.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

type ServeFuture = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Serves until `shutdown` completes, then drains: health turns NOT_SERVING at once, the
/// listener closes after `config.shutdown_delay`, watch streams end with UNAVAILABLE (so watchers resume elsewhere with `after_seq`),
/// and in-flight calls get `config.drain_timeout` to finish.
pub async fn serve(
    config: Config,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // Security first: a bad token or certificate file must fail before anything serves.
    let auth = AuthLayer::new(auth::Policy::load(&config.auth)?);
    let server = tls::configure(
        Server::builder()
            // A watch stream is the worker's lease: a connection that went half-open (its
            // peer's host vanished without a FIN) must end its streams, or the lease would
            // never lapse. Pings cost a frame each way; docs/operations.md says why these.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT)),
        &config.tls,
    )?;

    let outbound = Outbound::start(&config)?;

    // The state journal opens first: it takes the state directory's lock, which keeps a
    // second process out of the webhook store inside it too.
    let opened = config
        .state
        .as_ref()
        .map(|state| Opened::open(state.clone()))
        .transpose()?;
    let webhooks = match outbound.webhooks {
        None => None,
        Some(settings) => {
            let client = outbound.http.clone();
            let store = config.state.as_ref().map(|state| StoreSettings {
                state_dir: state.dir.clone(),
                segment_bytes: state.segment_bytes,
                keep_done_for: config.registry.closed_retention + KEEP_DONE_MARGIN,
            });
            let durable = store.is_some();
            let started = Webhooks::start(settings, store, client)?;
            info!(
                durable,
                pending = started.pending(),
                "delivering call.ended webhooks"
            );
            Some(started)
        }
    };
    let (wiring, teardowns) = ProcessHooks::wiring(
        TimerThread::Dedicated,
        webhooks.as_ref().map(Webhooks::submitter),
    );
    let registry = match (opened, &config.state) {
        (Some(opened), Some(state)) => {
            for damage in &opened.recovered.damage {
                warn!(%damage, "state journal repaired");
            }
            let registry = Registry::start_durable(config.registry.clone(), wiring, opened)
                .map_err(ServeError::Journal)?;
            info!(
                dir = %state.dir.display(),
                sessions = registry.live_sessions(),
                "state restored"
            );
            registry
        }
        _ => Registry::start(config.registry.clone(), wiring).map_err(ServeError::Timers)?,
    };
    teardowns.start(Arc::downgrade(&registry), outbound.room_service);
    if let Some(webhooks) = &webhooks {
        webhooks.submitter().restore_done();
    }
    let journal_failed = registry.journal_failed();
    let draining = CancellationToken::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<EndCallServiceServer<EndCallApi>>()
        .await;

    // Reflection serves our descriptors and health's, so grpcurl needs no proto file.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    // grpcurl before 1.8.7 only speaks v1alpha.
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let api = EndCallServiceServer::new(
        EndCallApi::new(
            Arc::clone(&registry),
            config.wind_up.clone(),
            draining.clone(),
        )
        .with_watch_slots(WatchSlots::new(config.max_watchers)),
    )
    .max_decoding_message_size(config.max_request_bytes);

    let router = server
        // gRPC's reference implementations answer an oversized message with
        // RESOURCE_EXHAUSTED, as our contract does for every limit; tonic says OUT_OF_RANGE.
        .layer(MapResponseLayer::new(oversized_as_resource_exhausted))
        // Inside the size rewrite, in front of every service: reflection reveals the API, so it
        // needs the token too; health may be exempt (src/auth.rs).
        .layer(auth)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Only our service is limited: health must answer probes however busy the server is.
        .add_service(limits::limit(api, config.request_limits));

    let stop_accepting = draining.clone().cancelled_owned();
    let (serving, socket_path): (ServeFuture, _) = match listener {
        Listener::Tcp(l) => {
            // Replies are small and latency-bound: no Nagle delay.
            let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
            (
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop_accepting)),
                None,
            )
        }
        Listener::Unix(l, path) => (
            Box::pin(
                router.serve_with_incoming_shutdown(UnixListenerStream::new(l), stop_accepting),
            ),
            Some(path),
        ),
    };
    let mut serving = serving;

    let journal_failure = async {
        match &journal_failed {
            Some(failed) => failed.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let webhook_store_failed = webhooks.as_ref().map(Webhooks::failed);
    let webhook_store_failure = async {
        match &webhook_store_failed {
            Some(failed) => failed.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = &mut serving => return Ok(result?),
        () = shutdown => {}
        // Nothing more can be made durable: stop, and let the restart replay the journal.
        () = journal_failure => {}
        () = webhook_store_failure => {}
    }

    info!(
        shutdown_delay = ?config.shutdown_delay,
        drain_timeout = ?config.drain_timeout,
        "shutdown requested: draining"
    );
    health
        .set_not_serving::<EndCallServiceServer<EndCallApi>>()
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // Still serving, but unready: whoever routes by health stops sending work here first.
    tokio::select! {
        result = &mut serving => return Ok(result?),
        () = tokio::time::sleep(config.shutdown_delay) => {}
    }
    draining.cancel();
    let drain_deadline = Instant::now() + config.drain_timeout;
    match tokio::time::timeout(config.drain_timeout, serving).await {
        Ok(result) => result?,
        Err(_) => warn!(
            drain_timeout = ?config.drain_timeout,
            "drain timed out: exiting with connections still open"
        ),
    }
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    if journal_failed.is_some_and(|failed| failed.is_cancelled()) {
        return Err(ServeError::JournalFailed);
    }
    if webhook_store_failed.is_some_and(|failed| failed.is_cancelled()) {
        return Err(ServeError::WebhookStoreFailed);
    }
    // Timer ticks are not waited for as they happen: put the last ones on disk before exiting.
    if let Some(synced) = registry.sync_journal() {
        let _ = synced.await;
    }
    // Without --state-dir, deliveries get what is left of the drain; with it, they are on disk.
    if let Some(webhooks) = webhooks {
        webhooks.stop(drain_deadline).await;
    }
    // Reports are logged from a thread of their own: theirs come before the last line.
    let _ = tokio::task::spawn_blocking(telemetry::flush_reports).await;
    info!("stopped");
    Ok(())
}

/// Rewrites tonic's OUT_OF_RANGE for a request over the size limit into RESOURCE_EXHAUSTED.
/// Such a refusal is a trailers-only response, and tonic leaves its `Status` in the
/// extensions, so only the header needs changing.
fn oversized_as_resource_exhausted(mut response: http::Response<Body>) -> http::Response<Body> {
    let too_large = response.extensions().get::<Status>().is_some_and(|status| {
        status.code() == Code::OutOfRange
            && status
                .message()
                .starts_with("Error, decoded message length too large")
    });
    if too_large {
        metrics::rejected("size_limit");
        response.headers_mut().insert(
            Status::GRPC_STATUS,
            http::HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
    response
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are installed by this call, not when the future is first polled: a signal
/// that arrives between start-up and serving must drain too, not kill the process.
pub fn termination() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM received"),
                    _ = int.recv() => info!("SIGINT received"),
                }
            }
            (term, int) => {
                warn!(
                    ?term,
                    ?int,
                    "cannot watch SIGTERM/SIGINT; only Ctrl-C will stop the server"
                );
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
