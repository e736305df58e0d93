//! The process's one outbound HTTP client: LiveKit's server API (teardown) and webhook
//! deliveries both send through it, so they share its connection pool and its TLS setup.
//!
//! - **Stack:** hyper 1 through hyper-util's pooled client (both already in the tree for
//!   tonic), with hyper-rustls as the TLS connector: rustls on ring, never OpenSSL. HTTP/1.1,
//!   and HTTP/2 when a TLS server offers it by ALPN.
//! - **Roots:** the platform's CA certificates ([`Tls::Platform`], read once by
//!   rustls-native-certs, which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`), not a list
//!   compiled into the binary. The image (distroless `cc`) ships Debian's `ca-certificates`;
//!   an operator whose LiveKit or webhook receiver uses a private CA mounts its bundle and
//!   points `SSL_CERT_FILE` at it, which a compiled-in list (webpki-roots) could not offer
//!   without a flag of its own. An image without any bundle is refused at start, naming
//!   `SSL_CERT_FILE`, when an `https://` URL is configured (see [`Tls::for_urls`]).
//! - **Requests:** [`HttpClient::post`] bounds each request (connect, TLS, headers and body)
//!   by one timeout, reads at most [`BODY_LIMIT`] bytes of the answer, and classifies failures
//!   into a small [`SendError`] that says whether a retry can help. The retry schedule itself
//!   is [`retry::RetryPolicy`]; callers own their loops (a teardown retries for minutes, a
//!   webhook for a day, journaled).

pub(crate) mod retry;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
#[cfg(test)]
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

pub(crate) use retry::{parse_retry_after, Backoff, Jitter, RetryPolicy};

/// How much of an answer's body is kept: enough for an error message in a log line or a
/// report, never a receiver's whole page.
pub(crate) const BODY_LIMIT: usize = 4 * 1024;

/// Idle pooled connections are closed after this long (LiveKit and most load balancers close
/// theirs after 60 s or more, so the pool drops its side first).
const POOL_IDLE: Duration = Duration::from_secs(30);

/// What the client trusts for `https://` URLs.
#[derive(Clone)]
pub(crate) enum Tls {
    /// The platform's CA certificates (see the module's docs).
    Platform,
    /// Exactly these roots: the tests' CA.
    #[cfg(test)]
    Roots(Vec<CertificateDer<'static>>),
    /// No TLS: `https://` URLs fail with [`SendError::Tls`]. For a process whose configured
    /// URLs are all `http://`, so that an image without a CA bundle still starts.
    Off,
}

impl Tls {
    /// The platform's roots when any of `urls` is `https://`, otherwise none.
    pub(crate) fn for_urls<'a>(urls: impl IntoIterator<Item = &'a Uri>) -> Self {
        let tls = urls
            .into_iter()
            .any(|url| url.scheme() == Some(&http::uri::Scheme::HTTPS));
        if tls {
            Tls::Platform
        } else {
            Tls::Off
        }
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error(
        "no CA certificates found for https:// URLs{detail} (the image needs a CA bundle, \
         or set SSL_CERT_FILE to a PEM file of the CAs to trust)"
    )]
    NoRoots { detail: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The process's outbound HTTP client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    tls: bool,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// An answer: its status, its `Retry-After`, and the start of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    /// `Retry-After` as a wait from now: delay-seconds, or an HTTP date (past dates are zero).
    pub(crate) retry_after: Option<Duration>,
    /// At most [`BODY_LIMIT`] bytes of the body.
    pub(crate) body: Bytes,
    /// Whether the body was longer than what `body` holds.
    pub(crate) truncated: bool,
}

impl Response {
    pub(crate) fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The body as text for a log line or a report: lossy UTF-8, control characters replaced,
    /// at most `max` characters.
    pub(crate) fn body_text(&self, max: usize) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(max)
            .collect()
    }
}

/// Why a request got no answer. An answer with any status, 5xx included, is a [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SendError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("I/O: {0}")]
    Io(String),
}

impl SendError {
    /// Whether sending again may succeed. A bad URL and a TLS failure (an unknown issuer, a
    /// name mismatch, a protocol error) stay as they are until someone changes the
    /// configuration: retrying them only repeats the failure. Timeouts, refused or reset
    /// connections and broken streams are what retries are for.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            SendError::InvalidUrl { .. } | SendError::Tls(_) => false,
            SendError::Timeout(_) | SendError::Connect(_) | SendError::Io(_) => true,
        }
    }

    /// A short, fixed name for metrics labels and reports.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            SendError::InvalidUrl { .. } => "invalid_url",
            SendError::Timeout(_) => "timeout",
            SendError::Connect(_) => "connect",
            SendError::Tls(_) => "tls",
            SendError::Io(_) => "io",
        }
    }
}

