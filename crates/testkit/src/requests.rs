//! Request builders and what tests check of directives and watch streams.

use std::time::Duration;

use endcall_sidecar::proto::v1::{self as pb, Directive, DirectiveKind, ShutdownCause};
use tokio::task::JoinHandle;
use tonic::{transport::Channel, Streaming};

use crate::PATIENCE;

pub fn end_call(session: &str, speech: &str) -> pb::EndCallRequest {
    pb::EndCallRequest {
        session_id: session.into(),
        speech_id: speech.into(),
        ..Default::default()
    }
}

pub fn realtime_end_call(session: &str, speech: &str) -> pb::EndCallRequest {
    pb::EndCallRequest {
        capabilities: Some(pb::ModelCapabilities {
            realtime: Some(true),
            auto_tool_reply: Some(true),
        }),
        ..end_call(session, speech)
    }
}

/// A realtime end_call whose reply must be created within `reply_timeout`.
pub fn realtime_end_call_within(
    session: &str,
    speech: &str,
    reply_timeout: Duration,
) -> pb::EndCallRequest {
    pb::EndCallRequest {
        options: Some(pb::SessionOptions {
            reply_timeout: Some(prost_types::Duration {
                seconds: i64::try_from(reply_timeout.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(reply_timeout.subsec_nanos()).unwrap_or(0),
            }),
            ..Default::default()
        }),
        ..realtime_end_call(session, speech)
    }
}

pub fn created(session: &str, speech: &str) -> pb::OnSpeechCreatedRequest {
    pb::OnSpeechCreatedRequest {
        session_id: session.into(),
        speech_id: speech.into(),
    }
}

pub fn done(session: &str, speech: &str) -> pb::OnSpeechDoneRequest {
    pb::OnSpeechDoneRequest {
        session_id: session.into(),
        speech_id: speech.into(),
        ..Default::default()
    }
}

pub fn user_speech(session: &str) -> pb::OnUserSpeechRequest {
    pb::OnUserSpeechRequest {
        session_id: session.into(),
    }
}

/// A protobuf duration.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn close(session: &str, reason: pb::CloseReason) -> pb::OnSessionCloseRequest {
    pb::OnSessionCloseRequest {
        session_id: session.into(),
        reason: reason.into(),
        error_message: None,
    }
}

pub fn watch(session: &str, after_seq: u64) -> pb::WatchSessionRequest {
    pb::WatchSessionRequest {
        session_id: session.into(),
        after_seq,
    }
}

/// A directive's kind and its cause, reason or instructions.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Shutdown(ShutdownCause),
    DeleteRoom,
    ShutdownJob(String),
    /// The limit it leads up to.
    WindUp(ShutdownCause),
    /// The limit it leads up to, and its instructions.
    Remind(ShutdownCause, String),
}

pub fn kind(d: &Directive) -> Kind {
    match d.kind() {
        DirectiveKind::ShutdownSession => Kind::Shutdown(d.cause()),
        DirectiveKind::DeleteRoom => Kind::DeleteRoom,
        DirectiveKind::ShutdownJob => Kind::ShutdownJob(d.reason.clone()),
        DirectiveKind::WindUp => Kind::WindUp(d.cause()),
        DirectiveKind::Remind => Kind::Remind(d.cause(), d.instructions.clone()),
        DirectiveKind::Unspecified => panic!("unspecified directive kind: {d:?}"),
    }
}

pub fn kinds(ds: &[Directive]) -> Vec<Kind> {
    ds.iter().map(kind).collect()
}

/// The next directive on a watch stream, failing the test if none comes in time.
pub async fn next(stream: &mut Streaming<Directive>) -> Directive {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a directive in time")
        .expect("stream ok")
        .expect("stream still open")
}

/// Asserts the watch stream ends cleanly (OK, no more messages).
pub async fn assert_ends(stream: &mut Streaming<Directive>) {
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("stream ends in time")
        .expect("stream ends with OK");
    assert!(end.is_none(), "unexpected directive {end:?}");
}

/// Takes the server's one request permit (`--max-concurrent-requests 1`) and keeps it: a
/// client-streaming call on the unary `GetTool` sends its headers at once and its message
/// never, so the handler waits holding the permit. A probe of the caller's may hold the permit
/// at the moment this call arrives, and then this call is the one shed: it tries again until
/// it is admitted (an admitted call never returns). Abort the task to give the permit back.
pub fn hold_the_only_permit(channel: Channel) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.expect("ready");
            let result = grpc
                .client_streaming::<_, pb::GetToolRequest, pb::ToolDefinition, _>(
                    tonic::Request::new(tokio_stream::pending()),
                    tonic::codegen::http::uri::PathAndQuery::from_static(
                        "/endcall.v1.EndCallService/GetTool",
                    ),
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            match result {
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => return,
            }
        }
    })
}

/// A codec that passes bytes through as they are, both ways: it sends what the generated
/// client never would (a request that does not decode) and reads whatever comes back.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf as _;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Sends `message`'s bytes as they are to `EndCallService/{method}`; the reply's bytes (the
/// first message of a `WatchSession` stream), or the call's status.
pub async fn raw_call(
    channel: Channel,
    method: &str,
    message: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
        "/endcall.v1.EndCallService/{method}"
    ))
    .expect("a path");
    let request = tonic::Request::new(message);
    if method == "WatchSession" {
        let mut stream = grpc
            .server_streaming(request, path, RawCodec)
            .await?
            .into_inner();
        Ok(stream.message().await?.unwrap_or_default())
    } else {
        Ok(grpc.unary(request, path, RawCodec).await?.into_inner())
    }
}
