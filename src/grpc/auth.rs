//! Optional bearer-token authentication: every gRPC call must carry
//! `authorization: Bearer <token>` when a token is configured.
//!
//! Why a shared token and not per-client identities: the sidecar has one kind of client (the
//! agent worker in the same pod), and anyone who can reach it may end any session anyway; a
//! token only has to tell "our agent" from "anything else that reached the port". Mutual TLS
//! (see `tls`) is the option for stronger identities.
//!
//! The check is a tower layer in front of every service (ours, reflection and, unless exempt,
//! health), so a new service cannot be mounted unprotected by forgetting an interceptor.

use std::{
    fmt,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use clap::{parser::ValueSource, ArgAction, ArgMatches, Args};
use subtle::ConstantTimeEq as _;
use tonic::{
    body::Body,
    codegen::http,
    metadata::{errors::InvalidMetadataValue, AsciiMetadataValue},
    Status,
};
use tower::{Layer, Service};

use crate::telemetry::metrics;

/// Where the token comes from; shared by the server and the `probe` subcommand, so an exec
/// probe in the same container finds the token through the same variables. Its `Debug` hides
/// the token, so printing a `Config` cannot leak it.
#[derive(Clone, Default, Args)]
pub struct TokenArgs {
    /// Require (server) or send (probe) `authorization: Bearer <token>` with this token. Pass it
    /// through the ENDCALL_AUTH_TOKEN variable or --auth-token-file: a value on the command line
    /// is visible to every process on the host and is refused.
    #[arg(
        long,
        env = "ENDCALL_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        conflicts_with = "auth_token_file"
    )]
    pub auth_token: Option<String>,

    /// Read the bearer token from this file (trailing newline trimmed). Off unless set.
    #[arg(long, env = "ENDCALL_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,
}

impl fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenArgs")
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("auth_token_file", &self.auth_token_file)
            .finish()
    }
}

/// The server's authentication flags.
#[derive(Clone, Debug, Args)]
pub struct AuthArgs {
    #[command(flatten)]
    pub token: TokenArgs,

    /// With a token set, let grpc.health.v1.Health through without one: Kubernetes' grpc
    /// probes cannot send headers.
    #[arg(long, env = "ENDCALL_AUTH_HEALTH_EXEMPT", default_value_t = true, action = ArgAction::Set)]
    pub auth_health_exempt: bool,
}

impl Default for AuthArgs {
    fn default() -> Self {
        AuthArgs {
            token: TokenArgs::default(),
            auth_health_exempt: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("--auth-token-file {}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--auth-token-file {}: the file holds no token", path.display())]
    EmptyFile { path: PathBuf },
    #[error("--auth-token (ENDCALL_AUTH_TOKEN): the token is empty")]
    Empty,
    #[error(
        "--auth-token: pass the token through ENDCALL_AUTH_TOKEN or --auth-token-file; a command \
         line is visible to every process on the host"
    )]
    OnCommandLine,
    #[error("{origin}: a bearer token cannot hold {what}")]
    NotHeaderSafe { origin: String, what: &'static str },
}

