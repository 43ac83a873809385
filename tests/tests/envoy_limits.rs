//! Envoy's own limits in the generated bootstrap, run by the real Envoy 1.40 with the built
//! filter: a circuit breaker overflow is the core's 503 `overloaded` (so `OVERLOADED_FLAGS` are
//! the flags Envoy 1.40 sets), no `server` header reaches a client, a client request holds
//! one `max_inflight_per_source` slot across its redirect hops, given back when it ends, and
//! the replies Envoy's codec makes itself carry the core's local reply headers, and an HTTP/2
//! client that opens streams and never reads them has them reset and its slots given back.
//!
//! Uses the prebuilt `target/debug/ixproxy` and `target/wasm32-wasip1/release/ixproxy_filter.wasm`
//! (or `IXPROXY_BIN`, `IXPROXY_WASM`, `IXPROXY_ENVOY`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::metrics::assert_outcome_counts;
use ixproxy_conformance::origin::RecordingOrigin;
use ixproxy_conformance::{EnvoyGateway, Gateway};
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::Rejection;

const TIMEOUT: Duration = Duration::from_secs(15);

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ixproxy-envoy-limits-")
        .tempdir()
        .expect("temp dir")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

fn signed(host: &str, url: &str) -> RawRequest {
    RawRequest::get(host, &sign_url("tok", url, &[], &SignOptions::default()))
}

/// A loopback origin that accepts connections and never answers (each request then ends at
/// `upstream.timeout`); every accepted connection is reported on the channel. Accepts at most
/// `max` connections.
fn silent_origin(max: usize) -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(max) {
            let Ok(stream) = stream else { continue };
            held.push(stream);
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn assert_core_reply(response: &RawResponse, rejection: &Rejection) {
    assert_eq!(response.status, rejection.status(), "{response:?}");
    assert_eq!(response.body_text(), rejection.body(), "{response:?}");
    for (name, value) in rejection.headers() {
        assert_eq!(response.header(name), Some(value), "{name}: {response:?}");
    }
}

#[test]
fn a_circuit_breaker_overflow_is_the_cores_503_and_no_server_header_is_sent() {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let (silent, accepted) = silent_origin(4);
    let dir = temp_dir();
    let config = write(
        dir.path(),
        "ixproxy.yaml",
        r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {timeout: 3s}
sources:
  - name: local
    hosts: [localhost]
    secure_url_tokens: [tok]
    allow_private_origins: true
"#,
    );
    // One request in flight to all plain origins together.
    let envoy = EnvoyGateway::start_edited(&config, &[], dir.path(), |bootstrap| {
        let clusters = bootstrap["static_resources"]["clusters"]
            .as_sequence_mut()
            .expect("clusters");
        for cluster in clusters {
            cluster["circuit_breakers"]["thresholds"][0]["max_requests"] = 1.into();
        }
    })
    .unwrap_or_else(|e| panic!("envoy does not start: {e}"));
    let addr = envoy.addr();

    // The origin's `server` never reaches the client, and Envoy adds none of its own.
    let response = send(
        addr,
        &signed("localhost", &format!("http://{}/hostile", origin.http)),
        TIMEOUT,
    )
    .expect("forwarded");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("server"), None, "{response:?}");

    let waiting = {
        let req = signed("localhost", &format!("http://{silent}/held"));
        std::thread::spawn(move || send(addr, &req, TIMEOUT))
    };
    accepted
        .recv_timeout(TIMEOUT)
        .expect("the first request reaches the silent origin");
    let started = Instant::now();
    let over = send(
        addr,
        &signed("localhost", &format!("http://{}/asset/over", origin.http)),
        TIMEOUT,
    )
    .expect("answered");
    assert_core_reply(&over, &Rejection::overloaded());
    assert_eq!(over.header("server"), None, "{over:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    assert!(
        !origin
            .requests()
            .iter()
            .any(|r| r.target.contains("/asset/over")),
        "the refused request reached an origin"
    );
    let held = waiting.join().expect("thread").expect("answered");
    assert_core_reply(&held, &Rejection::origin_timeout());
    assert_eq!(held.header("server"), None, "{held:?}");
    assert_outcome_counts(
        &envoy,
        &[("forwarded", 1), ("overloaded", 1), ("origin_timeout", 1)],
    );
}

