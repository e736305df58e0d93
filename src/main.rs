//! Wires configuration, logging, the listener and the server together; nothing else.
#![forbid(unsafe_code)]

use std::{io::Write as _, process::ExitCode};

use clap::{CommandFactory as _, FromArgMatches as _};
use endcall_sidecar::{
    auth,
    config::{Cli, Command, Config},
    probe, runtime,
    server::{self, Listener},
    telemetry, tls,
};
use tracing::{error, info};

/// mimalloc rather than glibc's malloc: faster for a multithreaded server that allocates small
/// objects per request, and it returns freed memory to the system (nudged by the timer task
/// when idle, see `timers.rs`), so RSS comes back down after a burst of sessions is gone. Built
/// with `no_thp`: with transparent huge pages an idle sidecar's RSS was about 40 MiB, not 17.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match runtime::build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(err) => {
            eprintln!("error: cannot start the tokio runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
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
    // A bad token or certificate fails before the address is announced (serve reads them again).
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
    Ok(())
}
