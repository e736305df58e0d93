//! The LiveKit flags, and the settings they name, read once at start.
//!
//! The URL, key and secret come from the variables LiveKit's own tools and the agent's pod
//! already use (`LIVEKIT_URL`, `LIVEKIT_API_KEY`, `LIVEKIT_API_SECRET`), or from files for
//! mounted Secrets. The secret is never taken on the command line (every local user can read
//! a process's arguments), never logged, and held only as an HMAC key once read.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{parser::ValueSource, ArgMatches, Args};
use http::Uri;

/// The LiveKit server API's flags (teardown through `RoomService.DeleteRoom`). Its `Debug`
/// hides the secret, so printing a `Config` cannot leak it.
#[derive(Clone, Args)]
pub struct LiveKitArgs {
    /// LiveKit server URL (ws://, wss://, http:// or https://; ws maps to http and wss to
    /// https, as LiveKit's SDKs do). With it, a session torn down by the sidecar gets its room
    /// deleted, which hangs up SIP callers; it needs the API key and secret too. Off unless set.
    #[arg(long, env = "LIVEKIT_URL", value_name = "URL")]
    pub livekit_url: Option<String>,

    /// LiveKit API key (an identifier, not a secret: it is in every token LiveKit sees).
    #[arg(
        long,
        env = "LIVEKIT_API_KEY",
        value_name = "KEY",
        conflicts_with = "livekit_api_key_file"
    )]
    pub livekit_api_key: Option<String>,

    /// Read the LiveKit API key from this file (trailing newline trimmed).
    #[arg(long, env = "ENDCALL_LIVEKIT_API_KEY_FILE", value_name = "PATH")]
    pub livekit_api_key_file: Option<PathBuf>,

    /// LiveKit API secret. Pass it through the LIVEKIT_API_SECRET variable or
    /// --livekit-api-secret-file: a value on the command line is visible to every process on
    /// the host and is refused.
    #[arg(
        long,
        env = "LIVEKIT_API_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        conflicts_with = "livekit_api_secret_file"
    )]
    pub livekit_api_secret: Option<String>,

    /// Read the LiveKit API secret from this file (trailing newline trimmed).
    #[arg(long, env = "ENDCALL_LIVEKIT_API_SECRET_FILE", value_name = "PATH")]
    pub livekit_api_secret_file: Option<PathBuf>,

    /// Each LiveKit API request gives up after this long (connect, TLS and answer).
    #[arg(long, env = "ENDCALL_LIVEKIT_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_positive)]
    pub livekit_request_timeout: Duration,

    /// A failed LiveKit API request is retried (backoff with jitter, honouring Retry-After)
    /// until this long after its first attempt; 0s: never retried.
    #[arg(long, env = "ENDCALL_LIVEKIT_RETRY_FOR", default_value = "5m", value_parser = humantime::parse_duration)]
    pub livekit_retry_for: Duration,
}

impl Default for LiveKitArgs {
    fn default() -> Self {
        LiveKitArgs {
            livekit_url: None,
            livekit_api_key: None,
            livekit_api_key_file: None,
            livekit_api_secret: None,
            livekit_api_secret_file: None,
            livekit_request_timeout: Duration::from_secs(10),
            livekit_retry_for: Duration::from_secs(5 * 60),
        }
    }
}

impl fmt::Debug for LiveKitArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveKitArgs")
            .field("livekit_url", &self.livekit_url)
            .field("livekit_api_key", &self.livekit_api_key)
            .field("livekit_api_key_file", &self.livekit_api_key_file)
            .field(
                "livekit_api_secret",
                &self.livekit_api_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("livekit_api_secret_file", &self.livekit_api_secret_file)
            .field("livekit_request_timeout", &self.livekit_request_timeout)
            .field("livekit_retry_for", &self.livekit_retry_for)
            .finish()
    }
}

