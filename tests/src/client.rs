//! A minimal HTTP/1.1 client over a TCP stream that sends the request target exactly as written.
//!
//! General-purpose clients normalise paths (`%7E` → `~`, dot segments, ...), which changes the
//! bytes an imgix signature covers; this one writes the request line verbatim.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// A request to send as-is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// Method token.
    pub method: String,
    /// Request target (path and query), written verbatim.
    pub target: String,
    /// `Host` header value.
    pub host: String,
    /// Extra headers, in order.
    pub headers: Vec<(String, String)>,
    /// Bytes sent after the header block, as they are (no `Content-Length` is added).
    pub body: Vec<u8>,
}

impl RawRequest {
    /// A `GET` with no extra headers.
    pub fn get(host: &str, target: &str) -> Self {
        RawRequest {
            method: "GET".to_owned(),
            target: target.to_owned(),
            host: host.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The bytes on the wire, with `Connection: close`.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with(true)
    }

    /// The bytes on the wire, with `Connection: close` or `keep-alive`.
    pub fn to_bytes_with(&self, close: bool) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method, self.target, self.host
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(if close {
            "Connection: close\r\n\r\n"
        } else {
            "Connection: keep-alive\r\n\r\n"
        });
        let mut out = out.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// All values of header `name` (any case).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().copied()
    }

    /// The body as text (lossy), for messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether a `Connection` field holds the `close` token (any case, any list position): the
    /// server will close the connection after this response, so a client must not reuse it.
    pub fn says_close(&self) -> bool {
        self.header_values("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("close"))
    }
}

/// Connects to `addr`, sends `req` and reads the whole response, all within `timeout`.
///
/// # Errors
/// Connect, I/O, timeout or parse errors.
pub fn send(
    addr: SocketAddr,
    req: &RawRequest,
    timeout: Duration,
) -> Result<RawResponse, HarnessError> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| HarnessError::io(format!("connect {addr}"), e))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| HarnessError::io("set timeout", e))?;
    let deadline = Instant::now() + timeout;
    exchange(stream, req, deadline, |s, d| {
        s.set_read_timeout(Some(d))
            .map_err(|e| HarnessError::io("set timeout", e))
    })
}

/// Sends `req` on an already connected stream and reads its response, within `deadline`.
/// `set_timeout` is called before each read with the time left.
///
/// # Errors
/// I/O, timeout or parse errors; [`HarnessError::Incomplete`] when the connection ends before
/// the response is complete.
pub fn exchange<S: Read + Write>(
    mut stream: S,
    req: &RawRequest,
    deadline: Instant,
    mut set_timeout: impl FnMut(&mut S, Duration) -> Result<(), HarnessError>,
) -> Result<RawResponse, HarnessError> {
    write_request(&mut stream, req, true)?;
    read_response(
        &mut stream,
        &mut Vec::new(),
        req,
        deadline,
        &mut set_timeout,
    )
}

/// Everything a server sent back on one connection, unparsed, and how the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The bytes received, head and body, up to the end of the connection.
    pub bytes: Vec<u8>,
    /// From connecting to the end of the connection.
    pub elapsed: Duration,
    /// Whether the connection ended with a reset rather than a clean close.
    pub reset: bool,
}

impl Received {
    /// Where the blank line ending the response head starts; `None` when no head ended.
    pub fn header_end(&self) -> Option<usize> {
        find(&self.bytes, b"\r\n\r\n")
    }

    /// The bytes after the response head (empty when no head ended).
    pub fn body(&self) -> &[u8] {
        self.header_end().map_or(&[], |end| &self.bytes[end + 4..])
    }

    /// The response, parsed as it arrived.
    ///
    /// # Errors
    /// [`HarnessError::Incomplete`] when the connection ended before the response was complete
    /// (an aborted transfer), other [`HarnessError::Http`] errors for malformed bytes.
    pub fn response(&self, head_request: bool) -> Result<RawResponse, HarnessError> {
        parse_response(&self.bytes, head_request)
    }

