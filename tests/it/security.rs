//! The optional security, end to end: bearer tokens (with health exempt or not), TLS and mutual
//! TLS, against the real server on 127.0.0.1:0 (or a Unix socket) with real tonic clients.

use std::io::Write as _;

use endcall_sidecar::{
    probe,
    proto::v1::{end_call_service_client::EndCallServiceClient, GetToolRequest},
    ListenAddr,
};
use endcall_testkit::{pki::Pki, *};
use tonic::{
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code, Request, Status,
};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const TOKEN: &str = "correct-horse-battery-staple";

fn token_file(token: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{token}").unwrap();
    file
}

type Bearer = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;

/// An interceptor sending `authorization: Bearer <token>`, or nothing for `None`.
fn bearer(token: Option<&str>) -> Bearer {
    let value = token.map(|t| MetadataValue::try_from(format!("Bearer {t}")).unwrap());
    Box::new(move |mut request: Request<()>| {
        if let Some(value) = &value {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    })
}

fn api(
    channel: Channel,
    token: Option<&str>,
) -> EndCallServiceClient<InterceptedService<Channel, Bearer>> {
    EndCallServiceClient::with_interceptor(channel, bearer(token))
}

fn health(
    channel: Channel,
    token: Option<&str>,
) -> HealthClient<InterceptedService<Channel, Bearer>> {
    HealthClient::with_interceptor(channel, bearer(token))
}

async fn health_check(channel: Channel, token: Option<&str>) -> Result<ServingStatus, Status> {
    let response = health(channel, token)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status())
}

async fn start_with_token(extra: &[&str]) -> (TestServer, tempfile::NamedTempFile) {
    let file = token_file(TOKEN);
    let path = file.path().display().to_string();
    let mut flags = vec!["--auth-token-file", path.as_str()];
    flags.extend_from_slice(extra);
    (TestServer::start(&flags).await, file)
}

