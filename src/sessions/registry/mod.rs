//! Live sessions: one state machine per session id, with ordering, timers, expiry and limits.
//!
//! Sessions live in a sharded map (dashmap); an event runs its machine under the shard's lock,
//! which is what orders one session's events without a task per session. The lock is a plain
//! synchronous one and is never held across an `.await` (clippy checks that, through the
//! guard types `clippy.toml` names): everything done under it is non-blocking (a machine step,
//! a channel send, a watch notification).
//!
//! Each session arms at most one timer at a time in the shared timer wheel (`wheel.rs`): the
//! earliest of its machine's deadline, its idle expiry, or (once closed) the end of its
//! retention. A timer that fires early or for a cancelled deadline is harmless: the machine is
//! asked what is due at `now` and the session re-arms.
//!
//! With a journal (`--state-dir`), every input a machine takes is queued to it under the same
//! lock, so each session's records keep its order; an event's reply waits for its record's
//! fsync, and a watcher sees a directive only once the record that issued it is on disk.
//!
//! Each session's machine also keeps its worker's lease: a watch stream opening or ending is
//! an input like an event (`stream_opened`, `stream_closed`), so that the machine decides when
//! a worker is lost and replay after a restart decides the same.
//!
//! The registry knows nothing of the layers around it: what leaves it (each ended session's
//! report, a room the sidecar must delete, a housekeeping tick) goes through the [`Hooks`] it
//! is given.
//!
//! This file holds the map and per-session ordering; `timers.rs` the timer glue, `wheel.rs`
//! the timer wheel, `durable.rs` the journal glue and recovery, `bookkeeping.rs` what follows
//! each step.

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

use endcall_core::{
    domain::{
        Directive, Event, IssuedDirective, Options, SessionId, State, TeardownDone, TeardownOrder,
        Time,
    },
    machine::{Rejection, Session, Step, Timing},
    report::Report,
};

pub(crate) use self::wheel::TimerThread;
use self::{bookkeeping::Before, wheel::TimerKey};
use crate::{
    sessions::{
        clock::Clock,
        journal::{self, record::load_options, Durable, Journal, MachineInput, Opened, Record},
    },
    telemetry::metrics,
};

/// What the registry hands to the layers around it without knowing them: each ended session's
/// report (the app logs it), each room the sidecar must delete because it tore a call down
/// (the app asks LiveKit), and a tick about once a second on the timer task (the app lets the
/// allocator give freed memory back).
pub trait Hooks: Send + Sync + 'static {
    /// Whether [`Hooks::session_ended`] wants reports, so nobody builds one for nothing.
    fn wants_reports(&self) -> bool;
    /// An ended session's report, once per session, with no session locked. A session the
    /// sidecar tore down ends once its teardown has a result, so the report holds it.
    fn session_ended(&self, report: Report);
    /// A room to delete, with no session locked. Whoever takes it must answer with
    /// [`Registry::finish_teardown`], whatever happens: until then the session is kept.
    fn teardown(&self, order: TeardownOrder);
    /// Whether [`Hooks::session_restored_ended`] wants reports.
    fn wants_restored_reports(&self) -> bool {
        false
    }
    /// At start with a journal: the report of a session the journal gave back already ended
    /// (whether its retention is still running or not). Its [`Hooks::session_ended`] may or
    /// may not have been acted on before the restart; for a consumer that must not miss an end
    /// and can tell what it already has (the webhook store). Called on the starting thread.
    fn session_restored_ended(&self, _report: Report) {}
    /// Called about once a second on the timer task, after the wheel's own housekeeping.
    fn housekeeping(&self);
}

/// Hooks that want nothing: for the registry's own tests.
#[cfg(test)]
pub(crate) struct NoHooks;

#[cfg(test)]
impl Hooks for NoHooks {
    fn wants_reports(&self) -> bool {
        false
    }
    fn session_ended(&self, _: Report) {}
    fn teardown(&self, _: TeardownOrder) {}
    fn housekeeping(&self) {}
}

/// What the registry is given from outside its layer.
#[derive(Clone)]
pub struct Wiring {
    pub clock: Clock,
    /// Where the timer task runs.
    pub timers: TimerThread,
    pub hooks: Arc<dyn Hooks>,
}

#[cfg(test)]
impl Wiring {
    /// tokio's clock, the timer task on the current runtime (so a paused clock drives it),
    /// and no hooks: what the registry's tests use.
    pub fn on_current_runtime() -> Self {
        Self {
            clock: Clock::new(),
            timers: TimerThread::Shared,
            hooks: Arc::new(NoHooks),
        }
    }
}

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
// for every session. Rare parts of a session go in its boxed `RareParts` instead.
const _: () = assert!(std::mem::size_of::<Entry>() <= 224);

