//! The client connection limits and timeouts and the origin body timeout of `ixproxy serve`
//! (README: The native gateway), on the real binary with 1 s timeouts: idle, slow-header and
//! slow-reading clients are dropped at their timeouts while other clients are served,
//! `max_connections` refuses the connection over it, `max_connections_per_client` refuses one
//! address's connections over its share while another address is served,
//! `max_inflight_per_source` answers 503
//! and releases its slots on every path, an origin pausing inside its body longer than
//! `upstream.body_timeout` is cut, and a slow download outlives `upstream.timeout`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ixproxy_conformance::client::{send, send_until_close, RawRequest, RawResponse};
use ixproxy_conformance::harness::DeadPort;
use ixproxy_conformance::origin::RecordingOrigin;
use ixproxy_conformance::raw_origin::complete_by_framing;
use ixproxy_conformance::scripted::{request_path, OriginConn, ScriptedOrigin};
use ixproxy_conformance::ServeProcess;
use ixproxy_core::sign::{sign_url, SignOptions};

const TIMEOUT: Duration = Duration::from_secs(15);
const TOKEN: &str = "tok-limits";
/// The 1 s timeouts of [`CONFIG`].
const LIMIT: Duration = Duration::from_secs(1);
/// How much later than its timeout a cut may come (scheduling, a debug build).
const SLACK: Duration = Duration::from_millis(1200);
/// Size of the slow download: well over what the loopback socket buffers of both hops hold.
const BIG: usize = 24 * 1024 * 1024;

const CONFIG: &str = "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream:
  connect_timeout: 1s
  timeout: 1s
  body_timeout: 1s
  max_body_bytes: 33554432
limits:
  client_header_timeout: 1s
  client_idle_timeout: 1s
  client_write_timeout: 1s
  max_connections: 50
  max_inflight_per_source: 2
sources:
  - name: held
    hosts: [held.test]
    secure_url_tokens: [tok-limits]
    allow_private_origins: true
  - name: other
    hosts: [other.test]
    secure_url_tokens: [tok-limits]
    allow_private_origins: true
";

fn start(config: &str) -> ServeProcess {
    ServeProcess::start_temp(Path::new(env!("CARGO_BIN_EXE_ixproxy")), config, &[])
        .unwrap_or_else(|e| panic!("{e}"))
}

fn signed(origin_url: &str) -> String {
    sign_url(TOKEN, origin_url, &[], &SignOptions::default())
}

fn get(addr: SocketAddr, host: &str, origin_url: &str) -> RawResponse {
    send(addr, &RawRequest::get(host, &signed(origin_url)), TIMEOUT)
        .unwrap_or_else(|e| panic!("GET {origin_url} via {host}: {e}"))
}

