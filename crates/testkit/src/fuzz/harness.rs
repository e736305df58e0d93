//! Drives the in-process service one step at a time and checks each answer as it comes.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use endcall_sidecar::{
    contract::{domain::check_id, tool},
    proto::v1::{self as pb, end_call_service_server::EndCallService},
    EndCallApi, InProcess,
};
use futures_util::{FutureExt as _, StreamExt as _};
use prost::Message as _;
use tonic::{Code, Request, Status};

use super::{
    input::{Rpc, DROP_STREAM, SESSIONS, SPEECHES},
    invariants::{check_report, check_status},
    Summary, MAX_SESSIONS,
};

/// Watch streams kept open at once; an older one is dropped (the client went away).
const MAX_WATCHERS: usize = 4;
/// Yields after each step, so the timer task catches up.
const SETTLE_YIELDS: usize = 8;

const PLAYOUT_GUARD: Duration = Duration::from_secs(3);
const WIND_UP_GRACE: Duration = Duration::from_secs(2);
const CLOSED_RETENTION: Duration = Duration::from_secs(10);
const IDLE_EXPIRY: Duration = Duration::from_secs(60);
const WORKER_LOST_AFTER: Duration = Duration::from_secs(2);
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

struct Watcher {
    id: String,
    /// The seq the next directive must carry.
    next: u64,
    /// Polled without waiting: what it has ready, or whether it ended.
    rx: <EndCallApi as EndCallService>::WatchSessionStream,
}

struct Known {
    closed: bool,
    directives: Vec<pb::Directive>,
    /// The sidecar's teardown, once a report showed one: it never changes but for its result.
    teardown: Option<pb::Teardown>,
}

/// The replies of the three event RPCs: each RPC has its own message, with the same fields.
trait EventReply {
    fn into_parts(self) -> (i32, Vec<pb::Directive>);
}

macro_rules! event_reply {
    ($($reply:ty),* $(,)?) => {
        $(impl EventReply for $reply {
            fn into_parts(self) -> (i32, Vec<pb::Directive>) {
                (self.state, self.directives)
            }
        })*
    };
}

event_reply!(
    pb::OnSpeechCreatedResponse,
    pb::OnSpeechDoneResponse,
    pb::OnUserSpeechResponse,
    pb::OnSessionCloseResponse,
);

pub(super) struct Harness {
    sidecar: InProcess,
    /// Sessions known to exist, with what their last report said.
    known: BTreeMap<String, Known>,
    watchers: VecDeque<Watcher>,
    pub(super) summary: Summary,
}

impl Harness {
    pub(super) fn start() -> Self {
        let flags = [
            format!("--playout-guard={}ms", PLAYOUT_GUARD.as_millis()),
            format!("--wind-up-grace={}ms", WIND_UP_GRACE.as_millis()),
            format!("--closed-retention={}ms", CLOSED_RETENTION.as_millis()),
            format!("--idle-expiry={}ms", IDLE_EXPIRY.as_millis()),
            format!("--worker-lost-after={}ms", WORKER_LOST_AFTER.as_millis()),
            format!("--close-deadline={}ms", CLOSE_DEADLINE.as_millis()),
            format!("--max-sessions={MAX_SESSIONS}"),
            "--wind-up-instructions=wrap the call up".to_owned(),
            "--silence-wind-up-instructions=nobody is there".to_owned(),
        ];
        let sidecar = InProcess::start(flags).expect("the service starts");
        Harness {
            sidecar,
            known: BTreeMap::new(),
            watchers: VecDeque::new(),
            summary: Summary::default(),
        }
    }

    fn api(&self) -> &EndCallApi {
        self.sidecar.service()
    }

    pub(super) async fn advance(&mut self, by: Duration) {
        tokio::time::advance(by).await;
        self.settle().await;
        // Timers may have changed any session.
        let ids: Vec<String> = self.known.keys().cloned().collect();
        for id in ids {
            self.check_session(&id).await;
        }
        self.check_watchers().await;
        self.check_live();
    }

    async fn settle(&self) {
        for _ in 0..SETTLE_YIELDS {
            tokio::task::yield_now().await;
        }
    }

    pub(super) async fn rpc(&mut self, rpc: Rpc, ids: u8, message: &[u8]) {
        match self.call(rpc, ids, message).await {
            None => self.summary.undecodable += 1,
            Some(id) => {
                self.settle().await;
                if let Some(id) = id {
                    self.check_session(&id).await;
                }
                self.check_watchers().await;
                self.check_live();
            }
        }
    }

