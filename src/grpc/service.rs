//! The gRPC service: validates each request, hands the event to the registry, maps the result.
//!
//! Thin on purpose: decisions live in the state machine, bookkeeping in the registry. The
//! `WatchSession` stream is `watch.rs`.

use std::{pin::Pin, sync::Arc, time::Instant};

use futures_util::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use tracing::{debug, warn};

use super::watch::{Follow, WATCH_BATCH};
use crate::{
    grpc::convert::{self, DirectiveMapper, WindUpTexts},
    grpc::error::ApiError,
    grpc::limits::WatchSlots,
    grpc::proto::v1::{self as pb, end_call_service_server::EndCallService},
    sessions::journal::Durable,
    sessions::registry::Registry,
    telemetry::metrics,
};
use endcall_core::{
    domain::{Event, MAX_CALL_DURATION},
    tool,
};

#[derive(Clone)]
pub struct EndCallApi {
    registry: Arc<Registry>,
    mapper: DirectiveMapper,
    /// Cancelled when the server starts draining: watch streams end so the drain can finish.
    draining: CancellationToken,
    /// `--max-watchers`: one slot per open watch stream.
    watch_slots: WatchSlots,
}

impl EndCallApi {
    pub fn new(registry: Arc<Registry>, wind_up: WindUpTexts, draining: CancellationToken) -> Self {
        Self {
            registry,
            mapper: DirectiveMapper { wind_up },
            draining,
            watch_slots: WatchSlots::new(usize::MAX),
        }
    }

    /// Bounds the open watch streams (unbounded unless set).
    pub fn with_watch_slots(self, watch_slots: WatchSlots) -> Self {
        Self {
            watch_slots,
            ..self
        }
    }

    /// Applies a speech or close event; `reply` builds the RPC's own reply message from its
    /// directives, state and duplicate flag (the three event replies share those fields).
    fn event_response<T>(
        &self,
        id: &str,
        event: Event,
        reply: impl FnOnce(Vec<pb::Directive>, i32, bool) -> T,
    ) -> Result<Reply<T>, ApiError> {
        let applied = self.registry.apply(id, event)?;
        Ok(Reply {
            message: reply(
                self.mapper.directives(id, &applied.step.directives),
                convert::state(applied.state).into(),
                applied.step.duplicate,
            ),
            durable: applied.durable,
        })
    }
}

/// A response, and (with `--state-dir`) the journal write it must wait for: a reply is an
/// acknowledgement, so it goes out only once the event is on disk.
struct Reply<T> {
    message: T,
    durable: Option<Durable>,
}

impl<T> From<T> for Reply<T> {
    fn from(message: T) -> Self {
        Reply {
            message,
            durable: None,
        }
    }
}

/// Requests that name a session, so every RPC's span and log line carry the session id.
trait Named {
    fn session_id(&self) -> &str;
}

macro_rules! named {
    ($($request:ty),* $(,)?) => {
        $(impl Named for $request {
            fn session_id(&self) -> &str {
                &self.session_id
            }
        })*
    };
}

named!(
    pb::OpenSessionRequest,
    pb::EndCallRequest,
    pb::OnSpeechCreatedRequest,
    pb::OnSpeechDoneRequest,
    pb::OnSessionCloseRequest,
    pb::OnUserSpeechRequest,
    pb::WatchSessionRequest,
    pb::GetSessionRequest,
);

impl Named for pb::GetToolRequest {
    fn session_id(&self) -> &str {
        ""
    }
}

