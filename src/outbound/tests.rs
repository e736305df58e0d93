//! The client against a real hyper server on 127.0.0.1:0, over plain HTTP and over TLS with a
//! CA made for the test; the retry schedule on tokio's paused clock.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use http_body_util::Full;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;

use super::test_server::{answer, test_ca, Server};
use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

#[tokio::test]
async fn posts_the_body_and_headers_and_reads_any_status() {
    let server = Server::start(None, |n, _| async move {
        match n {
            1 => answer(200, "{}"),
            2 => answer(404, r#"{"code":"not_found","msg":"room not found"}"#),
            _ => answer(503, "busy"),
        }
    })
    .await;
    let client = HttpClient::new(Tls::Off).unwrap();
    let url = server.url("http", "127.0.0.1", "/twirp/x.Y/Z");

    let ok = client
        .post(
            &url,
            json_headers(),
            Bytes::from_static(b"{\"room\":\"r\"}"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.is_success());
    assert_eq!(ok.body, Bytes::from_static(b"{}"));
    assert_eq!(ok.retry_after, None);
    assert!(!ok.truncated);

    let missing = client
        .post(&url, json_headers(), Bytes::new(), WAIT)
        .await
        .unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.body_text(100),
        r#"{"code":"not_found","msg":"room not found"}"#
    );
    let busy = client
        .post(&url, HeaderMap::new(), Bytes::new(), WAIT)
        .await
        .unwrap();
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!busy.is_success());

    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].method, http::Method::POST);
    assert_eq!(seen[0].path, "/twirp/x.Y/Z");
    assert_eq!(seen[0].body, Bytes::from_static(b"{\"room\":\"r\"}"));
    assert_eq!(seen[0].headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(seen[0].headers[header::CONTENT_LENGTH], "12");
    let agent = seen[0].headers[header::USER_AGENT].to_str().unwrap();
    assert!(agent.starts_with("endcall-sidecar/"), "{agent}");
    assert_eq!(seen[0].version, http::Version::HTTP_11);
}

#[tokio::test]
async fn a_given_user_agent_is_kept() {
    let server = Server::start(None, |_, _| async { answer(204, "") }).await;
    let client = HttpClient::new(Tls::Off).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(header::USER_AGENT, HeaderValue::from_static("mine/1"));
    let response = client
        .post(
            &server.url("http", "127.0.0.1", "/"),
            headers,
            Bytes::new(),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::NO_CONTENT);
    assert_eq!(server.seen()[0].headers[header::USER_AGENT], "mine/1");
}

#[tokio::test]
async fn retry_after_is_read_as_seconds_or_as_a_date() {
    let server = Server::start(None, |n, _| async move {
        let value = match n {
            1 => "7".to_owned(),
            2 => httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600)),
            3 => "Wed, 21 Oct 2015 07:28:00 GMT".to_owned(),
            _ => "soon".to_owned(),
        };
        http::Response::builder()
            .status(429)
            .header(header::RETRY_AFTER, value)
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await;
    let client = HttpClient::new(Tls::Off).unwrap();
    let url = server.url("http", "127.0.0.1", "/");
    let mut got = Vec::new();
    for _ in 0..4 {
        let response = client
            .post(&url, HeaderMap::new(), Bytes::new(), WAIT)
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
        got.push(response.retry_after);
    }
    assert_eq!(got[0], Some(Duration::from_secs(7)));
    // An hour ahead, less the second or so the date format and the exchange lose.
    let in_an_hour = got[1].unwrap();
    assert!(
        in_an_hour <= Duration::from_secs(3600) && in_an_hour >= Duration::from_secs(3590),
        "{in_an_hour:?}"
    );
    assert_eq!(got[2], Some(Duration::ZERO), "a date in the past");
    assert_eq!(got[3], None, "not a Retry-After value");
}

