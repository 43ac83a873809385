//! The bootstrap `ixproxy envoy-config` generates, run by the real Envoy 1.40 with the built
//! filter: Envoy accepts it and the filter's `on_configure` runs; redirects are followed and
//! checked, response limits enforced, Envoy's own replies carry the core's statuses and bodies,
//! and the outcomes are counted.
//!
//! Uses the prebuilt `target/debug/ixproxy` and `target/wasm32-wasip1/release/ixproxy_filter.wasm`
//! (or `IXPROXY_BIN`, `IXPROXY_WASM`, `IXPROXY_ENVOY`); a missing one fails with how to build it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::harness::loopback_alias;
use ixproxy_conformance::metrics::assert_outcome_counts;
use ixproxy_conformance::origin::RecordingOrigin;
use ixproxy_conformance::{EnvoyGateway, Gateway};
use ixproxy_core::outcome::LOCAL_REPLY_CONTENT_TYPE;
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::Rejection;

const TIMEOUT: Duration = Duration::from_secs(15);

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ixproxy-envoy-bootstrap-")
        .tempdir()
        .expect("temp dir")
}

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// The generator's test config: every kind of secret, two sources.
const SECRETS_CONFIG: &str = include_str!("../../envoy/testdata/two-sources.yaml");

#[test]
fn real_envoy_accepts_the_generated_config_and_runs_the_filter_configuration() {
    let dir = temp_dir();
    let config = write(dir.path(), "ixproxy.yaml", SECRETS_CONFIG);
    let text = EnvoyGateway::bootstrap(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    let bootstrap = write(dir.path(), "envoy.yaml", text);
    let env = [
        ("IXPROXY_TEST_TOKEN", "token"),
        ("IXPROXY_TEST_PASSWORD", "password"),
        ("IXPROXY_TEST_SIGNING_KEY", "key"),
    ];
    // Validation checks every part of the bootstrap, the local reply mappers included.
    let (ok, log) = EnvoyGateway::validate(&bootstrap, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(ok, "envoy --mode validate failed:\n{log}");
    // Validation loads the Wasm VM and runs on_configure: a missing variable is refused.
    let (ok, log) = EnvoyGateway::validate(&bootstrap, &env[..2]).unwrap_or_else(|e| panic!("{e}"));
    assert!(!ok, "validated without IXPROXY_TEST_SIGNING_KEY:\n{log}");
    assert!(log.contains("IXPROXY_TEST_SIGNING_KEY"), "{log}");
}

/// How long each answer of [`start_slow_origin`] takes: under the test's `upstream.timeout`
/// (5 s) alone, over it for two hops.
const SLOW_HOP: Duration = Duration::from_secs(3);

/// An origin on 127.0.0.1 that answers every request after [`SLOW_HOP`]: `/slow` with a 302 to
/// `/slow2`, anything else with a small image. One request per connection (`connection: close`,
/// so Envoy never reuses one this origin is about to close). Serves at most four connections.
fn start_slow_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind slow origin");
    let addr = listener.local_addr().expect("slow origin address");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(TIMEOUT)).ok();
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let response: &[u8] = if head.starts_with("GET /slow ") {
                    b"HTTP/1.1 302 Found\r\nlocation: /slow2\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 4\r\nconnection: close\r\n\r\nlate"
                };
                // The origin's slowness is what is under test, not a synchronisation.
                std::thread::sleep(SLOW_HOP);
                stream.write_all(response).ok();
            });
        }
    });
    addr
}

/// A loopback address whose port was just released, so connecting to it is refused.
fn refused_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// The raw bytes of the answer to `req`, read until Envoy closes or resets the connection.
fn raw_exchange(addr: SocketAddr, req: &RawRequest) -> Vec<u8> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).ok();
    stream.write_all(&req.to_bytes()).expect("write request");
    let mut out = Vec::new();
    // A reset ends the read with an error after the bytes that came before it.
    let _ = stream.read_to_end(&mut out);
    out
}

fn assert_core_reply(response: &RawResponse, rejection: &Rejection) {
    assert_eq!(response.status, rejection.status(), "{response:?}");
    assert_eq!(response.body_text(), rejection.body(), "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some(LOCAL_REPLY_CONTENT_TYPE),
        "{response:?}"
    );
}

