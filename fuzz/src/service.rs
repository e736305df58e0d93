//! The `service` fuzz target's interpreter: bytes become a sequence of RPCs on the real gRPC
//! service (`EndCallApi` over a `Registry`, on tokio's paused clock), and the contract's
//! invariants are checked after every step. A violated invariant panics, which libFuzzer
//! reports as a crash and proptest shrinks.
//!
//! Shared, by path, by the libFuzzer target (`fuzz/fuzz_targets/service.rs`) and the stable
//! test (`tests/fuzz_service.rs`), so a corpus file means the same run to both.
//!
//! Input format: steps, read until the input ends (at most [`MAX_STEPS`]).
//! - a kind byte, `kind % 9`: 0 OpenSession, 1 EndCall, 2 OnSpeechCreated, 3 OnSpeechDone,
//!   4 OnSessionClose, 5 WatchSession, 6 GetTool, 7 GetSession, 8 advance the clock;
//! - advance: one byte `b`, `b < 128` is `b` × 100 ms, otherwise `b - 128` seconds;
//! - an RPC: an `ids` byte, a length, then that many bytes decoded with prost as the RPC's
//!   request (a message that does not decode skips the step: tonic refuses it before the
//!   service sees it). The length is one byte `b`: `b < 0xF8` is `b % 64`, otherwise the next
//!   two bytes, little-endian (long enough for the text limits).
//! - `ids` bits 0-2: the session id; 0-5 replace it with one of [`SESSIONS`] (so sequences meet
//!   on a few sessions and reach deep states), 6-7 keep the decoded one (any bytes).
//!   Bits 3-4: the speech id; 0-2 replace it with one of [`SPEECHES`], 3 keeps it.
//!   Bit 5: fold the close reason onto a valid one.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Once},
    time::Duration,
};

use endcall_sidecar::{
    clock::Clock,
    convert,
    domain::Options,
    machine::Timing,
    proto::v1::{self as pb, end_call_service_server::EndCallService},
    registry::{Registry, Settings},
    service::EndCallApi,
    timers::TimerThread,
    tool,
};
use futures_util::{FutureExt as _, StreamExt as _};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status};

/// Session ids that inputs pick from; more than [`MAX_SESSIONS`], so the limit is reached.
pub const SESSIONS: [&str; 6] = ["call-0", "call-1", "call-2", "call-3", "call-4", "call-5"];
pub const SPEECHES: [&str; 3] = ["SP-A", "SP-B", "SP-C"];
/// Live sessions at most: small, so `RESOURCE_EXHAUSTED` is met.
pub const MAX_SESSIONS: usize = 3;
/// Steps per input at most: bounds a run's time whatever the input's length.
pub const MAX_STEPS: usize = 400;
/// Longest status message allowed. A message is a sentence naming the field plus at most one
/// id (128 bytes), which `{:?}` may escape to at most three times its length.
pub const MAX_STATUS_MESSAGE: usize = 512;
/// Watch streams kept open at once; an older one is dropped (the client went away).
const MAX_WATCHERS: usize = 4;
/// Yields after each step, so the timer task catches up.
const SETTLE_YIELDS: usize = 8;

const PLAYOUT_GUARD: Duration = Duration::from_secs(3);
const WIND_UP_GRACE: Duration = Duration::from_secs(2);
const CLOSED_RETENTION: Duration = Duration::from_secs(10);
const IDLE_EXPIRY: Duration = Duration::from_secs(60);

/// Fields a status message may name, as its `field: ` prefix.
const FIELDS: &[&str] = &[
    "session_id",
    "speech_id",
    "options",
    "options.end_instructions.text",
    "options.end_instructions.none",
    "options.extra_description",
    "options.reply_timeout",
    "max_duration",
    "reason",
    "error_message",
    "extra_description",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rpc {
    OpenSession = 0,
    EndCall = 1,
    OnSpeechCreated = 2,
    OnSpeechDone = 3,
    OnSessionClose = 4,
    WatchSession = 5,
    GetTool = 6,
    GetSession = 7,
}

impl Rpc {
    pub fn name(self) -> &'static str {
        match self {
            Rpc::OpenSession => "OpenSession",
            Rpc::EndCall => "EndCall",
            Rpc::OnSpeechCreated => "OnSpeechCreated",
            Rpc::OnSpeechDone => "OnSpeechDone",
            Rpc::OnSessionClose => "OnSessionClose",
            Rpc::WatchSession => "WatchSession",
            Rpc::GetTool => "GetTool",
            Rpc::GetSession => "GetSession",
        }
    }
}

