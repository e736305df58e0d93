//! The end-call state machine of one session, as `docs/contract.md` fixes it.
//!
//! Pure and synchronous: an event and the current time go in, directives come out and the
//! session moves on. No clock, no I/O, no tokio, so every row of the contract is a plain unit
//! test with explicit times, and the registry around it owns concurrency and timers.
//!
//! The contract allows `end_call` more than once, so the state is not one enum: each tool
//! speech and each realtime reply waiter is tracked on its own, and the contract's state is
//! derived from them (`state()`). With a single end_call this is exactly the table.
//!
//! "Row N" in this module and its tests is row N of the state table in `docs/contract.md`.

use std::{sync::Arc, time::Duration};

use smallvec::SmallVec;

use crate::domain::{
    Capabilities, CloseReason, Directive, EndedReason, Event, IssuedDirective, Options, Outcome,
    RoomName, SessionId, ShutdownCause, SpeechId, State, TeardownCause, TeardownDone,
    TeardownOrder, TeardownResult, Time, Warning, MAX_REMINDS_PER_SESSION,
};

/// Server-wide timing of the extensions, passed in rather than stored per session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long `ENDING` or `PLAYING_REPLY` may last before `SHUTDOWN_SESSION`.
    pub playout_guard: Duration,
    /// After `WIND_UP` (max call duration or silence timeout), how long the call may go on
    /// before `SHUTDOWN_SESSION`.
    pub wind_up_grace: Duration,
    /// How long an attended session may go with no watch stream open and no event before its
    /// worker counts as lost.
    pub worker_lost_after: Duration,
    /// How long after `SHUTDOWN_SESSION` the worker has to close the session before the
    /// sidecar tears the call down itself.
    pub close_deadline: Duration,
}

/// How many recently seen speech ids a session remembers, for retries and late `EndCall`s.
/// Retries and reordering span a few events, not a whole call.
const RECENT_SPEECHES: usize = 32;

/// How many timeline entries a report keeps (the most recent: the end of a call is what a
/// report is read for).
pub const TIMELINE_CAP: usize = 64;

/// Why an event was refused. A refused event changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the session is closed")]
    Closed,
    #[error("the session already has different options")]
    OptionsConflict,
    #[error("the session already has a different maximum duration")]
    MaxDurationConflict,
    #[error("the session already has different warnings")]
    WarningsConflict,
}

/// What one event did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub directives: Vec<IssuedDirective>,
    /// The event had been seen before and produced nothing new.
    pub duplicate: bool,
}

/// A recorded event, for the report's timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventRecord {
    Open,
    EndCall {
        speech: SpeechId,
    },
    SpeechCreated {
        speech: SpeechId,
    },
    SpeechDone {
        speech: SpeechId,
        interrupted: bool,
    },
    Close {
        reason: CloseReason,
    },
    /// The user spoke.
    UserSpeech,
    Expired,
    /// The sidecar closed the session and tore the call down.
    TornDown {
        cause: TeardownCause,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimelineItem {
    Event {
        record: EventRecord,
        duplicate: bool,
    },
    /// The directive with this sequence number.
    Directive(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    pub at: Time,
    pub item: TimelineItem,
}

/// A speech in which the LLM called end_call.
#[derive(Debug)]
struct ToolSpeech {
    id: SpeechId,
    called_at: Time,
    done: bool,
    /// Whether the tool returned an output (row 2 vs row 3).
    output_given: bool,
}

/// A realtime wait for the tool reply (rows 3 to 6), one per tool speech on that branch.
#[derive(Debug)]
enum Waiter {
    Awaiting { deadline: Time },
    Playing { reply: SpeechId, since: Time },
}

#[derive(Debug)]
struct RecentSpeech {
    id: SpeechId,
    created: bool,
    done: bool,
}

/// Who closed a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closer {
    /// The worker, with its reason.
    Worker(CloseReason),
    /// Nobody: an unattended session expired idle.
    Expired,
    /// The sidecar, tearing the call down.
    Sidecar(TeardownCause),
}

/// How and when the session closed.
#[derive(Debug)]
struct CloseRecord {
    at: Time,
    closer: Closer,
    error: Option<String>,
    /// Index into `directives` of the first directive the close produced.
    first_directive: usize,
}

/// What most sessions never need, or need only once they end: boxed together, so a waiting
/// session pays one pointer for all of it. A waiting session's registry entry must stay
/// within the allocator's 224-byte size class (see `registry.rs`), and each of these was a
/// pointer of its own.
#[derive(Debug, Default)]
struct RareParts {
    /// Extension: the maximum duration, and when `WIND_UP` is due.
    max_duration: Option<(Duration, Time)>,
    /// Extension (staged time limits): warnings before the maximum duration, in time order
    /// (the longest `before` first), and how many of them have come due.
    warnings: Vec<Warning>,
    warned: u8,
    /// When `SHUTDOWN_SESSION` was issued (its cause is inline, in `Session`): kept here, as a
    /// session shutting down needs its rare parts soon anyway, for its close.
    shutdown_at: Time,
    /// Extension (early reply capture): a speech created while `ENDING`, and whether it is done.
    early_reply: Option<(SpeechId, bool)>,
    close_record: Option<CloseRecord>,
    /// The sidecar's teardown of this call, once decided.
    teardown: Option<Teardown>,
    /// The LiveKit room (boxed here: a session without one, as in the memory budget's
    /// million waiting sessions, pays nothing for it; one with a room also holds a watch
    /// stream, which costs far more).
    room: Option<RoomName>,
}

/// The silence ladder of a session whose options turn it on (`docs/contract.md`, the silence
/// ladder): boxed, so that only those sessions pay for it, 16 bytes each.
///
/// Silence grows while no agent speech is in progress and pauses while one is, so it is kept
/// as one number whose meaning follows `paused`; it changes meaning only at an event, the only
/// time an agent speech starts or ends.
#[derive(Debug)]
struct Silence {
    /// While silence grows: the time, in µs since the epoch, at which it would have started
    /// had it never paused (the silence at `t` is `t - at`). While paused: the silence so far,
    /// in µs. Once wound up: when the silence reached the timeout.
    at: u64,
    /// Reminder slots passed in this silence: the reminders issued, and any skipped because a
    /// later one was due at the same time.
    reminded: u8,
    /// An agent speech is in progress.
    paused: bool,
    /// The silence reached the timeout: `WIND_UP` was issued, and `SHUTDOWN_SESSION` follows
    /// the grace unless the call ends first.
    wound_up: bool,
}

impl Silence {
    /// A silence that starts at `now`, not paused (the next event settles that).
    fn from(now: Time) -> Self {
        Silence {
            at: now.as_micros(),
            reminded: 0,
            paused: false,
            wound_up: false,
        }
    }

    /// The silence at `now`, in µs.
    fn at(&self, now: Time) -> u64 {
        if self.paused {
            self.at
        } else {
            now.as_micros().saturating_sub(self.at)
        }
    }

    /// Pauses or resumes at `now`, as an agent speech is or is not in progress. Once wound
    /// up, `at` keeps the time the timeout was reached.
    fn settle(&mut self, speaking: bool, now: Time) {
        if speaking != self.paused && !self.wound_up {
            // Growing: `at` is a start, so now - start is the silence so far; paused: `at` is
            // the silence so far, so now - silence is the start it resumes from.
            self.at = now.as_micros().saturating_sub(self.at);
            self.paused = speaking;
        }
    }

    /// The user spoke: a new silence starts at `now`.
    fn reset(&mut self, now: Time) {
        self.at = if self.paused { 0 } else { now.as_micros() };
        self.reminded = 0;
    }
}

/// The sidecar tearing a call down: why, when, and (once known) what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Teardown {
    pub cause: TeardownCause,
    pub decided_at: Time,
    /// The room to delete; `None` when nothing is to be deleted (the result is then known at
    /// once).
    pub room: Option<RoomName>,
    /// `None` while LiveKit is being asked.
    pub finished: Option<(TeardownDone, Time)>,
}

