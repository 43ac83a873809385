//! An HTTP/2 client with prior knowledge (h2c) for the conformance cases: the same
//! [`RawRequest`] in, the same [`RawResponse`] out as the HTTP/1.1 [`crate::client`].
//!
//! The request target becomes `:path` byte for byte (the `http` crate keeps a path as given:
//! no normalisation of `%7E`, dot segments or slashes), the case's `Host` becomes `:authority`,
//! and the body, if any, goes in DATA frames. HTTP/2 has no `Connection`, `Transfer-Encoding`
//! or other connection-specific header (RFC 9113 §8.2.2); [`Protocol::h2_skip_reason`] in
//! [`crate::runner`] keeps cases that need them on HTTP/1.1.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::client::{RawRequest, RawResponse};
use crate::HarnessError;

/// The wire protocol a conformance run speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 over TCP, one connection per request (the raw client).
    Http1,
    /// HTTP/2 with prior knowledge over TCP, one connection per request.
    H2c,
}

impl Protocol {
    /// How reports name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "HTTP/2 (h2c)",
        }
    }

    /// Sends `req` to `addr` over this protocol and reads the whole response within `timeout`.
    ///
    /// # Errors
    /// As [`crate::client::send`] or [`send_h2c`].
    pub fn send(
        self,
        addr: SocketAddr,
        req: &RawRequest,
        timeout: Duration,
    ) -> Result<RawResponse, HarnessError> {
        match self {
            Protocol::Http1 => crate::client::send(addr, req, timeout),
            Protocol::H2c => send_h2c(addr, req, timeout),
        }
    }
}

/// Sends `req` on a new HTTP/2 prior-knowledge connection to `addr` and reads the whole
/// response, all within `timeout`.
///
/// # Errors
/// [`HarnessError::Http`] when the request cannot be expressed in HTTP/2 (a target or header
/// the `http` crate refuses), the connection or handshake fails, the stream is refused or no
/// response arrives in time; [`HarnessError::Incomplete`] when the stream is reset or the
/// connection ends after the response head but before the end of its body (an aborted
/// transfer).
pub fn send_h2c(
    addr: SocketAddr,
    req: &RawRequest,
    timeout: Duration,
) -> Result<RawResponse, HarnessError> {
    let request = to_http(req)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HarnessError::io("tokio runtime", e))?;
    runtime.block_on(async {
        match tokio::time::timeout(timeout, exchange(addr, request)).await {
            Ok(result) => result,
            Err(_) => Err(HarnessError::Http(format!(
                "no complete HTTP/2 response within {timeout:?}"
            ))),
        }
    })
}

/// `req` as an `http::Request`: `:scheme` http, `:authority` the case's host.
fn to_http(req: &RawRequest) -> Result<http::Request<Full<Bytes>>, HarnessError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        HarnessError::Http(format!("not expressible in HTTP/2: {what}: {e}"))
    };
    let uri: http::Uri = format!("http://{}{}", req.host, req.target)
        .parse()
        .map_err(|e| bad("authority or target", &e))?;
    let mut builder = http::Request::builder()
        .method(req.method.as_str())
        .uri(uri)
        .version(http::Version::HTTP_2);
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(req.body.clone())))
        .map_err(|e| bad("request", &e))
}

async fn exchange(
    addr: SocketAddr,
    request: http::Request<Full<Bytes>>,
) -> Result<RawResponse, HarnessError> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| HarnessError::io(format!("connect {addr}"), e))?;
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| HarnessError::Http(format!("HTTP/2 handshake: {e}")))?;
    // Drives the connection until the exchange is over (the runtime ends with it).
    tokio::spawn(connection);
    let head_request = request.method() == http::Method::HEAD;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| HarnessError::Http(format!("HTTP/2 request: {e}")))?;
    if response.version() != http::Version::HTTP_2 {
        return Err(HarnessError::Http(format!(
            "answered over {:?}, not HTTP/2",
            response.version()
        )));
    }
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| HarnessError::Incomplete(format!("HTTP/2 body cut short: {e}")))?
        .to_bytes();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(RawResponse {
        status: parts.status.as_u16(),
        headers,
        body: if head_request {
            Vec::new()
        } else {
            body.to_vec()
        },
    })
}
