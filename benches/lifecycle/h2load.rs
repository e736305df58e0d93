//! `h2load`: a fresh server measured by h2load (nghttp2), if installed: health Check and a
//! repeated OnSpeechCreated, from gRPC body files. h2load sees HTTP statuses only, so a real
//! client checks the same requests' gRPC status before and after the runs.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use endcall_testkit::{requests, Client};
use prost::Message as _;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::{
    load::{health_check, SESSION_SERVER_FLAGS},
    Args, Report,
};

/// A reply's outcome for a check's detail: "OK", or the status.
fn status_text<T>(reply: &Result<T, tonic::Status>) -> String {
    reply
        .as_ref()
        .map_or_else(|s| s.to_string(), |_| "OK".into())
}

fn h2load_installed() -> bool {
    Command::new("h2load")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    body
}

struct H2loadResult {
    rps: f64,
    succeeded: u64,
    ok_2xx: u64,
    /// Responses with a 3xx, 4xx or 5xx status.
    not_2xx: u64,
    /// Streams open at once (connections × streams each): at the time limit, up to this many
    /// responses can have their 200 headers counted without having completed.
    in_flight: u64,
    line: String,
}

fn run_h2load(url: &str, body: &Path, args: &Args, clients: usize) -> Result<H2loadResult, String> {
    let streams = args.concurrency.div_ceil(clients).max(1);
    let secs = args.duration.as_secs().max(1);
    let out = Command::new("h2load")
        .args([
            "-t",
            "1",
            "-c",
            &clients.to_string(),
            "-m",
            &streams.to_string(),
        ])
        .args(["-D", &secs.to_string()])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(body)
        .arg(url)
        .output()
        .map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let finished = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .ok_or_else(|| format!("no 'finished in' line: {text}"))?;
    // "finished in 10.00s, 12345.60 req/s, 1.23MB/s"
    let rps = finished
        .split(',')
        .nth(1)
        .and_then(|s| s.trim().strip_suffix(" req/s"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot parse {finished:?}"))?;
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let succeeded = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(',').find(|p| p.contains("succeeded")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // "status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx"
    let statuses: Vec<u64> = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .map(|l| {
            l.trim_start_matches("status codes:")
                .split(',')
                .filter_map(|p| p.split_whitespace().next())
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let ok_2xx = statuses.first().copied().unwrap_or(0);
    let not_2xx = statuses.iter().skip(1).sum();
    Ok(H2loadResult {
        rps,
        succeeded,
        ok_2xx,
        not_2xx,
        in_flight: (clients * streams) as u64,
        line: finished.to_owned(),
    })
}

/// Runs the section; `tonic_health_rps` is the throughput section's health rate, if it ran.
pub(crate) async fn run(args: &Args, tonic_health_rps: Option<f64>, report: &mut Report) {
    if !h2load_installed() {
        report.row(
            "h2load",
            "h2load",
            "not installed: skipped (apt-get install nghttp2-client)",
        );
        return;
    }
    // A fresh server, as for the latency runs.
    let server = &args.server.start("127.0.0.1:0", &SESSION_SERVER_FLAGS);
    let Some(url) = server.url() else { return };
    let dir = std::env::temp_dir().join(format!("endcall-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let health_body = dir.join("health.bin");
    std::fs::write(
        &health_body,
        grpc_frame(&HealthCheckRequest::default().encode_to_vec()),
    )
    .expect("write body");
    let created = requests::created("h2load-session", "reply-1");
    let created_body = dir.join("created.bin");
    std::fs::write(&created_body, grpc_frame(&created.encode_to_vec())).expect("write body");

    // The same messages through a real client first: h2load only sees HTTP 200, not the
    // gRPC status. h2load repeats OnSpeechCreated on a session that already had it, so the
    // real client sends it twice, and once more after the runs (below).
    let channel = server.channels(1).await.remove(0);
    let health_ok = health_check(&mut HealthClient::new(channel.clone())).await;
    let mut api = Client::new(channel);
    let created_ok = match api.on_speech_created(created.clone()).await {
        Ok(_) => api.on_speech_created(created.clone()).await,
        first => first,
    };
    report.check(
        "h2load bodies: the health request succeeds with a real client",
        health_ok.is_ok(),
        format!("{health_ok:?}"),
    );
    report.check(
        "h2load bodies: the OnSpeechCreated request succeeds with a real client, first and repeated",
        created_ok.is_ok(),
        status_text(&created_ok),
    );
    let clients = args.connections();
    let mut results = Vec::new();
    for (name, path, body) in [
        ("health Check", "/grpc.health.v1.Health/Check", &health_body),
        (
            "OnSpeechCreated (one session, repeated)",
            "/endcall.v1.EndCallService/OnSpeechCreated",
            &created_body,
        ),
    ] {
        let result = tokio::task::block_in_place(|| {
            run_h2load(&format!("{url}{path}"), body, args, clients)
        });
        match result {
            Ok(r) => {
                report.row("h2load", &format!("{name} req/s"), format!("{:.0}", r.rps));
                report.check(
                    &format!("h2load {name}: requests succeeded with HTTP 200"),
                    r.succeeded > 0
                        && r.not_2xx == 0
                        && r.ok_2xx >= r.succeeded
                        && r.ok_2xx - r.succeeded <= r.in_flight,
                    format!(
                        "{} succeeded, {} 2xx, {} other statuses, {} streams in flight; {}",
                        r.succeeded, r.ok_2xx, r.not_2xx, r.in_flight, r.line
                    ),
                );
                results.push(r.rps);
            }
            Err(e) => report.check(&format!("h2load {name}"), false, e),
        }
    }
    let repeated_ok = api.on_speech_created(created).await;
    report.check(
        "h2load bodies: after the runs, OnSpeechCreated still succeeds with a real client",
        repeated_ok.is_ok(),
        status_text(&repeated_ok),
    );
    if let [health, created] = results[..] {
        report.row(
            "h2load",
            "ratio OnSpeechCreated / health",
            format!("{:.3}", created / health),
        );
        if let Some(tonic) = tonic_health_rps {
            report.row(
                "h2load",
                "h2load health / tonic-client health",
                format!("{:.2}", health / tonic),
            );
        }
    }
    report.row(
        "h2load",
        "settings",
        format!(
            "-t 1 -c {clients} -m {} -D {}s, gRPC body files",
            args.concurrency.div_ceil(clients),
            args.duration.as_secs().max(1)
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
