//! Fallback images on the native gateway (SPEC §15): the origin's 404/410/5xx or a failure of
//! the fetch becomes a hop to the source's fallback image, taken by the same mechanism as a
//! redirect (the attempt ends with a retryable error and the proxy loop asks `upstream_peer`
//! for the next hop), so the image is resolved, address-checked, authenticated, redirected,
//! timed and checked exactly like an origin URL.
//!
//! What is a fallback and what its answer must be is the core's ([`FallbackKind`],
//! [`ixproxy_core::Forward::fallback`], [`ixproxy_core::Forward::check_fallback_response`]);
//! this module only keeps the request's state across the hops:
//!
//! - the first eligible failure swaps the request's forward for the fallback's (the original
//!   kept), with a fresh `upstream.timeout`;
//! - when the fallback fails too (any failure, any answer but a servable 2xx), the client gets
//!   the original answer: the gateway's own rejection as it was, or, when the origin had
//!   answered (its 404/5xx was not read, only its head), the original URL fetched once more,
//!   with no fallback this time;
//! - a request takes at most one fallback.
//!
//! A source without fallback images pays one check of [`ixproxy_core::Source::has_fallbacks`]
//! on an origin answer and nothing on success; failures pay one `Option` check more.

use ixproxy_core::{FallbackKind, Forward, Outcome, Rejection};
use pingora::{Error, ErrorType};

use super::deadline;
use super::request_ctx::RequestCtx;

/// What the client would have got without the fallback.
#[derive(Debug)]
enum Original {
    /// The origin answered with this status (404, 410, 5xx).
    Answer(u16),
    /// The gateway's own answer to the failed fetch.
    Failed(Rejection),
}

/// Where a request with a fallback is.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// The fallback image is being fetched.
    Fetching,
    /// The fallback failed; the original URL is fetched again, with no fallback.
    Refetching,
    /// The fallback image's answer is being served.
    Served,
}

/// The fallback state of one request (boxed in [`RequestCtx`]: none on the default path).
#[derive(Debug)]
pub(super) struct FallbackState {
    /// The client request's own forward while the fallback is fetched or served; back in
    /// `ctx.forward` once the fallback failed.
    original: Option<Box<Forward>>,
    answer: Original,
    phase: Phase,
}

impl FallbackState {
    /// The client request's own forward while the fallback image is in its place (its origin
    /// URL is what the access log names).
    pub(super) fn original(&self) -> Option<&Forward> {
        self.original.as_deref()
    }
}

/// Why the current attempt ends without an answer the client can have as it is.
pub(super) enum Why {
    /// The origin answered with this status (its head only was read).
    Answer(u16),
    /// The fetch failed with the gateway's answer `Rejection`.
    Failed(Rejection),
}

/// Called where an attempt of the request's origin fetch failed or got a 404/410/5xx, before
/// any response header went to the client (`target`: the client's raw request target).
///
/// Returns the error to end the attempt with when the fallback machinery takes over: a
/// retryable one for the next hop (the fallback, or the original URL again), or the original
/// rejection (recorded as the request's failure) when the fallback failed. `None`: nothing to
/// do, the request goes on as without fallbacks.
pub(super) fn on_failure(ctx: &mut RequestCtx, target: &[u8], why: Why) -> Option<Box<Error>> {
    match ctx.fallback.as_deref().map(|state| &state.phase) {
        None => start(ctx, target, why),
        Some(Phase::Fetching) => Some(fallback_failed(ctx)),
        Some(Phase::Refetching | Phase::Served) => None,
    }
}

/// The first eligible failure: the request's forward becomes the fallback image's.
fn start(ctx: &mut RequestCtx, target: &[u8], why: Why) -> Option<Box<Error>> {
    let forward = ctx.forward.as_deref()?;
    if !forward.source().has_fallbacks() {
        return None;
    }
    let kind = match &why {
        Why::Answer(status) => FallbackKind::of_status(*status),
        Why::Failed(rejection) => FallbackKind::of_rejection(rejection),
    }?;
    let target = std::str::from_utf8(target).ok()?;
    let next = forward.fallback(kind, target)?;
    let original = ctx.forward.replace(Box::new(next))?;
    ctx.fallback = Some(Box::new(FallbackState {
        original: Some(original),
        answer: match why {
            Why::Answer(status) => Original::Answer(status),
            Why::Failed(rejection) => Original::Failed(rejection),
        },
        phase: Phase::Fetching,
    }));
    Some(new_attempt(ctx, "fetching the fallback image"))
}

/// A failure found before any origin fetch (a cache hit the current policy refuses):
/// the request's forward becomes the fallback image's, fetched by the proxy loop as the
/// request's first attempt. `false` when no fallback is taken (the request is answered with
/// `rejection`).
pub(super) fn instead_of(ctx: &mut RequestCtx, target: &[u8], rejection: &Rejection) -> bool {
    ctx.fallback.is_none() && start(ctx, target, Why::Failed(rejection.clone())).is_some()
}

/// The fallback failed: the original answer.
fn fallback_failed(ctx: &mut RequestCtx) -> Box<Error> {
    let Some(state) = ctx.fallback.as_deref_mut() else {
        return Error::explain(ErrorType::InternalError, "no fallback state");
    };
    if let Some(original) = state.original.take() {
        ctx.forward = Some(original);
    }
    match &state.answer {
        Original::Failed(rejection) => {
            let rejection = rejection.clone();
            state.phase = Phase::Served;
            ctx.fail(rejection, "the fallback image failed too".to_owned())
        }
        Original::Answer(_) => {
            state.phase = Phase::Refetching;
            new_attempt(
                ctx,
                "the fallback image failed: fetching the original again",
            )
        }
    }
}

/// Resets the per-attempt state for a new origin fetch (as a redirect does, plus a fresh
/// origin-header deadline) and returns the retryable error that ends this attempt.
fn new_attempt(ctx: &mut RequestCtx, why: &'static str) -> Box<Error> {
    deadline::origin_socket(None);
    ctx.candidates.clear();
    ctx.candidate = 0;
    ctx.deadline = None;
    ctx.header_done = false;
    ctx.failure = None;
    ctx.following_redirect = true;
    let mut err = Error::explain(ErrorType::Custom("origin fallback"), why);
    err.set_retry(true);
    err
}

/// What the client would have got without the fallback: the status it gets with the image,
/// and the outcome to count when that is not `forwarded` (a gateway failure keeps its own).
pub(super) fn original(ctx: &RequestCtx) -> Option<(u16, Option<Outcome>)> {
    let state = ctx.fallback.as_deref()?;
    Some(match &state.answer {
        Original::Answer(status) => (*status, None),
        Original::Failed(rejection) => (rejection.status(), Some(rejection.outcome())),
    })
}

/// The fallback image's answer passed the core's checks and is being served.
pub(super) fn served(ctx: &mut RequestCtx) {
    if let Some(state) = ctx.fallback.as_deref_mut() {
        state.phase = Phase::Served;
    }
}
