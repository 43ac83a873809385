//! The response cache's rules (README: Caching), the same for any runtime that caches: the key
//! of a request, whether and for how long an answer may be stored, what each response says
//! about the cache (`Cache-Status`, the metric label), the `expires` cap applied per response,
//! and the admin purge request.
//!
//! The cache sits behind [`crate::decide`]: only a [`Forward`] has a key, so an unsigned,
//! expired or refused request never reaches a stored answer. An answer is stored under the
//! source's policy `Cache-Control` before any `expires` cap (two signed URLs for one origin
//! object share the entry); each response then gets its own URL's cap
//! ([`client_cache_control`]).

use percent_encoding::percent_decode_str;

use crate::expires::cap_cache_control;
use crate::forward::Forward;
use crate::origin::parse_origin;
use crate::response::ResponseEdits;

/// The `Cache-Status` response header (RFC 9211) the gateway adds to every answer that went
/// through the cache.
pub const CACHE_STATUS: &str = "cache-status";

/// Internal header of a stored answer (native gateway): the URL of the origin hop that gave it,
/// so a hit can be checked against the source's current policy for that host ([`crate::Forward::check_stored`]).
/// Set on what the cache stores, removed from every response before it reaches a client; an
/// origin's own value never survives the response header allowlist.
pub const STORED_ORIGIN_HEADER: &str = "x-ixproxy-stored-origin";

/// Statuses whose answers may be stored: RFC 9110's heuristically cacheable statuses that
/// reach the client whole (not 206, which the cache makes itself from a stored 200; redirects
/// are followed, never passed on). A transient origin failure (500, 502, 503, 504) is never
/// stored: it would outlive the failure by `cache_ttl_error`.
pub const STORED_STATUSES: [u16; 8] = [200, 203, 204, 300, 404, 405, 410, 414];

/// The cache key of a forward: the source's name and the decoded origin URL of the URL the
/// client signed (length-prefixed, so no two (source, URL) pairs share a key). Never `s`,
/// `expires` or a gateway param: URLs signed with other params share the entry. Compute it
/// before any redirect hop: a redirected request is stored under what the client asked for.
pub fn cache_key(forward: &Forward) -> String {
    key_of(forward.source_name(), &forward.origin().to_url_string())
}

/// The cache key of `url` (a normalised origin URL) under the source named `source`.
pub fn key_of(source: &str, url: &str) -> String {
    format!("{}:{source}{url}", source.len())
}

/// Whether a client request may be answered from the cache (`GET` and `HEAD`).
pub fn may_look_up(method: &str) -> bool {
    method == "GET" || method == "HEAD"
}

/// Whether a client request that missed may fill the cache: only `GET` (a `HEAD` goes to the
/// origin as a `HEAD` and never stores a body, nor an empty one).
pub fn may_fill(method: &str) -> bool {
    method == "GET"
}

/// Why an answer is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotStored {
    /// The status is not in [`STORED_STATUSES`].
    #[error("status not stored")]
    Status,
    /// `Cache-Control: no-store`.
    #[error("no-store")]
    NoStore,
    /// `Cache-Control: private` (this is a shared cache).
    #[error("private")]
    Private,
    /// No `s-maxage`/`max-age` (or 0, or `no-cache`) and no validator to revalidate with.
    #[error("no freshness and no validator")]
    NoFreshness,
    /// The answer varies with request headers (`Vary`): not stored, since the key is the URL.
    #[error("vary")]
    Vary,
}

