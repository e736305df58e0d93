//! The service in-process: no listener and no transport, its RPCs called as methods on the
//! current tokio runtime, whose clock (paused, in a harness) drives every timer. What the fuzz
//! target uses to reach the real service, call by call, from the registry to the status codes.

use std::{ffi::OsString, sync::Arc};

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

use crate::{
    app::config::{Cli, Config},
    app::housekeeping::ProcessHooks,
    grpc::service::EndCallApi,
    sessions::registry::{Registry, TimerThread},
};

/// The service and the registry behind it, configured by the binary's own flags.
pub struct InProcess {
    service: EndCallApi,
    registry: Arc<Registry>,
}

impl InProcess {
    /// Starts one, configured as `endcall-sidecar <args>` would be (environment variables
    /// included), with its timer task on the current runtime. Each ended session's report goes
    /// to the log, as in the server: formatted where it ends, since no report thread runs.
    /// Must be called inside a tokio runtime.
    pub fn start<I, T>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let program = std::iter::once(OsString::from("endcall-sidecar"));
        let cli = Cli::try_parse_from(program.chain(args.into_iter().map(Into::into)))
            .map_err(|err| err.to_string())?;
        let config = Config::from(&cli.serve);
        let (wiring, teardowns) = ProcessHooks::wiring(TimerThread::Shared, None);
        let registry = Registry::start(config.registry, wiring)
            .map_err(|err| format!("cannot start the timer task: {err}"))?;
        teardowns.start(Arc::downgrade(&registry), None);
        let service = EndCallApi::new(
            Arc::clone(&registry),
            config.wind_up,
            CancellationToken::new(),
        );
        Ok(Self { service, registry })
    }

    /// The gRPC service, to call its methods directly.
    pub fn service(&self) -> &EndCallApi {
        &self.service
    }

    /// Sessions not yet closed.
    pub fn live_sessions(&self) -> usize {
        self.registry.live_sessions()
    }
}
