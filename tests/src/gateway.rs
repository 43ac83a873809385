//! The gateways under test behind one trait: [`EnvoyGateway`] (Envoy with the ixproxy Wasm
//! filter) and [`PingoraGateway`] (`ixproxy serve`). Both start from the same config file, wait
//! until they answer (bounded polling, never a fixed sleep) and stop when dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::client::{send, RawRequest};
use crate::HarnessError;

mod envoy;
mod pingora;

pub use envoy::EnvoyGateway;
pub use pingora::{parse_serve_line, PingoraGateway, ServeProcess};

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

    /// The gateway's process id (for its resident memory in `/proc/<pid>/status`).
    fn pid(&self) -> u32;
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

/// The resident memory of process `pid` in KiB (`VmRSS` in `/proc/PID/status`); `None` when it
/// cannot be read (the process is gone, no procfs).
pub fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn require(what: &'static str, path: PathBuf, hint: &'static str) -> Result<PathBuf, HarnessError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::Missing { what, path, hint })
    }
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

    /// Like [`Process::spawn`], but stderr goes through a thread that appends it to the log
    /// line by line and sends, once, the first value `watch` finds in a line: the process can
    /// announce something (its bound addresses) without anyone polling the log for it.
    fn spawn_watching<T: Send + 'static>(
        what: &'static str,
        mut command: Command,
        log: PathBuf,
        stop_signal: Signal,
        watch: fn(&str) -> Option<T>,
    ) -> Result<(Self, Receiver<T>), HarnessError> {
        File::create(&log).map_err(|e| HarnessError::io("create log", e))?;
        // Both appending, so the thread's lines and the child's stdout (the access log) never
        // overwrite each other.
        let out = OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(|e| HarnessError::io("open log", e))?;
        let mut copy = OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(|e| HarnessError::io("open log", e))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawn {what}"), e))?;
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                let mut tx = Some(tx);
                // Ends at EOF, when the child exits; dropping `tx` then tells the waiter.
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let _ = copy.write_all(&line);
                    let text = String::from_utf8_lossy(&line);
                    if let Some(found) = tx.as_ref().and_then(|_| watch(text.trim_end())) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(found);
                        }
                    }
                    line.clear();
                }
            });
        }
        let process = Process {
            child,
            log,
            stop_signal,
            what,
        };
        Ok((process, rx))
    }

    /// Waits up to [`START_TIMEOUT`] for the value [`Process::spawn_watching`] reports.
    fn wait_for_report<T>(&mut self, what: &str, report: &Receiver<T>) -> Result<T, HarnessError> {
        match report.recv_timeout(START_TIMEOUT) {
            Ok(value) => Ok(value),
            Err(RecvTimeoutError::Timeout) => Err(HarnessError::Gateway(format!(
                "{}: no {what} after {START_TIMEOUT:?}; log:\n{}",
                self.what,
                self.log_tail()
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                // stderr closed: the process is exiting; give it a moment to be reaped so the
                // error can show its exit status.
                let status = self.wait_exit(STOP_TIMEOUT)?;
                Err(HarnessError::Gateway(format!(
                    "{} exited before reporting {what} ({}); log:\n{}",
                    self.what,
                    status.map_or_else(|| "still running".to_owned(), |s| s.to_string()),
                    self.log_tail()
                )))
            }
        }
    }

    /// Polls for the process's exit for at most `limit`; `None` when it is still running.
    fn wait_exit(&mut self, limit: Duration) -> Result<Option<ExitStatus>, HarnessError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| HarnessError::io("wait", e))?
            {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends `signal` and waits up to [`STOP_TIMEOUT`] for the exit; returns the exit status and
    /// how long the process took after the signal.
    fn stop_with(&mut self, signal: Signal) -> Result<(ExitStatus, Duration), HarnessError> {
        let pid = i32::try_from(self.child.id())
            .map_err(|_| HarnessError::Gateway("pid out of range".to_owned()))?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| HarnessError::Gateway(format!("kill {pid} with {signal}: {e}")))?;
        let sent = Instant::now();
        match self.wait_exit(STOP_TIMEOUT)? {
            Some(status) => Ok((status, sent.elapsed())),
            None => Err(HarnessError::Gateway(format!(
                "{} did not exit within {STOP_TIMEOUT:?} of {signal}; log:\n{}",
                self.what,
                self.log_tail()
            ))),
        }
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