    /// Everything received, as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Sends `req` (with `Connection: close`) and reads until the server closes or resets the
/// connection, keeping every byte: for checks on exactly what an aborted transfer delivered.
///
/// # Errors
/// Connect or write errors, a read error other than a reset, or no end of the connection
/// within `timeout`.
pub fn send_until_close(
    addr: SocketAddr,
    req: &RawRequest,
    timeout: Duration,
) -> Result<Received, HarnessError> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| HarnessError::io(format!("connect {addr}"), e))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| HarnessError::io("set timeout", e))?;
    write_request(&mut stream, req, true)?;
    let deadline = started + timeout;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HarnessError::Http(format!(
                "connection still open after {timeout:?} ({} bytes read)",
                bytes.len()
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| HarnessError::io("set timeout", e))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(Received {
                    bytes,
                    elapsed: started.elapsed(),
                    reset: true,
                });
            }
            Err(e) => return Err(HarnessError::io("read response", e)),
        }
    }
    Ok(Received {
        bytes,
        elapsed: started.elapsed(),
        reset: false,
    })
}

/// Sends `reqs` one after the other on one keep-alive connection (the last one asks to
/// close), reading each response before sending the next request.
///
/// # Errors
/// As [`send`], for any of the exchanges.
pub fn send_keep_alive(
    addr: SocketAddr,
    reqs: &[RawRequest],
    timeout: Duration,
) -> Result<Vec<RawResponse>, HarnessError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| HarnessError::io(format!("connect {addr}"), e))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| HarnessError::io("set timeout", e))?;
    let deadline = Instant::now() + timeout;
    let mut set_timeout = |s: &mut TcpStream, d| {
        s.set_read_timeout(Some(d))
            .map_err(|e| HarnessError::io("set timeout", e))
    };
    let mut raw = Vec::new();
    let mut responses = Vec::with_capacity(reqs.len());
    for (i, req) in reqs.iter().enumerate() {
        write_request(&mut stream, req, i + 1 == reqs.len())?;
        responses.push(read_response(
            &mut stream,
            &mut raw,
            req,
            deadline,
            &mut set_timeout,
        )?);
    }
    Ok(responses)
}

/// What became of the connection after the first response of [`send_then_follow`].
#[derive(Debug)]
pub enum FollowUp {
    /// The response promised to keep the connection and the next request was answered on it.
    Kept(RawResponse),
    /// The response said `Connection: close` and the gateway closed the connection; the next
    /// request was answered on a new one.
    Closed(RawResponse),
    /// The response promised to keep the connection, which then failed the next request
    /// (closed, reset, or answered garbage): a request lost behind a pooling client.
    Broken(String),
}

/// Sends `req` on a new connection without asking to close it, reads its response, then
/// sends `next` the way a pooling client would: on the same connection unless the response
/// said `Connection: close` (then the server must close it, and `next` goes on a new one).
///
/// # Errors
/// As [`send`] for `req`, or when a connection the response said it would close stays open
/// and sends more bytes.
pub fn send_then_follow(
    addr: SocketAddr,
    req: &RawRequest,
    next: &RawRequest,
    timeout: Duration,
) -> Result<(RawResponse, FollowUp), HarnessError> {
    let mut conn = KeepAlive::connect(addr, timeout)?;
    let first = conn.send(req)?;
    if !first.says_close() {
        let follow = match conn.send(next) {
            Ok(resp) => FollowUp::Kept(resp),
            Err(e) => FollowUp::Broken(e.to_string()),
        };
        return Ok((first, follow));
    }
    conn.expect_closed()?;
    let resp = send(addr, next, timeout)?;
    Ok((first, FollowUp::Closed(resp)))
}

/// One keep-alive connection on which requests are sent one at a time, whenever the caller
/// wants (for checks that something changes between two requests of the same connection).
pub struct KeepAlive {
    stream: TcpStream,
    raw: Vec<u8>,
    timeout: Duration,
}

