//! The admin listener: `/healthz` (alive), `/readyz` (serving, or draining), `/metrics` for
//! Prometheus, with the response cache on, `POST /cache/purge?url=…`, and with
//! `purge_api_keys`, imgix's purge API (`POST /api/v1/purge`, [`ixproxy_core::purge_api`]).
//! With `cache.peers`, both purges are also forwarded to every peer ([`super::fleet`]), which
//! applies them through `POST /cache/purge/peer` ([`ixproxy_core::fleet`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use ixproxy_core::cache::{parse_purge, PurgeError};
use ixproxy_core::config::Peers;
use ixproxy_core::fleet::{self as fleet_rules, PeerPurge};
use ixproxy_core::purge_api::{self, PurgeApiError};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::cache::ResponseCache;
use super::fleet::{Admitted, Fleet, SystemResolver};
use super::live::{Live, LiveConfig};
use super::metrics::Metrics;

/// What a purge needs: the cache and the current sources (a purge removes the URL's entry
/// under each source's name).
pub struct Purger {
    /// The gateway's cache.
    pub cache: ResponseCache,
    /// The reloadable config, for the names of the sources served now.
    pub live: LiveConfig,
}

/// Whether the process takes new work: `/readyz` answers 200 until a drain starts (SIGTERM, or
/// SIGQUIT when a new process takes over), 503 from then on. Shared by the admin app and the
/// signal watch; a drain never ends.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the process as draining: `/readyz` answers 503 from now on.
    pub fn drain(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a drain has started.
    pub fn draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The admin HTTP app (a Pingora [`ServeHttp`]).
pub struct AdminApp {
    metrics: Metrics,
    purger: Option<Purger>,
    readiness: Readiness,
    /// The reloadable config whose current generation holds the purge API's keys and the
    /// sources its URLs name; `None`: no purge API.
    purge_api: Option<LiveConfig>,
    /// This instance's side of purges across `cache.peers`.
    fleet: Fleet,
}

impl AdminApp {
    /// An admin app exposing `metrics` and `readiness` and, when the cache is on, purges through
    /// `purger`.
    pub fn new(metrics: Metrics, purger: Option<Purger>, readiness: Readiness) -> Self {
        let fleet = Fleet::new(metrics.clone(), Arc::new(SystemResolver));
        AdminApp {
            metrics,
            purger,
            readiness,
            purge_api: None,
            fleet,
        }
    }

    /// The app also serving imgix's purge API with the keys and sources of `live`'s current
    /// generation (a reload changes both); while there are no keys, the path is not found.
    pub fn with_purge_api(mut self, live: LiveConfig) -> Self {
        self.purge_api = Some(live);
        self
    }

    /// imgix's purge API for one request, counted by result: the core's answer with its
    /// `Content-Type` and the refusal's header (`WWW-Authenticate` on a 401, `Allow` on a 405).
    async fn purge_api(&self, session: &mut ServerSession, live: &Live) -> Response<Vec<u8>> {
        let id = purge_api::answer_id(rand::random());
        let (status, body, label, extra) = match self.purge_api_result(session, live, &id).await {
            // 502 when a peer failed: purged here all the same.
            Ok((status, body)) => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                body,
                purge_api::PURGED_LABEL,
                None,
            ),
            Err(e) => (
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                e.answer(&id),
                e.label(),
                e.header(),
            ),
        };
        self.metrics.count_purge_api(label);
        let mut response = reply(status, purge_api::CONTENT_TYPE, body);
        let extra = extra.map(|(name, value)| {
            (
                header::HeaderName::from_bytes(name.as_bytes()),
                header::HeaderValue::from_str(value),
            )
        });
        if let Some((Ok(name), Ok(value))) = extra {
            response.headers_mut().insert(name, value);
        }
        response
    }

    /// Admits the request before its body is read (an unread body then closes the
    /// connection), reads the body within the core's bounds, purges what its URL names, and
    /// with `cache.peers` forwards the purge of those entries to the fleet.
    async fn purge_api_result(
        &self,
        session: &mut ServerSession,
        live: &Live,
        id: &str,
    ) -> Result<(u16, Vec<u8>), PurgeApiError> {
        let req = session.req_header();
        let content_length = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        purge_api::admit(
            req.method.as_str(),
            req.headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .map(|v| v.as_bytes()),
            content_length,
            &live.purge_api_keys,
        )?;
        // Only an admitted request is asked for its body (curl waits a second for this before
        // sending a body over 1 KiB). A failed write shows up as a failed read just below.
        let expects_continue = req
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            let _ = session.write_continue_response().await;
        }
        let body = tokio::time::timeout(purge_api::BODY_TIMEOUT, read_body(session))
            .await
            .map_err(|_| PurgeApiError::Timeout)??;
        let request = purge_api::parse_document(&body)?;
        let target = purge_api::resolve(&live.sources, &request.url)?;
        let admitted = self.admit(live).map_err(|Busy| PurgeApiError::Busy)?;
        // Without a cache nothing is stored, so nothing stale can be served: the purge holds.
        let purged = self.purger.as_ref().map_or(0, |p| {
            p.cache.purge([target.source.as_str()], &target.origin_url)
        });
        let Some((peers, admitted)) = admitted else {
            return Ok(purge_api::purged_answer(id, &request, &target, purged));
        };
        // Forwarded as the entries it names, never with the key (peers trust each other).
        let forwarded = PeerPurge {
            url: target.origin_url.clone(),
            source: Some(target.source.clone()),
        };
        let report = self.fleet.purge(admitted, peers, &forwarded).await;
        Ok(purge_api::fleet_answer(
            id, &request, &target, purged, &report,
        ))
    }

    /// The fleet a purge of `live` is forwarded to: its `cache.peers` while this process runs a
    /// cache. A reload may set `cache.peers` on a process started without a cache (the cache
    /// needs a restart): such a process purges nothing and forwards nothing.
    fn peers<'a>(&self, live: &'a Live) -> Option<&'a Peers> {
        self.purger.as_ref().and(live.peers.as_ref())
    }

    /// A purge's place among the fleet purges in flight, taken before it is applied anywhere
    /// (so a refused purge is retried everywhere): `None` without peers to forward to.
    fn admit<'a>(&'a self, live: &'a Live) -> Result<Option<(&'a Peers, Admitted<'a>)>, Busy> {
        match self.peers(live) {
            Some(peers) => self.fleet.admit().map(|a| Some((peers, a))).ok_or(Busy),
            None => Ok(None),
        }
    }

    /// A request other than imgix's purge API: a forwarded purge (applied here only), a purge
    /// (here, then on `cache.peers`), or [`Self::respond`]'s.
    async fn route(&self, method: &str, path: &str, query: Option<&str>) -> Response<Vec<u8>> {
        if let Some(purge) = fleet_rules::parse_peer_purge(method, path, query) {
            return self.peer_purge(purge);
        }
        if let Some(purge) = parse_purge(method, path, query) {
            return self.purge(purge).await;
        }
        self.respond(path)
    }

    /// The response for a request that is no purge: `/healthz` → 200 `ok`, `/readyz` → 200
    /// `ready` while serving, 503 `draining` once a drain started, `/metrics` → 200 Prometheus
    /// text exposition, anything else → 404.
    pub fn respond(&self, path: &str) -> Response<Vec<u8>> {
        let (status, content_type, body) = match path {
            "/healthz" => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                b"ok\n".to_vec(),
            ),
            "/readyz" if self.readiness.draining() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                b"draining\n".to_vec(),
            ),
            "/readyz" => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                b"ready\n".to_vec(),
            ),
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                b"not found\n".to_vec(),
            ),
        };
        reply(status, content_type, body)
    }

    /// `POST /cache/purge?url=<percent-encoded origin URL>` → 200 `purged N` (the entries
    /// removed, every source; 405 for another method, 400 for a bad URL, 404 with the cache
    /// off). With `cache.peers`, the purge is then forwarded to every peer and the answer
    /// lists them ([`fleet_rules::FleetReport::text`]): 200 when all confirmed, 502 when one
    /// failed (applied here all the same), 503 with `Retry-After` and nothing purged when
    /// [`fleet_rules::MAX_PURGES_IN_FLIGHT`] are being forwarded already.
    async fn purge(&self, purge: Result<String, PurgeError>) -> Response<Vec<u8>> {
        let Some(purger) = self.purger.as_ref() else {
            return no_cache();
        };
        let url = match purge {
            Ok(url) => url,
            Err(e) => return purge_refused(&e),
        };
        let live = purger.live.current();
        let Ok(admitted) = self.admit(&live) else {
            return busy();
        };
        let purged = purger
            .cache
            .purge(live.sources.iter().map(|s| s.name.as_str()), &url);
        let Some((peers, admitted)) = admitted else {
            let (status, text) = fleet_rules::purge_answer(purged);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return reply(status, TEXT, text.into_bytes());
        };
        let report = self
            .fleet
            .purge(admitted, peers, &PeerPurge { url, source: None })
            .await;
        let status = StatusCode::from_u16(report.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        reply(status, TEXT, report.text(purged).into_bytes())
    }

    /// `POST /cache/purge/peer?url=…[&source=…]`, a purge another instance forwarded: applied
    /// here only (never forwarded again, whatever `cache.peers` says), answered with the
    /// entries removed and this instance's id ([`fleet_rules::peer_answer`]). Refusals as for
    /// `/cache/purge`.
    fn peer_purge(&self, purge: Result<PeerPurge, PurgeError>) -> Response<Vec<u8>> {
        let Some(purger) = self.purger.as_ref() else {
            return no_cache();
        };
        let purge = match purge {
            Ok(purge) => purge,
            Err(e) => return purge_refused(&e),
        };
        let purged = match purge.source.as_deref() {
            Some(source) => purger.cache.purge([source], &purge.url),
            None => {
                let live = purger.live.current();
                let sources = live.sources.iter().map(|s| s.name.as_str());
                purger.cache.purge(sources, &purge.url)
            }
        };
        let body = fleet_rules::peer_answer(purged, self.fleet.instance());
        reply(StatusCode::OK, TEXT, body.into_bytes())
    }
}

