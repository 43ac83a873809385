//! The native gateway's access log, request ids and per-source / per-token metrics, checked on
//! the real `ixproxy serve` (README: Operating).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ixproxy_conformance::access_log::{assert_forwarded_text_line, by_id, json_lines, text_line};
use ixproxy_conformance::client::{send, KeepAlive, RawRequest, RawResponse};
use ixproxy_conformance::origin::RecordingOrigin;
use ixproxy_conformance::{ServeProcess, Signal};
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::Rejection;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(15);
const OLD_TOKEN: &str = "tok-old-0123456789";
const NEW_TOKEN: &str = "tok-new-0123456789";
/// How long a line may take to appear in the log.
const LOG_WAIT: Duration = Duration::from_secs(5);

fn config(extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
{extra}sources:
  - name: web.assets
    hosts: [gw.test]
    secure_url_tokens: [{{id: old, value: {OLD_TOKEN}}}, {NEW_TOKEN}]
    allow_private_origins: true
"
    )
}

fn start(config: &str) -> ServeProcess {
    ServeProcess::start_temp(Path::new(env!("CARGO_BIN_EXE_ixproxy")), config, &[])
        .unwrap_or_else(|e| panic!("{e}"))
}

fn request(target: &str, headers: &[(&str, &str)]) -> RawRequest {
    let mut req = RawRequest::get("gw.test", target);
    req.headers = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    req
}

fn fetch(addr: SocketAddr, req: &RawRequest) -> RawResponse {
    send(addr, req, TIMEOUT).unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.target))
}