#[test]
fn real_envoy_follows_checked_redirects_and_enforces_response_limits() {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let port = origin.http.port();
    let slow = start_slow_origin();
    let dir = temp_dir();
    let config = write(
        dir.path(),
        "ixproxy.yaml",
        r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {timeout: 5s, max_redirects: 2, max_body_bytes: 100000}
sources:
  - name: local
    hosts: [localhost]
    secure_url_tokens: [tok]
    origin_auth: {request_handshake: hs}
    allow_private_origins: true
    allowed_origin_hosts: ["127.0.0.1", "localhost"]
  - name: images
    hosts: [images.test]
    secure_url_tokens: [tok]
    allow_private_origins: true
    allowed_content_types: ["image/"]
  - name: public
    hosts: [public.test]
    secure_url_tokens: [tok]
"#,
    );
    let envoy = EnvoyGateway::start(&config, &[], dir.path())
        .unwrap_or_else(|e| panic!("envoy does not start: {e}"));
    let signed = |host: &str, url: &str| {
        let target = sign_url("tok", url, &[], &SignOptions::default());
        RawRequest::get(host, &target)
    };
    let get = |host: &str, url: &str| {
        send(envoy.addr(), &signed(host, url), TIMEOUT)
            .unwrap_or_else(|e| panic!("{url}: {e}\n{}", envoy.log_tail()))
    };
    let on_origin = |path: &str| format!("http://127.0.0.1:{port}{path}");

    // A relative Location is followed; each hop on the first host gets origin auth.
    origin.clear();
    let response = get("localhost", &on_origin("/hops/1/ok"));
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_text(), "asset /hops/0/ok");
    let hops = origin.requests();
    assert_eq!(hops.len(), 2, "{hops:?}");
    assert!(
        hops.iter()
            .all(|h| h.header_values("x-imgix-origin-secret") == ["hs"]),
        "{hops:?}"
    );
    assert!(
        hops.iter()
            .all(|h| h.header_values("x-forwarded-proto").is_empty()),
        "{hops:?}"
    );

    // A hop to another host gets no origin auth.
    origin.clear();
    let other = format!("http://localhost:{port}/image/x");
    let response = get(
        "localhost",
        &on_origin(&format!("/redirect/301?to={other}")),
    );
    assert_eq!(response.status, 200, "{response:?}");
    let hops = origin.requests();
    assert_eq!(hops.len(), 2, "{hops:?}");
    assert_eq!(
        hops[1].header_values("host"),
        [format!("localhost:{port}")],
        "{hops:?}"
    );
    assert!(
        !hops[1]
            .headers
            .iter()
            .any(|(n, _)| n.starts_with("x-imgix")),
        "{hops:?}"
    );

    // Past max_redirects (2): 502, never the 3xx; exactly 1 + 2 origin requests.
    origin.clear();
    let response = get("localhost", &on_origin("/hops/9/loop"));
    assert_eq!(response.status, 502, "{response:?}");
    assert!(response.header("location").is_none(), "{response:?}");
    assert_eq!(origin.requests().len(), 3);

    // upstream.timeout (5s) bounds the request and its hops together: two 3 s hops → 504, with
    // the core's reply.
    let started = Instant::now();
    let response = get("localhost", &format!("http://{slow}/slow"));
    assert_core_reply(&response, &Rejection::origin_timeout());
    assert!(
        started.elapsed() < Duration::from_millis(5900),
        "{:?}",
        started.elapsed()
    );

    // A hop to a host outside allowed_origin_hosts is refused before any request to it.
    origin.clear();
    let response = get(
        "localhost",
        &on_origin("/redirect/302?to=http://evil.example/"),
    );
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(origin.requests().len(), 1);

    // A client cannot pass for a hop: unsigned requests with every redirect marker are
    // refused like any unsigned request, and reach no origin.
    origin.clear();
    let markers = [
        ("location", on_origin("/ok")),
        ("x-envoy-original-url", "http://localhost/x".to_owned()),
        ("x-ixproxy-hop", "ixhop1".to_owned()),
        ("ixproxy_hop", "ixhop1".to_owned()),
        ("x-ixproxy-upstream", "plain".to_owned()),
    ];
    for (host, target) in [
        (
            "localhost".to_owned(),
            format!("/http%3A%2F%2F127.0.0.1%3A{port}%2Fok"),
        ),
        (format!("127.0.0.1:{port}"), "/ok".to_owned()),
    ] {
        let mut req = RawRequest::get(&host, &target);
        req.headers = markers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect();
        let response = send(envoy.addr(), &req, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            response.status == 403 || response.status == 410,
            "{response:?}"
        );
    }
    assert_eq!(origin.requests().len(), 0);

    // Content type outside the source's list: 403, no origin byte reaches the client.
    let response = get("images.test", &on_origin("/page.html"));
    assert_eq!(response.status, 403, "{response:?}");
    assert!(!response.body_text().contains("asset"), "{response:?}");

    // Streamed body over max_body_bytes: the transfer is aborted, never completed.
    let raw = raw_exchange(
        envoy.addr(),
        &signed("localhost", &on_origin(&format!("/bytes/{}", 3 * 65536))),
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text:.300}");
    assert!(!raw.ends_with(b"0\r\n\r\n"), "a complete chunked body");
    assert!(raw.len() < 3 * 65536, "{} bytes", raw.len());

    // The outcomes are counted, once per client request (README: the status table): a request whose origin
    // answer was refused counts that refusal, not `forwarded`.
    assert_outcome_counts(
        &envoy,
        &[
            ("forwarded", 2),
            ("origin_timeout", 1),
            ("internal", 0),
            ("bad_redirect", 1),
            ("origin_denied", 1),
            ("content_type_denied", 1),
            ("origin_too_large", 1),
            ("bad_signature", 1),
            ("unknown_host", 1),
        ],
    );

    // Envoy's own replies carry the core's status and body: a refused connection …
    let response = get("localhost", &format!("http://{}/x", refused_address()));
    assert_core_reply(&response, &Rejection::origin_error());
    // … and RBAC refusing a name that resolves to loopback for a source without private
    // origins (a `localhost` fallback is refused by the filter, with the same rejection).
    let response = get(
        "public.test",
        &format!("http://{}:{port}/image/x", loopback_alias()),
    );
    assert_core_reply(&response, &Rejection::origin_address_denied());
    assert_outcome_counts(&envoy, &[("origin_error", 1), ("origin_denied", 2)]);
}

