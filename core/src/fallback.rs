//! Fallback images (imgix's `image_missing` / `image_error`, SPEC §15): which failures of a
//! forwarded request a source's fallback image answers, the fallback URL of one request, and
//! what the fallback's answer must be to be served in place of the original answer.
//!
//! Both runtimes ask [`FallbackKind::of_status`] (the origin answered) or
//! [`FallbackKind::of_rejection`] (the fetch failed) and, when the source has that image, fetch
//! [`crate::Forward::fallback`] like any origin URL. Its answer is checked by
//! [`crate::Forward::check_fallback_response`]; any failure there gives the original answer.

use crate::origin::{parse_origin, OriginError, OriginUrl};
use crate::outcome::{Outcome, Rejection};
use crate::verify::split_target;

/// Response header naming the fallback served (`missing` or `error`).
pub const FALLBACK_HEADER: &str = "x-ixproxy-fallback";

/// Client request headers never sent with a fallback request: the client's range or validators
/// name the original object, not the fallback image (its `206`/`304` would not be servable).
pub const FALLBACK_DROPPED_CLIENT_HEADERS: [&str; 3] =
    ["range", "if-none-match", "if-modified-since"];

/// Envoy: the response header the filter sets on an answer its fallback image replaces; the
/// bootstrap's custom response filter (after the ixproxy filter in the encode order) matches it
/// and recreates the request for [`FALLBACK_AUTHORITY`], which the filter recognises by the
/// fallback state it stored ([`FALLBACK_PROPERTY`]). Never sent to a client or an origin.
pub const FALLBACK_HOP_HEADER: &str = "x-ixproxy-fallback-hop";

/// Envoy: the authority of the request the custom response filter recreates for a fallback
/// image (a reserved name, RFC 2606: no client request for it belongs to any source).
pub const FALLBACK_AUTHORITY: &str = "ixproxy-fallback.invalid";

/// Envoy filter state property (`wasm.ixproxy_fallback`) carrying the fallback state of a
/// request to the stream Envoy recreates for its fallback image (declared like the hop state,
/// so clients cannot set it).
pub const FALLBACK_PROPERTY: &str = "ixproxy_fallback";

/// Which fallback image answers a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackKind {
    /// `image_missing`: the origin answered 404 or 410.
    Missing,
    /// `image_error`: every other origin failure (a 5xx answer, the gateway's 502/504, a refused
    /// content type, a response too large, a redirect not followed).
    Error,
}

impl FallbackKind {
    /// The value of [`FALLBACK_HEADER`].
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackKind::Missing => "missing",
            FallbackKind::Error => "error",
        }
    }

    /// The kind whose [`FallbackKind::as_str`] is `label` (state a runtime kept across streams).
    pub fn from_label(label: &str) -> Option<FallbackKind> {
        [FallbackKind::Missing, FallbackKind::Error]
            .into_iter()
            .find(|kind| kind.as_str() == label)
    }

    /// The fallback for an origin answer with `status`: 404 and 410 are missing, every 5xx an
    /// error; any other status (2xx, 3xx, other 4xx) passes as the origin's answer.
    pub fn of_status(status: u16) -> Option<FallbackKind> {
        match status {
            404 | 410 => Some(FallbackKind::Missing),
            500..=599 => Some(FallbackKind::Error),
            _ => None,
        }
    }

    /// The fallback for the gateway's own answer to a failed fetch, by its outcome: the failures
    /// of the origin (unreachable, slow, a response that cannot be passed on). A refusal of the
    /// client's request (signature, `expires`, origin policy, limits) or `overloaded` has none.
    pub fn of_rejection(rejection: &Rejection) -> Option<FallbackKind> {
        FallbackKind::of_outcome(rejection.outcome())
    }

    /// [`FallbackKind::of_rejection`] by the outcome alone (what the Envoy filter knows of
    /// Envoy's own replies).
    pub fn of_outcome(outcome: Outcome) -> Option<FallbackKind> {
        match outcome {
            Outcome::OriginError
            | Outcome::OriginTimeout
            | Outcome::BadOriginResponse
            | Outcome::BadRedirect
            | Outcome::OriginTooLarge
            | Outcome::ContentTypeDenied => Some(FallbackKind::Error),
            _ => None,
        }
    }
}

/// A source's validated fallback image: the URL (checked against the source's own origin
/// policy at config time) and whether the request's gateway params are appended to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackImage {
    /// The fallback URL as configured.
    pub url: OriginUrl,
    /// `*_append_qs`: the request's gateway params go on the fallback URL's query.
    pub append_qs: bool,
}

impl FallbackImage {
    /// The URL to fetch for the request whose raw target is `target`: the configured URL, with
    /// the request's [`gateway_params`] appended (`?` or `&`) when `append_qs` is set.
    ///
    /// # Errors
    /// The appended URL does not parse as an origin URL (the params are raw as sent, so they
    /// are valid request-target characters; this is a backstop).
    pub fn url_for(&self, target: &str) -> Result<OriginUrl, OriginError> {
        if !self.append_qs {
            return Ok(self.url.clone());
        }
        self.url_with_params(&gateway_params(target))
    }

    /// [`FallbackImage::url_for`] with the request's [`gateway_params`] already taken (the
    /// Envoy filter keeps them across redirect hops).
    ///
    /// # Errors
    /// As [`FallbackImage::url_for`].
    pub fn url_with_params(&self, params: &str) -> Result<OriginUrl, OriginError> {
        if !self.append_qs || params.is_empty() {
            return Ok(self.url.clone());
        }
        let mut url = self.url.to_url_string();
        url.push(if self.url.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        });
        url.push_str(params);
        parse_origin(&url)
    }
}

