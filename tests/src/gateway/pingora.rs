//! The native gateway, `ixproxy serve -c FILE`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;

use nix::sys::signal::Signal;

use super::{admin_get, ixproxy_bin, next_instance, read_config, require, Gateway, Process};
use crate::HarnessError;

/// `ixproxy serve` on free loopback ports written into a copy of the config; ready once the
/// admin `/healthz` answers 200; stopped with SIGINT.
pub struct PingoraGateway {
    process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<SocketAddr, HarnessError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| HarnessError::io("pick a free port", e))
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
        let instance = next_instance();
        let addr = free_port()?;
        let admin = free_port()?;
        let mut raw = read_config(config)?;
        raw["listen"] = addr.to_string().into();
        raw["admin_listen"] = admin.to_string().into();
        let yaml = serde_yaml::to_string(&raw)
            .map_err(|e| HarnessError::Gateway(format!("serialize config: {e}")))?;
        let file = work_dir.join(format!("pingora-{instance}.yaml"));
        std::fs::write(&file, yaml).map_err(|e| HarnessError::io("write config", e))?;

        let mut command = Command::new(&ixproxy);
        command
            .arg("serve")
            .arg("-c")
            .arg(&file)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let mut process = Process::spawn(
            "ixproxy serve",
            command,
            work_dir.join(format!("pingora-{instance}.log")),
            Signal::SIGINT,
        )?;
        process.wait_for("/healthz", || {
            admin_get(admin, "/healthz").and_then(|(status, _)| (status == 200).then_some(()))
        })?;
        process.wait_for("listener", || std::net::TcpStream::connect(addr).ok())?;
        Ok(PingoraGateway {
            process,
            addr,
            admin,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    fn metrics_endpoint(&self) -> (SocketAddr, &'static str) {
        (self.admin, "/metrics")
    }
}