/// The generated listener's `codec_type: AUTO`: one port serves HTTP/2 with prior knowledge
/// (h2c) and HTTP/1.1, with the same decision and headers over both.
#[test]
fn the_generated_listener_serves_h2c_and_http1_on_one_port() {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_dir();
    let config = write(
        dir.path(),
        "ixproxy.yaml",
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nsources:\n  - name: local\n    \
         hosts: [localhost]\n    secure_url_tokens: [tok]\n    allow_private_origins: true\n",
    );
    let envoy = EnvoyGateway::start(&config, &[], dir.path())
        .unwrap_or_else(|e| panic!("envoy does not start: {e}"));
    let url = format!("http://{}/asset/h2c.jpg", origin.http);
    let request = RawRequest::get(
        "localhost",
        &sign_url("tok", &url, &[], &SignOptions::default()),
    );
    // `send_h2c` fails unless the answer came over HTTP/2.
    let h2 = ixproxy_conformance::h2::send_h2c(envoy.addr(), &request, TIMEOUT)
        .unwrap_or_else(|e| panic!("h2c: {e}\n{}", envoy.log_tail()));
    let h1 = send(envoy.addr(), &request, TIMEOUT).unwrap_or_else(|e| panic!("http/1.1: {e}"));
    for response in [&h2, &h1] {
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body_text(), "asset /asset/h2c.jpg");
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    }
    let unknown = RawRequest::get("nobody.test", "/x");
    let h2 = ixproxy_conformance::h2::send_h2c(envoy.addr(), &unknown, TIMEOUT)
        .unwrap_or_else(|e| panic!("h2c: {e}"));
    let reply = Rejection::unknown_host();
    assert_core_reply(&h2, &reply);
    assert_eq!(origin.requests().len(), 2);
}
