//! Timer glue: how sessions arm the wheel, and what a fired timer does to its session.

use super::{
    bookkeeping::{Aftermath, Before},
    *,
};

impl Registry {
    /// `id`'s wheel key, or `None` if the session is gone. Only the timer task reads or
    /// writes keys, so it may work on the wheel between reading a key and storing a new one
    /// without holding the session's lock: the wheel may grow (copying all its entries), and
    /// no RPC should wait for that.
    pub(super) fn timer_key(&self, id: &SessionId) -> Option<Option<TimerKey>> {
        self.sessions.get(id.as_str()).map(|entry| entry.timer)
    }

    /// Stores `id`'s new wheel key (see [`Registry::timer_key`]).
    pub(super) fn set_timer_key(&self, id: &SessionId, key: TimerKey) {
        if let Some(mut entry) = self.sessions.get_mut(id.as_str()) {
            entry.timer = Some(key);
        }
    }

    /// Gives every session holding a wheel key a new one (`rekey` maps old to new): the timer
    /// task moves its entries into a fresh wheel after a large drop.
    pub(super) fn rekey_timers(&self, mut rekey: impl FnMut(&SessionId, TimerKey) -> TimerKey) {
        for mut entry in self.sessions.iter_mut() {
            let (id, entry) = entry.pair_mut();
            if let Some(key) = entry.timer {
                entry.timer = Some(rekey(id, key));
            }
        }
    }

    /// Gives back the map's memory once it holds far fewer sessions than it has room for.
    pub(super) fn shrink_if_sparse(&self) {
        if self.sessions.len() < self.sessions.capacity() / 4 {
            self.sessions.shrink_to_fit();
        }
    }

    /// Called by the timer task when a session's entry `key` in the wheel comes due.
    pub(super) fn on_timer(&self, id: &SessionId, wheel_key: TimerKey) {
        let now = self.clock.now();
        let mut ended = Aftermath::default();
        let remove = {
            let Some(mut entry) = self.sessions.get_mut(id.as_str()) else {
                return;
            };
            let (key, entry) = entry.pair_mut();
            if entry.timer == Some(wheel_key) {
                entry.timer = None;
                entry.armed = Time::NEVER;
            }
            let before = Before::of(&entry.session);
            let timing = &self.settings.timing;
            if let Some(closed_at) = entry.session.closed_at() {
                let retention_over = closed_at + self.settings.closed_retention <= now
                    && !entry.session.teardown_pending();
                if !retention_over {
                    // An earlier, stale timer (a deadline the close cancelled): wait for the
                    // retention's end instead, or the session would never be dropped.
                    self.arm(key, entry);
                }
                retention_over
            } else {
                let issued = if self.idle_expiry(&entry.session) <= now {
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
        ended.deliver(&*self.hooks);
        if remove {
            // Dropping the entry drops its notifier, which ends any watch stream still open.
            let retention = self.settings.closed_retention;
            let removed = self.sessions.remove_if(id.as_str(), |_, entry| {
                let session = &entry.session;
                !session.teardown_pending()
                    && session
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

    /// When a live session expires idle: only one that was never attended. An attended one
    /// keeps its worker's lease instead, and ends by the worker-lost window if it lapses.
    pub(super) fn idle_expiry(&self, session: &Session) -> Time {
        if session.attended() {
            Time::NEVER
        } else {
            session.last_activity() + self.settings.idle_expiry
        }
    }

    pub(super) fn arm(&self, id: &SessionId, entry: &mut Entry) {
        let wake = match entry.session.closed_at() {
            // Kept until LiveKit has answered: `finish_teardown` re-arms it.
            Some(_) if entry.session.teardown_pending() => Time::NEVER,
            Some(closed_at) => closed_at + self.settings.closed_retention,
            None => {
                let idle = self.idle_expiry(&entry.session);
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
