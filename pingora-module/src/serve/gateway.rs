//! The Pingora [`ProxyHttp`] adapter: a thin translation of the core's [`decide`] onto
//! Pingora's phases.
//!
//! - `request_filter` refuses a GET/HEAD carrying a body (400), checks the header limits (431)
//!   and decides; a rejection is answered here (status, plain-text reason).
//! - `upstream_peer` starts the total origin deadline (`upstream.timeout`), resolves the
//!   current hop's origin and checks every address (see [`super::upstream`]).
//! - `upstream_request_filter` rewrites the request for the origin: `Host`, path, fresh origin
//!   auth headers for this attempt, and only the allowlisted client headers.
//! - `upstream_response_filter` follows redirects (the core re-validates the hop; the error
//!   it returns makes Pingora's proxy loop retry with the next hop before anything reached the
//!   client) and applies the core's response checks (content type 403, declared length 502).
//! - `upstream_response_body_filter` counts the streamed body against `max_body_bytes` and
//!   checks the deadline; an error there cuts the client connection mid-transfer.
//! - `response_filter` caps `Cache-Control` for `expires` and drops `Set-Cookie`.
//! - `fail_to_proxy` answers failures (502 / 504 / the core's status) while no header went
//!   out; `logging` counts and logs. [`super::deadline`] is the backstop for the deadline.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderName, Method};
use ixproxy_core::config::Upstream;
use ixproxy_core::decide::{
    check_request_body, check_request_headers, is_followed_redirect, is_forwarded_client_header,
    DROPPED_RESPONSE_HEADERS,
};
use ixproxy_core::expires::cap_cache_control;
use ixproxy_core::{decide, Decision, Forward, Outcome, Rejection, RequestInfo, Sources};
use log::{info, warn};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::tls::CaType;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::deadline;
use super::metrics::{Metrics, ORIGIN_ERROR, ORIGIN_TIMEOUT};
use super::upstream::{build_peer, resolve_checked, ResolveError};

/// The gateway: validated sources, upstream settings, trust anchors and metrics.
pub struct Gateway {
    sources: Sources,
    upstream: Upstream,
    ca: Option<Arc<CaType>>,
    metrics: Metrics,
}

impl Gateway {
    /// A gateway serving `sources`, connecting to origins with `upstream` settings and `ca`
    /// (see [`super::upstream::load_trust_anchors`]), counting into `metrics`.
    pub fn new(
        sources: Sources,
        upstream: Upstream,
        ca: Option<Arc<CaType>>,
        metrics: Metrics,
    ) -> Self {
        Gateway {
            sources,
            upstream,
            ca,
            metrics,
        }
    }
}

/// An answer the gateway writes itself when the origin cannot (or may not) be used.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalFailure {
    status: u16,
    outcome: &'static str,
    reason: Cow<'static, str>,
}

impl LocalFailure {
    const fn fixed(status: u16, outcome: &'static str, reason: &'static str) -> Self {
        LocalFailure {
            status,
            outcome,
            reason: Cow::Borrowed(reason),
        }
    }
}

impl From<Rejection> for LocalFailure {
    fn from(rejection: Rejection) -> Self {
        LocalFailure {
            status: rejection.status,
            outcome: rejection.outcome.as_str(),
            reason: Cow::Owned(rejection.reason),
        }
    }
}

const ORIGIN_UNREACHABLE: LocalFailure =
    LocalFailure::fixed(502, ORIGIN_ERROR, "origin unreachable");
const ORIGIN_TOO_SLOW: LocalFailure = LocalFailure::fixed(504, ORIGIN_TIMEOUT, "origin timed out");
const ORIGIN_ADDRESS_DENIED: LocalFailure = LocalFailure::fixed(
    403,
    "origin_denied",
    "origin address is private, loopback or otherwise not public",
);
const ORIGIN_BODY_TOO_LARGE: LocalFailure =
    LocalFailure::fixed(502, "origin_too_large", "origin response too large");
const INTERNAL: LocalFailure = LocalFailure::fixed(500, ORIGIN_ERROR, "internal error");

