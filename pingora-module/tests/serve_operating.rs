//! Operating `ixproxy serve` (README: Operating): SIGHUP reloads (a good one on a kept-open
//! keep-alive connection, an invalid one kept out), `/readyz` and the SIGTERM drain with a slow
//! download in flight, the graceful upgrade (`serve -u`, then SIGQUIT to the old process) under
//! a request loop, and `server.threads`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ixproxy_conformance::client::{send, KeepAlive, RawRequest, RawResponse};
use ixproxy_conformance::scripted::{OriginConn, ScriptedOrigin};
use ixproxy_conformance::{ServeProcess, Signal};
use ixproxy_core::sign::{sign_url, SignOptions};

const TIMEOUT: Duration = Duration::from_secs(15);
const OLD_TOKEN: &str = "old-token-0123456789";
const NEW_TOKEN: &str = "new-token-9876543210";
/// What the token file holds before the reload: a token no test signs with.
const PLACEHOLDER_TOKEN: &str = "placeholder-token-000";
/// The slow origin's body: `CHUNKS` pieces of `CHUNK` bytes, one every `CHUNK_PAUSE`.
const CHUNK: usize = 16 * 1024;
const CHUNKS: usize = 10;
const CHUNK_PAUSE: Duration = Duration::from_millis(250);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ixproxy"))
}

/// A fresh directory for one test's config, secrets, logs and upgrade socket.
fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ixproxy-op-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

/// A config on port 0 whose source takes `OLD_TOKEN` and the token in `token_file`.
fn config(extra: &str, token_file: &Path) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{extra}sources:\n  - name: a\n    \
         hosts: [a.test]\n    secure_url_tokens: [{OLD_TOKEN}, {{file: {}}}]\n    \
         allow_private_origins: true\n",
        token_file.display()
    )
}

fn signed_get(token: &str, origin_url: &str) -> RawRequest {
    RawRequest::get(
        "a.test",
        &sign_url(token, origin_url, &[], &SignOptions::default()),
    )
}

/// An origin answering every request with `ok` (keep-alive is the gateway's business).
fn answer_ok(mut conn: OriginConn) {
    while conn.read_head().is_some() {
        if !conn.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
        {
            return;
        }
    }
}

/// An origin sending `CHUNKS * CHUNK` bytes of `x` slowly, with a `Content-Length`.
fn answer_slowly(mut conn: OriginConn) {
    if conn.read_head().is_none() {
        return;
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        CHUNK * CHUNKS
    );
    if !conn.send(head.as_bytes()) {
        return;
    }
    for _ in 0..CHUNKS {
        std::thread::sleep(CHUNK_PAUSE);
        if !conn.send(&[b'x'; CHUNK]) {
            return;
        }
    }
}

