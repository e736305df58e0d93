//! The Prometheus endpoint: RPCs, sessions, directives, watchers, shed requests and live tasks.

use std::{
    io::Read as _,
    time::{Duration, Instant},
};

use endcall_sidecar::{
    probe,
    proto::v1::{self as pb, end_call_service_client::EndCallServiceClient, CloseReason},
};
use endcall_testkit::{process::Sidecar, *};
use tonic::Code;

/// A free loopback port for a listener the test cannot bind itself (the metrics exporter).
pub(super) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `GET /metrics` over plain HTTP/1.1, returning the body.
pub(super) fn scrape(port: u16) -> String {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap()
}

/// The value of the sample `name{labels}` whose labels include every pair given.
pub(super) fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split([' ', '{']).next().unwrap_or("");
            metric == name
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_endpoint_reports_rpcs_sessions_directives_and_watchers() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let sidecar = Sidecar::start(&["--metrics-listen", &listen, "--reply-timeout", "100ms"]);
    // Before any call, the gauges and outcome counters already read 0 (not "no data").
    let body = scrape(port);
    assert_eq!(
        sample(&body, "endcall_sessions", &[("state", "active")]),
        Some(0.0),
        "{body}"
    );
    assert_eq!(sample(&body, "endcall_watchers", &[]), Some(0.0), "{body}");
    assert_eq!(
        sample(
            &body,
            "endcall_sessions_ended_total",
            &[("outcome", "reply_timeout")]
        ),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "endcall_sessions_ended_by_reason_total",
            &[("ended_reason", "silence_timeout")]
        ),
        Some(0.0),
        "{body}"
    );

    let channel = probe::connect(&sidecar.addr, PATIENCE).await.unwrap();
    let mut c = EndCallServiceClient::new(channel.clone());

    // A pipeline call, a realtime call whose reply times out, a call closed without end_call.
    c.end_call(end_call("m-pipe", "S")).await.unwrap();
    c.on_speech_done(done("m-pipe", "S")).await.unwrap();
    let mut timeout_stream = c
        .watch_session(watch("m-rt", 0))
        .await
        .unwrap()
        .into_inner();
    c.end_call(realtime_end_call("m-rt", "S")).await.unwrap();
    c.on_speech_done(done("m-rt", "S")).await.unwrap();
    next(&mut timeout_stream).await;
    c.on_user_speech(user_speech("m-none")).await.unwrap();
    for id in ["m-pipe", "m-rt", "m-none"] {
        c.on_session_close(close(id, CloseReason::UserInitiated))
            .await
            .unwrap();
    }
    assert_eq!(kind(&next(&mut timeout_stream).await), Kind::DeleteRoom);
    next(&mut timeout_stream).await;
    assert_ends(&mut timeout_stream).await;
    // Two bad requests (one that does not decode), and one watcher left open.
    c.end_call(end_call("", "S")).await.unwrap_err();
    let garbage = vec![0x0f];
    let status = raw_call(channel.clone(), "EndCall", garbage).await;
    assert_eq!(status.unwrap_err().code(), Code::InvalidArgument);
    let _open = c
        .watch_session(watch("m-open", 0))
        .await
        .unwrap()
        .into_inner();
    c.on_speech_created(created("m-open", "A")).await.unwrap();

    let body = scrape(port);
    let expect = |name: &str, labels: &[(&str, &str)], value: f64| {
        assert_eq!(
            sample(&body, name, labels),
            Some(value),
            "{name}{labels:?} in\n{body}"
        );
    };
    expect(
        "endcall_rpc_requests_total",
        &[("method", "EndCall"), ("code", "OK")],
        2.0,
    );
    expect(
        "endcall_rpc_requests_total",
        &[("method", "EndCall"), ("code", "INVALID_ARGUMENT")],
        1.0,
    );
    // Every method's OK count exists from the start, so a rate over it has no gap.
    expect(
        "endcall_rpc_requests_total",
        &[("method", "GetTool"), ("code", "OK")],
        0.0,
    );
    // The one that does not decode is refused by the codec, before any handler: it counts
    // under validation, but not in the RPC counts.
    expect(
        "endcall_requests_rejected_total",
        &[("reason", "validation")],
        2.0,
    );
    expect(
        "endcall_sessions_ended_total",
        &[("outcome", "tool_turn_done")],
        1.0,
    );
    expect(
        "endcall_sessions_ended_total",
        &[("outcome", "reply_timeout")],
        1.0,
    );
    expect(
        "endcall_sessions_ended_total",
        &[("outcome", "closed_without_end_call")],
        1.0,
    );
    expect(
        "endcall_sessions_closed_total",
        &[("reason", "user_initiated")],
        3.0,
    );
    expect(
        "endcall_sessions_ended_by_reason_total",
        &[("ended_reason", "agent_end_call")],
        2.0,
    );
    expect(
        "endcall_sessions_ended_by_reason_total",
        &[("ended_reason", "agent_closed")],
        1.0,
    );
    expect(
        "endcall_rpc_requests_total",
        &[("method", "OnUserSpeech"), ("code", "OK")],
        1.0,
    );
    expect(
        "endcall_directives_total",
        &[("kind", "shutdown_session")],
        2.0,
    );
    expect("endcall_directives_total", &[("kind", "delete_room")], 2.0);
    expect("endcall_directives_total", &[("kind", "shutdown_job")], 2.0);
    expect("endcall_end_call_to_shutdown_seconds_count", &[], 2.0);
    expect("endcall_sessions", &[("state", "closed")], 3.0);
    expect("endcall_sessions", &[("state", "active")], 1.0);
    expect("endcall_watchers", &[], 1.0);
    assert!(sample(&body, "endcall_timers_pending", &[]).is_some_and(|n| n >= 1.0));
    assert!(
        sample(
            &body,
            "endcall_rpc_duration_seconds_bucket",
            &[("method", "OnSpeechDone"), ("le", "+Inf")]
        ) == Some(2.0),
        "{body}"
    );
    assert!(
        body.contains("# HELP endcall_sessions_ended_total"),
        "{body}"
    );
}

