//! The `latchkey serve` process under test: the real binary, started on port
//! 0 and found by its banner, stopped with SIGTERM, and killed on drop so a
//! benchmark that fails or panics leaves no server behind. Only this child
//! is ever signalled, by its own pid.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::load::{request, Conn};

/// The environment `latchkey serve` reads; the benchmark passes everything
/// on the command line, so none may leak in from the caller's shell.
const SERVE_ENV: &[&str] = &[
    "LATCHKEY_LISTEN",
    "LATCHKEY_DATA_DIR",
    "LATCHKEY_PUBLIC_URL",
    "LATCHKEY_ALLOW_OUTBOUND",
    "LATCHKEY_OUTBOUND_TIMEOUT",
    "LATCHKEY_DATABASE_URL",
    "LATCHKEY_DATABASE_SCHEMA",
    "LATCHKEY_DATABASE_POOL_SIZE",
    "LATCHKEY_AUTH_FAILURE_LIMIT",
    "LATCHKEY_INGRESS_LIMIT",
    "LATCHKEY_LOG_FORMAT",
    "LATCHKEY_LOG",
    "LATCHKEY_MASTER_KEY",
];

/// Where a server keeps its data: the data dir (key file, and the SQLite
/// database unless `postgres` names a URL and schema).
#[derive(Debug, Clone)]
pub struct Site {
    pub data_dir: PathBuf,
    pub postgres: Option<(String, String)>,
    /// `--database-pool-size`, when not the server's default.
    pub pool_size: Option<u16>,
}

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The admin token a first start prints.
    pub token: Option<String>,
    /// From spawn until `/readyz` answered 200.
    pub cold_start: Duration,
    /// The banner's own "ready in" (start-up inside the process).
    pub banner_ready_ms: Option<u64>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts `binary serve` on `site` without rate limits (they would cap
    /// the measurement, not the server), logging to `log`.
    pub async fn start(binary: &Path, site: &Site, log: &Path) -> anyhow::Result<ServerProcess> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = Command::new(binary);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&site.data_dir)
            .args(["--ingress-limit", "0", "--auth-failure-limit", "0"]);
        if let Some((url, schema)) = &site.postgres {
            cmd.args(["--database-url", url, "--database-schema", schema]);
            if let Some(size) = site.pool_size {
                cmd.arg("--database-pool-size").arg(size.to_string());
            }
        }
        for v in SERVE_ENV {
            cmd.env_remove(v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // The banner arrives on a thread that then keeps draining stdout, so
        // the server never blocks on a full pipe.
        let (lines, mut banner) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines.send(line);
            }
        });
        let mut process = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            cold_start: Duration::ZERO,
            banner_ready_ms: None,
        };
        let mut api = None;
        let mut seen = Vec::new();
        loop {
            let line = match tokio::time::timeout(Duration::from_secs(120), banner.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => bail!(
                    "latchkey serve gave no banner; it printed {seen:?}; its log {} ends:\n{}",
                    log.display(),
                    log_tail(log)
                ),
            };
            let text = line.trim();
            if let Some(t) = text.strip_prefix("LATCHKEY_TOKEN=") {
                process.token = Some(t.to_string());
            }
            if let Some(rest) = text.strip_prefix("API") {
                api = rest
                    .split_whitespace()
                    .next()
                    .and_then(|u| u.strip_prefix("http://"))
                    .and_then(|u| u.strip_suffix("/v1"))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
            }
            if let Some(ms) = text.strip_prefix("ready in") {
                process.banner_ready_ms = ms.trim().trim_end_matches("ms").trim().parse().ok();
                break;
            }
            if !text.starts_with("LATCHKEY_TOKEN=") {
                seen.push(line);
            }
        }
        process.addr = api.context("the banner named no API address")?;
        let mut conn = Conn::open(process.addr).await?;
        let (status, _) = conn
            .send(request("GET", process.addr, "/readyz", None, None))
            .await?;
        process.cold_start = spawned.elapsed();
        if !status.is_success() {
            bail!("/readyz answered {status} right after start");
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now and at its peak, from /proc.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.pid())
    }

    /// SIGTERM, then waits for the drain; SIGKILL if it takes too long.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        use rustix::process::{kill_process, Pid, Signal};
        kill_process(Pid::from_child(&self.child), Signal::TERM)
            .context("cannot signal the server")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("latchkey serve stopped with {status}");
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("latchkey serve did not stop within 30 s of SIGTERM (killed)")
    }
}

/// Resident set size of a process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    pub fn rss_mb(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
