//! `DeleteRoom` against a real hyper server on 127.0.0.1:0 that answers as LiveKit's server
//! does (the answers' bodies are LiveKit's: Twirp JSON errors, and the plain-text 401 of its
//! auth middleware, which repeats the token). The Python suite's stand-in checks the same
//! requests with LiveKit's own token verifier (clients/python/tests/livekit_standin.py).

use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use http::header;
use ring::hmac;

use super::*;
use crate::outbound::{
    test_server::{answer, Answer, Server},
    Tls,
};

const KEY: &str = "APIstandin";
const SECRET: &str = "a-secret-of-at-least-32-bytes-for-hs256";

fn service(server: &Server, path: &str, request_timeout: Duration) -> RoomService {
    let settings = Settings::load(&LiveKitArgs {
        livekit_url: Some(server.url("ws", "127.0.0.1", path).to_string()),
        livekit_api_key: Some(KEY.into()),
        livekit_api_secret: Some(SECRET.into()),
        livekit_request_timeout: request_timeout,
        ..LiveKitArgs::default()
    })
    .unwrap();
    RoomService::from_config(settings.as_ref(), &HttpClient::new(Tls::Off).unwrap()).unwrap()
}

/// Short waits on the real clock (the server's I/O would let a paused clock jump to the
/// request timeout).
fn quick(retry_for: Duration) -> RetryPolicy {
    RetryPolicy {
        first: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        retry_for,
    }
}

async fn delete(service: &RoomService, room: &str, retry_for: Duration) -> TeardownAttempt {
    service
        .delete_room_with(room, quick(retry_for), Jitter::seeded(1))
        .await
}

fn twirp(status: u16, code: &str, msg: &str) -> Answer {
    let body = serde_json::json!({ "code": code, "msg": msg }).to_string();
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap()
}

/// The token's claims, after checking its HS256 signature with the secret.
fn verified_claims(authorization: &str) -> serde_json::Value {
    let token = authorization.strip_prefix("Bearer ").unwrap();
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    hmac::verify(
        &key,
        signed.as_bytes(),
        &URL_SAFE_NO_PAD.decode(signature).unwrap(),
    )
    .unwrap();
    let claims = signed.split_once('.').unwrap().1;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap()
}

