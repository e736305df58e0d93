//! The built binary, started as an operator would: for tests of the process as a whole, and
//! the server the benches measure.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    str::FromStr as _,
    time::{Duration, Instant},
};

use endcall_sidecar::{probe, ListenAddr};
use tonic::transport::Channel;

use crate::PATIENCE;

/// The `endcall-sidecar` binary cargo built beside the running test or bench: test and bench
/// executables live in `target/<profile>/deps/`, the binary one level up. Cargo builds it
/// before an integration test or bench of its package runs.
pub fn built_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("endcall-sidecar{}", std::env::consts::EXE_SUFFIX))
}

/// A running sidecar process; killed when dropped.
pub struct Sidecar {
    pub child: Child,
    pub addr: ListenAddr,
}

impl Sidecar {
    /// Starts the built binary on 127.0.0.1:0 with `flags`, its stderr kept for
    /// [`Sidecar::stderr`].
    pub fn start(flags: &[&str]) -> Self {
        Self::spawn(&built_binary(), "127.0.0.1:0", flags, "", Stdio::piped())
    }

    /// Starts `bin` on `listen` with `flags`, then `extra_flags` (whitespace-separated), and
    /// waits for its `listening on` line.
    pub fn spawn(
        bin: &Path,
        listen: &str,
        flags: &[&str],
        extra_flags: &str,
        stderr: Stdio,
    ) -> Self {
        let mut child = Command::new(bin)
            // The sidecar reads LiveKit's own variables: a developer's shell must not point the
            // sidecar under test at a real LiveKit. Tests pass LiveKit settings as flags.
            .env_remove("LIVEKIT_URL")
            .env_remove("LIVEKIT_API_KEY")
            .env_remove("LIVEKIT_API_SECRET")
            .arg("--listen")
            .arg(listen)
            .args(flags)
            .args(extra_flags.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let addr = ListenAddr::from_str(addr).expect("listening address");
        Sidecar { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, failing the test past `PATIENCE`.
    pub async fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything it wrote to stderr (read to the end: stop it first).
    pub fn stderr(&mut self) -> String {
        let mut text = String::new();
        self.child
            .stderr
            .take()
            .expect("stderr piped")
            .read_to_string(&mut text)
            .expect("read stderr");
        text
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

    /// `n` connections (at least one).
    pub async fn channels(&self, n: usize) -> Vec<Channel> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            out.push(probe::connect(&self.addr, PATIENCE).await.expect("connect"));
        }
        out
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let ListenAddr::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A field of `/proc/<pid>/status`, in kB (0 if absent).
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
