//! The native gateway, `ixproxy serve -c FILE`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{admin_get, ixproxy_bin, next_instance, require, Gateway, Process};
use crate::HarnessError;

/// Start of the line `ixproxy serve` writes to stderr once both listeners are bound:
/// `ixproxy: gateway on http://ADDR, admin on http://ADDR (/healthz, /metrics), N threads`
/// (`https://` for the gateway when `tls:` is set).
const SERVE_LINE_PREFIX: &str = "ixproxy: gateway on ";

/// The gateway and admin addresses of `ixproxy serve`'s start-up line, or `None` for any other
/// line.
pub fn parse_serve_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix(SERVE_LINE_PREFIX)?;
    let rest = rest
        .strip_prefix("http://")
        .or_else(|| rest.strip_prefix("https://"))?;
    let (gateway, rest) = rest.split_once(", admin on http://")?;
    let (admin, rest) = rest.split_once(' ')?;
    rest.starts_with("(/healthz, /metrics), ")
        .then_some(())
        .and_then(|()| Some((gateway.parse().ok()?, admin.parse().ok()?)))
}

/// A running `ixproxy serve`: started from a config text (listen addresses may be port 0), its
/// addresses read from the line it prints once both listeners are bound; stopped with SIGINT
/// when dropped.
pub struct ServeProcess {
    process: Process,
    listen: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    /// Holds the config and log when [`ServeProcess::start_temp`] made the directory; declared
    /// last so the process stops before its log is removed.
    dir: Option<tempfile::TempDir>,
}

impl ServeProcess {
    /// Writes `config` (YAML) into `work_dir`, runs `bin serve -c` on it with the extra
    /// environment `env`, and returns once the process has reported its addresses and the
    /// admin `/healthz` answers 200. stdout and stderr go to a log in `work_dir`.
    ///
    /// # Errors
    /// File or spawn errors; a process that exits, or does not report or answer within
    /// [`super::START_TIMEOUT`] (the error holds its log).
    pub fn start(
        bin: &Path,
        config: &str,
        env: &[(String, String)],
        work_dir: &Path,
    ) -> Result<Self, HarnessError> {
        Self::start_with_args(bin, config, &[], env, work_dir)
    }

    /// [`ServeProcess::start`] with extra `serve` arguments after `-c FILE` (`-u`,
    /// `--upgrade-sock PATH`).
    ///
    /// # Errors
    /// As [`ServeProcess::start`].
    pub fn start_with_args(
        bin: &Path,
        config: &str,
        args: &[&str],
        env: &[(String, String)],
        work_dir: &Path,
    ) -> Result<Self, HarnessError> {
        let instance = next_instance();
        let file = work_dir.join(format!("serve-{instance}.yaml"));
        std::fs::write(&file, config).map_err(|e| HarnessError::io("write config", e))?;
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .arg("-c")
            .arg(&file)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let (mut process, report) = Process::spawn_watching(
            "ixproxy serve",
            command,
            work_dir.join(format!("serve-{instance}.log")),
            Signal::SIGINT,
            parse_serve_line,
        )?;
        let (listen, admin) = process.wait_for_report("gateway and admin addresses", &report)?;
        // The sockets are listening once the line is out, so this answers on the first try
        // unless the admin app itself is broken.
        process.wait_for("/healthz", || {
            admin_get(admin, "/healthz").and_then(|(status, _)| (status == 200).then_some(()))
        })?;
        Ok(ServeProcess {
            process,
            listen,
            admin,
            config: file,
            dir: None,
        })
    }

