//! The built binary as an operator runs it: flags, the probe subcommand, logs, and SIGTERM
//! while a watch stream is open.

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use common::*;
use endcall_sidecar::{
    config::ListenAddr,
    probe,
    proto::v1::{end_call_service_client::EndCallServiceClient, CloseReason},
};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_endcall-sidecar");

struct Sidecar {
    child: Child,
    addr: ListenAddr,
}

impl Sidecar {
    fn start(flags: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Sidecar { child, addr }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, failing the test past `PATIENCE`.
    async fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let mut sidecar = Sidecar::start(&["--log-format", "json"]);
    let channel = probe::connect(&sidecar.addr, PATIENCE).await.unwrap();
    let mut c = EndCallServiceClient::new(channel);
    c.end_call(end_call("logged", "S")).await.unwrap();
    c.on_speech_done(done("logged", "S")).await.unwrap();
    for _ in 0..2 {
        c.on_session_close(pb_close_with_error("logged"))
            .await
            .unwrap();
    }
    sidecar.signal("TERM");
    assert!(sidecar.wait().await.success());

    let logs = sidecar.stderr();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let reports: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "session ended")
        .collect();
    assert_eq!(reports.len(), 1, "{logs}");
    assert_eq!(reports[0]["session_id"], "logged");
    assert_eq!(reports[0]["outcome"], "tool_turn_done");
    assert_eq!(reports[0]["close_reason"], "user_initiated");
    let report: serde_json::Value =
        serde_json::from_str(reports[0]["report"].as_str().unwrap()).unwrap();
    assert_eq!(report["directives"].as_array().unwrap().len(), 3);
    // The worker's error text is reported by GetSession, never logged.
    assert!(!logs.contains("secret caller detail"), "{logs}");
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
        ("--drain-timeout", "ENDCALL_DRAIN_TIMEOUT"),
        ("--log-format", "ENDCALL_LOG_FORMAT"),
        ("--log-level", "ENDCALL_LOG_LEVEL"),
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
