//! Bookkeeping after each step of a session: metrics, the end-of-call report, watch
//! wake-ups and the re-armed timer.

use super::*;

impl Registry {
    /// After a session changed: account for what it issued and a close, wake watchers,
    /// re-arm its timer. Returns the end-of-call report to log once the lock is released, if
    /// the session just ended and the report is logged at all.
    pub(super) fn settle(
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
            if self.hooks.wants_reports() {
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
}
