//! The recording origin: three loopback servers (plain HTTP, HTTPS with a certificate the gateway
//! trusts, HTTPS with a certificate for another name) that log every request they receive and
//! answer by path.
//!
//! Routes (any server):
//! - `/status/<code>`: that status, body `status <code>`.
//! - `/slow/...`: answers only after [`SLOW_DELAY`], longer than the gateway's origin timeout.
//! - anything else: an asset, body `asset <path-and-query>`, with `ETag: "asset-v1"`,
//!   `Set-Cookie` (the gateway must strip it) and `Cache-Control: public, max-age=31536000`
//!   (the gateway must cap it under `expires`); `Range: bytes=A-B` gives 206 and a matching
//!   `If-None-Match` gives 304.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_RANGE, CONTENT_TYPE, ETAG, SET_COOKIE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::tls::TestPki;
use crate::HarnessError;

/// How long `/slow/...` takes to answer.
pub const SLOW_DELAY: Duration = Duration::from_secs(10);
/// The asset `ETag`.
pub const ASSET_ETAG: &str = "\"asset-v1\"";
/// The asset `Cache-Control`.
pub const ASSET_CACHE_CONTROL: &str = "public, max-age=31536000";
/// The asset `Set-Cookie`, which must never reach the client.
pub const ASSET_SET_COOKIE: &str = "origin_session=origin-cookie; Path=/";

/// Which of the recording servers got a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginKind {
    /// Plain HTTP.
    Http,
    /// HTTPS, certificate for `localhost` and `127.0.0.1`, signed by the test CA.
    Https,
    /// HTTPS, certificate for `wrong.test` only, signed by the test CA.
    HttpsWrong,
}

/// One request as the origin received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Which server received it.
    pub server: OriginKind,
    /// Method.
    pub method: String,
    /// Path and query exactly as in the request line.
    pub target: String,
    /// Every header in order, names lower-case, values lossily decoded.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// All values of header `name` (lower-case).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

type Log = Arc<Mutex<Vec<Recorded>>>;

/// The three running servers and their shared request log; stopped on drop.
pub struct RecordingOrigin {
    runtime: Option<Runtime>,
    log: Log,
    /// Plain HTTP server address.
    pub http: SocketAddr,
    /// HTTPS server (good certificate) address.
    pub https: SocketAddr,
    /// HTTPS server (certificate for another name) address.
    pub https_wrong: SocketAddr,
    /// PEM of the CA that signed both certificates.
    pub ca_pem: String,
}

impl RecordingOrigin {
    /// Generates the test PKI and starts the servers on `127.0.0.1`, OS-assigned ports.
    ///
    /// # Errors
    /// Runtime, PKI or bind errors.
    pub fn start() -> Result<Self, HarnessError> {
        let pki = TestPki::generate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| HarnessError::io("origin runtime", e))?;
        let log: Log = Arc::default();
        let (http, https, https_wrong) = runtime.block_on(async {
            let http = spawn_server(OriginKind::Http, None, log.clone()).await?;
            let https =
                spawn_server(OriginKind::Https, Some(pki.good.clone()), log.clone()).await?;
            let wrong =
                spawn_server(OriginKind::HttpsWrong, Some(pki.wrong.clone()), log.clone()).await?;
            Ok::<_, HarnessError>((http, https, wrong))
        })?;
        Ok(RecordingOrigin {
            runtime: Some(runtime),
            log,
            http,
            https,
            https_wrong,
            ca_pem: pki.ca_pem,
        })
    }

    /// Empties the request log.
    pub fn clear(&self) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// A copy of every request received since the last [`RecordingOrigin::clear`].
    pub fn requests(&self) -> Vec<Recorded> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for RecordingOrigin {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn spawn_server(
    kind: OriginKind,
    tls: Option<Arc<ServerConfig>>,
    log: Log,
) -> Result<SocketAddr, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| HarnessError::io("bind origin", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| HarnessError::io("origin address", e))?;
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(kind, log.clone(), req));
                let builder = hyper::server::conn::http1::Builder::new();
                // Connection errors (a gateway that gives up, a failed handshake) are part of
                // the cases under test, not harness failures.
                match acceptor {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn handle(
    kind: OriginKind,
    log: Log,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let recorded = Recorded {
        server: kind,
        method: req.method().as_str().to_owned(),
        target: target.clone(),
        headers,
    };
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(recorded.clone());
    Ok(respond(&recorded).await)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

async fn respond(req: &Recorded) -> Response<Full<Bytes>> {
    let path = req.target.split('?').next().unwrap_or_default();
    if let Some(code) = path.strip_prefix("/status/") {
        return match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => text(status, format!("status {code}")),
            None => text(StatusCode::BAD_REQUEST, "bad status"),
        };
    }
    if path.starts_with("/slow/") {
        tokio::time::sleep(SLOW_DELAY).await;
        return text(StatusCode::OK, "slow");
    }
    let body = format!("asset {}", req.target).into_bytes();
    let mut response = if req
        .header_values("if-none-match")
        .iter()
        .any(|v| v.split(',').any(|t| t.trim() == ASSET_ETAG))
    {
        text(StatusCode::NOT_MODIFIED, Bytes::new())
    } else if let Some((start, end)) = req
        .header_values("range")
        .first()
        .and_then(|r| parse_range(r, body.len()))
    {
        let mut r = text(StatusCode::PARTIAL_CONTENT, body[start..=end].to_vec());
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{}", body.len())) {
            r.headers_mut().insert(CONTENT_RANGE, v);
        }
        r
    } else {
        text(StatusCode::OK, body)
    };
    let headers = response.headers_mut();
    headers.insert(ETAG, HeaderValue::from_static(ASSET_ETAG));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(ASSET_CACHE_CONTROL));
    headers.insert(SET_COOKIE, HeaderValue::from_static(ASSET_SET_COOKIE));
    response
}