#[test]
fn one_json_line_per_request_with_every_field_and_no_secret() {
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(&config("trusted_proxies: [127.0.0.0/8]\n"));
    let url = format!("http://{}/asset/logged.jpg", origin.http);
    let signed = sign_url(
        NEW_TOKEN,
        &url,
        &[("w".to_owned(), "10".to_owned())],
        &SignOptions::default(),
    );
    let signature = signed.rsplit("s=").next().expect("s").to_owned();

    let ok = fetch(
        serve.listen(),
        &request(
            &signed,
            &[
                ("X-Request-ID", "client.id-1_A"),
                ("X-Forwarded-For", "198.51.100.1, 203.0.113.5, 127.0.0.9"),
            ],
        ),
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-request-id"), Some("client.id-1_A"));

    // An id outside the rule is replaced by a generated one, echoed the same way.
    let refused = fetch(
        serve.listen(),
        &request(
            "/http%3A%2F%2Fx.test%2Fa.png?s=00000000000000000000000000000000",
            &[("X-Request-ID", "not valid!")],
        ),
    );
    assert_eq!(refused.status, 403);
    let generated = refused
        .header("x-request-id")
        .expect("generated id")
        .to_owned();
    assert_eq!(generated.len(), 32, "{generated}");
    assert!(
        generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "{generated}"
    );

    let mut unknown = RawRequest::get("nobody.test", &signed);
    unknown
        .headers
        .push(("X-Request-ID".into(), "unknown-host".into()));
    assert_eq!(
        fetch(serve.listen(), &unknown).status,
        Rejection::unknown_host().status()
    );

    let lines = json_lines(|| serve.log(), 3, LOG_WAIT);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let line = by_id(&lines, "client.id-1_A");
    assert_eq!(
        line["client_ip"], "203.0.113.5",
        "trusted peer: X-Forwarded-For believed"
    );
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "gw.test");
    assert_eq!(line["source"], "web.assets");
    assert_eq!(line["outcome"], "forwarded");
    assert_eq!(line["status"], 200);
    assert_eq!(line["origin_host"], origin.http.to_string());
    assert_eq!(line["bytes_sent"], ok.body.len() as u64);
    assert!(
        line["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{line}"
    );
    assert!(
        line["upstream_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{line}"
    );
    assert_eq!(line["cache"], Value::Null);
    let ts = line["ts"].as_str().expect("ts");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );

    let line = by_id(&lines, &generated);
    assert_eq!(
        (line["outcome"].as_str(), line["status"].as_u64()),
        (Some("bad_signature"), Some(403))
    );
    assert_eq!(line["upstream_ms"], Value::Null);
    assert_eq!(line["origin_host"], Value::Null);
    let line = by_id(&lines, "unknown-host");
    assert_eq!(
        (line["source"].clone(), line["outcome"].as_str()),
        (Value::Null, Some("unknown_host"))
    );

    let log = serve.log();
    for secret in [
        signature.as_str(),
        NEW_TOKEN,
        OLD_TOKEN,
        "asset/logged",
        "w=10",
        "%2F",
    ] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
}

#[test]
fn forwarded_for_is_ignored_from_an_untrusted_peer_and_text_lines_are_key_value() {
    let origin = RecordingOrigin::start().expect("origin");
    // The loopback peer is not in the list: its X-Forwarded-For is not believed.
    let serve = start(&config("access_log: text\ntrusted_proxies: [10.0.0.0/8]\n"));
    let url = format!("http://{}/asset/text.jpg", origin.http);
    let signed = sign_url(NEW_TOKEN, &url, &[], &SignOptions::default());
    let resp = fetch(
        serve.listen(),
        &request(
            &signed,
            &[
                ("X-Request-ID", "text-1"),
                ("X-Forwarded-For", "203.0.113.5"),
            ],
        ),
    );
    assert_eq!(resp.status, 200);
    let line = text_line(|| serve.log(), "text-1", LOG_WAIT);
    assert_forwarded_text_line(&line, &origin.http.to_string(), resp.body.len());
}

#[test]
fn access_log_off_writes_no_line() {
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(&config("access_log: off\n"));
    let url = format!("http://{}/asset/quiet.jpg", origin.http);
    let signed = sign_url(NEW_TOKEN, &url, &[], &SignOptions::default());
    assert_eq!(fetch(serve.listen(), &request(&signed, &[])).status, 200);
    // The request is counted once it is logged; after that no line can still be on its way.
    let started = Instant::now();
    while serve.outcome_count("forwarded").unwrap_or(0) < 1 {
        assert!(started.elapsed() < Duration::from_secs(5), "not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = serve.log();
    assert!(
        !log.lines()
            .any(|l| l.starts_with('{') || l.contains("request_id=")),
        "{log}"
    );
}

#[test]
fn metrics_name_the_source_and_the_token_that_verified() {
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(&config(""));
    let url = format!("http://{}/asset/metrics.jpg", origin.http);
    let with = |token: &str| sign_url(token, &url, &[], &SignOptions::default());
    let mut body_bytes = 0;
    for target in [with(OLD_TOKEN), with(NEW_TOKEN), with(NEW_TOKEN)] {
        let resp = fetch(serve.listen(), &request(&target, &[]));
        assert_eq!(resp.status, 200);
        body_bytes += resp.body.len() as u64;
    }
    assert_eq!(
        fetch(serve.listen(), &request(&with("wrong-token"), &[])).status,
        403
    );
    assert_eq!(
        fetch(serve.listen(), &RawRequest::get("nobody.test", "/x?s=0")).status,
        Rejection::unknown_host().status()
    );

    let sample = |name: &str| serve.metric(name).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    while sample(r#"ixproxy_requests_total{outcome="forwarded",source="web_assets"}"#) < 3 {
        assert!(started.elapsed() < Duration::from_secs(5), "not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        sample(r#"ixproxy_token_verifications_total{source="web_assets",token="old"}"#),
        1
    );
    assert_eq!(
        sample(r#"ixproxy_token_verifications_total{source="web_assets",token="1"}"#),
        2
    );
    assert_eq!(
        sample(r#"ixproxy_requests_total{outcome="bad_signature",source="web_assets"}"#),
        1
    );
    assert_eq!(
        sample(r#"ixproxy_requests_total{outcome="unknown_host",source="-"}"#),
        1
    );
    assert!(sample(r#"ixproxy_response_bytes_total{source="web_assets"}"#) >= body_bytes);
    assert_eq!(
        sample(r#"ixproxy_upstream_inflight{source="web_assets"}"#),
        0
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(&format!(
            r#"ixproxy_build_info{{runtime="native",version="{version}"}}"#
        )),
        1
    );
}

#[test]
fn a_reload_turns_the_access_log_on_and_applies_new_trusted_proxies() {
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(&config("access_log: off\n"));
    let url = format!("http://{}/asset/reloaded.jpg", origin.http);
    let signed = sign_url(NEW_TOKEN, &url, &[], &SignOptions::default());
    let headers = [("X-Forwarded-For", "203.0.113.5")];
    assert_eq!(
        fetch(
            serve.listen(),
            &request(&signed, &[("X-Request-ID", "before"), headers[0]])
        )
        .status,
        200
    );
    std::fs::write(
        serve.config_path(),
        config("access_log: json\ntrusted_proxies: [127.0.0.0/8]\n"),
    )
    .expect("rewrite config");
    serve.signal(Signal::SIGHUP).expect("SIGHUP");
    let started = Instant::now();
    while serve
        .metric("ixproxy_config_reloads_total{result=\"ok\"}")
        .unwrap_or(0)
        < 1
    {
        assert!(started.elapsed() < LOG_WAIT, "no reload:\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        fetch(
            serve.listen(),
            &request(&signed, &[("X-Request-ID", "after"), headers[0]])
        )
        .status,
        200
    );
    let lines = json_lines(|| serve.log(), 1, LOG_WAIT);
    assert_eq!(
        lines.len(),
        1,
        "only the request after the reload is logged: {lines:#?}"
    );
    assert_eq!(by_id(&lines, "after")["client_ip"], "203.0.113.5");
    assert!(
        !serve.log().contains("needs a restart"),
        "access_log and trusted_proxies are applied by the reload:\n{}",
        serve.log()
    );
}

/// The write system calls the access log's writer thread (`ixproxy-access-log`) made so far
/// (`syscw` of `/proc/PID/task/TID/io`: `write`, `writev` and the like).
fn log_thread_writes(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // `comm` holds the first 15 bytes of the thread's name.
        if !"ixproxy-access-log".starts_with(comm.trim()) || comm.trim().len() < 14 {
            continue;
        }
        let io = std::fs::read_to_string(task.path().join("io")).unwrap_or_else(|e| {
            panic!(
                "{}/io (the tests run as root or as the owner): {e}",
                task.path().display()
            )
        });
        return io
            .lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no syscw in {io}"));
    }
    panic!("no access log writer thread in /proc/{pid}/task");
}

/// Keep-alive connections the load of the batching test uses, each sending its share at once.
const CONNECTIONS: usize = 4;
/// The writer's batch window (`serve::access`).
const BATCH_WINDOW: Duration = Duration::from_millis(50);

#[test]
fn access_log_lines_are_written_in_batches_not_one_system_call_each() {
    const REQUESTS: usize = 400;
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(&config("access_log: json\n"));
    let url = format!("http://{}/asset/batched.jpg", origin.http);
    let signed = sign_url(NEW_TOKEN, &url, &[], &SignOptions::default());
    let mut conns: Vec<KeepAlive> = (0..CONNECTIONS)
        .map(|_| KeepAlive::connect(serve.listen(), TIMEOUT).expect("connect"))
        .collect();
    // A first request on each sets up the origin connections and starts the log's batches.
    for conn in &mut conns {
        assert_eq!(
            conn.send(&request(&signed, &[])).expect("first").status,
            200
        );
    }
    json_lines(|| serve.log(), CONNECTIONS, LOG_WAIT);
    let before = log_thread_writes(serve.pid());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for mut conn in conns {
            let signed = &signed;
            scope.spawn(move || {
                for i in 0..REQUESTS / CONNECTIONS {
                    let resp = conn.send(&request(signed, &[])).expect("request");
                    assert_eq!(resp.status, 200, "request {i}");
                }
            });
        }
    });
    let took = started.elapsed();
    let lines = json_lines(|| serve.log(), REQUESTS + CONNECTIONS, LOG_WAIT).len();
    assert_eq!(lines, REQUESTS + CONNECTIONS, "every request logged");
    let writes = log_thread_writes(serve.pid()) - before;
    // One write per batch, at most one batch per window while lines keep coming (and the one
    // that ends after them); a write per line would be 400. Only a load of several lines per
    // window can tell the two apart.
    let windows = (took.as_millis() / BATCH_WINDOW.as_millis()) as u64 + 2;
    assert!(
        windows * 3 <= REQUESTS as u64,
        "{REQUESTS} requests took {took:?}: under three lines per {BATCH_WINDOW:?} window, \
         batching cannot be told from a write per line"
    );
    assert!(
        writes <= windows,
        "the access log's thread made {writes} write calls for {REQUESTS} lines over {took:?} \
         (at most {windows} batches)"
    );
}

#[test]
fn the_last_batch_is_written_when_the_gateway_stops_at_once() {
    let origin = RecordingOrigin::start().expect("origin");
    let mut serve = start(&config("access_log: json\n"));
    let url = format!("http://{}/asset/last.jpg", origin.http);
    let signed = sign_url(NEW_TOKEN, &url, &[], &SignOptions::default());
    let resp = fetch(
        serve.listen(),
        &request(&signed, &[("X-Request-ID", "the-last")]),
    );
    assert_eq!(resp.status, 200);
    // The client can have its answer before the gateway's logging phase ran (it runs after
    // the response is written); that phase counts the request, then appends its line. Once
    // counted (one admin round trip, well inside the batch's 50 ms window), SIGINT at once (no
    // grace period): the line is in the batch, not yet written.
    let counted = serve
        .settled_outcome_count("forwarded", 1, TIMEOUT)
        .expect("metrics");
    assert_eq!(counted, 1);
    serve.signal(Signal::SIGINT).expect("SIGINT");
    let status = serve.wait_exit(TIMEOUT).expect("wait");
    assert!(status.is_some(), "still running:\n{}", serve.log());
    // Nothing is waited for: the line must be there once the process is gone.
    let lines = json_lines(|| serve.log(), 1, Duration::ZERO);
    assert_eq!(by_id(&lines, "the-last")["status"], 200, "{}", serve.log());
}
