//! Live sessions: one state machine per session id, with ordering, timers, expiry and limits.
//!
//! Sessions live in a sharded map (dashmap); an event runs its machine under the shard's lock,
//! which is what orders one session's events without a task per session. The lock is a plain
//! synchronous one and is never held across an `.await` (clippy checks that, through the
//! guard types `clippy.toml` names): everything done under it is non-blocking (a machine step,
//! a channel send, a watch notification).
//!
//! Each session arms at most one timer at a time in the shared timer wheel (`timers.rs`): the
//! earliest of its machine's deadline, its idle expiry, or (once closed) the end of its
//! retention. A timer that fires early or for a cancelled deadline is harmless: the machine is
//! asked what is due at `now` and the session re-arms.
//!
//! With a journal (`--state-dir`), every input a machine takes is queued to it under the same
//! lock, so each session's records keep its order; an event's reply waits for its record's
//! fsync, and a watcher sees a directive only once the record that issued it is on disk.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use dashmap::{mapref::one::RefMut, DashMap};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    clock::Clock,
    domain::{Directive, Event, IssuedDirective, Options, SessionId, State, Time},
    journal::{self, record::load_options, Durable, Journal, MachineInput, Opened, Record},
    machine::{Rejection, Session, Step, Timing},
    report::Report,
    telemetry::{self, metrics},
    timers::{self, TimerKey, TimerThread},
};

/// Server-wide settings of the registry.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Option defaults for sessions that give none.
    pub defaults: Arc<Options>,
    pub timing: Timing,
    /// How long a closed session is kept, for retries, late watchers and `GetSession`.
    pub closed_retention: Duration,
    /// A live session with no event for this long is expired.
    pub idle_expiry: Duration,
    /// Live (not closed) sessions at most; closed ones are bounded by their retention.
    pub max_sessions: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("too many live sessions (limit {limit})")]
    TooManySessions { limit: usize },
    #[error("session not found")]
    NotFound,
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the state journal failed: the sidecar is stopping")]
    JournalFailed,
}

/// What an event did, with what the reply needs.
#[derive(Debug)]
pub struct Applied<R = ()> {
    pub step: Step,
    pub state: State,
    /// What the caller read from the session after the event (see [`Registry::apply_with`]).
    pub reply: R,
    /// With a journal: completes once the event is on disk. The reply must wait for it.
    pub durable: Option<Durable>,
}

/// One poll of a watch stream.
#[derive(Debug)]
pub struct WatchPoll {
    pub directives: Vec<IssuedDirective>,
    /// Closed and everything sent: the stream ends.
    pub finished: bool,
    /// Changes when the session issues a directive, closes, or is dropped (then it errors).
    pub changed: Option<watch::Receiver<()>>,
}

/// A session and the registry's bookkeeping of it, boxed as one: the map's slots then hold
/// only the id and a pointer (16 bytes), so the spare capacity a hash table keeps costs little.
struct Entry {
    session: Session,
    last_activity: Time,
    /// The time this session's timer is set for ([`Time::NEVER`]: none).
    armed: Time,
    /// This session's entry in the timer wheel, once the timer task made one. Kept here rather
    /// than in a map of the timer task's: one map entry per session was 60-odd bytes each.
    timer: Option<TimerKey>,
    /// Wakes watch streams; created by the first watcher, dropped with the entry.
    notify: Option<watch::Sender<()>>,
    /// With a journal: the index of this session's next record.
    journal_index: u32,
    /// With a journal: directives up to this sequence number are on disk, so watchers may
    /// see them.
    published: u32,
}

// A million waiting sessions is what the memory budget is for: each entry is one allocation,
// and crossing 224 bytes would put it in the allocator's next size class (256), 32 bytes more
// for every session. Rare parts of a session go in its boxed `Extras` instead.
const _: () = assert!(std::mem::size_of::<Entry>() <= 224);

/// Session ids come from the agents in the pod, not from strangers: a fast hasher is enough.
type Hasher = foldhash::fast::RandomState;

pub struct Registry {
    sessions: DashMap<SessionId, Box<Entry>, Hasher>,
    settings: Settings,
    clock: Clock,
    live: AtomicUsize,
    timers: Arc<timers::Arms>,
    journal: Option<Journal>,
}

impl Registry {
    /// Creates the registry and starts its timer task, which ends when the registry is dropped.
    pub fn start(
        settings: Settings,
        clock: Clock,
        placement: TimerThread,
    ) -> std::io::Result<Arc<Self>> {
        Self::launch(settings, clock, placement, None)
    }

    /// Like [`Registry::start`], with every input journaled: first rebuilds the sessions the
    /// journal holds, re-arming their deadlines (any already past fire at once).
    pub fn start_durable(
        settings: Settings,
        clock: Clock,
        placement: TimerThread,
        opened: Opened,
    ) -> std::io::Result<Arc<Self>> {
        Self::launch(settings, clock, placement, Some(opened))
    }

