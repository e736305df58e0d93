//! Logs and metrics: the subscriber set-up, the one structured line a session leaves when it
//! ends, and (in `metrics`) the Prometheus metrics.

pub mod metrics;

use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::{config::LogFormat, report::Report};

/// Installs the global subscriber, writing to stderr (stdout carries only the
/// `listening on` line). `RUST_LOG`, when set, wins over `level`.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG={spec:?}: {e}"))?
        }
        _ => EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// The end-of-call report, logged once when a session closes or expires: the same content
/// `GetSession` returns, minus the worker's error text.
pub fn session_ended(report: &Report) {
    let json = serde_json::to_string(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    info!(
        target: "endcall::report",
        session_id = %report.session_id,
        outcome = report.outcome.map(|o| o.as_str()),
        close_reason = report.close_reason.map(|r| r.as_str()),
        goodbye_ms = report.goodbye.map(|d| d.as_millis() as u64),
        report = %json,
        "session ended"
    );
}