/// The gateway's answer to a failure of outcome `outcome` (one [`FallbackKind::of_outcome`]
/// gives a fallback for), rebuilt where only its outcome was kept (the Envoy filter's fallback
/// stream, when the fallback image failed too): same status and outcome, a generic reason.
pub fn original_rejection(outcome: Outcome) -> Rejection {
    match outcome {
        Outcome::OriginError => Rejection::origin_error(),
        Outcome::OriginTimeout => Rejection::origin_timeout(),
        Outcome::BadOriginResponse => Rejection::bad_origin_response("unusable origin response"),
        Outcome::BadRedirect => Rejection::bad_redirect("unusable redirect"),
        Outcome::OriginTooLarge => Rejection::origin_too_large(),
        Outcome::ContentTypeDenied => Rejection::content_type_denied(),
        _ => Rejection::internal(),
    }
}

/// The gateway params of a raw request target, raw as sent and in order: the signed query
/// without `s` and `expires` (empty parameters dropped). Empty when the target has no `s` in
/// the right place (never the case for a request that was forwarded).
pub fn gateway_params(target: &str) -> String {
    let Ok(signed) = split_target(target) else {
        return String::new();
    };
    let mut out = String::with_capacity(signed.query.len());
    for param in signed.query.split('&') {
        let key = param.split_once('=').map_or(param, |(key, _)| key);
        if param.is_empty() || key == "expires" {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(param);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_404_and_410_error_is_every_5xx() {
        for status in 100..=599u16 {
            let expected = match status {
                404 | 410 => Some(FallbackKind::Missing),
                500..=599 => Some(FallbackKind::Error),
                _ => None,
            };
            assert_eq!(FallbackKind::of_status(status), expected, "{status}");
        }
        assert_eq!(FallbackKind::Missing.as_str(), "missing");
        assert_eq!(FallbackKind::Error.as_str(), "error");
        for kind in [FallbackKind::Missing, FallbackKind::Error] {
            assert_eq!(FallbackKind::from_label(kind.as_str()), Some(kind));
        }
        assert_eq!(FallbackKind::from_label("Missing"), None);
    }

    #[test]
    fn only_origin_failures_have_an_error_fallback() {
        let error = Some(FallbackKind::Error);
        for failure in crate::Failure::ALL {
            let Some(rejection) = failure.rejection() else {
                continue;
            };
            let expected = match rejection.outcome() {
                Outcome::Overloaded | Outcome::Internal => None,
                _ => error,
            };
            assert_eq!(
                FallbackKind::of_rejection(&rejection),
                expected,
                "{failure:?}"
            );
        }
        assert_eq!(
            FallbackKind::of_rejection(&Rejection::content_type_denied()),
            error
        );
        assert_eq!(
            FallbackKind::of_rejection(&Rejection::bad_origin_response("x")),
            error
        );
        for refused in [
            Rejection::bad_signature("x"),
            Rejection::expired("x"),
            Rejection::bad_expires("x"),
            Rejection::bad_origin_url("x"),
            Rejection::origin_host_not_allowed(),
            Rejection::origin_address_denied(),
            Rejection::unknown_host(),
            Rejection::method_not_allowed(),
            Rejection::target_too_long(),
            Rejection::bad_request(),
            Rejection::overloaded(),
        ] {
            assert_eq!(FallbackKind::of_rejection(&refused), None, "{refused:?}");
        }
    }

    #[test]
    fn gateway_params_drop_s_and_expires_and_keep_the_rest_raw() {
        let sig = "0123456789abcdef0123456789abcdef";
        let target =
            format!("/https%3A%2F%2Fo.test%2Fa.png?w=100&expires=99&txt=a%20b&&flag&s={sig}");
        assert_eq!(gateway_params(&target), "w=100&txt=a%20b&flag");
        assert_eq!(gateway_params(&format!("/x?s={sig}")), "");
        assert_eq!(gateway_params(&format!("/x?expires=5&s={sig}")), "");
        assert_eq!(gateway_params("/x?w=1"), "", "no signature, nothing");
    }

    #[test]
    fn the_fallback_url_gets_the_params_only_when_asked() {
        let sig = "0123456789abcdef0123456789abcdef";
        let target = format!("/http%3A%2F%2Fo.test%2Fa.png?w=100&expires=9&s={sig}");
        let image = |url: &str, append_qs| FallbackImage {
            url: parse_origin(url).expect("url"),
            append_qs,
        };
        let url = |image: FallbackImage, target: &str| {
            image.url_for(target).expect("url").to_url_string()
        };
        assert_eq!(
            url(image("https://cdn.test/missing.png", false), &target),
            "https://cdn.test/missing.png"
        );
        assert_eq!(
            url(image("https://cdn.test/missing.png", true), &target),
            "https://cdn.test/missing.png?w=100"
        );
        assert_eq!(
            url(image("https://cdn.test/m.png?v=2", true), &target),
            "https://cdn.test/m.png?v=2&w=100"
        );
        assert_eq!(
            url(
                image("https://cdn.test/m.png", true),
                &format!("/x?expires=9&s={sig}")
            ),
            "https://cdn.test/m.png",
            "no params, no `?`"
        );
    }
}
