//! The HTTP stream context: applies the decision of [`ixproxy_core::decide`] to one request,
//! follows origin redirects through Envoy's internal redirects, and enforces the response
//! limits (content type, size, upstream address) before any byte reaches the client.
//!
//! Redirects: the generated routes let Envoy follow 301/302/303/307/308 internally (copying the
//! origin's `Location` into the recreated request). Envoy runs the whole filter chain again on
//! the recreated request; the filter recognises it only by the hop state it stored in Envoy
//! filter state ([`plan::HOP_PROPERTY`], request life span), which clients cannot set, and
//! re-validates the hop with [`Forward::redirect`]. A redirect Envoy does not follow (past its
//! limit, relative `Location`) reaches this filter as a 3xx response and becomes a 502.

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use ixproxy_core::decide::{check_request_body, check_request_headers, is_followed_redirect};
use ixproxy_core::{decide, Decision, Forward, Outcome, Rejection, RequestInfo, Sources};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, Bytes, MapType};

use crate::metrics::Counters;
use crate::plan::{self, HeaderEdit, Hop, LocalReply};

/// Envoy's response code details for a response that came from the origin (not a local reply).
const VIA_UPSTREAM: &str = "via_upstream";
/// Prefix of Envoy's response code details for a request the RBAC filter refused.
const RBAC_DENIED: &str = "rbac_access_denied";

/// Per-request state.
pub struct FilterHttp {
    sources: Option<Rc<Sources>>,
    counters: Rc<Counters>,
    /// `upstream.timeout` in milliseconds: the budget of all hops of one request together.
    timeout_ms: u64,
    /// The forward the request was sent with (response checks apply only then).
    forward: Option<Forward>,
    /// Response body bytes passed to the client so far.
    body_bytes: u64,
    /// Set once the filter answered or aborted the response itself.
    done: bool,
}

impl FilterHttp {
    /// A stream context over the root's validated sources (`None` if configuration failed,
    /// which Envoy normally prevents by refusing the filter).
    pub fn new(sources: Option<Rc<Sources>>, counters: Rc<Counters>, timeout: Duration) -> Self {
        FilterHttp {
            sources,
            counters,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            forward: None,
            body_bytes: 0,
            done: false,
        }
    }