    /// [`ServeProcess::start`] in a fresh temporary directory, removed when this is dropped.
    ///
    /// # Errors
    /// As [`ServeProcess::start`], or the directory cannot be made.
    pub fn start_temp(
        bin: &Path,
        config: &str,
        env: &[(String, String)],
    ) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("ixproxy-serve-")
            .tempdir()
            .map_err(|e| HarnessError::io("temp dir", e))?;
        let mut serve = ServeProcess::start(bin, config, env, dir.path())?;
        serve.dir = Some(dir);
        Ok(serve)
    }

    /// The gateway listener, as reported by the process.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The admin listener (`/healthz`, `/metrics`), as reported by the process.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The value of one Prometheus sample on `/metrics`, named exactly as printed (e.g.
    /// `ixproxy_requests_total{outcome="forwarded"}` or `ixproxy_cache_bytes{tier="memory"}`).
    ///
    /// # Errors
    /// The admin listener does not answer, or the sample is not there.
    pub fn metric(&self, sample: &str) -> Result<u64, HarnessError> {
        let (_, text) = admin_get(self.admin, "/metrics")
            .ok_or_else(|| HarnessError::Http("no /metrics answer".to_owned()))?;
        let key = format!("{sample} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| HarnessError::Http(format!("no {sample} in:\n{text}")))
    }

    /// `ixproxy_requests_total{outcome="<outcome>"}` summed over every source.
    ///
    /// # Errors
    /// The admin listener does not answer, or the exposition does not parse.
    pub fn outcome_count(&self, outcome: &str) -> Result<u64, HarnessError> {
        let (_, text) = admin_get(self.admin, "/metrics")
            .ok_or_else(|| HarnessError::Http("no /metrics answer".to_owned()))?;
        let counts = crate::metrics::OutcomeCounts::parse(&text).map_err(HarnessError::Http)?;
        Ok(counts.get(outcome).unwrap_or(0))
    }

    /// [`Self::outcome_count`] once it has reached `at_least` (polled every 20 ms for at most
    /// `limit`): a response can reach the client just before its outcome is counted.
    ///
    /// # Errors
    /// As [`Self::outcome_count`].
    pub fn settled_outcome_count(
        &self,
        outcome: &str,
        at_least: u64,
        limit: Duration,
    ) -> Result<u64, HarnessError> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let count = self.outcome_count(outcome)?;
            if count >= at_least || std::time::Instant::now() >= deadline {
                return Ok(count);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The config file the process was started with (rewrite it, then send SIGHUP to reload).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Sends `signal` and returns at once (SIGHUP to reload, SIGTERM or SIGQUIT to start a
    /// drain that [`ServeProcess::wait_exit`] then waits out).
    ///
    /// # Errors
    /// The signal cannot be sent.
    pub fn signal(&self, signal: Signal) -> Result<(), HarnessError> {
        let pid = i32::try_from(self.pid())
            .map_err(|_| HarnessError::Gateway("pid out of range".to_owned()))?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| HarnessError::Gateway(format!("kill {pid} with {signal}: {e}")))
    }

    /// Polls for the process's exit for at most `limit`; `None` when it is still running.
    ///
    /// # Errors
    /// The process cannot be waited for.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<ExitStatus>, HarnessError> {
        self.process.wait_exit(limit)
    }

    /// Everything the process wrote so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    /// The last 40 lines of [`ServeProcess::log`].
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Sends `signal` and waits for the exit; returns the exit status and how long the process
    /// took after the signal.
    ///
    /// # Errors
    /// The signal cannot be sent, or the process is still running after
    /// [`super::STOP_TIMEOUT`].
    pub fn stop(mut self, signal: Signal) -> Result<(ExitStatus, Duration), HarnessError> {
        self.process.stop_with(signal)
    }
}

/// `ixproxy serve` on the conformance config as it is (listen addresses `127.0.0.1:0`), at the
/// addresses it reports (see [`ServeProcess`]).
pub struct PingoraGateway {
    serve: ServeProcess,
}

impl Gateway for PingoraGateway {
    const NAME: &'static str = "pingora";

    fn start(
        config: &Path,
        env: &[(String, String)],
        work_dir: &Path,
    ) -> Result<Self, HarnessError> {
        let ixproxy = require(
            "ixproxy binary",
            ixproxy_bin(),
            "run `cargo build -p ixproxy` first or set IXPROXY_BIN",
        )?;
        let text = std::fs::read_to_string(config)
            .map_err(|e| HarnessError::io(format!("read {}", config.display()), e))?;
        let serve = ServeProcess::start(&ixproxy, &text, env, work_dir)?;
        Ok(PingoraGateway { serve })
    }

    fn addr(&self) -> SocketAddr {
        self.serve.listen()
    }

    fn log_tail(&self) -> String {
        self.serve.log_tail()
    }

    fn metrics_endpoint(&self) -> (SocketAddr, &'static str) {
        (self.serve.admin(), "/metrics")
    }

    fn pid(&self) -> u32 {
        self.serve.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_addresses_from_the_serve_line() {
        let line = "ixproxy: gateway on http://127.0.0.1:41234, admin on http://[::1]:9 \
                    (/healthz, /metrics), 2 threads";
        let (gateway, admin) = parse_serve_line(line).expect("serve line");
        assert_eq!(gateway.to_string(), "127.0.0.1:41234");
        assert_eq!(admin.to_string(), "[::1]:9");
        let tls = "ixproxy: gateway on https://127.0.0.1:443, admin on http://127.0.0.1:9 \
                   (/healthz, /metrics), 1 threads";
        let (gateway, _) = parse_serve_line(tls).expect("tls serve line");
        assert_eq!(gateway.port(), 443);
        assert_eq!(parse_serve_line("[INFO] ixproxy: something else"), None);
        assert_eq!(
            parse_serve_line("ixproxy: gateway on http://127.0.0.1:0x, admin on http://a b"),
            None
        );
    }
}
