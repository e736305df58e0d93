//! Command line and environment: every flag has an `ENDCALL_*` variable, and every default is
//! embedded, so the binary runs with no configuration at all.

use std::{
    fmt, net::SocketAddr, num::NonZeroU32, path::PathBuf, str::FromStr, sync::Arc, time::Duration,
};

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

use crate::{
    grpc::auth::{AuthArgs, TokenArgs},
    grpc::convert::WindUpTexts,
    grpc::limits::RequestLimits,
    grpc::tls::{ClientTlsArgs, TlsArgs},
    livekit::LiveKitArgs,
    sessions::journal::JournalSettings,
    sessions::registry::Settings,
    webhooks::WebhookArgs,
};
use endcall_core::{
    domain::{
        Options, MAX_INSTRUCTIONS_BYTES, MAX_REPLY_TIMEOUT, MAX_SILENCE, MAX_SILENCE_REMINDERS,
        SILENCE_REMINDER_INSTRUCTIONS,
    },
    machine::Timing,
};

#[derive(Debug, Parser)]
#[command(
    name = "endcall-sidecar",
    version,
    about = "Decides when a voice-AI agent's call is over: end-call state machines behind gRPC.",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks a running sidecar's gRPC health and exits 0 if it is SERVING, 1 otherwise (for
    /// container health checks where no shell or grpcurl exists).
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Address to check: HOST:PORT or unix:PATH. Default: the --listen address, with an
    /// unspecified host (0.0.0.0 or [::]) replaced by loopback.
    #[arg(long, env = "ENDCALL_PROBE_ADDR")]
    pub addr: Option<ListenAddr>,
    /// Give up after this long.
    #[arg(long, env = "ENDCALL_PROBE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Service name to check; "" is the server as a whole.
    #[arg(long, env = "ENDCALL_PROBE_SERVICE", default_value = "")]
    pub service: String,

    // Security (src/auth.rs, src/tls.rs): what the probe sends and trusts.
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to serve gRPC: HOST:PORT, or unix:PATH for a Unix socket. Loopback by default:
    /// the sidecar is meant for agents in the same pod.
    #[arg(long, env = "ENDCALL_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: ListenAddr,

    /// Default of the `delete_room` option: on close after an end_call, issue DELETE_ROOM.
    #[arg(long, env = "ENDCALL_DELETE_ROOM", default_value_t = true, action = ArgAction::Set)]
    pub delete_room: bool,

    /// Default tool output (the `end_instructions` option).
    #[arg(
        long,
        env = "ENDCALL_END_INSTRUCTIONS",
        default_value = "say goodbye to the user"
    )]
    pub end_instructions: String,

    /// Make "none" the default tool output: no reply is asked for.
    #[arg(long, env = "ENDCALL_NO_END_INSTRUCTIONS")]
    pub no_end_instructions: bool,

    /// Default of the `extra_description` option, appended to the tool's description.
    #[arg(long, env = "ENDCALL_EXTRA_DESCRIPTION", default_value = "")]
    pub extra_description: String,

    /// Default of the `ignore_on_enter` tool flag.
    #[arg(long, env = "ENDCALL_IGNORE_ON_ENTER", default_value_t = false, action = ArgAction::Set)]
    pub ignore_on_enter: bool,

    /// Default `reply_timeout`: how long a realtime model has to create its tool reply.
    #[arg(long, env = "ENDCALL_REPLY_TIMEOUT", default_value = "5s", value_parser = parse_reply_timeout)]
    pub reply_timeout: Duration,

    /// Default of the opt-in `early_reply_capture` extension.
    #[arg(long, env = "ENDCALL_EARLY_REPLY_CAPTURE", default_value_t = false, action = ArgAction::Set)]
    pub early_reply_capture: bool,

    /// Default `silence_timeout`: after this long of the user's silence, WIND_UP, then
    /// SHUTDOWN_SESSION (cause: silence timeout) after --wind-up-grace. Off unless set; 0s is off.
    #[arg(long, env = "ENDCALL_SILENCE_TIMEOUT", value_parser = parse_silence_or_off)]
    pub silence_timeout: Option<Duration>,

    /// Default `silence_reminder_after`: reminder i comes at i times this much silence.
    #[arg(long, env = "ENDCALL_SILENCE_REMINDER_AFTER", default_value = "10s", value_parser = parse_silence)]
    pub silence_reminder_after: Duration,

    /// Default `silence_reminders`: reminders per silence, before the silence timeout.
    #[arg(long, env = "ENDCALL_SILENCE_REMINDERS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=i64::from(MAX_SILENCE_REMINDERS)))]
    pub silence_reminders: u8,

    /// Default `silence_reminder_instructions`, for the reply each reminder asks for.
    #[arg(long, env = "ENDCALL_SILENCE_REMINDER_INSTRUCTIONS", default_value = SILENCE_REMINDER_INSTRUCTIONS, value_parser = parse_instructions)]
    pub silence_reminder_instructions: String,

    /// Instructions sent with the silence timeout's WIND_UP.
    #[arg(
        long,
        env = "ENDCALL_SILENCE_WIND_UP_INSTRUCTIONS",
        default_value = "The user is not responding. Say goodbye and end the call."
    )]
    pub silence_wind_up_instructions: String,

    /// How long ENDING or PLAYING_REPLY may last before SHUTDOWN_SESSION (cause: playout guard).
    #[arg(long, env = "ENDCALL_PLAYOUT_GUARD", default_value = "30s", value_parser = parse_positive)]
    pub playout_guard: Duration,

    /// After WIND_UP (max call duration, silence timeout), how long before SHUTDOWN_SESSION.
    #[arg(long, env = "ENDCALL_WIND_UP_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub wind_up_grace: Duration,

    /// How long an attended session (its worker held a WatchSession stream) may go with no
    /// stream open and no event before its worker counts as lost and the sidecar ends the call.
    #[arg(long, env = "ENDCALL_WORKER_LOST_AFTER", default_value = "10s", value_parser = parse_positive)]
    pub worker_lost_after: Duration,

    /// After SHUTDOWN_SESSION, how long the worker has to close the session before the sidecar
    /// ends the call itself.
    #[arg(long, env = "ENDCALL_CLOSE_DEADLINE", default_value = "60s", value_parser = parse_positive)]
    pub close_deadline: Duration,

    /// Instructions sent with WIND_UP, for the reply that winds the call up.
    #[arg(
        long,
        env = "ENDCALL_WIND_UP_INSTRUCTIONS",
        default_value = "The call has reached its time limit. Tell the user politely, say goodbye and end the call."
    )]
    pub wind_up_instructions: String,

    /// How long a closed session is kept for retries, late watchers and GetSession.
    #[arg(long, env = "ENDCALL_CLOSED_RETENTION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub closed_retention: Duration,

    /// A live session with no event for this long is expired (its worker went away).
    #[arg(long, env = "ENDCALL_IDLE_EXPIRY", default_value = "2h", value_parser = parse_positive)]
    pub idle_expiry: Duration,

    /// Live sessions at most; beyond it new sessions get RESOURCE_EXHAUSTED.
    #[arg(long, env = "ENDCALL_MAX_SESSIONS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_sessions: u64,

    /// Largest request message accepted, in bytes; larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "ENDCALL_MAX_REQUEST_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    pub max_request_bytes: u64,

    /// EndCallService requests being handled at once, at most; more are refused at once with
    /// RESOURCE_EXHAUSTED (never queued). Health checks and open watch streams do not count.
    #[arg(long, env = "ENDCALL_MAX_CONCURRENT_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrent_requests: u64,

    /// EndCallService requests per second, at most (a burst of one second's worth is allowed);
    /// more are refused at once with RESOURCE_EXHAUSTED. Off unless set.
    #[arg(long, env = "ENDCALL_MAX_REQUESTS_PER_SECOND")]
    pub max_requests_per_second: Option<NonZeroU32>,

    /// Open WatchSession streams at most; beyond it WatchSession is refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "ENDCALL_MAX_WATCHERS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_watchers: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics. Off unless set (the container image
    /// sets 0.0.0.0:9464).
    #[arg(long, env = "ENDCALL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// On SIGTERM/SIGINT, keep serving this long with health NOT_SERVING before the listener
    /// closes, so probes and load balancers stop routing first.
    #[arg(long, env = "ENDCALL_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// On SIGTERM/SIGINT, how long in-flight calls get to finish before the process exits.
    #[arg(long, env = "ENDCALL_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Keep sessions on disk in DIR (created if missing): every accepted event is fsynced
    /// before its reply, and a restart rebuilds every session. Unset: in memory only.
    #[arg(long, env = "ENDCALL_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// With --state-dir: journal segment size in bytes; past it the segment is sealed and
    /// the sealed ones are compacted (dropped sessions left out).
    #[arg(long, env = "ENDCALL_STATE_SEGMENT_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(4096..=(1 << 30)))]
    pub state_segment_bytes: u64,

    /// Log format.
    #[arg(long, env = "ENDCALL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level or filter (tracing's env-filter syntax); RUST_LOG, when set, wins.
    #[arg(long, env = "ENDCALL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    // Security (src/auth.rs, src/tls.rs): bearer token, TLS and mutual TLS; all off by default.
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub tls: TlsArgs,

    // LiveKit's server API (src/livekit): the URL, key and secret for teardown; off by default.
    #[command(flatten)]
    pub livekit: LiveKitArgs,
    // Post-call webhooks (src/webhooks): off unless --webhook-url is set.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

