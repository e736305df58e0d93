//! What the benches add to `endcall_testkit`: the command-line flags that choose the server
//! under test (the release binary as a child process, its stderr discarded), and a webhook
//! receiver (`receiver`).

use std::{path::PathBuf, process::Stdio};

use endcall_testkit::process::{built_binary, Sidecar};

pub(crate) mod receiver;

/// Which server binary the benches start, and with what extra flags.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ServerArgs {
    /// The server binary (default: $ENDCALL_SIDECAR_BIN, else the one cargo built).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Extra server flags, appended to every server the bench starts (e.g. "--log-level warn").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub(crate) server_flags: String,
}

impl ServerArgs {
    pub(crate) fn bin(&self) -> PathBuf {
        self.server_bin
            .clone()
            .or_else(|| std::env::var_os("ENDCALL_SIDECAR_BIN").map(PathBuf::from))
            .unwrap_or_else(built_binary)
    }

    /// Starts the server on `listen` with `flags` and the extra flags. Its log goes nowhere: a
    /// bench's server logs a report line per session, and a piped stderr nobody reads would
    /// fill up and stall it.
    pub(crate) fn start(&self, listen: &str, flags: &[&str]) -> Sidecar {
        Sidecar::spawn(
            &self.bin(),
            listen,
            flags,
            &self.server_flags,
            Stdio::null(),
        )
    }
}

/// One scrape of a server's Prometheus endpoint (plain HTTP/1.1, no client library).
#[allow(dead_code)] // the soak's; the lifecycle bench scrapes nothing
pub(crate) async fn scrape(addr: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    conn.read_to_string(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(body)
}

/// The sum of a metric's series in a scrape, leaving out those whose line holds `skip_label`.
#[allow(dead_code)] // the soak's
pub(crate) fn metric(text: &str, name: &str, skip_label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| skip_label.is_none_or(|skip| !l.contains(skip)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A port nothing listens on (for a server's metrics listener).
#[allow(dead_code)] // the soak's
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
