//! The pure half of the filter's translation: what a core [`Forward`] or [`Rejection`] means as
//! Envoy header edits and local replies. No host calls, so it is tested natively; the HTTP
//! context only applies these plans.

use std::borrow::Cow;
use std::convert::Infallible;

use ixproxy_core::auth::AuthHeaders;
use ixproxy_core::gateway_headers::{GatewayHeaderName, GatewayValue};
use ixproxy_core::identity::{
    OriginHeader, OriginUserAgent, DEFAULT_ORIGIN_USER_AGENT, USER_AGENT,
};
use ixproxy_core::response::ResponseEdits;
use ixproxy_core::{Forward, Rejection};

use ixproxy_core::envoy::{CacheFill, CACHE_TTL_HEADER};
pub use ixproxy_core::envoy::{ALLOW_PRIVATE_HEADER, FORWARDED_PROTO, UPSTREAM_HEADER};
/// [`UPSTREAM_HEADER`] value routed to the TLS dynamic-forward-proxy cluster.
pub const UPSTREAM_TLS: &str = "tls";
/// [`UPSTREAM_HEADER`] value routed to the plain-HTTP dynamic-forward-proxy cluster.
pub const UPSTREAM_PLAIN: &str = "plain";

/// A header name or value: most are constants, which then cost the filter no allocation (each
/// one an allocation and a copy in the Wasm module's allocator, measured in bench/NOTES.md).
pub type Text = Cow<'static, str>;

/// One change to a header map, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replace every value of the header (lower-case name) with this one.
    Set(Text, Text),
    /// Remove every value of the header (lower-case name).
    Remove(Text),
}

impl HeaderEdit {
    /// The header this edit changes.
    pub fn name(&self) -> &str {
        match self {
            HeaderEdit::Set(name, _) | HeaderEdit::Remove(name) => name,
        }
    }
}

/// A response Envoy sends itself instead of forwarding (`send_http_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u32,
    /// Response headers (lower-case names).
    pub headers: Vec<(&'static str, &'static str)>,
    /// Plain-text body: the rejection reason and a newline.
    pub body: String,
}

/// The local reply for a rejection: the core's status, headers and body.
pub fn local_reply(rejection: &Rejection) -> LocalReply {
    LocalReply {
        status: u32::from(rejection.status()),
        headers: rejection.headers().collect(),
        body: rejection.body(),
    }
}

