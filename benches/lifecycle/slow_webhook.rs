//! `slow-webhook`: the latency section against a server whose webhook receiver takes 30 s to
//! answer each request (`--webhook-timeout 60s`, so none times out during the run): every
//! delivery the run queues is pending or in flight while the RPCs are measured. Run with
//! `latency` (`--sections latency,slow-webhook`), the table shows the RPC latencies with and
//! without it, from one run.

use std::{sync::atomic::Ordering, time::Duration};

use crate::{
    latency,
    load::SESSION_SERVER_FLAGS,
    support::receiver::{secret_file, Behaviour, Receiver},
    Args, Report,
};

/// How long the receiver holds each request.
const SLOW: Duration = Duration::from_secs(30);

pub(crate) async fn run(args: &Args, ceiling: f64, report: &mut Report) {
    let receiver = Receiver::start(Behaviour {
        delay: SLOW,
        ..Behaviour::default()
    })
    .await;
    let secret = secret_file();
    let secret = secret.display().to_string();
    let server = args.server.start(
        "127.0.0.1:0",
        &[
            &SESSION_SERVER_FLAGS[..],
            &[
                "--webhook-url",
                &receiver.url,
                "--webhook-secret-file",
                &secret,
                "--webhook-timeout",
                "60s",
            ],
        ]
        .concat(),
    );
    println!(
        "slow-webhook: server pid {}, receiver {} answering after {}",
        server.pid(),
        receiver.url,
        humantime::format_duration(SLOW)
    );
    latency::measure(args, ceiling, &server, "slow-webhook", report).await;
    let arrived = receiver.seen.arrived.load(Ordering::Relaxed);
    let answered = receiver.seen.verified.load(Ordering::Relaxed);
    report.row(
        "slow-webhook",
        "requests at the receiver: arrived / answered",
        format!("{arrived} / {answered}"),
    );
    // The run is far shorter than one answer: every request that came in is still held.
    report.check(
        "slow-webhook: deliveries were in flight and none was answered",
        arrived > 0 && answered == 0,
        format!("{arrived} arrived, {answered} answered"),
    );
}
