//! The protobuf codec of `EndCallService`: tonic's prost codec, with buffers sized for its
//! messages, and `INVALID_ARGUMENT` for a request that does not decode.
//!
//! tonic allocates a codec buffer up front for every request it decodes and every response it
//! encodes, 8 KiB unless told otherwise, and an open `WatchSession` stream keeps its response
//! buffer for as long as it is open. This service's messages are a few hundred bytes: an
//! `EndCallRequest` with 128-byte ids and 200 bytes of instructions, and a reply carrying the
//! four directives that come at most once each, fit in `BUFFER` (the test below checks it); a
//! reply or a stream message with a `REMIND`'s instructions (up to 1,024 bytes) may not. A larger message (up to
//! `--max-request-bytes`) still works: the buffer grows to fit it.
//!
//! The generated server and client both use it (`build.rs` names it): one codec for the
//! service, whichever side speaks it.
//!
//! A request that does not decode is answered `INVALID_ARGUMENT`, not tonic's `INTERNAL`.
//! tonic follows gRPC's status code table, which lists a request that fails to parse as
//! `INTERNAL`; but here `INTERNAL` means the sidecar is at fault and pages an operator, and the
//! contract is that a client's bad input never gets it. Bytes that are not a protobuf message,
//! or a string field that is not UTF-8, are bad input like any other. The status names the
//! message type, then gives prost's description, which names the field path when there is one:
//! `EndCallRequest: the request does not decode as protobuf: EndCallRequest.session_id: invalid
//! string value: data is not UTF-8 encoded`. Such a refusal counts in
//! `endcall_requests_rejected_total{reason="validation"}`, like the service's own validation
//! failures. The codec knows the message type but not the call, and the RPC never reaches its
//! handler, so it is not in `endcall_rpc_requests_total` (nor are size-limit refusals).
//!
//! On the client side the same decoder reads replies: a reply that does not decode is the
//! server's fault, and stays `INTERNAL`.

use std::marker::PhantomData;

use prost::{Message, Name};
use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    Status,
};
use tonic_prost::ProstEncoder;

use crate::telemetry::metrics;

/// The codec buffer allocated per message, in bytes.
pub(crate) const BUFFER: usize = 1024;

/// How much a stream of ready messages may gather before it is handed to HTTP/2 (tonic's
/// default): watch streams send one directive at a time, so it seldom applies.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD_THRESHOLD)
}

/// `tonic_prost::ProstCodec` with `BUFFER`-sized buffers, and a decoder of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizedCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for SizedCodec<T, U> {
    fn default() -> Self {
        SizedCodec(PhantomData)
    }
}

impl<T, U> Codec for SizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SizedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        SizedDecoder(PhantomData)
    }
}

/// `tonic_prost::ProstDecoder` with `BUFFER`-sized buffers, whose failure on a request is
/// `INVALID_ARGUMENT` naming the message (see the module's doc).
#[derive(Debug)]
pub(crate) struct SizedDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Name + Default> Decoder for SizedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(undecodable::<U>)
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

/// The status for a message of type `U` that does not decode.
#[cold]
fn undecodable<U: Name>(err: prost::DecodeError) -> Status {
    // Only the server decodes requests: buf lint (scripts/buf-check) names every RPC's request
    // `<Rpc>Request`, and no reply ends so.
    if !U::NAME.ends_with("Request") {
        return Status::internal(err.to_string());
    }
    let text = err.to_string();
    // prost's text starts with this, which the status says in its own words.
    let detail = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    metrics::rejected("validation");
    tracing::debug!(request = U::NAME, %detail, "refused: the request does not decode");
    Status::invalid_argument(format!(
        "{}: the request does not decode as protobuf: {detail}",
        U::NAME
    ))
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use tonic::Code;

    use super::{undecodable, BUFFER};
    use crate::grpc::proto::v1 as pb;

    /// A key with wire type 7, which does not exist.
    const GARBAGE: &[u8] = &[0x0f];

    #[test]
    fn a_request_that_does_not_decode_is_invalid_and_names_its_message() {
        let err = pb::GetToolRequest::decode(GARBAGE).unwrap_err();
        let status = undecodable::<pb::GetToolRequest>(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "GetToolRequest: the request does not decode as protobuf: invalid wire type value: 7"
        );
    }

    #[test]
    fn a_reply_that_does_not_decode_stays_internal() {
        // The client's side: the server sent it, so the fault is the server's.
        let err = pb::ToolDefinition::decode(GARBAGE).unwrap_err();
        let status = undecodable::<pb::ToolDefinition>(err);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            status.message(),
            "failed to decode Protobuf message: invalid wire type value: 7"
        );
    }

    /// 5 bytes of gRPC framing come before each message in the buffer.
    const FRAME: usize = 5;

    fn text(len: usize) -> String {
        "x".repeat(len)
    }

    #[test]
    fn an_end_call_with_the_longest_ids_and_its_reply_fit_the_buffer() {
        let id = text(endcall_core::domain::MAX_ID_BYTES);
        let instructions = text(200);
        let request = pb::EndCallRequest {
            session_id: id.clone(),
            speech_id: id.clone(),
            options: Some(pb::SessionOptions {
                end_instructions: Some(pb::EndInstructions {
                    value: Some(pb::end_instructions::Value::Text(instructions.clone())),
                }),
                reply_timeout: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            FRAME + request.encoded_len() <= BUFFER,
            "{}",
            request.encoded_len()
        );
        let directive = pb::Directive {
            seq: 4,
            issued_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 999_999_999,
            }),
            session_id: id,
            reason: "user_initiated".into(),
            ..Default::default()
        };
        // The four directives that come at most once each, in one reply (one that also
        // carries reminders' instructions is larger: its buffer grows).
        let reply = pb::EndCallResponse {
            tool_output: Some(instructions),
            directives: vec![directive; 4],
            ..Default::default()
        };
        assert!(
            FRAME + reply.encoded_len() <= BUFFER,
            "{}",
            reply.encoded_len()
        );
    }

    /// A watcher that stops reading holds at most what its session can issue, which must fit
    /// in the smallest HTTP/2 window (65,535 bytes), or the stream could not end: every
    /// directive at its longest (128-byte session id, 1,024 bytes of instructions), each with
    /// its gRPC framing and an HTTP/2 frame header of its own.
    #[test]
    fn every_directive_a_session_can_issue_fits_in_one_http2_window() {
        use endcall_core::domain::{MAX_DIRECTIVES_PER_SESSION, MAX_INSTRUCTIONS_BYTES};
        const HTTP2_FRAME_HEADER: usize = 9;
        let directive = pb::Directive {
            seq: u64::MAX,
            kind: pb::DirectiveKind::Remind as i32,
            cause: pb::ShutdownCause::SilenceTimeout as i32,
            reason: "participant_disconnected".into(),
            instructions: text(MAX_INSTRUCTIONS_BYTES),
            issued_at: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 999_999_999,
            }),
            session_id: text(endcall_core::domain::MAX_ID_BYTES),
        };
        let each = HTTP2_FRAME_HEADER + FRAME + directive.encoded_len();
        let all = each * MAX_DIRECTIVES_PER_SESSION;
        assert!(all < 65_535, "{all} bytes");
    }
}