const URL: &str = "--livekit-url (LIVEKIT_URL)";
const KEY: &str = "the API key (LIVEKIT_API_KEY or --livekit-api-key-file)";
const SECRET: &str = "the API secret (LIVEKIT_API_SECRET or --livekit-api-secret-file)";

#[derive(Debug, thiserror::Error)]
pub(crate) enum LiveKitConfigError {
    #[error("{URL} is set but {missing} is not: teardown needs the URL, the key and the secret")]
    Incomplete { missing: &'static str },
    #[error(
        "{given} {verb} set but {URL} is not: set it too, or unset {them} to run without \
         LiveKit teardown"
    )]
    NoUrl {
        given: &'static str,
        verb: &'static str,
        them: &'static str,
    },
    #[error("{URL} {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("{flag} {}: cannot read: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: the file is empty", path.display())]
    EmptyFile { flag: &'static str, path: PathBuf },
    #[error(
        "--livekit-api-secret: pass the secret through LIVEKIT_API_SECRET or \
         --livekit-api-secret-file; a command line is visible to every process on the host"
    )]
    SecretOnCommandLine,
}

/// What the flags name, validated: the URL as LiveKit's SDKs read it, the key and the secret.
/// Its `Debug` hides the secret.
#[derive(Clone)]
pub(crate) struct Settings {
    /// `http://` or `https://`, with the base path (if any) and no trailing slash.
    pub(crate) url: Uri,
    /// `{url}/twirp/livekit.RoomService/DeleteRoom`.
    pub(crate) delete_room_url: Uri,
    pub(crate) api_key: String,
    pub(crate) api_secret: Vec<u8>,
    pub(crate) request_timeout: Duration,
    pub(crate) retry_for: Duration,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field("delete_room_url", &self.delete_room_url)
            .field("api_key", &self.api_key)
            .field("api_secret", &"<redacted>")
            .field("request_timeout", &self.request_timeout)
            .field("retry_for", &self.retry_for)
            .finish()
    }
}

impl Settings {
    /// The settings the flags name: `None` when none of URL, key and secret is set; an error
    /// when only some are, or when one is unreadable or malformed. Empty values count as
    /// unset (a compose file's `${LIVEKIT_URL:-}` gives one).
    pub(crate) fn load(args: &LiveKitArgs) -> Result<Option<Settings>, LiveKitConfigError> {
        let url = non_empty(args.livekit_url.clone());
        let key = match (&args.livekit_api_key, &args.livekit_api_key_file) {
            (Some(key), _) => non_empty(Some(key.clone())),
            (None, Some(path)) => Some(read_file("--livekit-api-key-file", path)?),
            (None, None) => None,
        };
        let secret = match (&args.livekit_api_secret, &args.livekit_api_secret_file) {
            (Some(secret), _) => non_empty(Some(secret.clone())),
            (None, Some(path)) => Some(read_file("--livekit-api-secret-file", path)?),
            (None, None) => None,
        };
        let (url, key, secret) = match (url, key, secret) {
            (None, None, None) => return Ok(None),
            (Some(url), Some(key), Some(secret)) => (url, key, secret),
            (Some(_), None, _) => return Err(LiveKitConfigError::Incomplete { missing: KEY }),
            (Some(_), Some(_), None) => {
                return Err(LiveKitConfigError::Incomplete { missing: SECRET })
            }
            (None, key, secret) => {
                let (given, verb, them) = match (key.is_some(), secret.is_some()) {
                    (true, true) => ("LIVEKIT_API_KEY and LIVEKIT_API_SECRET", "are", "them"),
                    (true, false) => ("LIVEKIT_API_KEY", "is", "it"),
                    _ => ("LIVEKIT_API_SECRET", "is", "it"),
                };
                return Err(LiveKitConfigError::NoUrl { given, verb, them });
            }
        };
        let (url, delete_room_url) = server_url(&url)?;
        Ok(Some(Settings {
            url,
            delete_room_url,
            api_key: key,
            api_secret: secret.into_bytes(),
            request_timeout: args.livekit_request_timeout,
            retry_for: args.livekit_retry_for,
        }))
    }
}

