//! Signals and the drain: SIGTERM and SIGINT, the shutdown delay, and what a build says at start-up.

use std::time::{Duration, Instant};

use endcall_sidecar::{probe, proto::v1::end_call_service_client::EndCallServiceClient};
use endcall_testkit::{process::Sidecar, *};
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

/// The test and the binary are built with the same flags: a build without
/// `--cfg tokio_unstable` warns at start-up that the runtime's LIFO slot is on, and only then.
#[tokio::test]
async fn a_build_without_tokio_unstable_says_so_at_start_up() {
    let mut sidecar = Sidecar::start(&[]);
    sidecar.signal("TERM");
    assert!(sidecar.wait().await.success());
    let logs = sidecar.stderr();
    assert_eq!(
        logs.contains("built without --cfg tokio_unstable"),
        !cfg!(tokio_unstable),
        "{logs}"
    );
}

#[tokio::test]
async fn sigint_stops_an_idle_server() {
    let mut sidecar = Sidecar::start(&[]);
    sidecar.signal("INT");
    assert!(sidecar.wait().await.success());
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
