//! `ixproxy serve` as a process: the addresses it reports (port 0 included), how it stops on
//! SIGINT and SIGTERM (the drain itself: `serve_operating.rs`), and its exit code and message for configs it cannot serve. HTTP behaviour
//! lives in the conformance suite (`tests/`), which runs it against both runtimes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ixproxy_conformance::client::{send, RawRequest};
use ixproxy_conformance::scripted::{head_header, request_path, OriginConn, ScriptedOrigin};
use ixproxy_conformance::{ServeProcess, Signal};
use ixproxy_core::sign::{sign_url, SignOptions};

const TIMEOUT: Duration = Duration::from_secs(10);

const PORT_ZERO_HEAD: &str = "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n";

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

/// An origin that answers every request with a body holding [`BODY_MARK`], except under
/// `/echo/`: there a faulty origin echoes the request's target and origin secret in a response
/// head Pingora cannot parse.
fn answer_marked(mut conn: OriginConn) {
    while let Some(head) = conn.read_head() {
        if request_path(&head).starts_with("/echo/") {
            let secret = head_header(&head, "x-imgix-origin-secret").unwrap_or_default();
            let echo = format!(
                "HTTP/1.1 200 OK\r\nx-echo: {} {secret}\r\nBad Header Line\r\n\r\n",
                request_path(&head)
            );
            conn.send(echo.as_bytes());
            return;
        }
        let body = format!("origin body {BODY_MARK}");
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             set-cookie: origin={BODY_MARK}\r\n\r\n",
            body.len()
        );
        if !conn.send(format!("{head}{body}").as_bytes()) {
            return;
        }
    }
}

const BODY_MARK: &str = "BodyMark5813";

#[test]
fn no_log_level_prints_a_path_query_signature_token_or_auth_header() {
    let origin = ScriptedOrigin::start(answer_marked).expect("origin");
    let token = "LogToken0123456789";
    let config = format!(
        "{PORT_ZERO_HEAD}sources:\n  - name: a\n    hosts: [a.test]\n    \
         secure_url_tokens: [{token}]\n    allow_private_origins: true\n    origin_auth:\n      \
         basic_auth: {{username: LogUser77, password: LogPass77}}\n      \
         request_handshake: HandshakeMark4242\n      request_signing_key: SigningKey9191\n      \
         hosts: ['127.0.0.1']\n"
    );
    let env = [("RUST_LOG".to_owned(), "trace".to_owned())];
    let serve = ServeProcess::start_temp(bin(), &config, &env).unwrap_or_else(|e| panic!("{e}"));
    let target = sign_url(
        token,
        &origin.url("/PathMark3131/img.png?QueryMark=QueryValue2727"),
        &[],
        &SignOptions::default(),
    );
    let s = target
        .rsplit_once("s=")
        .map(|(_, s)| s.to_owned())
        .expect("s=");
    let mut req = RawRequest::get("a.test", &target);
    req.headers.push((
        "Authorization".to_owned(),
        "Bearer ClientAuth6464".to_owned(),
    ));
    req.headers
        .push(("Cookie".to_owned(), "session=ClientCookie8383".to_owned()));
    let reply = send(serve.listen(), &req, TIMEOUT).expect("signed request");
    assert_eq!(reply.status, 200, "{}", serve.log_tail());
    assert!(reply.body_text().contains(BODY_MARK));
    // The origin got what the log must not show.
    let heads = origin.heads("/PathMark3131/");
    let head = heads.first().expect("the origin got the request");
    let secret = head_header(head, "x-imgix-origin-secret").expect("origin secret");
    let signature = head_header(head, "x-imgix-signature").expect("signature");
    let basic = head_header(head, "authorization").expect("basic auth");
    // The echoing origin: Pingora's error line for its response quotes the bytes it got.
    let echo = sign_url(
        token,
        &origin.url("/echo/EchoPath6161?EchoQuery=1"),
        &[],
        &SignOptions::default(),
    );
    let reply = send(serve.listen(), &RawRequest::get("a.test", &echo), TIMEOUT).expect("echo");
    assert_eq!(reply.status, 502, "{}", serve.log_tail());
    // Pingora logs its error line before the access log line of that request is queued.
    let deadline = Instant::now() + TIMEOUT;
    while !serve.log().contains("\"status\":502") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        serve.log().contains("bytes not shown"),
        "Pingora's line about the echo is there, without the bytes: {}",
        serve.log_tail()
    );
    // A request Pingora cannot parse: its raw bytes are what its debug line would print.
    let mut raw = TcpStream::connect(serve.listen()).expect("connect");
    raw.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    raw.write_all(
        b"GET /BadReqPath5050?x=1 HTTP/1.1\r\nHost: a.test\r\nAuthorization: Bearer \
          BadReqAuth1717\r\nBad Header Line\r\n\r\n",
    )
    .expect("write");
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let log = serve.log();
    // RUST_LOG took effect: Pingora's info lines are there (the default shows warnings only).
    assert!(
        log.contains("INFO  pingora_core::server] Server starting"),
        "{log}"
    );
    let leaked: Vec<&str> = [
        "PathMark3131",
        "QueryMark",
        "QueryValue2727",
        s.as_str(),
        token,
        "ClientAuth6464",
        "ClientCookie8383",
        secret.as_str(),
        "HandshakeMark4242",
        signature.as_str(),
        "SigningKey9191",
        basic.as_str(),
        "LogPass77",
        BODY_MARK,
        "BadReqPath5050",
        "BadReqAuth1717",
        "EchoPath6161",
        "EchoQuery",
    ]
    .into_iter()
    .filter(|text| log.contains(text))
    .collect();
    assert!(leaked.is_empty(), "{leaked:?} in the log:\n{log}");
}

#[test]
fn the_serving_process_is_not_dumpable() {
    use std::io::BufRead;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    // A non-dumpable process's files in /proc/<pid>/ belong to root whatever its uid (proc(5)), so the
    // gateway runs as a user other than root: nobody (65534) when the test runs as root, else
    // the test's own user.
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, PORT_ZERO).expect("config");
    let mut command = Command::new(bin());
    command
        .arg("serve")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if me == 0 {
        command.uid(65534).gid(65534);
    }
    let mut child = command.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    let started = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("ixproxy: gateway on") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let owner = std::fs::metadata(format!("/proc/{}/status", child.id())).map(|m| m.uid());
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "serve did not start: {seen:?}");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert_ne!(
        me == 0,
        uid_line.contains("\t0\t"),
        "runs as another user: {uid_line}"
    );
    assert_eq!(
        owner.ok(),
        Some(0),
        "/proc/<pid>/status of serve running as {uid_line}"
    );
}