/// The request header edits that turn the client request into the origin request (`cached`:
/// the response cache sits in front of the origin, so no variant-selecting header goes along).
///
/// `client_header_names` are the names currently in the request header map. Every non-pseudo
/// header outside the forwarded allowlist, except [`FORWARDED_PROTO`], is removed (so client
/// `Authorization`, `Cookie`, `X-Imgix-*` and a forged [`UPSTREAM_HEADER`] never reach the
/// origin); then `:authority`, `:path`, `:scheme`, [`UPSTREAM_HEADER`],
/// [`ALLOW_PRIVATE_HEADER`] when the source allows private origins, and `auth` (the origin
/// auth headers of this attempt) are set.
pub fn forward_request_edits<'a>(
    forward: &Forward,
    auth: &AuthHeaders,
    client_header_names: impl IntoIterator<Item = &'a str>,
    cached: bool,
) -> Vec<HeaderEdit> {
    let mut removed: Vec<String> = Vec::new();
    for name in client_header_names {
        if name.starts_with(':')
            || forward.forwards_client_header(name, cached)
            || name.eq_ignore_ascii_case(FORWARDED_PROTO)
        {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if !removed.contains(&lower) {
            removed.push(lower);
        }
    }
    let origin = forward.origin();
    let upstream = if origin.is_https() {
        UPSTREAM_TLS
    } else {
        UPSTREAM_PLAIN
    };
    let mut edits: Vec<HeaderEdit> = removed
        .into_iter()
        .map(|name| HeaderEdit::Remove(name.into()))
        .collect();
    edits.push(HeaderEdit::Set(
        ":authority".into(),
        origin.authority().into(),
    ));
    edits.push(HeaderEdit::Set(
        ":path".into(),
        origin.path_and_query.clone().into(),
    ));
    edits.push(HeaderEdit::Set(
        ":scheme".into(),
        origin.scheme.as_str().into(),
    ));
    edits.push(HeaderEdit::Set(
        FORWARDED_PROTO.into(),
        origin.scheme.as_str().into(),
    ));
    edits.push(HeaderEdit::Set(UPSTREAM_HEADER.into(), upstream.into()));
    if forward.allow_private() {
        edits.push(HeaderEdit::Set(ALLOW_PRIVATE_HEADER.into(), "1".into()));
    }
    // For the upstream role, which says how long Envoy's cache keeps the answer; without
    // the cache there is nothing to store, and the role has nothing to remove either.
    if cached {
        edits.push(HeaderEdit::Set(
            CACHE_TTL_HEADER.into(),
            CacheFill::encode(
                &forward.source().cache_ttl,
                forward.max_body_bytes(),
                forward.source().allowed_content_types.as_deref(),
            )
            .into(),
        ));
    }
    // The source's User-Agent replaces the client's (removed above) on every origin request.
    let user_agent: Option<Text> = match &forward.source().origin_user_agent {
        OriginUserAgent::Default => Some(Text::Borrowed(DEFAULT_ORIGIN_USER_AGENT)),
        OriginUserAgent::Custom(custom) => Some(custom.clone().into()),
        OriginUserAgent::Forward => None,
    };
    if let Some(value) = user_agent {
        edits.push(HeaderEdit::Set(USER_AGENT.into(), value));
    }
    edits.extend(origin_header_edits(
        &forward.source().origin_headers,
        forward.origin_headers(),
    ));
    edits.extend(
        auth.iter()
            .map(|(name, value)| HeaderEdit::Set(name.into(), value.to_owned().into())),
    );
    edits
}

/// The edits for the source's `origin_headers` (`configured`) on one attempt that sends `sent`
/// of them ([`Forward::origin_headers`]): each one sent is set; each one not sent is removed.
/// A redirect hop's request is Envoy's copy of the first attempt's edited one, so a configured
/// value still in it would otherwise reach a hop outside `origin_auth.hosts` whenever its name
/// passes the forwarded-header rule (validation refuses such names; this holds regardless).
fn origin_header_edits<'a>(
    configured: &'a [OriginHeader],
    sent: &'a [OriginHeader],
) -> impl Iterator<Item = HeaderEdit> + 'a {
    configured.iter().map(move |fixed| {
        let name: Text = fixed.name.clone().into();
        if sent.iter().any(|s| s.name == fixed.name) {
            HeaderEdit::Set(name, fixed.value.expose().to_owned().into())
        } else {
            HeaderEdit::Remove(name)
        }
    })
}

/// Appends to `edits` the headers the gateway sets on a forwarded response (a hit too), as the
/// core decides them ([`Forward::gateway_headers`]: CORS for a request that sent
/// `request_origin`, `Vary` in list mode from `vary`, the response's own `Vary` fields joined,
/// and `Content-Disposition` for a signed `dl`), each replacing every field of its name. The
/// default (`*`) costs no allocation.
pub fn push_gateway_response_edits(
    edits: &mut Vec<HeaderEdit>,
    forward: &Forward,
    request_origin: Option<&str>,
    status: u16,
    vary: Option<&str>,
) {
    let put = |name: GatewayHeaderName, value: GatewayValue<'_>| {
        let value: Text = match (value.as_static(), value) {
            (Some(constant), _) => Text::Borrowed(constant),
            (None, GatewayValue::Text(text)) => text.into_owned().into(),
            (None, other) => other.as_str().to_owned().into(),
        };
        edits.push(HeaderEdit::Set(name.as_str().into(), value));
        Ok::<(), Infallible>(())
    };
    // `put` cannot fail.
    let Ok(()) = forward.gateway_headers(request_origin, status, vary, put);
}

/// The routing markers the filter sets ([`UPSTREAM_HEADER`], [`ALLOW_PRIVATE_HEADER`]) found
/// among `names` (a client sent them): to be removed before the request is judged.
pub fn client_markers<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for name in names {
        let forged = [UPSTREAM_HEADER, ALLOW_PRIVATE_HEADER]
            .iter()
            .any(|m| m.eq_ignore_ascii_case(name));
        if !forged {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if !found.contains(&lower) {
            found.push(lower);
        }
    }
    found
}