/// One session's end-call state.
#[derive(Debug)]
pub struct Session {
    options: Arc<Options>,
    /// Whether a request set the options; until then they are the server's defaults and the
    /// first request that carries options may still set them.
    options_fixed: bool,
    capabilities: Capabilities,
    created_at: Time,
    wind_up_issued: bool,
    /// The worker's lease: whether it ever held a watch stream, and how many it holds now.
    lease: Lease,
    /// Why `SHUTDOWN_SESSION` was issued (its time is in the rare parts): the cause sits in a
    /// spare byte beside the flags.
    shutdown_cause: Option<ShutdownCause>,
    /// The silence ladder, if the session's options turn it on.
    silence: Option<Box<Silence>>,
    /// The worker's last sign of life: its last event, or the close of its last stream. Idle
    /// expiry and the worker-lost window count from here.
    last_activity: Time,
    /// Almost always one: inline, so the common session allocates nothing for it.
    tool_speeches: SmallVec<[ToolSpeech; 1]>,
    /// Almost always none or one: inline, so a session waiting for its reply allocates
    /// nothing for the wait.
    waiters: SmallVec<[Waiter; 1]>,
    /// A `Vec`, not a ring: dropping the oldest of a full one is rare, and a `Vec` is 8 bytes
    /// narrower in every session.
    recent: Vec<RecentSpeech>,
    /// `None` until a session needs one of its rare or late parts.
    rare: Option<Box<RareParts>>,
    directives: Vec<IssuedDirective>,
    timeline: Vec<TimelineEntry>,
    /// Saturates: a report says "at least" this many beyond 65,535.
    timeline_dropped: u16,
}

/// The worker's lease in one byte: the top bit says whether the session was ever attended,
/// the rest count its open watch streams (saturating at 127: a worker holds one, two during a
/// reconnect).
#[derive(Clone, Copy, Debug, Default)]
struct Lease(u8);

impl Lease {
    const ATTENDED: u8 = 0x80;

    fn attended(self) -> bool {
        self.0 & Self::ATTENDED != 0
    }

    fn streams(self) -> u8 {
        self.0 & !Self::ATTENDED
    }

    fn opened(self) -> Self {
        Lease(Self::ATTENDED | (self.streams() + 1).min(!Self::ATTENDED))
    }

    fn closed(self) -> Self {
        Lease((self.0 & Self::ATTENDED) | self.streams().saturating_sub(1))
    }

    fn none_open(self) -> Self {
        Lease(self.0 & Self::ATTENDED)
    }
}