/// A gRPC listen (or connect) address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// The address a local client should dial: unspecified hosts become loopback.
    pub fn dialable(&self) -> ListenAddr {
        match self {
            ListenAddr::Tcp(addr) if addr.ip().is_unspecified() => {
                let loopback = if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                };
                ListenAddr::Tcp(SocketAddr::new(loopback, addr.port()))
            }
            other => other.clone(),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/endcall.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{s:?} is neither HOST:PORT (e.g. 127.0.0.1:50051) nor unix:PATH"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The validated configuration of a serving process.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: ListenAddr,
    pub registry: Settings,
    pub wind_up: WindUpTexts,
    pub max_request_bytes: usize,
    pub request_limits: RequestLimits,
    pub max_watchers: usize,
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    /// Where sessions are journaled; `None`: in memory only.
    pub state: Option<JournalSettings>,
    /// Read and checked when serving starts (`server::serve`), not here: this stays infallible.
    pub auth: AuthArgs,
    pub tls: TlsArgs,
    /// Read and checked at start (`livekit::Settings::load`), like `auth` and `tls`.
    pub livekit: LiveKitArgs,
    /// Read and checked when serving starts, as `auth` and `tls` are.
    pub webhooks: WebhookArgs,
}

impl From<&ServeArgs> for Config {
    fn from(args: &ServeArgs) -> Self {
        let defaults = Options {
            delete_room: args.delete_room,
            end_instructions: (!args.no_end_instructions)
                .then(|| Arc::from(args.end_instructions.as_str())),
            extra_description: Arc::from(args.extra_description.as_str()),
            ignore_on_enter: args.ignore_on_enter,
            reply_timeout: args.reply_timeout,
            early_reply_capture: args.early_reply_capture,
            silence_timeout: args.silence_timeout.filter(|d| !d.is_zero()),
            silence_reminder_after: args.silence_reminder_after,
            silence_reminders: args.silence_reminders,
            silence_reminder_instructions: arcstr::ArcStr::from(
                args.silence_reminder_instructions.as_str(),
            ),
        };
        Config {
            listen: args.listen.clone(),
            registry: Settings {
                defaults: Arc::new(defaults),
                timing: Timing {
                    playout_guard: args.playout_guard,
                    wind_up_grace: args.wind_up_grace,
                    worker_lost_after: args.worker_lost_after,
                    close_deadline: args.close_deadline,
                },
                closed_retention: args.closed_retention,
                idle_expiry: args.idle_expiry,
                max_sessions: usize::try_from(args.max_sessions).unwrap_or(usize::MAX),
            },
            wind_up: WindUpTexts {
                max_duration: Arc::from(args.wind_up_instructions.as_str()),
                silence: Arc::from(args.silence_wind_up_instructions.as_str()),
            },
            max_request_bytes: usize::try_from(args.max_request_bytes).unwrap_or(usize::MAX),
            request_limits: RequestLimits {
                max_concurrent: usize::try_from(args.max_concurrent_requests).unwrap_or(usize::MAX),
                per_second: args.max_requests_per_second,
            },
            max_watchers: usize::try_from(args.max_watchers).unwrap_or(usize::MAX),
            metrics_listen: args.metrics_listen,
            shutdown_delay: args.shutdown_delay,
            drain_timeout: args.drain_timeout,
            state: args.state_dir.clone().map(|dir| JournalSettings {
                dir,
                segment_bytes: args.state_segment_bytes,
            }),
            auth: args.auth.clone(),
            tls: args.tls.clone(),
            livekit: args.livekit.clone(),
            webhooks: args.webhooks.clone(),
        }
    }
}