/// The core's response edits as header map edits: removals first, then sets.
pub fn response_header_edits(edits: ResponseEdits) -> Vec<HeaderEdit> {
    edits
        .remove
        .into_iter()
        .map(|name| HeaderEdit::Remove(name.into()))
        .chain(
            edits
                .set
                .into_iter()
                .map(|(name, value)| HeaderEdit::Set(name.into(), value.into())),
        )
        .collect()
}

/// The header list `fields` (as read from Envoy, lower-case names) after `edits`, applied in
/// order: a [`HeaderEdit::Set`] replaces every value of its name with one (where the first
/// was, or at the end), a [`HeaderEdit::Remove`] drops every value: what Envoy makes of the
/// edits written one by one, against which [`changing`] is checked.
pub fn edited(mut fields: Vec<(String, Vec<u8>)>, edits: &[HeaderEdit]) -> Vec<(String, Vec<u8>)> {
    for edit in edits {
        apply(&mut fields, edit, |name, value| {
            (name.to_owned(), value.as_bytes().to_vec())
        });
    }
    fields
}

/// The edits among `edits` that change the header list `fields` (applied in order, with
/// [`edited`]'s semantics): removing a name that is not there, or setting a name that already
/// has exactly that one value, changes nothing, and each edit left out is a host call saved.
pub fn changing<'a>(
    fields: &'a [(String, Vec<u8>)],
    edits: &'a [HeaderEdit],
) -> Vec<&'a HeaderEdit> {
    let mut current: Vec<(&str, &[u8])> = fields
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()))
        .collect();
    let mut kept = Vec::new();
    for edit in edits {
        let name = edit.name();
        let mut values = current
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v);
        let changes = match edit {
            HeaderEdit::Remove(_) => values.next().is_some(),
            HeaderEdit::Set(_, value) => {
                values.next() != Some(value.as_bytes()) || values.next().is_some()
            }
        };
        if changes {
            apply(&mut current, edit, |name, value| (name, value.as_bytes()));
            kept.push(edit);
        }
    }
    kept
}

/// Applies one edit to a header list ([`edited`]'s semantics); `field` makes the field a set
/// stores from its name and value.
fn apply<'e, N: AsRef<str>, V>(
    fields: &mut Vec<(N, V)>,
    edit: &'e HeaderEdit,
    field: impl FnOnce(&'e str, &'e str) -> (N, V),
) {
    let same = |n: &N, name: &str| n.as_ref().eq_ignore_ascii_case(name);
    match edit {
        HeaderEdit::Remove(name) => fields.retain(|(n, _)| !same(n, name)),
        HeaderEdit::Set(name, value) => match fields.iter().position(|(n, _)| same(n, name)) {
            Some(first) => {
                fields[first].1 = field(name, value).1;
                let mut index = 0;
                fields.retain(|(n, _)| {
                    let keep = index <= first || !same(n, name);
                    index += 1;
                    keep
                });
            }
            None => fields.push(field(name, value)),
        },
    }
}

/// Test fixtures shared by the filter's unit tests: forwards decided by the core over a small
/// plugin configuration.
#[cfg(test)]
pub(crate) mod fixtures {
    use ixproxy_core::config::{MapSecrets, RawPluginConfig};
    use ixproxy_core::sign::{sign_url, SignOptions};
    use ixproxy_core::{decide, Decision, Forward, RequestInfo, Sources};

    /// A unix time inside every test's window.
    pub const NOW: u64 = 1_700_000_000;

