//! The filter's second role, as an upstream HTTP filter of Envoy's router (root id
//! [`UPSTREAM_ROOT_ID`]). It decides nothing (a followed hop still goes through the main filter,
//! which re-validates it like the native gateway does); it adapts two Envoy details:
//!
//! - it makes a relative `Location` of an origin redirect absolute, against the URL of the
//!   attempt that got it, so Envoy's internal redirect (which only takes absolute URLs) can
//!   follow it;
//! - it puts `x-forwarded-proto` back on redirect responses, for Envoy to copy into the request
//!   it recreates (`response_headers_to_copy`): Envoy finds no route for a request without that
//!   header, and its removal from the origin request (by the routes, or by this role with the
//!   cache) edits the very header map Envoy recreates a redirected request from;
//! - with Envoy's HTTP cache (which fetches cacheable requests on its own side channel, past the
//!   routes' header removal; the bootstrap then installs this role on the clusters, where that
//!   channel runs it too) it removes the routing markers and the channel's own
//!   `x-forwarded-for`/`x-envoy-internal` ([`ORIGIN_REQUEST_REMOVED`]), and records on every
//!   origin response the address Envoy connected to ([`UPSTREAM_ADDRESS_HEADER`], any
//!   origin-sent one removed first), which the cache stores with the entry and the main filter
//!   checks for misses and hits alike; and it replaces the origin's `Cache-Control` with the
//!   source's policy value (README: Cache TTL policy, uncapped), so that is what the cache stores
//!   and judges freshness by (the settings come from the main filter in [`CACHE_TTL_HEADER`]);
//!   an answer the main filter refuses whatever it says is kept for `cache_ttl_error` only
//!   ([`CacheFill::stored_cache_control`]).
//!
//! Without the cache (no [`CACHE_TTL_HEADER`] on the origin request) only a redirect needs the
//! response side: any other response costs one host call (its status) and no edit, and the
//! request side normally finds nothing to remove. Each removal is its own host call: Envoy makes
//! a single edit far more cheaply than it rewrites a whole map (bench/NOTES.md).

use ixproxy_core::envoy::CacheFill;
use ixproxy_core::response::{is_followed_redirect, OriginHead};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, Bytes, MapType};

use crate::edits::HeaderEdit;
use crate::headers;

pub use ixproxy_core::envoy::{
    CACHE_TTL_HEADER, FORWARDED_PROTO, ORIGIN_REQUEST_REMOVED, UPSTREAM_ADDRESS_HEADER,
    UPSTREAM_ROOT_ID,
};

/// Makes `location` absolute against `base` (`scheme://authority/path`); `None` when it is
/// already absolute (left alone: the main filter judges it) or cannot be resolved.
pub fn absolute_location(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    match url::Url::parse(location) {
        Err(url::ParseError::RelativeUrlWithoutBase) => url::Url::parse(base)
            .and_then(|base| base.join(location))
            .ok()
            .map(String::from),
        _ => None,
    }
}

fn ttl_respects_origin(ttl: Option<&ixproxy_core::config::CacheTtl>) -> bool {
    ttl.is_some_and(|t| t.behavior == ixproxy_core::config::CacheTtlBehavior::RespectOrigin)
}

/// Per-attempt context of the upstream role: remembers the attempt's URL (the request headers
/// are not readable any more in the response phase; asking for them there is an error).
#[derive(Debug, Default)]
pub struct LocationFilter {
    /// The attempt's request header as read (the redirect base is made from it only for a
    /// redirect).
    request: Option<Vec<(String, Bytes)>>,
    /// The source's cache TTL settings and response checks, from the main filter
    /// ([`CACHE_TTL_HEADER`]).
    fill: Option<CacheFill>,
    /// Whether the cache is on: the main filter sent [`CACHE_TTL_HEADER`].
    cached: bool,
}

impl LocationFilter {
    /// The attempt's URL, `scheme://authority/path`: what a relative `Location` resolves
    /// against.
    fn base(&self) -> String {
        let value = |name: &str| headers::text(self.request.as_deref()?, name);
        format!(
            "{}://{}{}",
            value(":scheme").unwrap_or_default(),
            value(":authority").unwrap_or_default(),
            value(":path").unwrap_or_default()
        )
    }
}

impl Context for LocationFilter {}

