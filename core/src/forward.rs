//! A request on its way to an origin: the [`Forward`] that [`crate::decide`] returns and every
//! rule that applies to it afterwards — origin auth per attempt, redirect hops, the addresses
//! the origin name resolved to, and the origin's response.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use crate::addr::{is_denied_ip, resolved_addresses_allowed, upstream_address_allowed};
use crate::auth::AuthHeaders;
use crate::config::{Limits, Source, Sources};
use crate::cors::Cors;
use crate::fallback::{FallbackKind, FALLBACK_HEADER};
use crate::gateway_headers::{gateway_headers, GatewayHeaderName, GatewayValue};
use crate::identity::{OriginHeader, OriginUserAgent, USER_AGENT};
use crate::origin::{parse_origin, OriginUrl};
use crate::outcome::Rejection;
use crate::request::is_forwarded_client_header;
use crate::response::{
    check_head, policy_cache_control, response_edits, OriginHead, ResponseEdits,
};

/// Reason detail of the 502 for a redirect the core would follow but the runtime did not (a
/// `Location` its redirect machinery cannot take).
pub const UNFOLLOWABLE_LOCATION: &str = "location not followable by this runtime";
/// Why an origin redirect whose `Location` is longer than `limits.max_request_target_bytes`
/// is not followed.
pub const LOCATION_TOO_LONG: &str = "location longer than max_request_target_bytes";

/// A request to send to an origin: the source it belongs to, the origin URL of this attempt
/// and what the response rules need (the `expires` cap, the hop count, the first origin URL's
/// web origin).
///
/// Carries no credentials: origin auth headers are built per attempt by
/// [`Forward::auth_headers`]. `Debug` prints the source name, never its secrets.
#[derive(Clone)]
pub struct Forward {
    source: Arc<Source>,
    limits: Limits,
    origin: OriginUrl,
    /// The first origin URL's web origin. On the client's own request that is `origin`'s,
    /// built only when asked for (the Envoy filter's hop state; the native runtime never asks).
    auth_origin: OnceLock<String>,
    max_age: Option<u64>,
    redirects: u32,
    /// The `Content-Disposition` a signed `dl`/`dl64` asks for (see [`crate::disposition`]).
    content_disposition: Option<String>,
    /// Set on the forward of a fallback image ([`Forward::fallback`]): which one.
    fallback: Option<FallbackKind>,
}

impl Forward {
    /// The forward of a client request that passed every check (`max_age` from `expires`).
    pub(crate) fn new(
        source: &Arc<Source>,
        limits: Limits,
        origin: OriginUrl,
        max_age: Option<u64>,
    ) -> Forward {
        Forward {
            source: Arc::clone(source),
            limits,
            auth_origin: OnceLock::new(),
            origin,
            max_age,
            redirects: 0,
            content_disposition: None,
            fallback: None,
        }
    }

    /// Resumes a forward from state a runtime kept across a redirect hop (the Envoy filter's
    /// hop state): the source by name, the URL of the attempt that answered with the redirect,
    /// the first origin URL's web origin ([`Forward::auth_origin`]), hops so far and the
    /// `expires` cap.
    ///
    /// Returns `None` when the source is gone (reconfigured) or the URL no longer parses.
    pub fn resume(
        sources: &Sources,
        source: &str,
        origin_url: &str,
        auth_origin: &str,
        redirects: u32,
        max_age: Option<u64>,
    ) -> Option<Forward> {
        Some(Forward {
            source: Arc::clone(sources.by_name(source)?),
            limits: *sources.limits(),
            origin: parse_origin(origin_url).ok()?,
            auth_origin: OnceLock::from(auth_origin.to_owned()),
            max_age,
            redirects,
            content_disposition: None,
            fallback: None,
        })
    }

    /// The source this request belongs to.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Name of the source (for logs and metrics).
    pub fn source_name(&self) -> &str {
        &self.source.name
    }

    /// The origin URL of this attempt.
    pub fn origin(&self) -> &OriginUrl {
        &self.origin
    }

    /// The web origin (`scheme://authority`) of the first origin URL: origin auth goes only to
    /// hops with the same scheme, host and port.
    pub fn auth_origin(&self) -> &str {
        self.auth_origin.get_or_init(|| self.origin.web_origin())
    }

