//! The built binary as an operator runs it: flags, the probe subcommand, logs, and SIGTERM
//! while a watch stream is open.

mod common;

use std::{
    io::Read as _,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    binary::{Sidecar, BIN},
    *,
};
use endcall_sidecar::{
    probe,
    proto::v1::{self as pb, end_call_service_client::EndCallServiceClient, CloseReason},
};
use tonic::Code;

#[tokio::test]
async fn sigterm_with_an_open_watch_stream_drains_and_exits_0() {
    let mut sidecar = Sidecar::start(&["--drain-timeout", "5s"]);
    let channel = probe::connect(&sidecar.addr, PATIENCE).await.unwrap();
    let mut c = EndCallServiceClient::new(channel);
    c.end_call(end_call("drain", "S")).await.unwrap();
    let mut stream = c
        .watch_session(watch("drain", 0))
        .await
        .unwrap()
        .into_inner();

    let started = Instant::now();
    sidecar.signal("TERM");
    // The open stream ends with UNAVAILABLE, telling the watcher to resume elsewhere.
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("stream ends in time");
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("after_seq"));

    let exit = sidecar.wait().await;
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drained without waiting for the drain timeout"
    );
    let logs = sidecar.stderr();
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(logs.contains("stopped"), "{logs}");
}

#[tokio::test]
async fn sigint_stops_an_idle_server() {
    let mut sidecar = Sidecar::start(&[]);
    sidecar.signal("INT");
    assert!(sidecar.wait().await.success());
}

