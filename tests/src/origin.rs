//! The recording origin: three loopback servers (plain HTTP, HTTPS with a certificate the gateway
//! trusts, HTTPS with a certificate for another name) that log every request they receive and
//! answer by path.
//!
//! Routes (any server):
//! - `/status/<code>`: that status, body `status <code>`.
//! - `/slow/...`: answers only after [`SLOW_DELAY`], longer than the gateway's origin timeout.
//! - `/hops/<n>/<rest>`: 302 to `/hops/<n-1>/<rest>` (query kept); `/hops/0/...` is an asset.
//!   Redirect bodies are [`REDIRECT_BODY`].
//! - `/redirect/<code>?to=<location>`: that status with `Location` = everything after `to=`.
//! - `/image/...`: 200 `image/png`, body `image <path-and-query>`.
//! - `/cc/<value>`: 200 with `Cache-Control: max-age=<value>`.
//! - `/vary?v=<value>[&v=...]`: 200 with one `Vary` field per `v` (percent-decoded).
//! - `/bytes/<n>`: 200 with [`pattern`]`(n)` streamed chunked; `/bytes-cl/<n>` the same with a
//!   `Content-Length`.
//! - `/reset/<n>`: declares `2n` bytes, sends `n`, then drops the connection;
//!   `/reset-chunked/<n>` sends `n` bytes chunked, then drops it before the last chunk.
//! - `/drip/<n>`: declares `n` bytes and sends one every [`DRIP_INTERVAL`].
//! - `/pause/<n>`: declares `n` bytes, sends half, pauses [`BODY_PAUSE`] (longer than the
//!   gateway's `upstream.body_timeout`), then sends the rest.
//! - `/claim-huge`: declares a 10 GiB `Content-Length`, sends a few bytes, then drops it.
//! - `/big-headers`: a 2 MiB response header.
//! - anything else: an asset, body `asset <path-and-query>`, with `ETag: "asset-v1"`,
//!   two `Set-Cookie` (the gateway must strip them) and `Cache-Control: public,
//!   max-age=31536000` (the gateway must cap it under `expires`); `Range: bytes=A-B` gives 206
//!   and a matching `If-None-Match` gives 304.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED,
    LOCATION, SET_COOKIE, VARY,
};
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
/// The body of every redirect the origin sends (`/hops/...`, `/redirect/...`); no client may
/// ever see it.
pub const REDIRECT_BODY: &str = "origin redirect body";
/// The asset `ETag`.
pub const ASSET_ETAG: &str = "\"asset-v1\"";
/// The `Last-Modified` of `/fresh/…`.
pub const FRESH_LAST_MODIFIED: &str = "Wed, 01 Jan 2025 00:00:00 GMT";
/// The asset `Cache-Control`.
pub const ASSET_CACHE_CONTROL: &str = "public, max-age=31536000";
/// The asset `Set-Cookie` values, which must never reach the client.
pub const ASSET_SET_COOKIES: [&str; 2] = [
    "origin_session=origin-cookie; Path=/",
    "tracking=origin-tracker; HttpOnly",
];
/// Size of the `/big-headers` response header: over any gateway's response header limit
/// (Envoy 60 KiB, Pingora 1 MiB).
pub const BIG_HEADER_BYTES: usize = 2 * 1024 * 1024;
/// `Content-Length` claimed by `/claim-huge` (10 GiB).
pub const HUGE_CLAIM: u64 = 10 * 1024 * 1024 * 1024;

/// The body of `/bytes/<n>`: `n` bytes of `0123456789abcdef` repeated.
pub fn pattern(n: usize) -> Vec<u8> {
    b"0123456789abcdef"
        .iter()
        .copied()
        .cycle()
        .take(n)
        .collect()
}

/// Which of the recording servers got a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginKind {
    /// Plain HTTP.
    Http,
    /// A second plain HTTP server, on another port of the same address (for rules about
    /// "the same scheme, host and port").
    HttpAlt,
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

