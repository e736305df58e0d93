//! The webhook flags, and the secret they name: read once at start, checked, never logged.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{parser::ValueSource, ArgAction, ArgMatches, Args};
use http::Uri;

use super::signing::{Secret, SecretError};

/// The variable that carries the secret; the flag of the same name is refused on the command
/// line.
pub(crate) const SECRET_VARIABLE: &str = "ENDCALL_WEBHOOK_SECRET";

/// The webhook flags. Its `Debug` hides the secret, so printing a `Config` cannot leak it.
#[derive(Clone, Args)]
pub struct WebhookArgs {
    /// Deliver every ended session's report to this URL (http:// or https://) as a signed
    /// Standard Webhooks `call.ended` event. Off unless set (an empty value is off too).
    #[arg(long, env = "ENDCALL_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,

    /// The signing secret, `whsec_` followed by base64 (Standard Webhooks). Pass it through
    /// the ENDCALL_WEBHOOK_SECRET variable or --webhook-secret-file: a value on the command line
    /// is visible to every process on the host and is refused.
    #[arg(
        long,
        env = SECRET_VARIABLE,
        hide_env_values = true,
        value_name = "SECRET",
        conflicts_with = "webhook_secret_file"
    )]
    pub webhook_secret: Option<String>,

    /// Read the signing secret from this file (surrounding whitespace trimmed).
    #[arg(long, env = "ENDCALL_WEBHOOK_SECRET_FILE", value_name = "PATH")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Include the worker's close error message in the event (`data.error_message`). Off by
    /// default: the message may hold user data.
    #[arg(long, env = "ENDCALL_WEBHOOK_INCLUDE_ERROR_MESSAGE", default_value_t = false, action = ArgAction::Set)]
    pub webhook_include_error_message: bool,

    /// Keep retrying a delivery that fails for this long after it was queued, then give up.
    #[arg(long, env = "ENDCALL_WEBHOOK_RETRY_FOR", default_value = "24h", value_parser = humantime::parse_duration)]
    pub webhook_retry_for: Duration,

    /// The first retry waits up to this long (a random time, "full jitter"); each retry after
    /// it up to twice as long as the one before, up to --webhook-backoff-max. A longer
    /// Retry-After from the receiver wins.
    #[arg(long, env = "ENDCALL_WEBHOOK_BACKOFF", default_value = "5s", value_parser = parse_positive)]
    pub webhook_backoff: Duration,

    /// The longest wait between two attempts (before Retry-After).
    #[arg(long, env = "ENDCALL_WEBHOOK_BACKOFF_MAX", default_value = "1h", value_parser = parse_positive)]
    pub webhook_backoff_max: Duration,

    /// Longest wait for one delivery's answer (connect, TLS, request and answer).
    #[arg(long, env = "ENDCALL_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_positive)]
    pub webhook_timeout: Duration,

    /// Deliveries in flight at once, at most.
    #[arg(long, env = "ENDCALL_WEBHOOK_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub webhook_concurrency: u64,

    /// Pending deliveries held in memory, at most. Without --state-dir a delivery beyond it
    /// is dropped (counted and logged); with --state-dir it waits on disk.
    #[arg(long, env = "ENDCALL_WEBHOOK_QUEUE", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub webhook_queue: u64,
}

impl fmt::Debug for WebhookArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookArgs")
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("webhook_secret_file", &self.webhook_secret_file)
            .field(
                "webhook_include_error_message",
                &self.webhook_include_error_message,
            )
            .field("webhook_retry_for", &self.webhook_retry_for)
            .field("webhook_backoff", &self.webhook_backoff)
            .field("webhook_backoff_max", &self.webhook_backoff_max)
            .field("webhook_timeout", &self.webhook_timeout)
            .field("webhook_concurrency", &self.webhook_concurrency)
            .field("webhook_queue", &self.webhook_queue)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    #[error(
        "--webhook-secret: pass the secret through {SECRET_VARIABLE} or --webhook-secret-file; \
         a command line is visible to every process on the host"
    )]
    OnCommandLine,
    #[error(
        "--webhook-url is set but no signing secret is: set {SECRET_VARIABLE} or \
         --webhook-secret-file (whsec_ followed by base64)"
    )]
    NoSecret,
    #[error("--webhook-url {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("--webhook-secret-file {}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {error}")]
    Secret { origin: String, error: SecretError },
}

/// The webhook configuration in force: its URL, and the secret that signs for it.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub url: Uri,
    pub secret: Secret,
    pub include_error_message: bool,
    pub retry_for: Duration,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    pub queue: usize,
}

impl Settings {
    /// What the flags ask for: `None` when no URL is set, or an empty one (webhooks off; a
    /// secret alone is not read: a deployment may pass an optional Secret's empty value).
    /// Reads the secret file.
    pub(crate) fn load(args: &WebhookArgs) -> Result<Option<Settings>, WebhookConfigError> {
        let Some(url) = args
            .webhook_url
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty())
        else {
            return Ok(None);
        };
        let url = check_url(url)?;
        let secret = match (&args.webhook_secret, &args.webhook_secret_file) {
            (Some(text), _) => parse(SECRET_VARIABLE.to_owned(), text)?,
            (None, Some(path)) => parse(
                format!("--webhook-secret-file {}", path.display()),
                &read(path)?,
            )?,
            (None, None) => return Err(WebhookConfigError::NoSecret),
        };
        Ok(Some(Settings {
            url,
            secret,
            include_error_message: args.webhook_include_error_message,
            retry_for: args.webhook_retry_for,
            backoff: args.webhook_backoff,
            backoff_max: args.webhook_backoff_max.max(args.webhook_backoff),
            timeout: args.webhook_timeout,
            concurrency: usize::try_from(args.webhook_concurrency).unwrap_or(usize::MAX),
            queue: usize::try_from(args.webhook_queue).unwrap_or(usize::MAX),
        }))
    }
}