const ADVANCE: u8 = 8;
const KINDS: u8 = 9;

/// A step, for building inputs (seeds, structured tests) that [`run`] reads back.
#[derive(Clone, Debug)]
pub enum Step {
    Rpc { rpc: Rpc, ids: u8, message: Vec<u8> },
    Advance(u8),
}

impl Step {
    /// An RPC on `SESSIONS[session]`, speech `SPEECHES[speech]`, close reason folded.
    pub fn on(rpc: Rpc, session: u8, speech: u8, message: &impl prost::Message) -> Self {
        assert!(usize::from(session) < SESSIONS.len() && usize::from(speech) < SPEECHES.len());
        Step::Rpc {
            rpc,
            ids: session | (speech << 3) | (1 << 5),
            message: message.encode_to_vec(),
        }
    }

    /// An RPC whose ids are the decoded ones.
    pub fn raw(rpc: Rpc, message: &impl prost::Message) -> Self {
        Step::Rpc {
            rpc,
            ids: 6 | (3 << 3),
            message: message.encode_to_vec(),
        }
    }

    /// Advances the clock by about `d` (100 ms steps up to 12.7 s, whole seconds beyond).
    pub fn advance(d: Duration) -> Self {
        let ms = d.as_millis();
        Step::Advance(if ms < 12_800 {
            (ms / 100) as u8
        } else {
            128 + d.as_secs().min(127) as u8
        })
    }
}

/// The bytes that [`run`] reads as `steps`.
pub fn encode(steps: &[Step]) -> Vec<u8> {
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Advance(b) => out.extend([ADVANCE, *b]),
            Step::Rpc { rpc, ids, message } => {
                out.extend([*rpc as u8, *ids]);
                if message.len() < 64 {
                    out.push(message.len() as u8);
                } else {
                    let len = u16::try_from(message.len()).expect("a message under 64 KiB");
                    out.push(0xF8);
                    out.extend(len.to_le_bytes());
                }
                out.extend_from_slice(message);
            }
        }
    }
    out
}

/// What a run reached, so tests can tell that inputs get deep into the service.
#[derive(Debug, Default)]
pub struct Summary {
    pub steps: usize,
    pub ok: usize,
    /// Refusals by RPC and `tonic::Code` (no strings: libFuzzer would chase their compares).
    pub refused: BTreeMap<(Rpc, i32), usize>,
    pub undecodable: usize,
    /// `pb::SessionState` values seen in reports.
    pub states: BTreeSet<i32>,
    /// `pb::DirectiveKind` values seen in reports.
    pub directives: BTreeSet<i32>,
    /// `pb::ShutdownCause` values of the `SHUTDOWN_SESSION` directives seen.
    pub causes: BTreeSet<i32>,
    /// Directives received on watch streams.
    pub watched: usize,
}

/// Runs one input; panics when an invariant does not hold.
pub fn run(data: &[u8]) -> Summary {
    quiet_logs();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let mut harness = Harness::start();
        let mut input = Input(data);
        while harness.summary.steps < MAX_STEPS {
            let Some(kind) = input.byte() else { break };
            let kind = kind % KINDS;
            if kind == ADVANCE {
                let Some(b) = input.byte() else { break };
                harness.advance(advance_by(b)).await;
            } else {
                let Some(ids) = input.byte() else { break };
                let Some(len) = input.len() else { break };
                let message = input.take(len);
                harness.rpc(rpc(kind), ids, message).await;
            }
            harness.summary.steps += 1;
        }
        harness.finish().await;
        harness.summary
    })
}

/// Logs go nowhere, but at INFO: the end-of-call report is built and serialised when a
/// session closes, as in production.
fn quiet_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}

fn advance_by(b: u8) -> Duration {
    if b < 128 {
        Duration::from_millis(u64::from(b) * 100)
    } else {
        Duration::from_secs(u64::from(b - 128))
    }
}