    /// Upper bound for the response's `Cache-Control` max-age, from `expires`.
    pub fn max_age(&self) -> Option<u64> {
        self.max_age
    }

    /// Redirect hops followed so far (0 for the origin URL the client signed).
    pub fn redirects(&self) -> u32 {
        self.redirects
    }

    /// Whether the source allows private/loopback origin addresses.
    pub fn allow_private(&self) -> bool {
        self.source.allow_private_origins
    }

    /// The limits in force for this request.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The origin auth headers for one attempt at this forward: fresh timestamp and request id
    /// (`now` in unix seconds, `random` 32 fresh random bytes). None at all unless the origin
    /// host is in the source's `origin_auth.hosts` and, on a redirect hop, the scheme, host and
    /// port are the first origin URL's. Runtimes call it once per origin request, so an
    /// unsigned or refused request never draws randomness or computes an HMAC.
    pub fn auth_headers(&self, now: u64, random: &[u8; 32]) -> AuthHeaders {
        if self.may_receive_auth() {
            self.source
                .origin_auth
                .headers(&self.origin.host, now, random)
        } else {
            AuthHeaders::default()
        }
    }

    /// Whether this attempt's origin may receive the source's origin auth headers (see
    /// [`Forward::auth_headers`]).
    pub fn may_receive_auth(&self) -> bool {
        self.source
            .origin_auth_host_allowed(&self.origin.host, self.origin.port)
            && self
                .auth_origin
                .get()
                .is_none_or(|first| self.origin.has_web_origin(first))
    }

    /// The `Content-Disposition` value every successful (2xx) response to this request carries
    /// (a signed `dl`/`dl64`, see [`crate::disposition`]), hits included; `None` without one.
    pub fn content_disposition(&self) -> Option<&str> {
        self.content_disposition.as_deref()
    }

    /// Sets what [`Forward::content_disposition`] returns: [`crate::decide`] sets it from the
    /// signed params; a runtime that resumes a forward ([`Forward::resume`]) sets it again from
    /// the state it kept.
    pub fn set_content_disposition(&mut self, value: Option<String>) {
        self.content_disposition = value;
    }

    /// The source's CORS setting, for the headers of each response ([`Cors::headers`]).
    pub fn cors(&self) -> &Cors {
        &self.source.cors
    }

    /// Hands `put` each header the gateway sets on a response of `status` to this request (its
    /// client's `Origin` is `request_origin`, read only when [`Cors::needs_request_origin`];
    /// `origin_vary` the response's own `Vary` fields joined, `None` when it has none; for a
    /// fallback image, the image's own): see [`gateway_headers`].
    ///
    /// # Errors
    /// `put`'s first error.
    pub fn gateway_headers<'a, E>(
        &'a self,
        request_origin: Option<&'a str>,
        status: u16,
        origin_vary: Option<&'a str>,
        put: impl FnMut(GatewayHeaderName, GatewayValue<'a>) -> Result<(), E>,
    ) -> Result<(), E> {
        gateway_headers(
            &self.source.cors,
            self.content_disposition(),
            request_origin,
            status,
            origin_vary,
            put,
        )
    }

    /// The `User-Agent` every attempt of this forward sends, or `None` when the source
    /// forwards the client's (`origin_user_agent: forward`).
    pub fn origin_user_agent(&self) -> Option<&str> {
        self.source.origin_user_agent.fixed()
    }

    /// Whether a client request header (any case) goes to the origin: the forwarded-header
    /// rule ([`is_forwarded_client_header`]), less the client's `User-Agent` when the source
    /// sends its own ([`Forward::origin_user_agent`]).
    pub fn forwards_client_header(&self, name: &str, cached: bool) -> bool {
        is_forwarded_client_header(name, cached)
            && (self.source.origin_user_agent == OriginUserAgent::Forward
                || !name.eq_ignore_ascii_case(USER_AGENT))
    }

    /// The source's `origin_headers` for this attempt: all of them where the origin auth headers
    /// go ([`Forward::may_receive_auth`]: `origin_auth.hosts`, and on a redirect hop the first
    /// URL's scheme, host and port), none elsewhere.
    pub fn origin_headers(&self) -> &[OriginHeader] {
        if self.source.origin_headers.is_empty() || !self.may_receive_auth() {
            return &[];
        }
        &self.source.origin_headers
    }

