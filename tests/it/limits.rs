//! Server-wide limits, on the real server: requests over `--max-concurrent-requests` or
//! `--max-requests-per-second` and streams over `--max-watchers` are refused at once with
//! RESOURCE_EXHAUSTED naming the flag; health is never limited; a watcher whose client never
//! reads gives its slot back when its session closes.

use std::time::{Duration, Instant};

use endcall_sidecar::proto::v1 as pb;
use endcall_testkit::*;
use tonic::{Code, Status};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Calls GetTool until `accept` holds for its result, failing the test after PATIENCE.
async fn get_tool_until(
    client: &mut Client,
    what: &str,
    accept: impl Fn(&Result<pb::ToolDefinition, Status>) -> bool,
) -> Result<pb::ToolDefinition, Status> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let result = client
            .get_tool(pb::GetToolRequest::default())
            .await
            .map(tonic::Response::into_inner);
        if accept(&result) {
            return result;
        }
        assert!(Instant::now() < deadline, "{what}: last result {result:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn health_ok(server: &TestServer) {
    let mut health = HealthClient::new(server.channel().await);
    let reply = tokio::time::timeout(PATIENCE, health.check(HealthCheckRequest::default()))
        .await
        .expect("health answers in time")
        .expect("health is not limited");
    assert_eq!(reply.into_inner().status, 1, "SERVING");
}

#[tokio::test]
async fn a_request_over_the_concurrency_limit_is_refused_at_once() {
    let server = TestServer::start(&["--max-concurrent-requests", "1"]).await;
    // A unary call whose request message never comes: the server's handler waits for it
    // while holding the one permit.
    let held = hold_the_only_permit(server.channel().await);

    let mut client = server.client().await;
    let refused = get_tool_until(&mut client, "refused while the permit is held", |r| {
        r.is_err()
    })
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-concurrent-requests"),
        "{refused:?}"
    );
    // Refused, not queued: every further call is answered while the permit is still held.
    for _ in 0..10 {
        let status = tokio::time::timeout(PATIENCE, client.get_tool(pb::GetToolRequest::default()))
            .await
            .expect("answered, not queued")
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
    // Health is not limited: it answers while the permit is held.
    health_ok(&server).await;

    // The held call goes away (the client resets its stream): the permit is given back.
    held.abort();
    let _ = held.await;
    get_tool_until(&mut client, "served once the permit is back", Result::is_ok)
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_open_watch_stream_holds_no_request_permit() {
    let server = TestServer::start(&["--max-concurrent-requests", "1"]).await;
    let mut client = server.client().await;
    let mut stream = client
        .watch_session(watch("held", 0))
        .await
        .unwrap()
        .into_inner();
    for i in 0..20 {
        client
            .on_speech_created(created("held", &format!("s{i}")))
            .await
            .expect("a permit is free while the stream is open");
    }
    client
        .on_session_close(close("held", pb::CloseReason::UserInitiated))
        .await
        .unwrap();
    assert_ends(&mut stream).await;
    server.stop().await;
}

#[tokio::test]
async fn requests_over_the_rate_limit_are_refused() {
    let server = TestServer::start(&["--max-requests-per-second", "2"]).await;
    let mut client = server.client().await;
    let started = Instant::now();
    let (mut served, mut refused) = (0u64, 0u64);
    for _ in 0..20 {
        match client.get_tool(pb::GetToolRequest::default()).await {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("--max-requests-per-second"),
                    "{status:?}"
                );
                refused += 1;
            }
        }
    }
    // A burst of 2, then 2 per second: whatever the machine's speed, at most this many pass.
    let allowed = 2 + (started.elapsed().as_secs_f64() * 2.0).ceil() as u64;
    assert!(served >= 1, "the first request is served");
    assert!(served <= allowed, "{served} served, {allowed} allowed");
    assert_eq!(served + refused, 20);
    // Health is not rate limited.
    for _ in 0..10 {
        health_ok(&server).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn watch_streams_over_the_limit_are_refused_until_one_ends() {
    let server = TestServer::start(&["--max-watchers", "1"]).await;
    let mut client = server.client().await;
    let mut first = client
        .watch_session(watch("a", 0))
        .await
        .unwrap()
        .into_inner();

    let refused = client.watch_session(watch("b", 0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--max-watchers"), "{refused:?}");

    client
        .on_session_close(close("a", pb::CloseReason::UserInitiated))
        .await
        .unwrap();
    assert_ends(&mut first).await;
    // The slot comes back as the stream's task ends, just after the stream's end was sent.
    let deadline = Instant::now() + PATIENCE;
    let mut second = loop {
        match client.watch_session(watch("b", 0)).await {
            Ok(stream) => break stream.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(Instant::now() < deadline, "the slot never came back");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    client
        .on_session_close(close("b", pb::CloseReason::UserInitiated))
        .await
        .unwrap();
    assert_ends(&mut second).await;
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_that_never_reads_gives_its_slot_back_when_the_session_closes() {
    let server = TestServer::start(&["--max-watchers", "1"]).await;
    let mut client = server.client().await;
    // Opened, then never read until the end: its directives pile up unread.
    let mut stuck = client
        .watch_session(watch("stuck", 0))
        .await
        .unwrap()
        .into_inner();
    client.end_call(end_call("stuck", "bye")).await.unwrap();
    let r = client.on_speech_done(done("stuck", "bye")).await.unwrap();
    assert_eq!(r.into_inner().directives.len(), 1, "SHUTDOWN_SESSION");
    let r = client
        .on_session_close(close("stuck", pb::CloseReason::UserInitiated))
        .await
        .unwrap();
    assert_eq!(
        r.into_inner().directives.len(),
        2,
        "DELETE_ROOM, SHUTDOWN_JOB"
    );

    // Nothing on the server waits for that client: its slot is free for another stream.
    let deadline = Instant::now() + PATIENCE;
    let other = loop {
        match client.watch_session(watch("other", 0)).await {
            Ok(stream) => break stream.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(Instant::now() < deadline, "the stuck watcher kept its slot");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    drop(other);

    // And the client, reading at last, gets every directive, then the stream's end.
    let seqs = [
        next(&mut stuck).await.seq,
        next(&mut stuck).await.seq,
        next(&mut stuck).await.seq,
    ];
    assert_eq!(seqs, [1, 2, 3]);
    assert_ends(&mut stuck).await;
    server.stop().await;
}