impl EndCallApi {
    /// Runs one RPC's (synchronous) work inside a span naming the RPC and the session, waits
    /// for its journal write if it has one, and records its status and latency. Healthy RPCs
    /// log at DEBUG only.
    async fn observe<R: Named, T>(
        &self,
        method: &'static str,
        request: Request<R>,
        handle: impl FnOnce(&Self, R) -> Result<Reply<T>, ApiError>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        // Only a valid id goes into logs: an invalid one may be huge or hold control characters.
        let session_id = convert::id("session_id", request.session_id())
            .unwrap_or("-")
            .to_owned();
        let session_id = session_id.as_str();
        // A DEBUG span: at INFO an RPC must cost no span at all (it is on every call's path).
        let span = tracing::debug_span!("rpc", method, session_id);
        let result = match span.in_scope(|| handle(self, request)) {
            Ok(Reply {
                message,
                durable: Some(durable),
            }) => durable
                .await
                .map(|()| message)
                .map_err(|_| ApiError::Unavailable),
            Ok(reply) => Ok(reply.message),
            Err(err) => Err(err),
        };
        let code = result.as_ref().map_or_else(ApiError::code, |_| Code::Ok);
        metrics::rpc(method, code, started.elapsed());
        span.in_scope(|| match &result {
            Ok(_) => debug!("ok"),
            Err(
                err @ (ApiError::ResourceExhausted(_)
                | ApiError::TooManyWatchers { .. }
                | ApiError::Unavailable),
            ) => {
                metrics::rejected(err.reason());
                warn!(method, session_id, %err, "refused");
            }
            Err(err) => {
                metrics::rejected(err.reason());
                debug!(%err, "refused");
            }
        });
        result.map(Response::new).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl EndCallService for EndCallApi {
    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        self.observe("OpenSession", request, |api, req| {
            let id = convert::id("session_id", &req.session_id)?;
            let options = convert::options(req.options, &api.registry.settings().defaults)?;
            let max_duration =
                convert::duration("max_duration", req.max_duration, MAX_CALL_DURATION)?;
            let room = convert::room(&req.room)?;
            let warnings = convert::warnings(req.max_duration_warnings, max_duration)?;
            let applied = api.registry.apply_with(
                id,
                Event::Open {
                    options,
                    max_duration,
                    room,
                    warnings,
                },
                |session| {
                    convert::resolved_options(
                        session.options(),
                        session.max_duration(),
                        session.warnings(),
                    )
                },
            )?;
            Ok(Reply {
                message: pb::OpenSessionResponse {
                    state: convert::state(applied.state).into(),
                    options: Some(applied.reply),
                },
                durable: applied.durable,
            })
        })
        .await
    }

    async fn end_call(
        &self,
        request: Request<pb::EndCallRequest>,
    ) -> Result<Response<pb::EndCallResponse>, Status> {
        self.observe("EndCall", request, |api, req| {
            let id = convert::id("session_id", &req.session_id)?;
            let event = Event::EndCall {
                speech: convert::speech_id(&req.speech_id)?,
                options: convert::options(req.options, &api.registry.settings().defaults)?,
                capabilities: convert::capabilities(req.capabilities),
            };
            let applied = api.registry.apply_with(id, event, |session| {
                session.tool_output().map(str::to_owned)
            })?;
            Ok(Reply {
                message: pb::EndCallResponse {
                    tool_output: applied.reply,
                    directives: api.mapper.directives(id, &applied.step.directives),
                    state: convert::state(applied.state).into(),
                    duplicate: applied.step.duplicate,
                },
                durable: applied.durable,
            })
        })
        .await
    }

    async fn on_speech_created(
        &self,
        request: Request<pb::OnSpeechCreatedRequest>,
    ) -> Result<Response<pb::OnSpeechCreatedResponse>, Status> {
        self.observe("OnSpeechCreated", request, |api, req| {
            let id = convert::id("session_id", &req.session_id)?;
            let event = Event::SpeechCreated {
                speech: convert::speech_id(&req.speech_id)?,
            };
            api.event_response(id, event, |directives, state, duplicate| {
                pb::OnSpeechCreatedResponse {
                    directives,
                    state,
                    duplicate,
                }
            })
        })
        .await
    }

    async fn on_speech_done(
        &self,
        request: Request<pb::OnSpeechDoneRequest>,
    ) -> Result<Response<pb::OnSpeechDoneResponse>, Status> {
        self.observe("OnSpeechDone", request, |api, req| {
            let id = convert::id("session_id", &req.session_id)?;
            let event = Event::SpeechDone {
                speech: convert::speech_id(&req.speech_id)?,
                interrupted: req.interrupted,
                capabilities: convert::capabilities(req.capabilities),
                tool_output_given: req.tool_output_given,
            };
            api.event_response(id, event, |directives, state, duplicate| {
                pb::OnSpeechDoneResponse {
                    directives,
                    state,
                    duplicate,
                }
            })
        })
        .await
    }

    async fn on_user_speech(
        &self,
        request: Request<pb::OnUserSpeechRequest>,
    ) -> Result<Response<pb::OnUserSpeechResponse>, Status> {
        self.observe("OnUserSpeech", request, |api, req| {
            let id = convert::id("session_id", &req.session_id)?;
            api.event_response(id, Event::UserSpeech, |directives, state, _| {
                pb::OnUserSpeechResponse { directives, state }
            })
        })
        .await
    }

    async fn on_session_close(
        &self,
        request: Request<pb::OnSessionCloseRequest>,
    ) -> Result<Response<pb::OnSessionCloseResponse>, Status> {
        self.observe("OnSessionClose", request, |api, req| {
            let id = convert::id("session_id", &req.session_id)?;
            let event = Event::SessionClose {
                reason: convert::close_reason(req.reason)?,
                error: convert::error_message(req.error_message)?,
            };
            api.event_response(id, event, |directives, state, duplicate| {
                pb::OnSessionCloseResponse {
                    directives,
                    state,
                    duplicate,
                }
            })
        })
        .await
    }

    type WatchSessionStream = Pin<Box<dyn Stream<Item = Result<pb::Directive, Status>> + Send>>;

    async fn watch_session(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        self.observe("WatchSession", request, |api, req| {
            let id = convert::id("session_id", &req.session_id)?.to_owned();
            let slot = api.watch_slots.acquire()?;
            // The first poll runs here so that a refusal (e.g. the session limit) is the RPC's
            // status rather than an error in the middle of a stream.
            let first = api
                .registry
                .poll_watch(&id, req.after_seq, WATCH_BATCH, true)?;
            let stream: Self::WatchSessionStream = Box::pin(
                Follow::new(
                    Arc::clone(&api.registry),
                    api.mapper.clone(),
                    api.draining.clone(),
                    id,
                    req.after_seq,
                    first,
                    slot,
                )
                .into_stream(),
            );
            Ok(stream.into())
        })
        .await
    }

    async fn get_tool(
        &self,
        request: Request<pb::GetToolRequest>,
    ) -> Result<Response<pb::ToolDefinition>, Status> {
        self.observe("GetTool", request, |api, req| {
            let defaults = &api.registry.settings().defaults;
            let extra = match req.extra_description {
                Some(extra) => convert::text("extra_description", extra)?,
                None => defaults.extra_description.to_string(),
            };
            Ok(pb::ToolDefinition {
                name: tool::NAME.to_owned(),
                description: tool::description(&extra),
                parameters_json_schema: tool::PARAMETERS_JSON_SCHEMA.to_owned(),
                ignore_on_enter: req.ignore_on_enter.unwrap_or(defaults.ignore_on_enter),
            }
            .into())
        })
        .await
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::SessionReport>, Status> {
        self.observe("GetSession", request, |api, req| {
            let id = convert::id("session_id", &req.session_id)?;
            let report = api
                .registry
                .report(id)
                .ok_or_else(|| ApiError::NotFound { id: id.to_owned() })?;
            Ok(api.mapper.report(report).into())
        })
        .await
    }
}
