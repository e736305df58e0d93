//! `unix`: the throughput section over a Unix socket.

use crate::{load::SESSION_SERVER_FLAGS, throughput, Args, Report};

pub(crate) async fn run(args: &Args, report: &mut Report) {
    let path = std::env::temp_dir().join(format!("endcall-bench-{}.sock", std::process::id()));
    let server = args
        .server
        .start(&format!("unix:{}", path.display()), &SESSION_SERVER_FLAGS);
    throughput::run(args, &server, "unix", report).await;
}
