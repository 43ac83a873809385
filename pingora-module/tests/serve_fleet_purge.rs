//! Purge across the fleet (README: Caching, *Purge across the fleet*; SPEC §16): three real
//! `ixproxy serve` processes on loopback, each caching the same URL from one recording origin,
//! each listing all three admin listeners (itself included) in `cache.peers.static`. The
//! listeners' ports are the OS's: each process starts without peers, and the list is written
//! once all three are known and applied by SIGHUP (`cache.peers` reloads without a restart).

use std::time::{Duration, Instant};

use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::origin::RecordingOrigin;
use ixproxy_conformance::{ServeProcess, Signal};
use ixproxy_core::sign::{encode_uri_component, sign_url, SignOptions};
use serde_json::Value;

#[path = "imgix-client/runner.rs"]
mod imgix_client;
use imgix_client::imgix_management_js_purge;

const TIMEOUT: Duration = Duration::from_secs(10);
const TOKEN: &str = "tok-fleet-purge-0123";
const KEY: &str = "ak_fleet-0123456789abcdef";
const PEER_SAMPLE: &str = "ixproxy_purge_peer_requests_total";

fn config(peers: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
access_log: off
upstream:
  connect_timeout: 2s
  timeout: 8s
cache:
  max_bytes: 1048576
  max_object_bytes: 65536
{peers}purge_api_keys: [{KEY}]
sources:
  - name: assets
    hosts: [assets.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
"
    )
}

