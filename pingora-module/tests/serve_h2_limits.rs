//! HTTP/2 bounded like HTTP/1 on `ixproxy serve` (SPEC §10, README: Limits): an attacker that
//! announces a zero flow-control window, opens many streams for 1 MiB answers and never reads
//! has each stream reset after `limits.client_write_timeout`, with its in-flight slot, origin
//! connection and buffered body released, over h2c and over TLS, with and without the cache;
//! meanwhile and afterwards a second client is served, and the process's memory stays bounded.
//! A slow reader that keeps granting window is not cut (the timeout bounds each wait).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ixproxy_conformance::client::{send, RawRequest};
use ixproxy_conformance::gateway::resident_kib;
use ixproxy_conformance::h2_stall::{fetch_status, read_slowly, stall_at, Stalled, Transport};
use ixproxy_conformance::origin::RecordingOrigin;
use ixproxy_conformance::tls::TestCa;
use ixproxy_conformance::ServeProcess;
use ixproxy_core::sign::{sign_url, SignOptions};

const TOKEN: &str = "tok-h2-limits";
const TIMEOUT: Duration = Duration::from_secs(15);
/// `limits.client_write_timeout` of every config here.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How much later than the write timeout a reset may come (scheduling, a debug build).
const SLACK: Duration = Duration::from_millis(1500);
/// How long an attack waits for its streams to end (well past the timeout and its slack).
const HOLD: Duration = Duration::from_secs(8);
/// Size of each answer the attacker asks for.
const OBJECT: usize = 1024 * 1024;
/// `max_inflight_per_source` of the slot test.
const SLOTS: usize = 50;

/// `ixproxy serve` with `extra` top-level YAML, 1 s write timeout, `slots` in-flight fetches
/// per source and source `held` on `host`.
fn start(extra: &str, host: &str, slots: usize) -> ServeProcess {
    let config = format!(
        "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
{extra}upstream:
  timeout: 5s
  body_timeout: 5s
limits:
  client_write_timeout: 1s
  max_inflight_per_source: {slots}
sources:
  - name: held
    hosts: [{host}]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
"
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
    ServeProcess::start_temp(bin, &config, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn signed(origin_url: &str) -> String {
    sign_url(TOKEN, origin_url, &[], &SignOptions::default())
}

/// Signed targets for `count` distinct 1 MiB objects of `origin` (distinct cache keys).
fn targets(origin: SocketAddr, tag: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| signed(&format!("http://{origin}/bytes-cl/{OBJECT}?{tag}={i}")))
        .collect()
}

/// The status an ordinary client gets for a small asset of the attacked source: over
/// HTTP/1.1 on a plain listener, over HTTP/2 through TLS.
fn probe(addr: SocketAddr, transport: &Transport, host: &str, origin: SocketAddr) -> u16 {
    let target = signed(&format!("http://{origin}/asset/probe.jpg"));
    match transport {
        Transport::H2c => {
            send(addr, &RawRequest::get(host, &target), TIMEOUT)
                .unwrap_or_else(|e| panic!("probe: {e}"))
                .status
        }
        Transport::Tls { .. } => fetch_status(addr, transport, host, &target, TIMEOUT)
            .unwrap_or_else(|e| panic!("probe: {e}")),
    }
}

/// The source's `ixproxy_upstream_inflight` gauge.
fn inflight(serve: &ServeProcess) -> u64 {
    serve
        .metric("ixproxy_upstream_inflight{source=\"held\"}")
        .unwrap_or(0)
}

/// Polls `cond` every 20 ms for at most `limit`; whether it became true.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// The resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    resident_kib(pid).expect("VmRSS")
}

/// Every stream of `stalled` got a head and was reset at the write timeout.
fn all_reset_in_time(what: &str, stalled: &Stalled, streams: usize) {
    if let Err(e) = stalled.check_reset_at(streams, WRITE_TIMEOUT, SLACK) {
        panic!("{what}: {e}");
    }
}

/// One attacking connection (`streams` streams) against the slot limit, while the test
/// thread checks that the attack holds every slot (a 503 for others), then that every stream
/// is reset at the write timeout and the slots come back (200 for others).
fn attack_holds_slots_until_the_write_timeout(transport: Transport, host: &str, extra: &str) {
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(extra, host, SLOTS);
    let addr = serve.listen();
    let streams = SLOTS + 10;
    let targets = targets(origin.http, "slot", streams);
    let authority = host.to_owned();
    let attack = transport.clone();
    let attacker = std::thread::spawn(move || stall_at(addr, &attack, &authority, &targets, HOLD));

    // While the attack holds every slot, the source's other clients are refused...
    assert!(
        eventually(Duration::from_secs(5), || inflight(&serve) == SLOTS as u64),
        "the attack never held the {SLOTS} slots: {}",
        inflight(&serve)
    );
    assert_eq!(probe(addr, &transport, host, origin.http), 503);

    // ...until its streams are reset at the write timeout and release them.
    let stalled = attacker.join().expect("attacker").expect("attack");
    all_reset_in_time("slots", &stalled, streams);
    let ok = stalled.statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, SLOTS, "{:?}", stalled.statuses);
    assert!(
        eventually(Duration::from_secs(2), || inflight(&serve) == 0),
        "slots still held after the resets: {}",
        inflight(&serve)
    );
    for _ in 0..3 {
        assert_eq!(probe(addr, &transport, host, origin.http), 200);
    }
    assert_eq!(
        serve.outcome_count("client_closed").expect("metrics"),
        SLOTS as u64,
        "each reset fetch counted once as client_closed"
    );
}