impl Session {
    pub fn new(defaults: Arc<Options>, now: Time) -> Self {
        let silence = defaults
            .silence_timeout
            .map(|_| Box::new(Silence::from(now)));
        Self {
            options: defaults,
            options_fixed: false,
            capabilities: Capabilities::default(),
            created_at: now,
            wind_up_issued: false,
            lease: Lease::default(),
            shutdown_cause: None,
            silence,
            last_activity: now,
            tool_speeches: SmallVec::new(),
            waiters: SmallVec::new(),
            recent: Vec::new(),
            rare: None,
            directives: Vec::new(),
            timeline: Vec::new(),
            timeline_dropped: 0,
        }
    }

    /// Applies one event reported by the worker.
    pub fn handle(&mut self, event: Event, now: Time, timing: &Timing) -> Result<Step, Rejection> {
        // A refused event changes nothing, so refusal is decided before anything moves.
        self.check(&event)?;
        let first_new = self.directives.len();
        // Deadlines that passed before this event act first: the outcome must not depend on
        // whether the timer or a late event is processed first.
        self.on_time(now, timing);
        // Any event is a sign of life, and renews the worker's lease.
        self.last_activity = self.last_activity.max(now);
        let duplicate = match event {
            Event::Open {
                options,
                max_duration,
                room,
                warnings,
            } => self.open(options, max_duration, room, warnings, now),
            Event::EndCall {
                speech,
                options,
                capabilities,
            } => self.end_call(speech, options, capabilities, now),
            Event::UserSpeech => self.user_speech(now),
            Event::SpeechCreated { speech } => self.speech_created(speech, now),
            Event::SpeechDone {
                speech,
                interrupted,
                capabilities,
                tool_output_given,
            } => self.speech_done(speech, interrupted, capabilities, tool_output_given, now),
            Event::SessionClose { reason, error } => {
                if let Some(close_record) = self.close_record() {
                    // A repeated close answers what the first one produced.
                    let first = close_record.first_directive;
                    self.record(now, EventRecord::Close { reason }, true);
                    return Ok(Step {
                        directives: self.directives[first..].to_vec(),
                        duplicate: true,
                    });
                }
                self.close(reason, error, now);
                false
            }
        };
        // An agent speech may have started or ended: the silence pauses or resumes from now.
        if let Some(silence) = self.silence.as_deref_mut() {
            let speaking = self.recent.iter().any(|r| r.created && !r.done);
            silence.settle(speaking, now);
        }
        Ok(Step {
            directives: self.directives[first_new..].to_vec(),
            duplicate,
        })
    }

    /// Whether the event may be applied at all.
    fn check(&self, event: &Event) -> Result<(), Rejection> {
        let options = match event {
            Event::Open {
                options,
                max_duration,
                warnings,
                ..
            } => {
                if let (Some(max), Some((known, _))) = (max_duration, self.max_duration_at()) {
                    if *max != known {
                        return Err(Rejection::MaxDurationConflict);
                    }
                    if !warnings.is_empty() && sorted(warnings.clone()) != self.warnings() {
                        return Err(Rejection::WarningsConflict);
                    }
                }
                options
            }
            Event::EndCall { options, .. } => options,
            _ => return Ok(()),
        };
        if self.is_closed() {
            return Err(Rejection::Closed);
        }
        match options {
            Some(new) if self.options_fixed && **new != *self.options => {
                Err(Rejection::OptionsConflict)
            }
            _ => Ok(()),
        }
    }

    fn open(
        &mut self,
        options: Option<Arc<Options>>,
        max_duration: Option<Duration>,
        room: Option<RoomName>,
        warnings: Vec<Warning>,
        now: Time,
    ) -> bool {
        let new_options = options.is_some() && !self.options_fixed;
        let new_max = max_duration.is_some() && self.max_duration_at().is_none();
        let new_room = room.is_some() && self.room().is_none();
        let duplicate = !new_options
            && !new_max
            && !new_room
            && self.timeline_has(|r| matches!(r, EventRecord::Open));
        self.fix_options(options, now);
        if let (Some(room), None) = (room, self.room()) {
            self.rare_mut().room = Some(room);
        }
        if let (Some(max), None) = (max_duration, self.max_duration_at()) {
            let rare = self.rare_mut();
            rare.max_duration = Some((max, now + max));
            rare.warnings = sorted(warnings);
        }
        self.record(now, EventRecord::Open, duplicate);
        duplicate
    }

    /// Row 1, and the late-`EndCall` extension.
    fn end_call(
        &mut self,
        speech: SpeechId,
        options: Option<Arc<Options>>,
        capabilities: Capabilities,
        now: Time,
    ) -> bool {
        let speech = self.known(speech);
        self.fix_options(options, now);
        if self.tool_speeches.iter().any(|t| t.id == speech) {
            self.record(now, EventRecord::EndCall { speech }, true);
            return true;
        }
        self.capabilities.merge(capabilities);
        self.record(
            now,
            EventRecord::EndCall {
                speech: speech.clone(),
            },
            false,
        );
        let already_done = self.recent(&speech).is_some_and(|r| r.done);
        self.tool_speeches.push(ToolSpeech {
            id: speech,
            called_at: now,
            done: false,
            output_given: self.options.end_instructions.is_some(),
        });
        if already_done {
            // The done overtook this EndCall: act as if it came after (late-EndCall extension).
            let index = self.tool_speeches.len() - 1;
            self.tool_speech_done(index, now);
        }
        false
    }