impl Config {
    /// The embedded defaults, as if no flag or variable were given.
    pub fn defaults() -> Self {
        let cli = Cli::parse_from(["endcall-sidecar"]);
        Config::from(&cli.serve)
    }
}

fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A silence duration: greater than zero, at most [`MAX_SILENCE`].
fn parse_silence(s: &str) -> Result<Duration, String> {
    let d = parse_positive(s)?;
    if d > MAX_SILENCE {
        return Err(format!(
            "at most {}",
            humantime::format_duration(MAX_SILENCE)
        ));
    }
    Ok(d)
}

/// The default silence timeout: `0s` is off, as in a request.
fn parse_silence_or_off(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Ok(d),
        _ => parse_silence(s),
    }
}

fn parse_instructions(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_INSTRUCTIONS_BYTES {
        return Err(format!(
            "is {} bytes, the limit is {MAX_INSTRUCTIONS_BYTES}",
            s.len()
        ));
    }
    Ok(s.to_owned())
}

fn parse_reply_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_positive(s)?;
    if d > MAX_REPLY_TIMEOUT {
        return Err(format!(
            "at most {}",
            humantime::format_duration(MAX_REPLY_TIMEOUT)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_reference_tool() {
        let config = Config::defaults();
        assert_eq!(*config.registry.defaults, Options::default());
        assert_eq!(
            config.listen,
            ListenAddr::Tcp("127.0.0.1:50051".parse().unwrap())
        );
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::try_parse_from([
            "endcall-sidecar",
            "--listen",
            "unix:/tmp/x.sock",
            "--no-end-instructions",
            "--delete-room",
            "false",
            "--reply-timeout",
            "250ms",
        ])
        .unwrap();
        let config = Config::from(&cli.serve);
        assert_eq!(config.listen, ListenAddr::Unix("/tmp/x.sock".into()));
        assert_eq!(config.registry.defaults.end_instructions, None);
        assert!(!config.registry.defaults.delete_room);
        assert_eq!(
            config.registry.defaults.reply_timeout,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        for args in [
            ["--listen", "nowhere"],
            ["--reply-timeout", "0s"],
            ["--reply-timeout", "1h"],
            ["--max-sessions", "0"],
            ["--max-concurrent-requests", "0"],
            ["--max-requests-per-second", "0"],
            ["--max-watchers", "0"],
            ["--silence-timeout", "2h"],
            ["--silence-reminder-after", "0s"],
            ["--silence-reminders", "11"],
            ["--silence-reminder-instructions", ""],
        ] {
            let err = Cli::try_parse_from(["endcall-sidecar", args[0], args[1]]).unwrap_err();
            assert!(err.to_string().contains(args[0]), "{err}");
        }
    }

    #[test]
    fn probe_address_maps_unspecified_hosts_to_loopback() {
        let addr: ListenAddr = "0.0.0.0:50051".parse().unwrap();
        assert_eq!(addr.dialable().to_string(), "127.0.0.1:50051");
        let addr: ListenAddr = "[::]:50051".parse().unwrap();
        assert_eq!(addr.dialable().to_string(), "[::1]:50051");
    }
}
