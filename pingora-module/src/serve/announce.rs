//! The start-up announcement, made from inside Pingora's signal watch.
//!
//! Pingora installs its SIGINT/SIGTERM/SIGQUIT handlers only when its main loop first waits
//! for a signal, after the services have started. A signal sent as soon as the listeners are
//! reported would, before that, meet the default action and kill the process without the
//! SIGTERM drain. So the line that reports the bound addresses is printed by this watch, right
//! after it has installed the same three handlers Pingora's own `UnixShutdownSignalWatch` uses.

use std::sync::Mutex;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

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
}

impl AnnounceThenWatch {
    /// A watch that prints `announcement` when it starts watching.
    pub fn new(announcement: Announcement) -> Self {
        AnnounceThenWatch {
            announcement: Mutex::new(Some(announcement)),
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
        );
        let (Ok(mut upgrade), Ok(mut terminate), Ok(mut interrupt)) = handlers else {
            log::error!("cannot install the signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        self.announce();
        tokio::select! {
            _ = upgrade.recv() => ShutdownSignal::GracefulUpgrade,
            _ = terminate.recv() => ShutdownSignal::GracefulTerminate,
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
        }
    }
}