    /// The user spoke: the silence ladder starts again (reminders included). Never a
    /// duplicate: two reports of speech are two new silences, the second from its own time.
    fn user_speech(&mut self, now: Time) -> bool {
        self.record(now, EventRecord::UserSpeech, false);
        if let Some(silence) = self.silence.as_deref_mut() {
            if !silence.wound_up {
                silence.reset(now);
            }
        }
        false
    }

    /// Row 4, the early-capture extension, and row 9 for everything else.
    fn speech_created(&mut self, speech: SpeechId, now: Time) -> bool {
        let speech = self.known(speech);
        let seen = self.recent(&speech).is_some_and(|r| r.created);
        self.record(
            now,
            EventRecord::SpeechCreated {
                speech: speech.clone(),
            },
            seen,
        );
        if seen {
            return true;
        }
        self.remember(&speech).created = true;
        if self.is_closed() || self.shutdown_cause.is_some() {
            return false;
        }
        let mut captured = false;
        for waiter in &mut self.waiters {
            if let Waiter::Awaiting { .. } = waiter {
                *waiter = Waiter::Playing {
                    reply: speech.clone(),
                    since: now,
                };
                captured = true;
            }
        }
        let ending = self.tool_speeches.iter().any(|t| !t.done);
        if !captured
            && ending
            && self.options.early_reply_capture
            && self.rare().is_none_or(|e| e.early_reply.is_none())
        {
            self.rare_mut().early_reply = Some((speech, false));
        }
        false
    }

    /// Rows 2, 3 and 6; a speech that finishes twice counts once.
    fn speech_done(
        &mut self,
        speech: SpeechId,
        interrupted: bool,
        capabilities: Capabilities,
        tool_output_given: Option<bool>,
        now: Time,
    ) -> bool {
        let speech = self.known(speech);
        let seen = self.recent(&speech).is_some_and(|r| r.done);
        self.record(
            now,
            EventRecord::SpeechDone {
                speech: speech.clone(),
                interrupted,
            },
            seen,
        );
        if seen {
            return true;
        }
        self.remember(&speech).done = true;
        if self.is_closed() {
            return false;
        }
        // The model in use when the tool's speech is done decides (the reference reads it then).
        self.capabilities.merge(capabilities);
        // A waiter's reply first: the reference's waiter awaits the reply before the tool's own
        // done callback of the same speech runs.
        if self
            .waiters
            .iter()
            .any(|w| matches!(w, Waiter::Playing { reply, .. } if *reply == speech))
        {
            self.shut_down(ShutdownCause::ReplyPlayedOut, now);
        }
        if let Some((early, done)) = self
            .rare
            .as_deref_mut()
            .and_then(|e| e.early_reply.as_mut())
        {
            if *early == speech {
                *done = true;
            }
        }
        if let Some(index) = self
            .tool_speeches
            .iter()
            .position(|t| t.id == speech && !t.done)
        {
            if let Some(given) = tool_output_given {
                self.tool_speeches[index].output_given = given;
            }
            self.tool_speech_done(index, now);
        }
        false
    }

    /// A tool speech is done: row 2 or row 3 (or early capture, which skips the wait).
    fn tool_speech_done(&mut self, index: usize, now: Time) {
        let tool = &mut self.tool_speeches[index];
        tool.done = true;
        let output_given = tool.output_given;
        if self.shutdown_cause.is_some() {
            return;
        }
        if !self.capabilities.auto_replies() || !output_given {
            self.shut_down(ShutdownCause::ToolTurnDone, now);
            return;
        }
        let waiter = match self.rare.as_deref_mut().and_then(|e| e.early_reply.take()) {
            Some((_, true)) => return self.shut_down(ShutdownCause::ReplyPlayedOut, now),
            Some((reply, false)) => Waiter::Playing { reply, since: now },
            None => Waiter::Awaiting {
                deadline: now + self.options.reply_timeout,
            },
        };
        self.waiters.push(waiter);
    }

    /// Rows 7 and 8. A call the sidecar itself ended (the max-duration extension, before any
    /// end_call) is wound down like one ended by end_call, or a phone caller would be left in
    /// a room with no agent.
    fn close(&mut self, reason: CloseReason, error: Option<String>, now: Time) {
        self.record(now, EventRecord::Close { reason }, false);
        let first_directive = self.directives.len();
        if !self.tool_speeches.is_empty() || self.shutdown_cause.is_some() {
            if self.options.delete_room {
                self.issue(Directive::DeleteRoom, now);
            }
            self.issue(Directive::ShutdownJob { reason }, now);
        }
        self.waiters.clear();
        self.rare_mut().close_record = Some(CloseRecord {
            at: now,
            closer: Closer::Worker(reason),
            error,
            first_directive,
        });
    }

    /// Ends a session whose worker went away without closing it. Issues nothing: there is
    /// nobody left to carry a directive out. Returns whether the session was still live.
    pub fn expire(&mut self, now: Time) -> bool {
        if self.is_closed() {
            return false;
        }
        self.record(now, EventRecord::Expired, false);
        self.close_by(Closer::Expired, now);
        true
    }

    fn close_by(&mut self, closer: Closer, now: Time) {
        self.waiters.clear();
        let first_directive = self.directives.len();
        self.rare_mut().close_record = Some(CloseRecord {
            at: now,
            closer,
            error: None,
            first_directive,
        });
    }

    /// A watch stream of the worker opened: the session is attended from now on.
    pub fn stream_opened(&mut self, now: Time) {
        self.lease = self.lease.opened();
        self.last_activity = self.last_activity.max(now);
    }