/// Whether `--livekit-api-secret` was given on the command line, where every local user can
/// read it in the process list. The variable is the way to pass it.
pub(crate) fn secret_on_command_line(matches: &ArgMatches) -> bool {
    matches.value_source("livekit_api_secret") == Some(ValueSource::CommandLine)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn read_file(flag: &'static str, path: &Path) -> Result<String, LiveKitConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| LiveKitConfigError::Read {
        flag,
        path: path.to_owned(),
        source,
    })?;
    // Files written by `echo`, editors or Kubernetes Secrets may end with a newline.
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err(LiveKitConfigError::EmptyFile {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(value.to_owned())
}

/// The path of `RoomService.DeleteRoom` under the server's URL.
const DELETE_ROOM_PATH: &str = "/twirp/livekit.RoomService/DeleteRoom";

/// LIVEKIT_URL as LiveKit's SDKs read it: `ws` becomes `http` and `wss` `https`; a base path
/// (a LiveKit behind a reverse proxy) is kept, without its trailing slash. Returns that URL
/// and the URL of `RoomService.DeleteRoom` under it.
pub(crate) fn server_url(text: &str) -> Result<(Uri, Uri), LiveKitConfigError> {
    let bad = |reason| LiveKitConfigError::BadUrl {
        url: text.to_owned(),
        reason,
    };
    let uri: Uri = text
        .trim()
        .parse()
        .map_err(|_| bad("not a URL (e.g. wss://example.livekit.cloud)"))?;
    let scheme = match uri.scheme_str() {
        Some("ws" | "http") => "http",
        Some("wss" | "https") => "https",
        Some(_) => return Err(bad("the scheme must be ws, wss, http or https")),
        None => {
            return Err(bad(
                "a scheme is needed: ws://, wss://, http:// or https://",
            ))
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(bad("it has no host"));
    };
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(bad(
            "credentials in the URL are not used: set the API key and secret",
        ));
    }
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let base = format!("{scheme}://{authority}{}", uri.path().trim_end_matches('/'));
    let not_a_url = |_| bad("not a URL (e.g. wss://example.livekit.cloud)");
    Ok((
        base.parse().map_err(not_a_url)?,
        format!("{base}{DELETE_ROOM_PATH}")
            .parse()
            .map_err(not_a_url)?,
    ))
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
    use std::io::Write as _;

    use super::*;

    fn args(url: Option<&str>, key: Option<&str>, secret: Option<&str>) -> LiveKitArgs {
        LiveKitArgs {
            livekit_url: url.map(str::to_owned),
            livekit_api_key: key.map(str::to_owned),
            livekit_api_secret: secret.map(str::to_owned),
            ..LiveKitArgs::default()
        }
    }

    #[test]
    fn urls_are_read_as_livekit_sdks_read_them() {
        for (given, used) in [
            ("ws://localhost:7880", "http://localhost:7880/"),
            ("wss://x.livekit.cloud", "https://x.livekit.cloud/"),
            ("wss://x.livekit.cloud/", "https://x.livekit.cloud/"),
            ("http://10.0.0.5:7880", "http://10.0.0.5:7880/"),
            (
                "https://lk.example.com/livekit/",
                "https://lk.example.com/livekit",
            ),
            ("  https://[::1]:7880  ", "https://[::1]:7880/"),
        ] {
            let (url, delete_room) = server_url(given).unwrap();
            assert_eq!(url.to_string(), used, "{given}");
            assert_eq!(
                delete_room.to_string(),
                format!(
                    "{}/twirp/livekit.RoomService/DeleteRoom",
                    used.trim_end_matches('/')
                )
            );
        }
    }

    #[test]
    fn malformed_urls_are_refused_naming_the_flag() {
        for (given, reason) in [
            ("localhost:7880", "a scheme is needed"),
            ("livekit", "a scheme is needed"),
            ("ftp://x", "the scheme must be"),
            ("wss://", "not a URL"),
            ("https://user:pw@x", "credentials"),
            ("https://x/?a=b", "query"),
            ("wss://exa mple", "not a URL"),
        ] {
            let err = server_url(given).unwrap_err().to_string();
            assert!(err.starts_with("--livekit-url (LIVEKIT_URL)"), "{err}");
            assert!(err.contains(reason), "{given}: {err}");
        }
    }

    #[test]
    fn nothing_set_is_no_livekit() {
        assert!(Settings::load(&LiveKitArgs::default()).unwrap().is_none());
        assert!(Settings::load(&args(Some(""), Some(""), Some("")))
            .unwrap()
            .is_none());
    }

    #[test]
    fn all_three_make_settings_whose_debug_hides_the_secret() {
        let settings = Settings::load(&args(Some("wss://x"), Some("key"), Some("hunter22")))
            .unwrap()
            .unwrap();
        assert_eq!(settings.url.to_string(), "https://x/");
        assert_eq!(settings.api_key, "key");
        assert_eq!(settings.api_secret, b"hunter22");
        assert_eq!(settings.request_timeout, Duration::from_secs(10));
        assert_eq!(settings.retry_for, Duration::from_secs(300));
        for shown in [
            format!("{settings:?}"),
            format!("{:?}", args(None, None, Some("hunter22"))),
        ] {
            assert!(!shown.contains("hunter22"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }

    #[test]
    fn partial_settings_name_what_is_missing() {
        for (url, key, secret, named) in [
            (Some("wss://x"), None, None, "LIVEKIT_API_KEY"),
            (Some("wss://x"), None, Some("s"), "LIVEKIT_API_KEY"),
            (Some("wss://x"), Some("k"), None, "LIVEKIT_API_SECRET"),
            (Some("wss://x"), Some("k"), Some(""), "LIVEKIT_API_SECRET"),
            (None, Some("k"), Some("s"), "LIVEKIT_URL"),
            (None, Some("k"), None, "LIVEKIT_URL"),
            (None, None, Some("s"), "LIVEKIT_URL"),
        ] {
            let err = Settings::load(&args(url, key, secret))
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{url:?} {key:?} {secret:?}: {err}");
        }
        let err = Settings::load(&args(None, Some("k"), Some("s")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "LIVEKIT_API_KEY and LIVEKIT_API_SECRET are set but --livekit-url (LIVEKIT_URL) is \
             not: set it too, or unset them to run without LiveKit teardown"
        );
    }

    #[test]
    fn key_and_secret_files_are_read_with_their_newline_trimmed() {
        let mut key = tempfile::NamedTempFile::new().unwrap();
        key.write_all(b"APIkey\n").unwrap();
        let mut secret = tempfile::NamedTempFile::new().unwrap();
        secret.write_all(b"s3cret-from-a-file\r\n").unwrap();
        let settings = Settings::load(&LiveKitArgs {
            livekit_url: Some("ws://lk:7880".into()),
            livekit_api_key_file: Some(key.path().into()),
            livekit_api_secret_file: Some(secret.path().into()),
            ..LiveKitArgs::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(settings.api_key, "APIkey");
        assert_eq!(settings.api_secret, b"s3cret-from-a-file");

        let empty = tempfile::NamedTempFile::new().unwrap();
        let err = Settings::load(&LiveKitArgs {
            livekit_url: Some("ws://lk:7880".into()),
            livekit_api_key: Some("k".into()),
            livekit_api_secret_file: Some(empty.path().into()),
            ..LiveKitArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("--livekit-api-secret-file ") && err.ends_with("the file is empty"),
            "{err}"
        );
        let err = Settings::load(&LiveKitArgs {
            livekit_url: Some("ws://lk:7880".into()),
            livekit_api_key_file: Some("/nonexistent/key".into()),
            livekit_api_secret: Some("s".into()),
            ..LiveKitArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("--livekit-api-key-file /nonexistent/key: cannot read"),
            "{err}"
        );
    }
}
