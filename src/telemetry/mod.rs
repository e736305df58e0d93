//! Logs and metrics: the subscriber set-up, the one structured line a session leaves when it
//! ends, and (in `metrics`) the Prometheus metrics.

pub mod metrics;
mod paced;
mod reports;

use std::cell::RefCell;

use tracing::{info, Level};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use endcall_core::{domain::millis, report::Report};

use self::paced::Paced;

/// Log lines queued for the writer thread at most. The queue is a ring that is allocated and
/// written whole when the logger starts: at tracing-appender's default (128,000 lines, 32
/// bytes a slot) it was 4 MiB of an idle sidecar's 17 MiB of RSS. 32,768 lines still hold
/// about two seconds of end-of-call reports at the highest session rate measured (17,600 a
/// second, over a Unix socket), should stderr stall.
const LOG_QUEUE_LINES: usize = 32_768;

/// How log lines are written: `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The target of the end-of-call report lines.
const REPORT_TARGET: &str = "endcall::report";

/// Installs the global subscriber, writing to stderr (stdout carries only the
/// `listening on` line). `RUST_LOG`, when set, wins over `level`.
///
/// Lines are written by a background thread, so an RPC never waits on a slow stderr; none is
/// dropped (the buffer applies back-pressure instead). Keep the guard until exit: dropping it
/// flushes.
pub fn init(format: LogFormat, level: &str) -> Result<LogGuard, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG={spec:?}: {e}"))?
        }
        _ => EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?,
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(Paced::new(std::io::stderr(), paced::PACE));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(LogGuard {
        _reports: reports::start(log_report)?,
        _writer: guard,
    })
}

/// Keep it until exit: dropping it writes out the reports and lines still queued.
pub struct LogGuard {
    // Fields drop in order: the queued reports become lines before the writer stops.
    _reports: reports::ReportsGuard,
    _writer: WorkerGuard,
}

/// Whether end-of-call reports are logged, so nobody builds one for nothing.
pub fn reports_enabled() -> bool {
    tracing::enabled!(target: REPORT_TARGET, Level::INFO)
}

/// The end-of-call report, logged once when a session closes or expires: the same content
/// `GetSession` returns, minus the worker's error text. Formatted on the report thread.
pub fn session_ended(report: Report) {
    reports::submit(report, log_report);
}

/// Waits until the reports of the sessions that have ended are in the log (a second at most,
/// should the log be stalled): the server calls it before its last line. It blocks the thread.
pub fn flush_reports() {
    reports::flush();
}

thread_local! {
    /// The report thread's JSON buffer, kept between reports: a report is about 1.1 KB, and a
    /// new string grows to that size through several reallocations, each copying the last.
    static REPORT_JSON: RefCell<String> = RefCell::new(String::with_capacity(4096));
}

fn log_report(report: &Report) {
    REPORT_JSON.with_borrow_mut(|json| {
        json.clear();
        report.write_json(json);
        info!(
            target: REPORT_TARGET,
            session_id = %report.session_id,
            outcome = report.outcome.map(|o| o.as_str()),
            ended_reason = report.ended_reason.map(|r| r.as_str()),
            close_reason = report.close_reason.map(|r| r.as_str()),
            goodbye_ms = report.goodbye.map(millis),
            report = %json.as_str(),
            "session ended"
        );
    });
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Keeps what the subscriber writes.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Written {
        type Writer = Written;
        fn make_writer(&self) -> Written {
            self.clone()
        }
    }

    /// The report thread writes each report's JSON into a buffer it keeps: every line must
    /// carry its own report, whole, and nothing of the one before. Text lines are plain,
    /// whatever the subscriber's default (tracing-subscriber's colours need its `ansi` feature).
    #[test]
    fn each_text_line_carries_its_own_report_and_no_colour() {
        let written = Written::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(written.clone())
            .finish();
        let ended: Vec<Report> = (0..3).map(reports::tests::report).collect();
        tracing::subscriber::with_default(subscriber, || ended.iter().for_each(log_report));
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), ended.len(), "{text}");
        for (line, report) in lines.iter().zip(&ended) {
            assert!(!line.contains('\x1b'), "a colour code: {line:?}");
            let (_, json) = line.split_once(" report=").expect("a report field");
            let logged: serde_json::Value = serde_json::from_str(json).expect("the report's JSON");
            assert_eq!(logged, serde_json::to_value(report).unwrap());
        }
    }
}
