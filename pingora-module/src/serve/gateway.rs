//! The Pingora [`ProxyHttp`] adapter: a thin translation of the core's [`decide`] onto
//! Pingora's phases.
//!
//! - `early_request_filter` ends the client-header deadline (see [`super::deadline`]).
//! - `request_filter` refuses a GET/HEAD carrying a body (400), checks the header limits (431)
//!   and decides; a rejection is answered here (status, plain-text reason).
//! - With the response cache on (see [`super::cache`]), the cache callbacks run after the
//!   decision: only a forward is looked up, under the core's key; a hit is served without any
//!   origin request.
//! - `proxy_upstream_filter` (only when the origin is needed: no cache, a miss, a stale entry)
//!   takes one of the source's in-flight slots (503 `overloaded` when there is none, see
//!   [`super::inflight`]).
//! - `upstream_peer` starts the origin-header deadline (`upstream.timeout`, every hop
//!   together), resolves the current hop's origin and has the core check every address (see
//!   [`super::resolve`]); `connected_to_upstream` tells the deadline which socket to cut.
//! - `upstream_request_filter` rewrites the request for the origin: `Host`, path, fresh origin
//!   auth headers for this attempt, and only the allowlisted client headers.
//! - `upstream_response_filter` follows redirects (the core re-validates the hop; the error
//!   it returns makes Pingora's proxy loop retry with the next hop before anything reached the
//!   client) and applies the core's response checks (content type 403, declared length 502).
//! - `upstream_response_body_filter` counts the streamed body against `max_body_bytes`; an
//!   error there cuts the client connection mid-transfer. A pause inside the body is bounded by
//!   the per-read `upstream.body_timeout` (see [`super::peer`]), never by `upstream.timeout`.
//!   The core's response edits (the header allowlist, the policy `Cache-Control`) are applied
//!   in `upstream_response_filter`, before the cache stores the answer; `response_filter`, which
//!   runs for hits too, caps `Cache-Control` at this URL's `expires` and adds `Cache-Status`.
//! - A source's fallback image (see [`super::fallback`]) replaces an origin 404/410/5xx or a
//!   failure of the fetch through the redirect mechanism: the phase that sees it (or
//!   `fail_to_connect` / `error_while_proxy` for a transport failure) ends the attempt with a
//!   retryable error and swaps the forward for the image's.
//! - `fail_to_proxy` answers failures with the core's rejection while no header went out (a
//!   Pingora error becomes the core's [`ixproxy_core::Failure`] in [`super::failure`]);
//!   `logging` counts the request's one outcome and logs.
//!
//! The request's state across these phases is [`super::request_ctx::RequestCtx`]; reading and
//! writing Pingora's HTTP heads is [`super::http`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue};
use ixproxy_core::access_log::{self, AccessRecord, REQUEST_ID_HEADER};
use ixproxy_core::addr::IpNet;
use ixproxy_core::cache::{
    self as cache_rules, CacheResult, CacheTier, CACHE_STATUS, STORED_ORIGIN_HEADER,
};
use ixproxy_core::config::AccessLogFormat;
use ixproxy_core::fallback::FALLBACK_DROPPED_CLIENT_HEADERS;
use ixproxy_core::request::{check_request_body, check_request_headers};
use ixproxy_core::response::{is_followed_redirect, OriginHead, ResponseEdits};
use ixproxy_core::{decide_attributed, Attribution, Decision, Outcome, Rejection, RequestInfo};
use log::{debug, warn};
use pingora::cache::{
    CacheKey, CacheMeta, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use rand::RngCore as _;

use super::cache::{self, ResponseCache, HEAD_BYPASS};
use super::deadline::{self, OriginSocket};
use super::failure;
use super::fallback;
use super::http::{
    apply_response_edits, gateway_response_headers, has_request_body, header_totals, origin_head,
    request_host, respond, rewrite_upstream_request,
};
use super::live::{Live, LiveConfig};
use super::metrics::Metrics;
use super::peer::build_peer;
use super::request_ctx::RequestCtx;
use super::resolve::candidates;

/// The gateway: the reloadable config (sources, upstream settings, trust anchors, the origin
/// resolver, the in-flight counters; see [`super::live`]), metrics and the response cache (when
/// on).
pub struct Gateway {
    live: LiveConfig,
    metrics: Metrics,
    cache: Option<ResponseCache>,
}

impl Gateway {
    /// A gateway serving the current generation of `live` to each new request, counting into
    /// `metrics`, answering from `cache` when there is one.
    pub fn new(live: LiveConfig, metrics: Metrics, cache: Option<ResponseCache>) -> Self {
        Gateway {
            live,
            metrics,
            cache,
        }
    }

    /// The client address of `session` under the core's `trusted_proxies` rule; `None` for a
    /// Unix-socket client.
    fn client_ip(session: &Session, trusted_proxies: &[IpNet]) -> Option<std::net::IpAddr> {
        let peer = session.client_addr()?.as_inet()?.ip();
        if trusted_proxies.is_empty() {
            // Nothing is believed: no header lookup.
            return Some(peer);
        }
        let forwarded = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        Some(access_log::client_ip(peer, forwarded, trusted_proxies))
    }

    /// The edits that make a fallback image's answer the client's (see [`super::fallback`]):
    /// the core's checks, then the original answer's status on `resp`, and the original's
    /// outcome counted. A fallback that fails them gives the original answer (the error).
    fn fallback_edits(
        ctx: &mut RequestCtx,
        target: &[u8],
        resp: &mut ResponseHeader,
        head: &OriginHead,
    ) -> Result<ResponseEdits> {
        let Some((status, outcome)) = fallback::original(ctx) else {
            return Err(ctx.fail(Rejection::internal(), "fallback without state".to_owned()));
        };
        let checked = ctx
            .decided("upstream_response_filter")?
            .check_fallback_response(head, status);
        match checked {
            Ok(edits) => {
                fallback::served(ctx);
                resp.set_status(status)?;
                resp.set_reason_phrase(None)?;
                if outcome.is_some() {
                    ctx.outcome = outcome;
                }
                Ok(edits)
            }
            Err(rejection) => {
                let context = format!("fallback image refused: {}", rejection.reason());
                Err(ctx.fail_or_fallback(target, rejection, context))
            }
        }
    }

    /// The config generation of this request (taken when its context was made).
    fn live(&self, ctx: &RequestCtx) -> Arc<Live> {
        ctx.live
            .as_ref()
            .map_or_else(|| self.live.current(), Arc::clone)
    }
}

/// `N` random bytes from the thread's CSPRNG (ChaCha, seeded and periodically reseeded from
/// the operating system): request ids and origin request ids need no system call each.
fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    let mut random = [0u8; N];
    rand::thread_rng()
        .try_fill_bytes(&mut random)
        .ok()
        .map(|()| random)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            live: Some(self.live.current()),
            ..RequestCtx::default()
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        deadline::client_header_received();
        ctx.arrived = Some((Instant::now(), unix_micros()));
        let client_ids = session.req_header().headers.get_all(REQUEST_ID_HEADER);
        ctx.request_id = access_log::kept_request_id(client_ids.iter().map(HeaderValue::as_bytes))
            .map_or_else(
                || access_log::new_request_id(random_bytes().unwrap_or_default()),
                str::to_owned,
            );
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // Framing headers (HTTP/1) or a stream not ended with the headers (HTTP/2). Pingora has
        // already answered 400 to conflicting or invalid Content-Length values and to a
        // Transfer-Encoding not ending in chunked, and it drops Content-Length when
        // Transfer-Encoding is present (RFC 9112 §6.3), so the Content-Length +
        // Transfer-Encoding smuggling shape lands in this check too.
        let has_body = has_request_body(session.req_header()) || !session.is_body_empty();
        let req = session.req_header();
        let live = self.live(ctx);
        let checked = check_request_body(req.method.as_str(), has_body)
            .and_then(|()| check_request_headers(&live.sources, header_totals(req)));
        let (decision, attribution) = match checked {
            Err(rejection) => (
                Decision::Reject(rejection),
                Attribution::of_host(&live.sources, request_host(req)),
            ),
            Ok(()) => {
                // A valid target (every signed one) is borrowed after the fast UTF-8 check;
                // `from_utf8_lossy` walks it chunk by chunk even then.
                let raw = req.raw_path();
                let target = std::str::from_utf8(raw)
                    .map_or_else(|_| String::from_utf8_lossy(raw), std::borrow::Cow::Borrowed);
                let info = RequestInfo {
                    method: req.method.as_str(),
                    host: request_host(req),
                    target: &target,
                };
                decide_attributed(&live.sources, &info, unix_now())
            }
        };
        if let (Some(series), Some(token)) =
            (live.series.of(&attribution), attribution.token_position())
        {
            series.count_token(token);
        }
        ctx.attribution = attribution;
        match decision {
            Decision::Forward(forward) => {
                ctx.forward = Some(forward);
                Ok(false)
            }
            Decision::Reject(rejection) => {
                ctx.outcome = Some(rejection.outcome());
                respond(session, &rejection, &ctx.request_id).await?;
                Ok(true)
            }
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        // Only a decided forward reaches here: the cache never answers an unsigned, expired or
        // refused request.
        if let (Some(cache), true) = (
            self.cache.as_ref(),
            ctx.forward.is_some() && cache_rules::may_look_up(session.req_header().method.as_str()),
        ) {
            cache.enable(session);
            ctx.cache_used = true;
        }
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        // Called before any origin request: the key is the URL the client signed, whatever
        // redirect hops follow.
        match ctx.forward.as_ref() {
            Some(forward) => Ok(ResponseCache::key(forward)),
            None => Error::e_explain(ErrorType::InternalError, "cache key without a forward"),
        }
    }

    fn cache_miss(&self, session: &mut Session, _ctx: &mut Self::CTX) {
        if cache_rules::may_fill(session.req_header().method.as_str()) {
            session.cache.cache_miss();
        } else {
            // A HEAD goes to the origin as a HEAD and stores nothing.
            session.cache.disable(NoCacheReason::Custom(HEAD_BYPASS));
        }
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<ForcedFreshness>> {
        // A stored answer is checked against the source's current policy as an origin answer
        // is: one the policy now refuses is answered like that origin answer, without the
        // origin (see `proxy_upstream_filter`).
        let stored = meta.response_header();
        let stored_origin = stored
            .headers
            .get(STORED_ORIGIN_HEADER)
            .and_then(|v| v.to_str().ok());
        let checked = ctx
            .decided("cache_hit_filter")?
            .check_stored(&origin_head(stored), stored_origin);
        if let Err(rejection) = checked {
            ctx.hit_refused = Some(rejection);
            return Ok(Some(ForcedFreshness::ForceMiss));
        }
        // A HEAD never revalidates (that would fetch a body for it): a stale entry is a miss.
        let fills = cache_rules::may_fill(session.req_header().method.as_str());
        Ok((!is_fresh && !fills).then_some(ForcedFreshness::ForceMiss))
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        // The key holds no params: an image they were appended to is not stored (the core's
        // rule, README: Fallback images).
        if ctx
            .forward
            .as_deref()
            .is_some_and(|forward| !forward.storable_under_request_key())
        {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::Custom(
                "fallback-params",
            )));
        }
        Ok(cache::cacheability(resp, SystemTime::now()))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
        _error: Option<&Error>,
    ) -> bool {
        // A stale entry is revalidated or replaced, never served: the origin's failure is the
        // client's answer, as without the cache.
        false
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        // The origin is needed (no cache, a miss, a stale entry): one in-flight slot for this
        // request's origin fetch, every redirect hop included. A hit never takes one.
        if let Some(rejection) = ctx.hit_refused.take() {
            // Refused like an origin answer, so it takes the source's error image like one: the
            // image is then fetched as this request's origin URL.
            let fell_back = ctx.may_fall_back()
                && fallback::instead_of(ctx, session.req_header().raw_path(), &rejection);
            if !fell_back {
                ctx.outcome = Some(rejection.outcome());
                respond(session, &rejection, &ctx.request_id).await?;
                return Ok(false);
            }
        }
        let Some(forward) = ctx.forward.as_ref() else {
            return Ok(true);
        };
        let live = self.live(ctx);
        match live.inflight.acquire(&live.sources, forward.source_name()) {
            Ok(slot) => {
                ctx.inflight = slot;
                ctx.inflight_gauge = live
                    .series
                    .of(&ctx.attribution)
                    .map(super::metrics::SourceSeries::inflight);
                Ok(true)
            }
            Err(rejection) => {
                ctx.outcome = Some(rejection.outcome());
                respond(session, &rejection, &ctx.request_id).await?;
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        ctx.following_redirect = false;
        let live = self.live(ctx);
        if ctx.deadline.is_none() {
            let now = Instant::now();
            ctx.upstream_started = Some(now);
            let deadline = now + live.upstream.timeout;
            ctx.deadline = Some(deadline);
            deadline::arm_origin(deadline, ctx.attribution.source());
        }
        // A new attempt: the previous one's connection (if any) is not this request's any more.
        deadline::origin_socket(None);
        let remaining = ctx.remaining(live.upstream.timeout);
        // The client's target, for a fallback image's params: read only where one may be taken.
        let target = || session.req_header().raw_path();
        if remaining.is_zero() {
            return Err(ctx.fail_or_fallback(
                target(),
                Rejection::origin_timeout(),
                "origin deadline passed".to_owned(),
            ));
        }
        if ctx.candidates.is_empty() {
            let forward = ctx.decided("upstream_peer")?;
            let origin = forward.origin();
            let resolved = match live
                .resolver
                .resolve(&origin.host, origin.port, remaining)
                .await
            {
                Ok(addrs) => forward
                    .check_resolved(addrs.iter().map(SocketAddr::ip))
                    .map(|()| addrs)
                    .map_err(|rejection| {
                        let why = rejection.reason().to_owned();
                        (rejection, why)
                    }),
                Err(e) => {
                    let rejection = failure::of_resolve(&e)
                        .rejection()
                        .unwrap_or_else(Rejection::origin_error);
                    Err((rejection, e.to_string()))
                }
            };
            match resolved {
                Ok(addrs) => {
                    ctx.candidates = candidates(&addrs);
                    ctx.candidate = 0;
                }
                Err((rejection, why)) => {
                    let context = format!("origin {}: {why}", origin.host);
                    return Err(ctx.fail_or_fallback(target(), rejection, context));
                }
            }
        }
        let Some(addr) = ctx.candidates.get(ctx.candidate).copied() else {
            return Err(ctx.fail_or_fallback(
                target(),
                Rejection::origin_error(),
                "no origin address left to try".to_owned(),
            ));
        };
        let remaining = ctx.remaining(live.upstream.timeout);
        let forward = ctx.decided("upstream_peer")?;
        Ok(Box::new(build_peer(
            addr,
            forward.origin(),
            &live.upstream,
            live.ca.as_ref(),
            remaining,
        )))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        // A pooled connection's digest has its addresses already: no system call per request.
        let known = digest
            .and_then(|d| d.socket_digest.as_deref())
            .and_then(|s| Some((*s.local_addr()?.as_inet()?, *s.peer_addr()?.as_inet()?)));
        let socket = match known {
            Some((local, peer)) => Some(OriginSocket::with_addrs(fd, local, peer)),
            None => OriginSocket::of(fd),
        };
        deadline::origin_socket(socket);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent yet: the next checked address of the same answer may be tried.
        if ctx.candidate + 1 < ctx.candidates.len() {
            ctx.candidate += 1;
            e.set_retry(true);
        } else if !e.retry() {
            if let Some(err) = ctx.fallback_for_error(&e, session.req_header().raw_path()) {
                return err;
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Every attempt (another address, a stale pooled connection, a redirect hop) gets its
        // own origin auth headers: a request id is never sent twice.
        let Some(random) = random_bytes::<32>() else {
            return Err(ctx.fail(
                Rejection::internal(),
                "no randomness for the origin request id".to_owned(),
            ));
        };
        let cached = ctx.cache_used;
        let (forward, request_id) = ctx.decided_with_id("upstream_request_filter")?;
        let auth = forward.auth_headers(unix_now(), &random);
        let is_fallback = forward.fallback_kind().is_some();
        rewrite_upstream_request(upstream_request, forward, auth, cached, request_id)?;
        if is_fallback {
            for name in FALLBACK_DROPPED_CLIENT_HEADERS {
                upstream_request.remove_header(name);
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        let target = || session.req_header().raw_path();
        if ctx.past_deadline() {
            return Err(ctx.fail_or_fallback(
                target(),
                Rejection::origin_timeout(),
                "origin deadline passed".to_owned(),
            ));
        }
        let cache_used = ctx.cache_used;
        let forward = ctx.decided("upstream_response_filter")?;
        let head = origin_head(upstream_response);
        if let (true, Some(location)) = (is_followed_redirect(head.status()), head.location()) {
            // Nothing of this response reaches the client: the error below ends the attempt
            // before the header is written, the origin connection is closed (its body unread),
            // and the proxy loop asks `upstream_peer` for the next hop.
            return match forward.redirect(location) {
                Ok(next) => {
                    deadline::origin_socket(None);
                    ctx.forward = Some(Box::new(next));
                    ctx.candidates.clear();
                    ctx.candidate = 0;
                    ctx.following_redirect = true;
                    let mut err = Error::explain(
                        ErrorType::Custom("origin redirect"),
                        format!("following a {} from the origin", head.status()),
                    );
                    err.set_retry(true);
                    Err(err)
                }
                Err(rejection) => {
                    let context = format!("origin redirect refused: {}", rejection.reason());
                    Err(ctx.fail_or_fallback(target(), rejection, context))
                }
            };
        }
        let edits = if forward.fallback_kind().is_some() {
            Self::fallback_edits(ctx, target(), upstream_response, &head)?
        } else {
            if forward.source().has_fallbacks() {
                let why = fallback::Why::Answer(head.status());
                if let Some(err) = fallback::on_failure(ctx, target(), why) {
                    return Err(err);
                }
            }
            match ctx
                .decided("upstream_response_filter")?
                .check_response(&head)
            {
                Ok(edits) => edits,
                Err(rejection) => {
                    let context = format!("origin response refused: {}", rejection.reason());
                    return Err(ctx.fail_or_fallback(target(), rejection, context));
                }
            }
        };
        let forward = ctx.decided("upstream_response_filter")?;
        // The stored head carries the uncapped value; each response gets its own URL's cap in
        // `response_filter` (two URLs for one origin object share the entry).
        let edits = cache_rules::storage_edits(edits);
        // Without the cache, the gateway's own headers (CORS, dl) go into the head rebuilt here;
        // with it they are added per response in `response_filter`, never stored.
        let gateway = (!cache_used).then(|| (forward, session.req_header()));
        apply_response_edits(upstream_response, edits, gateway)?;
        if cache_used {
            // Stored with the answer, so a hit is re-checked for the hop that gave it.
            upstream_response
                .insert_header(STORED_ORIGIN_HEADER, forward.origin().to_url_string())?;
        }
        // The origin-header phase is over: from here only per-read timeouts apply (the body's
        // pauses, the client's writes), so a slow download is never cut by upstream.timeout.
        ctx.header_done = true;
        deadline::disarm();
        ctx.body_bytes = 0;
        if ctx.upstream_latency.is_none() {
            if let Some(started) = ctx.upstream_started {
                let latency = started.elapsed();
                ctx.upstream_latency = Some(latency);
                self.metrics.observe_upstream_latency(latency);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if resp.status.is_informational() {
            return Ok(());
        }
        resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        if ctx.cache_used {
            // Only what the cache stored carries it.
            resp.remove_header(STORED_ORIGIN_HEADER);
        }
        // Only a URL with `expires` caps anything: the stored value is read for those alone.
        if let Some(max_age) = ctx.forward.as_ref().and_then(|f| f.max_age()) {
            let stored = cache::joined(resp, header::CACHE_CONTROL);
            if let Some(capped) =
                cache_rules::client_cache_control(stored.as_deref(), Some(max_age))
            {
                resp.insert_header(header::CACHE_CONTROL, capped)?;
            }
        }
        if let (true, Some(forward)) = (ctx.cache_used, ctx.forward.as_ref()) {
            // A hit or a fill: the stored head has none of the gateway's own headers.
            let vary = forward
                .cors()
                .needs_request_origin()
                .then(|| cache::joined(resp, header::VARY))
                .flatten();
            let status = resp.status;
            gateway_response_headers(
                forward,
                session.req_header(),
                status,
                vary.as_deref(),
                |name, value| resp.insert_header(name, value),
            )?;
        }
        if ctx.cache_used {
            if let Some(result) = cache::result_of(session.cache.phase()) {
                ctx.cache_result = Some(result);
                ctx.cache_tier = self
                    .cache
                    .as_ref()
                    .map(|cache| cache.tier_of(result, &mut session.cache));
                resp.insert_header(CACHE_STATUS, result.cache_status())?;
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if ctx.client_gone.load(Ordering::Relaxed) {
            // No client reads this fill any more: stop buffering the origin's body (the
            // request ends, its slot and origin connection go, nothing is stored). Requests
            // waiting on the cache lock compete again.
            *body = None;
            return Err(
                Error::explain(ErrorType::WriteError, "client gone: cache fill ended").into_down(),
            );
        }
        let len = body.as_ref().map_or(0, |b| b.len() as u64);
        ctx.body_bytes = ctx.body_bytes.saturating_add(len);
        // An error here, once the header went out, cuts the client connection: the transfer
        // ends short of its Content-Length or without the last chunk, never complete-looking.
        if ctx
            .forward
            .as_ref()
            .is_some_and(|f| f.body_over_limit(ctx.body_bytes))
        {
            *body = None;
            let context = format!("origin body over {} bytes", ctx.body_bytes - len);
            return Err(ctx.fail(Rejection::origin_too_large(), context));
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        // Once a response header went to the client nothing may be retried; otherwise follow
        // Pingora's default (a stale pooled connection is retried, a redirect hop is taken).
        if session.response_written().is_some()
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        // A transport failure before any header went out (the phases' own refusals are
        // recorded in `ctx.failure` and took their fallback there).
        if !e.retry() && session.response_written().is_none() && ctx.failure.is_none() {
            if let Some(err) = ctx.fallback_for_error(&e, session.req_header().raw_path()) {
                return err;
            }
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        // The origin is done with; writing the answer must not be cut by the backstop.
        deadline::disarm();
        let failure = ctx.failure.clone().or_else(|| ctx.classify(e));
        let Some(failure) = failure else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        // Pingora does not reuse a client connection after a proxy failure (its reuse flag is
        // honoured only before an origin was chosen), so the reply must say so (SPEC §6): a
        // pooling client then never sends its next request into a closing connection.
        session.set_keepalive(None);
        // Once the origin's header went out, the status is committed: the connection is cut.
        if session.response_written().is_none() {
            if let Err(write_err) = respond(session, &failure, &ctx.request_id).await {
                warn!("cannot send the error response: {write_err}");
            }
        }
        let error_code = failure.status();
        ctx.failure = Some(failure);
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        deadline::disarm();
        // One outcome per client request: a rejection, the gateway's own answer or cut, the
        // client leaving early, or the origin's answer passed on whole.
        let outcome = match (ctx.outcome, &ctx.failure, ctx.forward.is_some()) {
            (Some(outcome), _, _) => outcome,
            (None, Some(failure), _) => failure.outcome(),
            (None, None, true) => match e {
                None => Outcome::Forwarded,
                Some(e) => failure::answer(e, ctx.header_done)
                    .map_or(Outcome::ClientClosed, |r| r.outcome()),
            },
            // Never decided (the client went away before its request was read).
            (None, None, false) => return,
        };
        // The fetch is over (its slot goes when the context is dropped).
        ctx.inflight_gauge = None;
        let live = self.live(ctx);
        let bytes_sent = session.body_bytes_sent() as u64;
        if let Some(series) = live.series.of(&ctx.attribution) {
            series.count(outcome, bytes_sent);
        }
        if ctx.cache_used {
            // A lookup whose origin fetch failed before any header went out counts as a miss.
            self.metrics.count_cache(
                ctx.cache_result.unwrap_or(CacheResult::Miss),
                ctx.cache_tier.unwrap_or(CacheTier::None),
            );
        }
        if live.access_log == AccessLogFormat::Off {
            return;
        }
        let status = session
            .response_written()
            .map_or(0, |resp| resp.status.as_u16());
        let (arrived, arrived_micros) = ctx
            .arrived
            .unwrap_or_else(|| (Instant::now(), unix_micros()));
        let req = session.req_header();
        let record = AccessRecord {
            ts_micros: arrived_micros,
            request_id: &ctx.request_id,
            client_ip: Self::client_ip(session, &live.trusted_proxies),
            method: req.method.as_str(),
            host: request_host(req),
            source: ctx.attribution.source().map(|s| s.name.as_str()),
            outcome,
            status,
            // A fallback served: the client's own origin URL, not the image's.
            origin: ctx
                .fallback
                .as_ref()
                .and_then(|f| f.original())
                .or(ctx.forward.as_deref())
                .map(|f| f.origin()),
            bytes_sent,
            duration_us: access_log::micros(arrived.elapsed()),
            upstream_us: ctx.upstream_latency.map(access_log::micros),
            cache: ctx.cache_result,
        };
        super::access::log(&record, live.access_log);
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &Self::CTX,
        error: &Error,
        context: ProxyWarnLogContext,
    ) -> bool {
        if matches!(context, ProxyWarnLogContext::DownstreamCache) {
            // Pingora calls this where it ignores a client's failure to finish a cache fill
            // alone; the fill is ended instead (see `upstream_response_body_filter`), so a
            // client that stops reading cannot make the gateway buffer whole objects.
            debug!("client failed during a cache fill, the fill ends: {error}");
            ctx.client_gone.store(true, Ordering::Relaxed);
            return true;
        }
        // A followed redirect is a normal retry of the proxy loop, counted in the final log line.
        ctx.following_redirect
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        // Policy refusals are logged by `logging` like rejections.
        ctx.failure
            .as_ref()
            .is_some_and(|f| f.outcome().is_policy_refusal())
    }

    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        // Pingora puts this in its error logs; keep the signed target out of them.
        let req = session.req_header();
        format!("{} host={}", req.method, request_host(req))
    }
}
