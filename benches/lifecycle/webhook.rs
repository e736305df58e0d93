//! `webhook`: calls ending as fast as the agents go (the throughput section's closed loop) on
//! a server that delivers every ended session's report to a local receiver, which verifies
//! each signature (`support::receiver`). The same load on a server without webhooks takes
//! turns with it in one-second slices (the throughput section's `turns`, the second server in
//! health's place), so the two rates meet the same machine. Reports the deliveries per second
//! while the calls end, close-to-delivery p50/p99, and the lifecycle RPC/s of both servers:
//! the target is webhooks >= 0.9 x without.
//!
//! The receiver runs in this process: its CPU (HTTP and an HMAC per delivery) comes out of
//! the same two cores the bench client and the server share, which a real receiver's would
//! not.

use std::time::{Duration, Instant};

use crate::{
    load::{closed_loop, cpu_seconds, turns, LoopResult, Work, SESSION_SERVER_FLAGS},
    results::{first_error, fmt_us, percentile},
    support::receiver::{secret_file, Behaviour, Receiver},
    Args, Report,
};

/// How long the deliveries get to catch up after the load.
const CATCH_UP: Duration = Duration::from_secs(30);

pub(crate) async fn run(args: &Args, report: &mut Report) {
    let receiver = Receiver::start(Behaviour::default()).await;
    let secret = secret_file();
    let secret = secret.display().to_string();
    let plain = args.server.start("127.0.0.1:0", &SESSION_SERVER_FLAGS);
    let hooked = args.server.start(
        "127.0.0.1:0",
        &[
            &SESSION_SERVER_FLAGS[..],
            &[
                "--webhook-url",
                &receiver.url,
                "--webhook-secret-file",
                &secret,
            ],
        ]
        .concat(),
    );
    println!(
        "webhook: server pid {} delivering to {}, server pid {} without webhooks",
        hooked.pid(),
        receiver.url,
        plain.pid()
    );
    let plain_channels = plain.channels(args.connections()).await;
    let hooked_channels = hooked.channels(args.connections()).await;
    closed_loop(
        &plain_channels,
        args.concurrency,
        args.warmup,
        Work::Lifecycle,
    )
    .await;
    // Its sessions are delivered too: counted, so that every ended session can be awaited.
    let warm = closed_loop(
        &hooked_channels,
        args.concurrency,
        args.warmup,
        Work::Lifecycle,
    )
    .await;

    let (mut without, mut with) = (LoopResult::default(), LoopResult::default());
    // CPU seconds of (server, this process: the bench client and the receiver) per kind.
    let (mut cpu_without, mut cpu_with) = ((0.0, 0.0), (0.0, 0.0));
    let bench = std::process::id();
    let (mut hooked_time, mut delivered_meanwhile) = (Duration::ZERO, 0usize);
    // `turns` alternates two kinds of slice: here, the server without webhooks and the one with.
    for (turn, slice) in turns(args.duration) {
        let (server, channels) = match turn {
            Work::Lifecycle | Work::UserSpeech => (&plain, &plain_channels),
            Work::Health => (&hooked, &hooked_channels),
        };
        let cpu = (cpu_seconds(server.pid()), cpu_seconds(bench));
        let started = Instant::now();
        let r = closed_loop(channels, args.concurrency, slice, Work::Lifecycle).await;
        let ended = Instant::now();
        let spent = (
            cpu_seconds(server.pid()) - cpu.0,
            cpu_seconds(bench) - cpu.1,
        );
        match turn {
            Work::Lifecycle | Work::UserSpeech => {
                without.merge(r);
                cpu_without.0 += spent.0;
                cpu_without.1 += spent.1;
            }
            Work::Health => {
                with.merge(r);
                cpu_with.0 += spent.0;
                cpu_with.1 += spent.1;
                hooked_time += ended - started;
                delivered_meanwhile += receiver.seen.arrived_between(started, ended);
            }
        }
    }

    // Every session the server ended (warm-up included) must arrive, verified. (The server
    // has no --metrics-listen to ask: the one without webhooks has none either.)
    let ended = usize::try_from(warm.sessions + with.sessions).unwrap_or(usize::MAX);
    let caught_up = Instant::now();
    let delivered = loop {
        let delivered = receiver.seen.events();
        if delivered >= ended || caught_up.elapsed() > CATCH_UP {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let rate = |sessions: usize, time: Duration| sessions as f64 / time.as_secs_f64().max(1e-9);
    report.row(
        "webhook",
        "sessions ended/s (EndCall+Done+Close), with webhooks",
        format!("{:.0}", with.session_rate()),
    );
    report.row(
        "webhook",
        "deliveries/s while they ended (verified, 2xx)",
        format!("{:.0}", rate(delivered_meanwhile, hooked_time)),
    );
    let latencies = receiver.seen.close_to_delivery();
    report.row(
        "webhook",
        "close to delivery p50 / p99 / max",
        format!(
            "{} / {} / {}",
            fmt_us(percentile(&latencies, 50.0)),
            fmt_us(percentile(&latencies, 99.0)),
            fmt_us(latencies.last().copied().unwrap_or_default())
        ),
    );
    report.row(
        "webhook",
        "lifecycle RPCs/s: with / without webhooks",
        format!("{:.0} / {:.0}", with.rpc_rate(), without.rpc_rate()),
    );
    let per_rpc = |seconds: f64, r: &LoopResult| seconds / r.rpcs.max(1) as f64 * 1e6;
    report.row(
        "webhook",
        "server CPU per lifecycle RPC: with / without",
        format!(
            "{:.1} / {:.1} us",
            per_rpc(cpu_with.0, &with),
            per_rpc(cpu_without.0, &without)
        ),
    );
    report.row(
        "webhook",
        "bench process CPU per lifecycle RPC (client + receiver): with / without",
        format!(
            "{:.1} / {:.1} us",
            per_rpc(cpu_with.1, &with),
            per_rpc(cpu_without.1, &without)
        ),
    );
    let ratio = with.rpc_rate() / without.rpc_rate().max(1e-9);
    report.row(
        "webhook",
        "ratio lifecycle RPC/s with / without webhooks",
        format!("{ratio:.3}"),
    );
    report.target(
        "webhook: lifecycle RPC/s >= 0.9 x without webhooks",
        ratio >= 0.9,
        format!("ratio {ratio:.3}"),
    );
    for (name, r) in [("with webhooks", &with), ("without webhooks", &without)] {
        report.check(
            &format!("webhook {name}: every RPC succeeded"),
            r.errors == 0 && r.rpcs > 0,
            format!(
                "{} RPCs, {} errors{}",
                r.rpcs,
                r.errors,
                first_error(r.first_error.as_ref())
            ),
        );
    }
    let refused = receiver
        .seen
        .refused
        .load(std::sync::atomic::Ordering::Relaxed);
    report.check(
        "webhook: every delivery's signature verified",
        refused == 0 && delivered > 0,
        format!("{delivered} verified, {refused} refused"),
    );
    report.check(
        "webhook: every ended session delivered",
        delivered == ended,
        format!("{delivered} delivered of {ended} sessions ended"),
    );
}
