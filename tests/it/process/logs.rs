//! Logs: one end-of-call report line per session, and the report target on its own.

use endcall_sidecar::{
    probe,
    proto::v1::{end_call_service_client::EndCallServiceClient, CloseReason},
};
use endcall_testkit::{process::Sidecar, *};

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
    assert_eq!(reports[0]["ended_reason"], "agent_end_call");
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
