//! `ixproxy serve -u`: taking the listening sockets over from a running instance (Pingora's
//! graceful upgrade, README: Operating).
//!
//! The running process sends its listening fds, each under the address it serves, over the
//! upgrade socket when it gets SIGQUIT (Pingora's `main_loop`); the new process receives them
//! here, before it would bind anything: binding the same address would fail while the old
//! process still holds it. Each configured listener takes the inherited socket on its address
//! (for port 0, the one inherited socket on that IP), and is bound anew only when none matches
//! (the address changed in the new config). Sockets no listener claims are closed, so no
//! address stays bound with nobody accepting on it.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::Path;

use pingora::server::Fds;

use super::listen::BoundListener;

/// Default path of the upgrade socket (`--upgrade-sock`): in a directory only ixproxy's user
/// writes (systemd's `RuntimeDirectory=ixproxy`).
pub const DEFAULT_UPGRADE_SOCK: &str = "/run/ixproxy/upgrade.sock";

/// Whether the upgrade socket at `path` is safe to use: its directory exists and no other user
/// can write to it. In a directory others can write (`/tmp`), another user could create the
/// socket first and receive the listening sockets on SIGQUIT, or feed a waiting `-u` sockets
/// of their own; Pingora also makes the socket mode 0666 while it waits.
///
/// # Errors
/// A message naming the directory and what is wrong with it.
pub fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|e| {
        format!(
            "the upgrade socket's directory {} cannot be used: {e}",
            dir.display()
        )
    })?;
    if !meta.is_dir() {
        return Err(format!(
            "the upgrade socket's directory {} is not a directory",
            dir.display()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "the upgrade socket's directory {} is writable by other users, who could take the \
             listening sockets; use a directory only ixproxy's user can write (--upgrade-sock \
             /run/ixproxy/upgrade.sock with systemd's RuntimeDirectory=ixproxy)",
            dir.display()
        ));
    }
    Ok(())
}

/// The listening sockets received from the running instance, by the address each served.
#[derive(Debug)]
pub struct Inherited {
    sockets: Vec<(SocketAddr, RawFd)>,
}

impl Inherited {
    /// Waits (Pingora's bound: about five seconds) on `path` for the running instance to send
    /// its listening sockets, which it does on SIGQUIT.
    ///
    /// # Errors
    /// `"upgrade: …"` when the socket's directory does not exist, nothing arrives in time, or a
    /// received address cannot be read.
    pub fn receive(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        // Pingora's receiver panics when it cannot bind the socket (a missing directory): the
        // directory is checked first, and it must be private.
        check_private(path).map_err(|e| format!("upgrade: {e}"))?;
        let text = path
            .to_str()
            .ok_or_else(|| format!("upgrade: the upgrade socket path {shown} is not utf-8"))?;
        let mut fds = Fds::new();
        fds.get_from_sock(text).map_err(|e| {
            format!(
                "upgrade: no listening sockets received on {shown} ({e}): is an ixproxy serve \
                 with the same --upgrade-sock running, and was it sent SIGQUIT?"
            )
        })?;
        let (keys, raw) = fds.serialize();
        let mut sockets = Vec::with_capacity(keys.len());
        let mut unreadable = None;
        for (key, fd) in keys.into_iter().zip(raw) {
            match key.parse() {
                Ok(addr) => sockets.push((addr, fd)),
                Err(_) => {
                    let _ = nix::unistd::close(fd);
                    unreadable = Some(key);
                }
            }
        }
        if let Some(key) = unreadable {
            close_all(&sockets);
            return Err(format!(
                "upgrade: received a listening socket for {key:?}, not an address"
            ));
        }
        Ok(Inherited { sockets })
    }

