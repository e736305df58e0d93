//! The gRPC service: validates each request, hands the event to the registry, maps the result.
//!
//! Thin on purpose: decisions live in the state machine, bookkeeping in the registry.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    convert::{self, DirectiveMapper, MAX_CALL_DURATION},
    domain::Event,
    error::ApiError,
    proto::v1::{self as pb, end_call_service_server::EndCallService},
    registry::{Registry, WatchPoll},
    tool,
};

/// Directives sent per registry poll of a watch stream; bounds the time a shard lock is held
/// and the memory a slow watcher can pin.
const WATCH_BATCH: usize = 64;

/// Directives buffered per watch stream before the sender waits for the client.
const WATCH_BUFFER: usize = 16;

#[derive(Clone)]
pub struct EndCallApi {
    registry: Arc<Registry>,
    mapper: DirectiveMapper,
    /// Cancelled when the server starts draining: watch streams end so the drain can finish.
    draining: CancellationToken,
}

impl EndCallApi {
    pub fn new(
        registry: Arc<Registry>,
        wind_up_instructions: Arc<str>,
        draining: CancellationToken,
    ) -> Self {
        Self {
            registry,
            mapper: DirectiveMapper {
                wind_up_instructions,
            },
            draining,
        }
    }

    fn event_response(&self, id: &str, event: Event) -> Result<pb::EventResponse, ApiError> {
        let applied = self.registry.apply(id, event)?;
        Ok(pb::EventResponse {
            directives: self.mapper.directives(id, &applied.step.directives),
            state: convert::state(applied.state).into(),
            duplicate: applied.step.duplicate,
        })
    }
}

#[tonic::async_trait]
impl EndCallService for EndCallApi {
    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let req = request.into_inner();
        let id = convert::id("session_id", &req.session_id)?;
        let options = convert::options(req.options, &self.registry.settings().defaults)?;
        let max_duration = convert::duration("max_duration", req.max_duration, MAX_CALL_DURATION)?;
        let applied = self
            .registry
            .apply(
                id,
                Event::Open {
                    options,
                    max_duration,
                },
            )
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::OpenSessionResponse {
            state: convert::state(applied.state).into(),
            options: Some(convert::resolved_options(
                &applied.options,
                applied.max_duration,
            )),
        }))
    }

    async fn end_call(
        &self,
        request: Request<pb::EndCallRequest>,
    ) -> Result<Response<pb::EndCallResponse>, Status> {
        let req = request.into_inner();
        let id = convert::id("session_id", &req.session_id)?;
        let event = Event::EndCall {
            speech: convert::speech_id(&req.speech_id)?,
            options: convert::options(req.options, &self.registry.settings().defaults)?,
            capabilities: convert::capabilities(req.capabilities),
        };
        let applied = self.registry.apply(id, event).map_err(ApiError::from)?;
        Ok(Response::new(pb::EndCallResponse {
            tool_output: applied.tool_output,
            directives: self.mapper.directives(id, &applied.step.directives),
            state: convert::state(applied.state).into(),
            duplicate: applied.step.duplicate,
        }))
    }

    async fn on_speech_created(
        &self,
        request: Request<pb::OnSpeechCreatedRequest>,
    ) -> Result<Response<pb::EventResponse>, Status> {
        let req = request.into_inner();
        let id = convert::id("session_id", &req.session_id)?;
        let event = Event::SpeechCreated {
            speech: convert::speech_id(&req.speech_id)?,
        };
        Ok(Response::new(self.event_response(id, event)?))
    }

    async fn on_speech_done(
        &self,
        request: Request<pb::OnSpeechDoneRequest>,
    ) -> Result<Response<pb::EventResponse>, Status> {
        let req = request.into_inner();
        let id = convert::id("session_id", &req.session_id)?;
        let event = Event::SpeechDone {
            speech: convert::speech_id(&req.speech_id)?,
            interrupted: req.interrupted,
            capabilities: convert::capabilities(req.capabilities),
            tool_output_given: req.tool_output_given,
        };
        Ok(Response::new(self.event_response(id, event)?))
    }

    async fn on_session_close(
        &self,
        request: Request<pb::OnSessionCloseRequest>,
    ) -> Result<Response<pb::EventResponse>, Status> {
        let req = request.into_inner();
        let id = convert::id("session_id", &req.session_id)?;
        let event = Event::SessionClose {
            reason: convert::close_reason(req.reason)?,
            error: convert::error_message(req.error_message)?,
        };
        Ok(Response::new(self.event_response(id, event)?))
    }

    type WatchSessionStream = ReceiverStream<Result<pb::Directive, Status>>;

    async fn watch_session(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        let req = request.into_inner();
        let id = convert::id("session_id", &req.session_id)?.to_owned();
        // The first poll runs here so that a refusal (e.g. the session limit) is the RPC's
        // status rather than an error in the middle of a stream.
        let first = self
            .registry
            .poll_watch(&id, req.after_seq, WATCH_BATCH, true)
            .map_err(ApiError::from)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(follow(self.clone(), id, req.after_seq, first, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_tool(
        &self,
        request: Request<pb::GetToolRequest>,
    ) -> Result<Response<pb::ToolDefinition>, Status> {
        let req = request.into_inner();
        let defaults = &self.registry.settings().defaults;
        let extra = match req.extra_description {
            Some(extra) if extra.len() > convert::MAX_TEXT_BYTES => {
                return Err(ApiError::invalid(
                    "extra_description",
                    format!(
                        "is {} bytes, the limit is {}",
                        extra.len(),
                        convert::MAX_TEXT_BYTES
                    ),
                )
                .into())
            }
            Some(extra) => extra,
            None => defaults.extra_description.clone(),
        };
        Ok(Response::new(pb::ToolDefinition {
            name: tool::NAME.to_owned(),
            description: tool::description(&extra),
            parameters_json_schema: tool::PARAMETERS_JSON_SCHEMA.to_owned(),
            ignore_on_enter: req.ignore_on_enter.unwrap_or(defaults.ignore_on_enter),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::SessionReport>, Status> {
        let req = request.into_inner();
        let id = convert::id("session_id", &req.session_id)?;
        let report = self
            .registry
            .report(id)
            .ok_or_else(|| ApiError::NotFound { id: id.to_owned() })?;
        Ok(Response::new(self.mapper.report(report)))
    }
}

/// Feeds one watch stream: sends what is pending, waits for more, ends after the close.
async fn follow(
    api: EndCallApi,
    id: String,
    mut cursor: u64,
    mut poll: WatchPoll,
    tx: mpsc::Sender<Result<pb::Directive, Status>>,
) {
    loop {
        let full_batch = poll.directives.len() == WATCH_BATCH;
        for directive in &poll.directives {
            cursor = directive.seq;
            if tx
                .send(Ok(api.mapper.directive(&id, directive)))
                .await
                .is_err()
            {
                return; // The client went away.
            }
        }
        if poll.finished {
            return;
        }
        if !full_batch {
            let Some(mut changed) = poll.changed else {
                return;
            };
            tokio::select! {
                result = changed.changed() => {
                    if result.is_err() {
                        return; // The session was dropped after its retention.
                    }
                }
                () = api.draining.cancelled() => {
                    let status = Status::unavailable(
                        "server is draining: reconnect with after_seq set to the last seq received",
                    );
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                () = tx.closed() => return,
            }
        }
        poll = match api.registry.poll_watch(&id, cursor, WATCH_BATCH, false) {
            Ok(poll) => poll,
            Err(err) => {
                let _ = tx.send(Err(ApiError::from(err).into())).await;
                return;
            }
        };
    }
}
