//! End-of-call reports are formatted on a thread of their own, a batch at a time.
//!
//! Why: a report line is about 1.2 KB of JSON, and formatting it is the costliest thing the
//! sidecar does for a session: about 2.5 µs of CPU as text, 8 µs as JSON
//! (`cargo bench --bench report`). Done on the RPC that closed the session, it lengthened that
//! RPC by as much and interleaved the serialiser with the RPC path. The RPC now only queues the
//! report it built; this thread wakes at most once per `PACE`, formats what has gathered, and
//! hands the lines to the log writer.
//!
//! Nothing is dropped: the queue is bounded, and a full queue makes the closing RPC wait, as
//! a full log queue does. Without `init` (tests, benches of the registry alone), reports are
//! formatted where they are made.

use std::{sync::OnceLock, thread, time::Duration};

use crossbeam_channel::{bounded, Receiver, SendError, Sender};
use tracing::Span;

use super::paced::PACE;
use endcall_core::report::Report;

/// Reports waiting for the thread at most: about six batches at the highest session rate
/// measured (17,600 a second), and under a MiB of reports should the log stall. The queue's
/// ring is allocated whole at start (about 60 KB).
const QUEUE: usize = 1_024;

/// How long the flush at exit waits for the thread, should the log be stalled.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

enum Msg {
    /// With the span it was made in (the RPC's, when enabled), so the line still names it.
    Report(Box<Report>, Span),
    /// Answered once everything queued before it is logged.
    Flush(Sender<()>),
}

/// The way to the report thread.
struct Queue(Sender<Msg>);

impl Queue {
    fn start(log: impl Fn(&Report) + Send + 'static) -> std::io::Result<Self> {
        let (queue, queued) = bounded(QUEUE);
        thread::Builder::new()
            .name("endcall-reports".into())
            .spawn(move || run(&queued, log))?;
        Ok(Queue(queue))
    }

    /// Hands the report back if the thread is gone.
    fn submit(&self, report: Report) -> Result<(), Box<Report>> {
        match self.0.send(Msg::Report(Box::new(report), Span::current())) {
            Err(SendError(Msg::Report(report, _))) => Err(report),
            _ => Ok(()),
        }
    }

    /// Waits until everything submitted before is logged; false if that took too long.
    fn flush(&self, wait: Duration) -> bool {
        let (done, flushed) = bounded(1);
        self.0.send_timeout(Msg::Flush(done), wait).is_ok() && flushed.recv_timeout(wait).is_ok()
    }
}

fn run(queued: &Receiver<Msg>, log: impl Fn(&Report)) {
    while let Ok(first) = queued.recv() {
        // Let the batch gather: the reports that follow queue without waking this thread.
        if matches!(first, Msg::Report(..)) {
            thread::sleep(PACE);
        }
        for msg in std::iter::once(first).chain(queued.try_iter()) {
            match msg {
                Msg::Report(report, span) => span.in_scope(|| log(&report)),
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

static QUEUE_TO_THREAD: OnceLock<Queue> = OnceLock::new();

/// Queues the report for the report thread, or logs it here if there is none.
pub(super) fn submit(report: Report, log: fn(&Report)) {
    match QUEUE_TO_THREAD.get() {
        Some(queue) => {
            if let Err(report) = queue.submit(report) {
                log(&report);
            }
        }
        None => log(&report),
    }
}

/// Waits until the reports submitted so far are logged (at most `FLUSH_WAIT`).
pub(super) fn flush() {
    if let Some(queue) = QUEUE_TO_THREAD.get() {
        queue.flush(FLUSH_WAIT);
    }
}

/// Logs the queued reports when dropped: drop it before the log writer's guard.
pub(super) struct ReportsGuard(());

/// Starts the report thread; reports submitted from then on are logged there.
pub(super) fn start(log: fn(&Report)) -> Result<ReportsGuard, String> {
    let queue = Queue::start(log).map_err(|e| format!("cannot start the report thread: {e}"))?;
    QUEUE_TO_THREAD
        .set(queue)
        .map_err(|_| "the report thread was already started".to_owned())?;
    Ok(ReportsGuard(()))
}

impl Drop for ReportsGuard {
    fn drop(&mut self) {
        flush();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use endcall_core::{
        domain::{Options, SessionId, Time},
        machine::Session,
    };

    /// A just-opened session's report, named `call-{n}`.
    pub(in crate::telemetry) fn report(n: usize) -> Report {
        let session = Session::new(Arc::new(Options::default()), Time::from_micros(0));
        Report::of(&SessionId::new(&format!("call-{n}")), &session)
    }

    fn logged_to(into: &Arc<Mutex<Vec<String>>>) -> impl Fn(&Report) + Send + 'static {
        let into = Arc::clone(into);
        move |r: &Report| into.lock().unwrap().push(r.session_id.to_string())
    }

    /// More reports than the queue holds, so the submitter also waits on a full queue.
    #[test]
    fn every_report_is_logged_in_order_by_the_flush() {
        let logged = Arc::new(Mutex::new(Vec::new()));
        let queue = Queue::start(logged_to(&logged)).unwrap();
        let n = QUEUE * 2 + 10;
        for i in 0..n {
            queue.submit(report(i)).unwrap();
        }
        assert!(queue.flush(Duration::from_secs(60)));
        let expected: Vec<String> = (0..n).map(|i| format!("call-{i}")).collect();
        assert_eq!(*logged.lock().unwrap(), expected);
    }

    #[test]
    fn a_flush_with_nothing_queued_returns() {
        let queue = Queue::start(|_: &Report| {}).unwrap();
        assert!(queue.flush(Duration::from_secs(60)));
        assert!(queue.flush(Duration::from_secs(60)));
    }

    /// A thread that died (its log panicked) hands the report back, to be logged in place.
    #[test]
    fn a_report_comes_back_when_the_thread_is_gone() {
        let queue = Queue::start(|_: &Report| panic!("the log failed")).unwrap();
        queue.submit(report(1)).unwrap();
        // The panic leaves the flush queued behind it unanswered: the wait runs out.
        assert!(!queue.flush(Duration::from_millis(200)));
        // The queue refuses reports only once the thread has unwound and dropped its end,
        // after the panic hook has run: with RUST_BACKTRACE set, the hook resolves a backtrace,
        // 100 ms and more in a debug build, longer on a loaded machine. Until then a report is
        // still accepted (and goes with the thread), so wait for the hand-back rather than
        // assume it. At most 1,000 reports in the 10 s stay under `QUEUE`: no submit blocks.
        let patience = std::time::Instant::now() + Duration::from_secs(10);
        let back = loop {
            match queue.submit(report(2)) {
                Err(back) => break back,
                Ok(()) => {
                    assert!(
                        std::time::Instant::now() < patience,
                        "the thread never died"
                    );
                    thread::sleep(Duration::from_millis(10));
                }
            }
        };
        assert_eq!(back.session_id.to_string(), "call-2");
    }
}
