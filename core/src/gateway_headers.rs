//! The headers the gateway adds to a response it serves for a forward (an origin's answer, a
//! cache hit, a fallback image), decided once for both runtimes (SPEC §15): the source's CORS
//! headers ([`crate::cors`]), `Vary` with `Origin` in list mode, and `Content-Disposition` for a
//! signed `dl` on a 2xx. None of them is stored by a cache: each response gets its own, for its
//! own request's `Origin`.
//!
//! A runtime writes each header of [`GatewayHeaders`] as given, replacing every field of that
//! name the response has (the origin's `Vary` included: the value here already holds it). The
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

/// A header value, by where it comes from, so that a runtime reuses what it already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayValue<'a> {
    /// A constant of the core (`*`, `cross-origin`, `Origin`).
    Static(&'static str),
    /// The request's `Origin` exactly as the client sent it (a listed origin is echoed): a
    /// runtime holding the client's header value may send that instead of copying this.
    RequestOrigin(&'a str),
    /// Any other value: the response's `Vary` members with `Origin` (once), or the forward's
    /// `Content-Disposition`.
    Text(Cow<'a, str>),
}

impl GatewayValue<'_> {
    /// The value's text.
    pub fn as_str(&self) -> &str {
        match self {
            GatewayValue::Static(value) | GatewayValue::RequestOrigin(value) => value,
            GatewayValue::Text(value) => value,
        }
    }
}

/// One header the gateway sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayHeader<'a> {
    /// Which header.
    pub name: GatewayHeaderName,
    /// Its one value, replacing every field of that name.
    pub value: GatewayValue<'a>,
}

/// Most headers one response gets (two CORS values, the resource policy, `Vary`, `dl`).
const MAX_HEADERS: usize = 5;

/// The headers the gateway sets on one response, in order ([`gateway_headers`]). Held inline
/// (no allocation).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayHeaders<'a> {
    slots: [Option<GatewayHeader<'a>>; MAX_HEADERS],
}

impl<'a> GatewayHeaders<'a> {
    /// Appends a header (at most [`MAX_HEADERS`] are ever pushed by [`gateway_headers`]).
    fn push(&mut self, name: GatewayHeaderName, value: GatewayValue<'a>) {
        if let Some(free) = self.slots.iter_mut().find(|slot| slot.is_none()) {
            *free = Some(GatewayHeader { name, value });
        }
    }

    /// The headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = &GatewayHeader<'a>> {
        self.slots.iter().flatten()
    }

    /// Whether the response's own `Vary` is replaced (by one that holds it and `Origin`).
    pub fn replaces_vary(&self) -> bool {
        self.iter().any(|h| h.name == GatewayHeaderName::Vary)
    }
}

impl<'a> IntoIterator for GatewayHeaders<'a> {
    type Item = GatewayHeader<'a>;
    type IntoIter =
        std::iter::Flatten<std::array::IntoIter<Option<GatewayHeader<'a>>, MAX_HEADERS>>;

    fn into_iter(self) -> Self::IntoIter {
        self.slots.into_iter().flatten()
    }
}

