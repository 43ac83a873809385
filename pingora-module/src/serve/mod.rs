//! `ixproxy serve`: the native Pingora gateway (SPEC §2–§7) and its admin listener.
//!
//! The config file (or, without one, the built-in demo) is validated by the core; the gateway
//! is a thin [`gateway::Gateway`] adapter over the core's decision, served by Pingora together
//! with the admin app ([`admin`]). SIGINT stops at once; SIGTERM drains for about a second.

mod admin;
mod deadline;
mod demo;
mod gateway;
mod metrics;
mod peer;
mod resolve;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ixproxy_core::Config;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::secrets::{load_config, NativeSecrets};

/// Grace period and runtime shutdown timeout on SIGTERM, in seconds: short, so an orchestrator's
/// stop is quick (Pingora's defaults add up to more than five minutes).
const SHUTDOWN_SECONDS: u64 = 1;

/// Arguments of `ixproxy serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Config file (YAML, SPEC §7). Without it, a demo config and a built-in origin run on
    /// 127.0.0.1 (gateway :8080, admin :9901).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

/// Runs the gateway until SIGINT / SIGTERM.
///
/// With `config_path`, serves that file; without, runs the demo (see [`demo`]) and prints a
/// signed example URL and the `curl` command to fetch it. Returns exit code 1 with an
/// `error: …` line on stderr when the config is invalid (the message names the field), the
/// trust store cannot be built, or a listener cannot be bound; 0 after a signal-initiated stop.
pub fn run(config_path: Option<&Path>) -> ExitCode {
    init_logging();
    match prepare(config_path) {
        Ok(server) => {
            server.run(RunArgs::default());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

fn init_logging() {
    // Pingora's own lifecycle logs are info-level chatter; keep warnings from it and the
    // gateway's per-request lines. RUST_LOG overrides.
    let env = env_logger::Env::default().default_filter_or("warn,ixproxy=info,serve_dev=info");
    let _ = env_logger::Builder::from_env(env).try_init();
}

/// Loads the config, checks everything that can fail, and builds the Pingora server.
fn prepare(config_path: Option<&Path>) -> Result<Server, String> {
    let (config, banner) = match config_path {
        Some(path) => (load_config(path)?, None),
        None => {
            let origin = demo::start_origin()
                .map_err(|e| format!("cannot start the demo origin on 127.0.0.1: {e}"))?;
            let config = demo::demo_config(origin.port(), &NativeSecrets)?;
            let banner = demo::banner(&config, origin);
            (config, Some(banner))
        }
    };
    let ca =
        peer::load_trust_anchors(config.upstream.ca_file.as_deref()).map_err(|e| e.to_string())?;
    if config.listen == config.admin_listen && config.listen.port() != 0 {
        return Err(format!(
            "admin_listen: {} is also the gateway's listen address",
            config.admin_listen
        ));
    }
    check_bindable(config.listen, "listen")?;
    check_bindable(config.admin_listen, "admin_listen")?;
    let metrics = metrics::Metrics::new().map_err(|e| e.to_string())?;

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_conf = ServerConf {
        threads,
        max_retries: max_attempts(config.sources.limits().max_redirects),
        grace_period_seconds: Some(SHUTDOWN_SECONDS),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_SECONDS),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    let Config {
        listen,
        admin_listen,
        upstream,
        sources,
    } = config;
    let gateway = gateway::Gateway::new(sources, upstream, ca, metrics.clone());
    let proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    let mut proxy = Service::new(
        "gateway".to_owned(),
        deadline::Deadlined::new(proxy, metrics.clone()),
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);

    let mut admin = Service::new("admin".to_owned(), admin::AdminApp::new(metrics));
    admin.threads = Some(1);
    admin.add_tcp(&admin_listen.to_string());
    server.add_service(admin);

    match banner {
        Some(banner) => println!("{banner}"),
        None => eprintln!(
            "ixproxy: gateway on http://{listen}, admin on http://{admin_listen} \
             (/healthz, /metrics), {threads} threads"
        ),
    }
    Ok(server)
}

/// Upstream attempts Pingora may make for one request: every redirect hop plus the first URL,
/// each with its fallback addresses and one retry of a stale pooled connection. The real
/// limits are the core's `max_redirects` and the checked address list; this only keeps
/// Pingora's own retry cap (16 by default) from cutting them short.
fn max_attempts(max_redirects: u32) -> usize {
    (max_redirects as usize + 1) * (resolve::MAX_CANDIDATES + 1)
}

/// Fails early with a clear message when an address cannot be listened on: Pingora itself would
/// only retry and then panic in a service thread, leaving a half-started process.
fn check_bindable(addr: SocketAddr, field: &str) -> Result<(), String> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("{field}: cannot listen on {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_in_use_is_a_clear_error_naming_the_field() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = check_bindable(addr, "admin_listen").expect_err("in use");
        assert!(
            err.starts_with(&format!("admin_listen: cannot listen on {addr}: ")),
            "{err}"
        );
    }

    #[test]
    fn an_invalid_config_file_is_an_error_naming_the_field() {
        let dir = std::env::temp_dir().join(format!("ixproxy-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bad.yaml");
        std::fs::write(
            &path,
            "listen: 127.0.0.1:0\nsources:\n  - name: a\n    hosts: []\n    secure_url_tokens: [t]\n",
        )
        .expect("write");
        let err = prepare(Some(&path)).err().expect("invalid config");
        assert!(err.starts_with("sources[0].hosts"), "{err}");
        let err = prepare(Some(&dir.join("missing.yaml")))
            .err()
            .expect("missing");
        assert!(err.contains("missing.yaml"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
