//! The state of one client request across the gateway's phases ([`RequestCtx`]), and the few
//! rules about it that several phases share: the origin-header deadline, recording a failure,
//! the forward decision every origin phase needs.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ixproxy_core::cache::{CacheResult, CacheTier};
use ixproxy_core::{Attribution, Forward, Outcome, Rejection};
use pingora::{Error, ErrorType, Result};

use super::inflight::Slot;
use super::live::Live;
use super::metrics::InflightGauge;

/// Per-request state shared across the phases.
#[derive(Default)]
pub struct RequestCtx {
    /// The config generation the request started under, kept to its end across reloads.
    pub(super) live: Option<Arc<Live>>,
    /// This request's id (see [`access_log::kept_request_id`]), echoed as `X-Request-ID`.
    pub(super) request_id: String,
    /// When the request header was read, and the same moment in unix microseconds.
    pub(super) arrived: Option<(Instant, u64)>,
    /// The source and token the request is counted under.
    pub(super) attribution: Attribution,
    /// The request counted in `ixproxy_upstream_inflight` while it fetches from the origin.
    pub(super) inflight_gauge: Option<InflightGauge>,
    /// The core's decision when it forwards; replaced by the next hop when a redirect is
    /// followed.
    pub(super) forward: Option<Box<Forward>>,
    /// The outcome of a rejection answered in `request_filter`.
    pub(super) outcome: Option<Outcome>,
    /// The checked addresses of the current hop's origin (reused on retries: no second
    /// lookup; cleared when a redirect moves to the next hop).
    pub(super) candidates: Vec<SocketAddr>,
    /// Index in `candidates` of the address to connect to.
    pub(super) candidate: usize,
    /// When the origin request started (first resolution included).
    pub(super) upstream_started: Option<Instant>,
    /// `upstream_started` + `upstream.timeout`: the final origin response header (every hop
    /// included) must arrive before it.
    pub(super) deadline: Option<Instant>,
    /// The final origin response header was accepted: the deadline no longer applies.
    pub(super) header_done: bool,
    /// This request's origin fetch, counted against `max_inflight_per_source` until the
    /// context is dropped.
    pub(super) inflight: Option<Slot>,
    /// Time to the final origin response header.
    pub(super) upstream_latency: Option<Duration>,
    /// Origin response body bytes received so far for the current response.
    pub(super) body_bytes: u64,
    /// Why the gateway answers (or cut the transfer) itself, once decided.
    pub(super) failure: Option<Rejection>,
    /// Set while a followed redirect is being retried (not an error worth a warning).
    pub(super) following_redirect: bool,
    /// The response cache was looked up for this request.
    pub(super) cache_used: bool,
    /// What the cache did, once the response header went out.
    pub(super) cache_result: Option<CacheResult>,
    /// Where the cache's answer came from, with `cache_result`.
    pub(super) cache_tier: Option<CacheTier>,
    /// The client failed (a write timed out, it went away) while Pingora kept a cache fill
    /// going: the fill ends at the next origin body chunk. Atomic because Pingora reports it
    /// through a hook that only sees `&ctx`.
    pub(super) client_gone: AtomicBool,
    /// A cache hit the source's current policy refuses: answered as that origin answer would
    /// be, without an origin fetch.
    pub(super) hit_refused: Option<Rejection>,
    /// The fallback image in progress or served (see [`super::fallback`]); `None` until a
    /// failure takes one.
    pub(super) fallback: Option<Box<super::fallback::FallbackState>>,
}

impl RequestCtx {
    /// Time left before the deadline (the full timeout before the origin request starts).
    pub(super) fn remaining(&self, timeout: Duration) -> Duration {
        self.deadline
            .map_or(timeout, |d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the origin-header deadline has passed while it still applies.
    pub(super) fn past_deadline(&self) -> bool {
        !self.header_done && self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Records `failure` and returns the error that stops the proxy loop (never retried).
    pub(super) fn fail(&mut self, failure: Rejection, context: String) -> Box<Error> {
        let mut err = Error::explain(ErrorType::HTTPStatus(failure.status()), context);
        err.set_retry(false);
        self.failure = Some(failure);
        err
    }

    /// [`Self::fail`], unless the source's fallback image takes over (see
    /// [`super::fallback::on_failure`]; `target` is the client's raw request target): then the
    /// error that ends this attempt for the fallback's.
    pub(super) fn fail_or_fallback(
        &mut self,
        target: &[u8],
        failure: Rejection,
        context: String,
    ) -> Box<Error> {
        if self.may_fall_back() {
            let why = super::fallback::Why::Failed(failure.clone());
            if let Some(err) = super::fallback::on_failure(self, target, why) {
                return err;
            }
        }
        self.fail(failure, context)
    }

    /// The fallback for a proxy error Pingora reports (a failed connect, a transport error)
    /// once it is not retried: the error to end the attempt with when the request takes its
    /// fallback image (or gives the original answer after one), `None` to keep `e`.
    pub(super) fn fallback_for_error(&mut self, e: &Error, target: &[u8]) -> Option<Box<Error>> {
        if !self.may_fall_back() {
            return None;
        }
        let why = super::fallback::Why::Failed(self.classify(e)?);
        super::fallback::on_failure(self, target, why)
    }

    /// Whether a failure of this request could take a fallback image: its source has one, or
    /// one is in progress. The one check a source without fallbacks pays, on failures only.
    pub(super) fn may_fall_back(&self) -> bool {
        self.fallback.is_some()
            || self
                .forward
                .as_ref()
                .is_some_and(|f| f.source().has_fallbacks())
    }

    /// The gateway's answer to a proxy error the phases did not classify: a timeout once the
    /// origin-header deadline passed, else the core's reading of the error (see
    /// [`super::failure::answer`]); `None` when the client is gone.
    pub(super) fn classify(&self, e: &Error) -> Option<Rejection> {
        // A read that timed out on the clamped budget, or any error after the deadline.
        if self.past_deadline() && *e.esource() == pingora::ErrorSource::Upstream {
            Some(Rejection::origin_timeout())
        } else {
            super::failure::answer(e, self.header_done)
        }
    }

    /// The forward decision of this request, which every origin phase needs; an internal
    /// error (a 500, recorded) when there is none (a phase Pingora runs only after
    /// `request_filter` forwarded, so it cannot happen).
    pub(super) fn decided(&mut self, phase: &str) -> Result<&Forward> {
        self.decided_with_id(phase).map(|(forward, _)| forward)
    }

    /// [`Self::decided`] with the request's id, for the phase that writes both into the origin
    /// request.
    pub(super) fn decided_with_id(&mut self, phase: &str) -> Result<(&Forward, &str)> {
        match self.forward {
            Some(ref forward) => Ok((forward, &self.request_id)),
            None => Err(self.fail(
                Rejection::internal(),
                format!("{phase} without a forward decision"),
            )),
        }
    }
}