/// The `ixproxy_requests_total` counter for `outcome`.
fn metric(serve: &ServeProcess, outcome: &str) -> u64 {
    serve
        .outcome_count(outcome)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls the counter for `outcome` (every 50 ms, for at most 10 s) until it reaches `value`.
fn await_metric(serve: &ServeProcess, outcome: &str, value: u64) -> Instant {
    for _ in 0..200 {
        if metric(serve, outcome) >= value {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{outcome} never reached {value}");
}

/// Requests that ended forwarded or with the client gone.
fn ended(serve: &ServeProcess) -> u64 {
    metric(serve, "forwarded") + metric(serve, "client_closed")
}

/// Polls [`ended`] (every 50 ms, for at most 10 s) until it reaches `value`.
fn await_ended(serve: &ServeProcess, value: u64) {
    for _ in 0..200 {
        if ended(serve) >= value {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("fewer than {value} requests ended");
}

/// Reads until the peer closes (EOF or reset) or `limit` passes; returns the bytes and when
/// the connection ended (`None`: it did not).
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while Instant::now() < end {
        let _ = stream.set_read_timeout(Some(end.saturating_duration_since(Instant::now())));
        match stream.read(&mut buf) {
            Ok(0) => return (got, Some(Instant::now())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, Some(Instant::now()))
            }
            Err(_) => break,
        }
    }
    (got, None)
}

/// Asserts that `ended - started` is the 1 s timeout, give or take scheduling.
fn at_the_timeout(what: &str, started: Instant, ended: Option<Instant>) {
    let ended = ended.unwrap_or_else(|| panic!("{what}: the connection was never closed"));
    let took = ended - started;
    assert!(
        took >= LIMIT - Duration::from_millis(100) && took < LIMIT + SLACK,
        "{what}: closed after {took:?}, the timeout is {LIMIT:?}"
    );
}

/// Runs `check` in a thread while `addr` must keep serving ordinary requests (at least three,
/// each answered within a second, for as long as the check runs).
fn while_others_are_served(addr: SocketAddr, origin_url: &str, check: impl FnOnce() + Send) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let checker = scope.spawn(|| {
            check();
            done.store(true, Ordering::SeqCst);
        });
        for served in 0..100 {
            if done.load(Ordering::SeqCst) && served >= 3 {
                break;
            }
            let started = Instant::now();
            let reply = get(addr, "other.test", origin_url);
            assert_eq!(reply.status, 200);
            assert!(started.elapsed() < LIMIT, "{:?}", started.elapsed());
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(panic) = checker.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

#[test]
fn idle_slow_header_and_slow_reading_clients_are_dropped_at_their_timeouts() {
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(CONFIG);
    let addr = serve.listen();
    let ok = format!("http://{}/asset/ok.jpg", origin.http);

    // Idle keep-alive: one request answered, then the connection closes 1 s later.
    while_others_are_served(addr, &ok, || {
        let mut conn = TcpStream::connect(addr).expect("connect");
        let req = RawRequest::get("held.test", &signed(&ok));
        conn.write_all(&req.to_bytes_with(false)).expect("send");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.ends_with(b"ok.jpg") {
            let n = conn.read(&mut buf).expect("response");
            assert_ne!(n, 0, "closed before the response");
            head.extend_from_slice(&buf[..n]);
        }
        let answered = Instant::now();
        let (rest, closed) = read_to_close(&mut conn, TIMEOUT);
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        at_the_timeout("idle keep-alive connection", answered, closed);
    });

    // A new connection that sends nothing, and one that trickles its header: both closed at
    // the header timeout, with no response.
    while_others_are_served(addr, &ok, || {
        let mut silent = TcpStream::connect(addr).expect("connect");
        let connected = Instant::now();
        let (got, closed) = read_to_close(&mut silent, TIMEOUT);
        assert!(got.is_empty());
        at_the_timeout("silent new connection", connected, closed);

        let mut slow = TcpStream::connect(addr).expect("connect");
        let connected = Instant::now();
        slow.write_all(b"GET /x HTTP/1.1\r\nHost: held.test\r\n")
            .expect("send");
        let mut reader = slow.try_clone().expect("clone");
        let closed = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&closed);
        let watcher = std::thread::spawn(move || {
            let ended = read_to_close(&mut reader, TIMEOUT);
            seen.store(true, Ordering::SeqCst);
            ended
        });
        // One header line every 200 ms: each read of the gateway succeeds, the whole header
        // never completes.
        for i in 0..25 {
            if closed.load(Ordering::SeqCst)
                || slow
                    .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                    .is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let (got, ended) = watcher.join().expect("watcher");
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        at_the_timeout("trickled request header", connected, ended);
    });

    // The next request's header on a keep-alive connection has its own deadline, from its
    // first byte.
    while_others_are_served(addr, &ok, || {
        let mut conn = TcpStream::connect(addr).expect("connect");
        let req = RawRequest::get("held.test", &signed(&ok));
        conn.write_all(&req.to_bytes_with(false)).expect("send");
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(b"ok.jpg") {
            let n = conn.read(&mut buf).expect("response");
            assert_ne!(n, 0);
            got.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"GET /y HTTP/1.1\r\n").expect("next");
        let started = Instant::now();
        let mut reader = conn.try_clone().expect("clone");
        let watcher = std::thread::spawn(move || read_to_close(&mut reader, TIMEOUT));
        for i in 0..5 {
            // 5 × 150 ms: within the idle timeout each, past the header timeout together.
            std::thread::sleep(Duration::from_millis(150));
            if conn
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .is_err()
            {
                break;
            }
        }
        let (_, ended) = watcher.join().expect("watcher");
        at_the_timeout("trickled second request header", started, ended);
    });

    // A client that stops reading a large response is dropped once a write has made no
    // progress for 1 s; its transfer is never complete.
    let before = metric(&serve, "client_closed");
    while_others_are_served(addr, &ok, || {
        let big = format!("http://{}/bytes-cl/{BIG}", origin.http);
        let mut conn = TcpStream::connect(addr).expect("connect");
        let req = RawRequest::get("held.test", &signed(&big));
        conn.write_all(&req.to_bytes()).expect("send");
        // Not reading: the gateway gives up on its own, and counts it.
        await_metric(&serve, "client_closed", before + 1);
        let (got, closed) = read_to_close(&mut conn, TIMEOUT);
        assert!(
            closed.is_some(),
            "the stalled client's connection stayed open"
        );
        assert!(got.starts_with(b"HTTP/1.1 200 "));
        assert!(got.len() < BIG, "the whole body was delivered");
    });
    assert_eq!(metric(&serve, "client_closed"), before + 1);
}

#[test]
fn max_connections_closes_the_connection_over_it_at_once() {
    let origin = RecordingOrigin::start().expect("origin");
    let config = CONFIG
        .replace("max_connections: 50", "max_connections: 2")
        .replace("client_idle_timeout: 1s", "client_idle_timeout: 30s")
        .replace("client_header_timeout: 1s", "client_header_timeout: 30s");
    let serve = start(&config);
    let addr = serve.listen();
    let ok = format!("http://{}/asset/ok.jpg", origin.http);
    let req = RawRequest::get("held.test", &signed(&ok));

    // Two keep-alive connections, each shown to be served (so both are counted).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.write_all(&req.to_bytes_with(false)).expect("send");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"ok.jpg") {
            let n = conn.read(&mut buf).expect("response");
            assert_ne!(n, 0);
            got.extend_from_slice(&buf[..n]);
        }
        held.push(conn);
    }
    // The third is closed at once, before any response.
    let refused = send_until_close(addr, &req, TIMEOUT).expect("third connection");
    assert_eq!(refused.header_end(), None, "{}", refused.text());
    assert!(
        refused.elapsed < Duration::from_millis(500),
        "{:?}",
        refused.elapsed
    );
    // The held ones still work.
    held[0].write_all(&req.to_bytes_with(false)).expect("reuse");
    let mut buf = [0u8; 4096];
    assert_ne!(held[0].read(&mut buf).expect("answer"), 0);

    // Once one closes, a new connection is served again.
    drop(held.pop());
    let mut served = false;
    for _ in 0..40 {
        let got = send_until_close(addr, &req, TIMEOUT).expect("retry");
        if got.header_end().is_some() {
            assert_eq!(got.response(false).expect("response").status, 200);
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served, "no connection admitted after one closed");
}

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let SocketAddr::V4(to) = to else {
        panic!("the gateway listens on 127.0.0.1")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )
    .expect("bind");
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).expect("connect");
    TcpStream::from(fd)
}

/// Whether the server closed `conn` within `limit` without sending anything.
fn closed_unanswered_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let (got, closed) = read_to_close(conn, limit);
    got.is_empty() && closed.is_some()
}

