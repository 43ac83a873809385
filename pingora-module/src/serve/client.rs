//! Client connections of the gateway listener (README: The native gateway): how many are served
//! at once (`limits.max_connections`, and `limits.max_connections_per_client` from one client
//! address), how long one may sit idle between requests (`client_idle_timeout`), take to
//! finish its TLS handshake and send a request header (`client_header_timeout`) or leave a
//! response write without progress (`client_write_timeout`).
//!
//! [`ClientConnections`] is the listener's application. It admits each accepted connection by
//! the core's [`admits_connection`] and [`admits_client_connection`] rules (one over either
//! limit is closed at once, before any byte is read). On HTTPS it then runs the TLS handshake
//! itself, within the header deadline that starts at accept: the listener is plain TCP, because
//! Pingora's TLS listener shakes hands before any application sees the connection, outside
//! every limit and under a fixed 60 s timeout. It runs the HTTP/1 keep-alive loop itself
//! instead of Pingora's, whose keep-alive wait becomes unbounded after the first request:
//! between requests it waits for the next request's first bytes for at most the idle timeout
//! (or until shutdown), hands them to the next session as its first bytes, and starts that
//! request's header deadline then. Every session gets the write timeout (each response write
//! must complete within it) and the header deadline is enforced by [`super::deadline`].
//! HTTP/1.1 over TLS (ALPN `http/1.1` or none) runs this same loop on the decrypted stream.
//! HTTP/2 (ALPN `h2`, or the h2c preface when `h2c` is on) and custom protocols go through
//! Pingora's own loop: the header deadline and the write timeout still apply to each stream
//! (set by [`super::deadline`]), and Pingora's `h2_idle_timeout` (`client_idle_timeout`) closes
//! a connection with no stream open (a header block that never completes opens none).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use ixproxy_core::config::ClientLimits;
use ixproxy_core::limits::{admits_client_connection, admits_connection};
use log::debug;
use parking_lot::Mutex;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use super::deadline::Deadlined;

/// The HTTP/2 connection preface (RFC 9113 §3.4), for recognising h2c like Pingora does.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// First read of a request head, into the connection's future rather than the heap: a
/// connection waiting for a request holds no buffer of its own (README: Limits).
const FIRST_READ_BYTES: usize = 1024;
/// Room for a head that did not fit its first read.
const HEAD_BYTES: usize = 4096;

/// The listener application: admission, the TLS handshake, the keep-alive loop and the
/// per-session timeouts around the gateway.
pub struct ClientConnections<A> {
    app: Arc<Deadlined<A>>,
    limits: ClientLimits,
    open: Arc<Open>,
    /// The HTTPS acceptor (`tls:`), or `None` for plain HTTP.
    tls: Option<Acceptor>,
    /// The longest request head collected (`ixproxy_core::limits::max_request_head_bytes` of
    /// the limits at start):
    /// a client still sending past it is closed without a reply, and no session is started on
    /// an incomplete head.
    head_limit: usize,
}

/// The connections being served: in all, and per client address while
/// `max_connections_per_client` is set. An address is in the map only while it has a
/// connection open, so the map never holds more than `max_connections` entries.
#[derive(Default)]
struct Open {
    all: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; its counts go down when it is dropped.
struct Admitted {
    open: Arc<Open>,
    /// The address counted in `per_client`, if any.
    client: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(client) = self.client {
            if let Entry::Occupied(mut open) = self.open.per_client.lock().entry(client) {
                *open.get_mut() -= 1;
                if *open.get() == 0 {
                    open.remove();
                }
            }
        }
        self.open.all.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The client address of `stream`, IPv4-mapped IPv6 as IPv4 (one client, one count).
fn client_ip(stream: &Stream) -> Option<IpAddr> {
    client_addr(stream).map(|addr| addr.ip().to_canonical())
}

/// The client's address and port of `stream` (TCP only).
fn client_addr(stream: &Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().copied()
}

impl<A> ClientConnections<A> {
    /// Serves `app` under `limits`, with the TLS handshake of `tls` first on every connection
    /// when it is set, collecting request heads of up to `head_limit` bytes.
    pub fn new(
        app: Deadlined<A>,
        limits: ClientLimits,
        tls: Option<Acceptor>,
        head_limit: usize,
    ) -> Self {
        ClientConnections {
            app: Arc::new(app),
            limits,
            open: Arc::default(),
            tls,
            head_limit,
        }
    }