    /// Follows an origin redirect: resolves `location` against the current origin URL and
    /// re-validates it like the first URL (http/https, no userinfo, valid port, the source's
    /// `allowed_origin_hosts` and private-address rules).
    ///
    /// # Errors
    /// 502 [`crate::Outcome::BadRedirect`] past `upstream.max_redirects` or for an unusable
    /// `Location`; 403 [`crate::Outcome::OriginDenied`] when the hop's host is not allowed.
    pub fn redirect(&self, location: &str) -> Result<Forward, Rejection> {
        if self.redirects >= self.limits.max_redirects {
            return Err(Rejection::bad_redirect("too many redirects"));
        }
        // The hop's target is bounded like the client's, but an over-long Location is the
        // origin's fault: a 502, never the client's 414.
        if location.len() > self.limits.max_request_target_bytes {
            return Err(Rejection::bad_redirect(LOCATION_TOO_LONG));
        }
        let base = url::Url::parse(&self.origin.to_url_string())
            .map_err(|_| Rejection::bad_redirect("bad base url"))?;
        let target = base
            .join(location.trim())
            .map_err(|_| Rejection::bad_redirect("location is not a url"))?;
        let origin = parse_origin(target.as_str()).map_err(Rejection::bad_redirect)?;
        check_origin_policy(&self.source, &origin)?;
        Ok(Forward {
            source: Arc::clone(&self.source),
            limits: self.limits,
            origin,
            auth_origin: OnceLock::from(self.auth_origin().to_owned()),
            max_age: self.max_age,
            redirects: self.redirects + 1,
            content_disposition: self.content_disposition.clone(),
            fallback: self.fallback,
        })
    }

    /// The answer to a redirect the runtime did not follow itself (its own redirect machinery
    /// stopped): the core's reason when it would refuse the hop too, else a 502 saying the
    /// `Location` was not followable. A redirect is never passed to the client.
    pub fn unfollowed_redirect(&self, location: &str) -> Rejection {
        match self.redirect(location) {
            Err(rejection) => rejection,
            Ok(_) => Rejection::bad_redirect(UNFOLLOWABLE_LOCATION),
        }
    }

    /// Checks the addresses the origin name resolved to (see
    /// [`crate::addr::resolved_addresses_allowed`]).
    ///
    /// # Errors
    /// 403 [`crate::Outcome::OriginDenied`] when any address is denied and the source does not
    /// allow private origins.
    pub fn check_resolved(&self, addrs: impl IntoIterator<Item = IpAddr>) -> Result<(), Rejection> {
        if resolved_addresses_allowed(addrs, self.allow_private()) {
            Ok(())
        } else {
            Err(Rejection::origin_address_denied())
        }
    }

    /// Checks the address the runtime reports it connected to (`ip:port`; `None` when it
    /// cannot tell), before any byte of the response reaches the client.
    ///
    /// # Errors
    /// 403 [`crate::Outcome::OriginDenied`] when the address is denied or unknown and the
    /// source does not allow private origins.
    pub fn check_upstream_address(&self, address: Option<&str>) -> Result<(), Rejection> {
        if self.allow_private() || upstream_address_allowed(address) {
            Ok(())
        } else {
            Err(Rejection::origin_address_denied())
        }
    }

    /// Checks a stored answer (a cache hit) against the source's **current** policy exactly as
    /// an origin answer is (SPEC §13): the host of the hop that answered (`stored_origin`, the
    /// URL stored with it; `None` = this request's own origin URL) must still be allowed, and the
    /// head must pass [`Forward::check_response`]. A reload that narrows the policy applies to
    /// stored entries at once.
    ///
    /// # Errors
    /// As [`Forward::check_response`]; 403 [`crate::Outcome::OriginDenied`] for a hop host the
    /// source no longer allows; 502 [`crate::Outcome::BadRedirect`] for a stored URL that does
    /// not parse.
    pub fn check_stored(
        &self,
        head: &OriginHead,
        stored_origin: Option<&str>,
    ) -> Result<(), Rejection> {
        if let Some(url) = stored_origin {
            let origin = parse_origin(url).map_err(Rejection::bad_redirect)?;
            check_origin_policy(&self.source, &origin)?;
        }
        self.check_response(head).map(|_| ())
    }