    /// A watch stream of the worker ended. With none left, the worker-lost window starts now.
    pub fn stream_closed(&mut self, now: Time) {
        self.lease = self.lease.closed();
        self.last_activity = self.last_activity.max(now);
    }

    /// The sidecar restarted (from its journal): no stream survived, and the sidecar's own
    /// downtime must not count against a worker, so the window starts again now.
    pub fn restarted(&mut self, now: Time) {
        self.lease = self.lease.none_open();
        self.last_activity = self.last_activity.max(now);
    }

    /// The sidecar closes the session itself and tears the call down: no directive, since the
    /// worker is gone or stuck. The room is deleted only if the session names one and its
    /// `delete_room` is on; otherwise the result is known at once.
    fn tear_down(&mut self, cause: TeardownCause, now: Time) {
        self.record(now, EventRecord::TornDown { cause }, false);
        self.close_by(Closer::Sidecar(cause), now);
        let (room, finished) = match (self.room(), self.options.delete_room) {
            (_, false) => (None, Some(TeardownResult::RoomKept)),
            (None, true) => (None, Some(TeardownResult::NoRoom)),
            (Some(room), true) => (Some(room.clone()), None),
        };
        let finished = finished.map(|result| {
            let done = TeardownDone {
                result,
                attempts: 0,
                error: None,
            };
            (done, now)
        });
        self.rare_mut().teardown = Some(Teardown {
            cause,
            decided_at: now,
            room,
            finished,
        });
    }

    /// What came of the teardown's request to LiveKit. Returns whether it was news: only a
    /// teardown still under way takes a result, once.
    pub fn teardown_finished(&mut self, done: TeardownDone, now: Time) -> bool {
        match self.rare.as_deref_mut().and_then(|r| r.teardown.as_mut()) {
            Some(teardown) if teardown.finished.is_none() => {
                teardown.finished = Some((done, now));
                true
            }
            _ => false,
        }
    }

    /// The room the sidecar must still delete, if a teardown is under way.
    pub fn teardown_order(&self, session: &SessionId) -> Option<TeardownOrder> {
        let teardown = self.teardown()?;
        match (&teardown.room, &teardown.finished) {
            (Some(room), None) => Some(TeardownOrder {
                session: session.clone(),
                room: room.clone(),
                cause: teardown.cause,
                decided_at: teardown.decided_at,
            }),
            _ => None,
        }
    }

    /// Whether a teardown is still waiting for LiveKit.
    pub fn teardown_pending(&self) -> bool {
        self.teardown()
            .is_some_and(|t| t.room.is_some() && t.finished.is_none())
    }

    pub fn teardown(&self) -> Option<&Teardown> {
        self.rare()?.teardown.as_ref()
    }

    /// Applies every deadline that has passed by `now`: the reply timeout (row 5), the playout
    /// guard, the maximum call duration and its warnings, the silence ladder, the worker-lost
    /// window and the close deadline.
    pub fn on_time(&mut self, now: Time, timing: &Timing) -> Vec<IssuedDirective> {
        let first_new = self.directives.len();
        if let Some((at, cause)) = self.teardown_deadline(timing) {
            if at <= now {
                self.tear_down(cause, now);
            }
        }
        if !self.is_closed() && self.shutdown_cause.is_none() {
            self.warnings_due(now);
            if let Some((_, wind_up_at)) = self.max_duration_at() {
                if !self.wind_up_issued && wind_up_at <= now {
                    self.wind_up_issued = true;
                    // Once end_call was called the agent is already saying goodbye; once a
                    // WIND_UP was issued (for silence) it has been asked to.
                    if self.winding_free() {
                        self.issue(
                            Directive::WindUp {
                                cause: ShutdownCause::MaxDuration,
                            },
                            now,
                        );
                    }
                }
            }
            self.silence_due(now);
            if let Some((_, cause)) = self
                .shutdown_deadlines(timing)
                .filter(|(at, _)| *at <= now)
                .min_by_key(|(at, _)| *at)
            {
                self.shut_down(cause, now);
            }
        }
        self.directives[first_new..].to_vec()
    }

    /// When `on_time` next has something to do, if ever.
    pub fn next_deadline(&self, timing: &Timing) -> Option<Time> {
        let teardown = self.teardown_deadline(timing).map(|(at, _)| at);
        if self.is_closed() || self.shutdown_cause.is_some() {
            return teardown;
        }
        let wind_up = self
            .max_duration_at()
            .filter(|_| !self.wind_up_issued)
            .map(|(_, at)| at);
        self.shutdown_deadlines(timing)
            .map(|(at, _)| at)
            .chain(wind_up)
            .chain(self.next_warning())
            .chain(self.next_silence())
            .chain(teardown)
            .min()
    }

    /// Whether the agent may still be asked to wind up or be reminded: no end_call yet (the
    /// agent is already saying goodbye) and no `WIND_UP` issued (it has been asked to). Callers
    /// also check that no `SHUTDOWN_SESSION` was issued and the session is not closed.
    fn winding_free(&self) -> bool {
        self.tool_speeches.is_empty()
            && !self
                .directives
                .iter()
                .any(|d| matches!(d.directive, Directive::WindUp { .. }))
    }

    /// Whether another `REMIND` may be issued ([`MAX_REMINDS_PER_SESSION`]).
    fn may_remind(&self) -> bool {
        self.directives
            .iter()
            .filter(|d| matches!(d.directive, Directive::Remind { .. }))
            .count()
            < MAX_REMINDS_PER_SESSION
    }

