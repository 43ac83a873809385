//! The two whole-phase deadlines Pingora's per-read timers cannot express: the client's request
//! header (`limits.client_header_timeout`) and the origin's response header
//! (`upstream.timeout`, every redirect hop together).
//!
//! Pingora bounds each single read, and every byte restarts that timer: a client trickling its
//! request header, or an origin dripping its response header, would never be cut. [`Deadlined`]
//! wraps the proxy application: each request runs with a [`Watchdog`] in a task-local slot,
//! which the connection loop ([`super::client`]) and the gateway set for the phase in progress:
//!
//! - **client header**: from the connection's accept, or from the first byte of a later
//!   keep-alive request; the gateway's first hook disarms it. When it passes, the connection is
//!   closed with no response and nothing counted (no request was received).
//! - **origin header**: from the first resolution until the final origin response header is
//!   accepted. When it passes, the origin socket of the attempt in progress is shut down, so the
//!   pending read fails and the gateway answers 504 (`origin_timeout`) on its normal path; if
//!   that has not ended the request [`GRACE`] later (no socket yet, or a read that did not
//!   notice), the whole request future is dropped: the origin connection is closed (never
//!   pooled), the client connection closed without a response, and `origin_timeout` counted.
//!
//! Nothing is armed while the body streams: a pause inside the origin body is bounded by the
//! per-read `upstream.body_timeout` (see [`super::peer`]), a client that stops reading by
//! `limits.client_write_timeout` (Pingora's per-write timeout, which [`Deadlined`] also sets on
//! every HTTP/2 stream), and a download may take as long as both keep moving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{debug, info};
use nix::sys::socket::{
    getpeername, getsockname, shutdown, Shutdown, SockaddrLike, SockaddrStorage,
};
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use ixproxy_core::config::Source;
use ixproxy_core::metrics::NO_SOURCE_LABEL;
use ixproxy_core::Outcome;

use super::metrics::Metrics;

/// How long past the origin deadline the backstop waits, so that the graceful path (504, or a
/// cut counted with its own outcome) wins whenever it can.
pub const GRACE: Duration = Duration::from_millis(250);

tokio::task_local! {
    static WATCHDOG: Arc<Watchdog>;
}

/// The origin connection of the attempt in progress: its fd and both addresses, checked again
/// before a shutdown so that a closed and reused fd number is never touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginSocket {
    fd: RawFd,
    local: SocketAddr,
    peer: SocketAddr,
}

impl OriginSocket {
    /// The socket behind `fd`, if it is a connected TCP socket.
    pub fn of(fd: RawFd) -> Option<Self> {
        let (local, peer) = socket_addrs(fd)?;
        Some(OriginSocket { fd, local, peer })
    }

    /// The socket behind `fd` with addresses already known (Pingora's socket digest, read once
    /// per connection rather than per request).
    pub fn with_addrs(fd: RawFd, local: SocketAddr, peer: SocketAddr) -> Self {
        OriginSocket { fd, local, peer }
    }

    /// Shuts the socket down (both directions) if `fd` is still this connection.
    fn shut_down(&self) -> bool {
        socket_addrs(self.fd) == Some((self.local, self.peer))
            && shutdown(self.fd, Shutdown::Both).is_ok()
    }
}

fn socket_addrs(fd: RawFd) -> Option<(SocketAddr, SocketAddr)> {
    fn inet(addr: &SockaddrStorage) -> Option<SocketAddr> {
        match addr.family()? {
            nix::sys::socket::AddressFamily::Inet => {
                addr.as_sockaddr_in().map(|a| SocketAddr::V4((*a).into()))
            }
            nix::sys::socket::AddressFamily::Inet6 => {
                addr.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into()))
            }
            _ => None,
        }
    }
    let local = getsockname::<SockaddrStorage>(fd).ok()?;
    let peer = getpeername::<SockaddrStorage>(fd).ok()?;
    Some((inet(&local)?, inet(&peer)?))
}

