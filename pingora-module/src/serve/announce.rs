//! The start-up announcement, made from inside Pingora's signal watch.
//!
//! Pingora installs its SIGINT/SIGTERM/SIGQUIT handlers only when its main loop first waits
//! for a signal, after the services have started. A signal sent as soon as the listeners are
//! reported would, before that, meet the default action and kill the process without the
//! SIGTERM drain. So the line that reports the bound addresses is printed by this watch, right
//! after it has installed the same three handlers Pingora's own `UnixShutdownSignalWatch` uses.
//!
//! The watch also runs ixproxy's part of the signals (README: Operating): SIGHUP reloads the
//! config ([`super::reload`]) and goes on watching; SIGTERM turns `/readyz` to 503 and keeps
//! serving, new connections included, for the grace period (the time a load balancer needs to
//! stop sending) before it lets Pingora close the listeners and give the requests in flight
//! the grace period again; SIGQUIT (a new process takes over) turns `/readyz` to 503 and hands
//! the listeners over at once; SIGINT stops at once, during the SIGTERM drain too.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use super::admin::Readiness;
use super::reload::Reloader;

/// What the watch does besides mapping the signals to Pingora's shutdowns.
pub struct Lifecycle {
    /// SIGHUP's reload.
    pub reloader: Reloader,
    /// Turned to draining by SIGTERM and SIGQUIT.
    pub readiness: Readiness,
    /// `server.grace_period`: how long SIGTERM keeps the listeners serving.
    pub grace_period: Duration,
    /// `--upgrade-sock`: where SIGQUIT sends the listening sockets.
    pub upgrade_sock: std::path::PathBuf,
}

/// Where the announcement goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// A line on stderr (the `ixproxy: gateway on …` line tests read).
    Stderr(String),
    /// Text on stdout (the demo banner).
    Stdout(String),
}

/// A [`ShutdownSignalWatch`] that prints its [`Announcement`] once its handlers are installed,
/// then maps SIGQUIT, SIGTERM and SIGINT as Pingora's Unix watch does.
pub struct AnnounceThenWatch {
    announcement: Mutex<Option<Announcement>>,
    lifecycle: Lifecycle,
}

impl AnnounceThenWatch {
    /// A watch that prints `announcement` when it starts watching, then runs `lifecycle`.
    pub fn new(announcement: Announcement, lifecycle: Lifecycle) -> Self {
        AnnounceThenWatch {
            announcement: Mutex::new(Some(announcement)),
            lifecycle,
        }
    }

    fn announce(&self) {
        let taken = self
            .announcement
            .lock()
            .map_or(None, |mut slot| slot.take());
        match taken {
            Some(Announcement::Stderr(line)) => eprintln!("{line}"),
            Some(Announcement::Stdout(text)) => println!("{text}"),
            None => {}
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for AnnounceThenWatch {
    async fn recv(&self) -> ShutdownSignal {
        let handlers = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        );
        let (Ok(mut upgrade), Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) = handlers
        else {
            log::error!("cannot install the signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        self.announce();
        let Lifecycle {
            reloader,
            readiness,
            grace_period,
            upgrade_sock,
        } = &self.lifecycle;
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    reloader.reload();
                }
                _ = upgrade.recv() => {
                    readiness.drain();
                    if let Err(e) = super::upgrade::check_private(upgrade_sock) {
                        // Never hand the sockets to whoever may own that path: drain as on
                        // SIGTERM instead.
                        log::error!("SIGQUIT: not handing the listening sockets over: {e}; \
                                     draining (/readyz 503) for {grace_period:?}");
                        return drain(*grace_period, &mut interrupt, &mut hangup).await;
                    }
                    log::info!(
                        "SIGQUIT: draining (/readyz 503); handing the listening sockets to the \
                         new process"
                    );
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = terminate.recv() => {
                    readiness.drain();
                    log::info!(
                        "SIGTERM: draining (/readyz 503); serving for {grace_period:?} more, \
                         then the listeners close and requests in flight get {grace_period:?} \
                         to finish"
                    );
                    return drain(*grace_period, &mut interrupt, &mut hangup).await;
                }
                _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
            }
        }
    }
}

/// The first phase of a drain: the listeners keep serving for `grace_period` (SIGINT ends it at
/// once); a SIGHUP meanwhile is not applied, and says so.
async fn drain(
    grace_period: Duration,
    interrupt: &mut tokio::signal::unix::Signal,
    hangup: &mut tokio::signal::unix::Signal,
) -> ShutdownSignal {
    let sleep = tokio::time::sleep(grace_period);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return ShutdownSignal::GracefulTerminate,
            _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
            _ = hangup.recv() => {
                log::warn!("SIGHUP while draining: not reloaded (the process is stopping)");
            }
        }
    }
}
