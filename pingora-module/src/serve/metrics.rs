//! Prometheus metrics of the gateway (README: Operating, Metrics): requests by source and
//! outcome, response bytes, origin fetches in flight, which token verified, build info, upstream
//! latency, and the response cache's results and size. Names and label rules are the core's
//! ([`ixproxy_core::metrics`]).
//!
//! The registry is private to the gateway (not the process-global default) so tests and the
//! admin listener see exactly the series documented here.

use std::sync::Arc;
use std::time::Duration;

use ixproxy_core::cache::{CacheResult, CacheTier};
use ixproxy_core::config::ReloadResult;
use ixproxy_core::metrics::{
    BUILD_INFO, REQUESTS_TOTAL, RESPONSE_BYTES_TOTAL, TOKEN_VERIFICATIONS_TOTAL, UPSTREAM_INFLIGHT,
    VERSION,
};
use ixproxy_core::{Attribution, Outcome, Sources};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// How many [`CacheTier`]s there are.
const TIERS: usize = CacheTier::ALL.len();

/// The place of a (result, tier) pair in `Metrics::cache_counters`.
fn cache_slot(result: CacheResult, tier: CacheTier) -> usize {
    result as usize * TIERS + tier as usize
}

/// The gateway's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    response_bytes: IntCounterVec,
    upstream_inflight: IntGaugeVec,
    token_verifications: IntCounterVec,
    access_log_dropped: IntCounter,
    upstream_latency: Histogram,
    cache_requests: IntCounterVec,
    /// The `cache_requests` series of each (result, tier) pair the core names, resolved once
    /// ([`cache_slot`]): counting a request hashes no label.
    cache_counters: Arc<[Option<IntCounter>]>,
    cache_bytes: IntGaugeVec,
    config_reloads: IntCounterVec,
    purge_api_requests: IntCounterVec,
    purge_peer_requests: IntCounterVec,
    cache_disk_writes_dropped: IntCounter,
}

