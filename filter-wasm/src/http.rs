//! The HTTP stream context: applies the decision of [`ixproxy_core::decide`] to one request,
//! follows origin redirects through Envoy's internal redirects, enforces the response limits
//! (content type, size, upstream address) before any byte reaches the client, and counts the
//! request's one outcome.
//!
//! Redirects: the generated routes let Envoy follow 301/302/303/307/308 internally (copying the
//! origin's `Location` into the recreated request). Envoy runs the whole filter chain again on
//! the recreated request; the filter recognises it only by the hop state it stored in Envoy
//! filter state ([`hop::HOP_PROPERTY`], request life span), which clients cannot set, and
//! re-validates the hop with [`Forward::redirect`]. A redirect Envoy does not follow (past its
//! limit, a `Location` it cannot take) reaches this filter as a 3xx response and becomes the
//! core's answer for it.
//!
//! Fallback images ([`crate::fallback`]): a failed answer of a source with an image is marked
//! for Envoy's custom response filter, which recreates the request; the filter sends that one
//! to the image and serves its answer with the original status, counting the original outcome.
//!
//! Counting: exactly one outcome per client request. A rejection is counted when the filter
//! answers it; a forwarded request when its answer ends (the last body byte passed on, or a
//! response without body), or as the core's outcome for Envoy's own reply or for a stream that
//! ended early (`on_log`, from `response.code_details`). The stream Envoy abandons to follow a
//! redirect counts nothing: the recreated stream counts.

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use ixproxy_core::access_log::{self, REQUEST_ID_HEADER, REQUEST_ID_RANDOM_BYTES};
use ixproxy_core::cache::CACHE_STATUS;
use ixproxy_core::cors::{ORIGIN_HEADER, VARY};
use ixproxy_core::envoy::{
    address_without_port, LOG_CACHE, LOG_CLIENT_IP, LOG_HOST, LOG_ORIGIN_HOST, LOG_OUTCOME,
    LOG_REQUEST_ID, LOG_SOURCE,
};
use ixproxy_core::envoy::{
    cache_fill_failure, cache_result, client_header_totals, handed_over_to_redirect, inflight_key,
    is_cache_hit, local_reply_outcome, response_upstream_address, UPSTREAM_ADDRESS_HEADER,
    VIA_UPSTREAM,
};
use ixproxy_core::fallback::{gateway_params, original_rejection, FALLBACK_DROPPED_CLIENT_HEADERS};
use ixproxy_core::metrics::NO_SOURCE_LABEL;
use ixproxy_core::request::{check_request_body, check_request_headers};
use ixproxy_core::response::{is_followed_redirect, OriginHead};
use ixproxy_core::{
    decide_attributed, Attribution, Decision, FallbackKind, Forward, Outcome, Rejection,
    RequestInfo, Sources,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, Bytes, MapType};

use crate::edits::{self, HeaderEdit};
use crate::fallback::{self, FallbackState, Taken};
use crate::headers;
use crate::hop::{self, Hop};
use crate::inflight::{self, Full, SharedData};
use crate::metrics::Counters;

/// A request header list as read, and the edits to write to it.
type Unwritten = (Vec<(String, Bytes)>, Vec<HeaderEdit>);

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
    /// Set once this request's outcome was counted.
    counted: bool,
    /// The shared data key of the `max_inflight_per_source` slot this stream holds for its
    /// client request, if any: taken when the first request is forwarded, handed to a redirect
    /// hop's stream through the hop state, given back when the stream that holds it ends.
    slot: Option<String>,
    /// The `source` label this stream counts under.
    source_label: String,
    /// This stream holds its client request's place in `ixproxy_upstream_inflight` (handed to
    /// a redirect hop's stream like the slot).
    in_flight: bool,
    /// Whether Envoy writes an access log (the log properties are filled only then).
    access_log: bool,
    /// Whether the client address log property is the filter's to fill (see
    /// [`ixproxy_core::config::RawPluginConfig::client_ip_by_envoy`]).
    log_client_ip: bool,
    /// Whether the response cache sits in front of the origin: no variant-selecting client
    /// header goes to it then.
    cached: bool,
    /// The request header list as read and the edits not yet written to it: written (those
    /// that change it) when the request is forwarded or refused.
    unwritten: Option<Unwritten>,
    /// Random bytes drawn with the request id's, for the origin auth headers: one host call
    /// for both.
    spare_random: Option<[u8; 32]>,
    /// Set once the whole origin answer reached the client through this filter: the body
    /// bytes it counted are then Envoy's `response.size`, not asked for again.
    delivered: bool,
    /// The client's `Origin`, kept only for a source with a CORS list (handed to a redirect
    /// hop's stream through the hop state: the recreated request no longer carries it).
    request_origin: Option<String>,
    /// Whether Envoy's bootstrap takes fallback hops ([`fallback`]): otherwise no fallback
    /// image is served and nothing of this is looked at.
    fallbacks: bool,
    /// The request's gateway params, for a source with a fallback image.
    fallback_params: Option<String>,
    /// On the stream Envoy recreated for a fallback image: the fallback taken.
    fallback_taken: Option<Taken>,
    /// This stream's answer was handed to a fallback image's stream: that stream counts the
    /// request.
    handed_to_fallback: bool,
    /// The client request is a HEAD (kept for the fallback image's request, which Envoy
    /// recreates as a GET).
    head: bool,
}

