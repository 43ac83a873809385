//! `ixproxy serve`: the native Pingora gateway (README: URL format, statuses, configuration) and its admin listener.
//!
//! The config file (or, without one, the built-in demo) is validated by the core; the gateway
//! is a thin [`gateway::Gateway`] adapter over the core's decision, served by Pingora together
//! with the admin app ([`admin`]); [`client`] admits client connections and bounds their
//! timeouts, [`deadline`] the two whole-header deadlines, [`tls`] the certificates of HTTPS
//! on `listen` (chosen by SNI). Signals (README: Operating): SIGHUP reloads the config ([`reload`] into
//! [`live`], the TLS files included), SIGTERM drains (see [`announce`]), SIGQUIT hands the
//! listening sockets to a new `ixproxy serve -u` ([`upgrade`]), SIGINT stops at once.

mod access;
mod admin;
mod announce;
mod cache;
mod cache_disk;
mod cache_store;
mod client;
mod deadline;
mod demo;
mod failure;
mod fallback;
mod fleet;
mod gateway;
mod http;
mod inflight;
mod listen;
mod live;
mod logging;
mod metrics;
mod peer;
mod reload;
mod request_ctx;
mod resolve;
mod tls;
mod upgrade;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use ixproxy_core::config::MAX_MAX_REDIRECTS;
use ixproxy_core::limits::max_request_head_bytes;
use ixproxy_core::Config;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::secrets::{load_config, NativeSecrets};

pub use cache_disk::check as check_disk;
pub use tls::check as check_tls;

/// Runtime shutdown timeout after the grace period, in seconds: what is still running then is
/// cut (Pingora's default adds five).
const RUNTIME_SHUTDOWN_SECONDS: u64 = 1;

/// Arguments of `ixproxy serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Config file (YAML, README: Configuration). Without it, a demo config and a built-in origin run on
    /// 127.0.0.1 (gateway :8080, admin :9901).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Take over from a running `ixproxy serve` (graceful upgrade): wait on the upgrade socket
    /// for its listening sockets, which it sends when it gets SIGQUIT, then serve them.
    #[arg(short = 'u', long)]
    pub upgrade: bool,
    /// The upgrade socket: where `-u` waits for the sockets and where this process sends its
    /// own on SIGQUIT. Both processes must use the same path.
    #[arg(long, value_name = "PATH", default_value = upgrade::DEFAULT_UPGRADE_SOCK)]
    pub upgrade_sock: PathBuf,
}