    /// The staged time limits: each warning whose time has come, once, as `REMIND`. When
    /// several came due at once (a late timer, a restart), only the last is issued; none when
    /// the wind-up they lead to is due too.
    fn warnings_due(&mut self, now: Time) {
        // Past an end_call or a WIND_UP no warning is due (`next_warning`): nothing moves, as
        // replay needs (a timer that fires with nothing due is not journaled).
        if !self.winding_free() {
            return;
        }
        let Some(rare) = self.rare.as_deref() else {
            return;
        };
        let Some((_, wind_up_at)) = rare.max_duration else {
            return;
        };
        let due = rare
            .warnings
            .iter()
            .take_while(|w| wind_up_at.minus(w.before) <= now)
            .count();
        let warned = usize::from(rare.warned);
        if due <= warned {
            return;
        }
        let instructions = rare.warnings[due - 1].instructions.clone();
        let issue = wind_up_at > now && self.may_remind();
        self.rare_mut().warned = u8::try_from(due).unwrap_or(u8::MAX);
        if issue {
            self.issue(
                Directive::Remind {
                    cause: ShutdownCause::MaxDuration,
                    instructions,
                },
                now,
            );
        }
    }

    /// When the next warning is due, while warnings may still be issued.
    fn next_warning(&self) -> Option<Time> {
        let rare = self.rare()?;
        let (_, wind_up_at) = rare.max_duration?;
        let next = rare.warnings.get(usize::from(rare.warned))?;
        self.winding_free().then(|| wind_up_at.minus(next.before))
    }

    /// The silence ladder: at the silence timeout `WIND_UP`, before it each reminder whose
    /// slot has come, once. When several slots came due at once, only the last is issued;
    /// none when the timeout is due too.
    fn silence_due(&mut self, now: Time) {
        let Some(timeout) = self.options.silence_timeout else {
            return;
        };
        let free = self.winding_free();
        let may_remind = self.may_remind();
        let options = Arc::clone(&self.options);
        let Some(silence) = self.silence.as_deref_mut() else {
            return;
        };
        if silence.wound_up || !free {
            return;
        }
        let timeout = micros(timeout);
        let silent = silence.at(now);
        if silent >= timeout {
            silence.wound_up = true;
            // When it reached the timeout: the shutdown's grace runs from there.
            silence.at = now.as_micros().saturating_sub(silent - timeout);
            self.issue(
                Directive::WindUp {
                    cause: ShutdownCause::SilenceTimeout,
                },
                now,
            );
            return;
        }
        // Past the session's last REMIND no reminder is due (`next_silence`): nothing moves.
        if !may_remind {
            return;
        }
        let after = micros(options.silence_reminder_after).max(1);
        let due = (silent / after).min(u64::from(options.silence_reminders));
        if due > u64::from(silence.reminded) {
            silence.reminded = u8::try_from(due).unwrap_or(u8::MAX);
            self.issue(
                Directive::Remind {
                    cause: ShutdownCause::SilenceTimeout,
                    instructions: options.silence_reminder_instructions.clone(),
                },
                now,
            );
        }
    }

    /// When the silence next reaches a reminder's slot or the timeout, if it is growing and
    /// the ladder may still act.
    fn next_silence(&self) -> Option<Time> {
        let timeout = micros(self.options.silence_timeout?);
        let silence = self.silence.as_deref()?;
        if silence.wound_up || silence.paused || !self.winding_free() {
            return None;
        }
        let after = micros(self.options.silence_reminder_after).max(1);
        let next = u64::from(silence.reminded) + 1;
        let reminder = (next <= u64::from(self.options.silence_reminders) && self.may_remind())
            .then(|| next.saturating_mul(after));
        let slot = reminder.map_or(timeout, |r| r.min(timeout));
        Some(Time::from_micros(silence.at.saturating_add(slot)))
    }

    /// When the sidecar would tear the call down, and why: the worker-lost window of an
    /// attended session with no stream open, or the close deadline after `SHUTDOWN_SESSION`,
    /// whichever comes first.
    fn teardown_deadline(&self, timing: &Timing) -> Option<(Time, TeardownCause)> {
        if self.is_closed() {
            return None;
        }
        let lost = (self.lease.attended() && self.lease.streams() == 0).then(|| {
            (
                self.last_activity + timing.worker_lost_after,
                TeardownCause::WorkerLost,
            )
        });
        let close = self
            .shutdown()
            .map(|(_, at)| (at + timing.close_deadline, TeardownCause::CloseDeadline));
        lost.into_iter().chain(close).min_by_key(|(at, _)| *at)
    }