/// How long an answer may be served from the cache without revalidation, in seconds, from
/// its `Cache-Control` after the source's policy and before any `expires` cap.
///
/// `s-maxage` wins over `max-age`; `no-cache` means 0 (stored, revalidated on every use). A
/// freshness of 0 is only worth storing with a validator (`ETag` or `Last-Modified`,
/// `has_validator`).
///
/// # Errors
/// The [`NotStored`] reason.
pub fn freshness(
    status: u16,
    cache_control: Option<&str>,
    has_validator: bool,
    has_vary: bool,
) -> Result<u64, NotStored> {
    if !STORED_STATUSES.contains(&status) {
        return Err(NotStored::Status);
    }
    if has_vary {
        return Err(NotStored::Vary);
    }
    let (mut max_age, mut s_maxage, mut no_cache) = (None, None, false);
    for directive in cache_control.unwrap_or("").split(',') {
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        let name = name.trim().to_ascii_lowercase();
        let seconds = || value.trim().trim_matches('"').parse::<u64>().ok();
        match name.as_str() {
            "no-store" => return Err(NotStored::NoStore),
            "private" => return Err(NotStored::Private),
            "no-cache" => no_cache = true,
            // An unreadable value counts as stale (RFC 9111 §4.2.1).
            "max-age" => max_age = Some(seconds().unwrap_or(0)),
            "s-maxage" => s_maxage = Some(seconds().unwrap_or(0)),
            _ => {}
        }
    }
    let fresh = if no_cache {
        Some(0)
    } else {
        s_maxage.or(max_age)
    };
    match fresh {
        Some(seconds) if seconds > 0 => Ok(seconds),
        Some(_) if has_validator => Ok(0),
        _ => Err(NotStored::NoFreshness),
    }
}

/// The edits for an answer the cache may store: `edits` (from [`Forward::check_response`])
/// with `Cache-Control` set to the source's policy value before any `expires` cap
/// ([`ResponseEdits::policy_cache_control`]; none for a 1xx). Applied by every runtime that
/// stores answers; each response then gets [`client_cache_control`].
pub fn storage_edits(mut edits: ResponseEdits) -> ResponseEdits {
    edits.set.retain(|(name, _)| *name != "cache-control");
    if let Some(policy) = edits.policy_cache_control.clone() {
        edits.set.push(("cache-control", policy));
    }
    edits
}

/// The `Cache-Control` one response gets from the stored (uncapped) value: capped at the
/// seconds its URL's `expires` leaves (`max_age`, see [`Forward::max_age`]); `None` when
/// there is nothing to change.
pub fn client_cache_control(stored: Option<&str>, max_age: Option<u64>) -> Option<String> {
    max_age.map(|max_age| cap_cache_control(stored, max_age))
}

/// What the cache did for one request: the `ixproxy_cache_requests_total{result}` label and
/// the `Cache-Status` value. Counted once per request that the cache looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheResult {
    /// Served from a fresh stored answer; no origin request.
    Hit,
    /// Not stored yet: fetched from the origin and stored.
    Miss,
    /// Stored but stale: revalidated with a conditional request, the origin's 304 refreshed
    /// the entry, served from the cache.
    Revalidated,
    /// Stored but stale: the origin sent a new answer, which replaced the entry.
    Expired,
    /// Fetched from the origin, not storable (status, `no-store`, `private`, no freshness,
    /// `Vary`, over `max_object_bytes`); the answer was passed on.
    Uncacheable,
    /// A `HEAD` that found nothing fresh: passed to the origin as a `HEAD`, nothing stored.
    Bypass,
}

impl CacheResult {
    /// Every result, in label order.
    pub const ALL: [CacheResult; 6] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Revalidated,
        CacheResult::Expired,
        CacheResult::Uncacheable,
        CacheResult::Bypass,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Expired => "expired",
            CacheResult::Uncacheable => "uncacheable",
            CacheResult::Bypass => "bypass",
        }
    }

    /// The `Cache-Status` value (RFC 9211): `ixproxy; hit`, `ixproxy; fwd=stale` for a
    /// stale entry (revalidated or replaced), `ixproxy; fwd=miss` otherwise.
    pub fn cache_status(self) -> &'static str {
        match self {
            CacheResult::Hit => "ixproxy; hit",
            CacheResult::Revalidated | CacheResult::Expired => "ixproxy; fwd=stale",
            CacheResult::Miss | CacheResult::Uncacheable | CacheResult::Bypass => {
                "ixproxy; fwd=miss"
            }
        }
    }
}

/// Where the answer of a request that went through the cache came from: the
/// `ixproxy_cache_requests_total{tier}` label (README: Caching, Disk tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheTier {
    /// The memory tier held the stored answer.
    Memory,
    /// The disk tier held it (the memory tier did not).
    Disk,
    /// No stored answer was used: the body came from the origin (a miss, a replaced entry,
    /// an uncacheable answer, a bypass).
    None,
}

impl CacheTier {
    /// Every tier, in label order.
    pub const ALL: [CacheTier; 3] = [CacheTier::Memory, CacheTier::Disk, CacheTier::None];