#[tokio::test]
async fn probe_subcommand_exits_0_when_serving_and_1_otherwise() {
    let sidecar = Sidecar::start(&[]);
    let out = Command::new(BIN)
        .args(["probe", "--addr", &sidecar.addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));

    // The probe defaults to the listen address, as a container's HEALTHCHECK uses it.
    let out = Command::new(BIN)
        .arg("probe")
        .env("ENDCALL_LISTEN", sidecar.addr.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    drop(sidecar);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = Command::new(BIN)
        .args([
            "probe",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn json_logs_carry_one_end_of_call_report_per_session() {
    // Our crate at DEBUG shows the per-RPC spans; the INFO lines are what production sees.
    let (sidecar, mut c) = logging_json("info,endcall_sidecar=debug").await;
    c.end_call(end_call("logged", "S")).await.unwrap();
    c.on_speech_done(done("logged", "S")).await.unwrap();
    for _ in 0..2 {
        c.on_session_close(pb_close_with_error("logged"))
            .await
            .unwrap();
    }
    let (logs, lines) = stopped_json_logs(sidecar).await;
    let reports: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "session ended")
        .collect();
    assert_eq!(reports.len(), 1, "{logs}");
    assert_eq!(reports[0]["session_id"], "logged");
    // Logged inside the RPC's span (a DEBUG span), which names the RPC and the session.
    assert_eq!(reports[0]["span"]["method"], "OnSessionClose");
    assert_eq!(reports[0]["span"]["session_id"], "logged");
    let rpc_lines = lines
        .iter()
        .filter(|l| l["level"] == "DEBUG" && l["message"] == "ok")
        .filter(|l| l["span"]["session_id"] == "logged")
        .count();
    assert_eq!(rpc_lines, 4, "one DEBUG line per healthy RPC: {logs}");
    // Healthy RPCs leave no line at INFO: only start-up, the report and the shutdown do. The
    // report is written from a thread of its own, a batch at a time, so it may come after the
    // signal's lines; never after the last line.
    let infos = info_messages(&lines);
    let (report_lines, others): (Vec<&str>, Vec<&str>) =
        infos.iter().partition(|m| **m == "session ended");
    assert_eq!(report_lines.len(), 1, "{logs}");
    assert_eq!(
        others,
        [
            "serving",
            "SIGTERM received",
            "shutdown requested: draining",
            "stopped"
        ],
        "{logs}"
    );
    assert_eq!(infos.last(), Some(&"stopped"), "{logs}");
    assert_eq!(reports[0]["outcome"], "tool_turn_done");
    assert_eq!(reports[0]["close_reason"], "user_initiated");
    let report: serde_json::Value =
        serde_json::from_str(reports[0]["report"].as_str().unwrap()).unwrap();
    assert_eq!(report["directives"].as_array().unwrap().len(), 3);
    // The worker's error text is reported by GetSession, never logged.
    assert!(!logs.contains("secret caller detail"), "{logs}");
}

#[tokio::test]
async fn the_report_target_can_be_turned_off_alone() {
    let (sidecar, mut c) = logging_json("info,endcall::report=off").await;
    c.end_call(end_call("unlogged", "S")).await.unwrap();
    c.on_speech_done(done("unlogged", "S")).await.unwrap();
    c.on_session_close(close("unlogged", CloseReason::UserInitiated))
        .await
        .unwrap();
    // The report is still there for GetSession; only its log line is gone.
    let report = c
        .get_session(endcall_sidecar::proto::v1::GetSessionRequest {
            session_id: "unlogged".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.directives.len(), 3);
    let (logs, lines) = stopped_json_logs(sidecar).await;
    assert_eq!(
        info_messages(&lines),
        [
            "serving",
            "SIGTERM received",
            "shutdown requested: draining",
            "stopped"
        ],
        "{logs}"
    );
}

/// A sidecar writing JSON log lines at `level`, and a client of it.
async fn logging_json(level: &str) -> (Sidecar, EndCallServiceClient<tonic::transport::Channel>) {
    let sidecar = Sidecar::start(&["--log-format", "json", "--log-level", level]);
    let channel = probe::connect(&sidecar.addr, PATIENCE).await.unwrap();
    (sidecar, EndCallServiceClient::new(channel))
}

/// Stops `sidecar` with SIGTERM; its stderr, and each of its lines parsed.
async fn stopped_json_logs(mut sidecar: Sidecar) -> (String, Vec<serde_json::Value>) {
    sidecar.signal("TERM");
    assert!(sidecar.wait().await.success());
    let logs = sidecar.stderr();
    let lines = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (logs, lines)
}

/// The messages of the `INFO` lines, in order.
fn info_messages(lines: &[serde_json::Value]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l["level"] == "INFO")
        .filter_map(|l| l["message"].as_str())
        .collect()
}

fn pb_close_with_error(session: &str) -> endcall_sidecar::proto::v1::OnSessionCloseRequest {
    endcall_sidecar::proto::v1::OnSessionCloseRequest {
        error_message: Some("secret caller detail".into()),
        ..close(session, CloseReason::UserInitiated)
    }
}

#[test]
fn help_documents_every_flag_with_its_variable() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--listen", "ENDCALL_LISTEN"),
        ("--delete-room", "ENDCALL_DELETE_ROOM"),
        ("--end-instructions", "ENDCALL_END_INSTRUCTIONS"),
        ("--no-end-instructions", "ENDCALL_NO_END_INSTRUCTIONS"),
        ("--extra-description", "ENDCALL_EXTRA_DESCRIPTION"),
        ("--ignore-on-enter", "ENDCALL_IGNORE_ON_ENTER"),
        ("--reply-timeout", "ENDCALL_REPLY_TIMEOUT"),
        ("--early-reply-capture", "ENDCALL_EARLY_REPLY_CAPTURE"),
        ("--playout-guard", "ENDCALL_PLAYOUT_GUARD"),
        ("--wind-up-grace", "ENDCALL_WIND_UP_GRACE"),
        ("--wind-up-instructions", "ENDCALL_WIND_UP_INSTRUCTIONS"),
        ("--closed-retention", "ENDCALL_CLOSED_RETENTION"),
        ("--idle-expiry", "ENDCALL_IDLE_EXPIRY"),
        ("--max-sessions", "ENDCALL_MAX_SESSIONS"),
        ("--max-request-bytes", "ENDCALL_MAX_REQUEST_BYTES"),
        (
            "--max-concurrent-requests",
            "ENDCALL_MAX_CONCURRENT_REQUESTS",
        ),
        (
            "--max-requests-per-second",
            "ENDCALL_MAX_REQUESTS_PER_SECOND",
        ),
        ("--max-watchers", "ENDCALL_MAX_WATCHERS"),
        ("--metrics-listen", "ENDCALL_METRICS_LISTEN"),
        ("--shutdown-delay", "ENDCALL_SHUTDOWN_DELAY"),
        ("--drain-timeout", "ENDCALL_DRAIN_TIMEOUT"),
        ("--log-format", "ENDCALL_LOG_FORMAT"),
        ("--log-level", "ENDCALL_LOG_LEVEL"),
        ("--auth-token", "ENDCALL_AUTH_TOKEN"),
        ("--auth-token-file", "ENDCALL_AUTH_TOKEN_FILE"),
        ("--auth-health-exempt", "ENDCALL_AUTH_HEALTH_EXEMPT"),
        ("--tls-cert", "ENDCALL_TLS_CERT"),
        ("--tls-key", "ENDCALL_TLS_KEY"),
        ("--tls-client-ca", "ENDCALL_TLS_CLIENT_CA"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(env), "{env} missing from --help");
    }
}

#[test]
fn a_bad_flag_value_exits_2_naming_the_flag() {
    let out = Command::new(BIN)
        .args(["--reply-timeout", "0s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reply-timeout"));
    let out = Command::new(BIN)
        .args(["--log-level", "no=such=filter"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-level"));
}

/// A free loopback port for a listener the test cannot bind itself (the metrics exporter).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `GET /metrics` over plain HTTP/1.1, returning the body.
fn scrape(port: u16) -> String {
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
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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
async fn health_turns_not_serving_while_the_shutdown_delay_runs() {
    let mut sidecar = Sidecar::start(&["--shutdown-delay", "3s"]);
    let channel = probe::connect(&sidecar.addr, PATIENCE).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut c = EndCallServiceClient::new(channel);
    let check = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    let status = health
        .check(check.clone())
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    sidecar.signal("TERM");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = health
            .check(check.clone())
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == ServingStatus::NotServing {
            break;
        }
        assert!(Instant::now() < deadline, "health never turned NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Unready, yet still serving the calls it gets during the delay.
    c.end_call(end_call("late", "S")).await.unwrap();
    assert!(sidecar.wait().await.success());
}

/// Runs `endcall-sidecar probe` with these flags and variables: (exit code, stdout + stderr).
fn run_probe(flags: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("probe")
        .args(flags)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn the_binary_serves_mtls_with_a_token_file_and_the_probe_gets_through() {
    const TOKEN: &str = "probe-me-if-you-can";
    let pki = common::pki::Pki::new();
    let token_file = pki.path("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_file = token_file.display().to_string();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut sidecar = Sidecar::start(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server.key"),
        "--tls-client-ca",
        &pki.arg("client-ca.pem"),
        "--auth-token-file",
        &token_file,
        "--auth-health-exempt",
        "false",
        "--metrics-listen",
        &metrics,
        "--log-level",
        "debug",
    ]);
    let addr = sidecar.addr.to_string();
    let tls = [
        "--addr",
        &addr,
        "--tls-ca",
        &pki.arg("ca.pem"),
        "--tls-cert",
        &pki.arg("client.pem"),
        "--tls-key",
        &pki.arg("client.key"),
    ];

    // Everything right: TLS, client certificate, and the token from the shared variable.
    let (code, out) = run_probe(&tls, &[("ENDCALL_AUTH_TOKEN_FILE", &token_file)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("SERVING"), "{out}");
    let (code, out) = run_probe(&tls, &[("ENDCALL_AUTH_TOKEN", TOKEN)]);
    assert_eq!(code, Some(0), "{out}");

    // No token: refused, and counted.
    let (code, out) = run_probe(&tls, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("Unauthenticated: missing authorization metadata"),
        "{out}"
    );
    // A wrong token: refused without echoing it.
    let (code, out) = run_probe(&tls, &[("ENDCALL_AUTH_TOKEN", "probe-me-if-you-cant")]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("invalid bearer token"), "{out}");
    let body = scrape(port);
    assert_eq!(
        sample(
            &body,
            "endcall_requests_rejected_total",
            &[("reason", "unauthenticated")]
        ),
        Some(2.0),
        "{body}"
    );

    // No client certificate, or no TLS at all: the probe fails.
    let (code, out) = run_probe(&tls[..4], &[("ENDCALL_AUTH_TOKEN", TOKEN)]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = run_probe(&["--addr", &addr], &[("ENDCALL_AUTH_TOKEN", TOKEN)]);
    assert_eq!(code, Some(1), "{out}");
    // A probe flag naming a missing file exits 2 naming it.
    let (code, out) = run_probe(&["--addr", &addr, "--tls-ca", "/nonexistent/ca.pem"], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--tls-ca /nonexistent/ca.pem"), "{out}");

    sidecar.signal("TERM");
    assert!(sidecar.wait().await.success());
    let logs = sidecar.stderr();
    assert!(logs.contains("refused"), "{logs}");
    assert!(
        !logs.contains("probe-me-if-you-ca"),
        "a token reached the logs: {logs}"
    );
}

#[test]
fn bad_security_settings_exit_2_naming_the_flag() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let empty = empty.path().display().to_string();
    // (flags, variables, what the error must name)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (&["--auth-token", "s3cret"], &[], "ENDCALL_AUTH_TOKEN"),
        (
            &["--auth-token-file", &empty],
            &[("ENDCALL_AUTH_TOKEN", "s3cret")],
            "--auth-token-file",
        ),
        (&["--auth-token-file", &empty], &[], "--auth-token-file"),
        (
            &["--auth-token-file", "/nonexistent/token"],
            &[],
            "/nonexistent/token",
        ),
        (&["--tls-cert", "/x.pem"], &[], "--tls-key"),
        (
            &[
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
            ],
            &[],
            "--tls-cert /nonexistent/c.pem",
        ),
    ];
    for (flags, env, named) in cases {
        let out = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{flags:?}: {stderr}");
        assert!(out.stdout.is_empty(), "nothing announced: {flags:?}");
    }
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