#[tokio::test]
async fn a_room_is_deleted_with_the_request_livekit_expects() {
    let server = Server::start(None, |_, _| async { answer(200, "{}") }).await;
    let service = service(&server, "/", Duration::from_secs(10));
    assert_eq!(
        delete(&service, "call-1 \"quoted\"", Duration::ZERO).await,
        TeardownAttempt {
            result: TeardownResult::Deleted,
            attempts: 1
        }
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.path, "/twirp/livekit.RoomService/DeleteRoom");
    assert_eq!(request.headers[header::CONTENT_TYPE], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body, serde_json::json!({"room": "call-1 \"quoted\""}));

    let claims = verified_claims(request.headers[header::AUTHORIZATION].to_str().unwrap());
    assert_eq!(claims["iss"], KEY);
    assert_eq!(claims["video"], serde_json::json!({"roomCreate": true}));
    let nbf = claims["nbf"].as_u64().unwrap();
    let exp = claims["exp"].as_u64().unwrap();
    assert_eq!(exp - nbf, TOKEN_TTL.as_secs());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(nbf <= now && now <= nbf + 60, "nbf {nbf}, now {now}");

    let id = request.headers["x-livekit-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(&id[14..15], "4", "a version 4 UUID: {id}");
}

#[tokio::test]
async fn a_base_path_in_the_url_is_kept() {
    let server = Server::start(None, |_, _| async { answer(200, "{}") }).await;
    let service = service(&server, "/livekit/", Duration::from_secs(10));
    assert_eq!(
        service.delete_room_url().path(),
        "/livekit/twirp/livekit.RoomService/DeleteRoom"
    );
    let attempt = delete(&service, "r", Duration::ZERO).await;
    assert_eq!(attempt.result, TeardownResult::Deleted);
    assert_eq!(
        server.seen()[0].path,
        "/livekit/twirp/livekit.RoomService/DeleteRoom"
    );
}

/// LiveKit answers a room it does not know with Twirp's not_found (its `ErrRoomNotFound`).
#[tokio::test]
async fn a_room_livekit_does_not_know_is_already_gone() {
    let server = Server::start(None, |_, _| async {
        twirp(404, "not_found", "requested room does not exist")
    })
    .await;
    let service = service(&server, "", Duration::from_secs(10));
    assert_eq!(
        delete(&service, "gone", Duration::from_secs(5)).await,
        TeardownAttempt {
            result: TeardownResult::AlreadyGone,
            attempts: 1
        }
    );
}

#[tokio::test]
async fn a_404_that_is_not_twirps_not_found_is_a_wrong_url() {
    let server = Server::start(None, |_, _| async {
        twirp(
            404,
            "bad_route",
            "no handler for path \"/twirp/livekit.RoomService/DeleteRoom\"",
        )
    })
    .await;
    let service = service(&server, "", Duration::from_secs(10));
    let attempt = delete(&service, "r", Duration::from_secs(5)).await;
    assert_eq!(attempt.attempts, 1);
    let TeardownResult::Failed { error, fatal } = attempt.result else {
        panic!("{attempt:?}")
    };
    assert!(fatal);
    assert!(
        error.starts_with("LiveKit DeleteRoom: HTTP 404 bad_route: no handler for path"),
        "{error}"
    );
    assert!(error.contains("--livekit-url"), "{error}");
}

/// LiveKit's auth middleware answers a bad token with a plain-text 401 that repeats the token:
/// the error names the variables to check and never carries the token.
#[tokio::test]
async fn a_refused_token_is_fatal_and_never_repeated() {
    let server = Server::start(None, |_, request| async move {
        let token = request.headers[header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap()
            .to_owned();
        http::Response::builder()
            .status(401)
            .body(http_body_util::Full::new(Bytes::from(format!(
                "invalid token: {token}, error: go-jose/go-jose: error in cryptographic primitive"
            ))))
            .unwrap()
    })
    .await;
    let service = service(&server, "", Duration::from_secs(10));
    let attempt = delete(&service, "r", Duration::from_secs(5)).await;
    assert_eq!(attempt.attempts, 1, "no retry");
    let TeardownResult::Failed { error, fatal } = attempt.result else {
        panic!("{attempt:?}")
    };
    assert!(fatal);
    assert!(
        error.starts_with(
            "LiveKit DeleteRoom: HTTP 401: invalid token: <token>, error: go-jose/go-jose: \
             error in cryptographic primitive"
        ),
        "{error}"
    );
    assert!(error.contains("LIVEKIT_API_SECRET"), "{error}");
    let sent = server.seen()[0].headers[header::AUTHORIZATION].clone();
    let token = sent.to_str().unwrap().strip_prefix("Bearer ").unwrap();
    assert!(!error.contains(token), "{error}");
}

#[tokio::test]
async fn a_missing_grant_or_a_denial_is_fatal() {
    let server = Server::start(None, |n, _| async move {
        match n {
            1 => twirp(401, "unauthenticated", "permissions denied"),
            _ => twirp(403, "permission_denied", "permissions denied"),
        }
    })
    .await;
    let service = service(&server, "", Duration::from_secs(10));
    for expected in [
        "LiveKit DeleteRoom: HTTP 401 unauthenticated: permissions denied",
        "LiveKit DeleteRoom: HTTP 403 permission_denied: permissions denied",
    ] {
        let attempt = delete(&service, "r", Duration::from_secs(5)).await;
        assert_eq!(attempt.attempts, 1);
        let TeardownResult::Failed { error, fatal } = attempt.result else {
            panic!("{attempt:?}")
        };
        assert!(fatal);
        assert!(error.starts_with(expected), "{error}");
    }
}

#[tokio::test]
async fn unavailable_twice_then_deleted_takes_three_attempts_with_one_request_id() {
    let server = Server::start(None, |n, _| async move {
        match n {
            1 | 2 => twirp(503, "unavailable", "no nodes available"),
            _ => answer(200, "{}"),
        }
    })
    .await;
    let service = service(&server, "", Duration::from_secs(10));
    assert_eq!(
        delete(&service, "r", Duration::from_secs(5)).await,
        TeardownAttempt {
            result: TeardownResult::Deleted,
            attempts: 3
        }
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    let ids: Vec<_> = seen
        .iter()
        .map(|s| s.headers["x-livekit-request-id"].clone())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // Each attempt is signed afresh (the claims verify every time).
    for request in &seen {
        verified_claims(request.headers[header::AUTHORIZATION].to_str().unwrap());
    }
}

#[tokio::test]
async fn rate_limits_and_request_timeouts_are_retried() {
    let server = Server::start(None, |n, _| async move {
        match n {
            1 => twirp(429, "resource_exhausted", "slow down"),
            2 => twirp(408, "deadline_exceeded", "took too long"),
            _ => answer(200, "{}"),
        }
    })
    .await;
    let service = service(&server, "", Duration::from_secs(10));
    let attempt = delete(&service, "r", Duration::from_secs(5)).await;
    assert_eq!(attempt.result, TeardownResult::Deleted);
    assert_eq!(attempt.attempts, 3);
}

#[tokio::test]
async fn other_client_errors_are_fatal() {
    let server = Server::start(None, |_, _| async {
        twirp(400, "malformed", "the json request could not be decoded")
    })
    .await;
    let service = service(&server, "", Duration::from_secs(10));
    let attempt = delete(&service, "r", Duration::from_secs(5)).await;
    assert_eq!(attempt.attempts, 1);
    assert!(
        matches!(&attempt.result, TeardownResult::Failed { error, fatal: true }
            if error == "LiveKit DeleteRoom: HTTP 400 malformed: the json request could not be decoded"),
        "{attempt:?}"
    );
}

#[tokio::test]
async fn retries_stop_when_retry_for_is_spent() {
    let server = Server::start(None, |_, _| async {
        answer(502, "<html>bad gateway</html>")
    })
    .await;
    let service = service(&server, "", Duration::from_secs(10));
    let attempt = delete(&service, "r", Duration::from_millis(300)).await;
    assert!(attempt.attempts >= 3, "{attempt:?}");
    assert_eq!(server.seen().len() as u32, attempt.attempts);
    let TeardownResult::Failed { error, fatal } = attempt.result else {
        panic!("{attempt:?}")
    };
    assert!(!fatal);
    assert!(
        error.starts_with("LiveKit DeleteRoom: HTTP 502: <html>bad gateway</html> (gave up after "),
        "{error}"
    );
    assert!(error.ends_with("--livekit-retry-for 300ms)"), "{error}");
}

#[tokio::test]
async fn a_livekit_that_never_answers_times_out_and_is_retried() {
    let server = Server::start(None, |_, _| async {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await;
    let service = service(&server, "", Duration::from_millis(100));
    let attempt = delete(&service, "r", Duration::from_millis(150)).await;
    assert!(attempt.attempts >= 2, "{attempt:?}");
    let TeardownResult::Failed { error, fatal } = attempt.result else {
        panic!("{attempt:?}")
    };
    assert!(!fatal);
    assert!(
        error.starts_with("LiveKit DeleteRoom: no answer within 100ms (gave up after"),
        "{error}"
    );
}

#[tokio::test]
async fn a_livekit_that_is_down_is_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let settings = Settings::load(&LiveKitArgs {
        livekit_url: Some(format!("http://127.0.0.1:{port}")),
        livekit_api_key: Some(KEY.into()),
        livekit_api_secret: Some(SECRET.into()),
        ..LiveKitArgs::default()
    })
    .unwrap()
    .unwrap();
    let service = RoomService::new(&settings, HttpClient::new(Tls::Off).unwrap());
    let attempt = delete(&service, "r", Duration::from_millis(100)).await;
    assert!(attempt.attempts >= 2, "{attempt:?}");
    assert!(
        matches!(&attempt.result, TeardownResult::Failed { error, fatal: false }
            if error.starts_with("LiveKit DeleteRoom: cannot connect")),
        "{attempt:?}"
    );
}

#[tokio::test]
async fn an_empty_room_name_sends_nothing() {
    let server = Server::start(None, |_, _| async { answer(200, "{}") }).await;
    let service = service(&server, "", Duration::from_secs(10));
    let attempt = delete(&service, "", Duration::from_secs(5)).await;
    assert_eq!(attempt.attempts, 0);
    assert!(matches!(
        attempt.result,
        TeardownResult::Failed { fatal: true, .. }
    ));
    assert!(server.seen().is_empty());
}

#[test]
fn without_settings_there_is_no_service() {
    let http = HttpClient::new(Tls::Off).unwrap();
    assert!(RoomService::from_config(None, &http).is_none());
}

#[test]
fn request_ids_are_version_4_uuids() {
    let mut jitter = Jitter::seeded(7);
    let a = request_id(&mut jitter);
    let b = request_id(&mut jitter);
    assert_ne!(a, b);
    let a = a.to_str().unwrap();
    let groups: Vec<_> = a.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{a}");
    assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    assert_eq!(&a[14..15], "4");
    assert!("89ab".contains(&a[19..20]), "{a}");
}