/// Session ids come from the agents in the pod, not from strangers: a fast hasher is enough.
type Hasher = foldhash::fast::RandomState;

pub struct Registry {
    sessions: DashMap<SessionId, Box<Entry>, Hasher>,
    settings: Settings,
    clock: Clock,
    live: AtomicUsize,
    timers: Arc<wheel::Arms>,
    journal: Option<Journal>,
    hooks: Arc<dyn Hooks>,
}

impl Registry {
    /// Creates the registry and starts its timer task, which ends when the registry is dropped.
    pub fn start(settings: Settings, wiring: Wiring) -> std::io::Result<Arc<Self>> {
        Self::launch(settings, wiring, None)
    }

    /// Like [`Registry::start`], with every input journaled: first rebuilds the sessions the
    /// journal holds, re-arming their deadlines (any already past fire at once).
    pub fn start_durable(
        settings: Settings,
        wiring: Wiring,
        opened: Opened,
    ) -> std::io::Result<Arc<Self>> {
        Self::launch(settings, wiring, Some(opened))
    }

    fn launch(
        settings: Settings,
        wiring: Wiring,
        mut opened: Option<Opened>,
    ) -> std::io::Result<Arc<Self>> {
        let Wiring {
            clock,
            timers: placement,
            hooks,
        } = wiring;
        let recovered = opened
            .as_mut()
            .map(|opened| std::mem::take(&mut opened.recovered));
        let arms = wheel::Arms::new();
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
                hooks,
            }
        });
        started?;
        wheel::spawn(Arc::downgrade(&registry), clock, arms, placement)?;
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
            let before = Before::of(&entry.session);
            // Cheap (ids and texts are shared), and only when there is a journal to write.
            let input = self.journal.as_ref().map(|_| event.clone());
            let step = entry.session.handle(event, now, &self.settings.timing)?;
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
        ended.deliver(&*self.hooks);
        Ok(applied)
    }

    /// Directives after `after_seq`, at most `max`, and a receiver to wait for more.
    ///
    /// With `opening`, this is a new watch stream's first poll: a session that does not exist
    /// yet is created (a watcher may connect before the first event), and the stream takes the
    /// session's lease until [`Registry::stream_closed`]. Without it, a missing session ends
    /// the stream.
    pub fn poll_watch(
        &self,
        id: &str,
        after_seq: u64,
        max: usize,
        opening: bool,
    ) -> Result<WatchPoll, RegistryError> {
        let now = self.clock.now();
        let entry = if opening {
            Some(self.entry_or_create(id, now)?)
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
        if opening {
            let before = Before::of(&entry.session);
            entry.session.stream_opened(now);
            self.journal_input(key, entry, now, &MachineInput::StreamOpened, false);
            // Nothing ends when a stream opens; this re-arms the session's timer (a new
            // session needs its idle expiry, a lapsing lease no longer has a deadline).
            self.settle(key, entry, before, &[]).deliver(&*self.hooks);
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

    /// A watch stream that took the session's lease ended (the client went away, the session
    /// closed, or the server drains). With no stream left, the worker-lost window starts.
    pub fn stream_closed(&self, id: &str) {
        let now = self.clock.now();
        let ended = {
            let Some(mut entry) = self.sessions.get_mut(id) else {
                return;
            };
            let (key, entry) = entry.pair_mut();
            if entry.session.is_closed() {
                return;
            }
            let before = Before::of(&entry.session);
            entry.session.stream_closed(now);
            self.journal_input(key, entry, now, &MachineInput::StreamClosed, false);
            self.settle(key, entry, before, &[])
        };
        ended.deliver(&*self.hooks);
    }

    /// What came of a room deletion that [`Hooks::teardown`] was handed. The session's report
    /// goes out now, with the result in it.
    pub fn finish_teardown(&self, id: &SessionId, done: TeardownDone) {
        let now = self.clock.now();
        let ended = {
            let Some(mut entry) = self.sessions.get_mut(id.as_str()) else {
                return;
            };
            let (key, entry) = entry.pair_mut();
            let before = Before::of(&entry.session);
            let input = MachineInput::TeardownFinished(done.clone());
            if !entry.session.teardown_finished(done, now) {
                return;
            }
            self.journal_input(key, entry, now, &input, false);
            self.settle(key, entry, before, &[])
        };
        ended.deliver(&*self.hooks);
    }

    /// The session's report, if the session exists (live, or closed and still retained).
    pub fn report(&self, id: &str) -> Option<Report> {
        let entry = self.sessions.get(id)?;
        Some(Report::of(entry.key(), &entry.session))
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
}

mod bookkeeping;
mod durable;
mod timers;
mod wheel;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
