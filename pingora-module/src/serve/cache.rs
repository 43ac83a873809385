//! The native response cache (README: Caching): Pingora's cache state machine
//! (`pingora-cache`) over the bounded [`MemoryStore`], with a cache lock so concurrent misses
//! for one key make one origin fetch. The rules (key, freshness, `Cache-Status`, labels, the
//! per-response `expires` cap) are the core's [`ixproxy_core::cache`]; this module only
//! translates them onto Pingora's cache callbacks, which [`super::gateway`] forwards here.

use std::time::{Duration, SystemTime};

use http::header;
use ixproxy_core::cache::{self as rules, CacheResult, CacheTier};
use ixproxy_core::config::CacheLimits;
use ixproxy_core::Forward;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{CacheKey, CacheMeta, CachePhase, HttpCache, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use prometheus::{IntCounter, IntGauge};

use super::cache_disk;
use super::cache_store::{self, MemoryStore};

/// Why a `HEAD` that found nothing fresh leaves the cache (it goes to the origin as a `HEAD`).
pub const HEAD_BYPASS: &str = "head";

/// The response cache: the store and the lock, both for the life of the process.
#[derive(Clone, Copy)]
pub struct ResponseCache {
    store: &'static MemoryStore,
    lock: &'static CacheKeyLockImpl,
    max_object_bytes: usize,
    /// A disk tier is configured (open or not yet).
    disk: bool,
}

impl ResponseCache {
    /// A cache bounded by `limits`, reporting its size in `bytes_gauge`. A fill holds the key's
    /// lock for at most `lock_age` (then waiting requests compete again).
    pub fn new(limits: &CacheLimits, lock_age: Duration, bytes_gauge: IntGauge) -> Self {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(
            limits.max_bytes,
            limits.max_object_bytes,
            bytes_gauge,
        )));
        let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(lock_age));
        ResponseCache {
            store,
            lock,
            max_object_bytes: usize::try_from(limits.max_object_bytes).unwrap_or(usize::MAX),
            disk: limits.disk.is_some(),
        }
    }

    /// Opens the disk tier of `limits` (if any) under the memory store: now, or in the
    /// background when another process holds its directory ([`cache_disk::start`]). Its size
    /// goes to `disk_bytes`, the writes it drops are counted in `dropped_writes`.
    ///
    /// # Errors
    /// The tier's directory cannot be created or opened.
    pub fn start_disk(
        &self,
        limits: &CacheLimits,
        disk_bytes: IntGauge,
        dropped_writes: IntCounter,
    ) -> Result<(), cache_disk::OpenError> {
        let Some(tier) = &limits.disk else {
            return Ok(());
        };
        let store = self.store;
        cache_disk::start(tier, disk_bytes, dropped_writes, move |disk| {
            store.attach_disk(disk);
        })
    }

    /// The tier a request's answer came from, given its result: for a stored answer served,
    /// memory unless the hit came from the disk tier.
    pub fn tier_of(&self, result: CacheResult, cache: &mut HttpCache) -> CacheTier {
        match result.tiers() {
            [tier] => *tier,
            _ if self.disk && cache_store::served_from_disk(cache.hit_handler()) => CacheTier::Disk,
            _ => CacheTier::Memory,
        }
    }

    /// Turns the cache on for a decided request that may use it ([`rules::may_look_up`]): a
    /// `GET` looks up, takes the key's lock on a miss and fills; a `HEAD` only looks up (no
    /// lock: it never fills).
    pub fn enable(&self, session: &mut Session) {
        let lock = rules::may_fill(session.req_header().method.as_str()).then_some(self.lock);
        session.cache.enable(self.store, None, None, lock, None);
        session.cache.set_max_file_size_bytes(self.max_object_bytes);
    }

    /// The Pingora cache key of a forward ([`rules::cache_key`]).
    pub fn key(forward: &Forward) -> CacheKey {
        CacheKey::new(rules::cache_key(forward), "")
    }

    /// Removes the entries of `url` (a normalised origin URL) under every source; returns how
    /// many there were.
    pub fn purge<'a>(&self, sources: impl IntoIterator<Item = &'a str>, url: &str) -> usize {
        let keys = rules::purge_keys(sources, url);
        self.store.purge_keys(keys.iter().map(String::as_str))
    }
}