    /// Counts the connection in, if the core admits one more in all and from its address;
    /// otherwise the limit that refused it.
    fn admit(&self, stream: &Stream) -> Result<Admitted, &'static str> {
        let before = self.open.all.fetch_add(1, Ordering::SeqCst);
        let mut admitted = Admitted {
            open: Arc::clone(&self.open),
            client: None,
        };
        if !admits_connection(&self.limits, before) {
            return Err("limits.max_connections");
        }
        if self.limits.max_connections_per_client == 0 {
            return Ok(admitted);
        }
        // Without an address (not TCP) there is no client to count against.
        let Some(client) = client_ip(stream) else {
            return Ok(admitted);
        };
        let mut per_client = self.open.per_client.lock();
        let from_client = per_client.get(&client).copied().unwrap_or(0);
        if !admits_client_connection(&self.limits, from_client) {
            return Err("limits.max_connections_per_client");
        }
        per_client.insert(client, from_client + 1);
        admitted.client = Some(client);
        Ok(admitted)
    }

    /// The TLS handshake of `stream`, when HTTPS is on, finished by `deadline`; `None` when it
    /// failed or took too long (the connection is then closed).
    async fn handshake(&self, stream: Stream, deadline: Instant) -> Option<Stream> {
        let Some(acceptor) = &self.tls else {
            return Some(stream);
        };
        // The listener is plain TCP (`listen::PreBound::new`): every stream it hands over is
        // Pingora's L4 stream, which its TLS acceptor takes.
        let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
            debug!("connection closed: not a TCP stream on the HTTPS listener");
            return None;
        };
        // Boxed: the handshake's state is large (rustls' included) and lives only until it ends,
        // not in the connection's future for all its life.
        let handshake = Box::pin(acceptor.tls_handshake(*l4));
        match tokio::time::timeout_at(deadline.into(), handshake).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                debug!("TLS handshake not done within client_header_timeout: connection closed");
                None
            }
        }
    }
}

/// Pingora's keep-alive value (whole seconds, 0 meaning forever) for `idle`: rounded up, at
/// least one second.
fn keepalive_seconds(idle: Duration) -> u64 {
    (idle.as_secs() + u64::from(idle.subsec_nanos() > 0)).max(1)
}