impl KeepAlive {
    /// Connects to `addr`; every later exchange must complete within `timeout`.
    ///
    /// # Errors
    /// Connect errors.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, HarnessError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| HarnessError::io(format!("connect {addr}"), e))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| HarnessError::io("set timeout", e))?;
        Ok(KeepAlive {
            stream,
            raw: Vec::new(),
            timeout,
        })
    }

    /// Sends `req` with `Connection: keep-alive` and reads its response.
    ///
    /// # Errors
    /// I/O, timeout or parse errors; [`HarnessError::Incomplete`] when the server closed the
    /// connection.
    pub fn send(&mut self, req: &RawRequest) -> Result<RawResponse, HarnessError> {
        write_request(&mut self.stream, req, false)?;
        let deadline = Instant::now() + self.timeout;
        read_response(
            &mut self.stream,
            &mut self.raw,
            req,
            deadline,
            &mut |s: &mut TcpStream, d| {
                s.set_read_timeout(Some(d))
                    .map_err(|e| HarnessError::io("set timeout", e))
            },
        )
    }

    /// Waits (up to the exchange timeout) for the server to close the connection.
    ///
    /// # Errors
    /// The server sent more bytes, or kept the connection open past the timeout.
    pub fn expect_closed(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 1024];
        loop {
            if !self.raw.is_empty() {
                return Err(HarnessError::Http(format!(
                    "{} bytes after a response that said Connection: close",
                    self.raw.len()
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HarnessError::Http(
                    "connection still open after a response that said Connection: close".to_owned(),
                ));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| HarnessError::io("set timeout", e))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(HarnessError::io("wait for close", e)),
            }
        }
    }

    /// The local address of the connection (the same one for every request sent on it).
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> Result<SocketAddr, HarnessError> {
        self.stream
            .local_addr()
            .map_err(|e| HarnessError::io("local address", e))
    }
}

fn write_request<S: Write>(
    stream: &mut S,
    req: &RawRequest,
    close: bool,
) -> Result<(), HarnessError> {
    stream
        .write_all(&req.to_bytes_with(close))
        .and_then(|()| stream.flush())
        .map_err(|e| HarnessError::io("send request", e))
}

/// Reads one response for `req` into `raw` (which may already hold bytes) and removes it from
/// `raw`; stops as soon as the response is complete, since waiting for the server to close
/// would cost its delayed-close timeout on every local reply.
fn read_response<S: Read>(
    stream: &mut S,
    raw: &mut Vec<u8>,
    req: &RawRequest,
    deadline: Instant,
    set_timeout: &mut impl FnMut(&mut S, Duration) -> Result<(), HarnessError>,
) -> Result<RawResponse, HarnessError> {
    let head_request = req.method.eq_ignore_ascii_case("HEAD");
    let mut buf = [0u8; 16 * 1024];
    // Parsing starts once the head has ended; until then only the new bytes are searched, so
    // megabytes of response headers cost linear time, not a re-scan per read.
    let mut head_ended = find(raw, b"\r\n\r\n").is_some();
    let mut scanned = raw.len();
    loop {
        if head_ended {
            if let Some((response, used)) = try_parse(raw, head_request, false)? {
                raw.drain(..used);
                return Ok(response);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HarnessError::Http(format!(
                "no complete response before the deadline ({} bytes read)",
                raw.len()
            )));
        }
        set_timeout(stream, left)?;
        let eof = match stream.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if !head_ended {
                    let from = scanned.saturating_sub(3);
                    head_ended = find(&raw[from..], b"\r\n\r\n").is_some();
                    scanned = raw.len();
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
            // A peer that resets or (TLS) closes without close_notify ends the response.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                true
            }
            Err(e) => return Err(HarnessError::io("read response", e)),
        };
        if eof {
            let parsed = try_parse(raw, head_request, true)?;
            let (response, used) = parsed.ok_or_else(|| {
                HarnessError::Incomplete("connection closed before a response".to_owned())
            })?;
            raw.drain(..used);
            return Ok(response);
        }
    }
}