    /// Source `assets` (host `a.example`, handshake `hs`, origins `o.example`, `cdn.example`,
    /// two redirects) and source `dev` (host `d.example`, private origins allowed).
    pub fn sources() -> Sources {
        let json = r#"{"sources": [
            {"name": "assets", "hosts": ["a.example"], "secure_url_tokens": ["t"],
             "origin_auth": {"request_handshake": "hs"},
             "allowed_origin_hosts": ["o.example", "cdn.example", "cdn.example.com"]},
            {"name": "dev", "hosts": ["d.example"], "secure_url_tokens": ["t"],
             "allow_private_origins": true}],
            "upstream": {"max_redirects": 2}}"#;
        RawPluginConfig::from_json(json)
            .and_then(|raw| raw.validate(&MapSecrets::new()))
            .expect("valid plugin config")
            .sources
    }

    /// The core's forward for `url` signed for `host` (with `expires` 60 s ahead).
    pub fn forward(host: &str, url: &str) -> Forward {
        let params = [("expires".to_owned(), (NOW + 60).to_string())];
        let target = sign_url("t", url, &params, &SignOptions::default());
        let request = RequestInfo {
            method: "GET",
            host,
            target: &target,
        };
        match decide(&sources(), &request, NOW) {
            Decision::Forward(forward) => *forward,
            Decision::Reject(r) => panic!("{url}: {r:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{forward, NOW};
    use super::*;
    use ixproxy_core::cors;
    use ixproxy_core::disposition::CONTENT_DISPOSITION;
    use ixproxy_core::response::OriginHead;
    use ixproxy_core::secret::Secret;
    use ixproxy_core::Outcome;

    fn set(name: &str, value: &str) -> HeaderEdit {
        HeaderEdit::Set(name.to_owned().into(), value.to_owned().into())
    }

    #[test]
    fn the_gateway_response_edits_follow_the_source_and_the_request() {
        let mut f = forward("a.example", "https://o.example/a.jpg");
        let edits = |f: &Forward, origin: Option<&str>, status: u16| {
            let mut edits = Vec::new();
            push_gateway_response_edits(&mut edits, f, origin, status, Some("Accept"));
            edits
        };
        let default = [
            set(cors::ALLOW_ORIGIN, "*"),
            set(cors::TIMING_ALLOW_ORIGIN, "*"),
            set(cors::RESOURCE_POLICY, "cross-origin"),
        ];
        assert_eq!(edits(&f, Some("https://x.example"), 500), default);
        assert!(
            edits(&f, None, 200)
                .iter()
                .all(|e| matches!(e, HeaderEdit::Set(Text::Borrowed(_), Text::Borrowed(_)))),
            "the default allocates nothing"
        );
        f.set_content_disposition(Some("attachment; filename=\"a\"".into()));
        assert_eq!(
            edits(&f, None, 200)[3],
            set(CONTENT_DISPOSITION, "attachment; filename=\"a\"")
        );
        assert_eq!(edits(&f, None, 404).len(), 3, "no download of an error");
    }

    #[test]
    fn the_origin_identity_follows_the_source() {
        let json = r#"{"sources": [
            {"name": "s", "hosts": ["s.example"], "secure_url_tokens": ["t"],
             "allowed_origin_hosts": ["o.example", "p.example"],
             "origin_auth": {"hosts": ["o.example"]},
             "origin_user_agent": "forward",
             "origin_headers": {"X-Api-Key": "k3y"},
             "cors": {"allow_origin": ["https://app.example"]}}]}"#;
        let sources = ixproxy_core::config::RawPluginConfig::from_json(json)
            .and_then(|raw| raw.validate(&ixproxy_core::config::MapSecrets::new()))
            .expect("valid")
            .sources;
        let decided = |url: &str| {
            let target = ixproxy_core::sign::sign_url("t", url, &[], &Default::default());
            let request = ixproxy_core::RequestInfo {
                method: "GET",
                host: "s.example",
                target: &target,
            };
            match ixproxy_core::decide(&sources, &request, NOW) {
                ixproxy_core::Decision::Forward(f) => *f,
                ixproxy_core::Decision::Reject(r) => panic!("{r:?}"),
            }
        };
        let f = decided("https://o.example/a.jpg");
        let edits = forward_request_edits(&f, &AuthHeaders::default(), ["user-agent"], false);
        assert!(
            !edits.iter().any(|e| e.name() == "user-agent"),
            "forwarded as sent"
        );
        assert!(edits.contains(&set("x-api-key", "k3y")));
        let other = decided("https://p.example/a.jpg");
        let edits = forward_request_edits(&other, &AuthHeaders::default(), ["user-agent"], false);
        assert!(
            !edits
                .iter()
                .any(|e| matches!(e, HeaderEdit::Set(n, _) if n == "x-api-key")),
            "never set for a host outside origin_auth.hosts"
        );
        assert!(edits.contains(&HeaderEdit::Remove("x-api-key".into())));
        // A listed Origin is echoed with Vary; another gets Vary alone.
        let mut out = Vec::new();
        push_gateway_response_edits(
            &mut out,
            &f,
            Some("https://app.example"),
            200,
            Some("Accept"),
        );
        assert_eq!(
            out,
            [
                set(cors::ALLOW_ORIGIN, "https://app.example"),
                set(cors::TIMING_ALLOW_ORIGIN, "https://app.example"),
                set(cors::RESOURCE_POLICY, "cross-origin"),
                set("vary", "Accept, Origin"),
            ]
        );
        // The origin's Vary is kept when it already names Origin.
        let mut out = Vec::new();
        let origin_vary = Some("Origin, Accept-Encoding");
        push_gateway_response_edits(&mut out, &f, None, 200, origin_vary);
        assert_eq!(out.last(), Some(&set("vary", "Origin, Accept-Encoding")));
        let mut out = Vec::new();
        push_gateway_response_edits(&mut out, &f, Some("https://evil.example"), 200, None);
        assert_eq!(
            out,
            [
                set(cors::RESOURCE_POLICY, "cross-origin"),
                set("vary", "Origin")
            ]
        );
    }

    #[test]
    fn a_hop_keeps_no_origin_header_it_may_not_receive() {
        // Whatever its name (validation refuses forwarded client header names; this does not
        // rely on it), a configured value left in the hop's copy of the first request goes.
        let configured = [
            OriginHeader {
                name: "accept-language".into(),
                value: Secret::new("s3cret"),
            },
            OriginHeader {
                name: "x-api-key".into(),
                value: Secret::new("k3y"),
            },
        ];
        let first_request = vec![
            ("accept-language".to_owned(), b"s3cret".to_vec()),
            ("x-api-key".to_owned(), b"k3y".to_vec()),
            ("accept".to_owned(), b"image/webp".to_vec()),
        ];
        let hop: Vec<HeaderEdit> = origin_header_edits(&configured, &[]).collect();
        let sent = edited(first_request.clone(), &hop);
        assert_eq!(sent, [("accept".to_owned(), b"image/webp".to_vec())]);
        let same: Vec<HeaderEdit> = origin_header_edits(&configured, &configured).collect();
        assert_eq!(edited(first_request.clone(), &same), first_request);
    }

    #[test]
    fn forward_strips_client_headers_and_targets_the_origin() {
        let client = [
            ":method",
            ":path",
            ":authority",
            ":scheme",
            "Accept",
            "range",
            "authorization",
            "Cookie",
            "X-Imgix-Origin-Secret",
            "x-ixproxy-upstream",
            "X-Ixproxy-Allow-Private",
            "x-forwarded-for",
            "x-forwarded-proto",
            "cookie",
            "user-agent",
        ];
        let f = forward("a.example", "https://cdn.example.com:8443/a.jpg?x=1");
        let auth = f.auth_headers(NOW, &[0; 32]);
        let edits = forward_request_edits(&f, &auth, client, false);
        let removed = |edits: &[HeaderEdit]| -> Vec<String> {
            edits
                .iter()
                .filter_map(|e| match e {
                    HeaderEdit::Remove(n) => Some(n.to_string()),
                    HeaderEdit::Set(..) => None,
                })
                .collect()
        };
        assert_eq!(
            removed(&edits),
            [
                "authorization",
                "cookie",
                "x-imgix-origin-secret",
                "x-ixproxy-upstream",
                "x-ixproxy-allow-private",
                "x-forwarded-for",
                "user-agent"
            ]
        );
        // With the response cache in front of the origin, the variant-selecting headers go too.
        let cached = forward_request_edits(&f, &auth, client, true);
        let removed_cached = removed(&cached);
        assert_eq!(removed_cached[..2], ["accept", "authorization"]);
        assert!(
            removed_cached.iter().any(|n| n == "user-agent")
                && !removed_cached.iter().any(|n| n == "range")
        );
        let sets: Vec<&HeaderEdit> = edits
            .iter()
            .filter(|e| matches!(e, HeaderEdit::Set(..)))
            .collect();
        assert_eq!(
            sets,
            [
                &set(":authority", "cdn.example.com:8443"),
                &set(":path", "/a.jpg?x=1"),
                &set(":scheme", "https"),
                &set(FORWARDED_PROTO, "https"),
                &set(UPSTREAM_HEADER, UPSTREAM_TLS),
                &set(USER_AGENT, DEFAULT_ORIGIN_USER_AGENT),
                &set("x-imgix-origin-secret", "hs"),
            ]
        );
        // With the cache, the source's default cache TTL settings and the response limits go
        // to the upstream role.
        let fill = format!(
            "respect_origin 31536000 300 {}",
            ixproxy_core::config::DEFAULT_MAX_BODY_BYTES
        );
        assert!(cached.contains(&set(CACHE_TTL_HEADER, &fill)));
        // Removals come first, so the origin auth header the filter sets survives.
        let last_remove = edits
            .iter()
            .rposition(|e| matches!(e, HeaderEdit::Remove(_)));
        let first_set = edits.iter().position(|e| matches!(e, HeaderEdit::Set(..)));
        assert!(last_remove < first_set);
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn only_edits_that_change_the_list_are_kept() {
        let read = fields(&[
            (":status", "200"),
            ("content-type", "image/png"),
            ("server", "nginx"),
            ("vary", "a"),
            ("vary", "b"),
            ("x-content-type-options", "nosniff"),
        ]);
        let edits = [
            HeaderEdit::Remove("server".into()),
            HeaderEdit::Remove("absent".into()),
            HeaderEdit::Remove("Server".into()),
            set("content-type", "image/png"),
            set("x-content-type-options", "nosniff"),
            set("vary", "a"),
            set("vary", "a"),
            set("cache-control", "no-store"),
            set("cache-control", "no-store"),
        ];
        let kept: Vec<HeaderEdit> = changing(&read, &edits).into_iter().cloned().collect();
        assert_eq!(
            kept,
            [
                HeaderEdit::Remove("server".into()),
                set("vary", "a"),
                set("cache-control", "no-store"),
            ]
        );
        // The kept edits alone leave the list as all of them would.
        assert_eq!(edited(read.clone(), &kept), edited(read, &edits));
    }

    #[test]
    fn edits_apply_to_the_read_header_list_in_order() {
        let read = fields(&[
            (":authority", "a.example"),
            (":path", "/x"),
            ("cookie", "a=1"),
            ("accept", "image/*"),
            ("cookie", "b=2"),
            ("x-request-id", "old"),
            ("x-request-id", "older"),
        ]);
        let edits = [
            HeaderEdit::Remove("cookie".into()),
            set(":authority", "o.example"),
            set("x-request-id", "new"),
            set("x-ixproxy-upstream", "tls"),
            HeaderEdit::Remove("absent".into()),
        ];
        assert_eq!(
            edited(read, &edits),
            fields(&[
                (":authority", "o.example"),
                (":path", "/x"),
                ("accept", "image/*"),
                ("x-request-id", "new"),
                ("x-ixproxy-upstream", "tls"),
            ])
        );
        // A set after a removal of the same name adds it back; a removal after a set drops it.
        let read = fields(&[("a", "1")]);
        let edits = [HeaderEdit::Remove("a".into()), set("a", "2"), set("b", "3")];
        assert_eq!(
            edited(read.clone(), &edits),
            fields(&[("a", "2"), ("b", "3")])
        );
        let edits = [set("b", "3"), HeaderEdit::Remove("b".into())];
        assert_eq!(edited(read.clone(), &edits), read);
        assert_eq!(edited(read.clone(), &[]), read);
    }

    #[test]
    fn the_forward_edits_of_a_client_request_leave_only_what_the_origin_gets() {
        let read = fields(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "a.example"),
            (":path", "/anything"),
            ("cookie", "session=1"),
            ("authorization", "Bearer client"),
            ("x-imgix-origin-secret", "forged"),
            ("accept", "image/*"),
            ("x-forwarded-proto", "http"),
        ]);
        let f = forward("a.example", "https://o.example/a.jpg");
        let auth = f.auth_headers(NOW, &[0; 32]);
        let names: Vec<&str> = read.iter().map(|(n, _)| n.as_str()).collect();
        let out = edited(
            read.clone(),
            &forward_request_edits(&f, &auth, names, false),
        );
        let value = |name: &str| {
            let values: Vec<&[u8]> = out
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
                .collect();
            values
        };
        assert_eq!(value(":authority"), [b"o.example"]);
        assert_eq!(value(":path"), [b"/a.jpg"]);
        assert_eq!(value(":scheme"), [b"https"]);
        assert_eq!(value(":method"), [b"GET"]);
        assert_eq!(value("x-forwarded-proto"), [b"https"]);
        assert_eq!(value("accept"), [b"image/*"]);
        // The client's forged secret is gone; the source's own is the only one.
        assert_eq!(value("x-imgix-origin-secret"), [b"hs"]);
        assert!(value("cookie").is_empty() && value("authorization").is_empty());
    }

    #[test]
    fn client_sent_routing_markers_are_found() {
        assert_eq!(
            client_markers([
                "accept",
                "X-Ixproxy-Upstream",
                "x-ixproxy-allow-private",
                "x-ixproxy-upstream"
            ]),
            [UPSTREAM_HEADER, ALLOW_PRIVATE_HEADER]
        );
        assert!(client_markers(["accept", ":path"]).is_empty());
    }

    #[test]
    fn plain_http_origins_use_the_plain_cluster() {
        let private = forward("d.example", "http://127.0.0.1:8000/x");
        let edits =
            forward_request_edits(&private, &private.auth_headers(NOW, &[0; 32]), [], false);
        assert!(edits.contains(&set(ALLOW_PRIVATE_HEADER, "1")));
        assert!(edits.contains(&set(UPSTREAM_HEADER, UPSTREAM_PLAIN)));
        assert!(edits.contains(&set(":authority", "127.0.0.1:8000")));
        assert!(edits.contains(&set(":scheme", "http")));
    }

    #[test]
    fn rejections_become_plain_text_local_replies() {
        let reply = local_reply(&Rejection::method_not_allowed());
        assert_eq!(reply.status, 405);
        assert_eq!(reply.body, "method not allowed\n");
        assert_eq!(
            reply.headers[..2],
            [
                ("content-type", "text/plain; charset=utf-8"),
                ("allow", "GET, HEAD")
            ]
        );
        assert!(reply
            .headers
            .contains(&("x-content-type-options", "nosniff")));
        assert!(reply.headers.contains(&("cache-control", "no-store")));
        assert_eq!(
            local_reply(&Rejection::origin_timeout()).status,
            504,
            "Envoy-side timeouts answer like the native gateway"
        );
        assert_eq!(
            local_reply(&Rejection::bad_redirect("x")).headers,
            Rejection::bad_redirect("x").headers().collect::<Vec<_>>()
        );
        assert_eq!(Rejection::internal().outcome(), Outcome::Internal);
    }

    #[test]
    fn responses_lose_cookies_and_get_capped() {
        // The fixture's forwards carry `expires` 60 s ahead.
        let f = forward("a.example", "https://o.example/a.png");
        let head = OriginHead::of(
            200,
            [
                ("cache-control", &b"public, max-age=3600"[..]),
                ("set-cookie", b"a=1"),
                ("content-type", b"Image/PNG"),
            ],
        );
        let edits = response_header_edits(f.check_response(&head).expect("allowed"));
        // A Content-Type already in normal form is left as the origin sent it.
        let normal = OriginHead::of(200, [("content-type", &b"image/png"[..])]);
        let normal = response_header_edits(f.check_response(&normal).expect("allowed"));
        assert!(!normal
            .iter()
            .any(|e| matches!(e, HeaderEdit::Set(n, _) if n == "content-type")));
        assert_eq!(edits[0], HeaderEdit::Remove("set-cookie".into()));
        assert!(edits.contains(&set("cache-control", "public, max-age=60")));
        assert!(edits.contains(&set("x-content-type-options", "nosniff")));
        assert!(edits.contains(&set("content-type", "image/png")));
        // Removals come first, so a set header is never removed again.
        let last_remove = edits
            .iter()
            .rposition(|e| matches!(e, HeaderEdit::Remove(_)));
        let first_set = edits.iter().position(|e| matches!(e, HeaderEdit::Set(..)));
        assert!(last_remove < first_set);
    }
}
