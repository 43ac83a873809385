//! `ixproxy serve` as a process: the addresses it reports (port 0 included), how it stops on
//! SIGINT and SIGTERM (the drain itself: `serve_operating.rs`), and its exit code and message for configs it cannot serve. HTTP behaviour
//! lives in the conformance suite (`tests/`), which runs it against both runtimes.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ixproxy_conformance::client::{send, RawRequest};
use ixproxy_conformance::{ServeProcess, Signal};

const TIMEOUT: Duration = Duration::from_secs(10);

const PORT_ZERO: &str = "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
sources:
  - name: a
    hosts: [a.test]
    secure_url_tokens: [tok-a]
";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ixproxy"))
}

fn start(config: &str) -> ServeProcess {
    ServeProcess::start_temp(bin(), config, &[]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn port_zero_serves_on_the_ports_reported_once_both_are_bound() {
    let serve = start(PORT_ZERO);
    let (listen, admin) = (serve.listen(), serve.admin());
    assert_eq!(listen.ip().to_string(), "127.0.0.1");
    assert_ne!(listen.port(), 0);
    assert_ne!(admin.port(), 0);
    assert_ne!(listen, admin);

    let log = serve.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("ixproxy: gateway on"))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        lines,
        [format!(
            "ixproxy: gateway on http://{listen}, admin on http://{admin} (/healthz, /metrics), \
             {threads} threads"
        )],
        "{log}"
    );

    let health = send(admin, &RawRequest::get("admin", "/healthz"), TIMEOUT).expect("healthz");
    assert_eq!((health.status, health.body_text().as_str()), (200, "ok\n"));
    let metrics = send(admin, &RawRequest::get("admin", "/metrics"), TIMEOUT).expect("metrics");
    assert!(metrics.body_text().contains("ixproxy_requests_total"));
    // The gateway answers on its reported port (an unknown host is enough to see it decide).
    let reply = send(listen, &RawRequest::get("nobody.test", "/x"), TIMEOUT).expect("gateway");
    assert_eq!(reply.status, 410);
}

#[test]
fn sigint_stops_at_once() {
    let serve = start(PORT_ZERO);
    let (status, took) = serve.stop(Signal::SIGINT).expect("stop");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "SIGINT stop took {took:?}");
}

#[test]
fn sigterm_drains_for_twice_the_grace_period_then_exits() {
    let serve = start(&format!("server: {{grace_period: 1s}}\n{PORT_ZERO}"));
    let (status, took) = serve.stop(Signal::SIGTERM).expect("stop");
    assert!(status.success(), "{status}");
    // Serving on for the grace period, then the listeners close and requests in flight get it
    // again, then at most a second of runtime shutdown (README: Readiness and draining).
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(5)).contains(&took),
        "SIGTERM stop took {took:?}"
    );
}

/// Runs `ixproxy serve -c` on `config` to its end (at most [`TIMEOUT`]): for configs it must
/// refuse to serve.
fn refuse(config: &str) -> Output {
    let dir = std::env::temp_dir().join(format!("ixproxy-refuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(format!("{}.yaml", config.len()));
    std::fs::write(&path, config).expect("write");
    let mut child = Command::new(bin())
        .arg("serve")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ixproxy serve kept running when it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn serve_refuses_an_invalid_config_with_the_field_named() {
    let out = refuse(
        "listen: 127.0.0.1:0\nsources:\n  - name: a\n    hosts: []\n    secure_url_tokens: [t]\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: sources[0].hosts"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn serve_refuses_a_busy_listen_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = refuse(&format!(
        "listen: {addr}\nadmin_listen: 127.0.0.1:0\nsources:\n  - name: a\n    \
         hosts: [a.test]\n    secure_url_tokens: [t]\n"
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("error: listen: cannot listen on {addr}: ")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_config_warnings_are_printed_once_at_start() {
    // PORT_ZERO's token is shorter than 16 characters.
    let serve = start(PORT_ZERO);
    let log = serve.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].starts_with("warning: sources[0].secure_url_tokens[0]: token shorter than 16"),
        "{log}"
    );
    assert!(!log.contains("tok-a"), "the token is never shown: {log}");
}
