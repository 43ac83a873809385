//! The native response cache of `ixproxy serve` (README: Caching), on the real binary in front
//! of the recording origin, which counts what reaches it: a second request is a hit with one
//! origin fetch; 50 concurrent cold requests for one URL make one origin fetch; URLs signed
//! with other gateway params (or an `expires`) share the entry, each response with its own
//! cap; a hit still enforces `s` and `expires`; a stale entry is revalidated (the origin's 304
//! refreshes it); purge makes the next request a miss; a Range on a cached object is a 206 from
//! the cache; a HEAD never stores a body; answers over `max_object_bytes` are streamed, never
//! stored; the process's memory stays within `max_bytes` plus a stated overhead after twice
//! `max_bytes` of distinct objects went through; a fallback image is stored under the request's
//! key for `cache_ttl_error` only, an error image's answer never, the image's own URL is its
//! own answer, an image with the request's params appended is never stored, a refused hit takes
//! the error image, and a HEAD stores nothing (README: Fallback images).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::gateway::resident_kib;
use ixproxy_conformance::origin::{pattern, Recorded, RecordingOrigin};
use ixproxy_conformance::ServeProcess;
use ixproxy_core::sign::{encode_uri_component, sign_url, SignOptions};

const TIMEOUT: Duration = Duration::from_secs(15);
const TOKEN: &str = "tok-cache";
/// `cache.max_bytes` of [`config`].
const MAX_BYTES: u64 = 4 * 1024 * 1024;
/// `cache.max_object_bytes` of [`config`].
const MAX_OBJECT_BYTES: u64 = 256 * 1024;
/// What the process may grow by beyond `max_bytes` after six times `max_bytes` of distinct
/// objects went through (README: Caching): the allocator's retained free space (mimalloc keeps
/// freed segments per worker thread and grows in 2 MiB steps), the fill buffer and the
/// origin/client read buffers of a request, and the stored headers and index (counted in
/// `ixproxy_cache_bytes` too). A cache that kept its evicted bodies would grow 24 MiB.
const RSS_OVERHEAD: u64 = 10 * 1024 * 1024;
/// What the process may grow by while a full cache is replaced twice over (8 MiB of new
/// bodies in, 8 MiB of evicted ones out): the freed bodies must be reused.
const RSS_STEADY: u64 = 4 * 1024 * 1024;

