//! The state that carries a forwarded request across Envoy's internal redirects: what the
//! filter stores in Envoy filter state ([`HOP_PROPERTY`]) when it forwards, and reads back on
//! the stream Envoy recreates to follow an origin redirect. Pure, so it is tested natively.

use ixproxy_core::{Forward, Sources};

pub use ixproxy_core::envoy::LOCATION_HEADER;

/// Envoy filter state property (`wasm.ixproxy_hop`) carrying the [`Hop`] of a forwarded request
/// across Envoy's internal redirects. Declared with the `DownstreamRequest` life span (see
/// [`declare_property_args`]), so Envoy copies it into the stream it recreates for a redirect;
/// only filters can write filter state, so a client cannot forge a hop.
pub const HOP_PROPERTY: &str = "ixproxy_hop";

/// The serialized `DeclarePropertyArguments` protobuf (Envoy's `declare_property` foreign
/// function) declaring `name` ([`HOP_PROPERTY`], the access log properties) as mutable bytes
/// that live for the downstream request, internal redirects included
/// (`span: DownstreamRequest`). `name` is shorter than 128 bytes.
pub fn declare_property_args(name: &str) -> Vec<u8> {
    let name = name.as_bytes();
    let mut args = Vec::with_capacity(name.len() + 4);
    // field 1 (name), length-delimited; the name is shorter than 128 bytes (one-byte varint).
    args.push(0x0a);
    args.push(name.len() as u8);
    args.extend_from_slice(name);
    // field 5 (span) = 1 (DownstreamRequest); readonly (2) and type (3, Bytes) keep defaults.
    args.extend_from_slice(&[0x28, 0x01]);
    args
}

/// What the filter remembers about a forwarded request so a redirect hop can be checked like
/// the native gateway checks it: which source, where the last attempt went, the first origin
/// URL's web origin (for origin auth), hops so far, the Cache-Control cap, and whether the client
/// request holds a `max_inflight_per_source` slot (which the hop then holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Source name.
    pub source: String,
    /// URL of the attempt that answered with the redirect.
    pub origin_url: String,
    /// Web origin (`scheme://authority`) of the first origin URL.
    pub auth_origin: String,
    /// Redirects followed so far.
    pub redirects: u32,
    /// Cache-Control cap from `expires`.
    pub max_age: Option<u64>,
    /// When the client's request arrived (unix milliseconds): `upstream.timeout` bounds all
    /// hops together.
    pub started_ms: u64,
    /// Whether the request holds one of its source's in-flight slots: the stream Envoy replaces
    /// hands it to the hop's stream, which releases it when the request ends.
    pub holds_slot: bool,
    /// The client's `Origin`, kept only for a source with a CORS list (the origin request
    /// Envoy recreates no longer carries it).
    pub request_origin: Option<String>,
    /// The `Content-Disposition` the client's signed `dl` asked for.
    pub content_disposition: Option<String>,
}

impl Hop {
    const MAGIC: &'static [u8] = b"ixhop4";

    /// The hop state of a forward of a client request that arrived at `started_ms`, holding an
    /// in-flight slot or not.
    pub fn of(forward: &Forward, started_ms: u64, holds_slot: bool) -> Hop {
        Hop {
            started_ms,
            holds_slot,
            source: forward.source_name().to_owned(),
            origin_url: forward.origin().to_url_string(),
            auth_origin: forward.auth_origin().to_owned(),
            redirects: forward.redirects(),
            max_age: forward.max_age(),
            request_origin: None,
            content_disposition: forward.content_disposition().map(str::to_owned),
        }
    }

    /// This state with the client's `Origin` (see [`Hop::request_origin`]).
    pub fn with_request_origin(mut self, origin: Option<&str>) -> Hop {
        self.request_origin = origin.map(str::to_owned);
        self
    }

    /// Length-prefixed fields after a magic tag (no field can break the framing).
    pub fn encode(&self) -> Vec<u8> {
        let redirects = self.redirects.to_string();
        let max_age = self.max_age.map(|a| a.to_string()).unwrap_or_default();
        let started = self.started_ms.to_string();
        let fields = [
            if self.holds_slot { "1" } else { "0" },
            started.as_str(),
            redirects.as_str(),
            max_age.as_str(),
            self.source.as_str(),
            self.auth_origin.as_str(),
            self.origin_url.as_str(),
            self.request_origin.as_deref().unwrap_or_default(),
            self.content_disposition.as_deref().unwrap_or_default(),
        ];
        encode_fields(Self::MAGIC, fields)
    }

