//! `endcall-sidecar probe`: a gRPC health check for container health checks and exec probes,
//! where neither a shell nor grpcurl exists. Also the connector tests use.

use std::{process::ExitCode, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::config::{ListenAddr, ProbeArgs};

/// Opens a channel to a sidecar over TCP or a Unix socket.
pub async fn connect(
    addr: &ListenAddr,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    match addr {
        ListenAddr::Tcp(socket) => {
            Endpoint::from_shared(format!("http://{socket}"))?
                .connect_timeout(timeout)
                .connect()
                .await
        }
        ListenAddr::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
        }
    }
}

/// The serving status of `service` at `addr` ("" is the whole server).
pub async fn check(
    addr: &ListenAddr,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, String> {
    let attempt = async {
        let channel = connect(addr, timeout)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Ok(response.into_inner().status())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
}

/// Runs the subcommand: prints the outcome, exits 0 only when SERVING.
pub async fn run(args: &ProbeArgs, listen: &ListenAddr) -> ExitCode {
    let addr = args.addr.clone().unwrap_or_else(|| listen.dialable());
    match check(&addr, &args.service, args.timeout).await {
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