/// Three instances, each with all three admin listeners as its peers, and the origin.
fn fleet() -> (Vec<ServeProcess>, RecordingOrigin) {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_ixproxy"));
    let fleet: Vec<ServeProcess> = (0..3)
        .map(|_| ServeProcess::start_temp(bin, &config(""), &[]).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let list: Vec<String> = fleet.iter().map(|s| format!("'{}'", s.admin())).collect();
    let peers = format!("  peers: {{static: [{}]}}\n", list.join(", "));
    for serve in &fleet {
        std::fs::write(serve.config_path(), config(&peers)).expect("config");
        serve.signal(Signal::SIGHUP).expect("SIGHUP");
    }
    for serve in &fleet {
        await_sample(serve, "ixproxy_config_reloads_total{result=\"ok\"}", 1);
    }
    (fleet, origin)
}

/// Polls `sample` (every 20 ms, at most 10 s) until it reaches `value`.
fn await_sample(serve: &ServeProcess, sample: &str, value: u64) {
    for _ in 0..500 {
        if serve.metric(sample).is_ok_and(|v| v >= value) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{sample} never reached {value}; log:\n{}", serve.log_tail());
}

fn signed(url: &str) -> String {
    sign_url(TOKEN, url, &[], &SignOptions::default())
}

/// The `Cache-Status` of a signed GET of `url` on `serve`.
fn cache_status(serve: &ServeProcess, url: &str) -> String {
    let req = RawRequest::get("assets.test", &signed(url));
    let response = send(serve.listen(), &req, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status, 200, "{}", response.body_text());
    response.header("cache-status").unwrap_or("").to_owned()
}

/// Every instance answers `url` with `expected`, then from the cache.
fn each_answers(fleet: &[ServeProcess], url: &str, expected: &str) {
    for (i, serve) in fleet.iter().enumerate() {
        assert_eq!(cache_status(serve, url), expected, "instance {i}");
        assert_eq!(cache_status(serve, url), "ixproxy; hit", "instance {i}");
    }
}

fn post(
    serve: &ServeProcess,
    target: &str,
    headers: Vec<(String, String)>,
    body: &[u8],
) -> RawResponse {
    let req = RawRequest {
        method: "POST".to_owned(),
        target: target.to_owned(),
        host: "admin".to_owned(),
        headers: headers
            .into_iter()
            .chain([("Content-Length".to_owned(), body.len().to_string())])
            .collect(),
        body: body.to_vec(),
    };
    send(serve.admin(), &req, TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// `POST /cache/purge?url=` on `serve`.
fn purge(serve: &ServeProcess, url: &str) -> RawResponse {
    post(
        serve,
        &format!("/cache/purge?url={}", encode_uri_component(url)),
        Vec::new(),
        b"",
    )
}

/// The gateway URL imgix's clients purge for `url`.
fn gateway_url(url: &str) -> String {
    let path = signed(url);
    format!(
        "https://assets.test{}",
        path.split('?').next().unwrap_or_default()
    )
}

/// imgix's purge API on `serve` for the gateway URL of `url`, its answer as JSON.
fn purge_api(serve: &ServeProcess, url: &str) -> (u16, Value) {
    let body = format!(
        r#"{{"data":{{"attributes":{{"url":"{}"}},"type":"purges"}}}}"#,
        gateway_url(url)
    );
    let headers = vec![
        ("Authorization".to_owned(), format!("Bearer {KEY}")),
        (
            "Content-Type".to_owned(),
            "application/vnd.api+json".to_owned(),
        ),
    ];
    let response = post(serve, "/api/v1/purge", headers, body.as_bytes());
    let json = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {}", response.body_text()));
    (response.status, json)
}

fn peer_count(serve: &ServeProcess, result: &str) -> u64 {
    serve
        .metric(&format!("{PEER_SAMPLE}{{result=\"{result}\"}}"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `(confirmed, failed, self)` peer counts of `serve`.
fn peer_counts(serve: &ServeProcess) -> (u64, u64, u64) {
    (
        peer_count(serve, "confirmed"),
        peer_count(serve, "failed"),
        peer_count(serve, "self"),
    )
}

#[test]
fn a_purge_on_one_instance_empties_all_three_and_lists_its_peers() {
    let (mut fleet, origin) = fleet();
    let url = format!("http://{}/fresh/600/16?fleet", origin.http);
    each_answers(&fleet, &url, "ixproxy; fwd=miss");
    assert_eq!(origin.requests().len(), 3, "one fetch per instance");
    let admins: Vec<String> = fleet.iter().map(|s| s.admin().to_string()).collect();

    // `/cache/purge` on the first: the first line as without peers, then the two others
    // confirmed; itself, in its own list, is listed as such, neither confirmed nor failed.
    let answer = purge(&fleet[0], &url);
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert_eq!(
        answer.body_text(),
        format!(
            "purged 1\npeers confirmed 2 failed 0\npeer {} self\npeer {} confirmed purged \
             1\npeer {} confirmed purged 1\n",
            admins[0], admins[1], admins[2]
        )
    );
    each_answers(&fleet, &url, "ixproxy; fwd=miss");
    assert_eq!(origin.requests().len(), 6, "each instance fetched again");
    // Forwarded purges were applied on the peers only: neither forwarded it again.
    assert_eq!(peer_counts(&fleet[0]), (2, 0, 1));
    assert_eq!(peer_counts(&fleet[1]), (0, 0, 0));
    assert_eq!(peer_counts(&fleet[2]), (0, 0, 0));

    // imgix's purge API on the second: the same, with `meta.peers`.
    let (status, json) = purge_api(&fleet[1], &url);
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["data"]["type"], "purges");
    assert_eq!(json["meta"]["purged"], 1, "{json}");
    let confirmed: Vec<(&str, u64)> = json["meta"]["peers"]["confirmed"]
        .as_array()
        .expect("confirmed list")
        .iter()
        .map(|p| {
            (
                p["peer"].as_str().unwrap_or(""),
                p["purged"].as_u64().unwrap_or(9),
            )
        })
        .collect();
    assert_eq!(
        confirmed,
        [(admins[0].as_str(), 1), (admins[2].as_str(), 1)]
    );
    assert_eq!(json["meta"]["peers"]["failed"], serde_json::json!([]));
    assert_eq!(
        json["meta"]["peers"]["self"],
        serde_json::json!([admins[1]])
    );
    each_answers(&fleet, &url, "ixproxy; fwd=miss");
    assert_eq!(origin.requests().len(), 9);
    assert_eq!(peer_counts(&fleet[1]), (2, 0, 1));
    assert_eq!(
        peer_counts(&fleet[0]),
        (2, 0, 1),
        "unchanged: not fanned out"
    );
    assert_eq!(peer_counts(&fleet[2]), (0, 0, 0));

    // imgix's own client reads the 200 with `meta.peers` as its resource.
    let js = imgix_management_js_purge(fleet[2].admin(), KEY, &gateway_url(&url), TIMEOUT);
    assert_eq!(js["status"], 200, "{js}");
    assert_eq!(js["body"]["data"]["type"], "purges", "{js}");
    assert_eq!(
        js["body"]["meta"]["peers"]["confirmed"][1]["peer"],
        admins[1].as_str()
    );
    each_answers(&fleet, &url, "ixproxy; fwd=miss");
    assert_eq!(origin.requests().len(), 12);

    // The third stops: a purge still applies on the first two and reports it failed (502).
    let third = fleet.pop().expect("three");
    let _ = third.stop(Signal::SIGINT).unwrap_or_else(|e| panic!("{e}"));
    let answer = purge(&fleet[0], &url);
    assert_eq!(answer.status, 502, "{}", answer.body_text());
    assert_eq!(
        answer.body_text(),
        format!(
            "purged 1\npeers confirmed 1 failed 1\npeer {} self\npeer {} confirmed purged \
             1\npeer {} failed: connection refused\n",
            admins[0], admins[1], admins[2]
        )
    );
    // The operator's log names the peer and why, one line per failed peer.
    // The line can reach the log file just after the answer: polled, within a bound.
    let warning = format!("fleet purge: peer {} failed: connection refused", admins[2]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet[0].log().matches(&warning).count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        fleet[0].log().matches(&warning).count(),
        1,
        "{}",
        fleet[0].log_tail()
    );
    each_answers(&fleet, &url, "ixproxy; fwd=miss");
    let (status, json) = purge_api(&fleet[1], &url);
    assert_eq!(status, 502, "{json}");
    assert_eq!(json["errors"][0]["status"], "502");
    assert_eq!(json["meta"]["purged"], 1, "purged here all the same");
    assert_eq!(
        json["meta"]["peers"]["failed"],
        serde_json::json!([{"peer": admins[2], "error": "connection refused"}])
    );
    assert_eq!(
        json["meta"]["peers"]["confirmed"][0]["peer"],
        admins[0].as_str()
    );
    each_answers(&fleet, &url, "ixproxy; fwd=miss");
    // imgix's own client sees the 502 as a failed purge, the error document in hand.
    let js = imgix_management_js_purge(fleet[0].admin(), KEY, &gateway_url(&url), TIMEOUT);
    assert_eq!(js["status"], 502, "{js}");
    assert_eq!(js["error"]["errors"][0]["status"], "502", "{js}");
    assert_eq!(
        js["error"]["meta"]["peers"]["failed"][0]["peer"],
        admins[2].as_str()
    );
    assert_eq!(
        cache_status(&fleet[1], &url),
        "ixproxy; fwd=miss",
        "purged all the same"
    );
    assert_eq!(peer_counts(&fleet[0]), (4, 2, 3));
    assert_eq!(
        fleet[1]
            .metric("ixproxy_purge_api_requests_total{result=\"purged\"}")
            .expect("metric"),
        2
    );
}

#[test]
fn the_peer_path_purges_here_only_and_anyone_with_the_admin_listener_could_already() {
    let (fleet, origin) = fleet();
    let url = format!("http://{}/fresh/600/16?peer-path", origin.http);
    each_answers(&fleet, &url, "ixproxy; fwd=miss");
    // What a peer sends: applied on this instance, which answers with its instance id and
    // asks no one.
    let answer = post(
        &fleet[0],
        &format!(
            "/cache/purge/peer?url={}&source=assets",
            encode_uri_component(&url)
        ),
        Vec::new(),
        b"",
    );
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    let text = answer.body_text();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("purged 1"));
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix("instance "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(cache_status(&fleet[0], &url), "ixproxy; fwd=miss");
    assert_eq!(
        cache_status(&fleet[1], &url),
        "ixproxy; hit",
        "not forwarded"
    );
    assert_eq!(
        cache_status(&fleet[2], &url),
        "ixproxy; hit",
        "not forwarded"
    );
    assert_eq!(peer_counts(&fleet[0]), (0, 0, 0));
    // Another source's name purges nothing of this one's.
    let other = post(
        &fleet[1],
        &format!(
            "/cache/purge/peer?url={}&source=elsewhere",
            encode_uri_component(&url)
        ),
        Vec::new(),
        b"",
    );
    assert!(
        other.body_text().starts_with("purged 0\n"),
        "{}",
        other.body_text()
    );
    assert_eq!(cache_status(&fleet[1], &url), "ixproxy; hit");
}

#[test]
fn a_process_without_a_cache_forwards_no_purge_whatever_a_reload_says() {
    // A would-be peer: anything forwarded to it shows up as a connection.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    peer.set_nonblocking(true).expect("nonblocking");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_ixproxy"));
    let no_cache = config("").replace(
        "cache:\n  max_bytes: 1048576\n  max_object_bytes: 65536\n",
        "",
    );
    assert!(!no_cache.contains("cache:"), "{no_cache}");
    let serve = ServeProcess::start_temp(bin, &no_cache, &[]).unwrap_or_else(|e| panic!("{e}"));
    // The cache needs a restart: the reload keeps it off, and applies the rest.
    let peers = format!(
        "  peers: {{static: ['{}']}}\n",
        peer.local_addr().expect("addr")
    );
    std::fs::write(serve.config_path(), config(&peers)).expect("config");
    serve.signal(Signal::SIGHUP).expect("SIGHUP");
    await_sample(&serve, "ixproxy_config_reloads_total{result=\"ok\"}", 1);
    let url = "http://127.0.0.1:9/a.png";
    let (status, json) = purge_api(&serve, url);
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["meta"]["purged"], 0);
    assert!(json["meta"].get("peers").is_none(), "{json}");
    assert!(
        matches!(peer.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing forwarded"
    );
    assert_eq!(peer_counts(&serve), (0, 0, 0));
}