/// The headers the gateway sets on a response of `status` to a request that sent
/// `request_origin` (its `Origin`; read only when [`Cors::needs_request_origin`]), for a source
/// with `cors` and a forward with `content_disposition` ([`crate::Forward::content_disposition`]):
///
/// - `Access-Control-Allow-Origin` and `Timing-Allow-Origin`: `*` by default; in list mode the
///   request's `Origin` as sent when listed, neither otherwise; `cors: off`, neither.
/// - `Cross-Origin-Resource-Policy: cross-origin` unless `cors: off`.
/// - In list mode, whatever the `Origin`, `Vary` holding `Origin` and every member of
///   `origin_vary` (the response's own `Vary` fields joined; `None` for a response that has
///   none, such as a fallback image), see [`cors::vary_with_origin`]: a shared cache must not
///   give one page's answer to another, nor lose the origin's own variance.
/// - `Content-Disposition` on a 2xx only (an error page is no download).
pub fn gateway_headers<'a>(
    cors: &'a Cors,
    content_disposition: Option<&'a str>,
    request_origin: Option<&'a str>,
    status: u16,
    origin_vary: Option<&'a str>,
) -> GatewayHeaders<'a> {
    let mut out = GatewayHeaders::default();
    let wanted = cors.headers(request_origin);
    if let Some(allow) = wanted.allow_origin {
        let value = || match cors {
            Cors::Any => GatewayValue::Static(cors::ANY_ORIGIN),
            _ => GatewayValue::RequestOrigin(allow),
        };
        out.push(GatewayHeaderName::AllowOrigin, value());
        out.push(GatewayHeaderName::TimingAllowOrigin, value());
    }
    if wanted.resource_policy {
        out.push(
            GatewayHeaderName::ResourcePolicy,
            GatewayValue::Static(cors::CROSS_ORIGIN),
        );
    }
    if wanted.vary_origin {
        let value = match cors::vary_with_origin(origin_vary) {
            Some(merged) => GatewayValue::Text(Cow::Owned(merged)),
            None => GatewayValue::Static(cors::VARY_ORIGIN),
        };
        out.push(GatewayHeaderName::Vary, value);
    }
    if let (Some(disposition), true) = (content_disposition, (200..300).contains(&status)) {
        out.push(
            GatewayHeaderName::ContentDisposition,
            GatewayValue::Text(Cow::Borrowed(disposition)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cors::normalize_web_origin;

    fn pairs(headers: &GatewayHeaders<'_>) -> Vec<(&'static str, String)> {
        headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str().to_owned()))
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
            let h = gateway_headers(&Cors::Any, None, Some("https://x.example"), status, None);
            assert_eq!(
                pairs(&h),
                [
                    ("access-control-allow-origin", "*".to_owned()),
                    ("timing-allow-origin", "*".to_owned()),
                    ("cross-origin-resource-policy", "cross-origin".to_owned()),
                ]
            );
            assert!(h.iter().all(|h| matches!(h.value, GatewayValue::Static(_))));
            assert!(!h.replaces_vary(), "the origin's Vary stays as it is");
        }
        assert!(gateway_headers(&Cors::Off, None, None, 200, Some("Accept"))
            .iter()
            .next()
            .is_none());
    }

    #[test]
    fn a_list_echoes_the_listed_origin_as_sent() {
        let cors = list();
        let h = gateway_headers(&cors, None, Some("HTTPS://App.Example:443"), 200, None);
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
        assert!(matches!(
            h.iter().next().map(|h| &h.value),
            Some(GatewayValue::RequestOrigin(_))
        ));
        let other = gateway_headers(&cors, None, Some("https://evil.example"), 200, None);
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
            let h = gateway_headers(&cors, None, None, 200, origin_vary);
            assert!(h.replaces_vary());
            let value = h
                .iter()
                .find(|h| h.name == GatewayHeaderName::Vary)
                .map(|h| h.value.as_str().to_owned());
            value
        };
        assert_eq!(vary(None).as_deref(), Some("Origin"));
        assert_eq!(vary(Some("")).as_deref(), Some("Origin"));
        assert_eq!(
            vary(Some("Accept-Encoding")).as_deref(),
            Some("Accept-Encoding, Origin")
        );
        // Already covered: replaced by itself, never dropped.
        assert_eq!(
            vary(Some("Origin, Accept-Encoding")).as_deref(),
            Some("Origin, Accept-Encoding")
        );
        assert_eq!(
            vary(Some("origin, Access-Control-Request-Method")).as_deref(),
            Some("origin, Access-Control-Request-Method")
        );
        assert_eq!(vary(Some("*")).as_deref(), Some("*"));
        // Envoy hands repeated fields over joined with a bare comma: the same value results.
        assert_eq!(
            vary(Some("Accept-Encoding,origin")).as_deref(),
            Some("Accept-Encoding, origin")
        );
    }

    #[test]
    fn a_download_name_goes_on_a_success_only() {
        let d = "attachment; filename=\"a.pdf\"";
        let h = gateway_headers(&Cors::Off, Some(d), None, 200, None);
        assert_eq!(pairs(&h), [("content-disposition", d.to_owned())]);
        assert_eq!(
            gateway_headers(&Cors::Any, Some(d), None, 206, None)
                .iter()
                .last()
                .map(|h| h.name),
            Some(GatewayHeaderName::ContentDisposition)
        );
        for status in [304, 404, 500] {
            let h = gateway_headers(&Cors::Off, Some(d), None, status, None);
            assert!(h.iter().next().is_none(), "{status}");
        }
        // The largest set fits: two CORS values, the policy, Vary and the name.
        let cors = list();
        let all = gateway_headers(&cors, Some(d), Some("https://app.example"), 200, Some("A"));
        assert_eq!(all.iter().count(), MAX_HEADERS);
    }
}
