//! The gRPC service: validates each request, hands the event to the registry, maps the result.
//!
//! Thin on purpose: decisions live in the state machine, bookkeeping in the registry.

use std::{pin::Pin, sync::Arc, time::Instant};

use futures_util::Stream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use tracing::{debug, warn};

use crate::{
    convert::{self, DirectiveMapper, MAX_CALL_DURATION},
    domain::{Event, IssuedDirective},
    error::ApiError,
    journal::Durable,
    limits::WatchSlots,
    proto::v1::{self as pb, end_call_service_server::EndCallService},
    registry::{Registry, WatchPoll},
    telemetry::metrics,
    tool,
};

/// Directives taken per registry poll of a watch stream; bounds the time a shard lock is held
/// and the memory one poll copies.
const WATCH_BATCH: usize = 64;

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
            let applied = api.registry.apply_with(
                id,
                Event::Open {
                    options,
                    max_duration,
                },
                |session| convert::resolved_options(session.options(), session.max_duration()),
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
            let stream: Self::WatchSessionStream =
                Box::pin(Follow::new(api.clone(), id, req.after_seq, first, slot).into_stream());
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

/// One watch stream, read by the response body itself.
///
/// HTTP/2 polls this stream for its next message, so a directive wakes one task (the stream's)
/// and is encoded as it is sent: no task of our own, and no buffer, per open stream. A client
/// that stops reading costs at most the four directives a session can issue, in its HTTP/2
/// window, and the stream still ends, giving its `--max-watchers` slot back, once the session
/// has closed and they are sent.
struct Follow {
    api: EndCallApi,
    id: String,
    /// The seq of the last directive handed out: the next poll starts after it.
    cursor: u64,
    /// Taken from the last poll, not handed out yet.
    batch: std::vec::IntoIter<IssuedDirective>,
    /// The last poll was a full batch: poll again before waiting.
    more: bool,
    /// The session closed (or was dropped) and everything is handed out once `batch` is.
    finished: bool,
    /// `None` once the stream has ended (or if the session was gone at the poll).
    changed: Option<watch::Receiver<()>>,
    /// Held from the call until the stream ends, or the client lets go of it first.
    open: Option<(OwnedSemaphorePermit, metrics::WatcherGuard)>,
}

impl Follow {
    fn new(
        api: EndCallApi,
        id: String,
        cursor: u64,
        first: WatchPoll,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        let mut follow = Follow {
            api,
            id,
            cursor,
            batch: Vec::new().into_iter(),
            more: false,
            finished: false,
            changed: None,
            open: Some((slot, metrics::WatcherGuard::new())),
        };
        follow.take(first);
        follow
    }

    fn take(&mut self, poll: WatchPoll) {
        self.more = poll.directives.len() == WATCH_BATCH;
        self.finished = poll.finished;
        self.batch = poll.directives.into_iter();
        self.changed = poll.changed;
    }

    fn into_stream(self) -> impl Stream<Item = Result<pb::Directive, Status>> + Send {
        futures_util::stream::unfold(self, |mut follow| async move {
            let item = follow.next().await?;
            Some((item, follow))
        })
    }

    /// The stream's next message: a directive, or a closing error; `None` ends the stream.
    async fn next(&mut self) -> Option<Result<pb::Directive, Status>> {
        loop {
            if let Some(directive) = self.batch.next() {
                self.cursor = directive.seq;
                return Some(Ok(self.api.mapper.directive(&self.id, &directive)));
            }
            if self.finished {
                self.end();
                return None;
            }
            if !self.more {
                let Some(changed) = self.changed.as_mut() else {
                    self.end();
                    return None;
                };
                tokio::select! {
                    result = changed.changed() => {
                        if result.is_err() {
                            // The session was dropped after its retention.
                            self.end();
                            return None;
                        }
                    }
                    () = self.api.draining.cancelled() => {
                        self.end();
                        return Some(Err(Status::unavailable(
                            "server is draining: reconnect with after_seq set to the last seq received",
                        )));
                    }
                }
            }
            match self
                .api
                .registry
                .poll_watch(&self.id, self.cursor, WATCH_BATCH, false)
            {
                Ok(poll) => self.take(poll),
                Err(err) => {
                    self.end();
                    return Some(Err(ApiError::from(err).into()));
                }
            }
        }
    }

    /// Nothing more will be sent: the slot and the subscription go now, before the client
    /// lets go of the stream.
    fn end(&mut self) {
        self.finished = true;
        self.more = false;
        self.changed = None;
        self.open = None;
    }
}