/// Every place among the fleet purges in flight is taken ([`fleet_rules::MAX_PURGES_IN_FLIGHT`]).
struct Busy;

/// The `Content-Type` of the plain admin answers.
const TEXT: &str = "text/plain; charset=utf-8";

/// A purge with the cache off: 404.
fn no_cache() -> Response<Vec<u8>> {
    reply(
        StatusCode::NOT_FOUND,
        TEXT,
        b"no cache configured\n".to_vec(),
    )
}

/// A purge refused because [`fleet_rules::MAX_PURGES_IN_FLIGHT`] are being forwarded: 503,
/// `Retry-After`, nothing purged.
fn busy() -> Response<Vec<u8>> {
    let status =
        StatusCode::from_u16(fleet_rules::BUSY_STATUS).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = reply(status, TEXT, fleet_rules::busy_text().into_bytes());
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from_static(fleet_rules::RETRY_AFTER),
    );
    response
}

/// A refused purge: its status and reason, `Allow: POST` on a 405.
fn purge_refused(e: &PurgeError) -> Response<Vec<u8>> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = reply(status, TEXT, format!("{e}\n").into_bytes());
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    }
    response
}

/// A plain admin response with its `Content-Type` and `Content-Length`.
fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let length = body.len();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(header::CONTENT_LENGTH, length.into());
    response
}

