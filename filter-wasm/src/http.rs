//! The HTTP stream context: applies the decision of [`ixproxy_core::decide`] to one request
//! and the response limits it implies.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use ixproxy_core::{decide, Decision, Outcome, RequestInfo, Sources};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use crate::metrics::Counters;
use crate::plan::{self, HeaderEdit, LocalReply};

/// Per-request state.
pub struct FilterHttp {
    sources: Option<Rc<Sources>>,
    counters: Rc<Counters>,
    /// Whether the request was forwarded (response rewrites apply only then).
    forwarded: bool,
    /// Cache-Control cap from `expires`, for the response.
    max_age: Option<u64>,
}

impl FilterHttp {
    /// A stream context over the root's validated sources (`None` if configuration failed,
    /// which Envoy normally prevents by refusing the filter).
    pub fn new(sources: Option<Rc<Sources>>, counters: Rc<Counters>) -> Self {
        FilterHttp {
            sources,
            counters,
            forwarded: false,
            max_age: None,
        }
    }

    fn request_header(name: &str) -> String {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
            .unwrap_or_default()
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

    fn internal_error(reason: &str) -> Action {
        log::error!("ixproxy: {reason}");
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
}

impl Context for FilterHttp {}

impl HttpContext for FilterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(sources) = self.sources.clone() else {
            return Self::internal_error("filter is not configured");
        };
        let now = match hostcalls::get_current_time() {
            Ok(time) => time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            Err(status) => return Self::internal_error(&format!("no clock: {status:?}")),
        };
        let mut random = [0u8; 32];
        if let Err(e) = getrandom::getrandom(&mut random) {
            return Self::internal_error(&format!("no randomness: {e}"));
        }
        let method = Self::request_header(":method");
        let host = Self::request_header(":authority");
        let target = Self::request_header(":path");
        let request = RequestInfo {
            method: &method,
            host: &host,
            target: &target,
        };
        match decide(&sources, &request, now, &random) {
            Decision::Reject(rejection) => {
                self.counters.increment(rejection.outcome);
                Self::reply(&plan::local_reply(&rejection))
            }
            Decision::Forward(forward) => {
                let names: Vec<String> = match hostcalls::get_map(MapType::HttpRequestHeaders) {
                    Ok(headers) => headers.into_iter().map(|(name, _)| name).collect(),
                    Err(status) => {
                        return Self::internal_error(&format!("cannot read headers: {status:?}"))
                    }
                };
                let edits = plan::forward_request_edits(&forward, names.iter().map(String::as_str));
                if let Err(e) = Self::apply(MapType::HttpRequestHeaders, &edits) {
                    return Self::internal_error(&e);
                }
                // The route was chosen before the filter ran (without the upstream header);
                // make Envoy choose again. Hosts without this foreign function re-evaluate on
                // header changes themselves, so an error here is not fatal.
                if let Err(status) = hostcalls::call_foreign_function("clear_route_cache", None) {
                    log::debug!("ixproxy: clear_route_cache unavailable: {status:?}");
                }
                self.forwarded = true;
                self.max_age = forward.max_age;
                self.counters.increment(Outcome::Forwarded);
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.forwarded {
            return Action::Continue;
        }
        let cache_control = if self.max_age.is_some() {
            match hostcalls::get_map(MapType::HttpResponseHeaders) {
                Ok(headers) => plan::joined_header(&headers, "cache-control"),
                Err(status) => {
                    log::error!("ixproxy: cannot read response headers: {status:?}");
                    None
                }
            }
        } else {
            None
        };
        let edits = plan::response_edits(cache_control.as_deref(), self.max_age);
        if let Err(e) = Self::apply(MapType::HttpResponseHeaders, &edits) {
            log::error!("ixproxy: {e}");
        }
        Action::Continue
    }
}