    /// Parses [`Hop::encode`]'s output; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Hop> {
        let fields = decode_fields(Self::MAGIC, bytes)?;
        let [slot, started, redirects, max_age, source, auth_origin, origin_url, request_origin, content_disposition]: [String; 9] =
            fields.try_into().ok()?;
        let present = |value: String| (!value.is_empty()).then_some(value);
        Some(Hop {
            holds_slot: match slot.as_str() {
                "1" => true,
                "0" => false,
                _ => return None,
            },
            started_ms: started.parse().ok()?,
            redirects: redirects.parse().ok()?,
            max_age: if max_age.is_empty() {
                None
            } else {
                Some(max_age.parse().ok()?)
            },
            source,
            auth_origin,
            origin_url,
            request_origin: present(request_origin),
            content_disposition: present(content_disposition),
        })
    }

    /// The forward this hop state describes (see [`Forward::resume`]); `None` if the source is
    /// gone (reconfigured) or the URL no longer parses.
    pub fn forward(&self, sources: &Sources) -> Option<Forward> {
        let mut forward = Forward::resume(
            sources,
            &self.source,
            &self.origin_url,
            &self.auth_origin,
            self.redirects,
            self.max_age,
        )?;
        forward.set_content_disposition(self.content_disposition.clone());
        Some(forward)
    }
}