#[tokio::test]
async fn metrics_count_shed_requests_and_refused_watchers_and_report_live_tasks() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let sidecar = Sidecar::start(&[
        "--metrics-listen",
        &listen,
        "--max-concurrent-requests",
        "1",
        "--max-watchers",
        "1",
    ]);
    let channel = probe::connect(&sidecar.addr, PATIENCE).await.unwrap();
    let mut c = EndCallServiceClient::new(channel.clone());

    let _open = c.watch_session(watch("w-1", 0)).await.unwrap().into_inner();
    let refused = c.watch_session(watch("w-2", 0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // A unary call whose message never comes holds the one request permit.
    let held = hold_the_only_permit(channel);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match c.get_tool(pb::GetToolRequest::default()).await {
            Err(status) if status.code() == Code::ResourceExhausted => break,
            other => assert!(Instant::now() < deadline, "never shed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    held.abort();

    let body = scrape(port);
    let value = |name: &str, labels: &[(&str, &str)]| sample(&body, name, labels);
    assert_eq!(
        value(
            "endcall_requests_rejected_total",
            &[("reason", "watcher_limit")]
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        value(
            "endcall_requests_rejected_total",
            &[("reason", "concurrency_limit")]
        )
        .is_some_and(|n| n >= 1.0),
        "{body}"
    );
    // Sampled from the first second on: the runtime always has tasks (at least this scrape's).
    assert!(
        value("endcall_runtime_alive_tasks", &[]).is_some_and(|n| n >= 1.0),
        "{body}"
    );
}

/// With webhooks on, their series read 0 from the start, and a failing receiver shows as
/// retried attempts, a queue depth and an oldest pending age; without, there are none.
#[tokio::test]
async fn webhook_metrics_start_at_zero_and_show_a_failing_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    // Nothing listens on this port: every attempt is refused.
    let receiver = format!("http://127.0.0.1:{}/hook", free_port());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let sidecar = Sidecar::start(&[
        "--metrics-listen",
        &listen,
        "--webhook-url",
        &receiver,
        "--webhook-secret-file",
        secret.to_str().unwrap(),
        "--webhook-backoff",
        "20ms",
        "--webhook-backoff-max",
        "50ms",
    ]);
    // The address is announced before serving starts the webhooks (which register their
    // series): wait until the first scrape that shows them.
    let deadline = std::time::Instant::now() + endcall_testkit::PATIENCE;
    let body = loop {
        let body = scrape(port);
        if body.contains("endcall_webhook_deliveries_total") || std::time::Instant::now() > deadline
        {
            break body;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    for result in ["delivered", "retried", "gave_up", "gone", "dropped", "lost"] {
        assert_eq!(
            sample(
                &body,
                "endcall_webhook_deliveries_total",
                &[("result", result)]
            ),
            Some(0.0),
            "{result}: {body}"
        );
    }
    assert_eq!(sample(&body, "endcall_webhook_queue_depth", &[]), Some(0.0));

    let channel = probe::connect(&sidecar.addr, PATIENCE).await.unwrap();
    let mut c = EndCallServiceClient::new(channel);
    c.on_session_close(close("wh-1", CloseReason::UserInitiated))
        .await
        .unwrap();
    // Retries pile up, and the gauges (sampled each second) show the pending delivery.
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        let body = scrape(port);
        let retried = sample(
            &body,
            "endcall_webhook_deliveries_total",
            &[("result", "retried")],
        )
        .unwrap_or(0.0);
        let oldest = sample(&body, "endcall_webhook_oldest_pending_seconds", &[]).unwrap_or(0.0);
        if retried >= 2.0 && oldest > 0.0 {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sample(&body, "endcall_webhook_queue_depth", &[]),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(&body, "endcall_webhook_attempt_seconds_count", &[]).unwrap_or(0.0) >= 2.0,
        "{body}"
    );

    let plain_port = free_port();
    let plain_listen = format!("127.0.0.1:{plain_port}");
    let _plain = Sidecar::start(&["--metrics-listen", &plain_listen]);
    let body = scrape(plain_port);
    assert!(!body.contains("endcall_webhook_"), "{body}");
}
