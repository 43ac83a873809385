//! The part of the config a reload replaces (README: Operating): sources, tokens and secrets,
//! the request limits, the upstream settings with their trust anchors and resolver, and the
//! in-flight counters, the access log format, the trusted proxies, the purge API's keys and the
//! fleet a purge reaches (`cache.peers`).
//!
//! Each request takes one snapshot ([`LiveConfig::current`]) when its context is created and
//! uses it to its end, so a reload never changes the rules under a request in flight; every
//! request after the swap sees the new one.

use std::sync::Arc;

use ixproxy_core::addr::IpNet;
use ixproxy_core::config::{AccessLogFormat, Peers, Upstream};
use ixproxy_core::{Secret, Sources};
use parking_lot::RwLock;
use pingora::protocols::tls::CaType;

use super::inflight::Inflight;
use super::metrics::SeriesTable;
use super::peer;
use super::resolve::OriginResolver;

/// One generation of the reloadable config.
pub struct Live {
    /// The validated sources (with the request limits).
    pub sources: Sources,
    /// Upstream settings.
    pub upstream: Upstream,
    /// Trust anchors for https origins (`upstream.ca_file` plus the system roots), or `None`
    /// for Pingora's default roots.
    pub ca: Option<Arc<CaType>>,
    /// The origin resolver (its lookups are bounded by `upstream.connect_timeout`).
    pub resolver: OriginResolver,
    /// Origin fetches in flight per source.
    pub inflight: Inflight,
    /// `access_log` (see [`Live::with_access_log`]; `off` until set).
    pub access_log: AccessLogFormat,
    /// `trusted_proxies`.
    pub trusted_proxies: Vec<IpNet>,
    /// The metrics series of `sources` (see [`Live::with_series`]; empty until set).
    pub series: SeriesTable,
    /// The keys imgix's purge API admits (see [`Live::with_purge_api_keys`]; none until set).
    pub purge_api_keys: Vec<Secret>,
    /// `cache.peers`, the fleet a purge is forwarded to (see [`Live::with_peers`]; none until
    /// set).
    pub peers: Option<Peers>,
}

impl Live {
    /// Builds a generation from validated `sources` and `upstream`, reading `upstream.ca_file`;
    /// after `previous`, it keeps its resolver (and so its DNS cache) when the connect timeout
    /// is unchanged, and its in-flight counters for the sources that keep their name.
    ///
    /// # Errors
    /// A message naming the field: the CA file cannot be used (`upstream.ca_file: …`), or the
    /// system resolver configuration cannot be read.
    pub fn build(
        sources: Sources,
        upstream: Upstream,
        previous: Option<&Live>,
    ) -> Result<Live, String> {
        let ca =
            peer::load_trust_anchors(upstream.ca_file.as_deref()).map_err(|e| e.to_string())?;
        let resolver = match previous {
            Some(p) if p.upstream.connect_timeout == upstream.connect_timeout => p.resolver.clone(),
            _ => OriginResolver::system(upstream.connect_timeout)?,
        };
        let inflight = match previous {
            Some(p) => p.inflight.carried_over(&sources),
            None => Inflight::new(&sources),
        };
        Ok(Live {
            sources,
            upstream,
            ca,
            resolver,
            inflight,
            access_log: AccessLogFormat::Off,
            trusted_proxies: Vec::new(),
            series: SeriesTable::default(),
            purge_api_keys: Vec::new(),
            peers: None,
        })
    }

    /// The generation counting into `series` (made by [`super::metrics::Metrics::series`] from
    /// its sources).
    pub fn with_series(mut self, series: SeriesTable) -> Self {
        self.series = series;
        self
    }

    /// The generation admitting `keys` to imgix's purge API (`purge_api_keys`).
    pub fn with_purge_api_keys(mut self, keys: Vec<Secret>) -> Self {
        self.purge_api_keys = keys;
        self
    }

    /// The generation forwarding purges to `peers` (`cache.peers`, read at each purge).
    pub fn with_peers(mut self, peers: Option<Peers>) -> Self {
        self.peers = peers;
        self
    }

    /// The generation writing `format` access log lines and believing `X-Forwarded-For` from
    /// `trusted_proxies`.
    pub fn with_access_log(mut self, format: AccessLogFormat, trusted_proxies: Vec<IpNet>) -> Self {
        self.access_log = format;
        self.trusted_proxies = trusted_proxies;
        self
    }
}

/// The current [`Live`] generation, shared by the gateway, the admin app and the reloader.
#[derive(Clone)]
pub struct LiveConfig(Arc<RwLock<Arc<Live>>>);

impl LiveConfig {
    /// Serves `live` until the first [`LiveConfig::replace`].
    pub fn new(live: Live) -> Self {
        LiveConfig(Arc::new(RwLock::new(Arc::new(live))))
    }

    /// The generation new requests use (a cheap clone of a shared pointer).
    pub fn current(&self) -> Arc<Live> {
        Arc::clone(&self.0.read())
    }

    /// Makes `live` the generation of every request from now on; requests holding the previous
    /// one keep it until they end.
    pub fn replace(&self, live: Live) {
        *self.0.write() = Arc::new(live);
    }
}

#[cfg(test)]
mod tests {
    use ixproxy_core::config::{MapSecrets, RawConfig};

    use super::*;

    fn config(token: &str, connect_timeout: &str) -> ixproxy_core::Config {
        RawConfig::from_yaml(&format!(
            "upstream: {{connect_timeout: {connect_timeout}}}\nsources:\n  - {{name: a, hosts: \
             [a.test], secure_url_tokens: [{token}]}}\n"
        ))
        .and_then(|raw| raw.validate(&MapSecrets::new()))
        .expect("valid")
    }

    #[test]
    fn a_snapshot_taken_before_a_replace_keeps_its_generation() {
        let first = config("one", "1s");
        let live = LiveConfig::new(Live::build(first.sources, first.upstream, None).expect("live"));
        let before = live.current();
        let second = config("two", "1s");
        let next = Live::build(second.sources, second.upstream, Some(&before)).expect("live");
        live.replace(next);
        let token = |l: &Live| {
            l.sources
                .by_name("a")
                .map(|s| s.tokens[0].expose().to_owned())
        };
        assert_eq!(token(&before).as_deref(), Some("one"));
        assert_eq!(token(&live.current()).as_deref(), Some("two"));
    }

    #[test]
    fn an_unusable_ca_file_is_an_error_naming_the_field() {
        let mut config = config("t", "1s");
        config.upstream.ca_file = Some("/nonexistent/ixproxy-ca.pem".to_owned());
        let err = Live::build(config.sources, config.upstream, None)
            .err()
            .expect("unreadable");
        assert!(err.starts_with("upstream.ca_file: "), "{err}");
    }
}