impl HttpClient {
    /// Builds the client. With [`Tls::Platform`], reads the platform's roots now (once per
    /// process) and refuses when there are none.
    pub(crate) fn new(tls: Tls) -> Result<Self, ClientError> {
        let roots = match tls {
            Tls::Platform => Some(platform_roots()?),
            #[cfg(test)]
            Tls::Roots(certs) => {
                let mut store = RootCertStore::empty();
                let (added, _ignored) = store.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(ClientError::NoRoots {
                        detail: String::new(),
                    });
                }
                Some(store)
            }
            Tls::Off => None,
        };
        let has_tls = roots.is_some();
        // With TLS off, the rustls config still exists (hyper-rustls wants one) but trusts
        // nothing, and `post` refuses https:// before it is used.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.unwrap_or_else(RootCertStore::empty))
        .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(HttpClient {
            inner,
            tls: has_tls,
            user_agent: HeaderValue::from_static(concat!(
                "endcall-sidecar/",
                env!("CARGO_PKG_VERSION")
            )),
        })
    }

    /// POSTs `body` to `url` with `headers` (a `User-Agent` is added unless given), and reads
    /// the answer's status, `Retry-After` and the first [`BODY_LIMIT`] bytes of its body, all
    /// within `timeout`. Any status is a `Response`: what counts as success is the caller's.
    pub(crate) async fn post(
        &self,
        url: &Uri,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        self.check_url(url)?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.clone();
        *request.headers_mut() = headers;
        if !request.headers().contains_key(header::USER_AGENT) {
            request
                .headers_mut()
                .insert(header::USER_AGENT, self.user_agent.clone());
        }
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(SendError::Timeout(timeout)),
        }
    }

    fn check_url(&self, url: &Uri) -> Result<(), SendError> {
        let invalid = |reason| SendError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let https = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(invalid("the scheme must be http or https")),
            None => return Err(invalid("an absolute URL (http:// or https://) is needed")),
        };
        if url.host().is_none_or(str::is_empty) {
            return Err(invalid("it has no host"));
        }
        if https && !self.tls {
            return Err(SendError::Tls(
                "https:// was not configured when the client was built".into(),
            ));
        }
        Ok(())
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Response, SendError> {
        let response = self.inner.request(request).await.map_err(classify)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let (body, truncated) = read_bounded(response.into_body()).await?;
        Ok(Response {
            status,
            retry_after,
            body,
            truncated,
        })
    }
}

/// Reads at most [`BODY_LIMIT`] bytes, then stops (the rest is not read: the connection is
/// then closed rather than pooled, which is right for an answer that large).
async fn read_bounded(mut body: hyper::body::Incoming) -> Result<(Bytes, bool), SendError> {
    let mut kept = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| SendError::Io(chain(&err)))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let room = BODY_LIMIT - kept.len();
        if data.len() > room {
            kept.extend_from_slice(&data[..room]);
            return Ok((kept.freeze(), true));
        }
        kept.extend_from_slice(&data);
    }
    Ok((kept.freeze(), false))
}

fn platform_roots() -> Result<RootCertStore, ClientError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let detail = found
            .errors
            .first()
            .map(|err| format!(": {err}"))
            .unwrap_or_default();
        return Err(ClientError::NoRoots { detail });
    }
    Ok(store)
}

/// Sorts hyper-util's error into a [`SendError`]: a rustls error anywhere in its chain is TLS,
/// a failure before the connection was up is connect, anything later is I/O.
fn classify(err: hyper_util::client::legacy::Error) -> SendError {
    let message = chain(&err);
    if has_rustls_error(&err) {
        SendError::Tls(message)
    } else if err.is_connect() {
        SendError::Connect(message)
    } else {
        SendError::Io(message)
    }
}

fn has_rustls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        // tokio-rustls wraps rustls' error in an io::Error, and hyper-rustls wraps that in
        // another; an io::Error's `source()` skips the error it wraps, so step into it.
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// The error and its causes, "outer: inner: innermost", skipping a cause whose text its outer
/// error already repeats.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}