/// Per-request state shared across the phases.
#[derive(Default)]
pub struct RequestCtx {
    /// The core's decision when it forwards; replaced by the next hop when a redirect is
    /// followed.
    forward: Option<Box<Forward>>,
    /// Outcome label once known (a rejection or a local failure).
    outcome: Option<&'static str>,
    /// The checked addresses of the current hop's origin (reused on retries: no second
    /// lookup; cleared when a redirect moves to the next hop).
    candidates: Vec<SocketAddr>,
    /// Index in `candidates` of the address to connect to.
    candidate: usize,
    /// When the origin request started (first resolution included).
    upstream_started: Option<Instant>,
    /// `upstream_started` + `upstream.timeout`: the whole origin exchange (every hop, the
    /// response header and the body) must end before it.
    deadline: Option<Instant>,
    /// Time to the final origin response header.
    upstream_latency: Option<Duration>,
    /// Origin response body bytes received so far for the current response.
    body_bytes: u64,
    /// Why the gateway answers (or cut the transfer) itself, once decided.
    failure: Option<LocalFailure>,
    /// Set while a followed redirect is being retried (not an error worth a warning).
    following_redirect: bool,
}

impl RequestCtx {
    /// Time left before the deadline (the full timeout before the origin request starts).
    fn remaining(&self, timeout: Duration) -> Duration {
        self.deadline
            .map_or(timeout, |d| d.saturating_duration_since(Instant::now()))
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Records `failure` and returns the error that stops the proxy loop (never retried).
    fn fail(&mut self, failure: LocalFailure, context: String) -> Box<Error> {
        let mut err = Error::explain(ErrorType::HTTPStatus(failure.status), context);
        err.set_retry(false);
        self.failure = Some(failure);
        err
    }
}

/// Whether a client request carries a body (framing headers present, other than an explicit
/// `Content-Length: 0`).
fn has_request_body(req: &RequestHeader) -> bool {
    if req.headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    req.headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() != b"0")
}

/// Number of header fields and their total size (names plus values), as the core's
/// [`check_request_headers`] counts them.
fn header_totals(req: &RequestHeader) -> (usize, usize) {
    req.headers.iter().fold((0, 0), |(count, bytes), (n, v)| {
        (count + 1, bytes + n.as_str().len() + v.len())
    })
}