#[test]
fn a_zero_window_h2c_client_is_reset_at_client_write_timeout_and_frees_its_slots() {
    attack_holds_slots_until_the_write_timeout(Transport::H2c, "held.test", "h2c: true\n");
}

#[test]
fn a_zero_window_client_over_tls_is_reset_at_client_write_timeout_and_frees_its_slots() {
    let ca = TestCa::generate("ixproxy h2 limits test CA").expect("ca");
    let issued = ca.issue_localhost().expect("certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, &issued.cert_pem).expect("cert");
    std::fs::write(&key, &issued.key_pem).expect("key");
    let tls = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n",
        cert.display(),
        key.display()
    );
    let transport = Transport::Tls {
        ca_der: ca.der(),
        name: "localhost".to_owned(),
    };
    attack_holds_slots_until_the_write_timeout(transport, "localhost", &tls);
}

/// Attacking connections against the cache with no slot limit: every stream starts a fill of
/// its own 1 MiB object. A fill no client reads any more ends at the reset instead of
/// buffering its whole object, so a stalled stream holds only what Pingora's pipeline had in
/// flight when its client stopped (a few 64 KiB chunks, some copied into the fill) until the
/// write timeout, and nothing is stored. Measured (debug build): +67 to +156 MiB at the peak for
/// the 400 streams.
#[test]
fn zero_window_streams_on_cache_fills_are_reset_and_memory_stays_bounded() {
    const CONNECTIONS: usize = 4;
    const STREAMS: usize = 100;
    /// Growth of the resident memory allowed under the attack (400 MiB of objects asked for):
    /// 640 KiB per stalled stream, well under the object each one asks for.
    const BOUND_KIB: u64 = 256 * 1024;
    let origin = RecordingOrigin::start().expect("origin");
    let extra = "h2c: true\ncache:\n  max_bytes: 268435456\n  max_object_bytes: 2097152\n";
    let serve = start(extra, "held.test", 0);
    let addr = serve.listen();
    assert_eq!(probe(addr, &Transport::H2c, "held.test", origin.http), 200);
    let before = rss_kib(serve.pid());

    let attackers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let targets = targets(origin.http, &format!("fill{c}"), STREAMS);
            std::thread::spawn(move || stall_at(addr, &Transport::H2c, "held.test", &targets, HOLD))
        })
        .collect();
    let mut peak = before;
    while attackers.iter().any(|a| !a.is_finished()) {
        peak = peak.max(rss_kib(serve.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
    for attacker in attackers {
        let stalled = attacker.join().expect("attacker").expect("attack");
        all_reset_in_time("cache", &stalled, STREAMS);
    }
    let grown = peak.saturating_sub(before);
    eprintln!("RSS {before} KiB before, peak {peak} KiB (+{grown} KiB) under the attack");
    assert!(
        grown < BOUND_KIB,
        "RSS grew by {grown} KiB under the attack (bound {BOUND_KIB} KiB)"
    );
    // No fill completed behind a reset stream (nothing stored), and others are served.
    let stored = serve
        .metric("ixproxy_cache_bytes{tier=\"memory\"}")
        .expect("metrics");
    assert!(
        stored < OBJECT as u64,
        "{stored} bytes stored behind reset streams"
    );
    assert_eq!(probe(addr, &Transport::H2c, "held.test", origin.http), 200);
}

/// The write timeout bounds each wait for the client's window, not the download: a client
/// that grants 128 KiB every 300 ms reads a 1 MiB answer over more than twice the timeout,
/// whole.
#[test]
fn a_slow_h2_reader_that_keeps_granting_window_is_never_cut() {
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start("h2c: true\n", "held.test", SLOTS);
    let target = signed(&format!("http://{}/bytes-cl/{OBJECT}", origin.http));
    let window = 128 * 1024;
    let pause = Duration::from_millis(300);
    let (status, received, took) = read_slowly(
        serve.listen(),
        &Transport::H2c,
        "held.test",
        &target,
        window,
        pause,
    )
    .unwrap_or_else(|e| panic!("slow reader: {e}"));
    assert_eq!((status, received), (200, OBJECT));
    assert!(took > 2 * WRITE_TIMEOUT, "the download took only {took:?}");
    assert_eq!(serve.outcome_count("forwarded").expect("metrics"), 1);
}