#[test]
fn one_client_address_cannot_take_every_connection() {
    const SHARE: usize = 5;
    let origin = RecordingOrigin::start().expect("origin");
    let config = CONFIG
        .replace(
            "max_connections: 50",
            &format!("max_connections: 8\n  max_connections_per_client: {SHARE}"),
        )
        .replace("client_header_timeout: 1s", "client_header_timeout: 30s");
    let serve = start(&config);
    let addr = serve.listen();
    let attacker = Ipv4Addr::new(127, 0, 0, 1);
    let ok = format!("http://{}/asset/ok.jpg", origin.http);
    let req = RawRequest::get("other.test", &signed(&ok));

    // Slowloris from one address: more partial headers than its share, each kept open.
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..SHARE + 3 {
        let mut conn = connect_from(attacker, addr);
        conn.write_all(b"GET /x HTTP/1.1\r\nHost: held.test\r\nX-Slow: ")
            .expect("partial header");
        if closed_unanswered_within(&mut conn, Duration::from_millis(300)) {
            refused += 1;
        } else {
            open.push(conn);
        }
    }
    assert_eq!((open.len(), refused), (SHARE, 3));

    // A second address is still served, and its connection is not counted against the first.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr);
    other.write_all(&req.to_bytes_with(true)).expect("send");
    let (got, _) = read_to_close(&mut other, TIMEOUT);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");

    // Once one of the first address's connections closes, it gets that slot back.
    drop(open.pop());
    let mut served = false;
    for _ in 0..40 {
        let mut again = connect_from(attacker, addr);
        again.write_all(&req.to_bytes_with(true)).expect("send");
        let (got, _) = read_to_close(&mut again, TIMEOUT);
        if got.starts_with(b"HTTP/1.1 200 ") {
            served = true;
            break;
        }
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        served,
        "no slot given back to 127.0.0.1 after one of its connections closed"
    );
}

/// `/hold`: the head at once, then 15 body bytes over 3 s (each pause within the body
/// timeout). `/pause`: 5 of 10 bytes, then a 2.5 s pause. Anything else: a 404.
fn slow_origin(mut conn: OriginConn) {
    let Some(head) = conn.read_head() else {
        return;
    };
    match request_path(&head) {
        "/hold" => {
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 15\r\n\r\n");
            for _ in 0..15 {
                std::thread::sleep(Duration::from_millis(200));
                if !conn.send(b"h") {
                    return;
                }
            }
        }
        "/pause" => {
            conn.send(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 10\r\n\r\n12345",
            );
            std::thread::sleep(Duration::from_millis(2500));
            conn.send(b"67890");
        }
        "/big" => {
            // The head at once, then BIG bytes as fast as the gateway takes them: the
            // response header is never late, so only the client's pace sets the duration.
            conn.send(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {BIG}\r\n\r\n"
                )
                .as_bytes(),
            );
            let chunk = [b'b'; 64 * 1024];
            for _ in 0..BIG / chunk.len() {
                if !conn.send(&chunk) {
                    return;
                }
            }
        }
        _ => {
            conn.send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    }
}