impl FilterHttp {
    /// A stream context over the root's validated sources (`None` if configuration failed,
    /// which Envoy normally prevents by refusing the filter).
    pub fn new(
        sources: Option<Rc<Sources>>,
        counters: Rc<Counters>,
        timeout: Duration,
        access_log: bool,
        log_client_ip: bool,
        cached: bool,
        fallbacks: bool,
    ) -> Self {
        FilterHttp {
            sources,
            counters,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            forward: None,
            body_bytes: 0,
            done: false,
            counted: false,
            slot: None,
            source_label: NO_SOURCE_LABEL.to_owned(),
            in_flight: false,
            access_log,
            log_client_ip,
            cached,
            unwritten: None,
            spare_random: None,
            delivered: false,
            request_origin: None,
            fallbacks,
            fallback_params: None,
            fallback_taken: None,
            handed_to_fallback: false,
            head: false,
        }
    }

    /// Leaves `ixproxy_upstream_inflight`, if this stream is in it.
    fn leave_inflight(&mut self) {
        if std::mem::take(&mut self.in_flight) {
            self.counters.inflight(&self.source_label, -1);
        }
    }

    /// Sets an access log property (see [`ixproxy_core::envoy::LOG_PROPERTIES`]); nothing
    /// when the access log is off (nobody reads them then).
    fn log_property(&self, name: &str, value: &str) {
        if !self.access_log {
            return;
        }
        if let Err(status) = hostcalls::set_property(vec![name], Some(value.as_bytes())) {
            log::debug!("ixproxy: cannot set {name}: {status:?}");
        }
    }