    fn launch(
        settings: Settings,
        clock: Clock,
        placement: TimerThread,
        mut opened: Option<Opened>,
    ) -> std::io::Result<Arc<Self>> {
        let recovered = opened
            .as_mut()
            .map(|opened| std::mem::take(&mut opened.recovered));
        let arms = timers::Arms::new();
        let mut started = Ok(());
        // Cyclic: the journal's writer publishes into the registry that owns the journal.
        let registry = Arc::new_cyclic(|weak: &std::sync::Weak<Self>| {
            let journal = opened.and_then(|opened| {
                let weak = weak.clone();
                let publish: journal::Publish = Box::new(move |published| {
                    if let Some(registry) = weak.upgrade() {
                        registry.publish(published);
                    }
                });
                opened.start(publish).map_err(|err| started = Err(err)).ok()
            });
            Self {
                sessions: DashMap::with_hasher(Hasher::default()),
                settings,
                clock,
                live: AtomicUsize::new(0),
                timers: Arc::clone(&arms),
                journal,
            }
        });
        started?;
        timers::spawn(Arc::downgrade(&registry), clock, arms, placement)?;
        if let Some(recovered) = recovered {
            registry.restore(recovered.sessions);
        }
        Ok(registry)
    }

    /// With a journal: completes once every input taken so far is on disk.
    pub fn sync_journal(&self) -> Option<Durable> {
        self.journal.as_ref().map(Journal::sync)
    }