fn config(limits: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
{limits}upstream:
  connect_timeout: 2s
  timeout: 8s
cache:
  max_bytes: {MAX_BYTES}
  max_object_bytes: {MAX_OBJECT_BYTES}
sources:
  - name: assets
    hosts: [assets.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
  - name: other
    hosts: [other.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
  - name: short
    hosts: [short.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
    cache_ttl_behavior: override_origin
    cache_ttl: 1
  - name: pages
    hosts: [pages.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
    cors: {{allow_origin: [\"http://app.test\"]}}
"
    )
}

fn start() -> (ServeProcess, RecordingOrigin) {
    start_with("")
}

/// Starts the gateway on [`config`] with `limits` (a `limits:` block, or nothing).
fn start_with(limits: &str) -> (ServeProcess, RecordingOrigin) {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
    let serve =
        ServeProcess::start_temp(bin, &config(limits), &[]).unwrap_or_else(|e| panic!("{e}"));
    (serve, origin)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn signed(url: &str, params: &[(&str, String)]) -> String {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    sign_url(TOKEN, url, &params, &SignOptions::default())
}

fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut req = RawRequest::get(host, target);
    req.method = method.to_owned();
    req.headers = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    send(addr, &req, TIMEOUT).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

fn get(serve: &ServeProcess, url: &str) -> RawResponse {
    request(serve.listen(), "GET", "assets.test", &signed(url, &[]), &[])
}

/// The origin requests whose target starts with `path`.
fn fetches(origin: &RecordingOrigin, path: &str) -> Vec<Recorded> {
    origin
        .requests()
        .into_iter()
        .filter(|r| r.target.starts_with(path))
        .collect()
}

/// The value of the metric sample named exactly `sample` (`name{labels}`).
fn metric(serve: &ServeProcess, sample: &str) -> u64 {
    serve.metric(sample).unwrap_or_else(|e| panic!("{e}"))
}

fn cache_metric(serve: &ServeProcess, result: &str) -> u64 {
    // No disk tier here: a stored answer served comes from memory, anything else from the
    // origin.
    let tier = match result {
        "hit" | "revalidated" => "memory",
        _ => "none",
    };
    metric(
        serve,
        &format!("ixproxy_cache_requests_total{{result=\"{result}\",tier=\"{tier}\"}}"),
    )
}

/// Polls `ixproxy_cache_requests_total` (every 20 ms, at most 5 s) until `result` reaches
/// `value` (requests are counted in the access-log phase, just after the response).
fn await_cache_metric(serve: &ServeProcess, result: &str, value: u64) {
    for _ in 0..250 {
        if cache_metric(serve, result) >= value {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cache result {result} never reached {value}");
}

fn status_of(r: &RawResponse) -> Option<&str> {
    r.header("cache-status")
}

fn max_age(r: &RawResponse) -> u64 {
    r.header("cache-control")
        .and_then(|cc| {
            cc.split(',')
                .find_map(|d| d.trim().strip_prefix("max-age="))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("no max-age in {:?}", r.header("cache-control")))
}

#[test]
fn a_second_request_is_a_hit_and_other_params_share_the_entry() {
    let (serve, origin) = start();
    let url = format!("http://{}/fresh/600/100?a", origin.http);
    let first = get(&serve, &url);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, pattern(100));
    assert_eq!(status_of(&first), Some("ixproxy; fwd=miss"));
    assert_eq!(max_age(&first), 600);

    let second = get(&serve, &url);
    assert_eq!((second.status, &second.body), (200, &pattern(100)));
    assert_eq!(status_of(&second), Some("ixproxy; hit"));
    assert_eq!(second.header("etag"), Some("\"fresh-100\""));
    assert_eq!(second.header("content-length"), Some("100"));
    assert!(second.header("age").is_some(), "a hit says its age");
    for header in ["x-content-type-options", "content-security-policy"] {
        assert_eq!(
            second.header(header),
            first.header(header),
            "{header} on the hit"
        );
    }
    assert_eq!(fetches(&origin, "/fresh/600/100").len(), 1);

    // Re-signed with gateway params: same origin object, same entry.
    let params = [("w", "100".to_owned()), ("fm", "webp".to_owned())];
    let resigned = request(
        serve.listen(),
        "GET",
        "assets.test",
        &signed(&url, &params),
        &[],
    );
    assert_eq!(status_of(&resigned), Some("ixproxy; hit"));
    // With `expires`: a hit too, capped at this URL's seconds left; the entry keeps its own
    // freshness for the next URL.
    let expires = [("expires", (unix_now() + 30).to_string())];
    let capped = request(
        serve.listen(),
        "GET",
        "assets.test",
        &signed(&url, &expires),
        &[],
    );
    assert_eq!(status_of(&capped), Some("ixproxy; hit"));
    assert!(
        max_age(&capped) <= 30,
        "{:?}",
        capped.header("cache-control")
    );
    let uncapped = get(&serve, &url);
    assert_eq!(status_of(&uncapped), Some("ixproxy; hit"));
    assert_eq!(max_age(&uncapped), 600, "the cap was per response");
    assert_eq!(
        fetches(&origin, "/fresh/600/100").len(),
        1,
        "one origin fetch"
    );

    // The same URL under another source is another entry.
    let other = request(serve.listen(), "GET", "other.test", &signed(&url, &[]), &[]);
    assert_eq!(status_of(&other), Some("ixproxy; fwd=miss"));
    assert_eq!(fetches(&origin, "/fresh/600/100").len(), 2);

    // Over max_object_bytes: streamed whole every time, never stored.
    let big_len = MAX_OBJECT_BYTES as usize + 1;
    let big = format!("http://{}/fresh/600/{big_len}", origin.http);
    for _ in 0..2 {
        let r = get(&serve, &big);
        assert_eq!((r.status, r.body.len()), (200, big_len));
        assert_eq!(status_of(&r), Some("ixproxy; fwd=miss"));
    }
    assert_eq!(fetches(&origin, &format!("/fresh/600/{big_len}")).len(), 2);

    await_cache_metric(&serve, "uncacheable", 2);
    assert_eq!(cache_metric(&serve, "hit"), 4);
    assert_eq!(cache_metric(&serve, "miss"), 2);
    assert_eq!(
        serve
            .outcome_count("forwarded")
            .unwrap_or_else(|e| panic!("{e}")),
        8,
        "every hit is one forwarded outcome"
    );
}

#[test]
fn a_hit_still_enforces_s_and_expires() {
    let (serve, origin) = start();
    let url = format!("http://{}/fresh/600/10?enforced", origin.http);
    assert_eq!(status_of(&get(&serve, &url)), Some("ixproxy; fwd=miss"));
    assert_eq!(status_of(&get(&serve, &url)), Some("ixproxy; hit"));

    let good = signed(&url, &[]);
    let (path, sig) = good.rsplit_once("s=").expect("signed");
    let wrong = format!("{path}s={}", "0".repeat(sig.len()));
    let unsigned = path.trim_end_matches(['?', '&']).to_owned();
    let expired = signed(&url, &[("expires", (unix_now() - 10).to_string())]);
    for (target, status) in [(&wrong, 403), (&unsigned, 403), (&expired, 404)] {
        let r = request(serve.listen(), "GET", "assets.test", target, &[]);
        assert_eq!(r.status, status, "{target}");
        assert_eq!(status_of(&r), None, "{target}: never looked up");
        assert_ne!(r.body, pattern(10), "{target}: not the cached body");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    // Another source's token does not open this source's entry either.
    let foreign = sign_url("other-token", &url, &[], &SignOptions::default());
    let r = request(serve.listen(), "GET", "assets.test", &foreign, &[]);
    assert_eq!(r.status, 403);
    assert_eq!(fetches(&origin, "/fresh/600/10").len(), 1);
}

#[test]
fn fifty_concurrent_cold_requests_make_one_origin_fetch() {
    let (serve, origin) = start();
    // The origin holds its answer 500 ms, so every request arrives while the first is filling.
    let url = format!("http://{}/fresh/600/2000?delay=500", origin.http);
    let target = Arc::new(signed(&url, &[]));
    let addr = serve.listen();
    let barrier = Arc::new(Barrier::new(50));
    let started = Instant::now();
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (target, barrier) = (Arc::clone(&target), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                request(addr, "GET", "assets.test", &target, &[])
            })
        })
        .collect();
    let responses: Vec<RawResponse> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    for r in &responses {
        assert_eq!((r.status, &r.body), (200, &pattern(2000)));
    }
    assert_eq!(
        fetches(&origin, "/fresh/600/2000").len(),
        1,
        "one origin fetch for 50 concurrent misses"
    );
    let misses = responses
        .iter()
        .filter(|r| status_of(r) == Some("ixproxy; fwd=miss"))
        .count();
    assert_eq!(
        misses, 1,
        "the one fill; the others waited on the lock and hit"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    await_cache_metric(&serve, "hit", 49);
}

#[test]
fn a_hit_takes_no_in_flight_slot() {
    let (serve, origin) = start_with("limits:\n  max_inflight_per_source: 1\n");
    let cached = format!("http://{}/fresh/600/10?slot", origin.http);
    assert_eq!(status_of(&get(&serve, &cached)), Some("ixproxy; fwd=miss"));
    // A slow origin fetch holds the source's only slot (the first request's slot is given
    // back when its context is dropped, a moment after its response: retried until the slow
    // fetch gets it) ...
    let slow = signed(
        &format!("http://{}/fresh/600/20?delay=3000", origin.http),
        &[],
    );
    let addr = serve.listen();
    let mut holder = None;
    for _ in 0..20 {
        let slow = slow.clone();
        let attempt = std::thread::spawn(move || request(addr, "GET", "assets.test", &slow, &[]));
        for _ in 0..500 {
            if !fetches(&origin, "/fresh/600/20").is_empty() || attempt.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if fetches(&origin, "/fresh/600/20").is_empty() {
            let refused = attempt.join().expect("attempt");
            assert_eq!(refused.status, 503, "{}", refused.body_text());
            std::thread::sleep(Duration::from_millis(50));
        } else {
            holder = Some(attempt);
            break;
        }
    }
    let holder = holder.expect("the slow fetch never got the slot");
    // ... while hits are served, and another miss is refused for want of a slot.
    for _ in 0..3 {
        let r = get(&serve, &cached);
        assert_eq!((r.status, status_of(&r)), (200, Some("ixproxy; hit")));
    }
    let other = get(&serve, &format!("http://{}/fresh/600/30", origin.http));
    assert_eq!(other.status, 503);
    assert_eq!(holder.join().expect("holder").status, 200);
}

/// Requests `target` until the answer's `Cache-Status` is `ixproxy; fwd=stale` (every 100 ms,
/// for at most 5 s: the entry's 1 s freshness has to run out).
fn until_stale(serve: &ServeProcess, host: &str, target: &str) -> RawResponse {
    for _ in 0..50 {
        let r = request(serve.listen(), "GET", host, target, &[]);
        assert_eq!(r.status, 200);
        if status_of(&r) == Some("ixproxy; fwd=stale") {
            return r;
        }
        assert_eq!(
            status_of(&r),
            Some("ixproxy; hit"),
            "fresh until it is stale"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the entry never went stale");
}

/// The freshness of one entry runs out; the next request revalidates with the stored
/// validators, the origin's 304 refreshes the entry, and the request after is a hit again.
fn revalidates(serve: &ServeProcess, origin: &RecordingOrigin, host: &str, path: &str) {
    let url = format!("http://{}{path}", origin.http);
    let target = signed(&url, &[]);
    let first = request(serve.listen(), "GET", host, &target, &[]);
    assert_eq!(status_of(&first), Some("ixproxy; fwd=miss"));
    assert_eq!(max_age(&first), 1);
    let stale = until_stale(serve, host, &target);
    assert_eq!(stale.body, first.body, "served from the refreshed entry");
    let seen = fetches(origin, path);
    assert_eq!(seen.len(), 2, "one fill, one revalidation");
    let etag = first.header("etag").expect("etag");
    assert_eq!(seen[1].header_values("if-none-match"), [etag]);
    assert_eq!(
        seen[1].header_values("if-modified-since"),
        [first.header("last-modified").expect("last-modified")]
    );
    let again = request(serve.listen(), "GET", host, &target, &[]);
    assert_eq!(
        status_of(&again),
        Some("ixproxy; hit"),
        "the 304 refreshed it"
    );
    assert_eq!(fetches(origin, path).len(), 2);
}

#[test]
fn a_stale_entry_is_revalidated_and_a_304_refreshes_it() {
    let (serve, origin) = start();
    // respect_origin: the origin's own max-age=1.
    revalidates(&serve, &origin, "assets.test", "/fresh/1/64?respect");
    await_cache_metric(&serve, "revalidated", 1);
}

#[test]
fn override_origin_freshness_expires_and_revalidates() {
    let (serve, origin) = start();
    // override_origin with cache_ttl 1: the origin's max-age=600 is replaced (SPEC §12).
    revalidates(&serve, &origin, "short.test", "/fresh/600/64?override");
}

#[test]
fn purge_makes_the_next_request_a_miss() {
    let (serve, origin) = start();
    let url = format!("http://{}/fresh/600/10?purged", origin.http);
    assert_eq!(status_of(&get(&serve, &url)), Some("ixproxy; fwd=miss"));
    assert_eq!(status_of(&get(&serve, &url)), Some("ixproxy; hit"));
    let encoded = encode_uri_component(&url);
    let purge_target = format!("/cache/purge?url={encoded}");
    let refused = request(serve.admin(), "GET", "admin", &purge_target, &[]);
    assert_eq!(refused.status, 405);
    let purged = request(serve.admin(), "POST", "admin", &purge_target, &[]);
    assert_eq!(
        (purged.status, purged.body_text().as_str()),
        (200, "purged 1\n")
    );
    assert_eq!(status_of(&get(&serve, &url)), Some("ixproxy; fwd=miss"));
    assert_eq!(status_of(&get(&serve, &url)), Some("ixproxy; hit"));
    assert_eq!(fetches(&origin, "/fresh/600/10").len(), 2);
    let again = request(serve.admin(), "POST", "admin", &purge_target, &[]);
    assert_eq!(again.body_text(), "purged 1\n");
    let nothing = request(serve.admin(), "POST", "admin", &purge_target, &[]);
    assert_eq!(nothing.body_text(), "purged 0\n");
}

#[test]
fn a_range_on_a_cached_object_is_a_206_from_the_cache_and_head_stores_no_body() {
    let (serve, origin) = start();
    let url = format!("http://{}/fresh/600/100?ranged", origin.http);
    let target = signed(&url, &[]);
    // A cold Range is fetched whole from the origin and stored; the client gets its range.
    let cold = request(
        serve.listen(),
        "GET",
        "assets.test",
        &target,
        &[("Range", "bytes=0-9")],
    );
    assert_eq!((cold.status, &cold.body[..]), (206, &pattern(100)[..10]));
    let seen = fetches(&origin, "/fresh/600/100");
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].header_values("range").is_empty(),
        "the whole object"
    );
    let hit = request(
        serve.listen(),
        "GET",
        "assets.test",
        &target,
        &[("Range", "bytes=10-19")],
    );
    assert_eq!(hit.status, 206);
    assert_eq!(hit.body, pattern(100)[10..20]);
    assert_eq!(hit.header("content-range"), Some("bytes 10-19/100"));
    assert_eq!(status_of(&hit), Some("ixproxy; hit"));
    // The client's own validator is answered from the entry too.
    let not_modified = request(
        serve.listen(),
        "GET",
        "assets.test",
        &target,
        &[("If-None-Match", "\"fresh-100\"")],
    );
    assert_eq!((not_modified.status, not_modified.body.len()), (304, 0));
    assert_eq!(status_of(&not_modified), Some("ixproxy; hit"));
    assert_eq!(fetches(&origin, "/fresh/600/100").len(), 1);

    // HEAD first: passed on as a HEAD, nothing stored; the GET after is a miss with the
    // whole body; a HEAD after that is answered from the entry, header only.
    let head_url = format!("http://{}/fresh/600/50?head", origin.http);
    let head_target = signed(&head_url, &[]);
    let head = request(serve.listen(), "HEAD", "assets.test", &head_target, &[]);
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(status_of(&head), Some("ixproxy; fwd=miss"));
    let seen = fetches(&origin, "/fresh/600/50");
    assert_eq!(
        seen.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
        ["HEAD"]
    );
    let full = request(serve.listen(), "GET", "assets.test", &head_target, &[]);
    assert_eq!((full.status, &full.body), (200, &pattern(50)));
    assert_eq!(
        status_of(&full),
        Some("ixproxy; fwd=miss"),
        "the HEAD stored nothing"
    );
    let cached_head = request(serve.listen(), "HEAD", "assets.test", &head_target, &[]);
    assert_eq!((cached_head.status, cached_head.body.len()), (200, 0));
    assert_eq!(status_of(&cached_head), Some("ixproxy; hit"));
    assert_eq!(cached_head.header("content-length"), Some("50"));
    let seen = fetches(&origin, "/fresh/600/50");
    assert_eq!(
        seen.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
        ["HEAD", "GET"]
    );
    await_cache_metric(&serve, "bypass", 1);
}

/// The resident set size of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    resident_kib(pid).expect("VmRSS") * 1024
}

#[test]
fn memory_stays_within_max_bytes_after_six_times_that_much() {
    let (serve, origin) = start();
    const OBJECT: usize = 128 * 1024;
    let per_pass = (2 * MAX_BYTES) as usize / OBJECT;
    let url = |i: usize| format!("http://{}/fresh/600/{OBJECT}?object={i}", origin.http);
    let pass = |from: usize| {
        for i in from..from + per_pass {
            let r = get(&serve, &url(i));
            assert_eq!((r.status, r.body.len()), (200, OBJECT), "object {i}");
            assert_eq!(status_of(&r), Some("ixproxy; fwd=miss"));
        }
    };
    // Warm up the connection pools, buffers and allocator arenas with a few objects.
    for i in 0..4 {
        assert_eq!(get(&serve, &url(i)).status, 200);
    }
    let before = rss(serve.pid());
    // The first pass fills the cache and starts evicting; the next two replace it twice over.
    pass(4);
    let filled = rss(serve.pid());
    pass(4 + per_pass);
    pass(4 + 2 * per_pass);
    let objects = 3 * per_pass;
    let after = rss(serve.pid());
    let held = metric(&serve, "ixproxy_cache_bytes{tier=\"memory\"}");
    eprintln!(
        "rss before {before} filled {filled} (+{}) after {after} (+{}), \
         ixproxy_cache_bytes{{tier=\"memory\"}} {held}, max_bytes {MAX_BYTES}",
        filled.saturating_sub(before),
        after.saturating_sub(before)
    );
    assert!(held <= MAX_BYTES, "{held} held over max_bytes");
    assert!(
        held >= MAX_BYTES / 2,
        "{held}: the cache should be nearly full"
    );
    assert!(
        after.saturating_sub(before) <= MAX_BYTES + RSS_OVERHEAD,
        "rss grew {} bytes inserting {} bytes into a {MAX_BYTES}-byte cache",
        after.saturating_sub(before),
        objects * OBJECT
    );
    assert!(
        after.saturating_sub(filled) <= RSS_STEADY,
        "rss grew {} bytes once the cache was full, replacing its {held} bytes twice over",
        after.saturating_sub(filled)
    );
    // The oldest were evicted, the newest are there.
    assert_eq!(status_of(&get(&serve, &url(4))), Some("ixproxy; fwd=miss"));
    assert_eq!(
        status_of(&get(&serve, &url(objects + 3))),
        Some("ixproxy; hit")
    );
}

/// Replaces the running config with `yaml`, sends SIGHUP and waits for the reload to count.
fn reload(serve: &ServeProcess, yaml: &str, reloads_before: u64) {
    const RELOAD_OK: &str = "ixproxy_config_reloads_total{result=\"ok\"}";
    std::fs::write(serve.config_path(), yaml).expect("write config");
    serve
        .signal(ixproxy_conformance::Signal::SIGHUP)
        .expect("SIGHUP");
    for _ in 0..250 {
        if metric(serve, RELOAD_OK) > reloads_before {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the reload was not applied:\n{}", serve.log_tail());
}

#[test]
fn a_hit_is_refused_at_once_when_a_reload_narrows_the_policy() {
    let (serve, origin) = start();
    let asset = format!("http://{}/image/narrowed.png", origin.http);
    // Through a redirect hop on another host name of the same origin.
    let hop = format!(
        "http://{}/redirect/302?to=http://localhost:{}/image/hop.png",
        origin.http,
        origin.http.port()
    );
    for url in [&asset, &hop] {
        let first = get(&serve, url);
        assert_eq!(
            (first.status, status_of(&first)),
            (200, Some("ixproxy; fwd=miss"))
        );
        let hit = get(&serve, url);
        assert_eq!(
            (hit.status, status_of(&hit)),
            (200, Some("ixproxy; hit")),
            "{url}"
        );
        for r in [&first, &hit] {
            assert_eq!(
                r.header("x-ixproxy-stored-origin"),
                None,
                "internal header leaked"
            );
        }
    }
    let fetched = origin.requests().len();

    // Only JPEG now: the stored PNGs are refused like an origin's PNG, without the origin.
    let narrowed = config("").replace(
        "  - name: assets\n    hosts: [assets.test]\n",
        "  - name: assets\n    hosts: [assets.test]\n    allowed_content_types: [image/jpeg]\n",
    );
    reload(&serve, &narrowed, 0);
    for url in [&asset, &hop] {
        let refused = get(&serve, url);
        assert_eq!(refused.status, 403, "{url}: {}", refused.body_text());
    }
    assert_eq!(
        serve
            .settled_outcome_count("content_type_denied", 2, TIMEOUT)
            .expect("metric"),
        2
    );

    // Any type again, but the hop's host is no longer allowed: only the hop's entry is refused.
    let hosts = config("").replace(
        "  - name: assets\n    hosts: [assets.test]\n",
        "  - name: assets\n    hosts: [assets.test]\n    allowed_origin_hosts: [127.0.0.1]\n",
    );
    reload(&serve, &hosts, 1);
    let served = get(&serve, &asset);
    assert_eq!(
        (served.status, status_of(&served)),
        (200, Some("ixproxy; hit"))
    );
    let refused = get(&serve, &hop);
    assert_eq!(refused.status, 403, "{}", refused.body_text());
    assert_eq!(
        serve
            .settled_outcome_count("origin_denied", 1, TIMEOUT)
            .expect("metric"),
        1
    );
    assert_eq!(
        origin.requests().len(),
        fetched,
        "no origin fetch for a refused hit"
    );
}

#[test]
fn a_fill_sends_the_origin_no_client_header_that_selects_a_variant() {
    let (serve, origin) = start();
    let url = format!("http://{}/image/variant.png", origin.http);
    let headers = [
        ("Accept", "image/avif"),
        ("Accept-Encoding", "gzip"),
        ("Accept-Language", "fr"),
        ("User-Agent", "chooser/1"),
    ];
    let miss = request(
        serve.listen(),
        "GET",
        "assets.test",
        &signed(&url, &[]),
        &headers,
    );
    assert_eq!(
        (miss.status, status_of(&miss)),
        (200, Some("ixproxy; fwd=miss"))
    );
    let seen = fetches(&origin, "/image/variant.png");
    assert_eq!(seen.len(), 1, "one origin fetch");
    for name in ["accept", "accept-encoding", "accept-language"] {
        assert!(
            seen[0].header_values(name).is_empty(),
            "{name}: {:?}",
            seen[0]
        );
    }
    // The source's own user agent, the same for every client.
    assert_eq!(
        seen[0].header_values("user-agent"),
        [ixproxy_core::identity::DEFAULT_ORIGIN_USER_AGENT]
    );
    // Whatever the next client prefers, it gets the one stored answer.
    let hit = get(&serve, &url);
    assert_eq!((hit.status, status_of(&hit)), (200, Some("ixproxy; hit")));
    assert_eq!(hit.body, miss.body);
}

#[test]
fn cors_and_dl_are_added_per_response_and_never_stored() {
    let (serve, origin) = start();
    let url = format!("http://{}/fresh/600/10?cors", origin.http);
    let send_pages = |params: &[(&str, String)], page: &str| {
        request(
            serve.listen(),
            "GET",
            "pages.test",
            &signed(&url, params),
            &[("Origin", page)],
        )
    };
    let dl = [("dl", "first.bin".to_owned())];
    let miss = send_pages(&dl, "http://app.test");
    assert_eq!(status_of(&miss), Some("ixproxy; fwd=miss"));
    assert_eq!(
        miss.header("access-control-allow-origin"),
        Some("http://app.test")
    );
    assert_eq!(miss.header("vary"), Some("Origin"));
    assert!(miss
        .header("content-disposition")
        .is_some_and(|v| v.contains("filename=\"first.bin\"")));
    // A hit for another page and another (or no) dl: this request's headers, not the fill's.
    let other_page = send_pages(&[], "https://evil.test");
    assert_eq!(status_of(&other_page), Some("ixproxy; hit"));
    assert_eq!(other_page.header("access-control-allow-origin"), None);
    assert_eq!(other_page.header("timing-allow-origin"), None);
    assert_eq!(other_page.header("vary"), Some("Origin"));
    assert_eq!(other_page.header("content-disposition"), None);
    let renamed = send_pages(&[("dl", "second.bin".to_owned())], "http://app.test");
    assert_eq!(status_of(&renamed), Some("ixproxy; hit"));
    assert!(renamed
        .header("content-disposition")
        .is_some_and(|v| v.contains("filename=\"second.bin\"")));
    assert_eq!(renamed.header_values("vary"), ["Origin"], "added once");
    // The default source's hit carries imgix's three headers.
    let asset = format!("http://{}/fresh/600/10?default", origin.http);
    get(&serve, &asset);
    let hit = get(&serve, &asset);
    assert_eq!(status_of(&hit), Some("ixproxy; hit"));
    assert_eq!(hit.header("access-control-allow-origin"), Some("*"));
    assert_eq!(hit.header("timing-allow-origin"), Some("*"));
    assert_eq!(
        hit.header("cross-origin-resource-policy"),
        Some("cross-origin")
    );
    assert_eq!(fetches(&origin, "/fresh/600/10").len(), 2);
    // With the cache on, as without it (conformance): the origin's Vary members stay, Origin
    // once (such an answer is never stored).
    for (query, vary) in [
        ("v=Origin%2C%20Accept-Encoding", "Origin, Accept-Encoding"),
        ("v=Accept-Encoding", "Accept-Encoding, Origin"),
    ] {
        let varied = format!("http://{}/vary?{query}", origin.http);
        let answer = request(
            serve.listen(),
            "GET",
            "pages.test",
            &signed(&varied, &[]),
            &[("Origin", "http://app.test")],
        );
        assert_eq!(answer.header_values("vary"), [vary], "{query}");
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some("http://app.test")
        );
    }
}

#[test]
fn disabling_a_source_on_reload_refuses_its_hits_and_enabling_serves_them_again() {
    let (serve, origin) = start();
    let url = format!("http://{}/fresh/600/10?toggle", origin.http);
    get(&serve, &url);
    assert_eq!(status_of(&get(&serve, &url)), Some("ixproxy; hit"));
    let disabled = config("").replace(
        "  - name: assets\n    hosts: [assets.test]\n",
        "  - name: assets\n    hosts: [assets.test]\n    enabled: false\n",
    );
    reload(&serve, &disabled, 0);
    let refused = get(&serve, &url);
    assert_eq!(refused.status, 410, "{}", refused.body_text());
    assert_eq!(status_of(&refused), None, "the cache is not consulted");
    let unsigned = request(serve.listen(), "GET", "assets.test", "/x?s=00", &[]);
    assert_eq!(unsigned.status, 410, "before the signature");
    assert_eq!(
        serve
            .settled_outcome_count("source_disabled", 2, TIMEOUT)
            .expect("metric"),
        2
    );
    // Other sources are unaffected; enabling again serves the stored entry.
    let other = request(serve.listen(), "GET", "other.test", &signed(&url, &[]), &[]);
    assert_eq!(other.status, 200);
    reload(&serve, &config(""), 1);
    let again = get(&serve, &url);
    assert_eq!(
        (again.status, status_of(&again)),
        (200, Some("ixproxy; hit"))
    );
    assert_eq!(
        fetches(&origin, "/fresh/600/10").len(),
        2,
        "assets once, other once"
    );
}

/// A fallback image stored for a missing origin object (SPEC §15) is fresh for
/// `cache_ttl_error` only, whatever the image's own `Cache-Control` and validators say: hits
/// while it is fresh (still re-checked and still marked as a fallback), then a new origin
/// fetch, never a revalidation with the image's validators.
#[test]
fn a_stored_fallback_never_outlives_cache_ttl_error() {
    const TTL_ERROR: u64 = 2;
    // The image says max-age=600 and carries an ETag and a Last-Modified.
    let (serve, origin) = start_fallbacks(TTL_ERROR);
    let target = signed(&format!("http://{}/status/404", origin.http), &[]);
    let fetch = || request(serve.listen(), "GET", "fallback.test", &target, &[]);
    let is_fallback = |r: &RawResponse| {
        assert_eq!(r.status, 404);
        assert_eq!(r.header("x-ixproxy-fallback"), Some("missing"));
        assert_eq!(r.body, pattern(64), "the image's body");
        assert_eq!(r.header("x-ixproxy-stored-origin"), None);
        assert_eq!(r.header("etag"), None, "no validator of the image");
    };

    let first = fetch();
    let filled = Instant::now();
    is_fallback(&first);
    assert_eq!(status_of(&first), Some("ixproxy; fwd=miss"));
    assert_eq!(max_age(&first), TTL_ERROR);
    let hit = fetch();
    is_fallback(&hit);
    assert_eq!(status_of(&hit), Some("ixproxy; hit"), "stored while fresh");
    assert_eq!(fetches(&origin, "/fresh/600/64").len(), 1);

    // Every 100 ms for at most TTL_ERROR + 3 s: a hit only while the entry can be fresh.
    let fresh_until = Duration::from_secs(TTL_ERROR) + Duration::from_millis(250);
    let next = loop {
        let sent = filled.elapsed();
        let r = fetch();
        is_fallback(&r);
        if status_of(&r) != Some("ixproxy; hit") {
            break r;
        }
        assert!(sent < fresh_until, "a hit {sent:?} after the fill");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        matches!(
            status_of(&next),
            Some("ixproxy; fwd=stale" | "ixproxy; fwd=miss")
        ),
        "{:?}",
        status_of(&next)
    );
    let missing = fetches(&origin, "/status/404");
    assert_eq!(missing.len(), 2, "the origin is asked again");
    assert!(missing[1].header_values("if-none-match").is_empty());
    assert_eq!(fetches(&origin, "/fresh/600/64").len(), 2);
}

/// A stored fallback image is re-checked on every hit like any stored answer: once a reload no
/// longer allows the image's host (the image setting gone with it), the entry is refused
/// without any origin fetch.
#[test]
fn a_stored_fallback_is_refused_at_once_when_a_reload_narrows_the_policy() {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let (http, alt) = (origin.http, origin.http_alt);
    let source = |image: bool| {
        let image = if image {
            format!("    image_missing: http://{alt}/image/fallback.png\n")
        } else {
            String::new()
        };
        format!(
            "{}  - name: fallback
    hosts: [fallback.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
    allowed_origin_hosts: ['127.0.0.1:{}'{}]
{image}",
            config(""),
            http.port(),
            if image.is_empty() {
                String::new()
            } else {
                format!(", '127.0.0.1:{}'", alt.port())
            },
        )
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
    let serve = ServeProcess::start_temp(bin, &source(true), &[]).unwrap_or_else(|e| panic!("{e}"));
    let target = signed(&format!("http://{http}/status/404"), &[]);
    let fetch = || request(serve.listen(), "GET", "fallback.test", &target, &[]);
    let first = fetch();
    assert_eq!(
        (first.status, first.header("x-ixproxy-fallback")),
        (404, Some("missing"))
    );
    let hit = fetch();
    assert_eq!((hit.status, status_of(&hit)), (404, Some("ixproxy; hit")));
    let fetched = origin.requests().len();

    reload(&serve, &source(false), 0);
    let refused = fetch();
    assert_eq!(refused.status, 403, "{}", refused.body_text());
    assert_eq!(refused.header("x-ixproxy-fallback"), None);
    assert_eq!(
        origin.requests().len(),
        fetched,
        "no origin fetch for a refused hit"
    );
}

/// `cache_ttl_error` of the fallback tests' source, except where a test waits for it.
const FALLBACK_TTL_ERROR: u64 = 30;

/// The gateway on [`config`] plus a source `fallback` (host `fallback.test`, `text/plain` only)
/// with both images: `image_missing` 64 pattern bytes, `image_error` 32, each fresh for 600 s
/// with validators.
fn start_fallbacks(ttl_error: u64) -> (ServeProcess, RecordingOrigin) {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let yaml = format!(
        "{}  - name: fallback
    hosts: [fallback.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
    allowed_content_types: [text/plain]
    cache_ttl_error: {ttl_error}
    image_missing: http://{http}/fresh/600/64?missing
    image_error: http://{http}/fresh/600/32?error
",
        config(""),
        http = origin.http
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
    let serve = ServeProcess::start_temp(bin, &yaml, &[]).unwrap_or_else(|e| panic!("{e}"));
    (serve, origin)
}

/// A fallback image of `len` pattern bytes served for a failure whose status was `status`:
/// the failure's status, `cache_ttl_error`, the gateway's CORS headers, none of the image's
/// validators.
fn assert_fallback(r: &RawResponse, kind: &str, status: u16, len: usize) {
    assert_eq!(r.status, status, "{}", r.body_text());
    assert_eq!(r.header("x-ixproxy-fallback"), Some(kind));
    assert_eq!(r.body, pattern(len), "the image's body");
    assert_eq!(
        r.header("cache-control"),
        Some(format!("public, max-age={FALLBACK_TTL_ERROR}").as_str())
    );
    assert_eq!(r.header_values("access-control-allow-origin"), ["*"]);
    assert_eq!(
        r.header("cross-origin-resource-policy"),
        Some("cross-origin")
    );
    assert_eq!(r.header("timing-allow-origin"), Some("*"));
    assert_eq!(r.header("etag"), None, "no validator of the image");
    assert_eq!(r.header("last-modified"), None);
}

/// An error image is never stored natively (only what is served is stored, and a 5xx or a
/// 403 is not): for an origin 5xx and for an answer the gateway refuses (a soft 404: an HTML
/// page with a 200, outside `allowed_content_types`, a 403) each request fetches the origin URL
/// and then the image (the image's fetch is a hop of the request, not a cache lookup of its
/// own URL). On Envoy the refused answer is kept for `cache_ttl_error` (`envoy_cache.rs`).
#[test]
fn an_error_images_answer_is_never_stored() {
    let (serve, origin) = start_fallbacks(FALLBACK_TTL_ERROR);
    for (path, status) in [("/status/500", 500), ("/ct?v=text/html", 403)] {
        let target = signed(&format!("http://{}{path}", origin.http), &[]);
        for _ in 0..2 {
            let r = request(serve.listen(), "GET", "fallback.test", &target, &[]);
            assert_fallback(&r, "error", status, 32);
            assert_eq!(status_of(&r), Some("ixproxy; fwd=miss"));
        }
        assert_eq!(fetches(&origin, path).len(), 2, "{path}: never stored");
    }
    assert_eq!(fetches(&origin, "/fresh/600/32").len(), 4);
}

/// The image's URL signed and requested as an origin URL is the image's own answer (its 200,
/// its `Cache-Control` and validators, no fallback marker), stored under its own key: the
/// fallback made of it is stored under the missing object's key only.
#[test]
fn the_fallback_images_own_url_is_its_own_answer() {
    let (serve, origin) = start_fallbacks(FALLBACK_TTL_ERROR);
    let missing = signed(&format!("http://{}/status/404", origin.http), &[]);
    let image = signed(&format!("http://{}/fresh/600/64?missing", origin.http), &[]);
    let fetch = |target: &str| request(serve.listen(), "GET", "fallback.test", target, &[]);
    assert_fallback(&fetch(&missing), "missing", 404, 64);
    for expected in ["ixproxy; fwd=miss", "ixproxy; hit"] {
        let direct = fetch(&image);
        assert_eq!(direct.status, 200);
        assert_eq!(direct.header("x-ixproxy-fallback"), None);
        assert_eq!(direct.body, pattern(64));
        assert_eq!(max_age(&direct), 600);
        assert!(direct.header("etag").is_some());
        assert_eq!(status_of(&direct), Some(expected));
    }
    let hit = fetch(&missing);
    assert_fallback(&hit, "missing", 404, 64);
    assert_eq!(status_of(&hit), Some("ixproxy; hit"));
    assert_eq!(fetches(&origin, "/status/404").len(), 1);
    assert_eq!(
        fetches(&origin, "/fresh/600/64").len(),
        2,
        "fallback, then own"
    );
}

/// A HEAD on a missing object gets the fallback's head and no body. A HEAD stores nothing:
/// each sends a HEAD for the origin URL and one for the image, as on Envoy 1.40; once a GET
/// stored the fallback, a HEAD is a hit of it.
#[test]
fn a_head_on_a_missing_object_gets_the_fallbacks_head() {
    let (serve, origin) = start_fallbacks(FALLBACK_TTL_ERROR);
    let target = signed(&format!("http://{}/status/404", origin.http), &[]);
    let head = || {
        let r = request(serve.listen(), "HEAD", "fallback.test", &target, &[]);
        assert_eq!(r.status, 404);
        assert_eq!(r.header("x-ixproxy-fallback"), Some("missing"));
        assert_eq!(
            r.header("cache-control"),
            Some(format!("public, max-age={FALLBACK_TTL_ERROR}").as_str())
        );
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(r.header("etag"), None);
        assert!(r.body.is_empty());
        r
    };
    let seen = || -> Vec<String> {
        origin
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect()
    };
    let (head_of, head_image) = ("HEAD /status/404", "HEAD /fresh/600/64?missing");
    for _ in 0..2 {
        assert_eq!(status_of(&head()), Some("ixproxy; fwd=miss"));
    }
    assert_eq!(seen(), [head_of, head_image, head_of, head_image]);
    let get = request(serve.listen(), "GET", "fallback.test", &target, &[]);
    assert_fallback(&get, "missing", 404, 64);
    assert_eq!(status_of(&head()), Some("ixproxy; hit"));
    let fetched = seen();
    assert_eq!(
        fetched[4..],
        ["GET /status/404", "GET /fresh/600/64?missing"]
    );
}

/// The gateway on [`config`] plus a source `extra` (host `extra.test`, `cache_ttl_error` 30)
/// with `settings` (indented source lines) appended.
fn extra_source(origin: &RecordingOrigin, settings: &str) -> String {
    format!(
        "{}  - name: extra
    hosts: [extra.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
    allowed_origin_hosts: ['127.0.0.1:{}']
    cache_ttl_error: 30
{settings}",
        config(""),
        origin.http.port()
    )
}

/// With `image_missing_append_qs` the image depends on the request's params, which the cache
/// key leaves out (SPEC §13): its answer is never stored under the missing object's key, so
/// two requests differing only in `w` each get their own image, and the first variant again
/// gets its own (no variant wins the entry).
#[test]
fn a_fallback_with_the_requests_params_is_not_stored_under_the_shared_key() {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let yaml = extra_source(
        &origin,
        &format!(
            "    image_missing: http://{}/image/m.png\n    image_missing_append_qs: true\n",
            origin.http
        ),
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
    let serve = ServeProcess::start_temp(bin, &yaml, &[]).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}/status/404", origin.http);
    for w in ["100", "800", "100"] {
        let target = signed(&url, &[("w", w.to_owned())]);
        let r = request(serve.listen(), "GET", "extra.test", &target, &[]);
        assert_eq!(r.status, 404, "{}", r.body_text());
        assert_eq!(r.header("x-ixproxy-fallback"), Some("missing"));
        assert_eq!(r.body_text(), format!("image /image/m.png?w={w}"), "w={w}");
        assert_ne!(status_of(&r), Some("ixproxy; hit"), "w={w}");
        assert_eq!(max_age(&r), 30);
    }
    let images: Vec<String> = fetches(&origin, "/image/m.png")
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(
        images,
        [
            "/image/m.png?w=100",
            "/image/m.png?w=800",
            "/image/m.png?w=100"
        ]
    );
    assert_eq!(fetches(&origin, "/status/404").len(), 3);
}

/// A stored answer a reload's policy now refuses is an origin failure like that origin answer
/// would be: it takes the source's error image (with the refusal's status and outcome), as
/// without the cache and on Envoy, and the refused entry's URL is not fetched again.
#[test]
fn a_refused_hit_takes_the_error_image() {
    let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
    let yaml = |types: &str| {
        extra_source(
            &origin,
            &format!(
                "    allowed_content_types: [{types}]\n    image_error: http://{}/fresh/600/32?error\n",
                origin.http
            ),
        )
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
    let serve = ServeProcess::start_temp(bin, &yaml("text/plain, image/png"), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let target = signed(&format!("http://{}/image/refit.png", origin.http), &[]);
    let fetch = || request(serve.listen(), "GET", "extra.test", &target, &[]);
    for expected in ["ixproxy; fwd=miss", "ixproxy; hit"] {
        let r = fetch();
        assert_eq!((r.status, status_of(&r)), (200, Some(expected)));
        assert_eq!(r.header("x-ixproxy-fallback"), None);
    }

    reload(&serve, &yaml("text/plain"), 0);
    let refused = fetch();
    assert_eq!(refused.status, 403, "{}", refused.body_text());
    assert_eq!(refused.header("x-ixproxy-fallback"), Some("error"));
    assert_eq!(refused.body, pattern(32), "the error image's body");
    assert_eq!(refused.header("cache-control"), Some("public, max-age=30"));
    assert_eq!(refused.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        serve
            .settled_outcome_count("content_type_denied", 1, TIMEOUT)
            .expect("metric"),
        1
    );
    assert_eq!(fetches(&origin, "/image/refit.png").len(), 1, "never again");
    assert_eq!(fetches(&origin, "/fresh/600/32").len(), 1);
}
