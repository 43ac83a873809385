//! The headers the gateway adds to a response it serves for a forward (an origin's answer, a
//! cache hit, a fallback image), decided once for both runtimes (SPEC §15): the source's CORS
//! headers ([`crate::cors`]), `Vary` with `Origin` in list mode, and `Content-Disposition` for a
//! signed `dl` on a 2xx. None of them is stored by a cache: each response gets its own, for its
//! own request's `Origin`.
//!
//! A runtime writes each header [`gateway_headers`] hands it as given, replacing every field of
//! that name the response has (the origin's `Vary` included: the value here already holds it). The
//! default (`cors` absent, no `dl`) is three headers of constant names and values: no
//! allocation.

use std::borrow::Cow;

use crate::cors::{self, Cors};
use crate::disposition::CONTENT_DISPOSITION;

/// A header the gateway adds: a closed set, so a runtime maps each to its own constant name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayHeaderName {
    /// `Access-Control-Allow-Origin`.
    AllowOrigin,
    /// `Timing-Allow-Origin` (the allow-origin value).
    TimingAllowOrigin,
    /// `Cross-Origin-Resource-Policy`.
    ResourcePolicy,
    /// `Vary`.
    Vary,
    /// `Content-Disposition`.
    ContentDisposition,
}

impl GatewayHeaderName {
    /// Every one, in the order a response gets them.
    const ALL: [GatewayHeaderName; 5] = [
        GatewayHeaderName::AllowOrigin,
        GatewayHeaderName::TimingAllowOrigin,
        GatewayHeaderName::ResourcePolicy,
        GatewayHeaderName::Vary,
        GatewayHeaderName::ContentDisposition,
    ];

    /// The lower-case header name.
    pub const fn as_str(self) -> &'static str {
        match self {
            GatewayHeaderName::AllowOrigin => cors::ALLOW_ORIGIN,
            GatewayHeaderName::TimingAllowOrigin => cors::TIMING_ALLOW_ORIGIN,
            GatewayHeaderName::ResourcePolicy => cors::RESOURCE_POLICY,
            GatewayHeaderName::Vary => cors::VARY,
            GatewayHeaderName::ContentDisposition => CONTENT_DISPOSITION,
        }
    }
}

/// A header value, by where it comes from, so that a runtime reuses what it already holds:
/// each constant is its own variant, which a runtime maps to its own constant value without
/// comparing text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayValue<'a> {
    /// `*` ([`cors::ANY_ORIGIN`]).
    AnyOrigin,
    /// `cross-origin` ([`cors::CROSS_ORIGIN`]).
    CrossOrigin,
    /// `Origin` alone ([`cors::VARY_ORIGIN`]): the `Vary` of a response that had none.
    VaryOrigin,
    /// The request's `Origin` exactly as the client sent it (a listed origin is echoed): a
    /// runtime holding the client's header value may send that instead of copying this.
    RequestOrigin(&'a str),
    /// Any other value: the response's `Vary` members with `Origin` (once), or the forward's
    /// `Content-Disposition`.
    Text(Cow<'a, str>),
}

impl GatewayValue<'_> {
    /// The value of a constant variant.
    pub const fn as_static(&self) -> Option<&'static str> {
        match self {
            GatewayValue::AnyOrigin => Some(cors::ANY_ORIGIN),
            GatewayValue::CrossOrigin => Some(cors::CROSS_ORIGIN),
            GatewayValue::VaryOrigin => Some(cors::VARY_ORIGIN),
            GatewayValue::RequestOrigin(_) | GatewayValue::Text(_) => None,
        }
    }

    /// The value's text.
    pub fn as_str(&self) -> &str {
        match self {
            GatewayValue::RequestOrigin(value) => value,
            GatewayValue::Text(value) => value,
            constant => constant.as_static().unwrap_or_default(),
        }
    }
}