fn random_bytes() -> Option<[u8; 32]> {
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).ok().map(|()| random)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The Host a request was sent to: the `Host` header, or the HTTP/2 `:authority`.
fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// Writes a short plain-text answer (no body for HEAD).
async fn respond_text(
    session: &mut Session,
    status: u16,
    extra_headers: &[(&'static str, &'static str)],
    reason: &str,
) -> Result<()> {
    let body = Bytes::from(format!("{reason}\n"));
    let mut resp = ResponseHeader::build(status, Some(3 + extra_headers.len()))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    for (name, value) in extra_headers {
        resp.insert_header(*name, *value)?;
    }
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Rewrites the client request into the origin request: only the allowlisted client headers
/// survive, then `Host`, the origin path and query, and `auth_headers` (the origin auth
/// headers of this attempt, from [`Forward::auth_headers`]) are set.
///
/// # Errors
/// A header value or path the HTTP types refuse (the core never produces one).
pub fn rewrite_upstream_request(
    req: &mut RequestHeader,
    forward: &Forward,
    auth_headers: &[(&'static str, String)],
) -> Result<()> {
    let dropped: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|name| !is_forwarded_client_header(name.as_str()))
        .cloned()
        .collect();
    for name in &dropped {
        req.remove_header(name);
    }
    req.insert_header(header::HOST, forward.origin.authority())?;
    req.set_raw_path(forward.origin.path_and_query.as_bytes())?;
    for (name, value) in auth_headers {
        req.insert_header(*name, value.as_str())?;
    }
    Ok(())
}

/// Applies the response policy to the origin's response header: `Cache-Control` max-age capped
/// by `max_age` (from `expires`) and every [`DROPPED_RESPONSE_HEADERS`] removed.
///
/// # Errors
/// A header value the HTTP types refuse (not produced by the core).
pub fn rewrite_response(resp: &mut ResponseHeader, max_age: Option<u64>) -> Result<()> {
    if let Some(max_age) = max_age {
        let existing = resp
            .headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        let existing = (!existing.is_empty()).then_some(existing.as_str());
        let capped = cap_cache_control(existing, max_age);
        resp.insert_header(header::CACHE_CONTROL, capped)?;
    }
    for name in DROPPED_RESPONSE_HEADERS {
        resp.remove_header(name);
    }
    Ok(())
}

/// The answer for a proxy error not already classified by `upstream_peer`.
fn classify_error(e: &Error) -> Option<LocalFailure> {
    use ErrorType::*;
    if *e.esource() == ErrorSource::Downstream {
        // The client went away or sent garbage: nobody to answer, or a plain 400.
        return match e.etype() {
            WriteError | ReadError | ConnectionClosed | ReadTimedout | WriteTimedout => None,
            _ => Some(LocalFailure::fixed(
                400,
                Outcome::BadRequest.as_str(),
                "bad request",
            )),
        };
    }
    Some(match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => ORIGIN_TOO_SLOW,
        HTTPStatus(500) | InternalError if *e.esource() != ErrorSource::Upstream => INTERNAL,
        _ => ORIGIN_UNREACHABLE,
    })
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let Some(random) = random_bytes() else {
            ctx.outcome = Some(INTERNAL.outcome);
            respond_text(session, INTERNAL.status, &[], &INTERNAL.reason).await?;
            return Ok(true);
        };
        // Framing headers (HTTP/1) or a stream not ended with the headers (HTTP/2). Pingora has
        // already answered 400 to conflicting or invalid Content-Length values and to a
        // Transfer-Encoding not ending in chunked, and it drops Content-Length when
        // Transfer-Encoding is present (RFC 9112 §6.3), so the Content-Length +
        // Transfer-Encoding smuggling shape lands in this check too.
        let has_body = has_request_body(session.req_header()) || !session.is_body_empty();
        let req = session.req_header();
        let (count, bytes) = header_totals(req);
        let checked = check_request_body(req.method.as_str(), has_body)
            .and_then(|()| check_request_headers(&self.sources, count, bytes));
        let decision = match checked {
            Err(rejection) => Decision::Reject(rejection),
            Ok(()) => {
                let target = String::from_utf8_lossy(req.raw_path());
                let info = RequestInfo {
                    method: req.method.as_str(),
                    host: request_host(req),
                    target: &target,
                };
                decide(&self.sources, &info, unix_now(), &random)
            }
        };
        match decision {
            Decision::Forward(forward) => {
                ctx.forward = Some(forward);
                Ok(false)
            }
            Decision::Reject(rejection) => {
                ctx.outcome = Some(rejection.outcome.as_str());
                respond_text(
                    session,
                    rejection.status,
                    &rejection.headers,
                    &rejection.reason,
                )
                .await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        ctx.following_redirect = false;
        if ctx.deadline.is_none() {
            let now = Instant::now();
            ctx.upstream_started = Some(now);
            let deadline = now + self.upstream.timeout;
            ctx.deadline = Some(deadline);
            deadline::arm(deadline);
        }
        let remaining = ctx.remaining(self.upstream.timeout);
        if remaining.is_zero() {
            return Err(ctx.fail(ORIGIN_TOO_SLOW, "origin deadline passed".to_owned()));
        }
        let Some(forward) = ctx.forward.as_ref() else {
            return Err(ctx.fail(
                INTERNAL,
                "upstream_peer without a forward decision".to_owned(),
            ));
        };
        if ctx.candidates.is_empty() {
            let resolved = resolve_checked(
                &forward.origin.host,
                forward.origin.port,
                forward.allow_private,
                self.upstream.connect_timeout.min(remaining),
            )
            .await;
            match resolved {
                Ok(candidates) => {
                    ctx.candidates = candidates;
                    ctx.candidate = 0;
                }
                Err(e) => {
                    let failure = match e {
                        ResolveError::Denied => ORIGIN_ADDRESS_DENIED,
                        ResolveError::TimedOut => ORIGIN_TOO_SLOW,
                        ResolveError::NotFound(_) => ORIGIN_UNREACHABLE,
                    };
                    let context = format!("origin {}: {e}", forward.origin.host);
                    return Err(ctx.fail(failure, context));
                }
            }
        }
        let Some(addr) = ctx.candidates.get(ctx.candidate).copied() else {
            return Err(ctx.fail(
                ORIGIN_UNREACHABLE,
                "no origin address left to try".to_owned(),
            ));
        };
        let remaining = ctx.remaining(self.upstream.timeout);
        let Some(forward) = ctx.forward.as_ref() else {
            return Err(ctx.fail(
                INTERNAL,
                "upstream_peer without a forward decision".to_owned(),
            ));
        };
        Ok(Box::new(build_peer(
            addr,
            &forward.origin,
            &self.upstream,
            self.ca.as_ref(),
            remaining,
        )))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent yet: the next checked address of the same answer may be tried.
        if ctx.candidate + 1 < ctx.candidates.len() {
            ctx.candidate += 1;
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Every attempt gets its own origin auth headers: a request id is never sent twice.
        // The first attempt of a forward (or of a redirect hop) sends the headers the core just
        // made with it; a later one (another address, a stale pooled connection) makes new ones.
        let Some(forward) = ctx.forward.as_mut() else {
            return Err(ctx.fail(INTERNAL, "no forward decision".to_owned()));
        };
        let auth = if forward.set_headers.is_empty() {
            let Some(random) = random_bytes() else {
                return Err(ctx.fail(
                    INTERNAL,
                    "no randomness for the origin request id".to_owned(),
                ));
            };
            forward.auth_headers(&self.sources, unix_now(), &random)
        } else {
            std::mem::take(&mut forward.set_headers)
        };
        rewrite_upstream_request(upstream_request, forward, &auth)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        if ctx.past_deadline() {
            return Err(ctx.fail(ORIGIN_TOO_SLOW, "origin deadline passed".to_owned()));
        }
        let Some(forward) = ctx.forward.as_ref() else {
            return Err(ctx.fail(INTERNAL, "no forward decision".to_owned()));
        };
        let location = upstream_response
            .headers
            .get(header::LOCATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if let (true, Some(location)) = (is_followed_redirect(status), location) {
            // Nothing of this response reaches the client: the error below ends the attempt
            // before the header is written, the origin connection is closed (its body unread),
            // and the proxy loop asks `upstream_peer` for the next hop.
            let Some(random) = random_bytes() else {
                return Err(ctx.fail(INTERNAL, "no randomness".to_owned()));
            };
            return match forward.redirect(&self.sources, &location, unix_now(), &random) {
                Ok(next) => {
                    ctx.forward = Some(Box::new(next));
                    ctx.candidates.clear();
                    ctx.candidate = 0;
                    ctx.following_redirect = true;
                    let mut err = Error::explain(
                        ErrorType::Custom("origin redirect"),
                        format!("following a {status} from the origin"),
                    );
                    err.set_retry(true);
                    Err(err)
                }
                Err(rejection) => {
                    let context = format!("origin redirect refused: {}", rejection.reason);
                    Err(ctx.fail(rejection.into(), context))
                }
            };
        }
        let content_type = upstream_response
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let content_length = upstream_response
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Err(rejection) =
            forward.check_response(&self.sources, status, content_type, content_length)
        {
            let context = format!("origin response refused: {}", rejection.reason);
            return Err(ctx.fail(rejection.into(), context));
        }
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

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        let len = body.as_ref().map_or(0, |b| b.len() as u64);
        ctx.body_bytes = ctx.body_bytes.saturating_add(len);
        // An error here, once the header went out, cuts the client connection: the transfer
        // ends short of its Content-Length or without the last chunk, never complete-looking.
        if ctx.body_bytes > self.sources.limits().max_body_bytes {
            *body = None;
            let context = format!("origin body over {} bytes", ctx.body_bytes - len);
            return Err(ctx.fail(ORIGIN_BODY_TOO_LARGE, context));
        }
        if end_of_stream {
            deadline::disarm();
        } else if ctx.past_deadline() {
            *body = None;
            return Err(ctx.fail(
                ORIGIN_TOO_SLOW,
                "origin deadline passed mid-body".to_owned(),
            ));
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if session.req_header().method == Method::HEAD || matches!(status, 204 | 304) {
            // No body will follow: the origin exchange is over.
            deadline::disarm();
        }
        let max_age = ctx.forward.as_ref().and_then(|f| f.max_age);
        rewrite_response(upstream_response, max_age)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Self::CTX,
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
        let failure = ctx.failure.clone().or_else(|| {
            // A read that timed out on the clamped budget, or any error after the deadline.
            if ctx.past_deadline() && *e.esource() == ErrorSource::Upstream {
                Some(ORIGIN_TOO_SLOW)
            } else {
                classify_error(e)
            }
        });
        let Some(failure) = failure else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if ctx.outcome.is_none() {
            ctx.outcome = Some(failure.outcome);
        }
        // Once the origin's header went out, the status is committed: the connection is cut.
        if session.response_written().is_none() {
            if let Err(write_err) =
                respond_text(session, failure.status, &[], &failure.reason).await
            {
                warn!("cannot send the error response: {write_err}");
            }
        }
        FailToProxy {
            error_code: failure.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        deadline::disarm();
        let outcome = match (ctx.outcome, ctx.forward.is_some()) {
            (Some(outcome), _) => outcome,
            (None, true) if ctx.upstream_latency.is_some() => Outcome::Forwarded.as_str(),
            (None, true) => e
                .and_then(classify_error)
                .map_or(ORIGIN_ERROR, |f| f.outcome),
            // Never decided (the client went away before its request was read).
            (None, false) => return,
        };
        self.metrics.count(outcome);
        let status = session
            .response_written()
            .map_or(0, |resp| resp.status.as_u16());
        let req = session.req_header();
        // The path and query are never logged: they carry the signature and the origin URL.
        match ctx.forward.as_ref() {
            Some(forward) => info!(
                "{} host={} source={} origin={} redirects={} status={status} outcome={outcome} \
                 upstream_ms={}",
                req.method,
                request_host(req),
                forward.source,
                forward.origin.authority(),
                forward.redirects,
                ctx.upstream_latency
                    .map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string()),
            ),
            None => info!(
                "{} host={} status={status} outcome={outcome}",
                req.method,
                request_host(req)
            ),
        }
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &Self::CTX,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // A followed redirect is a normal retry of the proxy loop, counted in the final log line.
        ctx.following_redirect
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        // Policy refusals are logged by `logging` like rejections.
        ctx.failure.as_ref().is_some_and(|f| f.status == 403)
    }

    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        // Pingora puts this in its error logs; keep the signed target out of them.
        let req = session.req_header();
        format!("{} host={}", req.method, request_host(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ixproxy_core::origin::parse_origin;

    fn forward(url: &str, max_age: Option<u64>) -> Forward {
        Forward {
            source: "assets".to_owned(),
            origin: parse_origin(url).expect("origin"),
            allow_private: false,
            set_headers: vec![
                ("x-imgix-origin-secret", "hs".to_owned()),
                ("authorization", "Basic dTpw".to_owned()),
            ],
            max_age,
            auth_host: "o.example".to_owned(),
            redirects: 0,
        }
    }

    #[test]
    fn only_allowlisted_client_headers_reach_the_origin() {
        let mut req = RequestHeader::build("GET", b"/https%3A%2F%2Fo.example%2Fa.png?s=abc", None)
            .expect("req");
        for (name, value) in [
            ("Host", "gw.example.com"),
            ("Accept", "image/webp"),
            ("Range", "bytes=0-9"),
            ("User-Agent", "curl/8"),
            ("If-None-Match", "\"e\""),
            ("Cookie", "session=1"),
            ("Authorization", "Bearer client"),
            ("X-Imgix-Origin-Secret", "forged"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Proxy-Authorization", "Basic x"),
        ] {
            req.append_header(name, value).expect("header");
        }
        let f = forward("https://o.example:8443/a%20b.png?v=2", None);
        rewrite_upstream_request(&mut req, &f, &f.set_headers).expect("rewrite");

        assert_eq!(req.raw_path(), b"/a%20b.png?v=2");
        let get = |n: &str| {
            req.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().expect("ascii").to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("host"), ["o.example:8443"]);
        assert_eq!(
            get("x-imgix-origin-secret"),
            ["hs"],
            "client value replaced"
        );
        assert_eq!(
            get("authorization"),
            ["Basic dTpw"],
            "client value replaced"
        );
        assert_eq!(get("accept"), ["image/webp"]);
        assert_eq!(get("range"), ["bytes=0-9"]);
        assert_eq!(get("user-agent"), ["curl/8"]);
        assert_eq!(get("if-none-match"), ["\"e\""]);
        for gone in ["cookie", "x-forwarded-for", "proxy-authorization"] {
            assert!(get(gone).is_empty(), "{gone} must not reach the origin");
        }
    }

    #[test]
    fn responses_lose_set_cookie_and_get_a_capped_max_age() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.append_header("Cache-Control", "public, max-age=31536000")
            .expect("h");
        resp.append_header("Set-Cookie", "a=1").expect("h");
        resp.append_header("Set-Cookie", "b=2").expect("h");
        resp.append_header("ETag", "\"x\"").expect("h");
        rewrite_response(&mut resp, Some(60)).expect("rewrite");
        assert_eq!(resp.headers["cache-control"], "public, max-age=60");
        assert!(resp.headers.get("set-cookie").is_none());
        assert_eq!(resp.headers["etag"], "\"x\"");

        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.append_header("Cache-Control", "max-age=5").expect("h");
        rewrite_response(&mut resp, None).expect("rewrite");
        assert_eq!(
            resp.headers["cache-control"], "max-age=5",
            "untouched without expires"
        );

        let mut resp = ResponseHeader::build(200, None).expect("resp");
        rewrite_response(&mut resp, Some(30)).expect("rewrite");
        assert_eq!(resp.headers["cache-control"], "max-age=30");
    }

    fn req_with(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x?s=0", None).expect("req");
        for (n, v) in headers {
            req.append_header(n.to_string(), *v).expect("header");
        }
        req
    }

    #[test]
    fn request_bodies_and_header_totals_are_measured() {
        assert!(!has_request_body(&req_with(&[])));
        assert!(!has_request_body(&req_with(&[("Content-Length", "0")])));
        assert!(has_request_body(&req_with(&[("Content-Length", "1")])));
        assert!(has_request_body(&req_with(&[(
            "Transfer-Encoding",
            "chunked"
        )])));
        let (count, bytes) = header_totals(&req_with(&[("Accept", "a/b"), ("X-A", "1")]));
        assert_eq!((count, bytes), (2, "accept".len() + 3 + "x-a".len() + 1));
    }

    #[test]
    fn proxy_errors_map_to_502_or_504() {
        let up = |t: ErrorType| classify_error(&Error::new_up(t)).map(|f| (f.status, f.outcome));
        assert_eq!(up(ErrorType::ConnectTimedout), Some((504, ORIGIN_TIMEOUT)));
        assert_eq!(up(ErrorType::ReadTimedout), Some((504, ORIGIN_TIMEOUT)));
        assert_eq!(
            up(ErrorType::TLSHandshakeTimedout),
            Some((504, ORIGIN_TIMEOUT))
        );
        assert_eq!(up(ErrorType::ConnectRefused), Some((502, ORIGIN_ERROR)));
        assert_eq!(
            up(ErrorType::TLSHandshakeFailure),
            Some((502, ORIGIN_ERROR))
        );
        assert_eq!(up(ErrorType::InvalidCert), Some((502, ORIGIN_ERROR)));
        assert_eq!(up(ErrorType::ConnectionClosed), Some((502, ORIGIN_ERROR)));
        let gone = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(classify_error(&gone), None, "no answer to a closed client");
        assert_eq!(
            ORIGIN_ADDRESS_DENIED.outcome,
            Outcome::OriginDenied.as_str()
        );
    }
}
