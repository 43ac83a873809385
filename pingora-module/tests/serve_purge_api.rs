//! imgix's purge API on the admin listener of `ixproxy serve` (README: Caching, *imgix's purge
//! API*), on the real binary with the response cache on, in front of the recording origin.
//!
//! imgix's own Node client, imgix-management-js (`tests/imgix-client/purge.cjs`, installed by
//! `npm ci` there; scripts/test-all.sh does it), purges through it and reads its answers. The
//! other purges are the exact request imgix-rb builds (imgix-rb needs Ruby, and posts only to
//! `https://api.imgix.com`), headers and body (imgix/imgix-rb `lib/imgix/client.rb`,
//! `Client#purge` and `create_request`, 4.1.1; the header list is its own test's,
//! `test/units/purge_test.rb` `mock_headers`):
//!
//! ```ruby
//! req = Net::HTTP::Post.new(endpoint.path)          # "/api/v1/purge"
//! req["Content-Type"] = "application/vnd.api+json"
//! req["Authorization"] = "Bearer #{@api_key}"
//! req["User-Agent"] = "imgix #{@library}-#{@version}"
//! req.body = { data: { attributes: { url: url }, type: "purges" } }.to_json
//! ```
//!
//! with `url = "https://#{@domain}" + path` and Net::HTTP's own `Accept: */*` and
//! `Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::origin::RecordingOrigin;
use ixproxy_conformance::ServeProcess;
use ixproxy_core::sign::{sign_url, SignOptions};
use serde_json::Value;

#[path = "imgix-client/runner.rs"]
mod imgix_client;
use imgix_client::imgix_management_js_purge;

const TIMEOUT: Duration = Duration::from_secs(15);
const TOKEN: &str = "tok-purge-api-0123";
const KEY: &str = "ak_10adc394-10adc394-10adc394-10adc394";
const NEW_KEY: &str = "ak_rotated-0123456789abcdef";

fn config(keys: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream:
  connect_timeout: 2s
  timeout: 8s
cache:
  max_bytes: 1048576
  max_object_bytes: 65536
{keys}sources:
  - name: assets
    hosts: [assets.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
"
    )
}

fn start() -> (ServeProcess, RecordingOrigin) {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
    let keys = format!("purge_api_keys: [{KEY}, {{env: IXPROXY_TEST_PURGE_KEY}}]\n");
    let env = [(
        "IXPROXY_TEST_PURGE_KEY".to_owned(),
        "ak_from-the-environment-0123".to_owned(),
    )];
    let serve =
        ServeProcess::start_temp(bin, &config(&keys), &env).unwrap_or_else(|e| panic!("{e}"));
    (serve, origin)
}

/// A signed gateway target for `url` with `params`.
fn signed(url: &str, params: &[(&str, &str)]) -> String {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    sign_url(TOKEN, url, &params, &SignOptions::default())
}

/// The `Cache-Status` of a signed GET of `url` with `params`.
fn cache_status(serve: &ServeProcess, url: &str, params: &[(&str, &str)]) -> String {
    let req = RawRequest::get("assets.test", &signed(url, params));
    let response = send(serve.listen(), &req, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status, 200, "{}", response.body_text());
    response.header("cache-status").unwrap_or("").to_owned()
}

