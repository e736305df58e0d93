//! What the benches share: the server under test (the release binary as a child process) and
//! request builders.
#![allow(dead_code)] // each bench uses its own part

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    str::FromStr as _,
    time::Duration,
};

use endcall_sidecar::{
    config::ListenAddr,
    probe,
    proto::v1::{self as pb, end_call_service_client::EndCallServiceClient},
};
use tonic::transport::Channel;

pub type Api = EndCallServiceClient<Channel>;

// ---------------------------------------------------------------------------------------------
// The server under test.

/// Which server binary the benches start, and with what extra flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server binary (default: $ENDCALL_SIDECAR_BIN, else the one cargo built).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Extra server flags, appended to every server the bench starts (e.g. "--log-level warn").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub server_flags: String,
}

impl ServerArgs {
    pub fn bin(&self) -> PathBuf {
        self.server_bin
            .clone()
            .or_else(|| std::env::var_os("ENDCALL_SIDECAR_BIN").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_endcall-sidecar")))
    }

    /// Starts the server on `listen` with `flags` and the extra flags.
    pub fn start(&self, listen: &str, flags: &[&str]) -> Server {
        Server::start(&self.bin(), &self.server_flags, listen, flags)
    }
}

pub struct Server {
    pub child: Child,
    pub addr: ListenAddr,
}

impl Server {
    /// Starts `bin` on `listen` with `flags`, then `extra_flags` (whitespace-separated), and
    /// waits for its `listening on` line.
    pub fn start(bin: &Path, extra_flags: &str, listen: &str, flags: &[&str]) -> Server {
        let mut command = Command::new(bin);
        command.arg("--listen").arg(listen).args(flags);
        command.args(extra_flags.split_whitespace());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let addr = ListenAddr::from_str(addr).expect("listening address");
        Server { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes (VmRSS).
    pub fn rss(&self) -> u64 {
        proc_status_kb(self.pid(), "VmRSS:") * 1024
    }

    pub fn url(&self) -> Option<String> {
        match &self.addr {
            ListenAddr::Tcp(a) => Some(format!("http://{a}")),
            ListenAddr::Unix(_) => None,
        }
    }

    pub async fn channels(&self, n: usize) -> Vec<Channel> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            out.push(
                probe::connect(&self.addr, Duration::from_secs(10))
                    .await
                    .expect("connect"),
            );
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let ListenAddr::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Requests.

pub fn end_call(session: &str, speech: &str) -> pb::EndCallRequest {
    pb::EndCallRequest {
        session_id: session.to_owned(),
        speech_id: speech.to_owned(),
        options: None,
        capabilities: None,
    }
}

pub fn realtime_end_call(
    session: &str,
    speech: &str,
    reply_timeout: Duration,
) -> pb::EndCallRequest {
    pb::EndCallRequest {
        session_id: session.to_owned(),
        speech_id: speech.to_owned(),
        options: Some(pb::SessionOptions {
            reply_timeout: Some(prost_types::Duration {
                seconds: reply_timeout.as_secs() as i64,
                nanos: reply_timeout.subsec_micros() as i32 * 1000,
            }),
            ..Default::default()
        }),
        capabilities: Some(pb::ModelCapabilities {
            realtime: Some(true),
            auto_tool_reply: Some(true),
        }),
    }
}

pub fn speech_done(session: &str, speech: &str) -> pb::OnSpeechDoneRequest {
    pb::OnSpeechDoneRequest {
        session_id: session.to_owned(),
        speech_id: speech.to_owned(),
        ..Default::default()
    }
}

pub fn close(session: &str) -> pb::OnSessionCloseRequest {
    pb::OnSessionCloseRequest {
        session_id: session.to_owned(),
        reason: pb::CloseReason::UserInitiated.into(),
        error_message: None,
    }
}