    /// Decodes and sends one RPC. `None` if the message did not decode; otherwise the session
    /// the RPC named, if its id is valid.
    async fn call(&mut self, rpc: Rpc, ids: u8, message: &[u8]) -> Option<Option<String>> {
        let session = |raw: &mut String| {
            if let Some(id) = SESSIONS.get(usize::from(ids & 0b111)) {
                *raw = (*id).to_owned();
            }
        };
        let speech = |raw: &mut String| {
            if let Some(id) = SPEECHES.get(usize::from((ids >> 3) & 0b11)) {
                *raw = (*id).to_owned();
            }
        };
        let named = match rpc {
            Rpc::OpenSession => {
                let mut req = pb::OpenSessionRequest::decode(message).ok()?;
                session(&mut req.session_id);
                let id = req.session_id.clone();
                let before = self.report(&id).await;
                let result = self.api().open_session(Request::new(req)).await;
                let ok = result.map(|r| {
                    let r = r.into_inner();
                    (r.state, Vec::new(), r.options)
                });
                let codes = [
                    Code::InvalidArgument,
                    Code::FailedPrecondition,
                    Code::ResourceExhausted,
                ];
                self.event(Rpc::OpenSession, &id, before, ok, &codes).await;
                id
            }
            Rpc::EndCall => {
                let mut req = pb::EndCallRequest::decode(message).ok()?;
                session(&mut req.session_id);
                speech(&mut req.speech_id);
                let id = req.session_id.clone();
                let before = self.report(&id).await;
                let result = self.api().end_call(Request::new(req)).await;
                let ok = result.map(|r| {
                    let r = r.into_inner();
                    (r.state, r.directives, None)
                });
                let codes = [
                    Code::InvalidArgument,
                    Code::FailedPrecondition,
                    Code::ResourceExhausted,
                ];
                self.event(Rpc::EndCall, &id, before, ok, &codes).await;
                id
            }
            Rpc::OnSpeechCreated => {
                let mut req = pb::OnSpeechCreatedRequest::decode(message).ok()?;
                session(&mut req.session_id);
                speech(&mut req.speech_id);
                let id = req.session_id.clone();
                let before = self.report(&id).await;
                let result = self.api().on_speech_created(Request::new(req)).await;
                self.event_response(Rpc::OnSpeechCreated, &id, before, result)
                    .await;
                id
            }
            Rpc::OnSpeechDone => {
                let mut req = pb::OnSpeechDoneRequest::decode(message).ok()?;
                session(&mut req.session_id);
                speech(&mut req.speech_id);
                let id = req.session_id.clone();
                let before = self.report(&id).await;
                let result = self.api().on_speech_done(Request::new(req)).await;
                self.event_response(Rpc::OnSpeechDone, &id, before, result)
                    .await;
                id
            }
            Rpc::OnUserSpeech => {
                let mut req = pb::OnUserSpeechRequest::decode(message).ok()?;
                session(&mut req.session_id);
                let id = req.session_id.clone();
                let before = self.report(&id).await;
                let result = self.api().on_user_speech(Request::new(req)).await;
                self.event_response(Rpc::OnUserSpeech, &id, before, result)
                    .await;
                id
            }
            Rpc::OnSessionClose => {
                let mut req = pb::OnSessionCloseRequest::decode(message).ok()?;
                session(&mut req.session_id);
                if ids & (1 << 5) != 0 {
                    req.reason = 1 + req.reason.rem_euclid(5);
                }
                let id = req.session_id.clone();
                let before = self.report(&id).await;
                let result = self.api().on_session_close(Request::new(req)).await;
                self.event_response(Rpc::OnSessionClose, &id, before, result)
                    .await;
                id
            }
            Rpc::WatchSession if ids & DROP_STREAM != 0 => {
                let mut id = String::new();
                session(&mut id);
                // Dropping the stream is what its client going away does to the server.
                if let Some(i) = self.watchers.iter().position(|w| w.id == id) {
                    self.watchers.remove(i);
                    self.summary.streams_dropped += 1;
                }
                id
            }
            Rpc::WatchSession => {
                let mut req = pb::WatchSessionRequest::decode(message).ok()?;
                session(&mut req.session_id);
                let id = req.session_id.clone();
                let after_seq = req.after_seq;
                let before = self.report(&id).await;
                match self.api().watch_session(Request::new(req)).await {
                    Ok(stream) => {
                        self.summary.ok += 1;
                        self.known.entry(id.clone()).or_insert(Known {
                            closed: false,
                            directives: Vec::new(),
                            teardown: None,
                        });
                        if self.watchers.len() == MAX_WATCHERS {
                            self.watchers.pop_front();
                        }
                        self.watchers.push_back(Watcher {
                            id: id.clone(),
                            next: after_seq.saturating_add(1),
                            rx: stream.into_inner(),
                        });
                    }
                    Err(status) => {
                        let codes = [Code::InvalidArgument, Code::ResourceExhausted];
                        self.refused(Rpc::WatchSession, &status, &codes);
                        self.unchanged(Rpc::WatchSession, &id, before).await;
                    }
                }
                id
            }
            Rpc::GetTool => {
                let req = pb::GetToolRequest::decode(message).ok()?;
                match self.api().get_tool(Request::new(req)).await {
                    Ok(tool) => {
                        self.summary.ok += 1;
                        let tool = tool.into_inner();
                        assert_eq!(tool.name, tool::NAME);
                        assert!(tool.description.starts_with(tool::DESCRIPTION));
                    }
                    Err(status) => self.refused(Rpc::GetTool, &status, &[Code::InvalidArgument]),
                }
                return Some(None);
            }
            Rpc::GetSession => {
                let mut req = pb::GetSessionRequest::decode(message).ok()?;
                session(&mut req.session_id);
                let id = req.session_id.clone();
                match self.api().get_session(Request::new(req)).await {
                    Ok(report) => {
                        self.summary.ok += 1;
                        check_report(&id, &report.into_inner());
                    }
                    Err(status) => {
                        let codes = [Code::InvalidArgument, Code::NotFound];
                        self.refused(Rpc::GetSession, &status, &codes);
                    }
                }
                // The step's check of the session compares this with what was known.
                id
            }
        };
        Some(check_id(&named).ok().map(|()| named))
    }