#[test]
fn a_redirected_request_holds_one_inflight_slot_until_it_ends() {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_dir();
    let config = write(
        dir.path(),
        "ixproxy.yaml",
        r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {timeout: 3s, max_redirects: 3}
limits: {max_inflight_per_source: 1}
sources:
  - name: local
    hosts: [localhost]
    secure_url_tokens: [tok]
    allow_private_origins: true
    allowed_origin_hosts: ["127.0.0.1"]
  - name: other
    hosts: [other.test]
    secure_url_tokens: [tok]
    allow_private_origins: true
"#,
    );
    let envoy = EnvoyGateway::start(&config, &[], dir.path())
        .unwrap_or_else(|e| panic!("envoy does not start: {e}"));
    let addr = envoy.addr();
    let on_origin = |path: &str| format!("http://{}{path}", origin.http);
    let get = |host: &str, path: &str| {
        send(addr, &signed(host, &on_origin(path)), TIMEOUT)
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", envoy.log_tail()))
    };

    // Three hops on one slot (a hop taking a slot of its own would be refused), twice: the
    // slot came back.
    for _ in 0..2 {
        let response = get("localhost", "/hops/2/asset/x");
        assert_eq!(response.status, 200, "{response:?}");
    }
    // A hop refused by the source's policy gives the slot back too.
    let response = get("localhost", "/redirect/302?to=http://evil.example/");
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(get("localhost", "/asset/after-refused-hop").status, 200);

    // While a request waits on a slow origin behind a redirect, the source is full …
    origin.clear();
    let waiting = {
        let req = signed("localhost", &on_origin("/redirect/302?to=/slow/held"));
        std::thread::spawn(move || send(addr, &req, TIMEOUT))
    };
    let deadline = Instant::now() + TIMEOUT;
    while !origin.requests().iter().any(|r| r.target == "/slow/held") {
        assert!(
            Instant::now() < deadline,
            "the hop never reached the origin"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_core_reply(&get("localhost", "/asset/full"), &Rejection::overloaded());
    // … another source is not.
    assert_eq!(get("other.test", "/asset/other").status, 200);
    let held = waiting.join().expect("thread").expect("answered");
    assert_core_reply(&held, &Rejection::origin_timeout());
    // The hop's stream gave the slot back when the request ended.
    assert_eq!(get("localhost", "/asset/after-timeout").status, 200);
    assert_outcome_counts(
        &envoy,
        &[
            ("forwarded", 5),
            ("origin_denied", 1),
            ("overloaded", 1),
            ("origin_timeout", 1),
        ],
    );
}

#[test]
fn envoys_own_codec_refusals_are_inert_and_uncached() {
    let dir = temp_dir();
    let config = write(
        dir.path(),
        "ixproxy.yaml",
        r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
sources:
  - name: local
    hosts: [localhost]
    secure_url_tokens: [tok]
    allow_private_origins: true
"#,
    );
    let envoy = EnvoyGateway::start(&config, &[], dir.path())
        .unwrap_or_else(|e| panic!("envoy does not start: {e}"));
    // Conflicting Content-Length values: Envoy's HTTP/1 codec answers 400 before any filter.
    let mut req = RawRequest::get("localhost", "/x");
    req.headers
        .push(("Content-Length".to_owned(), "1".to_owned()));
    req.headers
        .push(("Content-Length".to_owned(), "2".to_owned()));
    let response = send(envoy.addr(), &req, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status, 400, "{response:?}");
    for (name, value) in ixproxy_core::outcome::LOCAL_REPLY_HEADERS {
        assert_eq!(response.header(name), Some(value), "{name}: {response:?}");
    }
}

/// The zero-window HTTP/2 attacker of SPEC §10 against Envoy over h2c: 60 streams for 1 MiB
/// answers with `max_inflight_per_source: 50`, never read. While the streams stall they hold
/// every slot of their source (a second client gets 503); Envoy resets each at the route's
/// `idle_timeout` (`upstream.body_timeout`; the 503s, whose whole body waits in Envoy, at
/// `stream_flush_timeout`, `client_write_timeout`; both 2 s here, see `envoy/src/listener.rs`)
/// and the second client is served again. Envoy's memory stays within its per-stream buffers.
#[test]
fn a_zero_window_h2c_client_is_reset_and_gives_its_slots_back() {
    use ixproxy_conformance::h2_stall::{stall_at, Transport};
    const SLOTS: usize = 50;
    const STREAMS: usize = 60;
    const STALL: Duration = Duration::from_secs(4);
    const SLACK: Duration = Duration::from_millis(2500);
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_dir();
    let config = write(
        dir.path(),
        "ixproxy.yaml",
        &format!(
            "
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {{timeout: 2s, body_timeout: {stall}s}}
limits: {{client_write_timeout: {stall}s, max_inflight_per_source: {SLOTS}}}
sources:
  - name: local
    hosts: [localhost]
    secure_url_tokens: [tok]
    allow_private_origins: true
",
            stall = STALL.as_secs()
        ),
    );
    let envoy = EnvoyGateway::start_edited(&config, &[], dir.path(), |_| {})
        .unwrap_or_else(|e| panic!("envoy does not start: {e}"));
    let addr = envoy.addr();
    let url = |path: &str| format!("http://{}{path}", origin.http);
    let targets: Vec<String> = (0..STREAMS)
        .map(|i| signed("localhost", &url(&format!("/bytes-cl/1048576?i={i}"))).target)
        .collect();
    let rss = || ixproxy_conformance::gateway::resident_kib(envoy.pid()).expect("VmRSS");
    let before = rss();
    let attacker = std::thread::spawn(move || {
        let hold = Duration::from_secs(10);
        stall_at(addr, &Transport::H2c, "localhost", &targets, hold)
    });
    let probe = || {
        send(addr, &signed("localhost", &url("/asset/probe")), TIMEOUT)
            .expect("probe answered")
            .status
    };

    // Every slot held by the stalled streams: the source's other clients are refused.
    let started = Instant::now();
    let mut refused = false;
    while !refused && !attacker.is_finished() && started.elapsed() < STALL * 2 {
        refused = origin.requests().len() >= SLOTS && probe() == 503;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "the attack never held every slot");

    let mut peak = before;
    while !attacker.is_finished() {
        peak = peak.max(rss());
        std::thread::sleep(Duration::from_millis(20));
    }
    let stalled = attacker.join().expect("attacker").expect("attack");
    // Envoy stops reading each origin at its 32 KiB per-stream buffer (measured: +2.1 to
    // +2.5 MiB for the 60 streams).
    let grown = peak.saturating_sub(before);
    eprintln!("Envoy RSS {before} KiB before, peak {peak} KiB (+{grown} KiB) under the attack");
    assert!(grown < 16 * 1024, "Envoy's RSS grew by {grown} KiB");
    if let Err(e) = stalled.check_reset_at(STREAMS, STALL, SLACK) {
        panic!("{e}");
    }
    for _ in 0..3 {
        assert_eq!(probe(), 200);
    }
}
