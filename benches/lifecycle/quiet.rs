//! `quiet`: the throughput section against a server whose end-of-call report lines are off
//! (`--log-level info,endcall::report=off`): what is left of the gap without them.
//! Not with `--server-flags` that set `--log-level`.

use crate::{load::SESSION_SERVER_FLAGS, throughput, Args, Report};

pub(crate) async fn run(args: &Args, report: &mut Report) {
    let server = args.server.start(
        "127.0.0.1:0",
        &[
            &SESSION_SERVER_FLAGS[..],
            &["--log-level", "info,endcall::report=off"],
        ]
        .concat(),
    );
    throughput::run(args, &server, "quiet", report).await;
}