fn rpc(kind: u8) -> Rpc {
    match kind {
        0 => Rpc::OpenSession,
        1 => Rpc::EndCall,
        2 => Rpc::OnSpeechCreated,
        3 => Rpc::OnSpeechDone,
        4 => Rpc::OnSessionClose,
        5 => Rpc::WatchSession,
        6 => Rpc::GetTool,
        _ => Rpc::GetSession,
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn len(&mut self) -> Option<usize> {
        let b = self.byte()?;
        if b < 0xF8 {
            return Some(usize::from(b % 64));
        }
        let lo = self.byte()?;
        let hi = self.byte()?;
        Some(usize::from(u16::from_le_bytes([lo, hi])))
    }

    /// Up to `len` bytes: a truncated last message is still a message.
    fn take(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

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
    pb::OnSessionCloseResponse,
);

struct Harness {
    api: EndCallApi,
    registry: Arc<Registry>,
    /// Sessions known to exist, with what their last report said.
    known: BTreeMap<String, Known>,
    watchers: VecDeque<Watcher>,
    summary: Summary,
}

impl Harness {
    fn start() -> Self {
        let settings = Settings {
            defaults: Arc::new(Options::default()),
            timing: Timing {
                playout_guard: PLAYOUT_GUARD,
                wind_up_grace: WIND_UP_GRACE,
            },
            closed_retention: CLOSED_RETENTION,
            idle_expiry: IDLE_EXPIRY,
            max_sessions: MAX_SESSIONS,
        };
        let registry = Registry::start(settings, Clock::new(), TimerThread::Shared)
            .expect("the registry starts");
        let api = EndCallApi::new(
            Arc::clone(&registry),
            Arc::from("wrap the call up"),
            CancellationToken::new(),
        );
        Harness {
            api,
            registry,
            known: BTreeMap::new(),
            watchers: VecDeque::new(),
            summary: Summary::default(),
        }
    }

    async fn advance(&mut self, by: Duration) {
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

    async fn rpc(&mut self, rpc: Rpc, ids: u8, message: &[u8]) {
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
                let result = self.api.open_session(Request::new(req)).await;
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
                let result = self.api.end_call(Request::new(req)).await;
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
                let result = self.api.on_speech_created(Request::new(req)).await;
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
                let result = self.api.on_speech_done(Request::new(req)).await;
                self.event_response(Rpc::OnSpeechDone, &id, before, result)
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
                let result = self.api.on_session_close(Request::new(req)).await;
                self.event_response(Rpc::OnSessionClose, &id, before, result)
                    .await;
                id
            }
            Rpc::WatchSession => {
                let mut req = pb::WatchSessionRequest::decode(message).ok()?;
                session(&mut req.session_id);
                let id = req.session_id.clone();
                let after_seq = req.after_seq;
                let before = self.report(&id).await;
                match self.api.watch_session(Request::new(req)).await {
                    Ok(stream) => {
                        self.summary.ok += 1;
                        self.known.entry(id.clone()).or_insert(Known {
                            closed: false,
                            directives: Vec::new(),
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
                match self.api.get_tool(Request::new(req)).await {
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
                match self.api.get_session(Request::new(req)).await {
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
        Some(convert::id("session_id", &named).ok().map(str::to_owned))
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
        match self.api.get_session(Request::new(req)).await {
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
                let valid = convert::id("session_id", id).is_ok();
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
        for d in &report.directives {
            self.summary.directives.insert(d.kind);
            if d.kind == pb::DirectiveKind::ShutdownSession as i32 {
                self.summary.causes.insert(d.cause);
            }
        }
        let known = self.known.entry(id.to_owned()).or_insert(Known {
            closed,
            directives: Vec::new(),
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
    }

    /// The live-session count is the number of known sessions that are not closed.
    fn check_live(&self) {
        let open = self.known.values().filter(|k| !k.closed).count();
        assert_eq!(
            self.registry.live_sessions(),
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
    async fn finish(&mut self) {
        for _ in 0..4 {
            self.advance(IDLE_EXPIRY + CLOSED_RETENTION).await;
        }
        assert!(
            self.known.is_empty(),
            "sessions left after every expiry and retention: {:?}",
            self.known.keys().collect::<Vec<_>>()
        );
        assert_eq!(self.registry.live_sessions(), 0);
        assert!(self.watchers.is_empty(), "watch streams left open");
    }
}

/// A refusal is one of the codes this RPC may answer, with a short, printable message that
/// starts with the field at fault.
fn check_status(method: &str, status: &Status, codes: &[Code]) {
    let message = status.message();
    assert!(
        codes.contains(&status.code()),
        "{method}: {:?} is not a refusal this RPC makes: {message:?}",
        status.code()
    );
    assert!(
        message.len() <= MAX_STATUS_MESSAGE,
        "{method}: a {} byte status message: {message:?}",
        message.len()
    );
    assert!(
        !message.chars().any(char::is_control),
        "{method}: a control character in the status message {message:?}"
    );
    let field = message.split_once(": ").map(|(field, _)| field);
    assert!(
        field.is_some_and(|field| FIELDS.contains(&field)),
        "{method}: the status message {message:?} does not name a field"
    );
}

/// The contract's per-session invariants, on one `GetSession` report.
fn check_report(id: &str, report: &pb::SessionReport) {
    use pb::DirectiveKind as K;
    assert_eq!(report.session_id, id);
    let state = report.state;
    let closed = state == pb::SessionState::Closed as i32;
    assert_eq!(
        closed,
        report.closed_at.is_some(),
        "{id:?}: closed_at vs. state"
    );
    let kinds: Vec<i32> = report.directives.iter().map(|d| d.kind).collect();
    let count = |k: K| kinds.iter().filter(|&&x| x == k as i32).count();
    let position = |k: K| kinds.iter().position(|&x| x == k as i32);
    let mut last_at = None;
    for (i, d) in report.directives.iter().enumerate() {
        assert_eq!(d.seq, i as u64 + 1, "{id:?}: seq numbers {kinds:?}");
        assert_eq!(d.session_id, id);
        assert!(
            K::try_from(d.kind).is_ok_and(|k| k != K::Unspecified),
            "{id:?}: directive kind {}",
            d.kind
        );
        let at = d.issued_at.map(|t| (t.seconds, t.nanos));
        assert!(at.is_some() && at >= last_at, "{id:?}: issued_at goes back");
        last_at = at;
        if d.kind == K::ShutdownSession as i32 {
            assert!(
                pb::ShutdownCause::try_from(d.cause)
                    .is_ok_and(|c| c != pb::ShutdownCause::Unspecified),
                "{id:?}: SHUTDOWN_SESSION without a cause"
            );
        }
    }
    assert!(count(K::ShutdownSession) <= 1, "{id:?}: {kinds:?}");
    assert!(count(K::WindUp) <= 1, "{id:?}: {kinds:?}");
    assert!(count(K::DeleteRoom) <= 1, "{id:?}: {kinds:?}");
    assert!(count(K::ShutdownJob) <= 1, "{id:?}: {kinds:?}");
    if let Some(job) = position(K::ShutdownJob) {
        assert_eq!(
            job + 1,
            kinds.len(),
            "{id:?}: after SHUTDOWN_JOB: {kinds:?}"
        );
        assert!(closed, "{id:?}: SHUTDOWN_JOB before the close");
        // Row 7: after an end_call, or after a SHUTDOWN_SESSION of the sidecar's own (the
        // maximum duration's).
        assert!(
            report.end_call_at.is_some() || position(K::ShutdownSession).is_some(),
            "{id:?}: SHUTDOWN_JOB without end_call or SHUTDOWN_SESSION"
        );
    }
    if let Some(room) = position(K::DeleteRoom) {
        assert_eq!(
            position(K::ShutdownJob),
            Some(room + 1),
            "{id:?}: DELETE_ROOM not right before SHUTDOWN_JOB: {kinds:?}"
        );
        assert!(
            report.options.as_ref().is_some_and(|o| o.delete_room),
            "{id:?}: DELETE_ROOM without delete_room"
        );
    }
    if let Some(shutdown) = position(K::ShutdownSession) {
        // After SHUTDOWN_SESSION, only the close's directives.
        assert!(
            kinds[shutdown + 1..]
                .iter()
                .all(|&k| k == K::DeleteRoom as i32 || k == K::ShutdownJob as i32),
            "{id:?}: a directive after SHUTDOWN_SESSION: {kinds:?}"
        );
        assert!(
            closed || state == pb::SessionState::ShuttingDown as i32,
            "{id:?}: SHUTDOWN_SESSION issued but the state is {state}"
        );
        assert!(report.shutdown_at.is_some(), "{id:?}: shutdown_at missing");
    } else {
        assert!(
            state != pb::SessionState::ShuttingDown as i32,
            "{id:?}: SHUTTING_DOWN without SHUTDOWN_SESSION"
        );
    }
    if position(K::WindUp).is_some() {
        assert!(
            report
                .options
                .as_ref()
                .is_some_and(|o| o.max_duration.is_some()),
            "{id:?}: WIND_UP without max_duration"
        );
    }
    let ending = report.end_call_at.is_some() || position(K::ShutdownSession).is_some();
    if closed && ending && report.close_reason != 0 {
        assert!(
            position(K::ShutdownJob).is_some(),
            "{id:?}: closed after end_call without SHUTDOWN_JOB: {kinds:?}"
        );
    }
}
