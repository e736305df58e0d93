//! Results: the table, the target verdicts and the functional checks, each printed as it is
//! recorded and all of them again, as markdown tables, at the end.

use std::time::Duration;

use crate::Args;

#[derive(Default)]
pub(crate) struct Report {
    rows: Vec<(String, String, String)>,
    targets: Vec<(String, bool, String)>,
    checks: Vec<(String, bool, String)>,
}

impl Report {
    pub(crate) fn row(&mut self, section: &str, metric: &str, value: impl Into<String>) {
        let value = value.into();
        println!("  {section:<12} {metric:<48} {value}");
        self.rows.push((section.into(), metric.into(), value));
    }

    pub(crate) fn target(&mut self, name: &str, met: bool, detail: String) {
        println!(
            "  target {name}: {} ({detail})",
            if met { "MET" } else { "MISSED" }
        );
        self.targets.push((name.into(), met, detail));
    }

    pub(crate) fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        if !ok {
            println!("  CHECK FAILED {name}: {detail}");
        }
        self.checks.push((name.into(), ok, detail));
    }

    /// Whether a check failed (a missed target is not a failure).
    pub(crate) fn failed(&self) -> bool {
        self.checks.iter().any(|c| !c.1)
    }

    pub(crate) fn print(&self, args: &Args) {
        println!();
        println!(
            "endcall-sidecar benchmark: loopback, release server as a child process; client and \
             server share this machine's {} CPU core(s)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "concurrency {} agents over {} HTTP/2 connection(s); throughput runs {}; latency runs {} \
             at {:.0}% of the health ceiling",
            args.concurrency,
            args.connections(),
            humantime::format_duration(args.duration),
            humantime::format_duration(args.latency_duration),
            args.latency_load * 100.0
        );
        println!();
        println!("| section | metric | value |");
        println!("| --- | --- | --- |");
        for (section, metric, value) in &self.rows {
            println!("| {section} | {metric} | {value} |");
        }
        if !self.targets.is_empty() {
            println!();
            println!("| target | verdict | measured |");
            println!("| --- | --- | --- |");
            for (name, met, detail) in &self.targets {
                println!(
                    "| {name} | {} | {detail} |",
                    if *met { "MET" } else { "MISSED" }
                );
            }
        }
        println!();
        for (name, ok, detail) in &self.checks {
            println!(
                "check {}: {name} ({detail})",
                if *ok { "ok" } else { "FAILED" }
            );
        }
        let passed = self.checks.iter().filter(|c| c.1).count();
        println!(
            "checks: {passed} passed, {} failed",
            self.checks.len() - passed
        );
    }
}

/// The `p`th percentile (0–100) of sorted samples, by the nearest-rank method.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn fmt_us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// The first error of a run, for a check's detail: ", first: ..." or nothing.
pub(crate) fn first_error(e: Option<&String>) -> String {
    e.map_or(String::new(), |e| format!(", first: {e}"))
}
