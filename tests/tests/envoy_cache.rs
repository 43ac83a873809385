//! The `cache:` section on Envoy 1.40 (README: Caching, Envoy), run by the real Envoy with the
//! built filter and the bootstrap `ixproxy envoy-config` generates: a second request is a hit
//! with one origin fetch, URLs re-signed with other gateway parameters share the entry, a hit
//! still needs a valid signature and an unexpired URL and gets its own `expires` cap and the
//! inert response headers, a stale entry is revalidated and a 304 refreshes it, and the address
//! stored with an entry is checked on hits. Envoy's cache has no purge API (nothing to test).
//! Fallback images with the cache (README: Fallback images, Envoy cache): what is stored under
//! which key and for how long, the image's own URL, a HEAD, an answer the gateway refuses.
//!
//! Uses the prebuilt `target/debug/ixproxy` and `target/wasm32-wasip1/release/ixproxy_filter.wasm`
//! (or `IXPROXY_BIN`, `IXPROXY_WASM`, `IXPROXY_ENVOY`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::harness::{loopback_alias, DeadPort, SilentPort};
use ixproxy_conformance::scripted::{
    head_header, http_date, request_path, OriginConn, ScriptedOrigin,
};
use ixproxy_conformance::{EnvoyGateway, Gateway};
use ixproxy_core::cache::{CacheResult, CACHE_STATUS};
use ixproxy_core::envoy::{ORIGIN_REQUEST_REMOVED, UPSTREAM_ADDRESS_HEADER};
use ixproxy_core::fallback::FALLBACK_HEADER;
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::Rejection;

const HIT: &str = "ixproxy; hit";
const FWD_MISS: &str = "ixproxy; fwd=miss";
const TIMEOUT: Duration = Duration::from_secs(15);
const ETAG: &str = "\"v1\"";