#[test]
fn retry_after_parsing() {
    let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
    let parse = |text: &'static str| parse_retry_after(&HeaderValue::from_static(text), now);
    assert_eq!(parse("120"), Some(Duration::from_secs(120)));
    assert_eq!(parse(" 5 "), Some(Duration::from_secs(5)));
    assert_eq!(parse("0"), Some(Duration::ZERO));
    assert_eq!(
        parse("99999999999999999999999"),
        Some(Duration::from_secs(u64::MAX))
    );
    assert_eq!(
        parse("Wed, 21 Oct 2015 07:29:30 GMT"),
        Some(Duration::from_secs(90))
    );
    // RFC 850 and asctime forms are HTTP dates too.
    assert_eq!(
        parse("Wednesday, 21-Oct-15 07:28:10 GMT"),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        parse("Wed Oct 21 07:28:20 2015"),
        Some(Duration::from_secs(20))
    );
    assert_eq!(parse("Tue, 20 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
    for bad in ["", "-1", "1.5", "soon", "Wed, 32 Oct 2015 07:28:00 GMT"] {
        assert_eq!(parse(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn the_body_kept_is_bounded() {
    let server = Server::start(None, |_, _| async {
        http::Response::builder()
            .status(500)
            .body(Full::new(Bytes::from(vec![b'x'; 10 * 1024])))
            .unwrap()
    })
    .await;
    let client = HttpClient::new(Tls::Off).unwrap();
    let response = client
        .post(
            &server.url("http", "127.0.0.1", "/"),
            HeaderMap::new(),
            Bytes::new(),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.body.len(), BODY_LIMIT);
    assert!(response.truncated);
    assert_eq!(response.body_text(10), "xxxxxxxxxx");
}

#[test]
fn body_text_is_printable() {
    let response = Response {
        status: StatusCode::UNAUTHORIZED,
        retry_after: None,
        body: Bytes::from_static(b"bad\ntoken\x1b[31m \xff"),
        truncated: false,
    };
    assert_eq!(response.body_text(100), "bad token [31m \u{fffd}");
    assert_eq!(response.body_text(3), "bad");
}

/// An answer that never comes: the request ends at its timeout. On the paused clock, which
/// jumps to the deadline as soon as nothing else can run.
#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_times_out() {
    let server = Server::start(None, |_, _| async {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await;
    let client = HttpClient::new(Tls::Off).unwrap();
    let started = tokio::time::Instant::now();
    let err = client
        .post(
            &server.url("http", "127.0.0.1", "/"),
            HeaderMap::new(),
            Bytes::new(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert_eq!(err, SendError::Timeout(Duration::from_secs(10)));
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(err.is_retryable());
    assert_eq!(err.kind(), "timeout");
    assert_eq!(err.to_string(), "no answer within 10s");
}

#[tokio::test]
async fn a_refused_connection_is_a_retryable_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let client = HttpClient::new(Tls::Off).unwrap();
    let url: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
    let err = client
        .post(&url, HeaderMap::new(), Bytes::new(), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Connect(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test]
async fn urls_other_than_absolute_http_or_https_are_refused() {
    let client = HttpClient::new(Tls::Off).unwrap();
    for (url, reason) in [
        ("ftp://example.com/x", "the scheme must be http or https"),
        (
            "/twirp/x",
            "an absolute URL (http:// or https://) is needed",
        ),
    ] {
        let err = client
            .post(&url.parse().unwrap(), HeaderMap::new(), Bytes::new(), WAIT)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            SendError::InvalidUrl {
                url: url.to_owned(),
                reason
            }
        );
        assert!(!err.is_retryable());
    }
    let err = client
        .post(
            &"https://example.com/".parse().unwrap(),
            HeaderMap::new(),
            Bytes::new(),
            WAIT,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Tls(_)), "{err:?}");
}

#[test]
fn tls_is_needed_only_for_https_urls() {
    let http: Uri = "http://livekit:7880".parse().unwrap();
    let https: Uri = "https://hooks.example.com/".parse().unwrap();
    assert!(matches!(Tls::for_urls([&http]), Tls::Off));
    assert!(matches!(Tls::for_urls([&http, &https]), Tls::Platform));
    assert!(matches!(Tls::for_urls([]), Tls::Off));
}

#[test]
fn roots_that_hold_no_certificate_are_refused() {
    let err =
        HttpClient::new(Tls::Roots(vec![CertificateDer::from(b"junk".to_vec())])).unwrap_err();
    assert!(err.to_string().contains("SSL_CERT_FILE"), "{err}");
}

#[tokio::test]
async fn https_with_a_trusted_ca_negotiates_http2() {
    let ca = test_ca("outbound test CA");
    let server = Server::start(Some(ca.server.clone()), |_, _| async { answer(200, "ok") }).await;
    let client = HttpClient::new(Tls::Roots(vec![ca.ca.clone()])).unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let response = client
            .post(
                &server.url("https", host, "/hook"),
                json_headers(),
                Bytes::from_static(b"{}"),
                WAIT,
            )
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.body, Bytes::from_static(b"ok"));
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path, "/hook");
    assert_eq!(seen[0].version, http::Version::HTTP_2);
    assert_eq!(seen[0].body, Bytes::from_static(b"{}"));
}

#[tokio::test]
async fn https_with_an_untrusted_ca_is_a_tls_error_that_is_not_retried() {
    let ca = test_ca("outbound test CA");
    let other = test_ca("someone else's CA");
    let server = Server::start(Some(ca.server.clone()), |_, _| async { answer(200, "ok") }).await;
    let client = HttpClient::new(Tls::Roots(vec![other.ca.clone()])).unwrap();
    let err = client
        .post(
            &server.url("https", "localhost", "/"),
            HeaderMap::new(),
            Bytes::new(),
            WAIT,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Tls(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn plain_http_to_a_tls_server_is_an_io_error() {
    let ca = test_ca("outbound test CA");
    let server = Server::start(Some(ca.server.clone()), |_, _| async { answer(200, "ok") }).await;
    let client = HttpClient::new(Tls::Off).unwrap();
    let err = client
        .post(
            &server.url("http", "127.0.0.1", "/"),
            HeaderMap::new(),
            Bytes::new(),
            WAIT,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, SendError::Io(_) | SendError::Connect(_)),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

// The retry schedule.

const POLICY: RetryPolicy = RetryPolicy {
    first: Duration::from_secs(1),
    cap: Duration::from_secs(30),
    retry_for: Duration::from_secs(300),
};

#[test]
fn jitter_is_reproducible_from_its_seed_and_stays_in_range() {
    let mut a = Jitter::seeded(42);
    let mut b = Jitter::seeded(42);
    let max = Duration::from_millis(1500);
    let draws: Vec<_> = (0..1000).map(|_| a.up_to(max)).collect();
    assert_eq!(draws, (0..1000).map(|_| b.up_to(max)).collect::<Vec<_>>());
    assert!(draws.iter().all(|d| *d <= max));
    // Spread over the range, not stuck at one end.
    assert!(draws.iter().any(|d| *d < max / 4));
    assert!(draws.iter().any(|d| *d > max * 3 / 4));
    assert_ne!(
        draws,
        (0..1000)
            .map(|_| Jitter::seeded(43).up_to(max))
            .collect::<Vec<_>>()
    );
    assert_eq!(Jitter::seeded(7).up_to(Duration::ZERO), Duration::ZERO);
    assert!(Jitter::seeded(7).up_to(Duration::MAX) <= Duration::MAX);
}

#[test]
fn the_ceiling_doubles_up_to_the_cap() {
    // The largest of many draws approaches each attempt's ceiling: 1, 2, 4, 8, 16, 30, 30 s.
    let mut jitter = Jitter::seeded(1);
    let ceilings = [1, 2, 4, 8, 16, 30, 30, 30];
    for (attempts, ceiling) in (1u32..).zip(ceilings) {
        let ceiling = Duration::from_secs(ceiling);
        let largest = (0..2000)
            .map(|_| {
                POLICY
                    .delay(attempts, Duration::ZERO, None, &mut jitter)
                    .unwrap()
            })
            .max()
            .unwrap();
        assert!(largest <= ceiling, "attempt {attempts}: {largest:?}");
        assert!(
            largest >= ceiling * 99 / 100,
            "attempt {attempts}: {largest:?}"
        );
    }
    // No overflow however many attempts.
    assert!(POLICY
        .delay(u32::MAX, Duration::ZERO, None, &mut jitter)
        .is_some_and(|d| d <= POLICY.cap));
}

#[test]
fn retry_after_is_honoured_and_retry_for_bounds_everything() {
    let mut jitter = Jitter::seeded(3);
    // A longer Retry-After wins over the jittered wait.
    let wait = POLICY
        .delay(
            1,
            Duration::ZERO,
            Some(Duration::from_secs(20)),
            &mut jitter,
        )
        .unwrap();
    assert_eq!(wait, Duration::from_secs(20));
    // A shorter one does not shorten the backoff below the jittered wait.
    let mut a = Jitter::seeded(9);
    let mut b = Jitter::seeded(9);
    assert_eq!(
        POLICY.delay(6, Duration::ZERO, Some(Duration::ZERO), &mut a),
        POLICY.delay(6, Duration::ZERO, None, &mut b)
    );
    // A wait past retry_for gives up, Retry-After or not.
    assert_eq!(
        POLICY.delay(
            2,
            Duration::from_secs(290),
            Some(Duration::from_secs(11)),
            &mut jitter
        ),
        None
    );
    assert_eq!(
        POLICY.delay(2, Duration::from_secs(301), None, &mut jitter),
        None
    );
    assert!(POLICY
        .delay(
            2,
            Duration::from_secs(290),
            Some(Duration::from_secs(10)),
            &mut jitter
        )
        .is_some());
}

/// A request that never succeeds, retried on the paused clock: the attempts start within
/// `retry_for` of the first, and the schedule is the same for the same seed.
#[tokio::test(start_paused = true)]
async fn backoff_gives_up_after_retry_for() {
    async fn run(seed: u64) -> Vec<Duration> {
        let mut backoff = Backoff::new(POLICY, Jitter::seeded(seed));
        let first = tokio::time::Instant::now();
        let mut starts = Vec::new();
        loop {
            backoff.attempt();
            starts.push(first.elapsed());
            // Each attempt takes 2 s to fail.
            tokio::time::sleep(Duration::from_secs(2)).await;
            match backoff.next_delay(None) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => break,
            }
        }
        assert_eq!(backoff.attempts() as usize, starts.len());
        starts
    }
    let starts = run(5).await;
    assert_eq!(starts, run(5).await);
    assert!(starts.len() >= 10, "{starts:?}");
    assert!(
        starts.iter().all(|at| *at <= POLICY.retry_for),
        "{starts:?}"
    );
    // The last attempt leaves less than one capped wait (plus its own 2 s) unused.
    let last = *starts.last().unwrap();
    assert!(
        last + POLICY.cap + Duration::from_secs(2) > POLICY.retry_for,
        "{starts:?}"
    );
}
