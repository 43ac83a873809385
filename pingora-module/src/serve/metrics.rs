//! Prometheus metrics of the gateway: requests by outcome, upstream latency, and the response
//! cache's results and size.
//!
//! The registry is private to the gateway (not the process-global default) so tests and the
//! admin listener see exactly the series documented here.

use std::time::Duration;

use ixproxy_core::cache::CacheResult;
use ixproxy_core::config::ReloadResult;
use ixproxy_core::Outcome;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The gateway's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    upstream_latency: Histogram,
    cache_requests: IntCounterVec,
    cache_bytes: IntGauge,
    config_reloads: IntCounterVec,
}

/// Why the metrics could not be set up (only a programming error can cause it).
#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers `ixproxy_requests_total{outcome}` (every label at zero),
    /// `ixproxy_upstream_latency_seconds`, `ixproxy_cache_requests_total{result}` (every label
    /// at zero) and `ixproxy_cache_bytes`.
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
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "ixproxy_cache_requests_total",
                "Requests that went through the response cache, by what the cache did \
                 (hit, miss, revalidated, expired, uncacheable, bypass).",
            ),
            &["result"],
        )?;
        let cache_bytes = IntGauge::new(
            "ixproxy_cache_bytes",
            "Bytes the response cache holds: bodies, stored headers and a fixed overhead per \
             entry.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(cache_requests.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        let config_reloads = reload_counter(&registry)?;
        // Every outcome and cache result at zero, so dashboards see all series at once.
        for outcome in Outcome::ALL {
            requests.with_label_values(&[outcome.as_str()]);
        }
        for result in CacheResult::ALL {
            cache_requests.with_label_values(&[result.as_str()]);
        }
        Ok(Metrics {
            registry,
            requests,
            upstream_latency,
            cache_requests,
            cache_bytes,
            config_reloads,
        })
    }

    /// Counts one SIGHUP reload by its result (`ixproxy_config_reloads_total{result}`).
    pub fn count_reload(&self, result: ReloadResult) {
        self.config_reloads
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Counts what the response cache did for one request.
    pub fn count_cache(&self, result: CacheResult) {
        self.cache_requests
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// The `ixproxy_cache_bytes` gauge, which the cache's store keeps current.
    pub fn cache_bytes(&self) -> IntGauge {
        self.cache_bytes.clone()
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

/// Registers `ixproxy_config_reloads_total{result}`, every result at zero.
fn reload_counter(registry: &Registry) -> Result<IntCounterVec, MetricsError> {
    let reloads = IntCounterVec::new(
        Opts::new(
            "ixproxy_config_reloads_total",
            "Config reloads (SIGHUP), by result: ok (in use for new requests) or error (refused, \
             the running config kept).",
        ),
        &["result"],
    )?;
    registry.register(Box::new(reloads.clone()))?;
    for result in ReloadResult::ALL {
        reloads.with_label_values(&[result.as_str()]);
    }
    Ok(reloads)
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
        metrics.count_cache(CacheResult::Hit);
        metrics.cache_bytes().set(1234);
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
        assert!(text.contains("ixproxy_cache_requests_total{result=\"hit\"} 1"));
        assert!(text.contains("ixproxy_cache_requests_total{result=\"bypass\"} 0"));
        assert!(text.contains("ixproxy_cache_bytes 1234"));
        assert!(text.contains("ixproxy_upstream_latency_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("ixproxy_config_reloads_total{result=\"ok\"} 0"));
        metrics.count_reload(ReloadResult::Error);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert!(text.contains("ixproxy_config_reloads_total{result=\"error\"} 1"));
        assert!(text.contains("ixproxy_config_reloads_total{result=\"ok\"} 0"));
    }
}