#[test]
fn the_cache_status_values_are_the_cores() {
    assert_eq!(CacheResult::Hit.cache_status(), HIT);
    assert_eq!(CacheResult::Miss.cache_status(), FWD_MISS);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The origin: `/fresh/...` is fresh for 600 s; `/stale/...` arrives already stale (its `Date`
/// an hour ago, `max-age=60`); a matching `If-None-Match` gets a 304 fresh for 600 s. Every 200 carries an `ETag`, a `Set-Cookie` and an `x-ixproxy-upstream-address` of its
/// own, none of which may reach a client (the last must not count as the checked address).
fn serve(mut conn: OriginConn) {
    let Some(head) = conn.read_head() else {
        return;
    };
    let path = request_path(&head).to_owned();
    if path == "/moved" {
        conn.send(b"HTTP/1.1 302 Found\r\nlocation: /fresh/moved.png\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
    }
    if path == "/silent" {
        std::thread::sleep(Duration::from_secs(5));
        return;
    }
    let stale = path.starts_with("/stale/");
    let reply = if head_header(&head, "if-none-match").as_deref() == Some(ETAG) {
        format!(
            "HTTP/1.1 304 Not Modified\r\ndate: {}\r\netag: {ETAG}\r\ncache-control: max-age=600\r\n\
             connection: close\r\n\r\n",
            http_date(now())
        )
    } else {
        let (date, cache_control) = if stale {
            (http_date(now() - 3600), "max-age=60")
        } else {
            (http_date(now()), "max-age=600")
        };
        let body = format!("body of {path}");
        format!(
            "HTTP/1.1 200 OK\r\ndate: {date}\r\ncontent-type: image/png\r\netag: {ETAG}\r\n\
             cache-control: {cache_control}\r\nset-cookie: origin=1\r\n\
             {UPSTREAM_ADDRESS_HEADER}: 203.0.113.7:80\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    conn.send(reply.as_bytes());
}

struct Setup {
    origin: ScriptedOrigin,
    envoy: EnvoyGateway,
    _dir: tempfile::TempDir,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// Envoy for one loopback source with `cache:`; `edit` changes the bootstrap first.
fn start(source_extra: &str, edit: impl FnOnce(&mut serde_yaml::Value)) -> Setup {
    let origin = ScriptedOrigin::start(serve).unwrap_or_else(|e| panic!("{e}"));
    start_on(origin, source_extra, edit)
}

/// [`start`] in front of a given origin.
fn start_on(
    origin: ScriptedOrigin,
    source_extra: &str,
    edit: impl FnOnce(&mut serde_yaml::Value),
) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("ixproxy-envoy-cache-")
        .tempdir()
        .expect("temp dir");
    let config = write(
        dir.path(),
        "ixproxy.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: {{timeout: 3s, connect_timeout: 1s}}\n\
             cache: {{max_bytes: 1048576, max_object_bytes: 65536}}\n\
             sources:\n  - name: local\n    hosts: [localhost]\n    secure_url_tokens: [tok]\n{source_extra}"
        ),
    );
    let envoy = EnvoyGateway::start_edited(&config, &[], dir.path(), edit)
        .unwrap_or_else(|e| panic!("envoy does not start: {e}"));
    Setup {
        origin,
        envoy,
        _dir: dir,
    }
}

fn get(setup: &Setup, url: &str, params: &[(&str, String)]) -> RawResponse {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let target = sign_url("tok", url, &params, &SignOptions::default());
    send(
        setup.envoy.addr(),
        &RawRequest::get("localhost", &target),
        TIMEOUT,
    )
    .expect("answered")
}

/// The response headers every forwarded response has, hit or not (README: What the client
/// receives).
fn assert_inert(response: &RawResponse) {
    assert_eq!(response.status, 200, "{response:?}");
    for absent in [
        "set-cookie",
        UPSTREAM_ADDRESS_HEADER,
        "age",
        "x-envoy-upstream-service-time",
    ] {
        assert_eq!(response.header(absent), None, "{absent}: {response:?}");
    }
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    assert!(response.header("content-security-policy").is_some());
    assert_eq!(response.header("content-type"), Some("image/png"));
    assert_eq!(response.header("etag"), Some(ETAG));
}

fn outcome_count(envoy: &EnvoyGateway, outcome: &str) -> String {
    let stats = send(
        envoy.admin_addr(),
        &RawRequest::get("admin", "/stats/prometheus?filter=ixproxy_requests_total"),
        TIMEOUT,
    )
    .expect("admin answers")
    .body_text();
    let counts = ixproxy_conformance::metrics::OutcomeCounts::parse(&stats)
        .unwrap_or_else(|e| panic!("{e}"));
    counts
        .get(outcome)
        .map(|n| n.to_string())
        .unwrap_or_default()
}

const PRIVATE: &str = "    allow_private_origins: true\n";

#[test]
fn a_second_request_is_a_hit_with_one_origin_fetch() {
    let s = start(PRIVATE, |_| {});
    let url = s.origin.url("/fresh/a.png");
    let miss = get(&s, &url, &[]);
    assert_inert(&miss);
    assert_eq!(miss.header(CACHE_STATUS), Some(FWD_MISS), "{miss:?}");
    assert_eq!(miss.header("cache-control"), Some("max-age=600"));
    let hit = get(&s, &url, &[]);
    assert_inert(&hit);
    assert_eq!(hit.header(CACHE_STATUS), Some(HIT), "{hit:?}");
    assert_eq!(hit.body_text(), miss.body_text());
    assert_eq!(hit.header("cache-control"), Some("max-age=600"));

    let heads = s.origin.heads("/fresh/a.png");
    assert_eq!(heads.len(), 1, "one origin fetch: {heads:?}");
    // The cache's own fetch carries none of the routing markers or side-channel headers.
    for name in ORIGIN_REQUEST_REMOVED {
        assert_eq!(head_header(&heads[0], name), None, "{name}: {}", heads[0]);
    }
    assert_eq!(outcome_count(&s.envoy, "forwarded"), "2");
}

#[test]
fn re_signed_urls_share_the_entry_and_each_gets_its_own_expires_cap() {
    let s = start(PRIVATE, |_| {});
    let url = s.origin.url("/fresh/b.png");
    assert_eq!(get(&s, &url, &[]).header(CACHE_STATUS), Some(FWD_MISS));
    let resized = get(&s, &url, &[("w", "100".to_owned())]);
    assert_inert(&resized);
    assert_eq!(resized.header(CACHE_STATUS), Some(HIT), "{resized:?}");
    let capped = get(&s, &url, &[("expires", (now() + 100).to_string())]);
    assert_inert(&capped);
    assert_eq!(capped.header(CACHE_STATUS), Some(HIT), "{capped:?}");
    let max_age: u64 = capped
        .header("cache-control")
        .and_then(|cc| cc.strip_prefix("max-age="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(max_age <= 100, "{capped:?}");
    // The cap belonged to that response only: the entry still says what the origin said.
    let again = get(&s, &url, &[]);
    assert_eq!(
        again.header("cache-control"),
        Some("max-age=600"),
        "{again:?}"
    );
    assert_eq!(s.origin.heads("/fresh/b.png").len(), 1);
}

#[test]
fn a_hit_still_needs_a_valid_signature_and_an_unexpired_url() {
    let s = start(PRIVATE, |_| {});
    let url = s.origin.url("/fresh/c.png");
    assert_eq!(get(&s, &url, &[]).header(CACHE_STATUS), Some(FWD_MISS));
    let target = sign_url("tok", &url, &[], &SignOptions::default());
    let forged = format!(
        "{}s=00000000000000000000000000000000",
        &target[..target.len() - 32]
    );
    let refused = send(
        s.envoy.addr(),
        &RawRequest::get("localhost", &forged),
        TIMEOUT,
    )
    .expect("answered");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.header(CACHE_STATUS), None);
    let expired = get(&s, &url, &[("expires", (now() - 10).to_string())]);
    assert_eq!(expired.status, 404, "{expired:?}");
    assert_eq!(expired.header(CACHE_STATUS), None);
    assert_eq!(s.origin.heads("/fresh/c.png").len(), 1);
    assert_eq!(outcome_count(&s.envoy, "bad_signature"), "1");
}

#[test]
fn a_stale_entry_is_revalidated_and_a_304_refreshes_it() {
    let s = start(PRIVATE, |_| {});
    let url = s.origin.url("/stale/d.png");
    let first = get(&s, &url, &[]);
    assert_inert(&first);
    assert_eq!(first.header(CACHE_STATUS), Some(FWD_MISS));
    let revalidated = get(&s, &url, &[]);
    assert_inert(&revalidated);
    assert_eq!(revalidated.body_text(), first.body_text());
    // Envoy 1.40 reports a revalidated entry exactly like a hit (no `fwd=stale` on Envoy).
    assert_eq!(
        revalidated.header(CACHE_STATUS),
        Some(HIT),
        "{revalidated:?}"
    );
    let heads = s.origin.heads("/stale/d.png");
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_eq!(
        head_header(&heads[1], "if-none-match").as_deref(),
        Some(ETAG)
    );
    // The 304's freshness now holds: no further origin request.
    let fresh = get(&s, &url, &[]);
    assert_inert(&fresh);
    assert_eq!(
        fresh.header("cache-control"),
        Some("max-age=600"),
        "{fresh:?}"
    );
    assert_eq!(s.origin.heads("/stale/d.png").len(), 2);
}

#[test]
fn the_address_stored_with_an_entry_is_checked_on_hits() {
    let alias = loopback_alias();
    if alias == "localhost" {
        eprintln!("no loopback alias in /etc/hosts; skipped");
        return;
    }
    // A source without allow_private_origins, and RBAC (the first line) emptied: only the
    // filter's check of the recorded address stands between a private origin and the client.
    let s = start("", |bootstrap| {
        let filters = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"]
            .as_sequence_mut()
            .expect("filters");
        let rbac = filters
            .iter_mut()
            .find(|f| f["name"] == "envoy.filters.http.rbac")
            .expect("rbac filter");
        rbac["typed_config"]["rules"]["policies"] = serde_yaml::from_str(
            "{never: {permissions: [{not_rule: {any: true}}], principals: [{any: true}]}}",
        )
        .expect("yaml");
    });
    let url = format!("http://{alias}:{}/fresh/e.png", s.origin.addr.port());
    let denied = Rejection::origin_address_denied();
    for _ in 0..2 {
        let response = get(&s, &url, &[]);
        assert_eq!(response.status, denied.status(), "{response:?}");
        assert_eq!(response.body_text(), denied.body(), "{response:?}");
    }
    // The first answer was stored (Envoy caches before the filter refuses it); the second
    // request was a hit, refused by the stored address, never by the origin's own header.
    assert_eq!(s.origin.heads("/fresh/e.png").len(), 1);
    assert_eq!(outcome_count(&s.envoy, "origin_denied"), "2");
}

#[test]
fn the_cache_keeps_the_policy_freshness_and_a_304_refreshes_it_under_the_policy() {
    // override_origin: the cache stores `public, max-age=1000`, not the origin's `max-age=60`
    // (stale an hour ago) nor the 304's `max-age=600`.
    let s = start(
        &format!("{PRIVATE}    cache_ttl_behavior: override_origin\n    cache_ttl: 1000\n"),
        |_| {},
    );
    let url = s.origin.url("/stale/f.png");
    let policy = "public, max-age=1000";
    let first = get(&s, &url, &[]);
    assert_eq!(first.header(CACHE_STATUS), Some(FWD_MISS), "{first:?}");
    assert_eq!(first.header("cache-control"), Some(policy), "{first:?}");
    // Stored an hour old with max-age=1000: still stale, so the next request revalidates.
    let revalidated = get(&s, &url, &[]);
    assert_inert(&revalidated);
    assert_eq!(
        revalidated.header("cache-control"),
        Some(policy),
        "{revalidated:?}"
    );
    let heads = s.origin.heads("/stale/f.png");
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_eq!(
        head_header(&heads[1], "if-none-match").as_deref(),
        Some(ETAG)
    );
    // The 304 (dated now) refreshed the entry under the policy value: a plain hit now.
    let hit = get(&s, &url, &[]);
    assert_eq!(hit.header(CACHE_STATUS), Some(HIT), "{hit:?}");
    assert_eq!(hit.header("cache-control"), Some(policy), "{hit:?}");
    assert_eq!(s.origin.heads("/stale/f.png").len(), 2);
    // Each response still gets its own URL's cap on the way out.
    let capped = get(&s, &url, &[("expires", (now() + 50).to_string())]);
    assert!(
        capped
            .header("cache-control")
            .is_some_and(|cc| cc.starts_with("public, max-age=") && !cc.contains("1000")),
        "{capped:?}"
    );
}

/// Measured limits of Envoy 1.40's cache (README: Caching, Envoy): its side channel has no
/// internal redirect policy and no per-try timeout, so a cacheable request's origin redirect is
/// the core's 502 and `upstream.timeout` does not end a silent origin's request.
#[test]
fn envoy_1_40_cache_misses_follow_no_redirect_and_no_upstream_timeout() {
    let s = start(PRIVATE, |_| {});
    let redirected = get(&s, &s.origin.url("/moved"), &[]);
    let unfollowed = Rejection::bad_redirect(ixproxy_core::forward::UNFOLLOWABLE_LOCATION);
    assert_eq!(redirected.status, unfollowed.status(), "{redirected:?}");
    assert_eq!(redirected.body_text(), unfollowed.body(), "{redirected:?}");
    assert!(s.origin.heads("/fresh/moved.png").is_empty());

    let started = std::time::Instant::now();
    let silent = get(&s, &s.origin.url("/silent"), &[]);
    eprintln!("silent origin: {silent:?} after {:?}", started.elapsed());
    // `upstream.timeout` is 3 s; the request lasts until the origin closes (5 s).
    assert!(started.elapsed() >= Duration::from_secs(4), "{silent:?}");
    assert_ne!(silent.status, 200, "{silent:?}");
}

#[test]
fn a_fill_sends_the_origin_no_client_header_that_selects_a_variant() {
    let s = start(PRIVATE, |_| {});
    let url = s.origin.url("/fresh/variant.png");
    let mut req = RawRequest::get(
        "localhost",
        &sign_url("tok", &url, &[], &SignOptions::default()),
    );
    req.headers = [
        ("Accept", "image/avif"),
        ("Accept-Encoding", "gzip"),
        ("Accept-Language", "fr"),
        ("User-Agent", "chooser/1"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    let miss = send(s.envoy.addr(), &req, TIMEOUT).expect("answered");
    assert_eq!(miss.header(CACHE_STATUS), Some(FWD_MISS), "{miss:?}");
    let heads = s.origin.heads("/fresh/variant.png");
    assert_eq!(heads.len(), 1, "one origin fetch: {heads:?}");
    for name in ["accept", "accept-encoding", "accept-language"] {
        assert_eq!(head_header(&heads[0], name), None, "{name}: {}", heads[0]);
    }
    // The source's own user agent, the same for every client.
    assert_eq!(
        head_header(&heads[0], "user-agent").as_deref(),
        Some(ixproxy_core::identity::DEFAULT_ORIGIN_USER_AGENT)
    );
    // Whatever the next client prefers, it gets the one stored answer.
    let hit = get(&s, &url, &[]);
    assert_eq!(hit.header(CACHE_STATUS), Some(HIT), "{hit:?}");
    assert_eq!(hit.body_text(), miss.body_text());
}

#[test]
fn a_failed_fill_gets_the_cores_answer_not_envoys_reply() {
    let s = start(PRIVATE, |_| {});
    let dead = DeadPort::bind().expect("dead port");
    let silent = SilentPort::bind().expect("silent port");
    let mut errors = 0;
    for (url, status, outcome) in [
        (
            format!("http://{}/refused.png", dead.addr()),
            502,
            "origin_error",
        ),
        // Envoy 1.40's cache hands its reply to a failed fill on with `via_upstream` details
        // and no reason, so a TLS handshake that timed out is told from a refusal by nothing
        // the filter sees in time: a 502 here, where the native gateway and Envoy without the
        // cache answer 504 (README: Caching, Envoy).
        (
            format!("https://{}/silent.png", silent.addr()),
            502,
            "origin_error",
        ),
    ] {
        let reply = get(&s, &url, &[]);
        assert_eq!(reply.status, status, "{url}: {reply:?}");
        assert_eq!(reply.body_text(), Rejection::origin_error().body(), "{url}");
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{url}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        errors += 1;
        assert_eq!(
            outcome_count(&s.envoy, outcome),
            errors.to_string(),
            "{url}"
        );
    }
    let forwarded = outcome_count(&s.envoy, "forwarded");
    assert!(matches!(forwarded.as_str(), "" | "0"), "{forwarded}");
}

#[test]
fn cors_and_dl_are_added_per_response_and_never_stored() {
    let s = start(
        "    allow_private_origins: true\n    cors: {allow_origin: [\"http://app.test\"]}\n",
        |_| {},
    );
    let url = s.origin.url("/fresh/cors.png");
    let send_page = |params: &[(&str, &str)], page: &str| {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut req = RawRequest::get(
            "localhost",
            &sign_url("tok", &url, &params, &SignOptions::default()),
        );
        req.headers = vec![("Origin".to_owned(), page.to_owned())];
        send(s.envoy.addr(), &req, TIMEOUT).expect("answered")
    };
    let miss = send_page(&[("dl", "first.bin")], "http://app.test");
    assert_eq!(miss.header(CACHE_STATUS), Some(FWD_MISS), "{miss:?}");
    assert_eq!(
        miss.header("access-control-allow-origin"),
        Some("http://app.test")
    );
    assert_eq!(miss.header("vary"), Some("Origin"));
    assert!(
        miss.header("content-disposition")
            .is_some_and(|v| v.contains("filename=\"first.bin\"")),
        "{miss:?}"
    );
    // A hit for another page and no dl: this request's headers, not the fill's.
    let other = send_page(&[], "https://evil.test");
    assert_eq!(other.header(CACHE_STATUS), Some(HIT), "{other:?}");
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_eq!(other.header("timing-allow-origin"), None);
    assert_eq!(other.header("vary"), Some("Origin"));
    assert_eq!(other.header("content-disposition"), None);
    let renamed = send_page(&[("dl", "second.bin")], "http://app.test");
    assert_eq!(renamed.header(CACHE_STATUS), Some(HIT), "{renamed:?}");
    assert_eq!(
        renamed.header("access-control-allow-origin"),
        Some("http://app.test")
    );
    assert_eq!(renamed.header_values("vary"), ["Origin"], "added once");
    assert!(renamed
        .header("content-disposition")
        .is_some_and(|v| v.contains("filename=\"second.bin\"")));
    assert_eq!(
        s.origin.heads("/fresh/cors.png").len(),
        1,
        "one origin fetch"
    );
}

/// The paths [`serve_fallbacks`]' origin answers with an image now (a test "fixes" its object).
static FIXED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Makes `path` an image on [`serve_fallbacks`]' origin from now on.
fn fix(path: &str) {
    FIXED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(path.to_owned());
}

/// Whether `path` was [`fix`]ed.
fn is_fixed(path: &str) -> bool {
    FIXED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .any(|p| p == path)
}

/// The body of [`serve_fallbacks`]' fallback images.
const IMAGE_BODY: &str = "the fallback image";

/// `cache_ttl_error` of [`start_fallbacks`]' source for a test that waits for it to pass.
const TTL_ERROR: u64 = 2;

/// `cache_ttl_error` of [`start_fallbacks`]' source for a test that must never see it pass
/// (a slow machine must not turn a hit into a second origin fetch).
const LONG_TTL_ERROR: u64 = 60;

/// The origin of the fallback tests. `/missing/...` answers 404, `/broken/...` 500, both
/// `max-age=3600` (the policy's `cache_ttl_error` wins); `/soft/...` a 200 HTML page (a soft
/// 404) and `/moved/...` a 301, both `max-age=600`; `/image/...` is a fallback image: a 200
/// fresh for 600 s with validators. A [`fix`]ed path is an image fresh for 600 s. Every answer
/// carries a CORS header of its own, which never reaches a client.
fn serve_fallbacks(mut conn: OriginConn) {
    let Some(head) = conn.read_head() else {
        return;
    };
    let path = request_path(&head).to_owned();
    let (status, headers, body) = if path.starts_with("/image/") {
        (
            "200 OK",
            format!(
                "etag: {ETAG}\r\nlast-modified: {}\r\ncache-control: max-age=600\r\n",
                http_date(now() - 3600)
            ),
            IMAGE_BODY.to_owned(),
        )
    } else if is_fixed(&path) {
        (
            "200 OK",
            "cache-control: max-age=600\r\n".to_owned(),
            format!("body of {path}"),
        )
    } else if path.starts_with("/soft/") {
        (
            "200 OK",
            "cache-control: max-age=600\r\n".to_owned(),
            "soft".to_owned(),
        )
    } else if path.starts_with("/moved/") {
        (
            "301 Moved Permanently",
            "location: /image/moved.png\r\ncache-control: max-age=600\r\n".to_owned(),
            String::new(),
        )
    } else if path.starts_with("/missing/") {
        (
            "404 Not Found",
            "cache-control: max-age=3600\r\n".to_owned(),
            "no such object".to_owned(),
        )
    } else {
        (
            "500 Internal Server Error",
            "cache-control: max-age=3600\r\n".to_owned(),
            "broken".to_owned(),
        )
    };
    let ct = if path.starts_with("/soft/") && !is_fixed(&path) {
        "text/html"
    } else {
        "image/png"
    };
    // A HEAD gets the head a GET would.
    let sent_body = if head.starts_with("HEAD ") { "" } else { &body };
    let reply = format!(
        "HTTP/1.1 {status}\r\ndate: {}\r\ncontent-type: {ct}\r\n{headers}\
         access-control-allow-origin: https://origin.example\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{sent_body}",
        http_date(now()),
        body.len()
    );
    conn.send(reply.as_bytes());
}

/// Envoy with the cache for a source with both fallback images on [`serve_fallbacks`]' origin
/// (images only, `cache_ttl_error` `ttl_error`).
fn start_fallbacks(ttl_error: u64) -> Setup {
    let origin = ScriptedOrigin::start(serve_fallbacks).unwrap_or_else(|e| panic!("{e}"));
    let images = format!(
        "{PRIVATE}    cache_ttl_error: {ttl_error}\n    allowed_content_types: [image/]\n    \
         image_missing: {}\n    image_error: {}\n",
        origin.url("/image/missing.png"),
        origin.url("/image/error.png")
    );
    start_on(origin, &images, |_| {})
}

/// A fallback image served for a failure whose status was `status`: the image's body under the
/// failure's status, `cache_ttl_error` (`ttl_error`) and the gateway's CORS headers, none of
/// the image's validators nor the origin's CORS header.
fn assert_fallback(response: &RawResponse, kind: &str, status: u16, ttl_error: u64) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(response.header(FALLBACK_HEADER), Some(kind), "{response:?}");
    assert_eq!(response.body_text(), IMAGE_BODY, "{response:?}");
    assert_eq!(
        response.header("cache-control"),
        Some(format!("public, max-age={ttl_error}").as_str()),
        "{response:?}"
    );
    assert_eq!(response.header("content-type"), Some("image/png"));
    assert_eq!(response.header_values("access-control-allow-origin"), ["*"]);
    assert_eq!(
        response.header("cross-origin-resource-policy"),
        Some("cross-origin")
    );
    assert_eq!(response.header("timing-allow-origin"), Some("*"));
    for absent in ["etag", "last-modified", "age", UPSTREAM_ADDRESS_HEADER] {
        assert_eq!(response.header(absent), None, "{absent}: {response:?}");
    }
}

/// Requests `url` every 100 ms (at most 50 times) until the answer is no longer `kind`'s
/// fallback with `status`, asserting that no fallback came later than `TTL_ERROR` + 1 s after
/// `filled` (the fill); returns that answer and the number of requests made.
fn until_refetched(
    s: &Setup,
    url: &str,
    filled: Instant,
    kind: &str,
    status: u16,
) -> (RawResponse, usize) {
    let fresh_until = Duration::from_secs(TTL_ERROR) + Duration::from_millis(1000);
    for polled in 1..=50 {
        let sent = filled.elapsed();
        let r = get(s, url, &[]);
        if r.header(FALLBACK_HEADER).is_none() {
            return (r, polled);
        }
        assert_fallback(&r, kind, status, TTL_ERROR);
        assert!(sent < fresh_until, "a fallback {sent:?} after the fill");
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url}: the origin is not asked again after cache_ttl_error");
}

/// On Envoy the origin's 404 is stored under the request's key for `cache_ttl_error` (the
/// policy's `max-age`, not the origin's 3600) and the image's 200 under the image URL's own key
/// (its 600 s): within the TTL neither is fetched again. Once the 404 is stale the origin URL is
/// fetched again, whatever the image's freshness, so an object that appeared is served.
#[test]
fn a_missing_objects_fallback_is_stored_for_cache_ttl_error_only() {
    let s = start_fallbacks(TTL_ERROR);
    let url = s.origin.url("/missing/appears.png");
    let first = get(&s, &url, &[]);
    let filled = Instant::now();
    assert_fallback(&first, "missing", 404, TTL_ERROR);
    let second = get(&s, &url, &[]);
    assert_fallback(&second, "missing", 404, TTL_ERROR);
    assert_eq!(s.origin.heads("/missing/appears.png").len(), 1, "stored");
    assert_eq!(s.origin.heads("/image/missing.png").len(), 1, "stored");

    fix("/missing/appears.png");
    let (appeared, polled) = until_refetched(&s, &url, filled, "missing", 404);
    assert_eq!(appeared.status, 200, "{appeared:?}");
    assert_eq!(appeared.body_text(), "body of /missing/appears.png");
    assert_eq!(s.origin.heads("/missing/appears.png").len(), 2);
    assert_eq!(s.origin.heads("/image/missing.png").len(), 1);
    // An origin 404 with its image is `forwarded`, hit or not.
    assert_eq!(
        outcome_count(&s.envoy, "forwarded"),
        (2 + polled).to_string()
    );
}

/// An origin 500 is never stored (Envoy's cache stores no 500): each request fetches the origin
/// URL and gets the error image, whose own 200 is a hit under the image URL's key after the
/// first.
#[test]
fn an_origin_errors_fallback_is_served_and_the_error_never_stored() {
    let s = start_fallbacks(LONG_TTL_ERROR);
    let url = s.origin.url("/broken/a.png");
    for _ in 0..2 {
        assert_fallback(&get(&s, &url, &[]), "error", 500, LONG_TTL_ERROR);
    }
    assert_eq!(s.origin.heads("/broken/a.png").len(), 2, "never stored");
    assert_eq!(s.origin.heads("/image/error.png").len(), 1);
    assert_eq!(outcome_count(&s.envoy, "forwarded"), "2");
}

/// The image's URL signed and requested as an origin URL is the image's own answer (its 200,
/// its `Cache-Control`, its validators, no fallback marker), before and after it served as a
/// fallback: Envoy stored the image's answer, never the fallback made of it.
#[test]
fn the_fallback_images_own_url_is_its_own_answer() {
    let s = start_fallbacks(LONG_TTL_ERROR);
    let image = s.origin.url("/image/missing.png");
    let missing = s.origin.url("/missing/own.png");
    assert_fallback(&get(&s, &missing, &[]), "missing", 404, LONG_TTL_ERROR);
    for _ in 0..2 {
        let direct = get(&s, &image, &[]);
        assert_eq!(direct.status, 200, "{direct:?}");
        assert_eq!(direct.header(FALLBACK_HEADER), None, "{direct:?}");
        assert_eq!(direct.body_text(), IMAGE_BODY);
        assert_eq!(direct.header("cache-control"), Some("max-age=600"));
        assert_eq!(direct.header("etag"), Some(ETAG));
        assert_eq!(direct.header(CACHE_STATUS), Some(HIT), "{direct:?}");
    }
    assert_fallback(&get(&s, &missing, &[]), "missing", 404, LONG_TTL_ERROR);
    assert_eq!(s.origin.heads("/image/missing.png").len(), 1);
    assert_eq!(s.origin.heads("/missing/own.png").len(), 1);
}

/// A HEAD on a missing object gets the fallback's head and no body. Envoy 1.40's cache
/// neither looks a HEAD up nor stores its answer while no GET filled the entries: each HEAD
/// sends a HEAD for the origin URL and one for the image; once a GET stored both, a HEAD is
/// answered from them.
#[test]
fn a_head_on_a_missing_object_gets_the_fallbacks_head() {
    let s = start_fallbacks(LONG_TTL_ERROR);
    let url = s.origin.url("/missing/head.png");
    let mut head = RawRequest::get(
        "localhost",
        &sign_url("tok", &url, &[], &SignOptions::default()),
    );
    head.method = "HEAD".to_owned();
    let send_head = || {
        let r = send(s.envoy.addr(), &head, TIMEOUT).expect("answered");
        assert_eq!(r.status, 404, "{r:?}");
        assert_eq!(r.header(FALLBACK_HEADER), Some("missing"), "{r:?}");
        assert_eq!(
            r.header("cache-control"),
            Some(format!("public, max-age={LONG_TTL_ERROR}").as_str())
        );
        assert_eq!(r.header("content-type"), Some("image/png"));
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(r.header("etag"), None);
        assert!(r.body.is_empty(), "{r:?}");
    };
    let seen = || -> Vec<String> {
        s.origin
            .heads("/")
            .iter()
            .map(|h| h.split(" HTTP/").next().unwrap_or_default().to_owned())
            .collect()
    };
    send_head();
    send_head();
    let (head_of, head_image) = ("HEAD /missing/head.png", "HEAD /image/missing.png");
    assert_eq!(seen(), [head_of, head_image, head_of, head_image]);
    assert_fallback(&get(&s, &url, &[]), "missing", 404, LONG_TTL_ERROR);
    send_head();
    let fetched = seen();
    assert_eq!(
        fetched[4..],
        ["GET /missing/head.png", "GET /image/missing.png"],
        "a HEAD from the stored entries"
    );
}

/// An origin answer the gateway refuses whatever it says gets the error image: a soft 404 (an
/// HTML page with a 200, outside `allowed_content_types`) a 403, a redirect (never followed on
/// the cache's channel) a 502. Envoy keeps it for `cache_ttl_error` only, not the origin's
/// `max-age=600` (the upstream role stores it under the failure's policy value), so once the
/// origin serves the image it is served.
#[test]
fn a_refused_answers_fallback_is_stored_for_cache_ttl_error_only() {
    let s = start_fallbacks(TTL_ERROR);
    let cases = [("/soft/a.png", 403), ("/moved/a.png", 502)];
    let filled = Instant::now();
    for (path, status) in cases {
        let url = s.origin.url(path);
        assert_fallback(&get(&s, &url, &[]), "error", status, TTL_ERROR);
        assert_fallback(&get(&s, &url, &[]), "error", status, TTL_ERROR);
        assert_eq!(s.origin.heads(path).len(), 1, "{path}: stored");
        fix(path);
    }
    for (path, status) in cases {
        let (fixed, _) = until_refetched(&s, &s.origin.url(path), filled, "error", status);
        assert_eq!(fixed.status, 200, "{path}: {fixed:?}");
        assert_eq!(fixed.body_text(), format!("body of {path}"));
        assert_eq!(s.origin.heads(path).len(), 2, "{path}");
    }
    assert_eq!(s.origin.heads("/image/error.png").len(), 1);
    assert!(s.origin.heads("/image/moved.png").is_empty());
}
