//! The process: configuration, the server and its drain, the runtime, the probe subcommand,
//! and what the binary does from its command line to its exit code.

pub(crate) mod config;
pub(crate) mod housekeeping;
pub(crate) mod outbound;
pub(crate) mod probe;
pub(crate) mod runtime;
pub(crate) mod server;
pub(crate) mod teardown;

use std::{io::Write as _, process::ExitCode};

use clap::{CommandFactory as _, FromArgMatches as _};
use tracing::{error, info, warn};

use self::{
    config::{Cli, Command, Config},
    server::Listener,
};
use crate::{
    grpc::{auth, tls},
    livekit, telemetry,
    webhooks::{self, WebhookConfigError},
};

/// The binary, from its command line to its exit code: serves, or runs the probe.
pub async fn run() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    if auth::token_on_command_line(&matches) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                auth::AuthError::OnCommandLine,
            )
            .exit();
    }
    if livekit::config::secret_on_command_line(&matches) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                livekit::LiveKitConfigError::SecretOnCommandLine,
            )
            .exit();
    }
    if webhooks::config::secret_on_command_line(&matches) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                WebhookConfigError::OnCommandLine,
            )
            .exit();
    }
    match cli.command {
        Some(Command::Probe(args)) => probe::run(&args, &cli.serve.listen).await,
        None => serve(Config::from(&cli.serve), &cli).await,
    }
}

async fn serve(config: Config, cli: &Cli) -> ExitCode {
    // Held to the end: dropping it flushes the last log lines.
    let _log_guard = match telemetry::init(cli.serve.log_format, &cli.serve.log_level) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    // A bad token, certificate, LiveKit setting or webhook secret fails before the address is
    // announced (serve reads them again).
    if let Err(err) = check_security(&config) {
        error!("{err}");
        return ExitCode::from(2);
    }
    if let Some(addr) = config.metrics_listen {
        if let Err(err) = telemetry::metrics::install(addr) {
            error!("--metrics-listen {addr}: {err}");
            return ExitCode::FAILURE;
        }
        info!(%addr, "serving metrics at /metrics");
    }
    // Before the address is announced: from then on, a signal must drain, not kill.
    let termination = server::termination();
    let listener = match Listener::bind(&config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    // The one line on stdout: tests and scripts read the bound address (port 0) from it.
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    info!(%addr, version = env!("CARGO_PKG_VERSION"), "serving");
    if !runtime::LIFO_SLOT_OFF {
        warn!(
            "built without --cfg tokio_unstable (RUSTFLAGS replaces .cargo/config.toml's flags): \
             the runtime's LIFO slot is on, which costs CPU per RPC (docs/performance.md)"
        );
    }
    match server::serve(config, listener, termination).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn check_security(config: &Config) -> Result<(), String> {
    auth::Policy::load(&config.auth).map_err(|e| e.to_string())?;
    tls::configure(tonic::transport::Server::builder(), &config.tls).map_err(|e| e.to_string())?;
    livekit::Settings::load(&config.livekit).map_err(|e| e.to_string())?;
    webhooks::Settings::load(&config.webhooks).map_err(|e| e.to_string())?;
    Ok(())
}
