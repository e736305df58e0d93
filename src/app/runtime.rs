//! The tokio runtime the server runs on: tokio's multi-threaded runtime with its LIFO slot off.
//!
//! With the slot on, a task that wakes another has that task run next on the same worker. An
//! RPC's task that hands its response to HTTP/2 wakes the connection's task, which then runs
//! at once and writes that one response in a syscall of its own; a directive on a watch
//! stream likewise. With the slot off, the connection's task waits its turn behind the tasks
//! already ready, and by then the responses of several RPCs on that connection have gathered
//! and go out in one write. On loopback each write also costs the kernel's receive path, so
//! fewer writes cost the server less CPU per RPC (`docs/performance.md` has the measurement).
//!
//! `Builder::disable_lifo_slot` is tokio's unstable API, so the repository's
//! `.cargo/config.toml` builds with `--cfg tokio_unstable`. A build without that flag (a
//! RUSTFLAGS variable replaces the config's list, as coverage tools do) still works and passes
//! the tests, with the slot on; the server then says so in a warning at start-up.

use tokio::runtime::{Builder, Runtime};

/// Whether this build turns the LIFO slot off (it was built with `--cfg tokio_unstable`).
pub(crate) const LIFO_SLOT_OFF: bool = cfg!(tokio_unstable);

/// The runtime for `main`: what `#[tokio::main]` builds, with the LIFO slot off.
pub fn build() -> std::io::Result<Runtime> {
    let mut builder = Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

#[cfg(test)]
mod tests {
    /// As `#[tokio::main]` did: the server needs the I/O and timer drivers, and spawns tasks.
    #[test]
    fn the_runtime_has_its_io_and_timer_drivers() {
        let runtime = super::build().unwrap();
        let port = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            tokio::spawn(async move { listener.local_addr().unwrap().port() })
                .await
                .unwrap()
        });
        assert_ne!(port, 0);
    }
}