    /// The tiers that hold stored answers (the `ixproxy_cache_bytes{tier}` labels).
    pub const STORES: [CacheTier; 2] = [CacheTier::Memory, CacheTier::Disk];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheTier::Memory => "memory",
            CacheTier::Disk => "disk",
            CacheTier::None => "none",
        }
    }
}

impl CacheResult {
    /// The tiers a request with this result can report: a stored answer's tier when one was
    /// served (a hit, a revalidated entry), else [`CacheTier::None`]. The
    /// `ixproxy_cache_requests_total{result,tier}` series are these pairs.
    pub fn tiers(self) -> &'static [CacheTier] {
        match self {
            CacheResult::Hit | CacheResult::Revalidated => &CacheTier::STORES,
            CacheResult::Miss
            | CacheResult::Expired
            | CacheResult::Uncacheable
            | CacheResult::Bypass => &[CacheTier::None],
        }
    }
}

/// The admin path of a purge.
pub const PURGE_PATH: &str = "/cache/purge";

/// Why a purge request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeError {
    /// Not `POST` (→ 405).
    #[error("purge must be a POST")]
    Method,
    /// No `url=` parameter, or more than one (→ 400).
    #[error("purge needs exactly one url= parameter")]
    MissingUrl,
    /// The URL is not a usable origin URL (→ 400).
    #[error("purge url: {0}")]
    BadUrl(String),
}

impl PurgeError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            PurgeError::Method => 405,
            PurgeError::MissingUrl | PurgeError::BadUrl(_) => 400,
        }
    }
}

/// Reads an admin purge request, `POST /cache/purge?url=<percent-encoded origin URL>`: the
/// origin URL, decoded once and normalised like a signed URL's (so it names the same entries
/// as [`cache_key`]). `None` when `path` is not [`PURGE_PATH`].
///
/// # Errors
/// A [`PurgeError`] for another method, a missing or repeated `url`, or a URL that is not a
/// usable origin URL.
pub fn parse_purge(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Option<Result<String, PurgeError>> {
    if path != PURGE_PATH {
        return None;
    }
    Some(purge_url(method, query))
}

/// The admin purge's `url` (as [`parse_purge`] reads it once the path matched), also read
/// by a peer's forwarded purge.
pub(crate) fn purge_url(method: &str, query: Option<&str>) -> Result<String, PurgeError> {
    if method != "POST" {
        return Err(PurgeError::Method);
    }
    let Ok(Some(raw)) = one_param(query, "url=") else {
        return Err(PurgeError::MissingUrl);
    };
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PurgeError::BadUrl("not utf-8 after decoding".to_owned()))?;
    parse_origin(&decoded)
        .map(|origin| origin.to_url_string())
        .map_err(|e| PurgeError::BadUrl(e.to_string()))
}

/// The raw value of the one `prefix` (`name=`) parameter of an admin query: `Ok(None)` when
/// absent, `Err(())` when given more than once.
pub(crate) fn one_param<'a>(query: Option<&'a str>, prefix: &str) -> Result<Option<&'a str>, ()> {
    let mut values = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix(prefix));
    match (values.next(), values.next()) {
        (value, None) => Ok(value),
        _ => Err(()),
    }
}