/// A configured token. Its `Debug` never shows the value, so it cannot reach a log line.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The token named by the flags, if any: read once at start.
    pub fn load(args: &TokenArgs) -> Result<Option<Token>, AuthError> {
        let (token, origin) = match (&args.auth_token, &args.auth_token_file) {
            (Some(token), _) => {
                if token.is_empty() {
                    return Err(AuthError::Empty);
                }
                (
                    token.clone(),
                    "--auth-token (ENDCALL_AUTH_TOKEN)".to_owned(),
                )
            }
            (None, Some(path)) => (
                read_token_file(path)?,
                format!("--auth-token-file {}", path.display()),
            ),
            (None, None) => return Ok(None),
        };
        // Sent as an HTTP/2 header: anything a header value cannot carry could never match.
        let unfit = if token.chars().any(|c| c.is_ascii_control()) {
            Some("control characters")
        } else if !token.is_ascii() {
            Some("non-ASCII characters")
        } else if token.trim() != token {
            Some("leading or trailing spaces")
        } else {
            None
        };
        if let Some(what) = unfit {
            return Err(AuthError::NotHeaderSafe { origin, what });
        }
        Ok(Some(Token(token.into())))
    }

    /// The `authorization` metadata clients send: `Bearer <token>`, marked sensitive so HTTP/2
    /// header compression never indexes it.
    pub fn bearer(&self) -> Result<AsciiMetadataValue, InvalidMetadataValue> {
        let mut value = AsciiMetadataValue::try_from(format!("Bearer {}", self.0))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// Whether `--auth-token` was given on the command line (at the top or in a subcommand), where
/// every local user can read it in the process list. The variable is the way to pass it.
pub(crate) fn token_on_command_line(matches: &ArgMatches) -> bool {
    let given = |m: &ArgMatches| m.value_source("auth_token") == Some(ValueSource::CommandLine);
    given(matches) || matches.subcommand().is_some_and(|(_, sub)| given(sub))
}

fn read_token_file(path: &Path) -> Result<String, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    // Files written by `echo` or editors end with a newline that is not part of the token.
    let token = text.strip_suffix('\n').unwrap_or(&text);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() {
        return Err(AuthError::EmptyFile {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

pub(crate) const MISSING: &str =
    "missing authorization metadata: expected 'authorization: Bearer <token>'";
pub(crate) const MALFORMED: &str =
    "malformed authorization metadata: expected 'authorization: Bearer <token>'";
pub(crate) const INVALID: &str = "invalid bearer token";

/// What the server checks. Holds only a digest of the token: comparing digests of equal length
/// in constant time tells an attacker nothing about the token's length or any prefix of it.
#[derive(Clone)]
pub(crate) struct Policy {
    digest: [u8; 32],
    health_exempt: bool,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("health_exempt", &self.health_exempt)
            .finish_non_exhaustive()
    }
}

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

impl Policy {
    pub(crate) fn new(token: &Token, health_exempt: bool) -> Self {
        Policy {
            digest: digest(token.0.as_bytes()),
            health_exempt,
        }
    }

    /// The policy the flags ask for: `None` when no token is configured.
    pub(crate) fn load(args: &AuthArgs) -> Result<Option<Policy>, AuthError> {
        Ok(Token::load(&args.token)?.map(|token| Policy::new(&token, args.auth_health_exempt)))
    }

    /// Lets a request through, or says why not.
    pub(crate) fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        if self.health_exempt && path.starts_with(HEALTH_PREFIX) {
            return Ok(());
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(MISSING));
        };
        let presented = value
            .as_bytes()
            .split_at_checked(7)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"Bearer "))
            .map(|(_, token)| token)
            .ok_or_else(|| Status::unauthenticated(MALFORMED))?;
        if bool::from(digest(presented).ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(Status::unauthenticated(INVALID))
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// The layer `server` puts in front of every service; a pass-through without a policy.
#[derive(Clone, Debug, Default)]
pub(crate) struct AuthLayer {
    policy: Option<Arc<Policy>>,
}

impl AuthLayer {
    pub(crate) fn new(policy: Option<Policy>) -> Self {
        AuthLayer {
            policy: policy.map(Arc::new),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = RequireBearer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireBearer {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct RequireBearer<S> {
    inner: S,
    policy: Option<Arc<Policy>>,
}

impl<S, B> Service<http::Request<B>> for RequireBearer<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = CheckedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(policy) = &self.policy {
            if let Err(status) = policy.check(request.uri().path(), request.headers()) {
                metrics::rejected("unauthenticated");
                // The path, never the presented value: a wrong token may be a real one's typo.
                tracing::debug!(
                    path = request.uri().path(),
                    reason = status.message(),
                    "refused"
                );
                return CheckedFuture::Refused {
                    response: Some(status.into_http()),
                };
            }
        }
        CheckedFuture::Passed {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, or the refusal: no allocation per request either way.
    #[project = CheckedProj]
    pub enum CheckedFuture<F> {
        Passed { #[pin] inner: F },
        Refused { response: Option<http::Response<Body>> },
    }
}

impl<F, E> Future for CheckedFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckedProj::Passed { inner } => inner.poll(cx),
            CheckedProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polling a finished future breaks its contract; staying pending is the harmless answer.
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use tonic::Code;

    use super::*;

    fn headers(value: Option<&str>) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        if let Some(value) = value {
            map.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn policy(health_exempt: bool) -> Policy {
        Policy::new(&Token("s3cret".into()), health_exempt)
    }

    const API: &str = "/endcall.v1.EndCallService/EndCall";

    #[test]
    fn the_right_token_passes_in_any_scheme_case() {
        for value in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"] {
            policy(true).check(API, &headers(Some(value))).unwrap();
        }
    }

    #[test]
    fn refusals_say_why_without_echoing_the_token() {
        let cases = [
            (None, MISSING),
            (Some("Basic czNjcmV0"), MALFORMED),
            (Some("Bearer"), MALFORMED),
            (Some("Bearer s3cre"), INVALID),
            (Some("Bearer s3cret2"), INVALID),
            (Some("Bearer  s3cret"), INVALID),
            (Some("Bearer "), INVALID),
        ];
        for (value, message) in cases {
            let status = policy(true).check(API, &headers(value)).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{value:?}");
            assert_eq!(status.message(), message, "{value:?}");
            assert!(!status.message().contains("s3cr"));
        }
    }

    #[test]
    fn health_is_exempt_only_when_asked() {
        let check = "/grpc.health.v1.Health/Check";
        policy(true).check(check, &headers(None)).unwrap();
        let status = policy(false).check(check, &headers(None)).unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        // Reflection is never exempt: it reveals the API.
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert!(policy(true).check(reflection, &headers(None)).is_err());
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let args = TokenArgs {
            auth_token: Some("s3cret".into()),
            auth_token_file: None,
        };
        assert!(!format!("{args:?}").contains("s3cret"));
        let token = Token("s3cret".into());
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!(!format!("{:?}", Policy::new(&token, true)).contains("s3cret"));
        assert!(token.bearer().unwrap().is_sensitive());
    }

    fn token_file(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file
    }

    fn load_file(file: &tempfile::NamedTempFile) -> Result<Option<Token>, AuthError> {
        Token::load(&TokenArgs {
            auth_token: None,
            auth_token_file: Some(file.path().to_owned()),
        })
    }

    #[test]
    fn a_token_file_loses_its_trailing_newline_only() {
        for (contents, token) in [("abc\n", "abc"), ("abc\r\n", "abc"), ("abc", "abc")] {
            let loaded = load_file(&token_file(contents)).unwrap().unwrap();
            assert_eq!(&*loaded.0, token);
        }
        let file = token_file(" abc\n");
        let err = load_file(&file).unwrap_err().to_string();
        let expected = format!("--auth-token-file {}: ", file.path().display());
        assert!(err.starts_with(&expected), "{err}");
        assert!(err.ends_with("leading or trailing spaces"), "{err}");
    }

    #[test]
    fn an_empty_or_missing_token_is_refused_naming_the_flag() {
        for contents in ["", "\n"] {
            let file = token_file(contents);
            let err = load_file(&file).unwrap_err().to_string();
            assert!(err.starts_with("--auth-token-file "), "{err}");
            assert!(err.contains(&file.path().display().to_string()), "{err}");
        }
        let err = Token::load(&TokenArgs {
            auth_token: None,
            auth_token_file: Some("/nonexistent/token".into()),
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--auth-token-file /nonexistent/token"),
            "{err}"
        );
        let err = Token::load(&TokenArgs {
            auth_token: Some(String::new()),
            auth_token_file: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("ENDCALL_AUTH_TOKEN"), "{err}");
    }

    #[test]
    fn no_flags_mean_no_policy() {
        assert!(Policy::load(&AuthArgs::default()).unwrap().is_none());
    }
}
