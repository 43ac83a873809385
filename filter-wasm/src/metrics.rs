//! Request counters, one per [`Outcome`], defined through proxy-wasm so Envoy exposes them in
//! `/stats` and `/stats/prometheus`.
//!
//! Envoy files Wasm metrics under the `wasmcustom.` namespace and strips it on output. The name
//! `ixproxy_requests_total.outcome.<label>` turns into `ixproxy_requests_total{outcome="<label>"}`
//! with the bootstrap's stats tag rule [`OUTCOME_TAG_REGEX`] (`ixproxy envoy-config` emits it),
//! and into `ixproxy_requests_total_outcome_<label>` in an Envoy without that rule.

use ixproxy_core::Outcome;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

pub use ixproxy_core::envoy::{OUTCOME_TAG_NAME, OUTCOME_TAG_REGEX};

/// The proxy-wasm metric name of the counter for `outcome`.
pub fn counter_name(outcome: Outcome) -> String {
    format!("ixproxy_requests_total.outcome.{}", outcome.as_str())
}

/// Metric ids of the per-outcome counters of one Wasm VM.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    ids: Vec<(Outcome, u32)>,
}

impl Counters {
    /// Defines every outcome's counter (so each shows up, at zero, before its first request).
    /// A counter the host refuses is logged and left out; requests are still served.
    pub fn define() -> Self {
        let mut ids = Vec::with_capacity(Outcome::ALL.len());
        for outcome in Outcome::ALL {
            let name = counter_name(outcome);
            match hostcalls::define_metric(MetricType::Counter, &name) {
                Ok(id) => ids.push((outcome, id)),
                Err(status) => log::warn!("ixproxy: cannot define metric {name}: {status:?}"),
            }
        }
        Counters { ids }
    }

    /// Adds one to the counter of `outcome`.
    pub fn increment(&self, outcome: Outcome) {
        if let Some((_, id)) = self.ids.iter().find(|(o, _)| *o == outcome) {
            if let Err(status) = hostcalls::increment_metric(*id, 1) {
                log::warn!(
                    "ixproxy: cannot increment metric {}: {status:?}",
                    outcome.as_str()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_a_distinct_name_the_tag_rule_splits() {
        let names: Vec<String> = Outcome::ALL.into_iter().map(counter_name).collect();
        for (i, name) in names.iter().enumerate() {
            assert!(!names[..i].contains(name), "duplicate {name}");
            let full = format!("wasmcustom.{name}");
            let label = full
                .strip_prefix("wasmcustom.ixproxy_requests_total.outcome.")
                .expect("prefix");
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
        }
        assert_eq!(
            counter_name(Outcome::Forwarded),
            "ixproxy_requests_total.outcome.forwarded"
        );
    }
}