    async fn event_response(
        &mut self,
        rpc: Rpc,
        id: &str,
        before: Option<pb::SessionReport>,
        result: Result<tonic::Response<impl EventReply>, Status>,
    ) {
        let ok = result.map(|r| {
            let (state, directives) = r.into_inner().into_parts();
            (state, directives, None)
        });
        let codes = [Code::InvalidArgument, Code::ResourceExhausted];
        self.event(rpc, id, before, ok, &codes).await;
    }

    /// Checks an event RPC's answer against the session's report right after it.
    async fn event(
        &mut self,
        rpc: Rpc,
        id: &str,
        before: Option<pb::SessionReport>,
        result: Result<(i32, Vec<pb::Directive>, Option<pb::ResolvedOptions>), Status>,
        codes: &[Code],
    ) {
        let (state, directives, options) = match result {
            Ok(ok) => ok,
            Err(status) => {
                self.refused(rpc, &status, codes);
                self.unchanged(rpc, id, before).await;
                return;
            }
        };
        let method = rpc.name();
        self.summary.ok += 1;
        let report = self
            .report(id)
            .await
            .unwrap_or_else(|| panic!("{method} {id:?} succeeded but GetSession finds nothing"));
        assert_eq!(
            state, report.state,
            "{method} {id:?}: reply and report disagree on the state"
        );
        if let Some(options) = options {
            assert_eq!(Some(options), report.options, "{method} {id:?}: options");
        }
        let mut expected = None;
        for d in &directives {
            if let Some(seq) = expected {
                assert_eq!(
                    d.seq, seq,
                    "{method} {id:?}: the reply's directives have a gap"
                );
            }
            expected = Some(d.seq + 1);
            let logged = usize::try_from(d.seq - 1)
                .ok()
                .and_then(|i| report.directives.get(i));
            assert_eq!(
                Some(d),
                logged,
                "{method} {id:?}: a directive in the reply is not the report's"
            );
        }
        self.known.entry(id.to_owned()).or_insert(Known {
            closed: false,
            directives: Vec::new(),
            teardown: None,
        });
    }

    /// A refused request is a proper status that names its field; counted for the summary.
    fn refused(&mut self, rpc: Rpc, status: &Status, codes: &[Code]) {
        check_status(rpc.name(), status, codes);
        *self
            .summary
            .refused
            .entry((rpc, status.code() as i32))
            .or_default() += 1;
    }

    /// A refused request changed nothing: the session's report is what it was.
    async fn unchanged(&mut self, rpc: Rpc, id: &str, before: Option<pb::SessionReport>) {
        let method = rpc.name();
        let after = self.report(id).await;
        assert!(
            before == after,
            "{method} {id:?} was refused but changed the session:\n{before:?}\n{after:?}"
        );
    }

    /// `GetSession` through the service, with its own refusals checked; `None` when there is
    /// no such session (or the id is invalid, so there cannot be one).
    async fn report(&mut self, id: &str) -> Option<pb::SessionReport> {
        let req = pb::GetSessionRequest {
            session_id: id.to_owned(),
        };
        match self.api().get_session(Request::new(req)).await {
            Ok(report) => {
                let report = report.into_inner();
                check_report(id, &report);
                self.summary.states.insert(report.state);
                Some(report)
            }
            Err(status) => {
                check_status(
                    "GetSession",
                    &status,
                    &[Code::InvalidArgument, Code::NotFound],
                );
                let valid = check_id(id).is_ok();
                assert_eq!(
                    status.code() == Code::NotFound,
                    valid,
                    "GetSession {id:?}: {status:?}"
                );
                None
            }
        }
    }

