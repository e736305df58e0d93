//! The same server on a Unix socket, as an agent in the same pod reaches it through a volume.

use endcall_sidecar::proto::v1::{CloseReason, ShutdownCause};
use endcall_testkit::*;

#[tokio::test]
async fn pipeline_flow_and_reply_timeout_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endcall.sock");
    let listen = format!("unix:{}", path.display());
    let server = TestServer::start_on(&listen, &["--reply-timeout", "200ms"]).await;
    let mut c = server.client().await;
    // Owner and group may connect (an agent in the pod's fsGroup); others may not.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");

    c.end_call(end_call("u1", "S")).await.unwrap();
    let reply = c
        .on_speech_done(done("u1", "S"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&reply.directives),
        [Kind::Shutdown(ShutdownCause::ToolTurnDone)]
    );

    let mut stream = c.watch_session(watch("u2", 0)).await.unwrap().into_inner();
    c.end_call(realtime_end_call("u2", "S")).await.unwrap();
    c.on_speech_done(done("u2", "S")).await.unwrap();
    assert_eq!(
        kind(&next(&mut stream).await),
        Kind::Shutdown(ShutdownCause::ReplyTimeout)
    );
    c.on_session_close(close("u2", CloseReason::JobShutdown))
        .await
        .unwrap();
    assert_eq!(kind(&next(&mut stream).await), Kind::DeleteRoom);
    assert_eq!(
        kind(&next(&mut stream).await),
        Kind::ShutdownJob("job_shutdown".into())
    );
    assert_ends(&mut stream).await;

    server.stop().await;
    assert!(!path.exists(), "the socket file is removed on shutdown");
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endcall.sock");
    let listen = format!("unix:{}", path.display());
    // A previous process that died without cleaning up leaves its socket file behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = TestServer::start_on(&listen, &[]).await;
    let mut c = server.client().await;
    c.end_call(end_call("s1", "S")).await.unwrap();
    server.stop().await;
}
