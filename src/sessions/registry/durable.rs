//! Journal glue and recovery: each machine input queued to the journal under the session's
//! lock, watchers woken once it is on disk, and sessions rebuilt from the journal on start.

use super::*;

impl Registry {
    /// Queues one machine input to the journal, if there is one. Called under the session's
    /// lock, right after the machine took the input, so the journal keeps the session's order.
    pub(super) fn journal_input(
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
    pub(super) fn publish(&self, published: &[(SessionId, u64)]) {
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
    ///
    /// No watch stream survives a restart, and the sidecar's own downtime must not count
    /// against a worker: each attended session restarts its worker-lost window now. A
    /// teardown that was waiting for LiveKit is handed out again.
    pub(super) fn restore(&self, sessions: Vec<(SessionId, Vec<Record>)>) {
        let now = self.clock.now();
        let timing = &self.settings.timing;
        let mut orders = Vec::new();
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
            for record in &records {
                let at = record.at();
                match record.input() {
                    Ok(MachineInput::Event(event)) => {
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
                    Ok(MachineInput::StreamOpened) => session.stream_opened(at),
                    Ok(MachineInput::StreamClosed) => session.stream_closed(at),
                    Ok(MachineInput::Restarted) => session.restarted(at),
                    Ok(MachineInput::TeardownFinished(done)) => {
                        session.teardown_finished(done, at);
                    }
                    Err(err) => warn!(%err, "journal record skipped"),
                }
            }
            let mut entry = Box::new(Entry {
                armed: Time::NEVER,
                timer: None,
                notify: None,
                journal_index: u32::try_from(records.len()).unwrap_or(u32::MAX),
                published: u32::try_from(session.last_seq()).unwrap_or(u32::MAX),
                session,
            });
            // A session whose teardown still waits for LiveKit has not ended yet: its report
            // goes out through `session_ended` once the teardown has its result.
            if entry.session.is_closed()
                && !entry.session.teardown_pending()
                && self.hooks.wants_restored_reports()
            {
                self.hooks
                    .session_restored_ended(Report::of(&id, &entry.session));
            }
            let retention_over = !entry.session.teardown_pending()
                && entry
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
                if entry.session.attended() {
                    entry.session.restarted(now);
                    self.journal_input(&id, &mut entry, now, &MachineInput::Restarted, false);
                    metrics::unattended(1.0);
                }
            }
            metrics::session_state(None, Some(state));
            orders.extend(entry.session.teardown_order(&id));
            // Armed once in the map: a deadline already past fires at once, and must find it.
            let mut held = self.sessions.entry(id).insert(entry);
            let (id, entry) = held.pair_mut();
            self.arm(id, entry);
        }
        for order in orders {
            self.hooks.teardown(order);
        }
    }
}
