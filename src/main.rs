//! The binary: its allocator and runtime; everything else is `app::run`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: faster for a multithreaded server that allocates small
/// objects per request, and it returns freed memory to the system (nudged once a second, see
/// `src/app/housekeeping.rs`), so RSS comes back down after a burst of sessions is gone. Built
/// with `no_thp`: with transparent huge pages an idle sidecar's RSS was about 40 MiB, not 17.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match endcall_sidecar::runtime() {
        Ok(runtime) => runtime.block_on(endcall_sidecar::run()),
        Err(err) => {
            eprintln!("error: cannot start the tokio runtime: {err}");
            ExitCode::FAILURE
        }
    }
}
