//! The protobuf codec of `EndCallService`: tonic's prost codec, with buffers sized for its
//! messages.
//!
//! tonic allocates a codec buffer up front for every request it decodes and every response it
//! encodes, 8 KiB unless told otherwise, and an open `WatchSession` stream keeps its response
//! buffer for as long as it is open. This service's messages are a few hundred bytes: an
//! `EndCallRequest` with 128-byte ids and 200 bytes of instructions, and a reply carrying four
//! directives, fit in `BUFFER` (the test below checks it). A larger message (up to
//! `--max-request-bytes`) still works: the buffer grows to fit it.
//!
//! The generated server and client both use it (`build.rs` names it): one codec for the
//! service, whichever side speaks it.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The codec buffer allocated per message, in bytes.
pub(crate) const BUFFER: usize = 1024;

/// How much a stream of ready messages may gather before it is handed to HTTP/2 (tonic's
/// default): watch streams send one directive at a time, so it seldom applies.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD_THRESHOLD)
}

/// `tonic_prost::ProstCodec` with `BUFFER`-sized buffers.
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
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::BUFFER;
    use crate::grpc::proto::v1 as pb;

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
        // Every directive a session can issue, in one reply.
        let reply = pb::EndCallResponse {
            tool_output: Some(instructions),
            directives: vec![directive; endcall_core::domain::MAX_DIRECTIVES_PER_SESSION],
            ..Default::default()
        };
        assert!(
            FRAME + reply.encoded_len() <= BUFFER,
            "{}",
            reply.encoded_len()
        );
    }
}
