//! Bookkeeping after each step of a session: metrics, the end-of-call report, the teardown
//! order, watch wake-ups and the re-armed timer.

use endcall_core::domain::TeardownResult;
use tracing::warn;

use super::*;

/// What a session looked like before a step, for what the step changed.
#[derive(Clone, Copy)]
pub(super) struct Before {
    state: State,
    unattended: bool,
    torn_down: bool,
    teardown_pending: bool,
}

impl Before {
    pub(super) fn of(session: &Session) -> Self {
        Before {
            state: session.state(),
            unattended: unattended(session),
            torn_down: session.teardown().is_some(),
            teardown_pending: session.teardown_pending(),
        }
    }
}

/// An attended session whose worker holds no stream right now.
fn unattended(session: &Session) -> bool {
    session.attended() && session.streams() == 0 && !session.is_closed()
}

/// What a step hands to the layers around the registry, once the session is unlocked.
#[must_use]
#[derive(Default)]
pub(super) struct Aftermath {
    report: Option<Report>,
    order: Option<TeardownOrder>,
}

impl Aftermath {
    pub(super) fn deliver(self, hooks: &dyn Hooks) {
        if let Some(order) = self.order {
            hooks.teardown(order);
        }
        if let Some(report) = self.report {
            hooks.session_ended(report);
        }
    }
}

impl Registry {
    /// After a session changed: account for what it issued, a close and a teardown, wake
    /// watchers, re-arm its timer. Returns what to hand out once the lock is released: the
    /// end-of-call report if the session just ended (and reports are wanted), and the room
    /// to delete if the sidecar just tore the call down.
    pub(super) fn settle(
        &self,
        id: &SessionId,
        entry: &mut Entry,
        before: Before,
        issued: &[IssuedDirective],
    ) -> Aftermath {
        let session = &entry.session;
        let after = session.state();
        metrics::session_state(Some(before.state), Some(after));
        for directive in issued {
            metrics::directive(&directive.directive);
            if let Directive::ShutdownSession { .. } = directive.directive {
                if let Some(called) = session.end_call_at() {
                    metrics::end_call_to_shutdown(directive.at.since(called));
                }
            }
        }
        match (before.unattended, unattended(session)) {
            (false, true) => metrics::unattended(1.0),
            (true, false) => metrics::unattended(-1.0),
            _ => {}
        }
        let mut aftermath = Aftermath::default();
        let closed_now = before.state != State::Closed && after == State::Closed;
        if closed_now {
            self.live.fetch_sub(1, Ordering::Relaxed);
            if let Some(outcome) = session.outcome() {
                metrics::session_ended(outcome, session.close_reason(), session.ended_reason());
            }
        }
        if let (false, Some(teardown)) = (before.torn_down, session.teardown()) {
            // The worker is gone or stuck: the one case where the sidecar ends a call itself.
            warn!(
                session_id = %id,
                room = session.room().map_or("", |room| room.as_str()),
                cause = teardown.cause.as_str(),
                "the sidecar is ending the call itself: its worker did not"
            );
            aftermath.order = session.teardown_order(id);
        }
        if let (Some(teardown), false) = (session.teardown(), session.teardown_pending()) {
            if before.teardown_pending || !before.torn_down {
                let result = teardown
                    .finished
                    .as_ref()
                    .map_or(TeardownResult::Failed, |(done, _)| done.result);
                metrics::teardown(teardown.cause, result);
            }
        }
        // A session ends when it closed and, if the sidecar tore it down, the teardown has
        // its result: then its report is complete.
        let ended_now = (closed_now && !session.teardown_pending())
            || (before.teardown_pending && !session.teardown_pending());
        if ended_now && self.hooks.wants_reports() {
            aftermath.report = Some(Report::of(id, session));
        }
        // With a journal, watchers are woken once the journal has it on disk (`publish`).
        if (!issued.is_empty() || closed_now) && self.journal.is_none() {
            if let Some(notify) = &entry.notify {
                notify.send_replace(());
            }
        }
        self.arm(id, entry);
        aftermath
    }
}
