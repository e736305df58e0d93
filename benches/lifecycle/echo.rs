//! `echo` (after `throughput`): with no RPCs at all, the server's CPU while the throughput
//! run's 30 s playout-guard timers (armed by every EndCall, never cancelled) come due, against
//! an idle window just before.

use std::time::{Duration, Instant};

use endcall_testkit::process::Sidecar;

use crate::{load::cpu_seconds, throughput::Throughput, Args, Report};

pub(crate) async fn run(args: &Args, server: &Sidecar, t: &Throughput, report: &mut Report) {
    let guard = Duration::from_secs(30);
    let from = t.started + guard - Duration::from_secs(1);
    // Lifecycle sessions start throughout the run, in its slices of both kinds.
    let to = t.started + guard + 2 * args.warmup + 2 * args.duration + Duration::from_secs(2);
    let quiet = from
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(3));
    let q0 = cpu_seconds(server.pid());
    tokio::time::sleep(quiet).await;
    let quiet_cpu = cpu_seconds(server.pid()) - q0;
    tokio::time::sleep_until(from.into()).await;
    let c0 = cpu_seconds(server.pid());
    tokio::time::sleep_until(to.into()).await;
    let cpu = cpu_seconds(server.pid()) - c0;
    let window = to - from;
    let sessions = t.lifecycle.sessions.max(1) as f64;
    report.row(
        "tcp",
        "idle server CPU before the guard timers come due",
        format!(
            "{:.1}% of a core",
            quiet_cpu / quiet.as_secs_f64().max(1e-3) * 100.0
        ),
    );
    report.row(
        "tcp",
        "idle server CPU while the 30 s guard timers come due",
        format!(
            "{cpu:.2} s over {:.1} s ({:.0}% of a core), ~{:.1} us per earlier session",
            window.as_secs_f64(),
            cpu / window.as_secs_f64() * 100.0,
            cpu / sessions * 1e6
        ),
    );
}
