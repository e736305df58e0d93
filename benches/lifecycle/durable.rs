//! `durable`: the throughput section with every event journaled and fsynced before its reply
//! (`--state-dir`), on the build directory's disk (not a tmpfs, which would make fsync free),
//! and its cost against the in-memory `throughput` section of the same run.

use std::path::PathBuf;

use crate::{load::SESSION_SERVER_FLAGS, results::mib, throughput, Args, Report};

/// Runs the section; `in_memory` is the throughput section's lifecycle RPC/s, if it ran.
pub(crate) async fn run(args: &Args, in_memory: Option<f64>, report: &mut Report) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("endcall-bench-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state_dir = dir.display().to_string();
    let server = args.server.start(
        "127.0.0.1:0",
        &[&SESSION_SERVER_FLAGS[..], &["--state-dir", &state_dir]].concat(),
    );
    println!(
        "durable server pid {} with --state-dir {state_dir}",
        server.pid()
    );
    let t = throughput::run(args, &server, "durable", report).await;
    if let Some(in_memory) = in_memory {
        report.row(
            "durable",
            "durable / in-memory lifecycle RPC/s (this run)",
            format!("{:.3}", t.lifecycle.rpc_rate() / in_memory),
        );
    }
    let on_disk: u64 = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    report.row("durable", "journal on disk after the runs", mib(on_disk));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
