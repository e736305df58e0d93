//! `latency`: open-loop load at a fraction of the measured health ceiling; p50/p99/p999 of
//! each lifecycle RPC against health's, measured in alternating slices. `slow-webhook` runs
//! the same against a server whose webhook receiver takes 30 s per request.

use endcall_testkit::process::Sidecar;

use crate::{
    load::{interleaved, open_loop, Work, SESSION_RPCS, SESSION_SERVER_FLAGS},
    results::{first_error, fmt_us, percentile},
    Args, Report,
};

/// Runs the section at `args.latency_load` of `ceiling` (health RPC/s).
pub(crate) async fn run(args: &Args, ceiling: f64, report: &mut Report) {
    // A fresh server: no earlier run's sessions, and no earlier run's timers coming due.
    let server = args.server.start("127.0.0.1:0", &SESSION_SERVER_FLAGS);
    measure(args, ceiling, &server, "latency", report).await;
}

/// The section's measurement against `server`; `label` names its rows, checks and (unless
/// it is `latency`) its targets.
pub(crate) async fn measure(
    args: &Args,
    ceiling: f64,
    server: &Sidecar,
    label: &str,
    report: &mut Report,
) {
    let target_prefix = if label == "latency" {
        String::new()
    } else {
        format!("{label}: ")
    };
    let channels = server.channels(args.connections()).await;
    let rate = (ceiling * args.latency_load).max(1.0);
    report.row(
        label,
        "offered load (open loop)",
        format!("{rate:.0} RPC/s"),
    );
    // Warm-up at the same load.
    let warm = args.warmup.min(args.latency_duration);
    open_loop(&channels, rate, warm, Work::Health).await;
    open_loop(&channels, rate, warm, Work::Lifecycle).await;
    let (lifecycle, health) = interleaved(&channels, rate, args.latency_duration).await;
    for (name, r) in [("lifecycle", &lifecycle), ("health", &health)] {
        report.row(
            label,
            &format!("{name}: achieved RPC/s"),
            format!("{:.0}", r.achieved_rpc_rate()),
        );
        report.check(
            &format!("{label} {name}: every RPC succeeded"),
            r.errors == 0 && !r.latencies.is_empty(),
            format!("{} errors{}", r.errors, first_error(r.first_error.as_ref())),
        );
    }
    let empty = Vec::new();
    let h = health.latencies.get("health Check").unwrap_or(&empty);
    let hp = [50.0, 99.0, 99.9].map(|p| percentile(h, p));
    report.row(
        label,
        "health Check p50 / p99 / p999",
        format!("{} / {} / {}", fmt_us(hp[0]), fmt_us(hp[1]), fmt_us(hp[2])),
    );
    for rpc in SESSION_RPCS {
        let l = lifecycle.latencies.get(rpc).unwrap_or(&empty);
        let lp = [50.0, 99.0, 99.9].map(|p| percentile(l, p));
        let ratio = |i: usize| lp[i].as_secs_f64() / hp[i].as_secs_f64().max(1e-9);
        report.row(
            label,
            &format!("{rpc} p50 / p99 / p999"),
            format!("{} / {} / {}", fmt_us(lp[0]), fmt_us(lp[1]), fmt_us(lp[2])),
        );
        report.row(
            label,
            &format!("{rpc} / health ratio at p50 / p99 / p999"),
            format!("{:.2} / {:.2} / {:.2}", ratio(0), ratio(1), ratio(2)),
        );
        report.target(
            &format!("{target_prefix}{rpc} p99 <= 1.2 x health p99"),
            ratio(1) <= 1.2,
            format!("{} vs {} ({:.2}x)", fmt_us(lp[1]), fmt_us(hp[1]), ratio(1)),
        );
    }
}