    /// Cancelled if the journal failed (never, without one): the server must stop.
    pub fn journal_failed(&self) -> Option<CancellationToken> {
        self.journal
            .as_ref()
            .map(|journal| journal.failed().clone())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Live (not closed) sessions.
    pub fn live_sessions(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Applies a worker's event to its session, creating the session if needed.
    pub fn apply(&self, id: &str, event: Event) -> Result<Applied, RegistryError> {
        self.apply_with(id, event, |_| ())
    }

    /// Like [`Registry::apply`], and reads what the reply needs from the session (its tool
    /// output, its options) under the same lock, so a reply never copies what it does not use.
    pub fn apply_with<R>(
        &self,
        id: &str,
        event: Event,
        reply: impl FnOnce(&Session) -> R,
    ) -> Result<Applied<R>, RegistryError> {
        if let Some(journal) = &self.journal {
            if journal.failed().is_cancelled() {
                return Err(RegistryError::JournalFailed);
            }
        }
        let now = self.clock.now();
        let (applied, ended) = {
            let mut entry = self.entry_or_create(id, now)?;
            let before = entry.session.state();
            // Cheap (ids and texts are shared), and only when there is a journal to write.
            let input = self.journal.as_ref().map(|_| event.clone());
            let step = entry.session.handle(event, now, &self.settings.timing)?;
            entry.last_activity = now;
            let (key, entry) = entry.pair_mut();
            let durable = input.and_then(|event| {
                self.journal_input(key, entry, now, &MachineInput::Event(event), true)
            });
            let ended = self.settle(key, entry, before, &step.directives);
            let applied = Applied {
                step,
                state: entry.session.state(),
                reply: reply(&entry.session),
                durable,
            };
            (applied, ended)
        };
        // With the shard unlocked: queueing a report waits while the report queue is full, and
        // without the report thread (tests) the report is formatted right here.
        if let Some(report) = ended {
            telemetry::session_ended(report);
        }
        Ok(applied)
    }

    /// Directives after `after_seq`, at most `max`, and a receiver to wait for more.
    ///
    /// With `create`, a session that does not exist yet is created (a watcher may connect
    /// before the first event); without it, a missing session ends the stream.
    pub fn poll_watch(
        &self,
        id: &str,
        after_seq: u64,
        max: usize,
        create: bool,
    ) -> Result<WatchPoll, RegistryError> {
        let entry = if create {
            Some(self.entry_or_create(id, self.clock.now())?)
        } else {
            self.sessions.get_mut(id)
        };
        let Some(mut entry) = entry else {
            return Ok(WatchPoll {
                directives: Vec::new(),
                finished: true,
                changed: None,
            });
        };
        let (key, entry) = entry.pair_mut();
        if create {
            // A session created by its watcher still needs its idle expiry armed; later polls
            // of the same stream have nothing to arm.
            self.arm(key, entry);
        }
        let pending = entry.session.directives_after(after_seq);
        // With a journal, only what is on disk: nothing a watcher acts on may be lost.
        let visible = match self.journal {
            Some(_) => pending
                .iter()
                .take_while(|d| d.seq <= u64::from(entry.published))
                .count(),
            None => pending.len(),
        };
        let directives = pending[..visible.min(max)].to_vec();
        let finished = entry.session.is_closed() && directives.len() == pending.len();
        // Subscribing under the lock means no directive can slip between this poll and the wait.
        let changed = entry
            .notify
            .get_or_insert_with(|| watch::channel(()).0)
            .subscribe();
        Ok(WatchPoll {
            directives,
            finished,
            changed: Some(changed),
        })
    }

    /// The session's report, if the session exists (live, or closed and still retained).
    pub fn report(&self, id: &str) -> Option<Report> {
        let entry = self.sessions.get(id)?;
        Some(Report::of(entry.key(), &entry.session))
    }

    /// `id`'s wheel key, or `None` if the session is gone. Only the timer task reads or
    /// writes keys, so it may work on the wheel between reading a key and storing a new one
    /// without holding the session's lock: the wheel may grow (copying all its entries), and
    /// no RPC should wait for that.
    pub(crate) fn timer_key(&self, id: &SessionId) -> Option<Option<TimerKey>> {
        self.sessions.get(id.as_str()).map(|entry| entry.timer)
    }

    /// Stores `id`'s new wheel key (see [`Registry::timer_key`]).
    pub(crate) fn set_timer_key(&self, id: &SessionId, key: TimerKey) {
        if let Some(mut entry) = self.sessions.get_mut(id.as_str()) {
            entry.timer = Some(key);
        }
    }

    /// Gives every session holding a wheel key a new one (`rekey` maps old to new): the timer
    /// task moves its entries into a fresh wheel after a large drop.
    pub(crate) fn rekey_timers(&self, mut rekey: impl FnMut(&SessionId, TimerKey) -> TimerKey) {
        for mut entry in self.sessions.iter_mut() {
            let (id, entry) = entry.pair_mut();
            if let Some(key) = entry.timer {
                entry.timer = Some(rekey(id, key));
            }
        }
    }

    /// Gives back the map's memory once it holds far fewer sessions than it has room for.
    pub(crate) fn shrink_if_sparse(&self) {
        if self.sessions.len() < self.sessions.capacity() / 4 {
            self.sessions.shrink_to_fit();
        }
    }

    /// Called by the timer task when a session's entry `key` in the wheel comes due.
    pub(crate) fn on_timer(&self, id: &SessionId, wheel_key: TimerKey) {
        let now = self.clock.now();
        let mut ended = None;
        let remove = {
            let Some(mut entry) = self.sessions.get_mut(id.as_str()) else {
                return;
            };
            let (key, entry) = entry.pair_mut();
            if entry.timer == Some(wheel_key) {
                entry.timer = None;
                entry.armed = Time::NEVER;
            }
            let before = entry.session.state();
            let timing = &self.settings.timing;
            if let Some(closed_at) = entry.session.closed_at() {
                let retention_over = closed_at + self.settings.closed_retention <= now;
                if !retention_over {
                    // An earlier, stale timer (a deadline the close cancelled): wait for the
                    // retention's end instead, or the session would never be dropped.
                    self.arm(key, entry);
                }
                retention_over
            } else {
                let issued = if entry.last_activity + self.settings.idle_expiry <= now {
                    entry.session.expire(now);
                    self.journal_input(key, entry, now, &MachineInput::Expire, false);
                    Vec::new()
                } else {
                    let due = entry
                        .session
                        .next_deadline(timing)
                        .is_some_and(|deadline| deadline <= now);
                    let issued = entry.session.on_time(now, timing);
                    // A tick with nothing due changed nothing: replay does not need it.
                    if due {
                        self.journal_input(key, entry, now, &MachineInput::Tick, false);
                    }
                    issued
                };
                ended = self.settle(key, entry, before, &issued);
                false
            }
        };
        if let Some(report) = ended {
            telemetry::session_ended(report);
        }
        if remove {
            // Dropping the entry drops its notifier, which ends any watch stream still open.
            let retention = self.settings.closed_retention;
            let removed = self.sessions.remove_if(id.as_str(), |_, entry| {
                entry
                    .session
                    .closed_at()
                    .is_some_and(|closed_at| closed_at + retention <= now)
            });
            if let Some((id, mut entry)) = removed {
                metrics::session_state(Some(State::Closed), None);
                // Its records are garbage from here on, for compaction and for restarts.
                self.journal_input(&id, &mut entry, now, &MachineInput::Dropped, false);
            }
        }
    }

    fn entry_or_create(
        &self,
        id: &str,
        now: Time,
    ) -> Result<RefMut<'_, SessionId, Box<Entry>>, RegistryError> {
        if let Some(entry) = self.sessions.get_mut(id) {
            return Ok(entry);
        }
        let limit = self.settings.max_sessions;
        if self.live.fetch_add(1, Ordering::Relaxed) >= limit {
            self.live.fetch_sub(1, Ordering::Relaxed);
            return Err(RegistryError::TooManySessions { limit });
        }
        let session_id = SessionId::new(id);
        let mut created = false;
        let entry = self.sessions.entry(session_id).or_insert_with(|| {
            created = true;
            Box::new(Entry {
                session: Session::new(Arc::clone(&self.settings.defaults), now),
                last_activity: now,
                armed: Time::NEVER,
                timer: None,
                notify: None,
                journal_index: 0,
                published: 0,
            })
        });
        // The caller arms the new session's timer once it has applied its event: arming here
        // too would wake the timer task twice for one request.
        if created {
            metrics::session_state(None, Some(State::Active));
        } else {
            // Another request created it between our lookup and insert.
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(entry)
    }

    /// After a session changed: account for what it issued and a close, wake watchers,
    /// re-arm its timer. Returns the end-of-call report to log once the lock is released, if
    /// the session just ended and the report is logged at all.
    fn settle(
        &self,
        id: &SessionId,
        entry: &mut Entry,
        before: State,
        issued: &[IssuedDirective],
    ) -> Option<Report> {
        let after = entry.session.state();
        metrics::session_state(Some(before), Some(after));
        for directive in issued {
            metrics::directive(&directive.directive);
            if let Directive::ShutdownSession { .. } = directive.directive {
                if let Some(called) = entry.session.end_call_at() {
                    metrics::end_call_to_shutdown(directive.at.since(called));
                }
            }
        }
        let closed_now = before != State::Closed && after == State::Closed;
        let mut report = None;
        if closed_now {
            self.live.fetch_sub(1, Ordering::Relaxed);
            if let Some(outcome) = entry.session.outcome() {
                metrics::session_ended(outcome, entry.session.close_reason());
            }
            if telemetry::reports_enabled() {
                report = Some(Report::of(id, &entry.session));
            }
        }
        // With a journal, watchers are woken once the journal has it on disk (`publish`).
        if (!issued.is_empty() || closed_now) && self.journal.is_none() {
            if let Some(notify) = &entry.notify {
                notify.send_replace(());
            }
        }
        self.arm(id, entry);
        report
    }

    /// Queues one machine input to the journal, if there is one. Called under the session's
    /// lock, right after the machine took the input, so the journal keeps the session's order.
    fn journal_input(
        &self,
        id: &SessionId,
        entry: &mut Entry,
        at: Time,
        input: &MachineInput,
        ack: bool,
    ) -> Option<Durable> {
        let journal = self.journal.as_ref()?;
        let index = entry.journal_index;
        entry.journal_index = index.saturating_add(1);
        let defaults = (index == 0).then_some(&*self.settings.defaults);
        let record = Record::new(id, entry.session.created_at(), index, at, defaults, input);
        let last_seq = entry.session.last_seq();
        let wakes_watchers = last_seq > u64::from(entry.published) || entry.session.is_closed();
        let publish = (wakes_watchers && !matches!(input, MachineInput::Dropped))
            .then(|| (id.clone(), last_seq));
        journal.append(&record, publish, ack)
    }

    /// Called by the journal after an fsync: these directives are on disk, so watchers may
    /// have them.
    fn publish(&self, published: &[(SessionId, u64)]) {
        for (id, seq) in published {
            if let Some(mut entry) = self.sessions.get_mut(id.as_str()) {
                let seq = u32::try_from(*seq).unwrap_or(u32::MAX);
                entry.published = entry.published.max(seq);
                if let Some(notify) = &entry.notify {
                    notify.send_replace(());
                }
            }
        }
    }

    /// Rebuilds the journal's sessions by replaying their records through fresh machines.
    fn restore(&self, sessions: Vec<(SessionId, Vec<Record>)>) {
        let now = self.clock.now();
        let timing = &self.settings.timing;
        for (id, records) in sessions {
            let Some(first) = records.first() else {
                continue;
            };
            let defaults = first
                .created
                .as_ref()
                .and_then(|created| created.defaults.as_ref())
                .map_or_else(|| Arc::clone(&self.settings.defaults), load_options);
            let created_at = Time::from_micros(first.generation);
            let mut session = Session::new(defaults, created_at);
            let mut last_activity = created_at;
            for record in &records {
                let at = record.at();
                match record.input() {
                    Ok(MachineInput::Event(event)) => {
                        last_activity = at;
                        if let Err(rejection) = session.handle(event, at, timing) {
                            // Only if the timing flags changed since: the event changes nothing.
                            warn!(session_id = %id, index = record.index, %rejection, "replayed event refused");
                        }
                    }
                    Ok(MachineInput::Tick) => {
                        session.on_time(at, timing);
                    }
                    Ok(MachineInput::Expire) => {
                        session.expire(at);
                    }
                    Ok(MachineInput::Dropped) => {}
                    Err(err) => warn!(%err, "journal record skipped"),
                }
            }
            let mut entry = Box::new(Entry {
                last_activity,
                armed: Time::NEVER,
                timer: None,
                notify: None,
                journal_index: u32::try_from(records.len()).unwrap_or(u32::MAX),
                published: u32::try_from(session.last_seq()).unwrap_or(u32::MAX),
                session,
            });
            let retention_over = entry
                .session
                .closed_at()
                .is_some_and(|closed_at| closed_at + self.settings.closed_retention <= now);
            if retention_over {
                self.journal_input(&id, &mut entry, now, &MachineInput::Dropped, false);
                continue;
            }
            let state = entry.session.state();
            if state != State::Closed {
                self.live.fetch_add(1, Ordering::Relaxed);
            }
            metrics::session_state(None, Some(state));
            // Armed once in the map: a deadline already past fires at once, and must find it.
            let mut held = self.sessions.entry(id).insert(entry);
            let (id, entry) = held.pair_mut();
            self.arm(id, entry);
        }
    }

    fn arm(&self, id: &SessionId, entry: &mut Entry) {
        let wake = match entry.session.closed_at() {
            Some(closed_at) => closed_at + self.settings.closed_retention,
            None => {
                let idle = entry.last_activity + self.settings.idle_expiry;
                entry
                    .session
                    .next_deadline(&self.settings.timing)
                    .map_or(idle, |deadline| deadline.min(idle))
            }
        };
        if wake < entry.armed {
            entry.armed = wake;
            self.timers.arm(id.clone(), wake);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The registry on tokio's paused clock: timers fire at their time, to the millisecond,
    //! without the test waiting for them.

    use tokio::time::{advance, sleep};

    use super::*;
    use crate::domain::{Capabilities, CloseReason, Directive, Outcome, ShutdownCause, SpeechId};

    fn settings() -> Settings {
        Settings {
            defaults: Arc::new(Options::default()),
            timing: Timing {
                playout_guard: Duration::from_secs(30),
                wind_up_grace: Duration::from_secs(10),
            },
            closed_retention: Duration::from_secs(60),
            idle_expiry: Duration::from_secs(600),
            max_sessions: 10,
        }
    }

    fn realtime_end_call(speech: &str) -> Event {
        Event::EndCall {
            speech: SpeechId::new(speech),
            options: None,
            capabilities: Capabilities {
                realtime: Some(true),
                auto_tool_reply: Some(true),
            },
        }
    }

    fn done(speech: &str) -> Event {
        Event::SpeechDone {
            speech: SpeechId::new(speech),
            interrupted: false,
            capabilities: Capabilities::default(),
            tool_output_given: None,
        }
    }

    fn close() -> Event {
        Event::SessionClose {
            reason: CloseReason::UserInitiated,
            error: None,
        }
    }

    /// Lets the timer task run what is due at the current (paused) time.
    async fn settle_timers() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reply_timeout_fires_at_its_deadline_and_wakes_watchers() {
        let registry = Registry::start(settings(), Clock::new(), TimerThread::Shared).unwrap();
        registry.apply("s", realtime_end_call("S")).unwrap();
        registry.apply("s", done("S")).unwrap();
        let poll = registry.poll_watch("s", 0, 10, false).unwrap();
        assert!(poll.directives.is_empty());
        let mut changed = poll.changed.unwrap();

        advance(Duration::from_millis(4999)).await;
        settle_timers().await;
        assert_eq!(registry.report("s").unwrap().state, State::AwaitingReply);

        advance(Duration::from_millis(1)).await;
        settle_timers().await;
        changed.changed().await.unwrap();
        let poll = registry.poll_watch("s", 0, 10, false).unwrap();
        assert_eq!(
            poll.directives[0].directive,
            Directive::ShutdownSession {
                cause: ShutdownCause::ReplyTimeout
            }
        );
        let report = registry.report("s").unwrap();
        assert_eq!(report.goodbye, Some(Duration::from_secs(5)));
    }

    /// After a large drop the timer task moves the pending entries into a fresh wheel: the
    /// sessions that were waiting keep their deadlines, and their keys keep working.
    #[tokio::test(start_paused = true)]
    async fn the_wheel_rebuilt_after_a_large_drop_keeps_every_pending_deadline() {
        let settings = Settings {
            max_sessions: 1000,
            ..settings()
        };
        let registry = Registry::start(settings, Clock::new(), TimerThread::Shared).unwrap();
        let active = || Event::SpeechCreated {
            speech: SpeechId::new("A"),
        };
        for i in 0..300 {
            registry.apply(&format!("gone-{i}"), close()).unwrap();
        }
        // Armed after the others, so their keys in the new wheel differ from the old ones.
        for keeper in ["keep-1", "keep-2"] {
            registry.apply(keeper, active()).unwrap();
        }
        settle_timers().await;
        // Past the retention and a housekeeping tick: 300 dropped, 2 left in a wheel with room
        // for 300, which is rebuilt.
        sleep(Duration::from_secs(62)).await;
        settle_timers().await;
        assert!(registry.report("gone-0").is_none());
        // An earlier deadline moves keep-1's entry, by the key it was given in the new wheel.
        registry.apply("keep-1", realtime_end_call("S")).unwrap();
        registry.apply("keep-1", done("S")).unwrap();
        sleep(Duration::from_secs(5)).await;
        settle_timers().await;
        let report = registry.report("keep-1").unwrap();
        assert_eq!(
            report.directives[0].directive,
            Directive::ShutdownSession {
                cause: ShutdownCause::ReplyTimeout
            }
        );
        // keep-2 expires idle at 600 s, then is dropped after its retention: both need its
        // entry to have been found by its key.
        sleep(Duration::from_secs(600 - 67)).await;
        settle_timers().await;
        assert_eq!(
            registry.report("keep-2").unwrap().outcome,
            Some(Outcome::Expired)
        );
        sleep(Duration::from_secs(60)).await;
        settle_timers().await;
        assert!(registry.report("keep-2").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_deadline_leaves_the_next_one_armed() {
        // The reply arrives (cancelling the reply deadline); the playout guard still fires.
        let registry = Registry::start(settings(), Clock::new(), TimerThread::Shared).unwrap();
        registry.apply("s", realtime_end_call("S")).unwrap();
        registry.apply("s", done("S")).unwrap();
        registry
            .apply(
                "s",
                Event::SpeechCreated {
                    speech: SpeechId::new("R"),
                },
            )
            .unwrap();
        sleep(Duration::from_secs(29)).await;
        settle_timers().await;
        assert_eq!(registry.report("s").unwrap().state, State::PlayingReply);
        sleep(Duration::from_secs(1)).await;
        settle_timers().await;
        let report = registry.report("s").unwrap();
        assert_eq!(
            report.directives[0].directive,
            Directive::ShutdownSession {
                cause: ShutdownCause::PlayoutGuard
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_expire_and_closed_ones_are_dropped_after_retention() {
        let registry = Registry::start(settings(), Clock::new(), TimerThread::Shared).unwrap();
        registry
            .apply(
                "idle",
                Event::SpeechCreated {
                    speech: SpeechId::new("A"),
                },
            )
            .unwrap();
        assert_eq!(registry.live_sessions(), 1);
        // Activity pushes the expiry back.
        sleep(Duration::from_secs(500)).await;
        registry.apply("idle", done("A")).unwrap();
        sleep(Duration::from_secs(500)).await;
        settle_timers().await;
        assert_eq!(registry.report("idle").unwrap().state, State::Active);

        sleep(Duration::from_secs(100)).await;
        settle_timers().await;
        let report = registry.report("idle").unwrap();
        assert_eq!(report.state, State::Closed);
        assert_eq!(report.outcome, Some(crate::domain::Outcome::Expired));
        assert_eq!(registry.live_sessions(), 0);

        sleep(Duration::from_secs(60)).await;
        settle_timers().await;
        assert!(registry.report("idle").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_session_is_dropped_after_an_earlier_stale_timer_fired() {
        // The usual call: the playout guard (30 s) is armed at EndCall; the session ends and
        // closes at once, so the guard comes due as a stale timer before the retention (60 s)
        // ends. The session must still be dropped when its retention ends.
        let registry = Registry::start(settings(), Clock::new(), TimerThread::Shared).unwrap();
        registry
            .apply(
                "s",
                Event::EndCall {
                    speech: SpeechId::new("S"),
                    options: None,
                    capabilities: Capabilities::default(),
                },
            )
            .unwrap();
        registry.apply("s", done("S")).unwrap();
        registry.apply("s", close()).unwrap();
        sleep(Duration::from_secs(31)).await;
        settle_timers().await;
        assert!(registry.report("s").is_some(), "kept during its retention");
        sleep(Duration::from_secs(30)).await;
        settle_timers().await;
        assert!(
            registry.report("s").is_none(),
            "dropped once its retention ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_closed_session_ends_its_watchers() {
        let registry = Registry::start(settings(), Clock::new(), TimerThread::Shared).unwrap();
        registry.apply("s", close()).unwrap();
        let poll = registry.poll_watch("s", 0, 10, false).unwrap();
        assert!(poll.finished);
        let mut changed = poll.changed.unwrap();
        sleep(Duration::from_secs(61)).await;
        settle_timers().await;
        assert!(changed.changed().await.is_err());
        let poll = registry.poll_watch("s", 0, 10, false).unwrap();
        assert!(poll.finished && poll.changed.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_counts_live_sessions_only() {
        let mut settings = settings();
        settings.max_sessions = 2;
        let registry = Registry::start(settings, Clock::new(), TimerThread::Shared).unwrap();
        registry.apply("a", done("x")).unwrap();
        registry.apply("b", done("x")).unwrap();
        assert_eq!(
            registry.apply("c", done("x")).unwrap_err(),
            RegistryError::TooManySessions { limit: 2 }
        );
        assert!(registry.report("c").is_none());
        registry.apply("a", close()).unwrap();
        registry.apply("c", done("x")).unwrap();
        assert_eq!(registry.live_sessions(), 2);
        // Events for existing sessions are never refused by the cap.
        registry.apply("b", close()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn watch_polls_are_batched() {
        let registry = Registry::start(settings(), Clock::new(), TimerThread::Shared).unwrap();
        registry.apply("s", realtime_end_call("S")).unwrap();
        registry.apply("s", done("S")).unwrap();
        sleep(Duration::from_secs(6)).await;
        settle_timers().await;
        registry.apply("s", close()).unwrap();
        let poll = registry.poll_watch("s", 0, 2, false).unwrap();
        assert_eq!(poll.directives.len(), 2);
        assert!(!poll.finished);
        let poll = registry.poll_watch("s", 2, 2, false).unwrap();
        assert_eq!(poll.directives.len(), 1);
        assert!(poll.finished);
    }
}

#[cfg(test)]
mod proptests {
    //! The registry under random events and time advances on tokio's paused clock: the timer
    //! wheel must deliver every deadline, so the same liveness bound as the pure machine holds.

    use proptest::prelude::*;
    use tokio::time::sleep;

    use super::*;
    use crate::domain::{Capabilities, CloseReason, Directive, SpeechId};

    const GUARD: Duration = Duration::from_millis(3000);
    const REPLY_TIMEOUT: Duration = Duration::from_millis(1000);

    #[derive(Clone, Debug)]
    enum Op {
        EndCall(u8, bool),
        Created(u8),
        Done(u8),
        Close,
        Sleep(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, any::<bool>()).prop_map(|(s, rt)| Op::EndCall(s, rt)),
            (0u8..3).prop_map(Op::Created),
            (0u8..3).prop_map(Op::Done),
            Just(Op::Close),
            (0u64..5000).prop_map(Op::Sleep),
        ]
    }

    fn event(op: &Op) -> Option<Event> {
        let speech = |s: &u8| SpeechId::new(&format!("S{s}"));
        Some(match op {
            Op::EndCall(s, realtime) => Event::EndCall {
                speech: speech(s),
                options: None,
                capabilities: Capabilities {
                    realtime: Some(*realtime),
                    auto_tool_reply: Some(true),
                },
            },
            Op::Created(s) => Event::SpeechCreated { speech: speech(s) },
            Op::Done(s) => Event::SpeechDone {
                speech: speech(s),
                interrupted: false,
                capabilities: Capabilities::default(),
                tool_output_given: None,
            },
            Op::Close => Event::SessionClose {
                reason: CloseReason::UserInitiated,
                error: None,
            },
            Op::Sleep(_) => return None,
        })
    }

    /// Short deadlines, and expiry and retention far beyond every run.
    fn property_settings() -> Settings {
        Settings {
            defaults: Arc::new(Options {
                reply_timeout: REPLY_TIMEOUT,
                ..Options::default()
            }),
            timing: Timing {
                playout_guard: GUARD,
                wind_up_grace: Duration::from_secs(10),
            },
            closed_retention: Duration::from_secs(3600),
            idle_expiry: Duration::from_secs(3600),
            max_sessions: 10,
        }
    }

    /// A directory for journals under test: in memory where there is one (fsync is then free,
    /// and what is under test is the format and the replay, not the disk).
    fn journal_dir() -> tempfile::TempDir {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            if let Ok(dir) = tempfile::tempdir_in(shm) {
                return dir;
            }
        }
        tempfile::tempdir().unwrap()
    }

    fn open_journal(dir: &std::path::Path) -> Opened {
        Opened::open(journal::JournalSettings {
            dir: dir.to_owned(),
            segment_bytes: 1 << 20,
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failed_journal_write_events_are_refused_not_lost() {
        let dir = journal_dir();
        let opened = Opened::open(journal::JournalSettings {
            dir: dir.path().to_owned(),
            segment_bytes: 4096,
        })
        .unwrap();
        let registry = Registry::start_durable(
            property_settings(),
            Clock::new(),
            TimerThread::Shared,
            opened,
        )
        .unwrap();
        // The next segment's name is taken: sealing the first one fails, as a full disk would.
        std::fs::create_dir(dir.path().join("00000000000000000002.journal")).unwrap();
        let mut acknowledged = 0;
        let refused = loop {
            let event = Event::SpeechCreated {
                speech: SpeechId::new(&format!("speech-{acknowledged}")),
            };
            match registry.apply("s", event) {
                Ok(applied) => match applied.durable.unwrap().await {
                    Ok(()) => acknowledged += 1,
                    // In flight when the write failed: never acknowledged.
                    Err(_) => continue,
                },
                Err(err) => break err,
            }
            assert!(acknowledged < 1000, "the segment never filled");
        };
        assert_eq!(refused, RegistryError::JournalFailed);
        assert!(registry.journal_failed().unwrap().is_cancelled());
        assert!(acknowledged > 10, "{acknowledged}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Replaying the journal rebuilds every session exactly as it was: same state,
        /// timeline, directives and sequence numbers, whatever the events and timer ticks were.
        #[test]
        fn replaying_the_journal_rebuilds_every_session_exactly(
            ops in proptest::collection::vec((0u8..3, op()), 1..30)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let dir = journal_dir();
            runtime.block_on(async {
                let settings = property_settings();
                let ids = ["a", "b", "c"];
                let registry = Registry::start_durable(
                    settings.clone(),
                    Clock::new(),
                    TimerThread::Shared,
                    open_journal(dir.path()),
                )
                .unwrap();
                for (session, op) in &ops {
                    match event(op) {
                        Some(event) => {
                            if let Ok(applied) = registry.apply(ids[usize::from(*session)], event) {
                                if let Some(durable) = applied.durable {
                                    durable.await.unwrap();
                                }
                            }
                        }
                        None => {
                            if let Op::Sleep(ms) = op {
                                sleep(Duration::from_millis(*ms)).await;
                            }
                        }
                    }
                }
                registry.sync_journal().unwrap().await.unwrap();
                let before: Vec<_> = ids.iter().map(|id| registry.report(id)).collect();
                drop(registry);

                let restored = Registry::start_durable(
                    settings,
                    Clock::new(),
                    TimerThread::Shared,
                    open_journal(dir.path()),
                )
                .unwrap();
                let after: Vec<_> = ids.iter().map(|id| restored.report(id)).collect();
                assert_eq!(after, before);
            });
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn every_end_call_ends_in_time_through_the_timer_wheel(ops in proptest::collection::vec(op(), 1..25)) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let settings = property_settings();
                let registry = Registry::start(settings, Clock::new(), TimerThread::Shared).unwrap();
                let mut first_end_call = None;
                let mut closed = false;
                for op in &ops {
                    match event(op) {
                        Some(event) => {
                            let is_end_call = matches!(op, Op::EndCall(..));
                            match registry.apply("p", event) {
                                Ok(_) => {
                                    if is_end_call {
                                        first_end_call.get_or_insert(registry.clock().now());
                                    }
                                    closed |= matches!(op, Op::Close);
                                }
                                Err(RegistryError::Rejected(Rejection::Closed)) => assert!(closed),
                                Err(other) => panic!("{other:?}"),
                            }
                        }
                        None => {
                            if let Op::Sleep(ms) = op {
                                sleep(Duration::from_millis(*ms)).await;
                            }
                        }
                    }
                }
                // Quiet long enough for every deadline; the paused clock jumps there at once.
                sleep(GUARD * 2 + REPLY_TIMEOUT + Duration::from_millis(10)).await;
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                let Some(report) = registry.report("p") else {
                    // Only sleeps: no session was ever created.
                    assert!(ops.iter().all(|op| matches!(op, Op::Sleep(_))));
                    return;
                };
                let seqs: Vec<u64> = report.directives.iter().map(|d| d.seq).collect();
                assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
                let shutdowns: Vec<_> = report
                    .directives
                    .iter()
                    .filter(|d| matches!(d.directive, Directive::ShutdownSession { .. }))
                    .collect();
                assert!(shutdowns.len() <= 1);
                if let Some(called) = first_end_call {
                    match shutdowns.first() {
                        Some(d) => {
                            // The wheel fires on millisecond ticks: allow one.
                            let bound = called + GUARD * 2 + REPLY_TIMEOUT + Duration::from_millis(1);
                            assert!(d.at <= bound, "shutdown at {:?} after bound {:?}", d.at, bound);
                        }
                        None => assert!(report.state == State::Closed, "end_call never ended: {report:?}"),
                    }
                } else {
                    assert!(report.directives.is_empty());
                }
            });
        }
    }
}
