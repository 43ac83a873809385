//! What an operator reads from the Envoy runtime, on the real Envoy 1.40 with the built filter:
//! the generated bootstrap's JSON access log (the native line's fields, never the path),
//! `X-Request-ID` kept or generated and echoed, `trusted_proxies`, and the metrics by source and
//! by the token that verified (README: Operating).
//!
//! Uses the prebuilt `target/debug/ixproxy` and `target/wasm32-wasip1/release/ixproxy_filter.wasm`
//! (or `IXPROXY_BIN`, `IXPROXY_WASM`, `IXPROXY_ENVOY`); a missing one fails with how to build it.

use std::path::Path;
use std::time::{Duration, Instant};

use ixproxy_conformance::access_log::{assert_forwarded_text_line, by_id, json_lines, text_line};
use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::metrics::sample;
use ixproxy_conformance::origin::RecordingOrigin;
use ixproxy_conformance::{EnvoyGateway, Gateway};
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::Rejection;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(15);
const OLD_TOKEN: &str = "tok-old-0123456789";
const NEW_TOKEN: &str = "tok-new-0123456789";
/// How long a line may take to appear in the log (Envoy flushes about once a second).
const LOG_WAIT: Duration = Duration::from_secs(10);

fn start(dir: &Path, extra: &str) -> EnvoyGateway {
    let config = dir.join("ixproxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
{extra}sources:
  - name: web.assets
    hosts: [gw.test]
    secure_url_tokens: [{{id: old, value: {OLD_TOKEN}}}, {NEW_TOKEN}]
    allow_private_origins: true
"
        ),
    )
    .expect("write config");
    EnvoyGateway::start(&config, &[], dir).unwrap_or_else(|e| panic!("envoy does not start: {e}"))
}

fn request(target: &str, headers: &[(&str, &str)]) -> RawRequest {
    let mut req = RawRequest::get("gw.test", target);
    req.headers = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    req
}

fn fetch(envoy: &EnvoyGateway, req: &RawRequest) -> RawResponse {
    send(envoy.addr(), req, TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", req.target, envoy.log_tail()))
}

#[test]
fn the_access_log_has_the_native_fields_and_request_ids_are_settled_like_natively() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = RecordingOrigin::start().expect("origin");
    let envoy = start(dir.path(), "trusted_proxies: [127.0.0.0/8]\n");
    let url = format!("http://{}/hops/1/ok", origin.http);
    let signed = sign_url(NEW_TOKEN, &url, &[], &SignOptions::default());
    let signature = signed.rsplit("s=").next().expect("s").to_owned();

    // A followed redirect: one client request, one line, the last hop's origin.
    let ok = fetch(
        &envoy,
        &request(
            &signed,
            &[
                ("X-Request-ID", "client.id-1_A"),
                // The nearest proxy (trusted) appended the client; what came before is the
                // client's own claim.
                ("X-Forwarded-For", "198.51.100.1, 203.0.113.5, 127.0.0.9"),
            ],
        ),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("x-request-id"), Some("client.id-1_A"));
    // The origin sees the same id (on every hop).
    let hops = origin.requests();
    assert_eq!(hops.len(), 2, "{hops:?}");
    assert!(
        hops.iter()
            .all(|h| h.header_values("x-request-id") == ["client.id-1_A"]),
        "{hops:?}"
    );

    let refused = fetch(
        &envoy,
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
        fetch(&envoy, &unknown).status,
        Rejection::unknown_host().status()
    );

    let lines = json_lines(|| envoy.log(), 3, LOG_WAIT);
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
        line["duration_ms"].is_number() && line["upstream_ms"].is_number(),
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
        (
            line["outcome"].as_str(),
            line["status"].as_u64(),
            line["source"].as_str()
        ),
        (Some("bad_signature"), Some(403), Some("web.assets"))
    );
    assert_eq!(line["upstream_ms"], Value::Null);
    let line = by_id(&lines, "unknown-host");
    assert_eq!(
        (line["source"].clone(), line["outcome"].as_str()),
        (Value::Null, Some("unknown_host"))
    );

    let log = envoy.log();
    for secret in [signature.as_str(), NEW_TOKEN, OLD_TOKEN, "hops/1", "%2F"] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
}