    /// The listener for the config field `field` on `configured`: the inherited socket that
    /// matches it (see [`claim_index`]), else one bound now.
    ///
    /// # Errors
    /// `"{field}: …"`: port 0 with several inherited sockets on that IP, or the bind failed.
    pub fn take_or_bind(
        &mut self,
        configured: SocketAddr,
        field: &str,
    ) -> Result<BoundListener, String> {
        let addrs: Vec<SocketAddr> = self.sockets.iter().map(|(a, _)| *a).collect();
        match claim_index(configured, &addrs).map_err(|e| format!("{field}: {e}"))? {
            Some(i) => {
                let (addr, fd) = self.sockets.remove(i);
                Ok(BoundListener::inherited(addr, fd))
            }
            None => BoundListener::bind(configured, field),
        }
    }
}

impl Drop for Inherited {
    fn drop(&mut self) {
        if !self.sockets.is_empty() {
            let unclaimed: Vec<String> = self.sockets.iter().map(|(a, _)| a.to_string()).collect();
            log::warn!(
                "upgrade: closing inherited listening sockets no listener uses: {}",
                unclaimed.join(", ")
            );
        }
        close_all(&self.sockets);
    }
}

fn close_all(sockets: &[(SocketAddr, RawFd)]) {
    for (_, fd) in sockets {
        let _ = nix::unistd::close(*fd);
    }
}

/// Which of the `inherited` addresses serves `configured`: the same address, or for port 0
/// the only inherited one on the same IP; `None` when there is none (bind anew).
///
/// # Errors
/// Port 0 with several inherited sockets on that IP: which one was this listener's cannot be
/// told, so the config must name the port.
pub fn claim_index(
    configured: SocketAddr,
    inherited: &[SocketAddr],
) -> Result<Option<usize>, String> {
    if configured.port() != 0 {
        return Ok(inherited.iter().position(|a| *a == configured));
    }
    let same_ip: Vec<usize> = (0..inherited.len())
        .filter(|&i| inherited[i].ip() == configured.ip())
        .collect();
    match same_ip.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(format!(
            "port 0 cannot be taken over: {} inherited sockets listen on {}; set the port \
             the running instance serves",
            same_ip.len(),
            configured.ip()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrade_socket_must_be_in_a_private_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let private = dir.path().join("private");
        std::fs::create_dir(&private).expect("mkdir");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(check_private(&private.join("u.sock")), Ok(()));
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let err = check_private(&shared.join("u.sock")).expect_err("world-writable");
        assert!(err.contains("writable by other users"), "{err}");
        let err = check_private(&dir.path().join("missing/u.sock")).expect_err("missing");
        assert!(err.contains("cannot be used"), "{err}");
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn the_same_address_is_taken_else_bound_anew() {
        let inherited = [addr("127.0.0.1:8080"), addr("127.0.0.1:9901")];
        assert_eq!(claim_index(addr("127.0.0.1:9901"), &inherited), Ok(Some(1)));
        assert_eq!(claim_index(addr("127.0.0.1:8081"), &inherited), Ok(None));
        assert_eq!(claim_index(addr("[::1]:8080"), &inherited), Ok(None));
    }

    #[test]
    fn port_zero_takes_the_only_socket_on_its_ip() {
        let inherited = [addr("127.0.0.1:40000"), addr("[::1]:9901")];
        assert_eq!(claim_index(addr("[::1]:0"), &inherited), Ok(Some(1)));
        assert_eq!(claim_index(addr("127.0.0.2:0"), &inherited), Ok(None));
        let both = [addr("127.0.0.1:40000"), addr("127.0.0.1:40001")];
        let err = claim_index(addr("127.0.0.1:0"), &both).expect_err("ambiguous");
        assert!(
            err.starts_with("port 0 cannot be taken over: 2 inherited"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_socket_directory_is_a_clear_error() {
        let err = Inherited::receive(Path::new("/nonexistent-ixproxy-dir/upgrade.sock"))
            .expect_err("no directory");
        assert!(
            err.starts_with("upgrade: the upgrade socket's directory"),
            "{err}"
        );
    }
}