/// The four running servers and their shared request log; stopped on drop.
pub struct RecordingOrigin {
    runtime: Option<Runtime>,
    log: Log,
    /// Plain HTTP server address.
    pub http: SocketAddr,
    /// Second plain HTTP server address (same IP, another port).
    pub http_alt: SocketAddr,
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
        let (http, http_alt, https, https_wrong) = runtime.block_on(async {
            let http = spawn_server(OriginKind::Http, None, log.clone()).await?;
            let http_alt = spawn_server(OriginKind::HttpAlt, None, log.clone()).await?;
            let https =
                spawn_server(OriginKind::Https, Some(pki.good.clone()), log.clone()).await?;
            let wrong =
                spawn_server(OriginKind::HttpsWrong, Some(pki.wrong.clone()), log.clone()).await?;
            Ok::<_, HarnessError>((http, http_alt, https, wrong))
        })?;
        Ok(RecordingOrigin {
            runtime: Some(runtime),
            log,
            http,
            http_alt,
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

/// One step of a [`Scripted`] body.
enum Step {
    /// Send these bytes.
    Data(Bytes),
    /// Wait, so that everything before is flushed to the peer.
    Pause(Duration),
    /// Fail the body: hyper drops the connection here (a transfer cut mid-body).
    Cut,
}

/// A response body played from a script of steps.
pub struct Scripted {
    steps: VecDeque<Step>,
    exact_len: Option<u64>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Pause between the bytes of `/drip/<n>`.
pub const DRIP_INTERVAL: Duration = Duration::from_millis(400);
/// The pause inside the body of `/pause/<n>`.
pub const BODY_PAUSE: Duration = Duration::from_millis(2500);
/// How long a cut transfer pauses before the cut, so the bytes before it reach the gateway.
const PAUSE_BEFORE_CUT: Duration = Duration::from_millis(200);

impl Scripted {
    fn full(body: impl Into<Bytes>) -> Self {
        let body: Bytes = body.into();
        let len = body.len() as u64;
        Scripted {
            steps: VecDeque::from([Step::Data(body)]),
            exact_len: Some(len),
            sleep: None,
        }
    }

    /// `body` in 64 KiB chunks of unknown total length (sent chunked unless a
    /// `Content-Length` is set), then, if `cut`, a pause and a cut.
    fn streamed(body: &[u8], cut: bool) -> Self {
        let mut steps: VecDeque<Step> = body
            .chunks(64 * 1024)
            .map(|c| Step::Data(Bytes::copy_from_slice(c)))
            .collect();
        if cut {
            steps.push_back(Step::Pause(PAUSE_BEFORE_CUT));
            steps.push_back(Step::Cut);
        }
        Scripted {
            steps,
            exact_len: None,
            sleep: None,
        }
    }
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        loop {
            match self.steps.pop_front() {
                None => return Poll::Ready(None),
                Some(Step::Data(bytes)) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Some(Step::Cut) => {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "origin cuts the transfer",
                    ))))
                }
                Some(Step::Pause(duration)) => {
                    let sleep = self
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(duration)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        self.steps.push_front(Step::Pause(duration));
                        return Poll::Pending;
                    }
                    self.sleep = None;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.steps.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.exact_len
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

async fn handle(
    kind: OriginKind,
    log: Log,
    req: Request<Incoming>,
) -> Result<Response<Scripted>, Infallible> {
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

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Scripted> {
    with_body(status, Scripted::full(body))
}

fn with_body(status: StatusCode, body: Scripted) -> Response<Scripted> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A 200 whose `n`-byte body is sent as `steps` (data and pauses), with its Content-Length.
fn stepped(steps: VecDeque<Step>, n: usize) -> Response<Scripted> {
    let mut response = with_body(
        StatusCode::OK,
        Scripted {
            steps,
            exact_len: None,
            sleep: None,
        },
    );
    header(&mut response, CONTENT_LENGTH, &n.to_string());
    response
}

fn header(response: &mut Response<Scripted>, name: hyper::header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().append(name, value);
    }
}

/// What `/hostile` answers with besides its body: response headers that would act on the
/// customer's domain (cookies, HSTS, refresh, CORS, preload links, site-data wipes) or reveal
/// the origin (`Server`).
pub const HOSTILE_HEADERS: [(&str, &str); 8] = [
    ("set-cookie", "session=origin; Path=/"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("refresh", "0; url=https://evil.example/"),
    ("access-control-allow-origin", "*"),
    ("access-control-allow-credentials", "true"),
    ("server", "hostile-origin/1.0"),
    ("link", "</evil.js>; rel=preload; as=script"),
    ("clear-site-data", "\"*\""),
];

async fn respond(req: &Recorded) -> Response<Scripted> {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let number = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|n| n.parse::<usize>().ok())
    };
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
    if let Some(rest) = path.strip_prefix("/hops/") {
        if let Some((n, tail)) = rest.split_once('/') {
            if let Some(n) = n.parse::<u32>().ok().filter(|n| *n > 0) {
                let mut response = text(StatusCode::FOUND, REDIRECT_BODY);
                let q = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                };
                header(
                    &mut response,
                    LOCATION,
                    &format!("/hops/{}/{tail}{q}", n - 1),
                );
                return response;
            }
        }
    }
    if let Some(code) = path.strip_prefix("/redirect/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok());
        let location = query.split_once("to=").map(|(_, to)| to);
        if let (Some(status), Some(location)) = (status, location) {
            let mut response = text(status, REDIRECT_BODY);
            header(&mut response, LOCATION, location);
            return response;
        }
        return text(StatusCode::BAD_REQUEST, "bad redirect");
    }
    if path.starts_with("/image/") {
        let mut response = text(StatusCode::OK, format!("image {}", req.target));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
        return response;
    }
    if path == "/hostile" {
        // Headers an origin could use against the customer's domain, none of which may reach
        // the client, around an allowlisted ETag that must.
        let mut response = text(StatusCode::OK, "hostile");
        for (name, value) in HOSTILE_HEADERS {
            if let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                response.headers_mut().append(name, value);
            }
        }
        header(&mut response, ETAG, "\"hostile-v1\"");
        return response;
    }
    if path == "/ttl" {
        // `status=N` (default 200) and, when given, `cc=` as the one Cache-Control field
        // (percent-decoded): the origin side of the cache TTL policy cases.
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(|v| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
        };
        let status = param("status")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let mut response = text(status, "ttl");
        if let Some(cc) = param("cc") {
            header(&mut response, CACHE_CONTROL, &cc);
        }
        return response;
    }
    if path == "/ct" {
        // One Content-Type field per `v=` (percent-decoded), none without.
        let mut response = text(StatusCode::OK, "typed");
        response.headers_mut().remove(CONTENT_TYPE);
        for value in query.split('&').filter_map(|kv| kv.strip_prefix("v=")) {
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            header(&mut response, CONTENT_TYPE, &value);
        }
        return response;
    }
    if path == "/vary" {
        // One Vary field per `v=` (percent-decoded), on an asset-like 200.
        let mut response = text(StatusCode::OK, "varied");
        for value in query.split('&').filter_map(|kv| kv.strip_prefix("v=")) {
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            header(&mut response, VARY, &value);
        }
        return response;
    }
    if let Some(value) = path.strip_prefix("/cc/") {
        let mut response = text(StatusCode::OK, "cache");
        header(&mut response, CACHE_CONTROL, &format!("max-age={value}"));
        return response;
    }
    if let Some(rest) = path.strip_prefix("/fresh/") {
        // `/fresh/<max-age>/<n>`: `n` pattern bytes with `public, max-age=<max-age>`, an ETag
        // and a Last-Modified; 304 when `If-None-Match` names the ETag (the response cache's
        // origin: freshness, revalidation, distinct objects of a given size by query).
        // `delay=<ms>` (at most 5000) holds the answer back, so concurrent requests overlap.
        let delay = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("delay="))
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(Duration::ZERO, |ms| Duration::from_millis(ms.min(5000)));
        tokio::time::sleep(delay).await;
        if let Some((Ok(max_age), Ok(n))) = rest
            .split_once('/')
            .map(|(a, n)| (a.parse::<u64>(), n.parse::<usize>()))
        {
            let etag = format!("\"fresh-{n}\"");
            let matched = req
                .header_values("if-none-match")
                .iter()
                .any(|v| v.split(',').any(|t| t.trim() == etag));
            let mut response = if matched {
                text(StatusCode::NOT_MODIFIED, Bytes::new())
            } else {
                let mut r = with_body(StatusCode::OK, Scripted::full(pattern(n)));
                header(&mut r, CONTENT_LENGTH, &n.to_string());
                r
            };
            header(&mut response, ETAG, &etag);
            header(&mut response, LAST_MODIFIED, FRESH_LAST_MODIFIED);
            header(
                &mut response,
                CACHE_CONTROL,
                &format!("public, max-age={max_age}"),
            );
            return response;
        }
    }
    if let Some(n) = number("/long-location/") {
        // A redirect whose Location alone is n bytes (a short request, a long answer).
        let location = format!("/asset/{}", "a".repeat(n.saturating_sub("/asset/".len())));
        let mut response = text(StatusCode::FOUND, REDIRECT_BODY);
        header(&mut response, LOCATION, &location);
        return response;
    }
    if let Some(n) = number("/bytes/") {
        return with_body(StatusCode::OK, Scripted::streamed(&pattern(n), false));
    }
    if let Some(n) = number("/bytes-cl/") {
        let mut response = with_body(StatusCode::OK, Scripted::streamed(&pattern(n), false));
        header(&mut response, CONTENT_LENGTH, &n.to_string());
        return response;
    }
    if let Some(n) = number("/reset/") {
        let mut response = with_body(StatusCode::OK, Scripted::streamed(&pattern(n), true));
        header(&mut response, CONTENT_LENGTH, &(2 * n).to_string());
        return response;
    }
    if let Some(n) = number("/reset-chunked/") {
        return with_body(StatusCode::OK, Scripted::streamed(&pattern(n), true));
    }
    if let Some(n) = number("/drip/") {
        let steps = pattern(n)
            .into_iter()
            .flat_map(|b| [Step::Pause(DRIP_INTERVAL), Step::Data(Bytes::from(vec![b]))])
            .collect();
        return stepped(steps, n);
    }
    if let Some(n) = number("/pause/") {
        let body = pattern(n);
        let (first, rest) = body.split_at(n / 2);
        let steps = VecDeque::from([
            Step::Data(Bytes::copy_from_slice(first)),
            Step::Pause(BODY_PAUSE),
            Step::Data(Bytes::copy_from_slice(rest)),
        ]);
        return stepped(steps, n);
    }
    if path == "/claim-huge" {
        let mut response = with_body(StatusCode::OK, Scripted::streamed(b"0123456789", true));
        header(&mut response, CONTENT_LENGTH, &HUGE_CLAIM.to_string());
        return response;
    }
    if path == "/big-headers" {
        let mut response = text(StatusCode::OK, "big headers");
        header(
            &mut response,
            hyper::header::HeaderName::from_static("x-big"),
            &"b".repeat(BIG_HEADER_BYTES),
        );
        return response;
    }
    asset(req)
}