#[test]
fn forwarded_for_is_ignored_from_a_peer_outside_trusted_proxies() {
    let origin = RecordingOrigin::start().expect("origin");
    let url = format!("http://{}/asset/a.jpg", origin.http);
    let signed = sign_url(NEW_TOKEN, &url, &[], &SignOptions::default());
    // No list (use_remote_address), and a list the loopback peer is not in (XFF detection).
    for extra in ["", "trusted_proxies: [10.0.0.0/8]\n"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let envoy = start(dir.path(), extra);
        let resp = fetch(
            &envoy,
            &request(
                &signed,
                &[
                    ("X-Request-ID", "plain"),
                    ("X-Forwarded-For", "203.0.113.5"),
                ],
            ),
        );
        assert_eq!(resp.status, 200, "{extra}");
        let lines = json_lines(|| envoy.log(), 1, LOG_WAIT);
        assert_eq!(by_id(&lines, "plain")["client_ip"], "127.0.0.1", "{extra}");
    }
}

#[test]
fn metrics_name_the_source_and_the_token_that_verified() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = RecordingOrigin::start().expect("origin");
    let envoy = start(dir.path(), "access_log: off\n");
    let url = format!("http://{}/hops/1/ok", origin.http);
    let with = |token: &str| sign_url(token, &url, &[], &SignOptions::default());
    let mut body_bytes = 0.0;
    for target in [with(OLD_TOKEN), with(NEW_TOKEN), with(NEW_TOKEN)] {
        let resp = fetch(&envoy, &request(&target, &[]));
        assert_eq!(resp.status, 200, "{resp:?}");
        body_bytes += resp.body.len() as f64;
    }
    assert_eq!(
        fetch(&envoy, &request(&with("wrong-token"), &[])).status,
        403
    );
    assert_eq!(
        fetch(&envoy, &RawRequest::get("nobody.test", "/x?s=0")).status,
        Rejection::unknown_host().status()
    );

    let (admin, _) = envoy.metrics_endpoint();
    let scrape = || {
        send(
            admin,
            &RawRequest::get("admin", "/stats/prometheus"),
            TIMEOUT,
        )
        .expect("admin answers")
        .body_text()
    };
    let started = Instant::now();
    let text = loop {
        let text = scrape();
        let forwarded = sample(
            &text,
            "ixproxy_requests_total",
            &[("source", "web_assets"), ("outcome", "forwarded")],
        );
        if forwarded == Some(3.0) || started.elapsed() > Duration::from_secs(5) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
    };
    let source = ("source", "web_assets");
    assert_eq!(
        get(
            "ixproxy_requests_total",
            &[source, ("outcome", "forwarded")]
        ),
        3.0
    );
    assert_eq!(
        get(
            "ixproxy_requests_total",
            &[source, ("outcome", "bad_signature")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "ixproxy_requests_total",
            &[("source", "-"), ("outcome", "unknown_host")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "ixproxy_token_verifications_total",
            &[source, ("token", "old")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "ixproxy_token_verifications_total",
            &[source, ("token", "1")]
        ),
        2.0
    );
    assert!(get("ixproxy_response_bytes_total", &[source]) >= body_bytes);
    // Every fetch (two hops each) is over: the gauge is back at zero.
    assert_eq!(get("ixproxy_upstream_inflight", &[source]), 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        get(
            "ixproxy_build_info",
            &[("runtime", "envoy"), ("version", version)]
        ),
        1.0
    );
    assert!(
        !envoy.log().lines().any(|l| l.starts_with('{')),
        "access_log: off still logs"
    );
}

#[test]
fn text_access_lines_are_key_value() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = RecordingOrigin::start().expect("origin");
    let envoy = start(dir.path(), "access_log: text\n");
    let url = format!("http://{}/asset/a.jpg", origin.http);
    let signed = sign_url(OLD_TOKEN, &url, &[], &SignOptions::default());
    let resp = fetch(&envoy, &request(&signed, &[("X-Request-ID", "text-1")]));
    assert_eq!(resp.status, 200);
    let line = text_line(|| envoy.log(), "text-1", LOG_WAIT);
    assert_forwarded_text_line(&line, &origin.http.to_string(), resp.body.len());
}