/// What the watchdog of one request is guarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Nothing (the request is being decided, the body streams, or it is over).
    #[default]
    Disarmed,
    /// The client's request header must be complete by then.
    ClientHeader(Instant),
    /// The final origin response header must be accepted by then.
    Origin {
        deadline: Instant,
        socket: Option<OriginSocket>,
        nudged: bool,
    },
}

/// Why a watchdog ended its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    ClientHeader,
    Origin,
}

impl Phase {
    /// When this phase expires and as what; `None` while disarmed. The origin phase without a
    /// socket to shut down (or once shut down) waits [`GRACE`] longer, as the backstop.
    fn due(self) -> Option<(Instant, Expired)> {
        match self {
            Phase::Disarmed => None,
            Phase::ClientHeader(deadline) => Some((deadline, Expired::ClientHeader)),
            Phase::Origin {
                deadline,
                socket: Some(_),
                nudged: false,
            } => Some((deadline, Expired::Origin)),
            Phase::Origin { deadline, .. } => Some((deadline + GRACE, Expired::Origin)),
        }
    }
}

/// A watchdog's phase and when it will next look at it by itself.
#[derive(Debug, Default)]
struct State {
    phase: Phase,
    /// The time the watchdog sleeps until (`None`: it waits for a notification). A phase
    /// change that is due no earlier needs no wake-up: the watchdog finds it when it looks.
    wakes_at: Option<Instant>,
}

/// The phase deadline of the request running in this task.
///
/// Phase changes wake the watchdog only when they make it due earlier than it will look by
/// itself: a request that moves from the client header to the origin header (whose deadline
/// is later) and ends wakes it not once, so the request's own task is not polled again for
/// each phase (bench/NOTES.md).
#[derive(Debug, Default)]
pub struct Watchdog {
    state: Mutex<State>,
    changed: Notify,
    /// The source a request cut here is counted under (its label; none: `-`).
    source: Mutex<Option<Arc<Source>>>,
}

impl Watchdog {
    /// A watchdog already in `phase`, which it reads when first polled.
    fn with_phase(phase: Phase) -> Self {
        Watchdog {
            state: Mutex::new(State {
                phase,
                wakes_at: phase.due().map(|(at, _)| at),
            }),
            ..Watchdog::default()
        }
    }

    fn update(&self, f: impl FnOnce(&mut Phase)) {
        let wake = match self.state.lock() {
            Ok(mut state) => {
                f(&mut state.phase);
                match (state.phase.due(), state.wakes_at) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some((due, _)), Some(wakes_at)) => due < wakes_at,
                }
            }
            Err(_) => true,
        };
        if wake {
            self.changed.notify_one();
        }
    }

    fn get(&self) -> Phase {
        self.state.lock().map(|s| s.phase).unwrap_or_default()
    }

    /// Resolves once the armed phase's deadline has passed (for the origin header: after the
    /// socket was shut down and [`GRACE`] went by); never while disarmed.
    async fn expired(&self) -> Expired {
        loop {
            let (phase, due) = match self.state.lock() {
                Ok(mut state) => {
                    let due = state.phase.due();
                    state.wakes_at = due.map(|(at, _)| at);
                    (state.phase, due)
                }
                Err(_) => (Phase::Disarmed, None),
            };
            let Some((at, expired)) = due else {
                self.changed.notified().await;
                continue;
            };
            tokio::select! {
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                () = self.changed.notified() => continue,
            }
            if self.get() != phase {
                continue;
            }
            match phase {
                Phase::Origin {
                    deadline,
                    socket: Some(socket),
                    nudged: false,
                } => {
                    // Make the pending origin read fail: the gateway then answers 504 itself.
                    let done = socket.shut_down();
                    debug!("origin deadline passed: socket shut down: {done}");
                    if let Ok(mut state) = self.state.lock() {
                        if state.phase == phase {
                            state.phase = Phase::Origin {
                                deadline,
                                socket: Some(socket),
                                nudged: true,
                            };
                        }
                    }
                }
                _ => return expired,
            }
        }
    }
}