/// `magic`, then each field as its length in decimal, `:` and its bytes: no field can break
/// the framing (the hop state, the fallback state).
pub(crate) fn encode_fields<S: AsRef<str>>(
    magic: &[u8],
    fields: impl IntoIterator<Item = S>,
) -> Vec<u8> {
    let mut out = magic.to_vec();
    for field in fields {
        let field = field.as_ref();
        out.extend_from_slice(field.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// The fields of [`encode_fields`]'s output; `None` for anything else.
pub(crate) fn decode_fields(magic: &[u8], bytes: &[u8]) -> Option<Vec<String>> {
    let mut rest = bytes.strip_prefix(magic)?;
    let mut fields: Vec<String> = Vec::with_capacity(8);
    while !rest.is_empty() {
        let colon = rest.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let value = rest.get(colon + 1..colon + 1 + len)?;
        fields.push(String::from_utf8(value.to_vec()).ok()?);
        rest = &rest[colon + 1 + len..];
    }
    Some(fields)
}

/// Request header that sets Envoy's per-try timeout for one attempt (read and removed by the
/// router, never sent to the origin; a client-sent one is removed by the filter like any
/// non-allowlisted header). Envoy ignores it once the response started downstream, so it ends
/// at the response header like `upstream.timeout`; set on every hop to what is left of it.
pub const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";

/// Milliseconds left of `timeout_ms` for a request that started at `started_ms`, or `None`
/// when nothing is left.
pub fn remaining_ms(started_ms: u64, now_ms: u64, timeout_ms: u64) -> Option<u64> {
    let left = timeout_ms.saturating_sub(now_ms.saturating_sub(started_ms));
    (left > 0).then_some(left)
}

/// The redirect target Envoy recreated the request for: the origin's raw `Location` (copied
/// into [`LOCATION_HEADER`]) when present, else the URL Envoy derived from it.
pub fn hop_location(location: Option<&str>, scheme: &str, authority: &str, path: &str) -> String {
    match location {
        Some(location) if !location.trim().is_empty() => location.to_owned(),
        _ => format!("{scheme}://{authority}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::fixtures::{forward, sources, NOW};
    use ixproxy_core::Outcome;

    #[test]
    fn hop_state_round_trips_through_its_encoding() {
        let hop = Hop {
            started_ms: 1_700_000_000_123,
            source: "we:ird\nname 12:".into(),
            origin_url: "https://o.example/a:b?c=1:2".into(),
            auth_origin: "https://o.example".into(),
            redirects: 3,
            max_age: Some(60),
            holds_slot: true,
            request_origin: Some("https://app.example:8443".into()),
            content_disposition: Some("attachment; filename=\"a:1\"".into()),
        };
        assert_eq!(Hop::decode(&hop.encode()), Some(hop.clone()));
        let neither = Hop {
            request_origin: None,
            content_disposition: None,
            ..hop.clone()
        };
        assert_eq!(Hop::decode(&neither.encode()), Some(neither));
        let no_slot = Hop {
            holds_slot: false,
            ..hop.clone()
        };
        assert_eq!(Hop::decode(&no_slot.encode()), Some(no_slot));
        let no_cap = Hop {
            max_age: None,
            ..hop.clone()
        };
        assert_eq!(Hop::decode(&no_cap.encode()), Some(no_cap));
        let encoded = hop.encode();
        // Anything but the filter's own encoding is refused, truncated or padded ones too.
        for bad in [
            &b""[..],
            b"ixhop4",
            b"ixhop1" as &[u8],
            &[b"ixhop3".as_slice(), &encoded[6..]].concat(),
            b"ixhop41:21:01:01:01:x1:x1:x0:0:",
            &encoded[..encoded.len() - 1],
            &[encoded.as_slice(), b"1:x"].concat(),
            b"ixhop41:11:01:x1:x1:x1:x1:x0:0:",
            b"ixhop41:11:01:01:01:x1:x1:x0:",
            b"ixhop499999999999999999999:x",
        ] {
            assert_eq!(Hop::decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_stored_hop_is_revalidated_like_the_first_url() {
        let sources = sources();
        let first = forward("a.example", "https://o.example/a.jpg");
        let restored = Hop::decode(&Hop::of(&first, 5, false).encode())
            .and_then(|hop| hop.forward(&sources))
            .expect("restores");
        assert_eq!(restored.origin(), first.origin());
        assert_eq!((restored.redirects(), restored.max_age()), (0, Some(60)));
        // The client's dl survives the hop.
        let mut named = first.clone();
        named.set_content_disposition(Some("attachment; filename=\"x\"".into()));
        let back = Hop::decode(&Hop::of(&named, 5, false).encode())
            .and_then(|hop| hop.forward(&sources))
            .expect("restores");
        assert_eq!(back.content_disposition(), named.content_disposition());
        let random = [7u8; 32];
        // Same host: fresh origin auth; other allowed host: none; other host: refused.
        let same = restored.redirect("/b.jpg").expect("same host");
        assert_eq!(same.origin().to_url_string(), "https://o.example/b.jpg");
        assert!(same
            .auth_headers(NOW, &random)
            .get("x-imgix-origin-secret")
            .is_some());
        let other = restored
            .redirect("http://cdn.example/c")
            .expect("allowed host");
        assert!(other.auth_headers(NOW, &random).is_empty());
        let denied = restored
            .redirect("http://evil.example/")
            .expect_err("host not allowed");
        assert_eq!(denied.status(), 403);
        let private = restored
            .redirect("http://cdn.example@127.0.0.1/")
            .expect_err("userinfo");
        assert_eq!(private.status(), 502);
        // The count survives the round trip: past upstream.max_redirects is a 502.
        let second = Hop::decode(&Hop::of(&other, 5, false).encode())
            .and_then(|hop| hop.forward(&sources))
            .expect("restores")
            .redirect("/d")
            .expect("second hop");
        let third = Hop::decode(&Hop::of(&second, 5, false).encode())
            .and_then(|hop| hop.forward(&sources))
            .expect("restores")
            .redirect("/e")
            .expect_err("third hop");
        assert_eq!(
            (third.status(), third.outcome()),
            (502, Outcome::BadRedirect)
        );
        // A hop of a source that is gone (reconfigured) is not followed.
        let gone = Hop {
            source: "gone".into(),
            ..Hop::of(&first, 5, false)
        };
        assert_eq!(gone.forward(&sources), None);
    }

    #[test]
    fn all_hops_share_one_timeout() {
        assert_eq!(remaining_ms(1_000, 1_000, 3_000), Some(3_000));
        assert_eq!(remaining_ms(1_000, 3_500, 3_000), Some(500));
        assert_eq!(remaining_ms(1_000, 4_000, 3_000), None);
        assert_eq!(remaining_ms(1_000, 9_000, 3_000), None);
        // A clock that went backwards leaves the full budget, never more.
        assert_eq!(remaining_ms(5_000, 1_000, 3_000), Some(3_000));
    }

    #[test]
    fn hop_property_is_declared_for_the_downstream_request() {
        // DeclarePropertyArguments { name: "ixproxy_hop", span: DownstreamRequest }.
        let mut expected = vec![0x0a, 11];
        expected.extend_from_slice(b"ixproxy_hop");
        expected.extend_from_slice(&[0x28, 0x01]);
        assert_eq!(declare_property_args(HOP_PROPERTY), expected);
    }

    #[test]
    fn hop_location_prefers_the_raw_location() {
        assert_eq!(hop_location(Some("/x?y"), "http", "h", "/p"), "/x?y");
        assert_eq!(
            hop_location(Some("  "), "https", "h:1", "/p"),
            "https://h:1/p"
        );
        assert_eq!(hop_location(None, "http", "h", "/p?q"), "http://h/p?q");
    }
}