#[test]
fn max_inflight_per_source_is_a_503_and_every_path_releases_its_slot() {
    let slow = ScriptedOrigin::start(slow_origin).expect("origin");
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(CONFIG);
    let addr = serve.listen();
    let hold = slow.url("/hold");
    let ok = format!("http://{}/asset/ok.jpg", origin.http);

    // Two fetches of source `held` in flight...
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let req = RawRequest::get("held.test", &signed(&hold));
            std::thread::spawn(move || send(addr, &req, TIMEOUT))
        })
        .collect();
    let started = Instant::now();
    while slow.heads("/hold").len() < 2 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(slow.heads("/hold").len(), 2);
    // ...so a third is a 503 that never reaches the origin; another source is not affected.
    let over = get(addr, "held.test", &ok);
    assert_eq!(over.status, 503, "{}", over.body_text());
    assert_eq!(over.header("retry-after"), Some("1"));
    assert!(
        origin.requests().is_empty(),
        "the refused fetch reached the origin"
    );
    assert_eq!(get(addr, "other.test", &ok).status, 200);
    assert_eq!(metric(&serve, "overloaded"), 1);
    for holder in holders {
        let reply = holder.join().expect("holder").expect("held reply");
        assert_eq!(
            (reply.status, reply.body_text().as_str()),
            (200, "hhhhhhhhhhhhhhh")
        );
    }
    // Success released both slots.
    assert_eq!(get(addr, "held.test", &ok).status, 200);

    // Failures release theirs: more failing fetches in a row than there are slots.
    let dead = DeadPort::bind().expect("dead port");
    for _ in 0..3 {
        let refused = get(addr, "held.test", &format!("http://{}/x", dead.addr()));
        assert_eq!(refused.status, 502);
    }
    assert_eq!(get(addr, "held.test", &ok).status, 200);

    // A client that goes away mid-transfer releases its slot too: more of them, one after
    // the other, than there are slots.
    let ended_before = ended(&serve);
    for gone in 1..=3 {
        let mut conn = TcpStream::connect(addr).expect("connect");
        let req = RawRequest::get("held.test", &signed(&hold));
        conn.write_all(&req.to_bytes()).expect("send");
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).expect("head");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 "), "{gone}");
        drop(conn);
        // The request ends (Pingora may still count the origin's answer as forwarded when
        // its writes to the closed socket did not fail) and drops its slot.
        await_ended(&serve, ended_before + gone);
    }
    assert_eq!(get(addr, "held.test", &ok).status, 200);
    assert_eq!(metric(&serve, "overloaded"), 1, "counted once");
}

#[test]
fn origin_body_pauses_are_cut_at_body_timeout_and_slow_downloads_outlive_upstream_timeout() {
    let slow = ScriptedOrigin::start(slow_origin).expect("origin");
    let serve = start(CONFIG);
    let addr = serve.listen();

    // 5 bytes, then a pause longer than body_timeout: the transfer is cut at 1 s, short.
    let req = RawRequest::get("held.test", &signed(&slow.url("/pause")));
    let got = send_until_close(addr, &req, TIMEOUT).expect("pause");
    assert!(got.bytes.starts_with(b"HTTP/1.1 200 "), "{}", got.text());
    assert_eq!(got.body(), b"12345");
    assert!(!complete_by_framing(&got));
    assert!(
        got.elapsed >= LIMIT && got.elapsed < LIMIT + SLACK,
        "{:?}",
        got.elapsed
    );
    await_metric(&serve, "origin_timeout", 1);

    // A client reading 24 MiB at 1 MiB per 100 ms takes well over upstream.timeout (1 s),
    // and gets all of it.
    let big = slow.url("/big");
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.write_all(&RawRequest::get("held.test", &signed(&big)).to_bytes())
        .expect("send");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1024 * 1024];
    conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    // Paced by bytes: 100 ms per MiB read, whatever size each read returns.
    while started.elapsed() < 3 * TIMEOUT {
        let n = conn.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_micros(100_000 * n as u64 / (1024 * 1024)));
    }
    let took = started.elapsed();
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    assert!(
        got.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&got[..head_end])
    );
    assert_eq!(got.len() - head_end, BIG, "the whole body");
    assert!(took > 2 * LIMIT, "the download took only {took:?}");
    assert_eq!(metric(&serve, "forwarded"), 1);
    assert_eq!(metric(&serve, "origin_timeout"), 1);
}