impl HttpContext for LocationFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One read of the whole (short) origin request header instead of a host call per name:
        // the redirect base, the cache policy, and which internal headers are there to remove.
        let read = headers::read(MapType::HttpRequestHeaders);
        if let Err(e) = &read {
            log::warn!("ixproxy: the origin request header: {e}");
        }
        let fields = read.ok();
        let value = |name: &str| headers::text(fields.as_deref()?, name);
        // When the header could not be read the cache is taken to be on: the response side then
        // does its whole work (the stored upstream address set or removed), never less.
        self.cached = fields
            .as_deref()
            .is_none_or(|f| headers::value(f, CACHE_TTL_HEADER).is_some());
        self.fill = value(CACHE_TTL_HEADER).and_then(CacheFill::decode);
        // Present by name, whatever its value's bytes; when the header could not be read, every
        // one is removed as if present.
        let present = |name: &str| {
            fields
                .as_deref()
                .is_none_or(|f| headers::value(f, name).is_some())
        };
        let removals: Vec<HeaderEdit> = ORIGIN_REQUEST_REMOVED
            .iter()
            .filter(|name| present(name))
            .map(|name| HeaderEdit::Remove((*name).into()))
            .collect();
        if let Err(e) = headers::write(MapType::HttpRequestHeaders, None, &removals) {
            log::warn!("ixproxy: the origin request's internal headers: {e}");
        }
        self.request = fields;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Without the cache only a redirect needs this role: the main filter takes the address
        // from Envoy's `upstream.address` itself. One host call for the status then, and
        // nothing else on any other response.
        if !self.cached {
            let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok())
                .unwrap_or(0);
            if !is_followed_redirect(status) {
                return Action::Continue;
            }
        }
        // One read of the response header, then the edits below that change it.
        let read = headers::read(MapType::HttpResponseHeaders);
        if let Err(e) = &read {
            log::warn!("ixproxy: the origin response header: {e}");
        }
        let fields = read.ok();
        let value = |name: &str| headers::text(fields.as_deref()?, name);
        let status: u16 = value(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut edits = Vec::new();
        // The origin's own value never counts; unknown address → no header (the main filter
        // then refuses the response unless the source allows private origins).
        let address = hostcalls::get_property(vec!["upstream", "address"])
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok());
        edits.push(match address {
            Some(address) => HeaderEdit::Set(UPSTREAM_ADDRESS_HEADER.into(), address.into()),
            None => HeaderEdit::Remove(UPSTREAM_ADDRESS_HEADER.into()),
        });
        // A 304 refreshes a stored entry with the headers it carries: under `respect_origin` its
        // own Cache-Control (or none) is the origin's word, otherwise the policy's. An answer
        // the main filter refuses (a redirect, which the cache's channel never follows, a
        // refused content type or size) is kept as the failure it becomes (`cache_ttl_error`).
        let refresh_keeps_origin =
            status == 304 && ttl_respects_origin(self.fill.as_ref().map(|f| &f.ttl));
        if let (Some(fill), false) = (self.fill.as_ref(), refresh_keeps_origin) {
            let head = OriginHead::of(
                status,
                fields
                    .iter()
                    .flatten()
                    .map(|(n, v)| (n.as_str(), v.as_slice())),
            );
            let stored = fill.stored_cache_control(&head);
            edits.push(HeaderEdit::Set("cache-control".into(), stored.into()));
        }
        if is_followed_redirect(status) {
            let base = self.base();
            let base = base.as_str();
            let scheme = base.split(':').next().unwrap_or_default();
            edits.push(HeaderEdit::Set(
                FORWARDED_PROTO.into(),
                scheme.to_owned().into(),
            ));
            if let Some(absolute) = value("location").and_then(|l| absolute_location(base, l)) {
                edits.push(HeaderEdit::Set("location".into(), absolute.into()));
            }
        }
        if let Err(e) = headers::write(MapType::HttpResponseHeaders, fields, &edits) {
            log::warn!("ixproxy: the origin response header: {e}");
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_locations_resolve_against_the_attempt() {
        let base = "http://o.example:8080/a/b.jpg?x=1";
        assert_eq!(
            absolute_location(base, "/c.jpg").as_deref(),
            Some("http://o.example:8080/c.jpg")
        );
        assert_eq!(
            absolute_location(base, "d.jpg?y=2").as_deref(),
            Some("http://o.example:8080/a/d.jpg?y=2")
        );
        assert_eq!(
            absolute_location(base, "//other.example/e").as_deref(),
            Some("http://other.example/e")
        );
        // Absolute ones (any scheme) are left for the main filter to judge.
        assert_eq!(absolute_location(base, "https://x.example/"), None);
        assert_eq!(absolute_location(base, "ftp://x.example/"), None);
        assert_eq!(absolute_location("not a url", "/x"), None);
    }
}