    /// Keeps the client's `X-Request-ID` when the core's rule accepts it, else replaces it with
    /// a new one (the edit returned), so the access log, the origin and the response (Envoy
    /// echoes it) see one id.
    fn settle_request_id(
        &mut self,
        headers: &[(String, Bytes)],
    ) -> Result<Option<HeaderEdit>, String> {
        let sent = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(REQUEST_ID_HEADER))
            .map(|(_, value)| value.as_slice());
        if let Some(kept) = access_log::kept_request_id(sent) {
            self.log_property(LOG_REQUEST_ID, kept);
            return Ok(None);
        }
        // The origin auth headers' bytes come with the id's: one host call for both.
        let mut drawn = [0u8; REQUEST_ID_RANDOM_BYTES + 32];
        getrandom::getrandom(&mut drawn).map_err(|e| format!("no randomness: {e}"))?;
        let (id_bytes, spare) = drawn.split_at(REQUEST_ID_RANDOM_BYTES);
        let mut random = [0u8; REQUEST_ID_RANDOM_BYTES];
        random.copy_from_slice(id_bytes);
        let mut auth = [0u8; 32];
        auth.copy_from_slice(spare);
        self.spare_random = Some(auth);
        let id = access_log::new_request_id(random);
        self.log_property(LOG_REQUEST_ID, &id);
        Ok(Some(HeaderEdit::Set(REQUEST_ID_HEADER.into(), id.into())))
    }

    /// Gives back the in-flight slot this stream holds, if any.
    fn release_slot(&mut self) {
        if let Some(key) = self.slot.take() {
            if let Err(e) = inflight::release(&SharedData, &key) {
                log::error!("ixproxy: cannot give back an in-flight slot: {e}");
            }
        }
    }

    /// The value of `name` (lower case, as Envoy hands header names over) in a header list read
    /// with [`headers::read`], as text; empty when absent. Bytes that are not UTF-8
    /// (obs-text) are replaced, which can only make a signature or an origin check fail, never
    /// pass.
    fn value_of(headers: &[(String, Bytes)], name: &str) -> String {
        headers::value(headers, name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    /// An integer property (Envoy encodes them as 8 little-endian bytes).
    fn int_property(path: &[&str]) -> Option<i64> {
        let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
        Some(i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
    }

    fn property(path: &[&str]) -> Option<String> {
        hostcalls::get_property(path.to_vec())
            .ok()
            .flatten()
            .map(|v| {
                String::from_utf8(v)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            })
    }

    /// Counts `outcome` unless this request already has its outcome.
    fn count(&mut self, outcome: Outcome) {
        if !self.counted {
            self.counted = true;
            self.counters.increment(&self.source_label, outcome);
            self.log_property(LOG_OUTCOME, outcome.as_str());
        }
    }

    /// Counts this request under `attribution`'s source (and its token, once verified).
    fn attribute(&mut self, attribution: &Attribution) {
        self.source_label = attribution.source_label().to_owned();
        if let Some(source) = attribution.source() {
            self.log_property(LOG_SOURCE, &source.name);
        }
        if let Some(token) = attribution.token_label() {
            self.counters.count_token(&self.source_label, token);
        }
    }

    /// Answers `rejection` locally and counts its outcome. The request header edits made so
    /// far (the client's routing markers gone, the request id Envoy echoes) are written first.
    fn reject(&mut self, rejection: &Rejection) -> Action {
        if let Some((fields, edits)) = self.unwritten.take() {
            if let Err(e) = headers::write(MapType::HttpRequestHeaders, Some(fields), &edits) {
                log::error!("ixproxy: {e}");
            }
        }
        self.count(rejection.outcome());
        self.done = true;
        let reply = edits::local_reply(rejection);
        if let Err(status) =
            hostcalls::send_http_response(reply.status, reply.headers, Some(reply.body.as_bytes()))
        {
            log::error!("ixproxy: cannot send the local reply: {status:?}");
        }
        Action::Pause
    }

    /// A fault of the filter or of a host call: logged, answered with the core's 500.
    fn internal_error(&mut self, why: &str) -> Action {
        log::error!("ixproxy: {why}");
        self.reject(&Rejection::internal())
    }

    /// Unix time in seconds and in milliseconds.
    fn now() -> Result<(u64, u64), String> {
        let since_epoch = hostcalls::get_current_time()
            .map_err(|status| format!("no clock: {status:?}"))?
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        Ok((since_epoch.as_secs(), millis))
    }

    fn random() -> Result<[u8; 32], String> {
        let mut random = [0u8; 32];
        getrandom::getrandom(&mut random).map_err(|e| format!("no randomness: {e}"))?;
        Ok(random)
    }

    /// The hop state stored by this filter for an earlier attempt of this downstream request,
    /// present only on a stream Envoy recreated for an internal redirect.
    fn stored_hop() -> Option<Vec<u8>> {
        hostcalls::get_property(vec![hop::HOP_PROPERTY])
            .ok()
            .flatten()
            .filter(|state| !state.is_empty())
    }

    /// Rewrites the request for `forward` (with fresh origin auth headers for this attempt),
    /// remembers it for a redirect hop and the response. `started_ms` is when the client's
    /// request arrived; `timeout_ms`, when set, the router timeout for this attempt (what a hop
    /// has left of `upstream.timeout`).
    fn send(
        &mut self,
        forward: Forward,
        now: u64,
        started_ms: u64,
        timeout_ms: Option<u64>,
    ) -> Action {
        // Fresh bytes for every origin request: the ones drawn with this stream's request id
        // are used once.
        let random = match self.spare_random.take().map_or_else(Self::random, Ok) {
            Ok(random) => random,
            Err(e) => return self.internal_error(&e),
        };
        let auth = forward.auth_headers(now, &random);
        // Every caller stored the request header it read; without it the forward's removals
        // would not be known, so there is nothing safe to send.
        let Some((fields, mut edits)) = self.unwritten.take() else {
            return self.internal_error("the request header was not read before forwarding");
        };
        if forward.cors().needs_request_origin() && self.request_origin.is_none() {
            self.request_origin = headers::text(&fields, ORIGIN_HEADER).map(str::to_owned);
        }
        edits.extend(edits::forward_request_edits(
            &forward,
            &auth,
            fields.iter().map(|(name, _)| name.as_str()),
            self.cached,
        ));
        if let Some(timeout_ms) = timeout_ms {
            edits.push(HeaderEdit::Set(
                hop::TIMEOUT_HEADER.into(),
                timeout_ms.to_string().into(),
            ));
        }
        if let Err(e) = headers::write(MapType::HttpRequestHeaders, Some(fields), &edits) {
            return self.internal_error(&e);
        }
        // Without the hop state a redirect cannot be followed (the recreated request would be
        // judged as a client request and refused), so failing to store it is an error.
        if let Err(status) = hostcalls::set_property(
            vec![hop::HOP_PROPERTY],
            Some(
                &Hop::of(&forward, started_ms, self.slot.is_some())
                    .with_request_origin(self.request_origin.as_deref())
                    .encode(),
            ),
        ) {
            return self.internal_error(&format!("cannot store the hop state: {status:?}"));
        }
        if self.access_log {
            self.log_property(LOG_ORIGIN_HOST, &forward.origin().authority());
        }
        if !self.in_flight {
            self.in_flight = true;
            self.counters.inflight(&self.source_label, 1);
        }
        // No `clear_route_cache` call: each request header edit made Envoy drop the route it
        // chose before the filter ran, so it chooses again for the new :scheme and marker.
        self.forward = Some(forward);
        Action::Continue
    }

    /// A stream Envoy recreated for an origin redirect: re-validate the hop like the first URL.
    fn follow(&mut self, sources: &Sources, state: &[u8], headers: Vec<(String, Bytes)>) -> Action {
        let Some(hop) = Hop::decode(state) else {
            return self.internal_error("unreadable hop state");
        };
        // The stream Envoy replaced handed its client request's slot over; this one gives it
        // back (or hands it on) whatever happens to the hop.
        if hop.holds_slot {
            self.slot = Some(inflight_key(&hop.source));
        }
        // The replaced stream handed its place in the in-flight gauge over, too: taken before
        // anything can refuse the hop, so the stream that ends the request gives it back.
        self.source_label = ixproxy_core::metrics::label(&hop.source);
        self.in_flight = true;
        self.request_origin = hop.request_origin.clone();
        // Once a fallback was taken, every later hop is the fallback image's, and any failure
        // of it gives the original answer (SPEC §15).
        if self.fallbacks {
            if let Some(FallbackState::Taken(taken)) = Self::stored_fallback() {
                self.fallback_taken = Some(taken);
            }
        }
        let Some(previous) = hop.forward(sources) else {
            log::error!("ixproxy: hop state of an unknown source");
            return self.hop_failed(headers, &Rejection::internal());
        };
        let (now, now_ms) = match Self::now() {
            Ok(v) => v,
            Err(e) => return self.internal_error(&e),
        };
        // One `upstream.timeout` for the request and all its hops, as on the native gateway.
        let Some(left_ms) = hop::remaining_ms(hop.started_ms, now_ms, self.timeout_ms) else {
            return self.hop_failed(headers, &Rejection::origin_timeout());
        };
        let location = hop::hop_location(
            headers::value(&headers, hop::LOCATION_HEADER)
                .map(String::from_utf8_lossy)
                .as_deref(),
            &Self::value_of(&headers, ":scheme"),
            &Self::value_of(&headers, ":authority"),
            &Self::value_of(&headers, ":path"),
        );
        if self.fallbacks {
            self.head = headers::value(&headers, ":method") == Some(b"HEAD".as_slice());
        }
        self.unwritten = Some((headers, Vec::new()));
        match previous.redirect(&location) {
            Ok(next) => {
                let next = match &self.fallback_taken {
                    Some(taken) => next.into_fallback(taken.kind),
                    None => next,
                };
                self.send(next, now, hop.started_ms, Some(left_ms))
            }
            Err(rejection) => match self.fallback_taken.is_some() {
                true => self.fallback_failed(),
                false => self.fallback_or_reject(&rejection),
            },
        }
    }

    /// A redirect hop that cannot be sent (`headers` its request's): `rejection`, or the
    /// original answer when the hop is the fallback image's.
    fn hop_failed(&mut self, headers: Vec<(String, Bytes)>, rejection: &Rejection) -> Action {
        if self.fallback_taken.is_some() {
            self.unwritten = Some((headers, Vec::new()));
            return self.fallback_failed();
        }
        self.reject(rejection)
    }

    /// Keeps the request's gateway params for a fallback image that appends them: in this
    /// stream, and in the fallback state for a redirect hop's stream.
    fn keep_fallback_params(&mut self, forward: &Forward, target: &str) {
        let appends = [FallbackKind::Missing, FallbackKind::Error]
            .into_iter()
            .filter_map(|kind| forward.source().fallback(kind))
            .any(|image| image.append_qs);
        let params = if appends {
            gateway_params(target)
        } else {
            String::new()
        };
        if !params.is_empty() {
            let state = FallbackState::Params(params.clone()).encode();
            if let Err(status) =
                hostcalls::set_property(vec![fallback::FALLBACK_PROPERTY], Some(&state))
            {
                log::warn!("ixproxy: cannot store the fallback params: {status:?}");
            }
        }
        self.fallback_params = Some(params);
    }

    /// The address Envoy reports it connected to (`upstream.address`) and, with the cache, the
    /// one the upstream role stored with the response (`fields`): only what the checks of a
    /// response of a source that does (`allow_private`) or does not allow private origins need.
    fn upstream_addresses(
        &self,
        allow_private: bool,
        fields: &[(String, Bytes)],
    ) -> (Option<String>, Option<String>) {
        let property = (self.cached || !allow_private)
            .then(|| Self::property(&["upstream", "address"]))
            .flatten();
        let stored = self
            .cached
            .then(|| headers::value(fields, UPSTREAM_ADDRESS_HEADER))
            .flatten()
            .map(|value| String::from_utf8_lossy(value).into_owned());
        (property, stored)
    }

    /// The response head as the core reads it, from the fields read with [`headers::read`].
    fn response_head(fields: &[(String, Bytes)]) -> OriginHead {
        let status = headers::text(fields, ":status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        OriginHead::of(
            status,
            fields.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
        )
    }

    /// The fallback state stored for this downstream request, if any.
    fn stored_fallback() -> Option<FallbackState> {
        hostcalls::get_property(vec![fallback::FALLBACK_PROPERTY])
            .ok()
            .flatten()
            .and_then(|state| FallbackState::decode(&state))
    }

    /// Takes the source's fallback image for this request's failure (`status` what the client
    /// would get, `outcome` the gateway's own outcome, `None` when the origin answered): stores
    /// the fallback state and marks the response for Envoy's custom response filter. `false`
    /// when there is no fallback to take (none configured or allowed, or a host call failed):
    /// the request goes on as without one.
    fn take_fallback(
        &mut self,
        kind: Option<FallbackKind>,
        status: u16,
        outcome: Option<Outcome>,
    ) -> bool {
        if !self.fallbacks || self.fallback_taken.is_some() {
            return false;
        }
        let (Some(kind), Some(forward)) = (kind, self.forward.as_ref()) else {
            return false;
        };
        if !forward.source().has_fallbacks() {
            return false;
        }
        let params = match self.fallback_params.take() {
            Some(params) => params,
            // A redirect hop's stream: the params the first stream stored.
            None => match Self::stored_fallback() {
                Some(FallbackState::Params(params)) => params,
                _ => String::new(),
            },
        };
        let Some(image) = forward.fallback_with_params(kind, &params) else {
            return false;
        };
        let state = FallbackState::Taken(Taken {
            source: forward.source_name().to_owned(),
            url: image.origin().to_url_string(),
            kind,
            status,
            outcome,
            max_age: forward.max_age(),
            head: self.head,
            request_origin: self.request_origin.clone(),
        });
        if let Err(status) =
            hostcalls::set_property(vec![fallback::FALLBACK_PROPERTY], Some(&state.encode()))
        {
            log::error!("ixproxy: cannot store the fallback state: {status:?}");
            return false;
        }
        // Envoy's custom response filter serves the image with the status of the response it
        // replaces: the client's status, also where the filter refuses an origin's 200.
        let status_text = status.to_string();
        for (name, value) in [
            (":status", status_text.as_str()),
            (fallback::FALLBACK_HOP_HEADER, "1"),
        ] {
            if let Err(status) =
                hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value))
            {
                log::error!("ixproxy: cannot mark the response for its fallback: {status:?}");
                return false;
            }
        }
        self.handed_to_fallback = true;
        self.done = true;
        true
    }

    /// [`Self::reject`], unless the rejection takes the source's fallback image.
    fn fallback_or_reject(&mut self, rejection: &Rejection) -> Action {
        let kind = FallbackKind::of_rejection(rejection);
        if self.take_fallback(kind, rejection.status(), Some(rejection.outcome())) {
            return Action::Continue;
        }
        self.reject(rejection)
    }

    /// The fallback image failed too: the original answer. The gateway's own is answered again;
    /// an origin's answer is gone (Envoy replaced it), so its status is answered with a fixed
    /// reason ([`Rejection::fallback_failed`]).
    fn fallback_failed(&mut self) -> Action {
        let rejection = match &self.fallback_taken {
            Some(Taken {
                outcome: Some(outcome),
                ..
            }) => original_rejection(*outcome),
            Some(taken) => Rejection::fallback_failed(taken.status),
            None => Rejection::internal(),
        };
        self.reject(&rejection)
    }

    /// The stream Envoy recreated for a fallback image: sent to the image's URL like an origin
    /// URL (its own `upstream.timeout`; no in-flight slot: the replaced stream gave its back).
    fn fallback_stream(
        &mut self,
        sources: &Sources,
        taken: Taken,
        headers: Vec<(String, Bytes)>,
    ) -> Action {
        self.source_label = ixproxy_core::metrics::label(&taken.source);
        // The recreated request lost the client's `Origin` (removed before the first fetch).
        self.request_origin = taken.request_origin.clone();
        let Some(forward) = Forward::resume_fallback(
            sources,
            &taken.source,
            &taken.url,
            taken.kind,
            taken.max_age,
        ) else {
            self.fallback_taken = Some(taken);
            self.unwritten = Some((headers, Vec::new()));
            return self.fallback_failed();
        };
        self.fallback_taken = Some(taken);
        let (now, now_ms) = match Self::now() {
            Ok(v) => v,
            Err(e) => return self.internal_error(&e),
        };
        // The client's range and validators name the original object, not the image.
        let mut pending: Vec<HeaderEdit> = FALLBACK_DROPPED_CLIENT_HEADERS
            .iter()
            .filter(|name| headers::value(&headers, name).is_some())
            .map(|name| HeaderEdit::Remove((*name).into()))
            .collect();
        if self.fallback_taken.as_ref().is_some_and(|t| t.head) {
            pending.push(HeaderEdit::Set(":method".into(), "HEAD".into()));
        }
        self.unwritten = Some((headers, pending));
        self.send(forward, now, now_ms, Some(self.timeout_ms))
    }

    /// Adds the gateway's own response headers (CORS, `dl`) for an answer with `status` whose
    /// header is `fields` (their `Vary` is merged in list mode).
    fn push_gateway_edits(
        header_edits: &mut Vec<HeaderEdit>,
        forward: &Forward,
        request_origin: Option<&str>,
        status: u16,
        fields: &[(String, Bytes)],
    ) {
        let vary = forward.cors().needs_request_origin().then(|| {
            let values: Vec<String> = fields
                .iter()
                .filter(|(name, _)| name == VARY)
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
                .collect();
            values.join(", ")
        });
        edits::push_gateway_response_edits(
            header_edits,
            forward,
            request_origin,
            status,
            vary.as_deref().filter(|v| !v.is_empty()),
        );
    }

    /// The response of a fallback image's stream: served with the original status when the
    /// core's checks pass, else the original answer.
    fn fallback_response(&mut self, end_of_stream: bool) -> Action {
        let Some(forward) = self.forward.as_ref() else {
            return Action::Continue;
        };
        let details = Self::property(&["response", "code_details"]).unwrap_or_default();
        if details != VIA_UPSTREAM && !is_cache_hit(&details) {
            return self.fallback_failed();
        }
        let fields = match headers::read(MapType::HttpResponseHeaders) {
            Ok(fields) => fields,
            Err(e) => return self.internal_error(&e),
        };
        let (property, stored) = self.upstream_addresses(forward.allow_private(), &fields);
        let upstream = response_upstream_address(property.as_deref(), stored.as_deref());
        if (self.cached && upstream.is_none() && !is_cache_hit(&details))
            || forward.check_upstream_address(upstream).is_err()
        {
            return self.fallback_failed();
        }
        let head = Self::response_head(&fields);
        let Some(taken) = self.fallback_taken.as_ref() else {
            return self.fallback_failed();
        };
        let (served_status, outcome) = (taken.status, taken.outcome);
        let Ok(response_edits) = forward.check_fallback_response(&head, served_status) else {
            return self.fallback_failed();
        };
        let mut header_edits = edits::response_header_edits(response_edits);
        header_edits.push(HeaderEdit::Set(
            ":status".into(),
            served_status.to_string().into(),
        ));
        // A fallback is a forwarded answer to the page that asked: the same CORS headers.
        Self::push_gateway_edits(
            &mut header_edits,
            forward,
            self.request_origin.as_deref(),
            served_status,
            &fields,
        );
        if let Err(e) = headers::write(MapType::HttpResponseHeaders, Some(fields), &header_edits) {
            return self.internal_error(&e);
        }
        // The original failure's outcome, counted once; an origin's answer is `forwarded`
        // once the image reached the client whole, as any answer.
        if let Some(outcome) = outcome {
            self.count(outcome);
        }
        if end_of_stream {
            self.delivered = true;
            self.count(Outcome::Forwarded);
        }
        Action::Continue
    }
}