/// Whether an answer (its head after the core's edits, `Cache-Control` uncapped) may be
/// stored, and until when: the core's [`rules::freshness`]. Never served stale.
pub fn cacheability(resp: &ResponseHeader, now: SystemTime) -> RespCacheable {
    let cache_control = joined(resp, header::CACHE_CONTROL);
    let has_validator =
        resp.headers.contains_key(header::ETAG) || resp.headers.contains_key(header::LAST_MODIFIED);
    let has_vary = resp.headers.contains_key(header::VARY);
    match rules::freshness(
        resp.status.as_u16(),
        cache_control.as_deref(),
        has_validator,
        has_vary,
    ) {
        Ok(seconds) => {
            let mut stored = resp.clone();
            for framing in ["transfer-encoding", "connection", "keep-alive"] {
                stored.remove_header(framing);
            }
            RespCacheable::Cacheable(CacheMeta::new(
                now + Duration::from_secs(seconds),
                now,
                0,
                0,
                stored,
            ))
        }
        Err(_) => RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
    }
}

/// What the cache did for this request, from Pingora's cache phase when the response header
/// goes to the client; `None` when the cache was not used.
pub fn result_of(phase: CachePhase) -> Option<CacheResult> {
    Some(match phase {
        CachePhase::Hit => CacheResult::Hit,
        CachePhase::Miss => CacheResult::Miss,
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => CacheResult::Revalidated,
        CachePhase::Expired | CachePhase::Stale | CachePhase::StaleUpdating => CacheResult::Expired,
        CachePhase::Disabled(NoCacheReason::Custom(HEAD_BYPASS)) => CacheResult::Bypass,
        CachePhase::Disabled(NoCacheReason::NeverEnabled) => return None,
        CachePhase::Disabled(_) | CachePhase::Bypass => CacheResult::Uncacheable,
        CachePhase::Uninit | CachePhase::CacheKey => return None,
    })
}

/// The values of `name` joined with `, ` (`None` when there is none).
pub fn joined(resp: &ResponseHeader, name: header::HeaderName) -> Option<String> {
    let values: Vec<&str> = resp
        .headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, fields: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).expect("resp");
        for (n, v) in fields {
            resp.append_header(n.to_string(), *v).expect("field");
        }
        resp
    }

    #[test]
    fn cacheability_follows_the_core() {
        let now = SystemTime::now();
        let stored = |r: RespCacheable| match r {
            RespCacheable::Cacheable(meta) => Some(meta),
            RespCacheable::Uncacheable(_) => None,
        };
        let meta = stored(cacheability(
            &head(
                200,
                &[
                    ("cache-control", "public"),
                    ("cache-control", "max-age=60"),
                    ("transfer-encoding", "chunked"),
                ],
            ),
            now,
        ))
        .expect("cacheable");
        assert_eq!(meta.fresh_until(), now + Duration::from_secs(60));
        assert!(meta.headers().get("transfer-encoding").is_none());
        assert_eq!(meta.stale_if_error_sec(), 0);
        assert!(stored(cacheability(
            &head(200, &[("cache-control", "no-store")]),
            now
        ))
        .is_none());
        assert!(stored(cacheability(
            &head(200, &[("cache-control", "max-age=60"), ("vary", "accept")]),
            now
        ))
        .is_none());
        assert!(stored(cacheability(
            &head(200, &[("cache-control", "max-age=0")]),
            now
        ))
        .is_none());
        assert!(stored(cacheability(
            &head(200, &[("cache-control", "max-age=0"), ("etag", "\"e\"")]),
            now
        ))
        .is_some());
        assert!(stored(cacheability(
            &head(503, &[("cache-control", "max-age=60")]),
            now
        ))
        .is_none());
    }

    #[test]
    fn results_from_phases() {
        assert_eq!(result_of(CachePhase::Hit), Some(CacheResult::Hit));
        assert_eq!(result_of(CachePhase::Miss), Some(CacheResult::Miss));
        assert_eq!(
            result_of(CachePhase::Revalidated),
            Some(CacheResult::Revalidated)
        );
        assert_eq!(result_of(CachePhase::Expired), Some(CacheResult::Expired));
        assert_eq!(
            result_of(CachePhase::Disabled(NoCacheReason::OriginNotCache)),
            Some(CacheResult::Uncacheable)
        );
        assert_eq!(
            result_of(CachePhase::Disabled(NoCacheReason::Custom(HEAD_BYPASS))),
            Some(CacheResult::Bypass)
        );
        assert_eq!(
            result_of(CachePhase::Disabled(NoCacheReason::NeverEnabled)),
            None
        );
    }
}