/// Parses a complete HTTP/1.1 response (`raw` read up to EOF).
///
/// # Errors
/// A malformed status line, header block, chunked body or a short body.
pub fn parse_response(raw: &[u8], head_request: bool) -> Result<RawResponse, HarnessError> {
    try_parse(raw, head_request, true)?
        .map(|(response, _)| response)
        .ok_or_else(|| HarnessError::Http("incomplete response".to_owned()))
}

/// Parses `raw` if it starts with a whole response, returning it and the bytes it used:
/// `Ok(None)` while more bytes are needed and the connection is still open (`eof` false).
///
/// # Errors
/// A malformed status line or header block, or a body cut short by EOF.
pub fn try_parse(
    raw: &[u8],
    head_request: bool,
    eof: bool,
) -> Result<Option<(RawResponse, usize)>, HarnessError> {
    let bad = |what: &str| {
        HarnessError::Http(format!(
            "{what}: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(300)])
        ))
    };
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return if eof {
            Err(HarnessError::Incomplete(format!(
                "connection closed after {} bytes, before the end of the headers",
                raw.len()
            )))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not utf-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| bad("bad header line"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let rest = &raw[end + 4..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let start = end + 4;
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Some((Vec::new(), 0))
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        rest.get(..len).map(|b| (b.to_vec(), len))
    } else if eof {
        Some((rest.to_vec(), rest.len()))
    } else {
        None
    };
    match body {
        Some((body, used)) => Ok(Some((
            RawResponse {
                status,
                headers,
                body,
            },
            start + used,
        ))),
        None if eof => Err(HarnessError::Incomplete(format!(
            "status {status}, body cut short after {} bytes",
            rest.len()
        ))),
        None => Ok(None),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// De-chunks a chunked body; returns it and the bytes used (trailers included), or `None`
/// while incomplete.
fn dechunk(all: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut data = all;
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            let trailer_end = if data.starts_with(b"\r\n") {
                2
            } else {
                find(data, b"\r\n\r\n")? + 4
            };
            return Some((out, all.len() - data.len() + trailer_end));
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_target_is_written_verbatim() {
        let mut req = RawRequest::get("a.test", "/http%3A%2F%2Fx%2F%7E%2e%2E/a?w=1&s=0");
        req.headers.push(("X-A".to_owned(), "b".to_owned()));
        let text = String::from_utf8(req.to_bytes()).expect("ascii");
        assert_eq!(
            text,
            "GET /http%3A%2F%2Fx%2F%7E%2e%2E/a?w=1&s=0 HTTP/1.1\r\nHost: a.test\r\nX-A: b\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_response_says_close_by_any_token_spelling() {
        let response = |value: &str| RawResponse {
            status: 502,
            headers: vec![("connection".to_owned(), value.to_owned())],
            body: Vec::new(),
        };
        assert!(response("close").says_close());
        assert!(response("Keep-Alive, Close").says_close());
        assert!(!response("keep-alive").says_close());
        assert!(!response("closed").says_close());
    }

    #[test]
    fn parses_content_length_chunked_and_head() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX: y\r\n\r\nabcdef",
            false,
        )
        .expect("parse");
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x")),
            (200, &b"abc"[..], Some("y"))
        );
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            false,
        )
        .expect("parse");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).expect("parse");
        assert!(r.body.is_empty());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", false).is_err());
        assert!(parse_response(b"garbage\r\n\r\n", false).is_err());
        let two = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let (first, used) = try_parse(two, false, false)
            .expect("first")
            .expect("complete");
        assert_eq!(first.body, b"a");
        let (second, rest) = try_parse(&two[used..], false, false)
            .expect("second")
            .expect("complete");
        assert_eq!((second.status, used + rest), (204, two.len()));
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab";
        assert_eq!(try_parse(partial, false, false).expect("partial"), None);
        let open_ended = b"HTTP/1.1 200 OK\r\n\r\nab";
        assert_eq!(
            try_parse(open_ended, false, false).expect("until eof"),
            None
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n";
        assert_eq!(try_parse(chunked, false, false).expect("more chunks"), None);
    }
}
