//! The gateways under test behind one trait: [`EnvoyGateway`] (Envoy with the ixproxy Wasm
//! filter) and [`PingoraGateway`] (`ixproxy serve`). Both start from the same config file, wait
//! until they answer (bounded polling, never a fixed sleep) and stop when dropped.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::client::{send, RawRequest};
use crate::HarnessError;

mod envoy;
mod pingora;

pub use envoy::EnvoyGateway;
pub use pingora::PingoraGateway;

/// How long a gateway may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a gateway may take to exit after being asked to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A running gateway serving the conformance config on 127.0.0.1.
pub trait Gateway: Sized {
    /// Runtime name for reports (`envoy`, `pingora`).
    const NAME: &'static str;

    /// Starts the gateway with the config at `config` (listen addresses may be port 0), the
    /// extra environment `env`, and `work_dir` for generated files and logs; returns once it
    /// serves requests.
    ///
    /// # Errors
    /// A missing binary, a gateway that exits or does not become ready in [`START_TIMEOUT`].
    fn start(
        config: &Path,
        env: &[(String, String)],
        work_dir: &Path,
    ) -> Result<Self, HarnessError>;

    /// The address of the gateway's listener.
    fn addr(&self) -> SocketAddr;

    /// `http://127.0.0.1:PORT`.
    fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The end of the gateway's log, for failure reports.
    fn log_tail(&self) -> String;

    /// The admin listener's address and the path of its Prometheus metrics, where
    /// `ixproxy_requests_total{outcome}` is read (see [`crate::metrics`]).
    fn metrics_endpoint(&self) -> (SocketAddr, &'static str);
}

/// `CARGO_TARGET_DIR`, or the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::workspace_root().join("target"), PathBuf::from)
}

/// The `ixproxy` binary: env `IXPROXY_BIN`, or `target/debug/ixproxy`.
pub fn ixproxy_bin() -> PathBuf {
    std::env::var_os("IXPROXY_BIN")
        .map_or_else(|| target_dir().join("debug/ixproxy"), PathBuf::from)
}

/// The Wasm filter: env `IXPROXY_WASM`, or `target/wasm32-wasip1/release/ixproxy_filter.wasm`.
pub fn wasm_path() -> PathBuf {
    std::env::var_os("IXPROXY_WASM").map_or_else(
        || target_dir().join("wasm32-wasip1/release/ixproxy_filter.wasm"),
        PathBuf::from,
    )
}

/// The Envoy binary: env `IXPROXY_ENVOY`, or `.venv/bin/envoy` in the workspace.
pub fn envoy_bin() -> PathBuf {
    std::env::var_os("IXPROXY_ENVOY").map_or_else(
        || crate::workspace_root().join(".venv/bin/envoy"),
        PathBuf::from,
    )
}

fn require(what: &'static str, path: PathBuf, hint: &'static str) -> Result<PathBuf, HarnessError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::Missing { what, path, hint })
    }
}

/// Reads a config file as a YAML mapping (runners only change the listen addresses).
fn read_config(path: &Path) -> Result<serde_yaml::Value, HarnessError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))?;
    serde_yaml::from_str(&text).map_err(|e| HarnessError::Gateway(format!("config: {e}")))
}

/// A unique number per gateway started by this process (file names, Envoy base id).
fn next_instance() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A child process whose output goes to a log file; stopped with a signal on drop.
struct Process {
    child: Child,
    log: PathBuf,
    stop_signal: Signal,
    what: &'static str,
}

impl Process {
    fn spawn(
        what: &'static str,
        mut command: Command,
        log: PathBuf,
        stop_signal: Signal,
    ) -> Result<Self, HarnessError> {
        let out = File::create(&log).map_err(|e| HarnessError::io("create log", e))?;
        let err = out
            .try_clone()
            .map_err(|e| HarnessError::io("clone log", e))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawn {what}"), e))?;
        Ok(Process {
            child,
            log,
            stop_signal,
            what,
        })
    }

    /// An error if the process has exited, with its log.
    fn check_running(&mut self) -> Result<(), HarnessError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(HarnessError::Gateway(format!(
                "{} exited during start-up ({status}); log:\n{}",
                self.what,
                self.log_tail()
            ))),
            Err(e) => Err(HarnessError::io("wait", e)),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Polls `ready` until it returns `Some`, the process exits, or [`START_TIMEOUT`] passes.
    fn wait_for<T>(
        &mut self,
        what: &str,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Result<T, HarnessError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_running()?;
            if let Some(value) = ready() {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Gateway(format!(
                    "{}: {what} not ready after {START_TIMEOUT:?}; log:\n{}",
                    self.what,
                    self.log_tail()
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = kill(Pid::from_raw(pid), self.stop_signal);
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            eprintln!(
                "{} did not stop within {STOP_TIMEOUT:?}; killing it",
                self.what
            );
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr`; the status and body when the server answered.
fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let req = RawRequest::get(&addr.to_string(), path);
    send(addr, &req, Duration::from_secs(2))
        .ok()
        .map(|r| (r.status, r.body_text()))
}
