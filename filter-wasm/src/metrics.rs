//! The filter's metrics, defined through proxy-wasm so Envoy exposes them in `/stats` and
//! `/stats/prometheus` (README: Operating, Metrics): requests by source and outcome, response
//! bytes and origin fetches in flight by source, which token verified, and build info.
//!
//! Envoy files Wasm metrics under the `wasmcustom.` namespace and strips it on output. The names
//! carry their labels as segments (`ixproxy_requests_total.source.<s>.outcome.<o>`, see
//! [`ixproxy_core::envoy::requests_metric`]); the bootstrap's stats tag rules
//! ([`ixproxy_core::envoy::STATS_TAGS`], emitted by `ixproxy envoy-config`) turn them into
//! `ixproxy_requests_total{source="<s>",outcome="<o>"}`. Every series of every source is
//! defined at configuration, so it shows at zero before its first request.

use std::collections::HashMap;

use ixproxy_core::envoy::{
    build_info_metric, requests_metric, response_bytes_metric, token_metric,
    upstream_inflight_metric,
};
use ixproxy_core::metrics::NO_SOURCE_LABEL;
use ixproxy_core::{Outcome, Sources};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Metric ids of one Wasm VM's configuration, by label.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    requests: HashMap<String, HashMap<Outcome, u32>>,
    bytes: HashMap<String, u32>,
    inflight: HashMap<String, u32>,
    tokens: HashMap<String, HashMap<String, u32>>,
}

/// Defines `name` as a metric of `kind`; a metric the host refuses is logged and left out
/// (requests are still served).
fn define(kind: MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("ixproxy: cannot define metric {name}: {status:?}");
            None
        }
    }
}

fn add(id: Option<&u32>, offset: i64) {
    if let Some(id) = id {
        if let Err(status) = hostcalls::increment_metric(*id, offset) {
            log::warn!("ixproxy: cannot update metric {id}: {status:?}");
        }
    }
}

impl Counters {
    /// Defines every series of `sources` (and of requests no source serves) and sets the build
    /// info gauge.
    pub fn define(sources: &Sources) -> Self {
        let mut counters = Counters::default();
        let labels = sources
            .iter()
            .map(|s| s.label.clone())
            .chain([NO_SOURCE_LABEL.to_owned()]);
        for source in labels {
            for outcome in Outcome::ALL {
                let name = requests_metric(&source, outcome);
                if let Some(id) = define(MetricType::Counter, &name) {
                    counters
                        .requests
                        .entry(source.clone())
                        .or_default()
                        .insert(outcome, id);
                }
            }
            if let Some(id) = define(MetricType::Counter, &response_bytes_metric(&source)) {
                counters.bytes.insert(source.clone(), id);
            }
            if let Some(id) = define(MetricType::Gauge, &upstream_inflight_metric(&source)) {
                counters.inflight.insert(source, id);
            }
        }
        for source in sources.iter() {
            for token in &source.token_labels {
                if let Some(id) = define(MetricType::Counter, &token_metric(&source.label, token)) {
                    counters
                        .tokens
                        .entry(source.label.clone())
                        .or_default()
                        .insert(token.clone(), id);
                }
            }
        }
        if let Some(id) = define(MetricType::Gauge, &build_info_metric()) {
            if let Err(status) = hostcalls::record_metric(id, 1) {
                log::warn!("ixproxy: cannot set the build info: {status:?}");
            }
        }
        counters
    }

    /// Counts one request of `source` (its label) with `outcome`.
    pub fn increment(&self, source: &str, outcome: Outcome) {
        add(self.requests.get(source).and_then(|m| m.get(&outcome)), 1);
    }

    /// Adds the response body bytes one request of `source` sent.
    pub fn add_bytes(&self, source: &str, bytes: u64) {
        add(
            self.bytes.get(source),
            i64::try_from(bytes).unwrap_or(i64::MAX),
        );
    }

    /// One more (`1`) or one fewer (`-1`) origin fetch of `source` in flight.
    pub fn inflight(&self, source: &str, delta: i64) {
        add(self.inflight.get(source), delta);
    }

    /// Counts one request of `source` whose signature `token` (its label) verified.
    pub fn count_token(&self, source: &str, token: &str) {
        add(self.tokens.get(source).and_then(|m| m.get(token)), 1);
    }
}
