//! What the benches add to `endcall_testkit`: the command-line flags that choose the server
//! under test (the release binary as a child process, its stderr discarded).

use std::{path::PathBuf, process::Stdio};

use endcall_testkit::process::{built_binary, Sidecar};

/// Which server binary the benches start, and with what extra flags.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ServerArgs {
    /// The server binary (default: $ENDCALL_SIDECAR_BIN, else the one cargo built).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Extra server flags, appended to every server the bench starts (e.g. "--log-level warn").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub(crate) server_flags: String,
}

impl ServerArgs {
    pub(crate) fn bin(&self) -> PathBuf {
        self.server_bin
            .clone()
            .or_else(|| std::env::var_os("ENDCALL_SIDECAR_BIN").map(PathBuf::from))
            .unwrap_or_else(built_binary)
    }

    /// Starts the server on `listen` with `flags` and the extra flags. Its log goes nowhere: a
    /// bench's server logs a report line per session, and a piped stderr nobody reads would
    /// fill up and stall it.
    pub(crate) fn start(&self, listen: &str, flags: &[&str]) -> Sidecar {
        Sidecar::spawn(
            &self.bin(),
            listen,
            flags,
            &self.server_flags,
            Stdio::null(),
        )
    }
}
