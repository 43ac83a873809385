//! Listening sockets that ixproxy binds itself and hands to Pingora.
//!
//! Pingora binds a service's listeners by address string when the service starts, in a service
//! thread: a busy port there is retried for 30 s and then panics, and with port 0 nobody learns
//! which port the kernel picked. Pingora also keeps a table of listening fds keyed by address
//! string (`ListenFds`, filled from the old process on a graceful upgrade) and uses an fd from
//! that table instead of binding when the key matches. So ixproxy binds each socket up front,
//! while it can still fail cleanly and read the real port, and [`PreBound`] puts the fd into
//! that table under the bound address just before the wrapped service builds its listeners:
//! the port printed at start is the port served, and it is never released in between. On
//! `ixproxy serve -u` the socket is the one the running process handed over (see
//! [`super::upgrade`]), put into the table the same way.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::{Fds, ListenFds, RuntimeOpts, ShutdownWatch};
use pingora::services::listening::Service as ListeningService;
use pingora::services::Service;

/// Read buffering in front of a client connection: none, plain or TLS. Pingora's default is a
/// 64 KiB buffer per connection, which an idle keep-alive connection holds all its life (1,000
/// idle connections: 64 MiB); its HTTP layer reads the request head into a buffer of its own
/// anyway, and a GET or HEAD has no body to read ahead of (bench/NOTES.md). Under TLS a client
/// sends a request in one small record, which rustls reads in one call without it; a 17 KiB
/// buffer there cost 23 KB per connection (bench/conn_memory.py, README: Limits).
fn plain_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

/// A TCP listener bound by ixproxy (or inherited on an upgrade), not yet handed to Pingora.
#[derive(Debug)]
pub struct BoundListener {
    listener: Socket,
    addr: SocketAddr,
}

/// Where a [`BoundListener`]'s socket comes from.
#[derive(Debug)]
enum Socket {
    /// Bound by this process.
    Bound(TcpListener),
    /// Received from the process this one takes over from: a listening fd this process owns.
    Inherited(RawFd),
}

impl Socket {
    fn into_raw_fd(self) -> RawFd {
        match self {
            Socket::Bound(listener) => listener.into_raw_fd(),
            Socket::Inherited(fd) => fd,
        }
    }
}

impl BoundListener {
    /// Binds `addr` (port 0 = any free port) for the config field `field`.
    ///
    /// # Errors
    /// `"{field}: cannot listen on {addr}: {io error}"` when the address cannot be bound (in use,
    /// not local, no permission) or the socket cannot be set up.
    pub fn bind(addr: SocketAddr, field: &str) -> Result<Self, String> {
        let fail = |e: std::io::Error| format!("{field}: cannot listen on {addr}: {e}");
        // std sets SO_REUSEADDR on Unix, as Pingora's own bind does, so a restart does not
        // wait for old connections in TIME_WAIT.
        let listener = TcpListener::bind(addr).map_err(fail)?;
        // Pingora turns the fd into a tokio listener, which must not block its runtime.
        listener.set_nonblocking(true).map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        Ok(BoundListener {
            listener: Socket::Bound(listener),
            addr,
        })
    }

    /// A listening socket `fd` on `addr` inherited on a graceful upgrade; Pingora takes it
    /// over when the service starts.
    pub fn inherited(addr: SocketAddr, fd: RawFd) -> Self {
        BoundListener {
            listener: Socket::Inherited(fd),
            addr,
        }
    }

    /// The address actually bound: the configured one with port 0 replaced by the kernel's pick.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A Pingora listening service whose one TCP endpoint is a socket ixproxy already bound.
pub struct PreBound<S> {
    inner: S,
    key: String,
    listener: Option<Socket>,
}

impl<A> PreBound<ListeningService<A>> {
    /// Serves `service` on `listener`: adds the bound address as the service's TCP endpoint, so
    /// the key Pingora looks up is exactly the one [`PreBound`] fills in.
    pub fn new(mut service: ListeningService<A>, listener: BoundListener) -> Self {
        let key = listener.addr.to_string();
        service.add_listener(ListenerConfig::tcp(&key).l4_buffer(plain_buffers()));
        PreBound {
            inner: service,
            key,
            listener: Some(listener.listener),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for PreBound<ListeningService<A>> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        // `Server::run` always passes its table on Unix; without one, a private table still
        // makes Pingora take the fd instead of binding the (held) address again.
        let fds = fds.unwrap_or_else(|| Arc::new(parking_lot::Mutex::new(Fds::new())));
        if let Some(listener) = self.listener.take() {
            let mut table = fds.lock();
            // A socket already in the table under this address was inherited on a graceful
            // upgrade and takes precedence; ours is then closed when dropped here.
            if table.get(&self.key).is_none() {
                // Pingora takes ownership of the fd when it builds the endpoint, and keeps the
                // number in the table to pass it on at the next upgrade.
                table.add(self.key.clone(), listener.into_raw_fd());
            } else if let Socket::Inherited(fd) = listener {
                let _ = nix::unistd::close(fd);
            }
        }
        self.inner
            .start_service(Some(fds), shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        Service::name(&self.inner)
    }

    fn threads(&self) -> Option<usize> {
        Service::threads(&self.inner)
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        Service::runtime_opts_override(&self.inner, global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        Service::on_startup_delay(&self.inner, time_waited);
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Service::listen_addresses(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_replaced_by_the_bound_port() {
        let bound = BoundListener::bind(([127, 0, 0, 1], 0).into(), "listen").expect("bind");
        assert_eq!(bound.addr().ip().to_string(), "127.0.0.1");
        assert_ne!(bound.addr().port(), 0);
        // Still held: a second bind of the reported address fails.
        let again = BoundListener::bind(bound.addr(), "admin_listen").expect_err("held");
        assert!(
            again.starts_with(&format!(
                "admin_listen: cannot listen on {}: ",
                bound.addr()
            )),
            "{again}"
        );
    }
}