impl<A> ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Whether Pingora would serve `stream` as HTTP/1 (no h2 ALPN, no h2c preface, not custom);
    /// the preface must arrive by the header `deadline`.
    async fn is_http1(&self, stream: &mut Stream, deadline: Instant) -> bool {
        let options = self.app.server_options();
        if options.is_some_and(|o| o.force_custom)
            || matches!(
                stream.selected_alpn_proto(),
                Some(ALPN::H2 | ALPN::Custom(_))
            )
        {
            return false;
        }
        if stream.get_ssl_digest().is_none() && options.is_some_and(|o| o.h2c) {
            let mut preface = [0u8; H2_PREFACE.len()];
            let peek = stream.try_peek(&mut preface);
            return match tokio::time::timeout_at(deadline.into(), peek).await {
                Ok(Ok(true)) => preface != H2_PREFACE,
                _ => true,
            };
        }
        true
    }

    /// The per-session settings: keep-alive (bounded by our own idle wait), the read timeout
    /// of the header reads, the write timeout.
    fn configure(&self, session: &mut ServerSession, shutdown: &ShutdownWatch) {
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(keepalive_seconds(self.limits.idle_timeout)));
        }
        session.set_read_timeout(Some(self.limits.header_timeout));
        session.set_write_timeout(Some(self.limits.write_timeout));
    }

    /// Waits up to the idle timeout for the next request's first bytes; `None` when the client
    /// closed, stayed idle, or the server is shutting down.
    async fn next_request(
        &self,
        stream: &mut Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<BytesMut> {
        let mut shutdown = shutdown.clone();
        let read = tokio::time::timeout(self.limits.idle_timeout, read_first(stream));
        tokio::select! {
            read = read => match read {
                Ok(first) => first,
                Err(_) => {
                    debug!("keep-alive connection idle past client_idle_timeout: closed");
                    None
                }
            },
            _ = shutdown.wait_for(|stopping| *stopping) => None,
        }
    }

    /// Reads the request head into `head` (which may hold its first bytes already) until it
    /// is complete, `head_limit` bytes long (then `None`: closed), or `deadline` passes; `None` when the
    /// client closed or the deadline passed (the connection is then closed, nothing counted:
    /// no request was received). A session is made only for a head read this way, so a
    /// connection that has not sent its whole head holds this buffer and no more, instead of
    /// a whole proxy session (README: Limits).
    async fn read_head(
        &self,
        stream: &mut Stream,
        head: &mut BytesMut,
        deadline: Instant,
    ) -> Option<()> {
        // Usually the first read held the whole head: no timer then.
        if head_ends(head, 0) {
            return Some(());
        }
        let read = async {
            let mut scanned = 0;
            loop {
                if head_ends(head, scanned) {
                    return Some(());
                }
                let limit = self.head_limit;
                if head.len() >= limit {
                    debug!("request head over {limit} bytes: connection closed");
                    return None;
                }
                // An end split across two reads is found from the previous read's last bytes.
                scanned = head.len().saturating_sub(2);
                if head.is_empty() {
                    *head = read_first(stream).await?;
                    continue;
                }
                if head.capacity() == head.len() {
                    // Doubled, but never past the limit (BytesMut's own growth could double
                    // past it): what one connection's head may cost is the limit.
                    let mut bigger = BytesMut::with_capacity((head.len() * 2).min(limit));
                    bigger.extend_from_slice(head);
                    *head = bigger;
                }
                match stream.read_buf(head).await {
                    Ok(n) if n > 0 => {}
                    _ => return None,
                }
            }
        };
        match tokio::time::timeout_at(deadline.into(), read).await {
            Ok(done) => done,
            Err(_) => {
                debug!("client request header not complete in time: connection closed");
                None
            }
        }
    }
}

/// The first bytes of a request head, read into a buffer on the stack and then copied to one
/// sized for what came: `None` when the client closed or failed.
async fn read_first(stream: &mut Stream) -> Option<BytesMut> {
    let mut first = [0u8; FIRST_READ_BYTES];
    let n = stream.read(&mut first).await.ok().filter(|n| *n > 0)?;
    let mut head = BytesMut::with_capacity(if n == first.len() { HEAD_BYTES } else { n });
    head.extend_from_slice(&first[..n]);
    Some(head)
}

/// Whether `bytes` holds the empty line that ends a request head (CRLF or a bare LF, both of
/// which Pingora's parser accepts). A head usually ends the read that completes it, so the end
/// of `bytes` is looked at first.
/// Where the first request head in `head` ends (just after its empty line, CRLF or a bare LF),
/// blank lines before the request line skipped; `None` when it has not ended. One pass over
/// the line ends only (memchr), since it runs for every request.
fn head_end(head: &[u8]) -> Option<usize> {
    let start = head.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    memchr::memchr_iter(b'\n', &head[start..]).find_map(|i| {
        let after = start + i + 1;
        match head.get(after..) {
            Some([b'\n', ..]) => Some(after + 1),
            Some([b'\r', b'\n', ..]) => Some(after + 2),
            _ => None,
        }
    })
}

/// Only what follows `from` is searched (a head's earlier bytes were searched before); blank
/// lines before the request line, which the parser skips, end nothing.
fn head_ends(head: &[u8], from: usize) -> bool {
    let start = head
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(head.len());
    let bytes = &head[start.max(from).min(head.len())..];
    bytes.ends_with(b"\n\r\n")
        || bytes.ends_with(b"\n\n")
        || bytes.iter().enumerate().any(|(i, b)| {
            *b == b'\n' && matches!(bytes.get(i + 1..), Some([b'\n', ..] | [b'\r', b'\n', ..]))
        })
}