fn with_watchdog(f: impl FnOnce(&Watchdog)) {
    let _ = WATCHDOG.try_with(|w| f(w));
}

/// The client's request header is complete: disarms its deadline (no effect outside
/// [`Deadlined`], or in another phase).
pub fn client_header_received() {
    with_watchdog(|w| {
        w.update(|p| {
            if matches!(p, Phase::ClientHeader(_)) {
                *p = Phase::Disarmed;
            }
        })
    });
}

/// Arms the origin-header deadline (the first resolution of a request; later hops keep it).
pub fn arm_origin(deadline: Instant, source: Option<&Arc<Source>>) {
    with_watchdog(|w| {
        if let Ok(mut slot) = w.source.lock() {
            *slot = source.cloned();
        }
        w.update(|p| {
            *p = Phase::Origin {
                deadline,
                socket: None,
                nudged: false,
            }
        })
    });
}

/// The attempt in progress talks to the origin over `socket` (`None`: no connection, e.g. a
/// new attempt is being prepared).
pub fn origin_socket(socket: Option<OriginSocket>) {
    with_watchdog(|w| {
        w.update(|p| {
            if let Phase::Origin { deadline, .. } = *p {
                *p = Phase::Origin {
                    deadline,
                    socket,
                    nudged: false,
                };
            }
        })
    });
}

/// Disarms the current request's watchdog: the phase it guarded is over.
pub fn disarm() {
    with_watchdog(|w| w.update(|p| *p = Phase::Disarmed));
}

/// An HTTP application whose requests are ended when their armed phase deadline passes.
pub struct Deadlined<A> {
    inner: Arc<A>,
    metrics: Metrics,
    header_timeout: Duration,
    write_timeout: Duration,
    first_streams: FirstStreams,
}

/// HTTP/2 connections handed to Pingora's loop that have not opened a stream yet, by client
/// address. Pingora waits for an HTTP/2 client's connection preface and first stream with no
/// timeout of its own (its `h2_idle_timeout` starts after that), so the connection's header
/// deadline (from accept, see [`super::client`]) must end that wait: the first stream's
/// session reports here.
#[derive(Debug, Default, Clone)]
pub struct FirstStreams(Arc<Mutex<HashMap<SocketAddr, Arc<Notify>>>>);

impl FirstStreams {
    /// Registers the connection from `peer`; the returned guard unregisters it when dropped.
    pub fn expect(&self, peer: SocketAddr) -> FirstStream {
        let notify = Arc::new(Notify::new());
        if let Ok(mut waiting) = self.0.lock() {
            waiting.insert(peer, Arc::clone(&notify));
        }
        FirstStream {
            streams: self.clone(),
            peer,
            notify,
        }
    }

    /// A stream of the connection from `peer` started.
    fn started(&self, peer: SocketAddr) {
        let notify = self.0.lock().ok().and_then(|mut w| w.remove(&peer));
        if let Some(notify) = notify {
            notify.notify_one();
        }
    }
}

/// One registered HTTP/2 connection (see [`FirstStreams`]).
#[derive(Debug)]
pub struct FirstStream {
    streams: FirstStreams,
    peer: SocketAddr,
    notify: Arc<Notify>,
}