/// Why the metrics could not be set up (only a programming error can cause it).
#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers `ixproxy_requests_total{outcome}` (every label at zero),
    /// `ixproxy_upstream_latency_seconds`, `ixproxy_cache_requests_total{result,tier}` (every
    /// pair the core names at zero) and `ixproxy_cache_bytes{tier}`.
    ///
    /// # Errors
    /// A [`MetricsError`] when a metric definition is invalid.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                REQUESTS_TOTAL,
                "Requests handled by the gateway, by source (\"-\": no source) and outcome.",
            ),
            &["source", "outcome"],
        )?;
        let response_bytes = IntCounterVec::new(
            Opts::new(
                RESPONSE_BYTES_TOTAL,
                "Response body bytes sent to clients, by source.",
            ),
            &["source"],
        )?;
        let upstream_inflight = IntGaugeVec::new(
            Opts::new(
                UPSTREAM_INFLIGHT,
                "Origin fetches in flight (what limits.max_inflight_per_source bounds), by source.",
            ),
            &["source"],
        )?;
        let token_verifications = IntCounterVec::new(
            Opts::new(
                TOKEN_VERIFICATIONS_TOTAL,
                "Requests whose signature verified, by source and the token that verified it \
                 (its id, or its position in secure_url_tokens).",
            ),
            &["source", "token"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Always 1: the version and runtime serving."),
            &["version", "runtime"],
        )?;
        let access_log_dropped = IntCounter::new(
            "ixproxy_access_log_dropped_total",
            "Access log lines dropped because stdout did not keep up.",
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
                 (hit, miss, revalidated, expired, uncacheable, bypass) and the tier the answer \
                 came from (memory, disk; none: from the origin).",
            ),
            &["result", "tier"],
        )?;
        let cache_bytes = IntGaugeVec::new(
            Opts::new(
                "ixproxy_cache_bytes",
                "Bytes the response cache holds, by tier: memory (bodies, stored headers and a \
                 fixed overhead per entry), disk (the space the disk tier's files take).",
            ),
            &["tier"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(upstream_inflight.clone()))?;
        registry.register(Box::new(token_verifications.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        build_info.with_label_values(&[VERSION, "native"]).set(1);
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(cache_requests.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        let config_reloads = reload_counter(&registry)?;
        let purge_api_requests = purge_api_counter(&registry)?;
        let purge_peer_requests = purge_peer_counter(&registry)?;
        let cache_disk_writes_dropped = IntCounter::new(
            "ixproxy_cache_disk_writes_dropped_total",
            "Writes to the disk tier dropped because its write queue or buffer was full (the \
             entry stays in memory only).",
        )?;
        registry.register(Box::new(cache_disk_writes_dropped.clone()))?;
        // Every cache result at zero, so dashboards see all series at once (the request
        // series of each source start at zero in `series`).
        let mut cache_counters = vec![None; CacheResult::ALL.len() * TIERS];
        for result in CacheResult::ALL {
            for tier in result.tiers() {
                cache_counters[cache_slot(result, *tier)] =
                    Some(cache_requests.with_label_values(&[result.as_str(), tier.as_str()]));
            }
        }
        for tier in CacheTier::STORES {
            cache_bytes.with_label_values(&[tier.as_str()]);
        }
        Ok(Metrics {
            registry,
            requests,
            response_bytes,
            upstream_inflight,
            token_verifications,
            access_log_dropped,
            upstream_latency,
            cache_requests,
            cache_counters: cache_counters.into(),
            cache_bytes,
            config_reloads,
            purge_api_requests,
            purge_peer_requests,
            cache_disk_writes_dropped,
        })
    }

    /// Counts one request to imgix's purge API by its result label (`purged`, or the
    /// refusal's, [`ixproxy_core::purge_api::PurgeApiError::label`]).
    pub fn count_purge_api(&self, result: &str) {
        self.purge_api_requests.with_label_values(&[result]).inc();
    }

    /// Counts one peer of a purge forwarded to `cache.peers` by its result
    /// ([`ixproxy_core::fleet::PeerResult::label`]).
    pub fn count_purge_peer(&self, result: &str) {
        self.purge_peer_requests.with_label_values(&[result]).inc();
    }

    /// Counts one SIGHUP reload by its result (`ixproxy_config_reloads_total{result}`).
    pub fn count_reload(&self, result: ReloadResult) {
        self.config_reloads
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Counts what the response cache did for one request.
    pub fn count_cache(&self, result: CacheResult, tier: CacheTier) {
        match self.cache_counters.get(cache_slot(result, tier)) {
            Some(Some(counter)) => counter.inc(),
            // A pair the core does not name: counted all the same.
            _ => self
                .cache_requests
                .with_label_values(&[result.as_str(), tier.as_str()])
                .inc(),
        }
    }

    /// The `ixproxy_cache_bytes{tier="memory"}` gauge, which the memory store keeps current.
    pub fn cache_bytes(&self) -> IntGauge {
        self.cache_bytes
            .with_label_values(&[CacheTier::Memory.as_str()])
    }

    /// The `ixproxy_cache_bytes{tier="disk"}` gauge, which the disk tier keeps current.
    pub fn cache_disk_bytes(&self) -> IntGauge {
        self.cache_bytes
            .with_label_values(&[CacheTier::Disk.as_str()])
    }

    /// Shows every outcome of every source of `sources` (and of no source) at zero, and each
    /// source's bytes and in-flight series, so dashboards see all series before the first
    /// request; returns those series as a table for requests of this config generation.
    /// Sources added by a reload are added the same way.
    pub fn series(&self, sources: &Sources) -> SeriesTable {
        let one = |label: &str, token_labels: &[String]| SourceSeries {
            requests: Outcome::ALL
                .iter()
                .map(|o| self.requests.with_label_values(&[label, o.as_str()]))
                .collect(),
            bytes: self.response_bytes.with_label_values(&[label]),
            inflight: self.upstream_inflight.with_label_values(&[label]),
            tokens: token_labels
                .iter()
                .map(|t| self.token_verifications.with_label_values(&[label, t]))
                .collect(),
        };
        SeriesTable {
            sources: sources
                .iter()
                .map(|s| one(&s.label, &s.token_labels))
                .collect(),
            none: Some(one(ixproxy_core::metrics::NO_SOURCE_LABEL, &[])),
        }
    }

    /// Counts one request of `source` (its label) with the given outcome.
    pub fn count(&self, source: &str, outcome: Outcome) {
        self.requests
            .with_label_values(&[source, outcome.as_str()])
            .inc();
    }

    /// `ixproxy_cache_disk_writes_dropped_total`, which the disk tier counts.
    pub fn cache_disk_writes_dropped(&self) -> IntCounter {
        self.cache_disk_writes_dropped.clone()
    }

    /// The counter of access log lines dropped.
    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
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

/// The series of every source of one config generation, and of requests without a source:
/// a request's counters are an index away, with no label hashing or lock on its path.
#[derive(Default)]
pub struct SeriesTable {
    sources: Vec<SourceSeries>,
    none: Option<SourceSeries>,
}

impl SeriesTable {
    /// The series of a request's source (by its position), or of requests without one; `None`
    /// for a table made without the metrics (tests).
    pub fn of(&self, attribution: &Attribution) -> Option<&SourceSeries> {
        match attribution.source() {
            Some(source) => self.sources.get(source.position),
            None => self.none.as_ref(),
        }
    }
}

/// One source's series (or the no-source one).
pub struct SourceSeries {
    /// `ixproxy_requests_total`, by [`Outcome::index`].
    requests: Vec<IntCounter>,
    bytes: IntCounter,
    inflight: IntGauge,
    /// `ixproxy_token_verifications_total`, in `token_labels` order.
    tokens: Vec<IntCounter>,
}

impl SourceSeries {
    /// Counts one request with `outcome` and the response body bytes it sent.
    pub fn count(&self, outcome: Outcome, bytes_sent: u64) {
        if let Some(counter) = self.requests.get(outcome.index()) {
            counter.inc();
        }
        self.bytes.inc_by(bytes_sent);
    }

    /// Counts one request whose signature the token at `position` verified.
    pub fn count_token(&self, position: usize) {
        if let Some(counter) = self.tokens.get(position) {
            counter.inc();
        }
    }

    /// One origin fetch in flight, counted until the guard is dropped.
    pub fn inflight(&self) -> InflightGauge {
        self.inflight.inc();
        InflightGauge(self.inflight.clone())
    }
}

/// One origin fetch counted in `ixproxy_upstream_inflight`; counted out when dropped.
pub struct InflightGauge(IntGauge);

impl Drop for InflightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Registers `ixproxy_purge_api_requests_total{result}`, every result at zero.
fn purge_api_counter(registry: &Registry) -> Result<IntCounterVec, MetricsError> {
    use ixproxy_core::purge_api::{PurgeApiError, PURGED_LABEL};
    let requests = IntCounterVec::new(
        Opts::new(
            "ixproxy_purge_api_requests_total",
            "Requests to imgix's purge API on the admin listener (POST /api/v1/purge), by \
             result: purged, or why it was refused.",
        ),
        &["result"],
    )?;
    registry.register(Box::new(requests.clone()))?;
    for result in std::iter::once(PURGED_LABEL).chain(PurgeApiError::LABELS) {
        requests.with_label_values(&[result]);
    }
    Ok(requests)
}

/// Registers `ixproxy_purge_peer_requests_total{result}`, every result at zero.
fn purge_peer_counter(registry: &Registry) -> Result<IntCounterVec, MetricsError> {
    let requests = IntCounterVec::new(
        Opts::new(
            "ixproxy_purge_peer_requests_total",
            "Peers a purge was forwarded to (cache.peers), by result: confirmed, failed \
             (unresolved, unreachable, refused or unreadable), self (this instance's own \
             address in the peer list), or same (a second address of an instance already \
             asked).",
        ),
        &["result"],
    )?;
    registry.register(Box::new(requests.clone()))?;
    for result in ixproxy_core::fleet::PeerResult::LABELS {
        requests.with_label_values(&[result]);
    }
    Ok(requests)
}

/// Registers `ixproxy_config_reloads_total{result}`, every result at zero.
fn reload_counter(registry: &Registry) -> Result<IntCounterVec, MetricsError> {
    let reloads = IntCounterVec::new(
        Opts::new(
            ixproxy_core::metrics::CONFIG_RELOADS_TOTAL,
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
        let sources = ixproxy_core::config::RawConfig::from_yaml(
            "sources:\n  - {name: web.a, hosts: [a.test], secure_url_tokens: [t, {id: new, value: u}]}\n",
        )
        .and_then(|raw| raw.validate(&ixproxy_core::config::MapSecrets::new()))
        .expect("valid")
        .sources;
        let table = metrics.series(&sources);
        let web_a = table
            .of(&Attribution::of_host(&sources, "a.test"))
            .expect("web.a");
        web_a.count(Outcome::Forwarded, 60);
        web_a.count(Outcome::Forwarded, 40);
        table
            .of(&Attribution::default())
            .expect("-")
            .count(Outcome::OriginTimeout, 0);
        metrics.count("-", Outcome::BadSignature);
        web_a.count_token(1);
        let fetch = web_a.inflight();
        metrics.observe_upstream_latency(Duration::from_millis(30));
        metrics.count_cache(CacheResult::Hit, CacheTier::Disk);
        metrics.cache_bytes().set(1234);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        for label in Outcome::ALL.map(Outcome::as_str) {
            for source in ["web_a", "-"] {
                let series =
                    format!("ixproxy_requests_total{{outcome=\"{label}\",source=\"{source}\"}}");
                assert!(text.contains(&series), "{series} missing from:\n{text}");
            }
        }
        for line in [
            "ixproxy_requests_total{outcome=\"forwarded\",source=\"web_a\"} 2",
            "ixproxy_requests_total{outcome=\"origin_timeout\",source=\"-\"} 1",
            "ixproxy_requests_total{outcome=\"bad_signature\",source=\"web_a\"} 0",
            "ixproxy_requests_total{outcome=\"bad_signature\",source=\"-\"} 1",
            "ixproxy_token_verifications_total{source=\"web_a\",token=\"0\"} 0",
            "ixproxy_response_bytes_total{source=\"web_a\"} 100",
            "ixproxy_token_verifications_total{source=\"web_a\",token=\"new\"} 1",
            "ixproxy_upstream_inflight{source=\"web_a\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.contains(&format!(
            "ixproxy_build_info{{runtime=\"native\",version=\"{VERSION}\"}} 1"
        )));
        drop(fetch);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert!(text.contains("ixproxy_upstream_inflight{source=\"web_a\"} 0"));
        assert!(text.contains("ixproxy_upstream_latency_seconds_count 1"));
        for line in [
            "ixproxy_cache_requests_total{result=\"hit\",tier=\"disk\"} 1",
            "ixproxy_cache_requests_total{result=\"hit\",tier=\"memory\"} 0",
            "ixproxy_cache_requests_total{result=\"revalidated\",tier=\"disk\"} 0",
            "ixproxy_cache_requests_total{result=\"bypass\",tier=\"none\"} 0",
            "ixproxy_cache_requests_total{result=\"miss\",tier=\"none\"} 0",
            "ixproxy_cache_bytes{tier=\"memory\"} 1234",
            "ixproxy_cache_bytes{tier=\"disk\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("result=\"miss\",tier=\"memory\""));
        assert!(text.contains("ixproxy_upstream_latency_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("ixproxy_config_reloads_total{result=\"ok\"} 0"));
        metrics.count_reload(ReloadResult::Error);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert!(text.contains("ixproxy_config_reloads_total{result=\"error\"} 1"));
        assert!(text.contains("ixproxy_config_reloads_total{result=\"ok\"} 0"));
    }
}