    /// A session's report against what was seen before: directives are only ever appended.
    async fn check_session(&mut self, id: &str) {
        let report = self.report(id).await;
        let Some(report) = report else {
            self.known.remove(id);
            return;
        };
        let closed = report.state == pb::SessionState::Closed as i32;
        if let Some(teardown) = &report.teardown {
            self.summary.teardowns.insert(teardown.cause);
        }
        if closed {
            self.summary.ended.insert(report.ended_reason);
        }
        for d in &report.directives {
            self.summary.directives.insert(d.kind);
            if d.kind == pb::DirectiveKind::ShutdownSession as i32 {
                self.summary.causes.insert(d.cause);
            }
            if d.kind == pb::DirectiveKind::WindUp as i32
                || d.kind == pb::DirectiveKind::Remind as i32
            {
                self.summary.reminded.insert((d.kind, d.cause));
            }
        }
        let known = self.known.entry(id.to_owned()).or_insert(Known {
            closed,
            directives: Vec::new(),
            teardown: None,
        });
        assert!(
            report.directives.starts_with(&known.directives),
            "{id:?}: directives changed after they were issued:\nbefore {:?}\nnow {:?}",
            known.directives,
            report.directives
        );
        assert!(
            !known.closed || closed,
            "{id:?}: a closed session is open again"
        );
        known.closed = closed;
        known.directives = report.directives;
        if let Some(seen) = &known.teardown {
            let same = |t: &pb::Teardown| (t.cause, t.decided_at);
            assert_eq!(
                Some(same(seen)),
                report.teardown.as_ref().map(same),
                "{id:?}: at most one teardown, and it stays"
            );
        }
        if report.teardown.is_some() {
            known.teardown = report.teardown;
        }
    }

    /// The live-session count is the number of known sessions that are not closed.
    fn check_live(&self) {
        let open = self.known.values().filter(|k| !k.closed).count();
        assert_eq!(
            self.sidecar.live_sessions(),
            open,
            "live sessions counted vs. sessions not closed"
        );
        assert!(open <= MAX_SESSIONS, "more live sessions than the limit");
    }

    /// Watch streams deliver every directive once, in order, as the report lists it, and end
    /// exactly when the session is closed and everything was sent (or the session is gone).
    async fn check_watchers(&mut self) {
        let mut watchers = std::mem::take(&mut self.watchers);
        let mut kept = VecDeque::new();
        for mut w in watchers.drain(..) {
            let mut received = Vec::new();
            let ended = loop {
                match w.rx.next().now_or_never() {
                    Some(Some(Ok(d))) => received.push(d),
                    Some(Some(Err(status))) => {
                        panic!("watch {:?}: the stream failed: {status:?}", w.id)
                    }
                    None => break false,
                    Some(None) => break true,
                }
            };
            let report = self.report(&w.id).await;
            for d in &received {
                assert_eq!(d.session_id, w.id, "watch: a directive of another session");
                assert_eq!(d.seq, w.next, "watch {:?}: out of order or missed", w.id);
                w.next += 1;
                if let Some(report) = &report {
                    let logged = usize::try_from(d.seq - 1)
                        .ok()
                        .and_then(|i| report.directives.get(i));
                    assert_eq!(Some(d), logged, "watch {:?}: not the report's", w.id);
                }
            }
            self.summary.watched += received.len();
            let done = report.as_ref().is_none_or(|r| {
                r.state == pb::SessionState::Closed as i32 && w.next > r.directives.len() as u64
            });
            assert_eq!(
                ended, done,
                "watch {:?}: the stream ended={ended}, but it is done={done}",
                w.id
            );
            if !ended {
                kept.push_back(w);
            }
        }
        self.watchers = kept;
    }

    /// Lets every session run out: idle ones expire, closed ones are dropped after their
    /// retention, and every watch stream ends. Memory is bounded only if this holds.
    pub(super) async fn finish(&mut self) {
        // An open stream is its worker's lease, which keeps the session: the clients go away
        // first, as they do in the end.
        self.watchers.clear();
        for _ in 0..4 {
            self.advance(IDLE_EXPIRY + CLOSED_RETENTION).await;
        }
        assert!(
            self.known.is_empty(),
            "sessions left after every expiry and retention: {:?}",
            self.known.keys().collect::<Vec<_>>()
        );
        assert_eq!(self.sidecar.live_sessions(), 0);
        assert!(self.watchers.is_empty(), "watch streams left open");
    }
}
