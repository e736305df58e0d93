//! `throughput`: N agents run whole sessions (OnUserSpeech, EndCall, OnSpeechDone,
//! OnSessionClose) as fast as they can, and health checks (the ceiling) for as long, taking
//! turns in slices on one server; the rates, their ratio and each side's CPU per RPC. The
//! `unix`, `quiet` and `durable` sections run it against other servers.

use std::time::Instant;

use endcall_testkit::process::Sidecar;

use crate::{
    load::{closed_loop, cpu_both, turns, turns_of, LoopResult, Work},
    results::{first_error, mib},
    Args, Report,
};

/// What one throughput section measured.
pub(crate) struct Throughput {
    pub(crate) lifecycle: LoopResult,
    pub(crate) health: LoopResult,
    /// When its warm-up began: the `echo` section times the run's timers from it.
    pub(crate) started: Instant,
}

/// Runs the section against `server`; `label` names its rows and checks.
pub(crate) async fn run(
    args: &Args,
    server: &Sidecar,
    label: &str,
    report: &mut Report,
) -> Throughput {
    let channels = server.channels(args.connections()).await;
    let started = Instant::now();
    // Warm-up: connections, buffers, allocator, both code paths.
    closed_loop(&channels, args.concurrency, args.warmup, Work::Lifecycle).await;
    closed_loop(&channels, args.concurrency, args.warmup, Work::Health).await;
    // CPU time of each side, per run: client and server share the cores, so the RPC rates
    // mix the two, and these tell which side a difference comes from.
    let cpu = || cpu_both(server);
    // Lifecycle and health take turns in slices (see `load::turns`), each kind going first in
    // every other pair: the ratio compares the two on the same machine.
    let (mut lifecycle, mut health) = (LoopResult::default(), LoopResult::default());
    // CPU seconds of (server, bench client) spent on each kind.
    let (mut lifecycle_cpu, mut health_cpu) = ((0.0, 0.0), (0.0, 0.0));
    for (work, slice) in turns(args.duration) {
        let before = cpu();
        let r = closed_loop(&channels, args.concurrency, slice, work).await;
        let after = cpu();
        let (total, spent) = match work {
            Work::Lifecycle | Work::UserSpeech => (&mut lifecycle, &mut lifecycle_cpu),
            Work::Health => (&mut health, &mut health_cpu),
        };
        total.merge(r);
        spent.0 += after.0 - before.0;
        spent.1 += after.1 - before.1;
    }
    let per_rpc = |seconds: f64, r: &LoopResult| seconds / r.rpcs.max(1) as f64 * 1e6;
    for (side, lifecycle_us, health_us) in [
        (
            "server",
            per_rpc(lifecycle_cpu.0, &lifecycle),
            per_rpc(health_cpu.0, &health),
        ),
        (
            "bench client",
            per_rpc(lifecycle_cpu.1, &lifecycle),
            per_rpc(health_cpu.1, &health),
        ),
    ] {
        report.row(
            label,
            &format!("{side} CPU per RPC: lifecycle / health"),
            format!(
                "{lifecycle_us:.1} / {health_us:.1} us ({:.2}x)",
                lifecycle_us / health_us.max(1e-9)
            ),
        );
    }
    report.row(
        label,
        "lifecycle sessions/s (UserSpeech+EndCall+Done+Close)",
        format!("{:.0}", lifecycle.session_rate()),
    );
    report.row(
        label,
        "lifecycle RPCs/s",
        format!("{:.0}", lifecycle.rpc_rate()),
    );
    report.row(
        label,
        "health Check RPCs/s (ceiling)",
        format!("{:.0}", health.rpc_rate()),
    );
    let ratio = lifecycle.rpc_rate() / health.rpc_rate();
    report.row(
        label,
        "ratio lifecycle RPC/s / health RPC/s",
        format!("{ratio:.3}"),
    );
    report.row(label, "server RSS after the runs", mib(server.rss()));
    for (name, r) in [("lifecycle", &lifecycle), ("health", &health)] {
        report.check(
            &format!("{label} {name}: every RPC succeeded"),
            r.errors == 0 && r.rpcs > 0,
            format!(
                "{} RPCs, {} errors{}",
                r.rpcs,
                r.errors,
                first_error(r.first_error.as_ref())
            ),
        );
    }
    // The target is for the in-memory sidecar as configured by default: with --state-dir an
    // fsync is on every reply, and `quiet` leaves out the end-of-call report lines.
    if label == "tcp" || label == "unix" {
        report.target(
            &format!("{label}: lifecycle RPC/s >= 0.9 x health RPC/s"),
            ratio >= 0.9,
            format!("ratio {ratio:.3}"),
        );
    }
    if label == "tcp" {
        user_speech_alone(args, server, &channels, report).await;
    }
    Throughput {
        lifecycle,
        health,
        started,
    }
}

/// `OnUserSpeech` alone against health, taking turns as the session mix and health do: each
/// agent reports its user's speech on a session of its own, over and over (a call sends this
/// event more than any other).
async fn user_speech_alone(
    args: &Args,
    server: &Sidecar,
    channels: &[tonic::transport::Channel],
    report: &mut Report,
) {
    let (mut speech, mut health) = (LoopResult::default(), LoopResult::default());
    let (mut speech_cpu, mut health_cpu) = (0.0, 0.0);
    for (work, slice) in turns_of(args.duration, Work::UserSpeech, Work::Health) {
        let before = cpu_both(server).0;
        let r = closed_loop(channels, args.concurrency, slice, work).await;
        let spent = cpu_both(server).0 - before;
        match work {
            Work::UserSpeech => {
                speech.merge(r);
                speech_cpu += spent;
            }
            _ => {
                health.merge(r);
                health_cpu += spent;
            }
        }
    }
    let per_rpc = |seconds: f64, r: &LoopResult| seconds / r.rpcs.max(1) as f64 * 1e6;
    report.row(
        "tcp",
        "server CPU per RPC: OnUserSpeech alone / health",
        format!(
            "{:.1} / {:.1} us",
            per_rpc(speech_cpu, &speech),
            per_rpc(health_cpu, &health)
        ),
    );
    let ratio = speech.rpc_rate() / health.rpc_rate();
    report.row(
        "tcp",
        "OnUserSpeech alone RPCs/s / health RPCs/s",
        format!(
            "{:.0} / {:.0} ({ratio:.3})",
            speech.rpc_rate(),
            health.rpc_rate()
        ),
    );
    report.check(
        "tcp OnUserSpeech alone: every RPC succeeded",
        speech.errors == 0 && speech.rpcs > 0 && health.errors == 0,
        format!(
            "{} RPCs, {} errors{}",
            speech.rpcs,
            speech.errors + health.errors,
            first_error(speech.first_error.as_ref())
        ),
    );
    report.target(
        "tcp: OnUserSpeech RPC/s >= 0.9 x health RPC/s",
        ratio >= 0.9,
        format!("ratio {ratio:.3}"),
    );
}