fn asset(req: &Recorded) -> Response<Scripted> {
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
        header(
            &mut r,
            CONTENT_RANGE,
            &format!("bytes {start}-{end}/{}", body.len()),
        );
        r
    } else {
        text(StatusCode::OK, body)
    };
    header(&mut response, ETAG, ASSET_ETAG);
    header(&mut response, CACHE_CONTROL, ASSET_CACHE_CONTROL);
    for cookie in ASSET_SET_COOKIES {
        header(&mut response, SET_COOKIE, cookie);
    }
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
        assert_eq!(r.header_values("set-cookie"), ASSET_SET_COOKIES);
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

#[cfg(test)]
mod fault_tests {
    use super::*;
    use crate::client::{send, RawRequest};
    use crate::HarnessError;

    #[test]
    fn fault_routes_cut_transfers_after_real_bytes() {
        let origin = RecordingOrigin::start().expect("origin");
        let get = |target: &str| {
            send(
                origin.http,
                &RawRequest::get("o", target),
                Duration::from_secs(5),
            )
        };
        for target in ["/reset/100000", "/reset-chunked/100000", "/claim-huge"] {
            match get(target) {
                Err(HarnessError::Incomplete(why)) => {
                    assert!(
                        why.starts_with("status 200, body cut short"),
                        "{target}: {why}"
                    );
                }
                other => panic!("{target}: {other:?}"),
            }
        }
        let r = get("/bytes/100000").expect("chunked");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(r.body, pattern(100_000));
        let r = get("/bytes-cl/100000").expect("content-length");
        assert_eq!(r.header("content-length"), Some("100000"));
        assert_eq!(r.body, pattern(100_000));
        let r = get("/hops/2/asset/x.jpg?q=1").expect("hop");
        assert_eq!(
            (r.status, r.header("location")),
            (302, Some("/hops/1/asset/x.jpg?q=1"))
        );
        let r = get("/redirect/307?to=http://h.test/a?b=c").expect("redirect");
        assert_eq!(
            (r.status, r.header("location")),
            (307, Some("http://h.test/a?b=c"))
        );
        let r = get("/image/p.png").expect("image");
        assert_eq!(r.header("content-type"), Some("image/png"));
        let r = get("/big-headers").expect("big headers");
        assert!(r.header("x-big").is_some_and(|v| v.len() > 1024 * 1024));
    }
}