    /// Every pending deadline that would end in `SHUTDOWN_SESSION`, with its cause.
    fn shutdown_deadlines<'a>(
        &'a self,
        timing: &'a Timing,
    ) -> impl Iterator<Item = (Time, ShutdownCause)> + 'a {
        let guard = timing.playout_guard;
        let goodbyes = self
            .tool_speeches
            .iter()
            .filter(|t| !t.done)
            .map(move |t| (t.called_at + guard, ShutdownCause::PlayoutGuard));
        let waits = self.waiters.iter().map(move |w| match w {
            Waiter::Awaiting { deadline } => (*deadline, ShutdownCause::ReplyTimeout),
            Waiter::Playing { since, .. } => (*since + guard, ShutdownCause::PlayoutGuard),
        });
        let max_duration = self.max_duration_at().map(|(_, wind_up_at)| {
            (
                wind_up_at + timing.wind_up_grace,
                ShutdownCause::MaxDuration,
            )
        });
        // Nothing about silence once end_call was called.
        let silence = self
            .silence
            .as_deref()
            .filter(|s| s.wound_up && self.tool_speeches.is_empty())
            .map(|s| {
                (
                    Time::from_micros(s.at) + timing.wind_up_grace,
                    ShutdownCause::SilenceTimeout,
                )
            });
        goodbyes.chain(waits).chain(max_duration).chain(silence)
    }

    fn shut_down(&mut self, cause: ShutdownCause, now: Time) {
        // The first SHUTDOWN_SESSION wins; nothing is issued twice.
        if self.shutdown_cause.is_some() || self.is_closed() {
            return;
        }
        self.shutdown_cause = Some(cause);
        self.rare_mut().shutdown_at = now;
        self.waiters.clear();
        self.issue(Directive::ShutdownSession { cause }, now);
    }

    fn issue(&mut self, directive: Directive, now: Time) {
        let seq = self.directives.len() as u64 + 1;
        self.directives.push(IssuedDirective {
            seq,
            at: now,
            directive,
        });
        self.push_timeline(now, TimelineItem::Directive(seq));
    }

    /// The first options a request brings are the session's from then on. Options that turn
    /// the silence ladder on start it now, unless the defaults had it on from the start.
    fn fix_options(&mut self, options: Option<Arc<Options>>, now: Time) {
        if let Some(options) = options {
            if !self.options_fixed {
                match (options.silence_timeout, &self.silence) {
                    (Some(_), None) => self.silence = Some(Box::new(Silence::from(now))),
                    (None, Some(_)) => self.silence = None,
                    _ => {}
                }
                self.options = options;
                self.options_fixed = true;
            }
        }
    }

    /// The copy of `speech` this session already holds, if it holds one: each request brings
    /// its own copy of the id, and keeping them all would cost an allocation per event.
    fn known(&self, speech: SpeechId) -> SpeechId {
        self.tool_speeches
            .iter()
            .map(|t| &t.id)
            .chain(self.recent.iter().map(|r| &r.id))
            .find(|known| **known == speech)
            .cloned()
            .unwrap_or(speech)
    }

    fn recent(&self, speech: &SpeechId) -> Option<&RecentSpeech> {
        self.recent.iter().find(|r| r.id == *speech)
    }

    fn remember(&mut self, speech: &SpeechId) -> &mut RecentSpeech {
        let index = match self.recent.iter().position(|r| r.id == *speech) {
            Some(index) => index,
            None => {
                if self.recent.len() == RECENT_SPEECHES {
                    self.recent.remove(0);
                }
                // Most sessions name one or two speeches.
                start_small(&mut self.recent, 1);
                self.recent.push(RecentSpeech {
                    id: speech.clone(),
                    created: false,
                    done: false,
                });
                self.recent.len() - 1
            }
        };
        &mut self.recent[index]
    }

    fn record(&mut self, at: Time, record: EventRecord, duplicate: bool) {
        self.push_timeline(at, TimelineItem::Event { record, duplicate });
    }

    fn push_timeline(&mut self, at: Time, item: TimelineItem) {
        if self.timeline.len() == TIMELINE_CAP {
            self.timeline.remove(0);
            self.timeline_dropped = self.timeline_dropped.saturating_add(1);
        }
        start_small(&mut self.timeline, 2);
        self.timeline.push(TimelineEntry { at, item });
    }

    fn timeline_has(&self, pred: impl Fn(&EventRecord) -> bool) -> bool {
        self.timeline
            .iter()
            .any(|e| matches!(&e.item, TimelineItem::Event { record, .. } if pred(record)))
    }

    /// The contract's state; with several end_calls, the most advanced one.
    pub fn state(&self) -> State {
        if self.is_closed() {
            State::Closed
        } else if self.shutdown_cause.is_some() {
            State::ShuttingDown
        } else if self
            .waiters
            .iter()
            .any(|w| matches!(w, Waiter::Playing { .. }))
        {
            State::PlayingReply
        } else if !self.waiters.is_empty() {
            State::AwaitingReply
        } else if self.tool_speeches.iter().any(|t| !t.done) {
            State::Ending
        } else {
            State::Active
        }
    }

    /// How the session ended, once it has (`SHUTDOWN_SESSION` or a close).
    pub fn outcome(&self) -> Option<Outcome> {
        if let Some((cause, _)) = self.shutdown() {
            return Some(Outcome::Shutdown(cause));
        }
        let close_record = self.close_record()?;
        Some(match close_record.closer {
            Closer::Expired => Outcome::Expired,
            Closer::Sidecar(_) => Outcome::WorkerLost,
            Closer::Worker(_) if self.tool_speeches.is_empty() => Outcome::ClosedWithoutEndCall,
            Closer::Worker(_) => Outcome::ClosedDuringEndCall,
        })
    }

    /// The tool's output for the LLM: `None` asks for no reply.
    pub fn tool_output(&self) -> Option<&str> {
        self.options.end_instructions.as_deref()
    }

    pub fn options(&self) -> &Arc<Options> {
        &self.options
    }

    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    pub fn max_duration(&self) -> Option<Duration> {
        self.max_duration_at().map(|(max, _)| max)
    }

    /// The warnings before the maximum duration, in time order.
    pub fn warnings(&self) -> &[Warning] {
        self.rare().map_or(&[], |rare| &rare.warnings)
    }

    /// Why the call ended, once the session is closed (`docs/contract.md`, ended reason).
    pub fn ended_reason(&self) -> Option<EndedReason> {
        let close_record = self.close_record()?;
        if let Closer::Sidecar(TeardownCause::WorkerLost) = close_record.closer {
            return Some(EndedReason::WorkerLost);
        }
        let agent = || {
            if self
                .directives
                .iter()
                .any(|d| matches!(d.directive, Directive::WindUp { .. }))
            {
                EndedReason::AgentWindUp
            } else {
                EndedReason::AgentEndCall
            }
        };
        if let Some(cause) = self.shutdown_cause {
            return Some(match cause {
                ShutdownCause::MaxDuration => EndedReason::MaxDuration,
                ShutdownCause::SilenceTimeout => EndedReason::SilenceTimeout,
                ShutdownCause::ToolTurnDone
                | ShutdownCause::ReplyPlayedOut
                | ShutdownCause::ReplyTimeout
                | ShutdownCause::PlayoutGuard => agent(),
            });
        }
        Some(match close_record.closer {
            Closer::Worker(CloseReason::Error) => EndedReason::Error,
            Closer::Worker(_) if !self.tool_speeches.is_empty() => agent(),
            Closer::Worker(CloseReason::ParticipantDisconnected) => EndedReason::UserHangup,
            Closer::Worker(CloseReason::JobShutdown) => EndedReason::JobShutdown,
            Closer::Worker(CloseReason::UserInitiated | CloseReason::TaskCompleted) => {
                EndedReason::AgentClosed
            }
            Closer::Expired => EndedReason::Expired,
            // A close deadline follows a SHUTDOWN_SESSION, whose cause decided above.
            Closer::Sidecar(_) => EndedReason::WorkerLost,
        })
    }

    /// The maximum duration and when `WIND_UP` is due, if the session set one.
    fn max_duration_at(&self) -> Option<(Duration, Time)> {
        self.rare().and_then(|e| e.max_duration)
    }

    pub fn created_at(&self) -> Time {
        self.created_at
    }

    pub fn end_call_at(&self) -> Option<Time> {
        self.tool_speeches.first().map(|t| t.called_at)
    }

    /// Why and when `SHUTDOWN_SESSION` was issued, if it was.
    fn shutdown(&self) -> Option<(ShutdownCause, Time)> {
        let at = self.rare().map_or(Time::NEVER, |rare| rare.shutdown_at);
        self.shutdown_cause.map(|cause| (cause, at))
    }

    pub fn shutdown_at(&self) -> Option<Time> {
        self.shutdown().map(|(_, at)| at)
    }

    pub fn closed_at(&self) -> Option<Time> {
        self.close_record().map(|c| c.at)
    }

    /// The worker's reason, if the worker closed the session.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.close_record()?.closer {
            Closer::Worker(reason) => Some(reason),
            Closer::Expired | Closer::Sidecar(_) => None,
        }
    }

    pub fn room(&self) -> Option<&RoomName> {
        self.rare()?.room.as_ref()
    }

    /// Whether the worker has ever held a watch stream.
    pub fn attended(&self) -> bool {
        self.lease.attended()
    }

    /// Watch streams open now.
    pub fn streams(&self) -> u8 {
        self.lease.streams()
    }

    /// The worker's last sign of life (see the field).
    pub fn last_activity(&self) -> Time {
        self.last_activity
    }

    pub fn close_error(&self) -> Option<&str> {
        self.close_record().and_then(|c| c.error.as_deref())
    }

    pub fn is_closed(&self) -> bool {
        self.close_record().is_some()
    }

    fn close_record(&self) -> Option<&CloseRecord> {
        self.rare()?.close_record.as_ref()
    }

    fn rare(&self) -> Option<&RareParts> {
        self.rare.as_deref()
    }

    fn rare_mut(&mut self) -> &mut RareParts {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Every directive issued so far, in sequence order.
    pub fn directives(&self) -> &[IssuedDirective] {
        &self.directives
    }

    /// The directives with a sequence number greater than `seq`.
    pub fn directives_after(&self, seq: u64) -> &[IssuedDirective] {
        let start =
            usize::try_from(seq).map_or(self.directives.len(), |s| s.min(self.directives.len()));
        &self.directives[start..]
    }

    pub fn last_seq(&self) -> u64 {
        self.directives.len() as u64
    }

    pub fn timeline(&self) -> impl Iterator<Item = &TimelineEntry> {
        self.timeline.iter()
    }

    pub fn timeline_dropped(&self) -> u32 {
        u32::from(self.timeline_dropped)
    }
}

/// Warnings in time order: the longest `before` (the earliest) first; equal ones as given.
fn sorted(mut warnings: Vec<Warning>) -> Vec<Warning> {
    warnings.sort_by_key(|w| std::cmp::Reverse(w.before));
    warnings
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Makes room for one more element, starting at `first` and doubling from there. The
/// standard growth starts at four: most sessions are short, and a million of them waiting at
/// once is what the memory budget is for.
fn start_small<T>(list: &mut Vec<T>, first: usize) {
    if list.len() == list.capacity() {
        list.reserve_exact(list.capacity().max(first));
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