/// The purge request imgix-rb sends (see the module doc) with this `method`, `Authorization`
/// (none: left out), `Content-Type` and body.
fn imgix_rb_purge(
    method: &str,
    authorization: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> RawRequest {
    let mut headers = vec![
        ("Accept", "*/*".to_owned()),
        (
            "Accept-Encoding",
            "gzip;q=1.0,deflate;q=0.6,identity;q=0.3".to_owned(),
        ),
        ("User-Agent", "imgix rb-4.1.1".to_owned()),
        ("Content-Type", content_type.to_owned()),
        ("Content-Length", body.len().to_string()),
    ];
    if let Some(auth) = authorization {
        headers.push(("Authorization", auth.to_owned()));
    }
    RawRequest {
        method: method.to_owned(),
        target: "/api/v1/purge".to_owned(),
        host: "api.imgix.com".to_owned(),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect(),
        body: body.to_vec(),
    }
}

/// imgix-rb's body for `url` (`attributes` before `type`, as its hash is written).
fn document(url: &str) -> Vec<u8> {
    format!(r#"{{"data":{{"attributes":{{"url":"{url}"}},"type":"purges"}}}}"#).into_bytes()
}

fn post(serve: &ServeProcess, req: &RawRequest) -> (RawResponse, Value) {
    let response = send(serve.admin(), req, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        response.header("content-type"),
        Some("application/vnd.api+json"),
        "{response:?}"
    );
    let json = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {}", response.body_text()));
    (response, json)
}

fn purged_metric(serve: &ServeProcess, result: &str) -> u64 {
    serve
        .metric(&format!(
            "ixproxy_purge_api_requests_total{{result=\"{result}\"}}"
        ))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn imgix_s_purge_request_empties_every_variant_of_the_url() {
    let (serve, origin) = start();
    let url = format!("http://{}/fresh/600/16?variants", origin.http);
    let (small, webp) = (&[("w", "100")][..], &[("fm", "webp"), ("h", "50")][..]);
    assert_eq!(cache_status(&serve, &url, small), "ixproxy; fwd=miss");
    assert_eq!(cache_status(&serve, &url, small), "ixproxy; hit");
    assert_eq!(cache_status(&serve, &url, webp), "ixproxy; hit");

    // imgix-rb's `Client#purge(path)` with the path its `Client#path(url)` signs: the encoded
    // origin URL, no params.
    let path = signed(&url, &[]);
    let path = path.split('?').next().unwrap_or_default();
    let purge_url = format!("https://assets.test{path}");
    let auth = format!("Bearer {KEY}");
    let req = imgix_rb_purge(
        "POST",
        Some(&auth),
        "application/vnd.api+json",
        &document(&purge_url),
    );
    let (response, json) = post(&serve, &req);
    assert_eq!(response.status, 200, "{json}");
    assert_eq!(json["data"]["type"], "purges");
    assert_eq!(json["data"]["attributes"]["url"], purge_url.as_str());
    assert_eq!(json["jsonapi"]["version"], "1.0");
    assert_eq!(json["meta"]["purged"], 1, "{json}");
    let id = json["data"]["id"].as_str().unwrap_or_default();
    assert!(
        id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    // Both variants are gone: each is a miss (one origin fetch), then a hit again.
    let fetched = origin.requests().len();
    assert_eq!(cache_status(&serve, &url, webp), "ixproxy; fwd=miss");
    assert_eq!(cache_status(&serve, &url, small), "ixproxy; hit");
    assert_eq!(origin.requests().len(), fetched + 1);

    // The key from the environment, a signed URL with its query (params and `s` ignored),
    // plain JSON: the same entry.
    let with_query = format!("https://assets.test{}", signed(&url, small));
    let req = imgix_rb_purge(
        "POST",
        Some("Bearer ak_from-the-environment-0123"),
        "application/json; charset=utf-8",
        &document(&with_query),
    );
    let (response, json) = post(&serve, &req);
    assert_eq!((response.status, &json["meta"]["purged"]), (200, &1.into()));
    assert_eq!(cache_status(&serve, &url, webp), "ixproxy; fwd=miss");
    assert_eq!(purged_metric(&serve, "purged"), 2);
}

#[test]
fn refusals_answer_json_api_errors_and_purge_nothing() {
    let (serve, origin) = start();
    let url = format!("http://{}/fresh/600/16?kept", origin.http);
    assert_eq!(cache_status(&serve, &url, &[]), "ixproxy; fwd=miss");
    let path = signed(&url, &[]);
    let good = document(&format!(
        "https://assets.test{}",
        path.split('?').next().unwrap_or_default()
    ));
    let auth = format!("Bearer {KEY}");
    let json_api = "application/vnd.api+json";
    // A request with the right key: only its body is wrong.
    let keyed = |body: &[u8]| imgix_rb_purge("POST", Some(&auth), json_api, body);
    let cases: Vec<(RawRequest, u16, &str)> = vec![
        (
            imgix_rb_purge("POST", None, json_api, &good),
            401,
            "unauthorized",
        ),
        (
            imgix_rb_purge("POST", Some("Bearer ak_wrong"), json_api, &good),
            401,
            "unauthorized",
        ),
        (
            imgix_rb_purge("POST", Some(&format!("Basic {KEY}")), json_api, &good),
            401,
            "unauthorized",
        ),
        (
            imgix_rb_purge("GET", Some(&auth), json_api, b""),
            405,
            "method",
        ),
        (
            // The label is not what is checked: a form body is not imgix's document.
            imgix_rb_purge(
                "POST",
                Some(&auth),
                "application/x-www-form-urlencoded",
                b"url=x",
            ),
            400,
            "bad_document",
        ),
        (keyed(b"{\"data\":"), 400, "bad_document"),
        (
            keyed(br#"{"data":{"type":"sources","attributes":{"url":"https://assets.test/x"}}}"#),
            400,
            "bad_document",
        ),
        (
            keyed(br#"{"data":{"type":"purges","attributes":{}}}"#),
            400,
            "bad_document",
        ),
        (
            keyed(&document("https://assets.test/ftp%3A%2F%2Fo.test%2Fa.png")),
            400,
            "bad_url",
        ),
        (
            keyed(&document(
                "https://elsewhere.test/https%3A%2F%2Fo.test%2Fa.png",
            )),
            404,
            "unknown_source",
        ),
        (keyed(&vec![b' '; 64 * 1024 + 1]), 413, "too_large"),
    ];
    for (req, status, label) in &cases {
        let (response, json) = post(&serve, req);
        let error = &json["errors"][0];
        assert_eq!(
            (response.status, error["status"].as_str()),
            (*status, Some(status.to_string().as_str())),
            "{label}: {json}"
        );
        assert!(
            error["detail"].is_string() && error["id"].is_string(),
            "{json}"
        );
        match status {
            401 => assert_eq!(
                response.header("www-authenticate"),
                Some("Bearer realm=\"ixproxy\"")
            ),
            405 => assert_eq!(response.header("allow"), Some("POST")),
            _ => {}
        }
        // The key never comes back, whatever the refusal.
        assert!(!response.body_text().contains(KEY), "{json}");
    }
    for (label, count) in [("unauthorized", 3), ("bad_document", 4)] {
        assert_eq!(purged_metric(&serve, label), count, "{label}");
    }
    assert_eq!(purged_metric(&serve, "purged"), 0);
    assert_eq!(
        cache_status(&serve, &url, &[]),
        "ixproxy; hit",
        "nothing purged"
    );
}

#[test]
fn a_trickled_body_is_cut_off_and_keys_reload_on_sighup() {
    let (serve, _origin) = start();
    // Headers and half a body, then nothing: 408 once the body timeout passes, and the
    // connection closes.
    let mut req = imgix_rb_purge(
        "POST",
        Some(&format!("Bearer {KEY}")),
        "application/vnd.api+json",
        &document("https://assets.test/https%3A%2F%2Fo.test%2Fa.png"),
    );
    req.body.truncate(10);
    let started = Instant::now();
    let (response, json) = post(&serve, &req);
    assert_eq!(response.status, 408, "{json}");
    assert!(response.says_close());
    assert!(started.elapsed() < Duration::from_secs(10));

    // SIGHUP with a new key: the old one is refused at once, the new one admitted; without
    // keys the path is not found.
    let reloads = serve
        .metric("ixproxy_config_reloads_total{result=\"ok\"}")
        .unwrap_or_else(|e| panic!("{e}"));
    let reload = |keys: &str, before: u64| {
        std::fs::write(serve.config_path(), config(keys)).expect("write config");
        serve
            .signal(ixproxy_conformance::Signal::SIGHUP)
            .expect("SIGHUP");
        for _ in 0..250 {
            let now = serve
                .metric("ixproxy_config_reloads_total{result=\"ok\"}")
                .unwrap_or_else(|e| panic!("{e}"));
            if now > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the reload was not applied:\n{}", serve.log_tail());
    };
    reload(&format!("purge_api_keys: [{NEW_KEY}]\n"), reloads);
    let body = document("https://assets.test/https%3A%2F%2Fo.test%2Fa.png");
    let purge = |key: &str| {
        let auth = format!("Bearer {key}");
        post(
            &serve,
            &imgix_rb_purge("POST", Some(&auth), "application/vnd.api+json", &body),
        )
        .0
        .status
    };
    assert_eq!((purge(KEY), purge(NEW_KEY)), (401, 200));
    reload("", reloads + 1);
    let gone = send(
        serve.admin(),
        &imgix_rb_purge(
            "POST",
            Some(&format!("Bearer {NEW_KEY}")),
            "application/vnd.api+json",
            &body,
        ),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(gone.status, 404, "{}", gone.body_text());
}

/// imgix-management-js's purge of `url` with `key` on `serve` ([`imgix_management_js_purge`]).
fn management_js_purge(serve: &ServeProcess, key: &str, url: &str) -> Value {
    imgix_management_js_purge(serve.admin(), key, url, TIMEOUT)
}

#[test]
fn imgix_s_own_management_client_purges_and_reads_the_answers() {
    let (serve, origin) = start();
    let url = format!("http://{}/fresh/600/16?management-js", origin.http);
    assert_eq!(
        cache_status(&serve, &url, &[("w", "10")]),
        "ixproxy; fwd=miss"
    );
    assert_eq!(cache_status(&serve, &url, &[("w", "20")]), "ixproxy; hit");
    let path = signed(&url, &[]);
    let purge_url = format!(
        "https://assets.test{}",
        path.split('?').next().unwrap_or_default()
    );

    let refused = management_js_purge(&serve, "ak_not-a-key", &purge_url);
    assert_eq!(refused["status"], 401, "{refused}");
    assert_eq!(refused["error"]["errors"][0]["status"], "401", "{refused}");
    assert_eq!(cache_status(&serve, &url, &[("w", "30")]), "ixproxy; hit");

    let purged = management_js_purge(&serve, KEY, &purge_url);
    assert_eq!(purged["status"], 200, "{purged}");
    let data = &purged["body"]["data"];
    assert_eq!(
        (&data["type"], &data["attributes"]["url"]),
        (&"purges".into(), &purge_url.as_str().into()),
        "{purged}"
    );
    assert_eq!(purged["body"]["meta"]["purged"], 1, "{purged}");
    assert_eq!(
        cache_status(&serve, &url, &[("w", "10")]),
        "ixproxy; fwd=miss"
    );

    let unknown = management_js_purge(&serve, KEY, "https://nobody.test/x");
    assert_eq!(unknown["status"], 404, "{unknown}");
    assert_eq!(
        unknown["error"]["errors"][0]["source"]["pointer"],
        "/data/attributes/url"
    );
}

/// Sends `req`'s head with `Expect: 100-continue` and returns what arrives before any body
/// byte is sent (read until the server closes or stops for 2 s), then, if that was a `100`,
/// sends the body and returns the whole exchange read until the server closes.
fn expect_continue(serve: &ServeProcess, req: &RawRequest) -> (String, String) {
    let mut stream = TcpStream::connect(serve.admin()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut head = RawRequest {
        body: Vec::new(),
        ..req.clone()
    };
    head.headers
        .push(("Expect".to_owned(), "100-continue".to_owned()));
    stream.write_all(&head.to_bytes()).expect("write head");
    let mut first = [0u8; 512];
    let n = stream.read(&mut first).unwrap_or(0);
    let first = String::from_utf8_lossy(&first[..n]).into_owned();
    if !first.starts_with("HTTP/1.1 100") {
        return (first, String::new());
    }
    stream.write_all(&req.body).expect("write body");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    (first, String::from_utf8_lossy(&rest).into_owned())
}

#[test]
fn an_admitted_request_that_expects_100_continue_is_asked_for_its_body() {
    let (serve, _origin) = start();
    let body = document("https://assets.test/https%3A%2F%2Fo.test%2Fa.png");
    let json_api = "application/vnd.api+json";
    let admitted = imgix_rb_purge("POST", Some(&format!("Bearer {KEY}")), json_api, &body);
    let (first, rest) = expect_continue(&serve, &admitted);
    assert!(first.starts_with("HTTP/1.1 100 Continue\r\n"), "{first}");
    assert!(
        (first.clone() + &rest).contains("HTTP/1.1 200 OK\r\n"),
        "{first}{rest}"
    );
    // An unknown key never gets to send its body: the answer comes at once.
    let refused = imgix_rb_purge("POST", Some("Bearer ak_wrong"), json_api, &body);
    let (first, _) = expect_continue(&serve, &refused);
    assert!(first.starts_with("HTTP/1.1 401 "), "{first}");
}