    /// A header value as text; bytes that are not UTF-8 (obs-text) are replaced, which can only
    /// make a signature or an origin check fail, never pass. The SDK's `get_map`/`get_map_value`
    /// panic on such bytes, so only the `_bytes` variants are used.
    fn header(map: MapType, name: &str) -> Option<String> {
        hostcalls::get_map_value_bytes(map, name)
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn headers(map: MapType) -> Result<Vec<(String, Bytes)>, String> {
        hostcalls::get_map_bytes(map).map_err(|status| format!("cannot read headers: {status:?}"))
    }

    fn reply(reply: &LocalReply) -> Action {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        if let Err(status) =
            hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
        {
            log::error!("ixproxy: cannot send the local reply: {status:?}");
        }
        Action::Pause
    }

    fn reject(&mut self, rejection: &Rejection) -> Action {
        self.counters.increment(rejection.outcome);
        self.done = true;
        Self::reply(&plan::local_reply(rejection))
    }

    fn internal_error(&mut self, reason: &str) -> Action {
        log::error!("ixproxy: {reason}");
        self.done = true;
        Self::reply(&LocalReply {
            status: 500,
            headers: vec![("content-type", "text/plain; charset=utf-8".to_owned())],
            body: "internal error\n".to_owned(),
        })
    }

    fn apply(map: MapType, edits: &[HeaderEdit]) -> Result<(), String> {
        for edit in edits {
            let result = match edit {
                HeaderEdit::Set(name, value) => {
                    hostcalls::set_map_value(map, name, Some(value.as_str()))
                }
                HeaderEdit::Remove(name) => hostcalls::set_map_value(map, name, None),
            };
            result.map_err(|status| format!("cannot edit header: {status:?}"))?;
        }
        Ok(())
    }

    /// Unix time in seconds and in milliseconds, and 32 fresh random bytes.
    fn now_and_random() -> Result<(u64, u64, [u8; 32]), String> {
        let since_epoch = hostcalls::get_current_time()
            .map_err(|status| format!("no clock: {status:?}"))?
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut random = [0u8; 32];
        getrandom::getrandom(&mut random).map_err(|e| format!("no randomness: {e}"))?;
        let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        Ok((since_epoch.as_secs(), millis, random))
    }

    /// The hop state stored by this filter for an earlier attempt of this downstream request,
    /// present only on a stream Envoy recreated for an internal redirect.
    fn stored_hop() -> Option<Vec<u8>> {
        hostcalls::get_property(vec![plan::HOP_PROPERTY])
            .ok()
            .flatten()
            .filter(|state| !state.is_empty())
    }

    /// Rewrites the request for `forward`, remembers it for a redirect hop and the response.
    /// `started_ms` is when the client's request arrived; `timeout_ms`, when set, the router
    /// timeout for this attempt (what a hop has left of `upstream.timeout`).
    fn send(
        &mut self,
        forward: Forward,
        names: &[String],
        started_ms: u64,
        timeout_ms: Option<u64>,
    ) -> Action {
        let mut edits = plan::forward_request_edits(&forward, names.iter().map(String::as_str));
        if let Some(timeout_ms) = timeout_ms {
            edits.push(HeaderEdit::Set(
                plan::TIMEOUT_HEADER.into(),
                timeout_ms.to_string(),
            ));
        }
        if let Err(e) = Self::apply(MapType::HttpRequestHeaders, &edits) {
            return self.internal_error(&e);
        }
        // Without the hop state a redirect cannot be followed (the recreated request would be
        // judged as a client request and refused), so failing to store it is an error.
        if let Err(status) = hostcalls::set_property(
            vec![plan::HOP_PROPERTY],
            Some(&Hop::of(&forward, started_ms).encode()),
        ) {
            return self.internal_error(&format!("cannot store the hop state: {status:?}"));
        }
        // The route was chosen before the filter ran; make Envoy choose again for the new
        // :scheme. Hosts without this foreign function re-evaluate on header changes themselves.
        if let Err(status) = hostcalls::call_foreign_function("clear_route_cache", None) {
            log::debug!("ixproxy: clear_route_cache unavailable: {status:?}");
        }
        self.forward = Some(forward);
        Action::Continue
    }

    /// A stream Envoy recreated for an origin redirect: re-validate the hop like the first URL.
    fn follow(&mut self, sources: &Sources, state: &[u8], names: &[String]) -> Action {
        let Some(hop) = Hop::decode(state) else {
            return self.internal_error("unreadable hop state");
        };
        let Some(previous) = hop.forward(sources) else {
            return self.internal_error("hop state of an unknown source");
        };
        let (now, now_ms, random) = match Self::now_and_random() {
            Ok(v) => v,
            Err(e) => return self.internal_error(&e),
        };
        // One `upstream.timeout` for the request and all its hops, as on the native gateway.
        let Some(left_ms) = plan::remaining_ms(hop.started_ms, now_ms, self.timeout_ms) else {
            self.done = true;
            return Self::reply(&LocalReply {
                status: 504,
                headers: vec![("content-type", "text/plain; charset=utf-8".to_owned())],
                body: "origin timed out\n".to_owned(),
            });
        };
        let location = plan::hop_location(
            Self::header(MapType::HttpRequestHeaders, plan::LOCATION_HEADER).as_deref(),
            &Self::header(MapType::HttpRequestHeaders, ":scheme").unwrap_or_default(),
            &Self::header(MapType::HttpRequestHeaders, ":authority").unwrap_or_default(),
            &Self::header(MapType::HttpRequestHeaders, ":path").unwrap_or_default(),
        );
        match previous.redirect(sources, &location, now, &random) {
            Ok(next) => self.send(next, names, hop.started_ms, Some(left_ms)),
            Err(rejection) => self.reject(&rejection),
        }
    }

    /// The origin answered with a redirect Envoy did not follow (past `max_redirects`, or a
    /// `Location` Envoy cannot follow): never hand the 3xx to the client.
    fn unfollowed_redirect(&mut self, sources: &Sources, forward: &Forward) -> Action {
        let location = Self::header(MapType::HttpResponseHeaders, "location").unwrap_or_default();
        let followed = Self::now_and_random()
            .map(|(now, _, random)| forward.redirect(sources, &location, now, &random));
        let rejection = match followed {
            Ok(Err(rejection)) => rejection,
            // A hop the core would take but Envoy did not (a relative Location), or no clock.
            _ => Rejection {
                status: 502,
                outcome: Outcome::BadRedirect,
                reason: "origin redirect not followed: location not followable by envoy".into(),
                headers: Vec::new(),
            },
        };
        self.reject(&rejection)
    }
}

impl Context for FilterHttp {}

impl HttpContext for FilterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(sources) = self.sources.clone() else {
            return self.internal_error("filter is not configured");
        };
        let headers = match Self::headers(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(e) => return self.internal_error(&e),
        };
        let names: Vec<String> = headers.iter().map(|(name, _)| name.clone()).collect();
        if let Some(state) = Self::stored_hop() {
            return self.follow(&sources, &state, &names);
        }
        let method = Self::header(MapType::HttpRequestHeaders, ":method").unwrap_or_default();
        // Envoy's codec has already refused conflicting framing; a request whose stream does not
        // end with its headers carries a body, which a GET or HEAD must not.
        let (count, bytes) =
            plan::request_header_totals(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        if let Err(rejection) = check_request_body(&method, !end_of_stream)
            .and_then(|()| check_request_headers(&sources, count, bytes))
        {
            return self.reject(&rejection);
        }
        let (now, now_ms, random) = match Self::now_and_random() {
            Ok(v) => v,
            Err(e) => return self.internal_error(&e),
        };
        let host = Self::header(MapType::HttpRequestHeaders, ":authority").unwrap_or_default();
        let target = Self::header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        let request = RequestInfo {
            method: &method,
            host: &host,
            target: &target,
        };
        match decide(&sources, &request, now, &random) {
            Decision::Reject(rejection) => self.reject(&rejection),
            Decision::Forward(forward) => {
                self.counters.increment(Outcome::Forwarded);
                self.send(*forward, &names, now_ms, None)
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.done {
            return Action::Continue;
        }
        let (Some(forward), Some(sources)) = (self.forward.clone(), self.sources.clone()) else {
            return Action::Continue;
        };
        let details = hostcalls::get_property(vec!["response", "code_details"])
            .ok()
            .flatten()
            .unwrap_or_default();
        if details != VIA_UPSTREAM.as_bytes() {
            // Envoy's own reply: 502/504 for an unreachable or slow origin, or the RBAC filter's
            // 403 for an origin name that resolved to a private address (counted here).
            if details.starts_with(RBAC_DENIED.as_bytes()) {
                self.counters.increment(Outcome::OriginDenied);
            }
            return Action::Continue;
        }
        if !forward.allow_private {
            let address = hostcalls::get_property(vec!["upstream", "address"])
                .ok()
                .flatten()
                .map(|a| String::from_utf8_lossy(&a).into_owned());
            // The RBAC filter already refused private addresses before connecting; this second
            // line keeps any response of such an address from the client.
            if address.is_none_or(|a| plan::upstream_address_denied(&a)) {
                return self.reject(&Rejection {
                    status: 403,
                    outcome: Outcome::OriginDenied,
                    reason: "origin address is private, loopback or otherwise not public".into(),
                    headers: Vec::new(),
                });
            }
        }
        let status: u16 = Self::header(MapType::HttpResponseHeaders, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if is_followed_redirect(status) {
            return self.unfollowed_redirect(&sources, &forward);
        }
        let content_type = Self::header(MapType::HttpResponseHeaders, "content-type");
        let content_length = plan::declared_length(
            Self::header(MapType::HttpResponseHeaders, "content-length").as_deref(),
        );
        if let Err(rejection) =
            forward.check_response(&sources, status, content_type.as_deref(), content_length)
        {
            return self.reject(&rejection);
        }
        let cache_control = if forward.max_age.is_some() {
            match Self::headers(MapType::HttpResponseHeaders) {
                Ok(headers) => {
                    let text: Vec<(String, String)> = headers
                        .into_iter()
                        .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
                        .collect();
                    plan::joined_header(&text, "cache-control")
                }
                Err(e) => {
                    log::error!("ixproxy: {e}");
                    None
                }
            }
        } else {
            None
        };
        let edits = plan::response_edits(cache_control.as_deref(), forward.max_age);
        if let Err(e) = Self::apply(MapType::HttpResponseHeaders, &edits) {
            log::error!("ixproxy: {e}");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if self.done || self.forward.is_none() {
            return Action::Continue;
        }
        let Some(sources) = self.sources.as_ref() else {
            return Action::Continue;
        };
        // Every callback returns Continue, so `body_size` is this chunk alone.
        self.body_bytes = self
            .body_bytes
            .saturating_add(u64::try_from(body_size).unwrap_or(u64::MAX));
        if self.body_bytes > sources.limits().max_body_bytes {
            // Headers (and maybe earlier chunks) are already on their way: the only honest
            // answer left is to abort the transfer, so the client sees it incomplete.
            self.done = true;
            self.counters.increment(Outcome::OriginTooLarge);
            log::warn!("ixproxy: origin response over max_body_bytes; resetting the stream");
            if let Err(status) = hostcalls::reset_http_response() {
                log::error!("ixproxy: cannot reset the response: {status:?}");
            }
            return Action::Pause;
        }
        Action::Continue
    }
}
