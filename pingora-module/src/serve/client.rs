//! Client connections of the gateway listener (README: The native gateway): how many are served
//! at once (`limits.max_connections`), how long one may sit idle between requests
//! (`client_idle_timeout`), take to send a request header (`client_header_timeout`) or leave a
//! response write without progress (`client_write_timeout`).
//!
//! [`ClientConnections`] is the listener's application. It admits each accepted connection by
//! the core's [`admits_connection`] rule (one over the limit is closed at once, before any byte
//! is read) and runs the HTTP/1 keep-alive loop itself instead of Pingora's, whose keep-alive
//! wait becomes unbounded after the first request: between requests it waits for the next
//! request's first bytes for at most the idle timeout (or until shutdown), hands them to the
//! next session as its first bytes, and starts that request's header deadline then. Every
//! session gets the write timeout (each response write must complete within it) and the
//! header deadline is enforced by [`super::deadline`]. HTTP/1.1 over TLS (ALPN `http/1.1` or
//! none) runs this same loop on the decrypted stream. HTTP/2 (ALPN `h2`, or the h2c preface
//! when `h2c` is on) and custom protocols go through Pingora's own loop: the header deadline
//! and the write timeout still apply to each stream (set by [`super::deadline`]), and
//! Pingora's `h2_idle_timeout` (`client_idle_timeout`) closes a connection with no stream open
//! (a header block that never completes opens none).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use ixproxy_core::config::ClientLimits;
use ixproxy_core::limits::admits_connection;
use log::debug;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use super::deadline::Deadlined;

/// The HTTP/2 connection preface (RFC 9113 §3.4), for recognising h2c like Pingora does.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// First read of a keep-alive connection's next request.
const FIRST_READ_BYTES: usize = 4096;

/// The listener application: admission, the keep-alive loop and the per-session timeouts
/// around the gateway.
pub struct ClientConnections<A> {
    app: Arc<Deadlined<A>>,
    limits: ClientLimits,
    open: Arc<AtomicUsize>,
}

/// One admitted connection; the count goes down when it is dropped.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<A> ClientConnections<A> {
    /// Serves `app` under `limits`.
    pub fn new(app: Deadlined<A>, limits: ClientLimits) -> Self {
        ClientConnections {
            app: Arc::new(app),
            limits,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts the connection in, if the core admits one more.
    fn admit(&self) -> Option<Admitted> {
        let before = self.open.fetch_add(1, Ordering::SeqCst);
        let admitted = Admitted(Arc::clone(&self.open));
        admits_connection(&self.limits, before).then_some(admitted)
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
    /// Whether Pingora would serve `stream` as HTTP/1 (no h2 ALPN, no h2c preface, not custom).
    async fn is_http1(&self, stream: &mut Stream) -> bool {
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
            return match tokio::time::timeout(self.limits.header_timeout, peek).await {
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
        let mut first = BytesMut::with_capacity(FIRST_READ_BYTES);
        let mut shutdown = shutdown.clone();
        let read = tokio::time::timeout(self.limits.idle_timeout, stream.read_buf(&mut first));
        tokio::select! {
            read = read => match read {
                Ok(Ok(n)) if n > 0 => Some(first),
                Ok(_) => None,
                Err(_) => {
                    debug!("keep-alive connection idle past client_idle_timeout: closed");
                    None
                }
            },
            _ = shutdown.wait_for(|stopping| *stopping) => None,
        }
    }
}

#[async_trait]
impl<A> ServerApp for ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let Some(_admitted) = self.admit() else {
            debug!(
                "connection closed at once: {} client connections open (limits.max_connections)",
                self.limits.max_connections
            );
            return None;
        };
        if !self.is_http1(&mut stream).await {
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        let mut session = ServerSession::new_http1(stream);
        self.configure(&mut session, shutdown);
        let mut header_deadline = accepted + self.limits.header_timeout;
        loop {
            let reused = self
                .app
                .run_session(session, shutdown, header_deadline)
                .await?;
            let (mut stream, settings) = reused.consume();
            let first = self.next_request(&mut stream, shutdown).await?;
            header_deadline = Instant::now() + self.limits.header_timeout;
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            session.set_pipelined_prefix(first);
            self.configure(&mut session, shutdown);
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
    fn keepalive_is_whole_seconds_rounded_up_never_zero() {
        assert_eq!(keepalive_seconds(Duration::from_secs(30)), 30);
        assert_eq!(keepalive_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(keepalive_seconds(Duration::from_millis(200)), 1);
        assert_eq!(keepalive_seconds(Duration::ZERO), 1);
    }
}