impl Context for FilterHttp {}

impl Drop for FilterHttp {
    /// Envoy logs every stream before deleting it, so the slot is normally given back in
    /// `on_log`; this covers a stream deleted without it.
    fn drop(&mut self) {
        self.release_slot();
        self.leave_inflight();
    }
}

impl HttpContext for FilterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(sources) = self.sources.clone() else {
            return self.internal_error("filter is not configured");
        };
        let headers = match headers::read(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(e) => return self.internal_error(&e),
        };
        // Envoy copies the origin's `Location` into every request it recreates for a redirect,
        // so only a request with one can be a hop; the hop state (which clients cannot set)
        // decides, so a client-sent `Location` costs a lookup and nothing else.
        let may_be_hop = headers::value(&headers, hop::LOCATION_HEADER).is_some();
        if let Some(state) = may_be_hop.then(Self::stored_hop).flatten() {
            return self.follow(&sources, &state, headers);
        }
        // The request Envoy's custom response filter recreated for a fallback image carries the
        // reserved authority; the fallback state (which clients cannot set) decides.
        if self.fallbacks
            && headers::value(&headers, ":authority")
                == Some(fallback::FALLBACK_AUTHORITY.as_bytes())
        {
            if let Some(FallbackState::Taken(taken)) = Self::stored_fallback() {
                return self.fallback_stream(&sources, taken, headers);
            }
        }
        // The routing markers are the filter's to set: a client-sent one must not make Envoy's
        // own reply to this request (the bootstrap recognises RBAC refusals by the marker) or
        // anything else treat it as forwarded, even when the filter refuses it.
        let mut pending: Vec<HeaderEdit> =
            edits::client_markers(headers.iter().map(|(name, _)| name.as_str()))
                .into_iter()
                .map(|name| HeaderEdit::Remove(name.into()))
                .collect();
        match self.settle_request_id(&headers) {
            Ok(edit) => pending.extend(edit),
            Err(e) => return self.internal_error(&e),
        }
        // The pseudo-headers come with the header list already read: no host call each.
        let method = Self::value_of(&headers, ":method");
        let host = Self::value_of(&headers, ":authority");
        let target = Self::value_of(&headers, ":path");
        // Envoy's codec has already refused conflicting framing; a request whose stream does not
        // end with its headers carries a body, which a GET or HEAD must not.
        let totals = client_header_totals(headers.iter().map(|(n, v)| (n.as_str(), v.len())));
        self.unwritten = Some((headers, pending));
        self.log_property(LOG_HOST, &host);
        if self.log_client_ip {
            if let Some(address) = Self::property(&["source", "address"]) {
                self.log_property(LOG_CLIENT_IP, address_without_port(&address));
            }
        }
        if let Err(rejection) = check_request_body(&method, !end_of_stream)
            .and_then(|()| check_request_headers(&sources, totals))
        {
            self.attribute(&Attribution::of_host(&sources, &host));
            return self.reject(&rejection);
        }
        let (now, now_ms) = match Self::now() {
            Ok(v) => v,
            Err(e) => return self.internal_error(&e),
        };
        let request = RequestInfo {
            method: &method,
            host: &host,
            target: &target,
        };
        let (decision, attribution) = decide_attributed(&sources, &request, now);
        self.attribute(&attribution);
        match decision {
            Decision::Reject(rejection) => self.reject(&rejection),
            Decision::Forward(forward) => {
                let limit = sources.limits().max_inflight_per_source;
                match inflight::acquire(&SharedData, forward.source_name(), limit) {
                    Ok(Ok(slot)) => self.slot = slot,
                    Ok(Err(Full)) => return self.reject(&Rejection::overloaded()),
                    Err(e) => return self.internal_error(&e),
                }
                if self.fallbacks && forward.source().has_fallbacks() {
                    self.head = method == "HEAD";
                    self.keep_fallback_params(&forward, &target);
                }
                self.send(*forward, now, now_ms, None)
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.done {
            return Action::Continue;
        }
        if self.fallback_taken.is_some() {
            return self.fallback_response(end_of_stream);
        }
        let Some(forward) = self.forward.as_ref() else {
            return Action::Continue;
        };
        let details = Self::property(&["response", "code_details"]).unwrap_or_default();
        if details != VIA_UPSTREAM && !is_cache_hit(&details) {
            // Envoy's own reply on a forwarded request (an unreachable or slow origin, the RBAC
            // filter refusing a private address): its status and body come from the generated
            // bootstrap; its outcome from the core's mapping.
            let outcome = local_reply_outcome(&details);
            if self.fallbacks {
                let status = original_rejection(outcome).status();
                if self.take_fallback(FallbackKind::of_outcome(outcome), status, Some(outcome)) {
                    return Action::Continue;
                }
            }
            self.done = true;
            self.count(outcome);
            return Action::Continue;
        }
        // A cache hit is the origin's answer as stored: it gets every check and edit below, with
        // this request's own `expires` cap. Envoy's cache fetches on a side channel, so for its
        // misses and hits the address comes from the header the upstream role stored.
        let fields = match headers::read(MapType::HttpResponseHeaders) {
            Ok(fields) => fields,
            Err(e) => return self.internal_error(&e),
        };
        // The address serves the private-address check below and, with the cache, tells a
        // fill from a hit; a source that allows private origins without the cache needs
        // neither, and is spared the host call. Only with the cache does the upstream role
        // store it (and remove an origin-sent one): without, that header is the origin's and
        // never counts.
        let (property, stored) = self.upstream_addresses(forward.allow_private(), &fields);
        let upstream = response_upstream_address(property.as_deref(), stored.as_deref());
        if self.cached && upstream.is_none() && !is_cache_hit(&details) {
            // No origin answered: Envoy's cache passes its own reply to a failed fill on as if
            // an origin had sent it. It gets the core's answer for the failure instead.
            let rejection = cache_fill_failure(&details)
                .rejection()
                .unwrap_or_else(Rejection::origin_error);
            return self.fallback_or_reject(&rejection);
        }
        // The RBAC filter already refused private addresses before connecting; this second
        // line keeps any response of such an address from the client.
        if let Err(rejection) = forward.check_upstream_address(upstream) {
            return self.reject(&rejection);
        }
        let result = cache_result(&details, property.as_deref(), stored.as_deref());
        if let Some(result) = result {
            self.log_property(LOG_CACHE, result.as_str());
        }
        let status_value = result.map(|result| result.cache_status());
        let head = Self::response_head(&fields);
        let status = head.status();
        if let (true, Some(location)) = (is_followed_redirect(status), head.location()) {
            let rejection = forward.unfollowed_redirect(location);
            return self.fallback_or_reject(&rejection);
        }
        if self.fallbacks
            && forward.source().has_fallbacks()
            && self.take_fallback(FallbackKind::of_status(status), status, None)
        {
            return Action::Continue;
        }
        let Some(forward) = self.forward.as_ref() else {
            return Action::Continue;
        };
        let response_edits = match forward.check_response(&head) {
            Ok(edits) => edits,
            Err(rejection) => return self.fallback_or_reject(&rejection),
        };
        let mut header_edits = edits::response_header_edits(response_edits);
        // The gateway's own headers (CORS, dl): Envoy's cache stored the head before this
        // filter's encode path, so a hit gets them here too and the cache never holds them.
        Self::push_gateway_edits(
            &mut header_edits,
            forward,
            self.request_origin.as_deref(),
            status,
            &fields,
        );
        if let Some(value) = status_value {
            header_edits.push(HeaderEdit::Set(CACHE_STATUS.into(), value.into()));
        }
        if let Err(e) = headers::write(MapType::HttpResponseHeaders, Some(fields), &header_edits) {
            return self.internal_error(&e);
        }
        if end_of_stream {
            self.delivered = true;
            self.count(Outcome::Forwarded);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.done {
            return Action::Continue;
        }
        let Some(forward) = self.forward.as_ref() else {
            return Action::Continue;
        };
        // Every callback returns Continue, so `body_size` is this chunk alone.
        self.body_bytes = self
            .body_bytes
            .saturating_add(u64::try_from(body_size).unwrap_or(u64::MAX));
        if forward.body_over_limit(self.body_bytes) {
            // Headers (and maybe earlier chunks) are already on their way: the only honest
            // answer left is to abort the transfer, so the client sees it incomplete.
            self.done = true;
            self.count(Rejection::origin_too_large().outcome());
            log::warn!("ixproxy: origin response over max_body_bytes; resetting the stream");
            if let Err(status) = hostcalls::reset_http_response() {
                log::error!("ixproxy: cannot reset the response: {status:?}");
            }
            return Action::Pause;
        }
        if end_of_stream {
            self.delivered = true;
            self.count(Outcome::Forwarded);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // A counted request was answered downstream, so it was not handed over to a redirect
        // and has its outcome: only an uncounted one needs Envoy's reason.
        let details = if self.counted {
            String::new()
        } else {
            Self::property(&["response", "code_details"]).unwrap_or_default()
        };
        if self.handed_to_fallback {
            // Envoy replaced this stream's answer with the fallback image's stream, which counts
            // the request; that stream takes no in-flight slot, so this one gives its back.
            self.release_slot();
            self.leave_inflight();
            return;
        }
        if handed_over_to_redirect(&details) {
            // The recreated stream continues this client request and holds its slot (and its
            // place in the in-flight gauge) now.
            self.slot = None;
            self.in_flight = false;
            return;
        }
        self.release_slot();
        self.leave_inflight();
        // The body bytes this client request got: the filter's own count of a whole origin
        // answer, else Envoy's (a local reply's too).
        let size = if self.delivered {
            Some(self.body_bytes)
        } else {
            Self::int_property(&["response", "size"]).map(|size| u64::try_from(size).unwrap_or(0))
        };
        if let Some(size) = size {
            self.counters.add_bytes(&self.source_label, size);
        }
        if self.counted || self.forward.is_none() {
            return;
        }
        // A forwarded request that ended before its answer was complete: the client went away,
        // the origin broke off mid-body, or Envoy gave up. The core maps Envoy's reason; a
        // stream Envoy replaced to follow a redirect has no reason and counts nothing.
        if let Some(outcome) = ixproxy_core::envoy::unfinished_stream_outcome(&details) {
            self.count(outcome);
        }
    }
}
