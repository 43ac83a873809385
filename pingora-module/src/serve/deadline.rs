//! The backstop of the total origin deadline (`upstream.timeout`).
//!
//! The gateway enforces the deadline gracefully where Pingora lets it: every connect, TLS
//! handshake, read and write of an attempt is bounded by what is left of the budget, the
//! response header is refused (504) when it completes late, and the body is cut on the first
//! chunk that arrives late. What no hook can see is an origin that keeps a single phase alive
//! with a trickle of bytes — response headers dripped a byte at a time never complete, and
//! each byte restarts Pingora's per-read timer.
//!
//! [`Deadlined`] wraps the proxy application: each request runs with a [`Watchdog`] in a
//! task-local slot; the gateway arms it with the deadline when the origin exchange starts and
//! disarms it once the origin has delivered everything (or the gateway answers itself). If the
//! armed deadline plus [`GRACE`] passes, the whole request future is dropped: the origin
//! connection is closed (never pooled), and the client connection is closed, without a
//! response if none was started or short of the body's framing otherwise — never a
//! complete-looking answer. The request is counted as `origin_timeout`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::info;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use ixproxy_core::Outcome;

use super::metrics::Metrics;

/// How long past the deadline the backstop waits, so that the graceful paths (504, a cut body
/// counted with its own outcome) win whenever they can.
pub const GRACE: Duration = Duration::from_millis(250);

tokio::task_local! {
    static WATCHDOG: Arc<Watchdog>;
}

/// The deadline of the request running in this task, if armed.
#[derive(Debug, Default)]
pub struct Watchdog {
    deadline: Mutex<Option<Instant>>,
    changed: Notify,
}

impl Watchdog {
    fn set(&self, deadline: Option<Instant>) {
        if let Ok(mut slot) = self.deadline.lock() {
            *slot = deadline;
        }
        self.changed.notify_one();
    }

    fn get(&self) -> Option<Instant> {
        self.deadline.lock().ok().and_then(|d| *d)
    }

    /// Resolves once an armed deadline (plus [`GRACE`]) has passed; never while disarmed.
    async fn expired(&self) {
        loop {
            match self.get() {
                None => self.changed.notified().await,
                Some(deadline) => {
                    let at = tokio::time::Instant::from_std(deadline + GRACE);
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {
                            if self.get().is_some() {
                                return;
                            }
                        }
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// Arms the current request's backstop for `deadline` (no effect outside [`Deadlined`]).
pub fn arm(deadline: Instant) {
    let _ = WATCHDOG.try_with(|w| w.set(Some(deadline)));
}

/// Disarms the current request's backstop: the origin exchange is over.
pub fn disarm() {
    let _ = WATCHDOG.try_with(|w| w.set(None));
}

/// An HTTP application whose requests are dropped when their armed origin deadline passes.
pub struct Deadlined<A> {
    inner: Arc<A>,
    metrics: Metrics,
}

impl<A> Deadlined<A> {
    /// Wraps `inner`; requests cut by the backstop are counted in `metrics`.
    pub fn new(inner: A, metrics: Metrics) -> Self {
        Deadlined {
            inner: Arc::new(inner),
            metrics,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for Deadlined<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let watchdog = Arc::new(Watchdog::default());
        let run = self.inner.process_new_http(session, shutdown);
        let guarded = async {
            tokio::select! {
                reused = run => reused,
                () = watchdog.expired() => {
                    let outcome = Outcome::OriginTimeout;
                    self.metrics.count(outcome);
                    info!(
                        "request cut: origin exchange past its deadline outcome={}",
                        outcome.as_str()
                    );
                    None
                }
            }
        };
        WATCHDOG.scope(Arc::clone(&watchdog), guarded).await
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

        w.set(Some(Instant::now() + Duration::from_millis(20)));
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), w.expired())
            .await
            .expect("expires");
        assert!(started.elapsed() >= GRACE);

        // Re-armed later, then disarmed before it passes: no expiry.
        w.set(Some(Instant::now() + Duration::from_millis(10)));
        let w2 = Arc::clone(&w);
        let disarm = async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            w2.set(None);
        };
        let (_, waited) = tokio::join!(
            disarm,
            tokio::time::timeout(GRACE + Duration::from_millis(200), w.expired())
        );
        assert!(waited.is_err(), "a disarmed watchdog expired");
    }

    #[tokio::test]
    async fn arm_and_disarm_reach_the_task_local_watchdog() {
        let w = Arc::new(Watchdog::default());
        let deadline = Instant::now() + Duration::from_secs(1);
        WATCHDOG
            .scope(Arc::clone(&w), async {
                arm(deadline);
            })
            .await;
        assert_eq!(w.get(), Some(deadline));
        WATCHDOG.scope(Arc::clone(&w), async { disarm() }).await;
        assert_eq!(w.get(), None);
        // Outside a scope it is a no-op, not a panic.
        arm(deadline);
        disarm();
    }
}