impl FirstStream {
    /// Resolves at `deadline` unless the connection's first stream started before it; never
    /// resolves once it did.
    pub async fn missed(&self, deadline: Instant) {
        tokio::select! {
            () = self.notify.notified() => std::future::pending::<()>().await,
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

impl Drop for FirstStream {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.streams.0.lock() {
            waiting.remove(&self.peer);
        }
    }
}

impl<A> Deadlined<A> {
    /// Wraps `inner`; requests cut by the origin backstop are counted in `metrics`; a request
    /// header must be complete `header_timeout` after its session starts; each response write
    /// of an HTTP/2 stream must complete within `write_timeout` (`client_write_timeout`).
    pub fn new(
        inner: A,
        metrics: Metrics,
        header_timeout: Duration,
        write_timeout: Duration,
    ) -> Self {
        Deadlined {
            inner: Arc::new(inner),
            metrics,
            header_timeout,
            write_timeout,
            first_streams: FirstStreams::default(),
        }
    }

    /// The HTTP/2 connections waiting for their first stream.
    pub fn first_streams(&self) -> &FirstStreams {
        &self.first_streams
    }
}

impl<A> Deadlined<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Runs one request of `session`, whose header must be complete by `header_deadline`.
    /// Returns the connection when it may serve another request.
    pub async fn run_session(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
        header_deadline: Instant,
    ) -> Option<ReusedHttpStream> {
        let watchdog = Arc::new(Watchdog::with_phase(Phase::ClientHeader(header_deadline)));
        let run = self.inner.process_new_http(session, shutdown);
        let guarded = async {
            tokio::select! {
                reused = run => reused,
                expired = watchdog.expired() => {
                    match expired {
                        Expired::ClientHeader => {
                            debug!("client request header not complete in time: connection closed");
                        }
                        Expired::Origin => {
                            let outcome = Outcome::OriginTimeout;
                            let source = watchdog.source.lock().ok().and_then(|s| s.clone());
                            let label = source.as_ref().map_or(NO_SOURCE_LABEL, |s| &s.label);
                            self.metrics.count(label, outcome);
                            info!(
                                "request cut: origin response header past its deadline outcome={}",
                                outcome.as_str()
                            );
                        }
                    }
                    None
                }
            }
        };
        WATCHDOG.scope(Arc::clone(&watchdog), guarded).await
    }
}

#[async_trait]
impl<A> HttpServerApp for Deadlined<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Sessions Pingora starts itself (HTTP/2 streams, over TLS or h2c): the header deadline
    /// runs from now, and each body write must complete within the write timeout, as on
    /// HTTP/1. Pingora's h2 session waits for the client's flow-control window inside that
    /// write (`poll_capacity`), so a stream whose client grants no window fails there: the
    /// request ends with its slot and origin connection released and the stream is reset
    /// (Pingora drops its send half unfinished); the gateway also ends a cache fill that no
    /// client reads any more (see `super::gateway`).
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        session.set_write_timeout(Some(self.write_timeout));
        if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()) {
            self.first_streams.started(*peer);
        }
        let deadline = Instant::now() + self.header_timeout;
        self.run_session(session, shutdown, deadline).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await;
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        Arc::clone(&self.inner)
            .process_custom_session(stream, shutdown)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_armed_deadline_expires_and_a_disarmed_one_never_does() {
        let w = Arc::new(Watchdog::default());
        // Disarmed: still pending after a while.
        let pending = tokio::time::timeout(Duration::from_millis(50), w.expired()).await;
        assert!(pending.is_err());

        // Origin phase without a socket: the backstop, at the deadline plus GRACE.
        w.update(|p| {
            *p = Phase::Origin {
                deadline: Instant::now() + Duration::from_millis(20),
                socket: None,
                nudged: false,
            }
        });
        let started = Instant::now();
        let why = tokio::time::timeout(Duration::from_secs(2), w.expired())
            .await
            .expect("expires");
        assert_eq!(why, Expired::Origin);
        assert!(started.elapsed() >= GRACE);

        // Client header: at the deadline itself.
        w.update(|p| *p = Phase::ClientHeader(Instant::now() + Duration::from_millis(20)));
        let started = Instant::now();
        let why = tokio::time::timeout(Duration::from_secs(2), w.expired())
            .await
            .expect("expires");
        assert_eq!(why, Expired::ClientHeader);
        assert!(started.elapsed() < GRACE);

        // Re-armed, then disarmed before it passes: no expiry.
        w.update(|p| *p = Phase::ClientHeader(Instant::now() + Duration::from_millis(10)));
        let w2 = Arc::clone(&w);
        let disarm = async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            w2.update(|p| *p = Phase::Disarmed);
        };
        let (_, waited) = tokio::join!(
            disarm,
            tokio::time::timeout(GRACE + Duration::from_millis(200), w.expired())
        );
        assert!(waited.is_err(), "a disarmed watchdog expired");
    }

    #[tokio::test]
    async fn an_earlier_deadline_wakes_the_watchdog_and_a_later_one_is_found_when_it_looks() {
        let now = Instant::now();
        let w = Arc::new(Watchdog::with_phase(Phase::ClientHeader(
            now + Duration::from_millis(400),
        )));
        let w2 = Arc::clone(&w);
        // Earlier than the watchdog sleeps: it must wake and expire at the new deadline.
        let earlier = async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            w2.update(|p| *p = Phase::ClientHeader(Instant::now() + Duration::from_millis(20)));
        };
        let (_, why) = tokio::join!(
            earlier,
            tokio::time::timeout(Duration::from_millis(300), w.expired())
        );
        assert_eq!(
            why.expect("woken for the earlier deadline"),
            Expired::ClientHeader
        );

        // Later than the watchdog sleeps: no wake-up, yet the later phase still expires, and
        // only at its own deadline.
        let now = Instant::now();
        let w = Arc::new(Watchdog::with_phase(Phase::ClientHeader(
            now + Duration::from_millis(30),
        )));
        let w2 = Arc::clone(&w);
        let later = async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            w2.update(|p| {
                *p = Phase::Origin {
                    deadline: Instant::now() + Duration::from_millis(60),
                    socket: None,
                    nudged: false,
                }
            });
        };
        let (_, why) = tokio::join!(
            later,
            tokio::time::timeout(GRACE + Duration::from_secs(2), w.expired())
        );
        assert_eq!(why.expect("the later phase expires"), Expired::Origin);
        assert!(now.elapsed() >= Duration::from_millis(60) + GRACE);
    }

    #[tokio::test]
    async fn at_the_origin_deadline_the_socket_is_shut_down_first() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (_server, _) = listener.accept().await.expect("accept");
        use std::os::fd::AsRawFd;
        let socket = OriginSocket::of(client.as_raw_fd()).expect("tcp socket");
        assert_eq!(OriginSocket::of(-1), None);

        let w = Arc::new(Watchdog::default());
        let deadline = Instant::now() + Duration::from_millis(50);
        w.update(|p| {
            *p = Phase::Origin {
                deadline,
                socket: Some(socket),
                nudged: false,
            }
        });
        let mut buf = [0u8; 8];
        // The read that would wait forever ends (EOF) at the deadline, before the backstop.
        let (read, expired) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)),
            tokio::time::timeout(Duration::from_secs(2), w.expired()),
        );
        assert_eq!(read.expect("read ends").expect("eof"), 0);
        assert!(Instant::now() >= deadline + GRACE);
        assert_eq!(expired.expect("backstop"), Expired::Origin);
    }

    #[tokio::test]
    async fn the_phase_functions_reach_the_task_local_watchdog() {
        let w = Arc::new(Watchdog::default());
        let deadline = Instant::now() + Duration::from_secs(1);
        WATCHDOG
            .scope(Arc::clone(&w), async {
                w.update(|p| *p = Phase::ClientHeader(deadline));
                assert_eq!(w.get(), Phase::ClientHeader(deadline));
                // Only the client header phase is disarmed by its end.
                client_header_received();
                assert_eq!(w.get(), Phase::Disarmed);
                arm_origin(deadline, None);
                client_header_received();
                origin_socket(None);
                assert!(matches!(w.get(), Phase::Origin { socket: None, .. }));
                disarm();
            })
            .await;
        assert_eq!(w.get(), Phase::Disarmed);
        // Outside a scope they are no-ops, not panics.
        arm_origin(deadline, None);
        disarm();
    }
}
