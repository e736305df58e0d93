//! `teardown`: N attended sessions (each gave a room and holds a WatchSession stream) whose
//! streams all end at once, as when a node's workers die together. The server is pointed at a
//! local HTTP receiver standing in for LiveKit's RoomService (it records each request and
//! answers 200; the Python suite's stand-in is the one that verifies requests as LiveKit
//! does). Reported: the RSS per attended session, and how late each DeleteRoom request
//! arrives after its worker-lost deadline (the moment the streams were dropped plus
//! `--worker-lost-after`), p50/p99; and that every room was asked for exactly once.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use endcall_sidecar::proto::v1 as pb;
use endcall_testkit::{watch, Client};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{
    load::{connections_for, for_each, run_prefix},
    results::{mib, percentile},
    Args, Report,
};

/// The worker-lost window the section's server runs with.
const WINDOW: Duration = Duration::from_secs(2);
/// Longest wait for every request once the window has passed.
const DRAIN: Duration = Duration::from_secs(60);

type Arrivals = Arc<Mutex<Vec<(String, SystemTime)>>>;

/// A stand-in for LiveKit's RoomService that only records: (room, arrival) per DeleteRoom.
async fn receiver() -> (SocketAddr, Arrivals) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let at = SystemTime::now();
                        let ok = request.uri().path() == "/twirp/livekit.RoomService/DeleteRoom";
                        let body = request.into_body().collect().await.map(|b| b.to_bytes());
                        let room = body
                            .ok()
                            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                            .and_then(|v| v["room"].as_str().map(str::to_owned));
                        let status = match (ok, room) {
                            (true, Some(room)) => {
                                seen.lock().unwrap().push((room, at));
                                200
                            }
                            _ => 400,
                        };
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(b"{}")))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, arrivals)
}

pub(crate) async fn run(args: &Args, report: &mut Report) {
    let n = args.teardown_sessions;
    let (livekit, arrivals) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    let secret_file = dir.path().join("secret");
    std::fs::write(&key_file, "bench-key").unwrap();
    std::fs::write(&secret_file, "bench-secret-of-at-least-32-bytes!").unwrap();
    let url = format!("http://{livekit}");
    let max = (n + 10_000).to_string();
    let window = format!("{}ms", WINDOW.as_millis());
    let server = args.server.start(
        "127.0.0.1:0",
        &[
            "--max-sessions",
            &max,
            "--max-watchers",
            &max,
            "--worker-lost-after",
            &window,
            "--livekit-url",
            &url,
            "--livekit-api-key-file",
            key_file.to_str().unwrap(),
            "--livekit-api-secret-file",
            secret_file.to_str().unwrap(),
        ],
    );
    let channels = server
        .channels(connections_for(n, args.watchers_per_connection))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = server.rss();

    // Each session: OpenSession with its room, then a stream held until the drop.
    let prefix = run_prefix("td");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let chans = Arc::new(channels.clone());
    let p = prefix.clone();
    let started = Instant::now();
    let (errors, first) = for_each(n, args.concurrency, move |i| {
        let mut api = Client::new(chans[i % chans.len()].clone());
        let id = format!("{p}-{i:06}");
        let tx = tx.clone();
        async move {
            api.open_session(pb::OpenSessionRequest {
                session_id: id.clone(),
                room: format!("room-{id}"),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("OpenSession: {s}"))?;
            let stream = api
                .watch_session(watch(&id, 0))
                .await
                .map_err(|s| format!("WatchSession: {s}"))?
                .into_inner();
            let _ = tx.send(stream);
            Ok(())
        }
    })
    .await;
    let setup = started.elapsed();
    report.check(
        "teardown: every session opened and attended",
        errors == 0,
        format!("{errors} errors {first:?}"),
    );
    let mut streams = Vec::with_capacity(n);
    while let Ok(stream) = rx.try_recv() {
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_attended = server.rss();
    let per_session = rss_attended.saturating_sub(rss_before) as f64 / n.max(1) as f64;
    report.row(
        "teardown",
        &format!("RSS with {n} attended sessions"),
        format!(
            "{} -> {} ({per_session:.0} bytes per attended session, with its stream; set-up {:.1}s)",
            mib(rss_before),
            mib(rss_attended),
            setup.as_secs_f64()
        ),
    );

    // All streams end at once: each drop resets its HTTP/2 stream.
    let dropped = SystemTime::now();
    drop(streams);
    let deadline = dropped + WINDOW;
    let waited = Instant::now();
    loop {
        let got = arrivals.lock().unwrap().len();
        if got >= n || waited.elapsed() > WINDOW + DRAIN {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything asked twice shows within a little more time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let arrivals = arrivals.lock().unwrap().clone();
    let mut per_room: HashMap<&str, usize> = HashMap::new();
    for (room, _) in &arrivals {
        *per_room.entry(room.as_str()).or_default() += 1;
    }
    let twice = per_room.values().filter(|&&c| c > 1).count();
    report.check(
        "teardown: every room deleted exactly once",
        per_room.len() == n && twice == 0,
        format!(
            "{} rooms of {n}, {twice} asked more than once",
            per_room.len()
        ),
    );
    let early = arrivals.iter().filter(|(_, at)| *at < deadline).count();
    report.check(
        "teardown: no room deleted before its worker-lost window ended",
        early == 0,
        format!("{early} early"),
    );
    let mut late: Vec<Duration> = arrivals
        .iter()
        .map(|(_, at)| at.duration_since(deadline).unwrap_or_default())
        .collect();
    late.sort_unstable();
    if late.is_empty() {
        report.row("teardown", "DeleteRoom lateness", "no requests");
        return;
    }
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    report.row(
        "teardown",
        &format!(
            "DeleteRoom after the {}s window (all {n} dropped at once)",
            WINDOW.as_secs()
        ),
        format!(
            "p50 {} / p99 {} / max {} (n={})",
            ms(percentile(&late, 50.0)),
            ms(percentile(&late, 99.0)),
            ms(late[late.len() - 1]),
            late.len()
        ),
    );
}
