//! Prometheus metrics of the gateway: requests by outcome and upstream latency.
//!
//! The registry is private to the gateway (not the process-global default) so tests and the
//! admin listener see exactly the series documented here.

use std::time::Duration;

use ixproxy_core::Outcome;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};

/// The gateway's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    upstream_latency: Histogram,
}

/// Why the metrics could not be set up (only a programming error can cause it).
#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers `ixproxy_requests_total{outcome}` (every label at zero) and
    /// `ixproxy_upstream_latency_seconds`.
    ///
    /// # Errors
    /// A [`MetricsError`] when a metric definition is invalid.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ixproxy_requests_total",
                "Requests handled by the gateway, by outcome.",
            ),
            &["outcome"],
        )?;
        let upstream_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ixproxy_upstream_latency_seconds",
                "Time from the start of the origin request (resolution and connect included) \
                 to the origin's response header.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        // Every outcome at zero, so dashboards see all series at once.
        for outcome in Outcome::ALL {
            requests.with_label_values(&[outcome.as_str()]);
        }
        Ok(Metrics {
            registry,
            requests,
            upstream_latency,
        })
    }

    /// Counts one request with the given outcome.
    pub fn count(&self, outcome: Outcome) {
        self.requests.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Records the time an origin took to answer with its response header.
    pub fn observe_upstream_latency(&self, latency: Duration) {
        self.upstream_latency.observe(latency.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families; an empty body is the
        // safest answer if it ever does.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_exposed_and_counted() {
        let metrics = Metrics::new().expect("metrics");
        metrics.count(Outcome::Forwarded);
        metrics.count(Outcome::Forwarded);
        metrics.count(Outcome::OriginTimeout);
        metrics.observe_upstream_latency(Duration::from_millis(30));
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        for label in Outcome::ALL.map(Outcome::as_str) {
            assert!(
                text.contains(&format!("ixproxy_requests_total{{outcome=\"{label}\"}}")),
                "{label} missing from:\n{text}"
            );
        }
        assert!(text.contains("ixproxy_requests_total{outcome=\"forwarded\"} 2"));
        assert!(text.contains("ixproxy_requests_total{outcome=\"origin_timeout\"} 1"));
        assert!(text.contains("ixproxy_requests_total{outcome=\"bad_signature\"} 0"));
        assert!(text.contains("ixproxy_upstream_latency_seconds_count 1"));
        assert!(text.contains("ixproxy_upstream_latency_seconds_bucket{le=\"0.05\"} 1"));
    }
}