/// The keys a purge of `url` (from [`parse_purge`]) removes: its entry under every source.
pub fn purge_keys<'a>(sources: impl IntoIterator<Item = &'a str>, url: &str) -> Vec<String> {
    sources.into_iter().map(|s| key_of(s, url)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MapSecrets, RawConfig};
    use crate::sign::{sign_url, SignOptions};
    use crate::{decide, Decision, RequestInfo, Sources};

    const NOW: u64 = 1_700_000_000;

    fn sources() -> Sources {
        let yaml = "sources:
  - name: a
    hosts: [a.test]
    secure_url_tokens: [t]
  - name: ab
    hosts: [ab.test]
    secure_url_tokens: [t]
";
        RawConfig::from_yaml(yaml)
            .and_then(|raw| raw.validate(&MapSecrets::new()))
            .expect("valid")
            .sources
    }

    fn forward(host: &str, url: &str, params: &[(&str, &str)]) -> Forward {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let target = sign_url("t", url, &params, &SignOptions::default());
        let info = RequestInfo {
            method: "GET",
            host,
            target: &target,
        };
        match decide(&sources(), &info, NOW) {
            Decision::Forward(f) => *f,
            Decision::Reject(r) => panic!("{url}: {r:?}"),
        }
    }

    #[test]
    fn a_stored_answer_served_names_its_tier_and_the_rest_none() {
        for result in CacheResult::ALL {
            let tiers = result.tiers();
            let served_stored = matches!(result, CacheResult::Hit | CacheResult::Revalidated);
            assert_eq!(tiers == CacheTier::STORES, served_stored, "{result:?}");
            assert_eq!(tiers == [CacheTier::None], !served_stored, "{result:?}");
        }
        let labels = CacheTier::ALL.map(CacheTier::as_str);
        assert_eq!(labels, ["memory", "disk", "none"]);
    }

    #[test]
    fn the_key_is_the_source_and_the_decoded_origin_url_only() {
        let plain = forward("a.test", "https://o.example/a.png?v=1", &[]);
        let other_params = forward(
            "a.test",
            "https://o.example/a.png?v=1",
            &[("w", "100"), ("fm", "webp"), ("expires", "1700000060")],
        );
        assert_eq!(cache_key(&plain), "1:ahttps://o.example/a.png?v=1");
        assert_eq!(other_params.max_age(), Some(60));
        assert_eq!(
            cache_key(&plain),
            cache_key(&other_params),
            "s, expires, params"
        );
        // The raw `/https://…` form decodes to the same origin URL, so the same key.
        let raw_form = crate::origin::decode_origin("/https://o.example/a.png?v=1")
            .expect("raw form")
            .to_url_string();
        assert_eq!(key_of("a", &raw_form), cache_key(&plain));
        let other_source = forward("ab.test", "https://o.example/a.png?v=1", &[]);
        assert_ne!(cache_key(&plain), cache_key(&other_source));
        // Length-prefixed: source "a" + URL "b…" never meets source "ab" + URL "…".
        assert_ne!(key_of("a", "bhttps://x/"), key_of("ab", "https://x/"));
    }

    #[test]
    fn a_redirect_hop_keeps_the_key_the_client_asked_for() {
        let first = forward("a.test", "https://o.example/old.png", &[]);
        let key = cache_key(&first);
        let hop = first.redirect("/new.png").expect("hop");
        assert_eq!(hop.origin().path_and_query, "/new.png");
        // The runtime computes the key once, from the first forward.
        assert_eq!(key, "1:ahttps://o.example/old.png");
    }

    #[test]
    fn freshness_from_the_policy_cache_control() {
        let f = |status, cc: Option<&str>, validator| freshness(status, cc, validator, false);
        assert_eq!(f(200, Some("public, max-age=600"), false), Ok(600));
        assert_eq!(f(200, Some("max-age=600, s-maxage=60"), false), Ok(60));
        assert_eq!(f(200, Some("Max-Age=\"30\""), false), Ok(30));
        assert_eq!(f(404, Some("public, max-age=300"), false), Ok(300));
        assert_eq!(
            f(200, Some("no-store, max-age=600"), true),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            f(200, Some("private, max-age=600"), true),
            Err(NotStored::Private)
        );
        assert_eq!(f(200, Some("public"), false), Err(NotStored::NoFreshness));
        assert_eq!(f(200, None, true), Err(NotStored::NoFreshness));
        assert_eq!(
            f(200, Some("max-age=0"), false),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(f(200, Some("max-age=0"), true), Ok(0));
        assert_eq!(f(200, Some("no-cache, max-age=600"), true), Ok(0));
        assert_eq!(
            f(200, Some("no-cache, max-age=600"), false),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            f(200, Some("max-age=soon"), false),
            Err(NotStored::NoFreshness)
        );
        for status in [206, 304, 500, 502, 503, 504, 302, 401, 403] {
            assert_eq!(
                f(status, Some("max-age=60"), true),
                Err(NotStored::Status),
                "{status}"
            );
        }
        assert_eq!(
            freshness(200, Some("max-age=60"), true, true),
            Err(NotStored::Vary)
        );
    }

    #[test]
    fn the_stored_value_is_uncapped_and_each_response_gets_its_cap() {
        let capped = ResponseEdits {
            remove: vec!["set-cookie".to_owned()],
            set: vec![
                ("content-type", "image/png".to_owned()),
                ("cache-control", "public, max-age=60".to_owned()),
            ],
            policy_cache_control: Some("public, max-age=31536000".to_owned()),
        };
        let stored = storage_edits(capped.clone());
        assert_eq!(stored.remove, capped.remove);
        assert_eq!(
            stored.set,
            [
                ("content-type", "image/png".to_owned()),
                ("cache-control", "public, max-age=31536000".to_owned()),
            ]
        );
        let informational = ResponseEdits {
            policy_cache_control: None,
            ..capped
        };
        assert!(!storage_edits(informational)
            .set
            .iter()
            .any(|(n, _)| *n == "cache-control"));
        // From the core's own edits: an `expires` URL's response is stored uncapped.
        let f = forward(
            "a.test",
            "https://o.example/a.png",
            &[("expires", "1700000060")],
        );
        let head = crate::response::OriginHead::of(200, [("cache-control", &b"max-age=600"[..])]);
        let edits = f.check_response(&head).expect("admitted");
        assert!(edits
            .set
            .contains(&("cache-control", "max-age=60".to_owned())));
        assert!(storage_edits(edits)
            .set
            .contains(&("cache-control", "max-age=600".to_owned())));
        assert_eq!(
            client_cache_control(Some("public, max-age=31536000"), Some(60)).as_deref(),
            Some("public, max-age=60")
        );
        assert_eq!(
            client_cache_control(Some("public, max-age=31536000"), None),
            None
        );
        // The cap of one URL never shortens what the cache keeps for another: the stored
        // freshness is read from the uncapped value.
        assert_eq!(
            freshness(200, Some("public, max-age=31536000"), false, false),
            Ok(31_536_000)
        );
    }

    #[test]
    fn cache_status_values_and_labels() {
        let labels: Vec<_> = CacheResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "hit",
                "miss",
                "revalidated",
                "expired",
                "uncacheable",
                "bypass"
            ]
        );
        assert_eq!(CacheResult::Hit.cache_status(), "ixproxy; hit");
        assert_eq!(CacheResult::Miss.cache_status(), "ixproxy; fwd=miss");
        assert_eq!(
            CacheResult::Revalidated.cache_status(),
            "ixproxy; fwd=stale"
        );
        assert_eq!(CacheResult::Expired.cache_status(), "ixproxy; fwd=stale");
        assert_eq!(CacheResult::Uncacheable.cache_status(), "ixproxy; fwd=miss");
        assert!(may_look_up("GET") && may_look_up("HEAD") && !may_look_up("POST"));
        assert!(may_fill("GET") && !may_fill("HEAD"));
    }

    #[test]
    fn purge_requests() {
        let url = "https%3A%2F%2Fo.example%2Fa.png%3Fv%3D1";
        assert_eq!(
            parse_purge("POST", PURGE_PATH, Some(&format!("url={url}"))),
            Some(Ok("https://o.example/a.png?v=1".to_owned()))
        );
        // Normalised like a signed URL: host case, default port.
        assert_eq!(
            parse_purge(
                "POST",
                PURGE_PATH,
                Some("url=https%3A%2F%2FO.Example%3A443%2Fa.png")
            ),
            Some(Ok("https://o.example/a.png".to_owned()))
        );
        assert_eq!(parse_purge("POST", "/metrics", None), None);
        assert_eq!(
            parse_purge("GET", PURGE_PATH, Some(&format!("url={url}"))),
            Some(Err(PurgeError::Method))
        );
        for bad in [None, Some(""), Some("u=1"), Some("url=a&url=b")] {
            assert_eq!(
                parse_purge("POST", PURGE_PATH, bad),
                Some(Err(PurgeError::MissingUrl)),
                "{bad:?}"
            );
        }
        let refused = parse_purge("POST", PURGE_PATH, Some("url=ftp%3A%2F%2Fx%2F"));
        assert!(
            matches!(refused, Some(Err(PurgeError::BadUrl(_)))),
            "{refused:?}"
        );
        assert_eq!(PurgeError::Method.status(), 405);
        assert_eq!(PurgeError::MissingUrl.status(), 400);
        assert_eq!(
            purge_keys(["a", "ab"], "https://o.example/a.png"),
            ["1:ahttps://o.example/a.png", "2:abhttps://o.example/a.png"]
        );
    }
}