/// The request body, at most [`purge_api::MAX_BODY_BYTES`] (the caller bounds the time).
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, PurgeApiError> {
    let mut body = Vec::new();
    loop {
        let chunk = session.read_request_body().await.map_err(|e| {
            PurgeApiError::BadDocument(format!("body: could not be read ({})", e.etype().as_str()))
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > purge_api::MAX_BODY_BYTES {
            return Err(PurgeApiError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().uri.path() == purge_api::PURGE_API_PATH {
            let live = self.purge_api.as_ref().map(LiveConfig::current);
            if let Some(live) = live.filter(|l| !l.purge_api_keys.is_empty()) {
                return self.purge_api(session, &live).await;
            }
        }
        let req = session.req_header();
        let (method, path) = (req.method.as_str().to_owned(), req.uri.path().to_owned());
        let query = req.uri.query().map(str::to_owned);
        self.route(&method, &path, query.as_deref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_metrics_and_not_found() {
        let metrics = Metrics::new().expect("metrics");
        metrics.count("-", ixproxy_core::Outcome::UnknownHost);
        let readiness = Readiness::default();
        let app = AdminApp::new(metrics, None, readiness.clone());
        let ok = app.respond("/healthz");
        assert_eq!(
            (ok.status(), ok.body().as_slice()),
            (StatusCode::OK, &b"ok\n"[..])
        );
        let ready = app.respond("/readyz");
        assert_eq!(
            (ready.status(), ready.body().as_slice()),
            (StatusCode::OK, &b"ready\n"[..])
        );
        readiness.drain();
        let draining = app.respond("/readyz");
        assert_eq!(
            (draining.status(), draining.body().as_slice()),
            (StatusCode::SERVICE_UNAVAILABLE, &b"draining\n"[..])
        );
        let alive = app.respond("/healthz");
        assert_eq!(alive.status(), StatusCode::OK, "draining is still alive");
        let m = app.respond("/metrics");
        assert_eq!(m.status(), StatusCode::OK);
        let text = String::from_utf8(m.body().clone()).expect("utf-8");
        assert!(text.contains("ixproxy_requests_total{outcome=\"unknown_host\",source=\"-\"} 1"));
        assert_eq!(
            m.headers()[header::CONTENT_LENGTH],
            m.body().len().to_string().as_str()
        );
        assert_eq!(app.respond("/").status(), StatusCode::NOT_FOUND);
        for path in ["/cache/purge", "/cache/purge/peer"] {
            let off = app
                .route("POST", path, Some("url=https%3A%2F%2Fo.test%2F"))
                .await;
            assert_eq!(
                (off.status(), off.body().as_slice()),
                (StatusCode::NOT_FOUND, &b"no cache configured\n"[..])
            );
        }
    }

    /// An app with the cache on, serving the sources of `sources` (YAML), its fleet the one
    /// static peer `peer`.
    fn app_with_peer(metrics: Metrics, sources: &str, peer: std::net::SocketAddr) -> AdminApp {
        let cache = ResponseCache::new(
            &ixproxy_core::config::CacheLimits {
                max_bytes: 1 << 20,
                max_object_bytes: 1 << 16,
                disk: None,
                peers: None,
            },
            std::time::Duration::from_secs(1),
            metrics.cache_bytes(),
        );
        let config = ixproxy_core::config::RawConfig::from_yaml(sources)
            .and_then(|raw| raw.validate(&ixproxy_core::config::MapSecrets::new()))
            .expect("valid");
        let peers = Peers::Static(vec![ixproxy_core::config::PeerAddr {
            host: peer.ip().to_string(),
            port: peer.port(),
        }]);
        let live = super::super::live::Live::build(config.sources, config.upstream, None)
            .expect("live")
            .with_peers(Some(peers));
        AdminApp::new(
            metrics,
            Some(Purger {
                cache,
                live: LiveConfig::new(live),
            }),
            Readiness::default(),
        )
    }

    #[tokio::test]
    async fn purge_on_the_admin_listener() {
        let metrics = Metrics::new().expect("metrics");
        // A peer nothing listens on: a purge reports it, a forwarded purge never asks it.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a released loopback port");
        let app = app_with_peer(
            metrics,
            "sources:\n  - {name: a, hosts: [a.test], secure_url_tokens: [t]}\n  - {name: b, \
             hosts: [b.test], secure_url_tokens: [t]}\n",
            closed,
        );
        let query = Some("url=https%3A%2F%2Fo.test%2Fa.png");
        let ok = app.route("POST", "/cache/purge", query).await;
        let text = String::from_utf8(ok.body().clone()).expect("utf-8");
        assert_eq!(ok.status(), StatusCode::BAD_GATEWAY, "{text}");
        assert_eq!(
            text,
            format!(
                "purged 0\npeers confirmed 0 failed 1\npeer {closed} failed: connection refused\n"
            )
        );
        let forwarded = app.route("POST", "/cache/purge/peer", query).await;
        assert_eq!(
            (forwarded.status(), forwarded.body().as_slice()),
            (
                StatusCode::OK,
                fleet_rules::peer_answer(0, app.fleet.instance()).as_bytes()
            ),
            "applied here only"
        );
        for path in ["/cache/purge", "/cache/purge/peer"] {
            let get = app.route("GET", path, query).await;
            assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(get.headers()[header::ALLOW], "POST");
            let bad = app.route("POST", path, Some("url=ftp%3A%2F%2Fx")).await;
            assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[tokio::test]
    async fn purges_beyond_those_in_flight_are_refused_with_retry_after() {
        let metrics = Metrics::new().expect("metrics");
        // A peer that never accepts: the kernel completes the connection, nobody answers,
        // so each purge holds its connection until the peer timeout.
        let stalled = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut app = app_with_peer(
            metrics.clone(),
            "sources:\n  - {name: a, hosts: [a.test], secure_url_tokens: [t]}\n",
            stalled.local_addr().expect("addr"),
        );
        let timeout = std::time::Duration::from_millis(150);
        app.fleet = Fleet::new(metrics, Arc::new(SystemResolver)).with_peer_timeout(timeout);
        let query = Some("url=https%3A%2F%2Fo.test%2Fa.png");
        let purge = || app.route("POST", "/cache/purge", query);
        // Polled in order: the first four take the places before the fifth is polled.
        let (a, b, c, d, fifth) = tokio::join!(purge(), purge(), purge(), purge(), purge());
        for forwarded in [a, b, c, d] {
            let text = String::from_utf8(forwarded.body().clone()).expect("utf-8");
            assert_eq!(forwarded.status(), StatusCode::BAD_GATEWAY, "{text}");
            assert!(
                text.ends_with("failed: no answer within 0.15 seconds\n"),
                "{text}"
            );
        }
        assert_eq!(fifth.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(fifth.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            fifth.body().as_slice(),
            fleet_rules::busy_text().as_bytes(),
            "nothing purged, not even here"
        );
        // The places are free again once the purges answered.
        let again = purge().await;
        assert_eq!(again.status(), StatusCode::BAD_GATEWAY);
        drop(stalled);
    }
}
