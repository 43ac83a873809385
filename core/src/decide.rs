//! The one decision both runtimes share: a request (method, Host, raw target) becomes either a
//! [`Forward`] to an origin or a [`Rejection`] with the status of the README's status table.

use std::sync::Arc;

use crate::config::{Source, Sources};
use crate::disposition::{content_disposition, may_ask_download};
use crate::expires::{check_target_expires, ExpiresError};
use crate::forward::{check_origin_policy, Forward};
use crate::origin::decode_origin;
use crate::outcome::Rejection;
use crate::verify;

/// The parts of a client request the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// HTTP method as sent (`GET`, `HEAD`, ...).
    pub method: &'a str,
    /// Host / `:authority` value as sent (port allowed).
    pub host: &'a str,
    /// Raw request target (path and query) exactly as on the wire.
    pub target: &'a str,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send to the origin.
    Forward(Box<Forward>),
    /// Answer locally.
    Reject(Rejection),
}

/// Decides what to do with one request.
///
/// `now` is unix seconds from the host clock. Check order: method, target length, host (a
/// disabled source answers 410 here), signature, `expires`, then the origin URL and the source's origin policy, so an unsigned
/// request learns nothing about the origin URL. Needs no randomness and touches no origin
/// credential: those are for [`Forward::auth_headers`], once per origin attempt.
pub fn decide(sources: &Sources, req: &RequestInfo<'_>, now: u64) -> Decision {
    decide_attributed(sources, req, now).0
}

/// Who a request is counted under (README: Metrics): the source its Host names, once looked up,
/// and the position of the token that verified its signature, once verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    source: Option<Arc<Source>>,
    token: Option<usize>,
}

impl Attribution {
    /// The attribution of a request refused before its signature was looked at: the source
    /// its Host names, if any.
    pub fn of_host(sources: &Sources, host: &str) -> Attribution {
        Attribution {
            source: sources.by_host(host).cloned(),
            token: None,
        }
    }

    /// The request's source, when its Host names one.
    pub fn source(&self) -> Option<&Arc<Source>> {
        self.source.as_ref()
    }

    /// The `source` metrics label: the source's label, or
    /// [`NO_SOURCE_LABEL`](crate::metrics::NO_SOURCE_LABEL).
    pub fn source_label(&self) -> &str {
        self.source
            .as_deref()
            .map_or(crate::metrics::NO_SOURCE_LABEL, |s| s.label.as_str())
    }

    /// The `token` metrics label (its `id` or position) when the signature verified.
    pub fn token_label(&self) -> Option<&str> {
        let source = self.source.as_deref()?;
        source.token_labels.get(self.token?).map(String::as_str)
    }

    /// The position in `secure_url_tokens` of the token that verified the signature.
    pub fn token_position(&self) -> Option<usize> {
        self.token
    }
}

/// [`decide`], also returning the request's [`Attribution`] for metrics and the access log.
pub fn decide_attributed(
    sources: &Sources,
    req: &RequestInfo<'_>,
    now: u64,
) -> (Decision, Attribution) {
    let mut attribution = Attribution::default();
    let decision = match decide_inner(sources, req, now, &mut attribution) {
        Ok(forward) => Decision::Forward(Box::new(forward)),
        Err(rejection) => Decision::Reject(rejection),
    };
    (decision, attribution)
}

fn decide_inner(
    sources: &Sources,
    req: &RequestInfo<'_>,
    now: u64,
    attribution: &mut Attribution,
) -> Result<Forward, Rejection> {
    if req.method != "GET" && req.method != "HEAD" {
        return Err(Rejection::method_not_allowed());
    }
    if req.target.len() > sources.limits().max_request_target_bytes {
        return Err(Rejection::target_too_long());
    }
    let source = sources
        .by_host(req.host)
        .ok_or_else(Rejection::unknown_host)?;
    attribution.source = Some(Arc::clone(source));
    if !source.enabled {
        return Err(Rejection::source_disabled());
    }
    let (signed, token) =
        verify::verify_token(req.target, &source.tokens).map_err(Rejection::bad_signature)?;
    attribution.token = Some(token);

    let max_age = check_target_expires(&signed, now).map_err(|e| match e {
        ExpiresError::Expired => Rejection::expired(e),
        ExpiresError::NotInteger | ExpiresError::Duplicated => Rejection::bad_expires(e),
    })?;

    let origin = decode_origin(signed.path).map_err(Rejection::bad_origin_url)?;
    check_origin_policy(source, &origin)?;
    let mut forward = Forward::new(source, *sources.limits(), origin, max_age);
    // Only a signed query can ask for a download, and most never do.
    if may_ask_download(signed.query) {
        let path = forward.origin().path_and_query.as_str();
        let disposition = content_disposition(signed.params(), path);
        forward.set_content_disposition(disposition);
    }
    Ok(forward)
}