/// Polls `sample` on the admin listener (every 50 ms, at most 10 s) until it reaches `value`.
fn await_sample(serve: &ServeProcess, sample: &str, value: u64) {
    for _ in 0..200 {
        if serve.metric(sample).is_ok_and(|v| v >= value) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{sample} never reached {value}; log:\n{}", serve.log_tail());
}

const RELOAD_OK: &str = "ixproxy_config_reloads_total{result=\"ok\"}";
const RELOAD_ERROR: &str = "ixproxy_config_reloads_total{result=\"error\"}";

#[test]
fn a_reload_makes_a_new_token_valid_on_a_kept_open_keep_alive_connection() {
    let dir = work_dir("reload");
    let token_file = dir.join("token.txt");
    std::fs::write(&token_file, format!("{PLACEHOLDER_TOKEN}\n")).expect("token");
    let origin = ScriptedOrigin::start(answer_ok).expect("origin");
    let url = origin.url("/a.txt");
    let serve = ServeProcess::start(bin(), &config("", &token_file), &[], &dir)
        .unwrap_or_else(|e| panic!("{e}"));

    let mut conn = KeepAlive::connect(serve.listen(), TIMEOUT).expect("connect");
    let local = conn.local_addr().expect("local");
    let status = |r: Result<RawResponse, _>| r.map(|r| r.status).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status(conn.send(&signed_get(OLD_TOKEN, &url))), 200);
    assert_eq!(
        status(conn.send(&signed_get(NEW_TOKEN, &url))),
        403,
        "not valid before the reload"
    );

    // The secret file changes, the config file too (a limit), then SIGHUP.
    std::fs::write(&token_file, format!("{NEW_TOKEN}\n")).expect("token");
    let reloaded = config("limits: {max_request_headers: 50}\n", &token_file);
    std::fs::write(serve.config_path(), reloaded).expect("config");
    serve.signal(Signal::SIGHUP).expect("SIGHUP");
    await_sample(&serve, RELOAD_OK, 1);

    // The same TCP connection, still open: the new token is valid now, the old one still is.
    assert_eq!(status(conn.send(&signed_get(NEW_TOKEN, &url))), 200);
    assert_eq!(status(conn.send(&signed_get(OLD_TOKEN, &url))), 200);
    assert_eq!(conn.local_addr().expect("local"), local);
    assert_eq!(serve.metric(RELOAD_ERROR).expect("metric"), 0);
    let log = serve.log();
    assert!(log.contains("config reloaded from"), "{log}");
    assert!(
        !log.contains(NEW_TOKEN) && !log.contains(OLD_TOKEN),
        "{log}"
    );
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_reload_keeps_the_running_config_and_names_the_field() {
    let dir = work_dir("bad-reload");
    let token_file = dir.join("token.txt");
    std::fs::write(&token_file, NEW_TOKEN).expect("token");
    let origin = ScriptedOrigin::start(answer_ok).expect("origin");
    let url = origin.url("/a.txt");
    let serve = ServeProcess::start(bin(), &config("", &token_file), &[], &dir)
        .unwrap_or_else(|e| panic!("{e}"));
    let get = |token: &str| {
        send(serve.listen(), &signed_get(token, &url), TIMEOUT)
            .map(|r| r.status)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(get(OLD_TOKEN), 200);

    // An invalid field, and the old token dropped: none of it may apply.
    let broken = config("", &token_file)
        .replace(&format!("[{OLD_TOKEN}, "), "[")
        .replace("hosts: [a.test]", "hosts: [a.test, \"bad host\"]");
    std::fs::write(serve.config_path(), broken).expect("config");
    serve.signal(Signal::SIGHUP).expect("SIGHUP");
    await_sample(&serve, RELOAD_ERROR, 1);

    assert_eq!(get(OLD_TOKEN), 200, "the running config stays");
    assert_eq!(get(NEW_TOKEN), 200);
    assert_eq!(serve.metric(RELOAD_ERROR).expect("metric"), 1);
    assert_eq!(serve.metric(RELOAD_OK).expect("metric"), 0);
    let log = serve.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("config reload refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(refused[0].contains("sources[0].hosts[1]"), "{log}");
    assert!(
        !log.contains(NEW_TOKEN) && !log.contains(OLD_TOKEN),
        "{log}"
    );
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_download_in_flight_finishes_under_its_config_across_a_reload() {
    let dir = work_dir("reload-in-flight");
    let token_file = dir.join("token.txt");
    std::fs::write(&token_file, NEW_TOKEN).expect("token");
    let origin = ScriptedOrigin::start(answer_slowly).expect("origin");
    let url = origin.url("/slow.bin");
    let serve = ServeProcess::start(bin(), &config("", &token_file), &[], &dir)
        .unwrap_or_else(|e| panic!("{e}"));
    let listen = serve.listen();
    let download = {
        let req = signed_get(OLD_TOKEN, &url);
        std::thread::spawn(move || send(listen, &req, TIMEOUT))
    };
    let started = Instant::now();
    while origin.heads("/slow.bin").is_empty() {
        assert!(
            started.elapsed() < TIMEOUT,
            "the origin never got the request"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The new config drops the token the download was signed with and shortens the body
    // pause below the origin's: neither applies to the request already in flight.
    let reloaded = config("upstream: {body_timeout: 100ms}\n", &token_file)
        .replace(&format!("[{OLD_TOKEN}, "), "[");
    std::fs::write(serve.config_path(), reloaded).expect("config");
    serve.signal(Signal::SIGHUP).expect("SIGHUP");
    await_sample(&serve, RELOAD_OK, 1);
    let body = download
        .join()
        .expect("download thread")
        .unwrap_or_else(|e| panic!("download: {e}"));
    assert_eq!(
        (body.status, body.body.len()),
        (200, CHUNK * CHUNKS),
        "the whole body"
    );
    // New requests use the new config.
    let again = send(listen, &signed_get(OLD_TOKEN, &url), TIMEOUT).expect("after");
    assert_eq!(again.status, 403, "the dropped token is refused now");
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

fn readyz(admin: SocketAddr) -> Option<u16> {
    send(
        admin,
        &RawRequest::get("admin", "/readyz"),
        Duration::from_secs(2),
    )
    .ok()
    .map(|r| r.status)
}

#[test]
fn sigterm_turns_readyz_503_serves_on_lets_a_slow_download_finish_then_exits() {
    let dir = work_dir("drain");
    let token_file = dir.join("token.txt");
    std::fs::write(&token_file, NEW_TOKEN).expect("token");
    let origin = ScriptedOrigin::start(answer_slowly).expect("origin");
    let url = origin.url("/slow.bin");
    let grace = Duration::from_secs(2);
    let mut serve = ServeProcess::start(
        bin(),
        &config("server: {grace_period: 2s}\n", &token_file),
        &[],
        &dir,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (listen, admin) = (serve.listen(), serve.admin());
    assert_eq!(readyz(admin), Some(200));

    let download = {
        let req = signed_get(OLD_TOKEN, &url);
        std::thread::spawn(move || send(listen, &req, TIMEOUT))
    };
    // The download is in flight once the origin has its request.
    let started = Instant::now();
    while origin.heads("/slow.bin").is_empty() {
        assert!(
            started.elapsed() < TIMEOUT,
            "the origin never got the request"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    serve.signal(Signal::SIGTERM).expect("SIGTERM");
    let sent = Instant::now();
    let mut flipped = None;
    while sent.elapsed() < grace {
        if readyz(admin) == Some(503) {
            flipped = Some(sent.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let flipped = flipped.expect("/readyz never answered 503 during the drain");
    assert!(flipped < Duration::from_secs(1), "/readyz took {flipped:?}");
    // Still serving during the drain: a new connection is accepted and answered.
    let during = send(listen, &RawRequest::get("nobody.test", "/x"), TIMEOUT).expect("drain");
    assert_eq!(during.status, 410);

    let body = download
        .join()
        .expect("download thread")
        .unwrap_or_else(|e| panic!("download: {e}"));
    assert_eq!(body.status, 200);
    assert_eq!(body.body.len(), CHUNK * CHUNKS, "the whole body");
    assert!(body.body.iter().all(|&b| b == b'x'));

    let status = serve
        .wait_exit(Duration::from_secs(10))
        .expect("wait")
        .unwrap_or_else(|| panic!("still running after the drain; log:\n{}", serve.log_tail()));
    let took = sent.elapsed();
    assert!(status.success(), "{status}");
    // Serving for the grace period, then the listeners close and requests in flight get it
    // again, then at most a second of runtime shutdown.
    assert!(
        (2 * grace..2 * grace + Duration::from_secs(3)).contains(&took),
        "exit {took:?} after SIGTERM"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_threads_is_reported_at_start() {
    let dir = work_dir("threads");
    let token_file = dir.join("token.txt");
    std::fs::write(&token_file, NEW_TOKEN).expect("token");
    let serve = ServeProcess::start(
        bin(),
        &config("server: {threads: 3}\n", &token_file),
        &[],
        &dir,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let log = serve.log();
    let line = log
        .lines()
        .find(|l| l.starts_with("ixproxy: gateway on"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.ends_with(", 3 threads"), "{line}");
    // Pingora names each worker thread of a service after it. The line above is printed before
    // the service's runtime has spawned them all: polled every 20 ms for at most 5 s.
    let count_workers = || {
        std::fs::read_dir(format!("/proc/{}/task", serve.pid()))
            .expect("tasks")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim_end() == "gateway")
            .count()
    };
    let started = Instant::now();
    let mut workers = count_workers();
    while workers < 3 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        workers = count_workers();
    }
    assert_eq!(workers, 3, "gateway worker threads");
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests sent one after the other, each on a new connection, until `stop` or the bounds.
struct Loop {
    sent: usize,
    failures: Vec<String>,
}

fn request_loop(listen: SocketAddr, req: RawRequest, stop: Arc<AtomicBool>) -> Loop {
    const MAX_REQUESTS: usize = 20_000;
    const MAX_TIME: Duration = Duration::from_secs(40);
    let started = Instant::now();
    let mut result = Loop {
        sent: 0,
        failures: Vec::new(),
    };
    while !stop.load(Ordering::SeqCst) && result.sent < MAX_REQUESTS && started.elapsed() < MAX_TIME
    {
        result.sent += 1;
        match send(listen, &req, Duration::from_secs(5)) {
            Ok(r) if r.status == 200 && r.body == b"ok" => {}
            Ok(r) => result.failures.push(format!("status {}", r.status)),
            Err(e) => result.failures.push(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    result
}

#[test]
fn an_upgrade_takes_the_sockets_over_without_a_failed_request() {
    let dir = work_dir("upgrade");
    let token_file = dir.join("token.txt");
    std::fs::write(&token_file, NEW_TOKEN).expect("token");
    let sock = dir.join("upgrade.sock");
    let sock_arg = sock.to_str().expect("utf-8").to_owned();
    let origin = ScriptedOrigin::start(answer_ok).expect("origin");
    let req = signed_get(OLD_TOKEN, &origin.url("/a.txt"));
    let extra = "server: {grace_period: 1s}\n";
    let mut old = ServeProcess::start_with_args(
        bin(),
        &config(extra, &token_file),
        &["--upgrade-sock", &sock_arg],
        &[],
        &dir,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (listen, admin) = (old.listen(), old.admin());

    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let (req, stop) = (req.clone(), stop.clone());
        std::thread::spawn(move || request_loop(listen, req, stop))
    };

    // The loop runs through the old process before the upgrade starts.
    await_sample(
        &old,
        "ixproxy_requests_total{outcome=\"forwarded\",source=\"a\"}",
        10,
    );

    // The new process names the ports the old one serves (port 0 would be ambiguous).
    let new_config = config(extra, &token_file).replacen(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n",
        &format!("listen: {listen}\nadmin_listen: {admin}\n"),
        1,
    );
    assert!(new_config.starts_with(&format!("listen: {listen}\n")));
    let starting = {
        let (dir, sock_arg) = (dir.clone(), sock_arg.clone());
        std::thread::spawn(move || {
            ServeProcess::start_with_args(
                bin(),
                &new_config,
                &["-u", "--upgrade-sock", &sock_arg],
                &[],
                &dir,
            )
        })
    };
    // The new process is waiting once its upgrade socket exists; then the old one is told.
    let started = Instant::now();
    while !sock.exists() {
        if starting.is_finished() {
            match starting.join().expect("start thread") {
                Ok(_) => panic!("the new process started without taking over"),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(started.elapsed() < TIMEOUT, "no upgrade socket at {sock:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    old.signal(Signal::SIGQUIT).expect("SIGQUIT");
    let new = starting
        .join()
        .expect("start thread")
        .unwrap_or_else(|e| panic!("{e}\nold log:\n{}", old.log_tail()));
    assert_eq!(
        (new.listen(), new.admin()),
        (listen, admin),
        "same addresses"
    );
    assert!(
        new.log()
            .contains("threads, sockets taken over from the running instance"),
        "{}",
        new.log()
    );

    // The old process hands over, drains and exits (Pingora's 5 s hand-over, the grace period).
    let old_exit = old
        .wait_exit(Duration::from_secs(15))
        .expect("wait")
        .unwrap_or_else(|| panic!("the old process did not exit; log:\n{}", old.log_tail()));
    assert!(old_exit.success(), "{old_exit}");
    assert!(old.log().contains("SIGQUIT: draining (/readyz 503)"));
    // A few more requests with only the new process left.
    let forwarded = "ixproxy_requests_total{outcome=\"forwarded\",source=\"a\"}";
    let after = new.metric(forwarded).expect("metric");
    await_sample(&new, forwarded, after + 20);
    stop.store(true, Ordering::SeqCst);
    let result = looping.join().expect("loop thread");
    assert!(result.sent > 40, "only {} requests", result.sent);
    assert!(
        result.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        result.failures.len(),
        result.sent,
        &result.failures[..result.failures.len().min(5)]
    );
    assert_eq!(readyz(admin), Some(200), "the new process is ready");
    drop(new);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Spawns `serve -u` in a fresh work directory `name` with its upgrade socket there (stderr
/// piped); returns the process and the socket's path.
fn spawn_upgrade(name: &str) -> (std::process::Child, PathBuf) {
    let dir = work_dir(name);
    let token_file = dir.join("token.txt");
    std::fs::write(&token_file, NEW_TOKEN).expect("token");
    let path = dir.join("c.yaml");
    std::fs::write(&path, config("", &token_file)).expect("config");
    let sock = dir.join("upgrade.sock");
    let child = std::process::Command::new(bin())
        .arg("serve")
        .arg("-c")
        .arg(&path)
        .arg("-u")
        .arg("--upgrade-sock")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    (child, sock)
}

#[test]
fn an_upgrade_with_no_running_instance_exits_with_the_reason() {
    let (mut child, sock) = spawn_upgrade("upgrade-alone");
    let dir = sock.parent().expect("dir").to_path_buf();
    // Pingora waits about five seconds for the sockets.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve -u kept waiting with nobody to take over from");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: upgrade: no listening sockets received on {}",
            sock.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `serve -u` on `sock`, waits until it listens there, sends it `signal` and returns its
/// exit status and stderr.
fn stop_a_waiting_upgrade(
    name: &str,
    signal: Signal,
) -> (std::process::ExitStatus, String, PathBuf) {
    let (child, sock) = spawn_upgrade(name);
    // Pingora waits about five seconds; the socket exists from the start of the wait.
    let started = Instant::now();
    while !sock.exists() && started.elapsed() < TIMEOUT {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sock.exists(), "serve -u made no socket at {sock:?}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("signal");
    let out = child.wait_with_output().expect("wait");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        sock,
    )
}

#[test]
fn a_waiting_upgrade_stopped_by_sigint_or_sigterm_removes_its_socket() {
    for (name, signal) in [("wait-int", Signal::SIGINT), ("wait-term", Signal::SIGTERM)] {
        let (status, stderr, sock) = stop_a_waiting_upgrade(name, signal);
        assert_eq!(status.code(), Some(1), "{signal}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "ixproxy: {signal} while waiting on {}",
                sock.display()
            )),
            "{stderr}"
        );
        assert!(!sock.exists(), "{signal} left {sock:?} behind");
        let _ = std::fs::remove_dir_all(sock.parent().expect("dir"));
    }
}

/// Leaves a unix socket file at `path` with nothing listening on it, as a `serve -u` killed
/// while it waits does.
fn stale_socket(path: &Path) {
    drop(std::os::unix::net::UnixListener::bind(path).expect("bind"));
    assert!(path.exists());
}

#[test]
fn a_stale_upgrade_socket_is_removed_at_start_and_at_exit_and_a_live_one_kept() {
    let dir = work_dir("stale");
    let token_file = dir.join("token.txt");
    std::fs::write(&token_file, NEW_TOKEN).expect("token");
    let sock = dir.join("upgrade.sock");
    let sock_arg = sock.to_str().expect("utf-8").to_owned();
    let start = || {
        ServeProcess::start_with_args(
            bin(),
            &config("server: {grace_period: 0s}\n", &token_file),
            &["--upgrade-sock", &sock_arg],
            &[],
            &dir,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    stale_socket(&sock);
    let serve = start();
    assert!(!sock.exists(), "stale socket kept at start");
    assert!(
        serve.log().contains("removed the stale upgrade socket"),
        "{}",
        serve.log()
    );
    // One left while it serves is gone once it stops, by SIGTERM's drain or by SIGINT.
    stale_socket(&sock);
    let (status, _) = serve.stop(Signal::SIGTERM).expect("stop");
    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "stale socket kept after SIGTERM");
    let serve = start();
    stale_socket(&sock);
    let (status, _) = serve.stop(Signal::SIGINT).expect("stop");
    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "stale socket kept after SIGINT");
    // A socket something listens on (a `serve -u` waiting) is neither removed nor connected to.
    let serve = start();
    let waiting = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    waiting.set_nonblocking(true).expect("nonblocking");
    let (status, _) = serve.stop(Signal::SIGINT).expect("stop");
    assert!(status.success(), "{status}");
    assert!(sock.exists(), "a listening socket was removed");
    assert_eq!(
        waiting.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the exiting process connected to the waiting socket"
    );
    drop(waiting);
    let _ = std::fs::remove_dir_all(&dir);
}