/// Whether `--webhook-secret` was given on the command line, where every local user can read
/// it in the process list. The variable is the way to pass it.
pub(crate) fn secret_on_command_line(matches: &ArgMatches) -> bool {
    matches.value_source("webhook_secret") == Some(ValueSource::CommandLine)
}

fn parse(origin: String, text: &str) -> Result<Secret, WebhookConfigError> {
    Secret::parse(text).map_err(|error| WebhookConfigError::Secret { origin, error })
}

fn read(path: &Path) -> Result<String, WebhookConfigError> {
    std::fs::read_to_string(path).map_err(|source| WebhookConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn check_url(text: &str) -> Result<Uri, WebhookConfigError> {
    let invalid = |reason| WebhookConfigError::Url {
        url: text.to_owned(),
        reason,
    };
    let url: Uri = text.parse().map_err(|_| invalid("not a URL"))?;
    match url.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err(invalid("the scheme must be http or https")),
        None => return Err(invalid("an absolute URL (http:// or https://) is needed")),
    }
    if url.host().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    Ok(url)
}

fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        webhooks: WebhookArgs,
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn args(flags: &[&str]) -> WebhookArgs {
        Cli::try_parse_from(std::iter::once("endcall-sidecar").chain(flags.iter().copied()))
            .unwrap()
            .webhooks
    }

    fn load(flags: &[&str], secret: Option<&str>) -> Result<Option<Settings>, WebhookConfigError> {
        let mut args = args(flags);
        // The variable, as clap would have read it.
        args.webhook_secret = secret.map(str::to_owned);
        Settings::load(&args)
    }

    #[test]
    fn off_without_a_url_even_with_a_secret() {
        assert!(load(&[], Some(SECRET)).unwrap().is_none());
        assert!(load(&[], Some("not a secret")).unwrap().is_none());
        assert!(load(&["--webhook-url", ""], Some("not a secret"))
            .unwrap()
            .is_none());
        assert!(load(&["--webhook-url", " "], None).unwrap().is_none());
    }

    #[test]
    fn defaults() {
        let settings = load(&["--webhook-url", "https://example.com/hook"], Some(SECRET))
            .unwrap()
            .unwrap();
        assert_eq!(settings.retry_for, Duration::from_secs(24 * 3600));
        assert_eq!(settings.timeout, Duration::from_secs(15));
        assert_eq!(settings.queue, 100_000);
        assert!(!settings.include_error_message);
    }

    #[test]
    fn a_url_without_a_secret_is_refused_naming_both_ways() {
        let err = load(&["--webhook-url", "http://127.0.0.1:9/"], None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(SECRET_VARIABLE), "{text}");
        assert!(text.contains("--webhook-secret-file"), "{text}");
    }

    #[test]
    fn a_malformed_secret_names_the_variable_and_never_shows_the_secret() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not*base64!",
            "whsec_",
            "whsec_c2hvcnQ=",
        ] {
            let err = load(&["--webhook-url", "http://127.0.0.1:9/"], Some(bad)).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with(SECRET_VARIABLE), "{text}");
            let hidden = bad.trim_start_matches("whsec_");
            assert!(hidden.is_empty() || !text.contains(hidden), "{text}");
        }
    }

    #[test]
    fn the_secret_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let path = path.display().to_string();
        let settings = load(
            &[
                "--webhook-url",
                "http://127.0.0.1:9/",
                "--webhook-secret-file",
                &path,
            ],
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            settings.secret.sign("msg_1", 1, b"{}"),
            Secret::parse(SECRET).unwrap().sign("msg_1", 1, b"{}")
        );
        std::fs::write(&path, "whsec_!!!\n").unwrap();
        let err = load(
            &[
                "--webhook-url",
                "http://127.0.0.1:9/",
                "--webhook-secret-file",
                &path,
            ],
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("--webhook-secret-file "),
            "{err}"
        );
    }

    #[test]
    fn urls_must_be_absolute_http_or_https() {
        for bad in ["example.com/hook", "ftp://example.com/", "http://", "/hook"] {
            let err = load(&["--webhook-url", bad], Some(SECRET)).unwrap_err();
            assert!(err.to_string().starts_with("--webhook-url"), "{err}");
        }
    }

    #[test]
    fn the_secret_on_the_command_line_is_noticed() {
        let matches = <Cli as clap::CommandFactory>::command()
            .try_get_matches_from(["x", "--webhook-secret", SECRET])
            .unwrap();
        assert!(secret_on_command_line(&matches));
        let matches = <Cli as clap::CommandFactory>::command()
            .try_get_matches_from(["x"])
            .unwrap();
        assert!(!secret_on_command_line(&matches));
    }

    #[test]
    fn debug_hides_the_secret() {
        let mut args = args(&[]);
        args.webhook_secret = Some(SECRET.into());
        let shown = format!("{args:?}");
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
    }
}
