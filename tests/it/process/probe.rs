//! The `probe` subcommand, plain and through mutual TLS with a token file.

use std::process::Command;

use endcall_testkit::process::{built_binary, Sidecar};

use super::metrics::{free_port, sample, scrape};

#[tokio::test]
async fn probe_subcommand_exits_0_when_serving_and_1_otherwise() {
    let sidecar = Sidecar::start(&[]);
    let out = Command::new(built_binary())
        .args(["probe", "--addr", &sidecar.addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));

    // The probe defaults to the listen address, as a container's HEALTHCHECK uses it.
    let out = Command::new(built_binary())
        .arg("probe")
        .env("ENDCALL_LISTEN", sidecar.addr.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    drop(sidecar);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = Command::new(built_binary())
        .args([
            "probe",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Runs `endcall-sidecar probe` with these flags and variables: (exit code, stdout + stderr).
fn run_probe(flags: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(built_binary())
        .arg("probe")
        .args(flags)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn the_binary_serves_mtls_with_a_token_file_and_the_probe_gets_through() {
    const TOKEN: &str = "probe-me-if-you-can";
    let pki = endcall_testkit::pki::Pki::new();
    let token_file = pki.path("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_file = token_file.display().to_string();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut sidecar = Sidecar::start(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server.key"),
        "--tls-client-ca",
        &pki.arg("client-ca.pem"),
        "--auth-token-file",
        &token_file,
        "--auth-health-exempt",
        "false",
        "--metrics-listen",
        &metrics,
        "--log-level",
        "debug",
    ]);
    let addr = sidecar.addr.to_string();
    let tls = [
        "--addr",
        &addr,
        "--tls-ca",
        &pki.arg("ca.pem"),
        "--tls-cert",
        &pki.arg("client.pem"),
        "--tls-key",
        &pki.arg("client.key"),
    ];

    // Everything right: TLS, client certificate, and the token from the shared variable.
    let (code, out) = run_probe(&tls, &[("ENDCALL_AUTH_TOKEN_FILE", &token_file)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("SERVING"), "{out}");
    let (code, out) = run_probe(&tls, &[("ENDCALL_AUTH_TOKEN", TOKEN)]);
    assert_eq!(code, Some(0), "{out}");

    // No token: refused, and counted.
    let (code, out) = run_probe(&tls, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("Unauthenticated: missing authorization metadata"),
        "{out}"
    );
    // A wrong token: refused without echoing it.
    let (code, out) = run_probe(&tls, &[("ENDCALL_AUTH_TOKEN", "probe-me-if-you-cant")]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("invalid bearer token"), "{out}");
    let body = scrape(port);
    assert_eq!(
        sample(
            &body,
            "endcall_requests_rejected_total",
            &[("reason", "unauthenticated")]
        ),
        Some(2.0),
        "{body}"
    );

    // No client certificate, or no TLS at all: the probe fails.
    let (code, out) = run_probe(&tls[..4], &[("ENDCALL_AUTH_TOKEN", TOKEN)]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = run_probe(&["--addr", &addr], &[("ENDCALL_AUTH_TOKEN", TOKEN)]);
    assert_eq!(code, Some(1), "{out}");
    // A probe flag naming a missing file exits 2 naming it.
    let (code, out) = run_probe(&["--addr", &addr, "--tls-ca", "/nonexistent/ca.pem"], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--tls-ca /nonexistent/ca.pem"), "{out}");

    sidecar.signal("TERM");
    assert!(sidecar.wait().await.success());
    let logs = sidecar.stderr();
    assert!(logs.contains("refused"), "{logs}");
    assert!(
        !logs.contains("probe-me-if-you-ca"),
        "a token reached the logs: {logs}"
    );
}