/// The headers the gateway sets on a response of `status` to a request that sent
/// `request_origin` (its `Origin`; read only when [`Cors::needs_request_origin`]), for a source
/// with `cors` and a forward with `content_disposition` ([`crate::Forward::content_disposition`]),
/// each handed to `put` in this order, to replace every field of its name:
///
/// - `Access-Control-Allow-Origin` and `Timing-Allow-Origin`: `*` by default; in list mode the
///   request's `Origin` as sent when listed, neither otherwise; `cors: off`, neither.
/// - `Cross-Origin-Resource-Policy: cross-origin` unless `cors: off`.
/// - In list mode, whatever the `Origin`, `Vary` holding `Origin` and every member of
///   `origin_vary` (the response's own `Vary` fields joined, `None` when it has none; for a
///   fallback image, the image's own allowlisted `Vary`), see [`cors::vary_with_origin`]: a
///   shared cache must not give one page's answer to another, nor lose the origin's own
///   variance. Only then is the response's own `Vary` replaced
///   ([`Cors::needs_request_origin`]).
/// - `Content-Disposition` on a 2xx only (an error page is no download).
///
/// Handed over one by one rather than returned as a list: the default's three constants then
/// cost a runtime little more than writing them (no list built, moved and walked; measured
/// with bench/instructions.py).
///
/// # Errors
/// `put`'s first error, after which nothing more is handed over.
pub fn gateway_headers<'a, E>(
    cors: &'a Cors,
    content_disposition: Option<&'a str>,
    request_origin: Option<&'a str>,
    status: u16,
    origin_vary: Option<&'a str>,
    mut put: impl FnMut(GatewayHeaderName, GatewayValue<'a>) -> Result<(), E>,
) -> Result<(), E> {
    let wanted = cors.headers(request_origin);
    let allow = || {
        wanted.allow_origin.map(|sent| match cors {
            Cors::Any => GatewayValue::AnyOrigin,
            _ => GatewayValue::RequestOrigin(sent),
        })
    };
    // One call of `put`, which a runtime's translation is then inlined into.
    for name in GatewayHeaderName::ALL {
        let value = match name {
            GatewayHeaderName::AllowOrigin | GatewayHeaderName::TimingAllowOrigin => allow(),
            GatewayHeaderName::ResourcePolicy => {
                wanted.resource_policy.then_some(GatewayValue::CrossOrigin)
            }
            GatewayHeaderName::Vary => {
                wanted
                    .vary_origin
                    .then(|| match cors::vary_with_origin(origin_vary) {
                        Some(merged) => GatewayValue::Text(Cow::Owned(merged)),
                        None => GatewayValue::VaryOrigin,
                    })
            }
            GatewayHeaderName::ContentDisposition => content_disposition
                .filter(|_| (200..300).contains(&status))
                .map(|d| GatewayValue::Text(Cow::Borrowed(d))),
        };
        if let Some(value) = value {
            put(name, value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cors::normalize_web_origin;

    /// Every header `gateway_headers` hands over, in order.
    fn all<'a>(
        cors: &'a Cors,
        disposition: Option<&'a str>,
        request_origin: Option<&'a str>,
        status: u16,
        origin_vary: Option<&'a str>,
    ) -> Vec<(GatewayHeaderName, GatewayValue<'a>)> {
        let mut out = Vec::new();
        let put = |name, value| {
            out.push((name, value));
            Ok::<(), ()>(())
        };
        gateway_headers(cors, disposition, request_origin, status, origin_vary, put)
            .expect("collected");
        out
    }

    fn pairs(headers: &[(GatewayHeaderName, GatewayValue<'_>)]) -> Vec<(&'static str, String)> {
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str().to_owned()))
            .collect()
    }

    fn list() -> Cors {
        Cors::List(vec![
            normalize_web_origin("https://app.example").expect("origin")
        ])
    }

    #[test]
    fn the_default_is_three_constant_headers_on_every_status() {
        for status in [200, 206, 304, 404, 502] {
            let h = all(&Cors::Any, None, Some("https://x.example"), status, None);
            assert_eq!(
                pairs(&h),
                [
                    ("access-control-allow-origin", "*".to_owned()),
                    ("timing-allow-origin", "*".to_owned()),
                    ("cross-origin-resource-policy", "cross-origin".to_owned()),
                ]
            );
            assert!(h.iter().all(|(_, v)| v.as_static().is_some()), "constants");
        }
        // The origin's Vary is left alone outside list mode.
        assert!(all(&Cors::Any, None, None, 200, Some("Accept")).len() == 3);
        assert!(all(&Cors::Off, None, None, 200, Some("Accept")).is_empty());
    }

    #[test]
    fn a_list_echoes_the_listed_origin_as_sent() {
        let cors = list();
        let h = all(&cors, None, Some("HTTPS://App.Example:443"), 200, None);
        assert_eq!(
            pairs(&h),
            [
                (
                    "access-control-allow-origin",
                    "HTTPS://App.Example:443".into()
                ),
                ("timing-allow-origin", "HTTPS://App.Example:443".into()),
                ("cross-origin-resource-policy", "cross-origin".into()),
                ("vary", "Origin".into()),
            ]
        );
        assert!(matches!(h[0].1, GatewayValue::RequestOrigin(_)));
        let other = all(&cors, None, Some("https://evil.example"), 200, None);
        assert_eq!(
            pairs(&other),
            [
                ("cross-origin-resource-policy", "cross-origin".into()),
                ("vary", "Origin".into()),
            ]
        );
    }

    #[test]
    fn in_list_mode_the_origins_vary_is_always_kept() {
        let cors = list();
        let vary = |origin_vary: Option<&str>| {
            let h = all(&cors, None, None, 200, origin_vary);
            let values: Vec<String> = h
                .iter()
                .filter(|(name, _)| *name == GatewayHeaderName::Vary)
                .map(|(_, value)| value.as_str().to_owned())
                .collect();
            values
        };
        assert_eq!(vary(None), ["Origin"]);
        assert_eq!(vary(Some("")), ["Origin"]);
        assert_eq!(vary(Some("Accept-Encoding")), ["Accept-Encoding, Origin"]);
        // Already covered: replaced by itself, never dropped.
        assert_eq!(
            vary(Some("Origin, Accept-Encoding")),
            ["Origin, Accept-Encoding"]
        );
        assert_eq!(
            vary(Some("origin, Access-Control-Request-Method")),
            ["origin, Access-Control-Request-Method"]
        );
        assert_eq!(vary(Some("*")), ["*"]);
        // Envoy hands repeated fields over joined with a bare comma: the same value results.
        assert_eq!(
            vary(Some("Accept-Encoding,origin")),
            ["Accept-Encoding, origin"]
        );
    }

    #[test]
    fn a_download_name_goes_on_a_success_only() {
        let d = "attachment; filename=\"a.pdf\"";
        let h = all(&Cors::Off, Some(d), None, 200, None);
        assert_eq!(pairs(&h), [("content-disposition", d.to_owned())]);
        let partial = all(&Cors::Any, Some(d), None, 206, None);
        assert_eq!(
            partial.last().map(|(name, _)| *name),
            Some(GatewayHeaderName::ContentDisposition)
        );
        for status in [304, 404, 500] {
            assert!(all(&Cors::Off, Some(d), None, status, None).is_empty());
        }
    }

    #[test]
    fn the_first_error_stops_the_list() {
        let mut seen = 0;
        let result = gateway_headers(&Cors::Any, None, None, 200, None, |_, _| {
            seen += 1;
            Err("refused")
        });
        assert_eq!((result, seen), (Err("refused"), 1));
    }
}