#[async_trait]
impl<A> ServerApp for ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut header_deadline = Instant::now() + self.limits.header_timeout;
        let _admitted = match self.admit(&stream) {
            Ok(admitted) => admitted,
            Err(limit) => {
                debug!("connection closed at once: over {limit}");
                return None;
            }
        };
        let mut stream = self.handshake(stream, header_deadline).await?;
        if !self.is_http1(&mut stream, header_deadline).await {
            // HTTP/2: Pingora waits for the client's preface and first stream without a
            // timeout; the header deadline from accept ends that wait (a connection that opens
            // no stream in time is closed), then its own idle timeout applies.
            let Some(peer) = client_addr(&stream) else {
                return ServerApp::process_new(&self.app, stream, shutdown).await;
            };
            let first = self.app.first_streams().expect(peer);
            return tokio::select! {
                served = ServerApp::process_new(&self.app, stream, shutdown) => served,
                () = first.missed(header_deadline) => {
                    debug!("HTTP/2 connection opened no stream within client_header_timeout: closed");
                    None
                }
            };
        }
        let mut head = BytesMut::new();
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            self.read_head(&mut stream, &mut head, header_deadline)
                .await?;
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            // Only this request's head goes to the session. Bytes after it are a pipelined
            // request (served next, on this connection: Pingora would otherwise refuse to reuse
            // a connection with bytes left over, after a reply that promised to keep it) or a
            // body (which the gateway refuses: the connection then closes with the reply).
            let rest = head_end(&head)
                .filter(|&end| end < head.len())
                .map(|end| head.split_off(end));
            session.set_pipelined_prefix(head);
            self.configure(&mut session, shutdown);
            // Boxed for the request's time only: inline, its state would sit in the
            // connection's future while it waits for a head (README: Limits).
            let reused = Box::pin(self.app.run_session(session, shutdown, header_deadline)).await?;
            (stream, settings) = reused.consume();
            head = match rest {
                Some(pipelined) => pipelined,
                None => self.next_request(&mut stream, shutdown).await?,
            };
            header_deadline = Instant::now() + self.limits.header_timeout;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.app).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_first_empty_line_with_crlf_or_a_bare_lf() {
        assert!(head_ends(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0));
        assert!(head_ends(b"GET / HTTP/1.1\nHost: a\n\n", 0));
        // Followed by a pipelined request or a body: the end is inside.
        assert!(head_ends(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n",
            0
        ));
        assert!(head_ends(b"GET / HTTP/1.1\nHost: a\n\nxyz", 0));
        // Not yet: a partial header, a header line just ended, or an end still to come.
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ", 0));
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0));
        assert!(!head_ends(b"", 0));
        // Blank lines before the request line are skipped by the parser: no end yet.
        assert!(!head_ends(b"\r\n\r\nGET / HTTP/1.1\r\nX-Slow: ", 0));
        assert!(head_ends(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0));
        assert!(!head_ends(b"\r\n\r\n", 0));
        // Where the first head ends: the bytes after it are the next request.
        let two = b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        assert_eq!(
            head_end(two),
            Some(two.len() - "GET /b HTTP/1.1\r\n\r\n".len())
        );
        assert_eq!(head_end(b"GET /a HTTP/1.1\nHost: a\n\nrest"), Some(25));
        assert_eq!(head_end(b"GET /a HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"\r\n\r\n"), None);
    }

    #[test]
    fn keepalive_is_whole_seconds_rounded_up_never_zero() {
        assert_eq!(keepalive_seconds(Duration::from_secs(30)), 30);
        assert_eq!(keepalive_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(keepalive_seconds(Duration::from_millis(200)), 1);
        assert_eq!(keepalive_seconds(Duration::ZERO), 1);
    }
}
