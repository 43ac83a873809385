//! The admin listener: `/healthz` for readiness checks and `/metrics` for Prometheus.

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::metrics::Metrics;

/// The admin HTTP app (a Pingora [`ServeHttp`]).
pub struct AdminApp {
    metrics: Metrics,
}

impl AdminApp {
    /// An admin app exposing `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        AdminApp { metrics }
    }

    /// The response for a request path: `/healthz` → 200 `ok`, `/metrics` → 200 Prometheus
    /// text exposition, anything else → 404.
    pub fn respond(&self, path: &str) -> Response<Vec<u8>> {
        let (status, content_type, body) = match path {
            "/healthz" => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                b"ok\n".to_vec(),
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
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        self.respond(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_metrics_and_not_found() {
        let metrics = Metrics::new().expect("metrics");
        metrics.count(ixproxy_core::Outcome::UnknownHost);
        let app = AdminApp::new(metrics);
        let ok = app.respond("/healthz");
        assert_eq!(
            (ok.status(), ok.body().as_slice()),
            (StatusCode::OK, &b"ok\n"[..])
        );
        let m = app.respond("/metrics");
        assert_eq!(m.status(), StatusCode::OK);
        let text = String::from_utf8(m.body().clone()).expect("utf-8");
        assert!(text.contains("ixproxy_requests_total{outcome=\"unknown_host\"} 1"));
        assert_eq!(
            m.headers()[header::CONTENT_LENGTH],
            m.body().len().to_string().as_str()
        );
        assert_eq!(app.respond("/").status(), StatusCode::NOT_FOUND);
    }
}