#[tokio::test]
async fn a_call_without_a_token_is_unauthenticated() {
    let (server, _token) = start_with_token(&[]).await;
    let status = api(server.channel().await, None)
        .end_call(end_call("s", "S"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "missing authorization metadata: expected 'authorization: Bearer <token>'"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_unauthenticated_and_not_echoed() {
    let (server, _token) = start_with_token(&[]).await;
    for wrong in [
        "correct-horse-battery-stapl",
        "nope",
        "correct-horse-battery-staple2",
    ] {
        let status = api(server.channel().await, Some(wrong))
            .end_call(end_call("s", "S"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{wrong}");
        assert_eq!(status.message(), "invalid bearer token");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_right_token_reaches_every_rpc_including_watch_streams() {
    let (server, _token) = start_with_token(&[]).await;
    let mut client = api(server.channel().await, Some(TOKEN));
    client.end_call(end_call("s", "S")).await.unwrap();
    client.get_tool(GetToolRequest::default()).await.unwrap();
    let mut stream = client
        .watch_session(watch("s", 0))
        .await
        .unwrap()
        .into_inner();
    client.on_speech_created(created("s", "S")).await.unwrap();
    client.on_speech_done(done("s", "S")).await.unwrap();
    let directive = next(&mut stream).await;
    assert!(
        matches!(kind(&directive), Kind::Shutdown(_)),
        "{directive:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn health_needs_no_token_when_exempt_which_is_the_default() {
    let (server, _token) = start_with_token(&[]).await;
    let status = health_check(server.channel().await, None).await.unwrap();
    assert_eq!(status, ServingStatus::Serving);
    server.stop().await;
}

#[tokio::test]
async fn health_needs_the_token_when_not_exempt() {
    let (server, _token) = start_with_token(&["--auth-health-exempt", "false"]).await;
    let status = health_check(server.channel().await, None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = health_check(server.channel().await, Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(status, ServingStatus::Serving);
    server.stop().await;
}

#[tokio::test]
async fn reflection_needs_the_token_even_when_health_is_exempt() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let (server, _token) = start_with_token(&[]).await;
    let request = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let refused = ServerReflectionClient::with_interceptor(server.channel().await, bearer(None))
        .server_reflection_info(tokio_stream::iter([request()]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut allowed =
        ServerReflectionClient::with_interceptor(server.channel().await, bearer(Some(TOKEN)));
    let mut responses = allowed
        .server_reflection_info(tokio_stream::iter([request()]))
        .await
        .unwrap()
        .into_inner();
    assert!(responses.message().await.unwrap().is_some());
    server.stop().await;
}

fn tls_flags(pki: &Pki, mtls: bool) -> Vec<String> {
    let mut flags = vec![
        "--tls-cert".to_owned(),
        pki.arg("server.pem"),
        "--tls-key".to_owned(),
        pki.arg("server.key"),
    ];
    if mtls {
        flags.extend(["--tls-client-ca".to_owned(), pki.arg("client-ca.pem")]);
    }
    flags
}

async fn start_tls(pki: &Pki, mtls: bool) -> TestServer {
    let flags = tls_flags(pki, mtls);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestServer::start(&flags).await
}

/// A TLS client trusting `ca`, presenting `identity` ("client" reads client.pem/client.key).
fn client_tls(pki: &Pki, ca: &str, identity: Option<&str>) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(pki.path(ca)).unwrap()))
        .domain_name("localhost");
    if let Some(name) = identity {
        config = config.identity(Identity::from_pem(
            std::fs::read(pki.path(&format!("{name}.pem"))).unwrap(),
            std::fs::read(pki.path(&format!("{name}.key"))).unwrap(),
        ));
    }
    config
}

/// Connects and makes one call; the error text of whichever step failed.
async fn call_over_tls(addr: &ListenAddr, tls: ClientTlsConfig) -> Result<(), String> {
    let channel = probe::connect_with(addr, PATIENCE, Some(tls))
        .await
        .map_err(|e| endcall_sidecar::probe::error_chain(&e))?;
    EndCallServiceClient::new(channel)
        .end_call(end_call("tls", "S"))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(())
}

#[tokio::test]
async fn a_tls_client_trusting_the_ca_connects() {
    let pki = Pki::new();
    let server = start_tls(&pki, false).await;
    call_over_tls(&server.addr, client_tls(&pki, "ca.pem", None))
        .await
        .unwrap();
    // The certificate names 127.0.0.1 too: the default server name works without an override.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(pki.path("ca.pem")).unwrap(),
        ))
        .domain_name(probe::default_server_name(&server.addr));
    call_over_tls(&server.addr, tls).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_tls_client_trusting_another_ca_fails() {
    let pki = Pki::new();
    let server = start_tls(&pki, false).await;
    let err = call_over_tls(&server.addr, client_tls(&pki, "other-ca.pem", None))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn a_plaintext_client_cannot_talk_to_a_tls_server() {
    let pki = Pki::new();
    let server = start_tls(&pki, false).await;
    // Either the connection or the first call fails; neither may succeed.
    let outcome = match probe::connect(&server.addr, PATIENCE).await {
        Ok(channel) => EndCallServiceClient::new(channel)
            .end_call(end_call("plain", "S"))
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
        Err(err) => Err(err.to_string()),
    };
    assert!(outcome.is_err());
    server.stop().await;
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new();
    let server = start_tls(&pki, true).await;
    call_over_tls(&server.addr, client_tls(&pki, "ca.pem", None))
        .await
        .unwrap_err();
    // The same server takes the same client once it presents its certificate.
    call_over_tls(&server.addr, client_tls(&pki, "ca.pem", Some("client")))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn mtls_refuses_a_client_certificate_from_another_ca() {
    let pki = Pki::new();
    let server = start_tls(&pki, true).await;
    call_over_tls(
        &server.addr,
        client_tls(&pki, "ca.pem", Some("other-client")),
    )
    .await
    .unwrap_err();
    call_over_tls(&server.addr, client_tls(&pki, "ca.pem", Some("client")))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn mtls_accepts_a_client_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let server = start_tls(&pki, true).await;
    call_over_tls(&server.addr, client_tls(&pki, "ca.pem", Some("client")))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn tls_and_a_token_over_a_unix_socket() {
    let pki = Pki::new();
    let socket = pki.dir().join("endcall.sock");
    let listen = format!("unix:{}", socket.display());
    let token = token_file(TOKEN);
    let mut flags = tls_flags(&pki, true);
    flags.extend([
        "--auth-token-file".to_owned(),
        token.path().display().to_string(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = TestServer::start_on(&listen, &flags).await;

    let tls = client_tls(&pki, "ca.pem", Some("client"));
    let channel = probe::connect_with(&server.addr, PATIENCE, Some(tls.clone()))
        .await
        .unwrap();
    let status = api(channel.clone(), None)
        .end_call(end_call("u", "S"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    api(channel, Some(TOKEN))
        .end_call(end_call("u", "S"))
        .await
        .unwrap();

    // The probe's own path: TLS, client certificate and token from its flags.
    let security = probe::Security {
        token: endcall_sidecar::probe::Token::load(&endcall_sidecar::probe::TokenArgs {
            auth_token: None,
            auth_token_file: Some(token.path().to_owned()),
        })
        .unwrap(),
        tls: Some(tls),
    };
    let status = probe::check(&server.addr, "", PATIENCE, &security)
        .await
        .unwrap();
    assert_eq!(status, ServingStatus::Serving);
    // Without the client certificate, the probe fails and says so.
    let no_cert = probe::Security {
        tls: Some(client_tls(&pki, "ca.pem", None)),
        ..security
    };
    assert!(probe::check(&server.addr, "", PATIENCE, &no_cert)
        .await
        .is_err());
    server.stop().await;
}