    /// Checks an origin response head before anything of it reaches the client and returns
    /// the edits that make it the client's: the declared `Content-Length` against
    /// `upstream.max_body_bytes`, the one `Content-Type` (parsed strictly), which must be in
    /// the source's `allowed_content_types` on every response that can carry a body, then
    /// [`crate::response::response_edits`].
    ///
    /// # Errors
    /// 502 [`crate::Outcome::OriginTooLarge`], 502 [`crate::Outcome::BadOriginResponse`] for
    /// several or unparsable `Content-Type` values, or 403
    /// [`crate::Outcome::ContentTypeDenied`].
    pub fn check_response(&self, head: &OriginHead) -> Result<ResponseEdits, Rejection> {
        let media_type = check_head(
            head,
            self.limits.max_body_bytes,
            self.source.allowed_content_types.as_deref(),
        )?;
        Ok(response_edits(
            head,
            media_type.as_ref(),
            &self.source.cache_ttl,
            self.max_age,
        ))
    }

    /// The forward of the source's fallback image of `kind` for this request (SPEC §15), whose
    /// raw target is `target` (for `*_append_qs`): fetched like an origin URL (same policy,
    /// limits, `expires` cap; origin auth only when its host is in `origin_auth.hosts`; its own
    /// redirect hops). `None` when the source has no such image, or when the image's URL no
    /// longer passes the source's origin policy.
    pub fn fallback(&self, kind: FallbackKind, target: &str) -> Option<Forward> {
        let image = self.source.fallback(kind)?;
        self.fallback_to(kind, image.url_for(target).ok()?)
    }

    /// [`Forward::fallback`] with the request's gateway params already taken
    /// ([`crate::fallback::gateway_params`]).
    pub fn fallback_with_params(&self, kind: FallbackKind, params: &str) -> Option<Forward> {
        let image = self.source.fallback(kind)?;
        self.fallback_to(kind, image.url_with_params(params).ok()?)
    }

    fn fallback_to(&self, kind: FallbackKind, origin: OriginUrl) -> Option<Forward> {
        check_origin_policy(&self.source, &origin).ok()?;
        Some(Forward {
            source: Arc::clone(&self.source),
            limits: self.limits,
            origin,
            auth_origin: OnceLock::new(),
            max_age: self.max_age,
            redirects: 0,
            // The image answers with the failure's status: no download is asked of it.
            content_disposition: None,
            fallback: Some(kind),
        })
    }

    /// Resumes the forward of a fallback image from state a runtime kept when it took the
    /// fallback (the Envoy filter's fallback state): the source by name, the fallback URL, which
    /// fallback, and the `expires` cap. The URL is checked against the source's current origin
    /// policy.
    ///
    /// Returns `None` when the source is gone, or the URL no longer parses or passes.
    pub fn resume_fallback(
        sources: &Sources,
        source: &str,
        url: &str,
        kind: FallbackKind,
        max_age: Option<u64>,
    ) -> Option<Forward> {
        let source = sources.by_name(source)?;
        let origin = parse_origin(url).ok()?;
        check_origin_policy(source, &origin).ok()?;
        Some(Forward {
            source: Arc::clone(source),
            limits: *sources.limits(),
            origin,
            auth_origin: OnceLock::new(),
            max_age,
            redirects: 0,
            // The image answers with the failure's status: no download is asked of it.
            content_disposition: None,
            fallback: Some(kind),
        })
    }

    /// This forward, as the fetch of the fallback image of `kind`: a runtime that resumes a
    /// redirect hop of the image from state without the kind (the Envoy filter's hop state).
    pub fn into_fallback(mut self, kind: FallbackKind) -> Forward {
        self.fallback = Some(kind);
        self
    }

    /// Which fallback image this forward fetches; `None` for the client's own origin URL.
    pub fn fallback_kind(&self) -> Option<FallbackKind> {
        self.fallback
    }

    /// Whether a cache keyed on the request (its source and origin URL, never its params: SPEC
    /// §13) may store this forward's answer under that key. Not when this is a fallback image
    /// the source appends the request's params to (`*_append_qs`): its answer depends on what
    /// the key leaves out, so one request's variant would be served to requests with other
    /// params (a request without params included: its image is the bare URL's).
    pub fn storable_under_request_key(&self) -> bool {
        match self.fallback {
            None => true,
            Some(kind) => !self
                .source
                .fallback(kind)
                .is_some_and(|image| image.append_qs),
        }
    }