/// Runs the gateway until SIGINT / SIGTERM / SIGQUIT (README: Operating).
///
/// With `args.config`, serves that file; without, runs the demo (see [`demo`]) and prints a
/// signed example URL and the `curl` command to fetch it. With `args.upgrade`, takes the
/// listening sockets over from the running instance first. Returns exit code 1 with an
/// `error: …` line on stderr when the config is invalid (the message names the field), the
/// trust store cannot be built, a listener cannot be bound or no sockets arrive for `-u`; 0
/// after a signal-initiated stop.
pub fn run(args: &ServeArgs) -> ExitCode {
    logging::init();
    harden();
    match prepare(args) {
        Ok((server, announcement, lifecycle)) => {
            server.run(RunArgs {
                shutdown_signal: Box::new(announce::AnnounceThenWatch::new(
                    announcement,
                    lifecycle,
                )),
            });
            access::flush();
            cache_disk::close();
            // Only in a directory that passes the check: elsewhere the file may not be ours.
            if upgrade::check_private(&args.upgrade_sock).is_ok() {
                remove_stale_socket(&args.upgrade_sock);
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

/// Makes the process non-dumpable (README: Security): no core file is written of a process
/// that holds the URL tokens, the origin credentials and the TLS key, and only a process with
/// `CAP_SYS_PTRACE` can attach to it or read its memory (`/proc/<pid>/` turns root-owned).
fn harden() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        log::warn!("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {e}");
    }
}

/// Removes a stale upgrade socket at `path` (see [`upgrade::remove_stale`]), saying so.
fn remove_stale_socket(path: &Path) {
    if upgrade::remove_stale(path) {
        eprintln!(
            "ixproxy: removed the stale upgrade socket {} (nothing listened on it)",
            path.display()
        );
    }
}

/// Pingora's grace period after the listeners closed, in whole seconds (rounded up).
fn grace_seconds(grace_period: Duration) -> u64 {
    grace_period.as_secs() + u64::from(grace_period.subsec_nanos() > 0)
}

/// Binds both listeners, or with `-u` takes the running instance's sockets (binding only an
/// address it did not serve).
fn listeners(
    args: &ServeArgs,
    config: &Config,
) -> Result<(listen::BoundListener, listen::BoundListener), String> {
    if !args.upgrade {
        // Bound here, not by Pingora: a busy port is a clean error now, and port 0 becomes the
        // real port that is printed and then served (see `listen`).
        let listener = listen::BoundListener::bind(config.listen, "listen")?;
        let admin = listen::BoundListener::bind(config.admin_listen, "admin_listen")?;
        return Ok((listener, admin));
    }
    eprintln!(
        "ixproxy: waiting on {} for the running instance's listening sockets (send it SIGQUIT)",
        args.upgrade_sock.display()
    );
    let mut inherited = upgrade::Inherited::receive(&args.upgrade_sock)?;
    // An exact address first, so a port-0 field only competes for what is left.
    if config.listen.port() == 0 {
        let admin = inherited.take_or_bind(config.admin_listen, "admin_listen")?;
        let listener = inherited.take_or_bind(config.listen, "listen")?;
        Ok((listener, admin))
    } else {
        let listener = inherited.take_or_bind(config.listen, "listen")?;
        let admin = inherited.take_or_bind(config.admin_listen, "admin_listen")?;
        Ok((listener, admin))
    }
}

/// Loads the config, checks everything that can fail, and builds the Pingora server.
/// Also returns what to print once the server watches for signals (both sockets are listening
/// from the moment they are bound here, so that line only waits for the signal handlers) and
/// what the watch runs on SIGHUP and SIGTERM.
fn prepare(
    args: &ServeArgs,
) -> Result<(Server, announce::Announcement, announce::Lifecycle), String> {
    let config_path = args.config.as_deref();
    let (config, demo_origin) = match config_path {
        Some(path) => (load_config(path)?, None),
        None => {
            let origin = demo::start_origin()
                .map_err(|e| format!("cannot start the demo origin on 127.0.0.1: {e}"))?;
            (
                demo::demo_config(origin.port(), &NativeSecrets)?,
                Some(origin),
            )
        }
    };
    crate::cli::print_warnings(&ixproxy_core::config::warnings(&config));
    let metrics = metrics::Metrics::new().map_err(|e| e.to_string())?;
    let live = live::LiveConfig::new(
        live::Live::build(config.sources.clone(), config.upstream.clone(), None)?
            .with_access_log(
                config.operating.access_log,
                config.operating.trusted_proxies.clone(),
            )
            .with_series(metrics.series(&config.sources))
            .with_purge_api_keys(config.purge_api_keys.clone())
            .with_peers(config.cache.as_ref().and_then(|c| c.peers.clone())),
    );
    if config.listen == config.admin_listen && config.listen.port() != 0 {
        return Err(format!(
            "admin_listen: {} is also the gateway's listen address",
            config.admin_listen
        ));
    }
    // Read before binding: a bad certificate or key is an error naming its field
    // (`tls.certificates[1].key_file`).
    let tls_certs = config
        .operating
        .tls
        .as_ref()
        .map(tls::TlsCerts::load)
        .transpose()?;
    let (listener, admin_listener) = listeners(args, &config)?;
    let (listen, admin_listen) = (listener.addr(), admin_listener.addr());
    if config.operating.access_log != ixproxy_core::config::AccessLogFormat::Off {
        access::start(metrics.access_log_dropped())
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
    }

    let threads = config
        .operating
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let grace_period = config.operating.grace_period;
    let upgrade_sock = args
        .upgrade_sock
        .to_str()
        .ok_or_else(|| {
            format!(
                "--upgrade-sock: {} is not utf-8",
                args.upgrade_sock.display()
            )
        })?
        .to_owned();
    let server_conf = ServerConf {
        threads,
        // A reload may raise max_redirects: Pingora's cap is set for the most it can be.
        max_retries: max_attempts(MAX_MAX_REDIRECTS),
        grace_period_seconds: Some(grace_seconds(grace_period)),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECONDS),
        upgrade_sock,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    let reloader = reload::Reloader::new(
        config_path.map(Path::to_path_buf),
        config.clone(),
        live.clone(),
        metrics.clone(),
    )
    .with_tls(tls_certs.clone());
    let Config {
        upstream,
        client,
        cache,
        operating,
        ..
    } = config;
    // A fill holds its key's lock at most until its origin header and one body pause are due;
    // requests waiting on it then compete again.
    let cache = cache
        .map(|limits| {
            let cache = cache::ResponseCache::new(
                &limits,
                upstream.timeout + upstream.body_timeout,
                metrics.cache_bytes(),
            );
            cache
                .start_disk(
                    &limits,
                    metrics.cache_disk_bytes(),
                    metrics.cache_disk_writes_dropped(),
                )
                .map(|()| cache)
        })
        .transpose()
        .map_err(|e| e.to_string())?;
    let purger = cache.map(|cache| admin::Purger {
        cache,
        live: live.clone(),
    });
    let purge_api = live.clone();
    let gateway = gateway::Gateway::new(live, metrics.clone(), cache);
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    // h2c: HTTP/2 with prior knowledge on a plain listener (HTTP/1.1 still served); over TLS,
    // ALPN decides and Pingora ignores this.
    let mut server_options = pingora::apps::HttpServerOptions::default();
    server_options.h2c = operating.h2c;
    // An HTTP/2 connection with no stream open is idle, like an HTTP/1 keep-alive one.
    server_options.h2_idle_timeout = Some(client.idle_timeout);
    proxy.server_options = Some(server_options);
    let proxy = Service::new(
        "gateway".to_owned(),
        client::ClientConnections::new(
            deadline::Deadlined::new(
                proxy,
                metrics.clone(),
                client.header_timeout,
                client.write_timeout,
            ),
            client,
            tls_certs.as_ref().map(tls::TlsCerts::acceptor),
            max_request_head_bytes(config.sources.limits()),
        ),
    );
    // Plain TCP even with `tls:`: the gateway shakes hands itself, after admission and under
    // the header deadline (see `client`).
    server.add_service(listen::PreBound::new(proxy, listener));

    let readiness = admin::Readiness::default();
    let mut admin = Service::new(
        "admin".to_owned(),
        admin::AdminApp::new(metrics, purger, readiness.clone()).with_purge_api(purge_api),
    );
    admin.threads = Some(1);
    server.add_service(listen::PreBound::new(admin, admin_listener));

    // Both sockets are listening from here on (connections queue until Pingora accepts), so
    // whoever reads these addresses can connect at once.
    let taken_over = if args.upgrade {
        ", sockets taken over from the running instance"
    } else {
        ""
    };
    let scheme = if tls_certs.is_some() { "https" } else { "http" };
    let announcement = match demo_origin {
        Some(origin) => announce::Announcement::Stdout(demo::banner(listen, admin_listen, origin)),
        None => announce::Announcement::Stderr(format!(
            "ixproxy: gateway on {scheme}://{listen}, admin on http://{admin_listen} \
             (/healthz, /metrics), {threads} threads{taken_over}"
        )),
    };
    // A directory that is missing only means no upgrade; one others can write is worth a word.
    let sock_dir_exists = args.upgrade_sock.parent().is_some_and(Path::is_dir);
    match (sock_dir_exists, upgrade::check_private(&args.upgrade_sock)) {
        (true, Err(e)) => {
            eprintln!("warning: --upgrade-sock: {e}; SIGQUIT will drain without handing over");
        }
        (true, Ok(())) => remove_stale_socket(&args.upgrade_sock),
        (false, _) => {}
    }
    let lifecycle = announce::Lifecycle {
        reloader,
        readiness,
        grace_period,
        upgrade_sock: args.upgrade_sock.clone(),
    };
    Ok((server, announcement, lifecycle))
}

/// Upstream attempts Pingora may make for one request: every redirect hop plus the first URL,
/// each with its fallback addresses and one retry of a stale pooled connection. The real
/// limits are the core's `max_redirects` and the checked address list; this only keeps
/// Pingora's own retry cap (16 by default) from cutting them short.
fn max_attempts(max_redirects: u32) -> usize {
    // Three fetches at most, each with its hops and addresses: the origin URL, its fallback
    // image, and the origin URL again when the fallback failed (see `fallback`).
    3 * (max_redirects as usize + 1) * (resolve::MAX_CANDIDATES + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(path: &Path) -> ServeArgs {
        ServeArgs {
            config: Some(path.to_path_buf()),
            upgrade: false,
            upgrade_sock: PathBuf::from(upgrade::DEFAULT_UPGRADE_SOCK),
        }
    }

    #[test]
    fn pingoras_grace_period_is_whole_seconds_rounded_up() {
        assert_eq!(grace_seconds(Duration::ZERO), 0);
        assert_eq!(grace_seconds(Duration::from_millis(200)), 1);
        assert_eq!(grace_seconds(Duration::from_secs(5)), 5);
        assert_eq!(grace_seconds(Duration::from_millis(5001)), 6);
    }

    #[test]
    fn an_address_in_use_is_a_clear_error_naming_the_field() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let dir = std::env::temp_dir().join(format!("ixproxy-busy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("busy.yaml");
        std::fs::write(
            &path,
            format!(
                "listen: 127.0.0.1:0\nadmin_listen: {addr}\nsources:\n  - name: a\n    \
                 hosts: [a.test]\n    secure_url_tokens: [t]\n"
            ),
        )
        .expect("write");
        let err = prepare(&args(&path)).err().expect("admin port in use");
        assert!(
            err.starts_with(&format!("admin_listen: cannot listen on {addr}: ")),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
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
        let err = prepare(&args(&path)).err().expect("invalid config");
        assert!(err.starts_with("sources[0].hosts"), "{err}");
        let err = prepare(&args(&dir.join("missing.yaml")))
            .err()
            .expect("missing");
        assert!(err.contains("missing.yaml"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
