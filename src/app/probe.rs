//! `endcall-sidecar probe`: a gRPC health check for container health checks and exec probes,
//! where neither a shell nor grpcurl exists. Also the connector tests use.

use std::{process::ExitCode, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::{
    transport::{Channel, ClientTlsConfig, Endpoint, Uri},
    Request,
};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::{
    app::config::{ListenAddr, ProbeArgs},
    grpc::auth::Token,
    grpc::tls::{self, error_chain},
};

/// Opens a plaintext channel to a sidecar over TCP or a Unix socket.
pub async fn connect(
    addr: &ListenAddr,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    connect_with(addr, timeout, None).await
}

/// The server name a certificate is checked against when none is given: the host of the
/// address, as any TLS client would, and "localhost" for a Unix socket.
pub fn default_server_name(addr: &ListenAddr) -> String {
    match addr {
        ListenAddr::Tcp(socket) => socket.ip().to_string(),
        ListenAddr::Unix(_) => "localhost".into(),
    }
}

/// Opens a channel to a sidecar over TCP or a Unix socket, with TLS when `tls` is given.
pub async fn connect_with(
    addr: &ListenAddr,
    timeout: Duration,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let with_tls = |endpoint: Endpoint| match tls.clone() {
        Some(tls) => endpoint.tls_config(tls),
        None => Ok(endpoint),
    };
    match addr {
        ListenAddr::Tcp(socket) => {
            with_tls(Endpoint::from_shared(format!("{scheme}://{socket}"))?)?
                .connect_timeout(timeout)
                .connect()
                .await
        }
        ListenAddr::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused beyond its scheme (TLS or not): the
            // connector dials the socket.
            with_tls(Endpoint::from_shared(format!("{scheme}://localhost"))?)?
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
        }
    }
}

/// How the probe reaches a server that asks for a token or TLS.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub token: Option<Token>,
    pub tls: Option<ClientTlsConfig>,
}

impl Security {
    /// Reads the probe's token and TLS files.
    pub fn load(args: &ProbeArgs, addr: &ListenAddr) -> Result<Self, String> {
        Ok(Security {
            token: Token::load(&args.token).map_err(|e| e.to_string())?,
            tls: tls::client_config(&args.tls, &default_server_name(addr))
                .map_err(|e| e.to_string())?,
        })
    }
}

/// The serving status of `service` at `addr` ("" is the whole server).
pub async fn check(
    addr: &ListenAddr,
    service: &str,
    timeout: Duration,
    security: &Security,
) -> Result<ServingStatus, String> {
    let bearer = match &security.token {
        Some(token) => Some(token.bearer().map_err(|e| format!("--auth-token: {e}"))?),
        None => None,
    };
    let attempt = async {
        let channel = connect_with(addr, timeout, security.tls.clone())
            .await
            .map_err(|e| format!("connect: {}", error_chain(&e)))?;
        let mut request = Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        if let Some(bearer) = bearer {
            request.metadata_mut().insert("authorization", bearer);
        }
        let response = HealthClient::new(channel)
            .check(request)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Ok(response.into_inner().status())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
}

/// Runs the subcommand: prints the outcome, exits 0 only when SERVING.
pub(crate) async fn run(args: &ProbeArgs, listen: &ListenAddr) -> ExitCode {
    let addr = args.addr.clone().unwrap_or_else(|| listen.dialable());
    let security = match Security::load(args, &addr) {
        Ok(security) => security,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    match check(&addr, &args.service, args.timeout, &security).await {
        Ok(ServingStatus::Serving) => {
            println!("{addr}: SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{addr}: {}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("{addr}: {err}");
            ExitCode::FAILURE
        }
    }
}