/// `bytes=A-B` or `bytes=A-` within a body of `len` bytes → inclusive byte range.
fn parse_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let (start, end) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = start.parse().ok()?;
    let end: usize = if end.is_empty() {
        len.checked_sub(1)?
    } else {
        end.parse::<usize>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Instant;

    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    use super::*;
    use crate::client::{exchange, send, RawRequest, RawResponse};
    use crate::tls::WRONG_NAME;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn get(origin: &RecordingOrigin, target: &str, headers: &[(&str, &str)]) -> RawResponse {
        let mut req = RawRequest::get(&origin.http.to_string(), target);
        req.headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        send(origin.http, &req, TIMEOUT).expect("origin answers")
    }

    fn tls_get(
        origin: &RecordingOrigin,
        addr: SocketAddr,
        name: &str,
        target: &str,
    ) -> Result<RawResponse, crate::HarnessError> {
        let mut roots = RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(origin.ca_pem.as_bytes()).expect("ca pem");
        roots.add(ca).expect("ca");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(name.to_owned()).expect("name");
        let conn = ClientConnection::new(Arc::new(config), server_name).expect("client");
        let tcp = TcpStream::connect(addr).expect("connect");
        let stream = StreamOwned::new(conn, tcp);
        exchange(
            stream,
            &RawRequest::get(name, target),
            Instant::now() + TIMEOUT,
            |s, left| {
                s.sock
                    .set_read_timeout(Some(left))
                    .map_err(|e| crate::HarnessError::io("timeout", e))
            },
        )
    }

    #[test]
    fn records_the_raw_target_and_every_header() {
        let origin = RecordingOrigin::start().expect("origin");
        let r = get(
            &origin,
            "/asset/a%20b+c.jpg?x=%2F&y",
            &[
                ("X-One", "1"),
                ("X-One", "2"),
                ("Authorization", "Basic abc"),
            ],
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body_text(), "asset /asset/a%20b+c.jpg?x=%2F&y");
        assert_eq!(r.header("set-cookie"), Some(ASSET_SET_COOKIE));
        assert_eq!(r.header("cache-control"), Some(ASSET_CACHE_CONTROL));
        let log = origin.requests();
        assert_eq!(log.len(), 1);
        let rec = &log[0];
        assert_eq!(
            (rec.server, rec.method.as_str(), rec.target.as_str()),
            (OriginKind::Http, "GET", "/asset/a%20b+c.jpg?x=%2F&y")
        );
        assert_eq!(rec.header_values("x-one"), ["1", "2"]);
        assert_eq!(rec.header_values("authorization"), ["Basic abc"]);
        assert_eq!(rec.header_values("host"), [origin.http.to_string()]);
        origin.clear();
        assert!(origin.requests().is_empty());
    }

    #[test]
    fn answers_by_path_range_and_etag() {
        let origin = RecordingOrigin::start().expect("origin");
        let r = get(&origin, "/status/404", &[]);
        assert_eq!((r.status, r.body_text().as_str()), (404, "status 404"));
        let r = get(&origin, "/asset/range.jpg", &[("Range", "bytes=0-4")]);
        assert_eq!((r.status, r.body_text().as_str()), (206, "asset"));
        assert_eq!(r.header("content-range"), Some("bytes 0-4/22"));
        let r = get(&origin, "/asset/c.jpg", &[("If-None-Match", ASSET_ETAG)]);
        assert_eq!((r.status, r.body.len()), (304, 0));
        let r = get(&origin, "/asset/c.jpg", &[("If-None-Match", "\"other\"")]);
        assert_eq!(r.status, 200);
        let mut head = RawRequest::get(&origin.http.to_string(), "/asset/h.jpg");
        head.method = "HEAD".to_owned();
        let r = send(origin.http, &head, TIMEOUT).expect("head");
        assert_eq!((r.status, r.body.len()), (200, 0));
        assert_eq!(
            origin
                .requests()
                .last()
                .map(|r| r.method.clone())
                .as_deref(),
            Some("HEAD")
        );
    }

    #[test]
    fn slow_path_does_not_answer_within_a_short_timeout() {
        let origin = RecordingOrigin::start().expect("origin");
        let req = RawRequest::get("x", "/slow/x.jpg");
        let started = Instant::now();
        assert!(send(origin.http, &req, Duration::from_millis(500)).is_err());
        assert!(started.elapsed() < SLOW_DELAY);
        assert_eq!(origin.requests().len(), 1, "recorded on arrival");
    }

    #[test]
    fn https_servers_present_ca_signed_certificates_for_their_names() {
        let origin = RecordingOrigin::start().expect("origin");
        let r = tls_get(&origin, origin.https, "localhost", "/asset/tls.jpg").expect("https");
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (200, "asset /asset/tls.jpg")
        );
        let r = tls_get(&origin, origin.https, "127.0.0.1", "/asset/ip.jpg").expect("ip SAN");
        assert_eq!(r.status, 200);
        assert_eq!(
            origin
                .requests()
                .iter()
                .map(|r| r.server)
                .collect::<Vec<_>>(),
            [OriginKind::Https, OriginKind::Https]
        );
        // Same CA, other name: only the name check can fail.
        assert!(tls_get(&origin, origin.https_wrong, "127.0.0.1", "/x").is_err());
        let r = tls_get(&origin, origin.https_wrong, WRONG_NAME, "/asset/w.jpg").expect("own name");
        assert_eq!(r.status, 200);
    }
}