    /// Checks the answer of a fallback image ([`Forward::fallback`]) and returns the edits that
    /// make it the client's answer with `status` (what the client would have got without the
    /// fallback): any 2xx but 206, passing [`Forward::check_response`] as if the origin had
    /// answered `status` (size, one strict `Content-Type`, `allowed_content_types`); then
    /// `Cache-Control: public, max-age=<cache_ttl_error>` (capped by `expires`), no validator,
    /// range or `Expires` header of the image (a cache must not revalidate or extend it), and
    /// [`FALLBACK_HEADER`].
    ///
    /// # Errors
    /// 502 [`crate::Outcome::BadOriginResponse`] for another status; as
    /// [`Forward::check_response`]. Either way the client gets the original answer.
    pub fn check_fallback_response(
        &self,
        head: &OriginHead,
        status: u16,
    ) -> Result<ResponseEdits, Rejection> {
        let kind = self.fallback.unwrap_or(FallbackKind::Error);
        if !(200..300).contains(&head.status()) || head.status() == 206 {
            return Err(Rejection::bad_origin_response(format_args!(
                "fallback image answered {}",
                head.status()
            )));
        }
        let mut served = head.clone();
        served.set_status(status);
        let mut edits = self.check_response(&served)?;
        for name in [
            "etag",
            "last-modified",
            "expires",
            "content-range",
            "accept-ranges",
        ] {
            if !edits.remove.iter().any(|r| r == name) {
                edits.remove.push(name.to_owned());
            }
        }
        // The policy of an error answer (`public, max-age=<cache_ttl_error>`), whatever status
        // the runtime serves it with and whatever the image's own `Cache-Control` says.
        let policy = policy_cache_control(&self.source.cache_ttl, 500, None);
        edits.set.retain(|(name, _)| *name != "cache-control");
        edits.set.push((
            "cache-control",
            match self.max_age {
                Some(max_age) => crate::expires::cap_cache_control(Some(&policy), max_age),
                None => policy.clone(),
            },
        ));
        edits.policy_cache_control = Some(policy);
        edits.set.push((FALLBACK_HEADER, kind.as_str().to_owned()));
        Ok(edits)
    }

    /// `upstream.max_body_bytes` (what the Envoy filter passes its upstream role with the
    /// cache, see [`crate::envoy::CacheFill`]).
    pub fn max_body_bytes(&self) -> u64 {
        self.limits.max_body_bytes
    }

    /// Whether the body received so far (`bytes`) is over `upstream.max_body_bytes`; the
    /// runtime then aborts the transfer and counts [`Rejection::origin_too_large`].
    pub fn body_over_limit(&self, bytes: u64) -> bool {
        bytes > self.limits.max_body_bytes
    }
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("source", &self.source.name)
            .field("origin", &self.origin.to_url_string())
            .field("auth_origin", &self.auth_origin())
            .field("max_age", &self.max_age)
            .field("redirects", &self.redirects)
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl PartialEq for Forward {
    fn eq(&self, other: &Forward) -> bool {
        self.source.name == other.source.name
            && self.limits == other.limits
            && self.origin == other.origin
            && self.auth_origin() == other.auth_origin()
            && self.max_age == other.max_age
            && self.redirects == other.redirects
            && self.content_disposition == other.content_disposition
            && self.fallback == other.fallback
    }
}

impl Eq for Forward {}

/// The source's origin policy: `allowed_origin_hosts`, then (unless `allow_private_origins`) no
/// IP literal from the deny list and no `localhost` name.
pub(crate) fn check_origin_policy(source: &Source, origin: &OriginUrl) -> Result<(), Rejection> {
    if !source.origin_host_allowed(&origin.host, origin.port) {
        return Err(Rejection::origin_host_not_allowed());
    }
    if !source.allow_private_origins && is_private_host(origin) {
        return Err(Rejection::origin_address_denied());
    }
    Ok(())
}

/// Whether the origin host is known to be non-public before any DNS lookup: a denied IP literal
/// or a `localhost` name.
fn is_private_host(origin: &OriginUrl) -> bool {
    match origin.ip() {
        Some(ip) => is_denied_ip(ip),
        None => {
            let host = origin.host.trim_end_matches('.');
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}
