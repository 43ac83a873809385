//! The Pingora [`ProxyHttp`] adapter: a thin translation of the core's [`decide`] onto
//! Pingora's phases.
//!
//! - `request_filter` decides; a rejection is answered here (status, plain-text reason).
//! - `upstream_peer` resolves the origin and checks its addresses (see [`super::upstream`]).
//! - `upstream_request_filter` rewrites the request for the origin: `Host`, path, origin auth,
//!   and only the allowlisted client headers.
//! - `response_filter` caps `Cache-Control` for `expires` and drops `Set-Cookie`.
//! - `fail_to_proxy` maps upstream failures to 502 / 504; `logging` counts and logs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderName, Method};
use ixproxy_core::config::Upstream;
use ixproxy_core::decide::{is_forwarded_client_header, DROPPED_RESPONSE_HEADERS};
use ixproxy_core::expires::cap_cache_control;
use ixproxy_core::{decide, Decision, Forward, Outcome, RequestInfo, Sources};
use log::{info, warn};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::tls::CaType;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

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

/// An answer the gateway writes itself when the origin cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalFailure {
    status: u16,
    outcome: &'static str,
    reason: &'static str,
}

const ORIGIN_UNREACHABLE: LocalFailure = LocalFailure {
    status: 502,
    outcome: ORIGIN_ERROR,
    reason: "origin unreachable",
};
const ORIGIN_TOO_SLOW: LocalFailure = LocalFailure {
    status: 504,
    outcome: ORIGIN_TIMEOUT,
    reason: "origin timed out",
};
const ORIGIN_ADDRESS_DENIED: LocalFailure = LocalFailure {
    status: 403,
    outcome: "origin_denied",
    reason: "origin address is private, loopback or otherwise not public",
};
const INTERNAL: LocalFailure = LocalFailure {
    status: 500,
    outcome: ORIGIN_ERROR,
    reason: "internal error",
};

/// Per-request state shared across the phases.
#[derive(Default)]
pub struct RequestCtx {
    /// The core's decision when it forwards.
    forward: Option<Box<Forward>>,
    /// Outcome label once known (a rejection or a local failure).
    outcome: Option<&'static str>,
    /// The origin addresses checked for this request (reused on retries: no second lookup).
    candidates: Vec<SocketAddr>,
    /// Index in `candidates` of the address to connect to.
    candidate: usize,
    /// When the origin request started (resolution included).
    upstream_started: Option<Instant>,
    /// Time to the origin's response header.
    upstream_latency: Option<Duration>,
    /// Set by `upstream_peer` when it refuses or fails before connecting.
    failure: Option<LocalFailure>,
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
/// survive, then `Host`, the origin path and query, and the origin auth headers are set.
///
/// # Errors
/// A header value or path the HTTP types refuse (the core never produces one).
pub fn rewrite_upstream_request(req: &mut RequestHeader, forward: &Forward) -> Result<()> {
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
    for (name, value) in &forward.set_headers {
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
            _ => Some(LocalFailure {
                status: 400,
                outcome: ORIGIN_ERROR,
                reason: "bad request",
            }),
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
        let mut random = [0u8; 32];
        if getrandom::getrandom(&mut random).is_err() {
            ctx.outcome = Some(INTERNAL.outcome);
            respond_text(session, INTERNAL.status, &[], INTERNAL.reason).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let target = String::from_utf8_lossy(req.raw_path());
        let info = RequestInfo {
            method: req.method.as_str(),
            host: request_host(req),
            target: &target,
        };
        match decide(&self.sources, &info, unix_now(), &random) {
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
        let Some(forward) = ctx.forward.as_ref() else {
            ctx.failure = Some(INTERNAL);
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer without a forward decision",
            ));
        };
        if ctx.candidates.is_empty() {
            ctx.upstream_started = Some(Instant::now());
            let resolved = resolve_checked(
                &forward.origin.host,
                forward.origin.port,
                forward.allow_private,
                self.upstream.connect_timeout,
            )
            .await;
            match resolved {
                Ok(candidates) => ctx.candidates = candidates,
                Err(e) => {
                    let failure = match e {
                        ResolveError::Denied => ORIGIN_ADDRESS_DENIED,
                        ResolveError::TimedOut => ORIGIN_TOO_SLOW,
                        ResolveError::NotFound(_) => ORIGIN_UNREACHABLE,
                    };
                    ctx.failure = Some(failure);
                    let mut err = Error::explain(
                        ErrorType::HTTPStatus(failure.status),
                        format!("origin {}: {e}", forward.origin.host),
                    );
                    err.set_retry(false);
                    return Err(err);
                }
            }
        }
        let Some(addr) = ctx.candidates.get(ctx.candidate).copied() else {
            ctx.failure = Some(ORIGIN_UNREACHABLE);
            return Err(Error::explain(
                ErrorType::HTTPStatus(ORIGIN_UNREACHABLE.status),
                "no origin address left to try",
            ));
        };
        Ok(Box::new(build_peer(
            addr,
            &forward.origin,
            &self.upstream,
            self.ca.as_ref(),
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
        match ctx.forward.as_ref() {
            Some(forward) => rewrite_upstream_request(upstream_request, forward),
            None => Error::e_explain(ErrorType::InternalError, "no forward decision"),
        }
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if !upstream_response.status.is_informational() && ctx.upstream_latency.is_none() {
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
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let max_age = ctx.forward.as_ref().and_then(|f| f.max_age);
        rewrite_response(upstream_response, max_age)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let failure = ctx.failure.or_else(|| classify_error(e));
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
            if let Err(write_err) = respond_text(session, failure.status, &[], failure.reason).await
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
                "{} host={} source={} origin={} status={status} outcome={outcome} \
                 upstream_ms={}",
                req.method,
                request_host(req),
                forward.source,
                forward.origin.authority(),
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

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        // A refused origin address is a policy decision, logged by `logging` like rejections.
        ctx.failure == Some(ORIGIN_ADDRESS_DENIED)
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
        rewrite_upstream_request(&mut req, &f).expect("rewrite");

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
