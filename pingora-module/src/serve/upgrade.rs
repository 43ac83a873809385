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
use std::os::fd::{AsFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use pingora::server::Fds;

use super::listen::BoundListener;

/// Default path of the upgrade socket (`--upgrade-sock`): in a directory only ixproxy's user
/// writes (systemd's `RuntimeDirectory=ixproxy`).
pub const DEFAULT_UPGRADE_SOCK: &str = "/run/ixproxy/upgrade.sock";

/// Whether the upgrade socket at `path` is safe to use: its directory exists, belongs to this
/// process's effective user or to root, and no other user can write to it. In a directory
/// others can write (`/tmp`), or one another user owns (and so can make writable, or replace
/// the socket in), that user could create the socket first and receive the listening sockets
/// on SIGQUIT, or feed a waiting `-u` sockets of their own; Pingora also makes the socket mode
/// 0666 while it waits.
///
/// # Errors
/// A message naming the directory and what is wrong with it.
pub fn check_private(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    check_private_dir(
        dir,
        &PrivateDir {
            dir: "the upgrade socket's directory",
            path: "the upgrade socket's path",
            harm: "take the listening sockets",
            hint: "use a directory only ixproxy's user owns and can write (--upgrade-sock \
                   /run/ixproxy/upgrade.sock with systemd's RuntimeDirectory=ixproxy)",
            own_group: false,
        },
    )
}

/// How [`check_private_dir`] names a directory and what is at stake, in its errors.
pub struct PrivateDir<'a> {
    /// The directory ("the upgrade socket's directory").
    pub dir: &'a str,
    /// A directory on the way to it ("the upgrade socket's path").
    pub path: &'a str,
    /// What another user could do there ("take the listening sockets").
    pub harm: &'a str,
    /// What to use instead.
    pub hint: &'a str,
    /// Whether a directory its group may write is accepted when that group is the process's
    /// own effective group (a Kubernetes volume under `fsGroup`): no other user's group.
    pub own_group: bool,
}

/// Whether `dir` is private to this process's user: it exists, belongs to this process's
/// effective user or to root, no other user can write to it, and no directory above it can be
/// replaced by another user (one they own or can write without the sticky bit, or their
/// symbolic link on the way).
///
/// # Errors
/// A message naming the directory (as `names` says) and what is wrong with it.
pub fn check_private_dir(dir: &Path, names: &PrivateDir<'_>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("{} {} cannot be used: {e}", names.dir, dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "{} {} is not a directory",
            names.dir,
            dir.display()
        ));
    }
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(format!(
            "{} {} belongs to uid {}, not to ixproxy's user (uid {euid}) or root; that user \
             could {}; {}",
            names.dir,
            dir.display(),
            meta.uid(),
            names.harm,
            names.hint
        ));
    }
    // Writable by its group, when that group is the process's own: no one else's.
    let group_ok = |m: &std::fs::Metadata| names.own_group && m.gid() == egid;
    let writable_by_others =
        |m: &std::fs::Metadata| m.mode() & 0o002 != 0 || (m.mode() & 0o020 != 0 && !group_ok(m));
    if writable_by_others(&meta) {
        return Err(format!(
            "{} {} is writable by other users, who could {}; {}",
            names.dir,
            dir.display(),
            names.harm,
            names.hint
        ));
    }
    // The path up to it: another user's symbolic link could later point elsewhere, and a
    // directory another user owns or can write (without the sticky bit, as on /tmp) could have
    // the directory replaced.
    for ancestor in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        let link = std::fs::symlink_metadata(ancestor)
            .map_err(|e| format!("{} {} cannot be used: {e}", names.path, ancestor.display()))?;
        let theirs = |uid: u32| uid != euid && uid != 0;
        if link.file_type().is_symlink() && theirs(link.uid()) {
            return Err(format!(
                "{} {} is a symbolic link of uid {}, who could point it elsewhere and {}",
                names.path,
                ancestor.display(),
                link.uid(),
                names.harm
            ));
        }
        let target = std::fs::metadata(ancestor)
            .map_err(|e| format!("{} {} cannot be used: {e}", names.path, ancestor.display()))?;
        let open_to_others = writable_by_others(&target) && target.mode() & 0o1000 == 0;
        if theirs(target.uid()) || open_to_others {
            return Err(format!(
                "{} {} belongs to uid {} or is writable by other users, who could replace the \
                 directory and {}",
                names.path,
                ancestor.display(),
                target.uid(),
                names.harm
            ));
        }
    }
    Ok(())
}

/// Removes the upgrade socket at `path` when no process listens on it: one left by a `serve
/// -u` that was killed (SIGKILL) while it waited. A socket some process listens on (a `-u`
/// waiting to take over) is left alone, and so is anything that is not a socket. Called at
/// start and at exit, so a stopped gateway leaves no socket behind. Returns whether it removed
/// one.
pub fn remove_stale(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.file_type().is_socket() && !is_listening(path) && std::fs::remove_file(path).is_ok()
}

/// Whether some process listens on the unix socket bound at `path`, read from
/// `/proc/net/unix` (unreadable: assumed yes). Not by connecting to it: a waiting `serve -u`
/// would take that connection for the running instance's transfer, receive no sockets and
/// bind anew.
fn is_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return true;
    };
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    table.lines().skip(1).any(|line| {
        let (fields, bound) = unix_table_row(line);
        // __SO_ACCEPTCON (0x10000) in Flags marks a listening socket.
        let listening = fields[3]
            .and_then(|flags| u32::from_str_radix(flags, 16).ok())
            .is_some_and(|flags| flags & 0x1_0000 != 0);
        let bound = Path::new(bound);
        listening && (bound == path || bound == absolute)
    })
}

/// One row of `/proc/net/unix`: its seven fields (Num RefCount Protocol Flags Type St Inode,
/// padded with spaces, so split on runs of them) and the bound path after them (which may hold
/// spaces itself; empty for an unbound socket).
fn unix_table_row(line: &str) -> ([Option<&str>; 7], &str) {
    let mut fields = [None; 7];
    let mut rest = line;
    for field in &mut fields {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        *field = Some(&rest[..end]).filter(|f| !f.is_empty());
        rest = &rest[end..];
    }
    (fields, rest.trim_start_matches(' ').trim_end())
}

/// While `serve -u` waits for the sockets, SIGINT, SIGTERM, SIGHUP and SIGQUIT stop it as they
/// would anyway, but remove the socket Pingora listens on first: the signals' default action
/// would leave it behind. They are blocked in the waiting thread and read from a signalfd by a
/// watcher; when the wait ends (received, timed out, or a panic in Pingora's receiver) the
/// watcher is stopped, the signals unblocked (one that came meanwhile then acts as before), and
/// a socket nobody listens on removed.
struct WaitSignals {
    mask: SigSet,
    path: PathBuf,
    /// Dropping it wakes the watcher to return.
    done: Option<UnixStream>,
    watcher: Option<JoinHandle<()>>,
}

impl WaitSignals {
    fn arm(path: &Path) -> Option<Self> {
        let mut mask = SigSet::empty();
        for signal in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            mask.add(signal);
        }
        mask.thread_block().ok()?;
        let armed = (|| {
            let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).ok()?;
            let (done, wake) = UnixStream::pair().ok()?;
            let owned = path.to_path_buf();
            let watcher = std::thread::Builder::new()
                .name("upgrade-wait".to_owned())
                .spawn(move || watch(&signals, &wake, &owned))
                .ok()?;
            Some((done, watcher))
        })();
        let Some((done, watcher)) = armed else {
            let _ = mask.thread_unblock();
            return None;
        };
        Some(WaitSignals {
            mask,
            path: path.to_path_buf(),
            done: Some(done),
            watcher: Some(watcher),
        })
    }
}

impl Drop for WaitSignals {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        let _ = self.mask.thread_unblock();
        remove_stale(&self.path);
    }
}

/// The watcher: waits for one of the signals (then removes the socket and exits 1) or for
/// `wake` to close (then returns).
fn watch(signals: &SignalFd, wake: &UnixStream, path: &Path) {
    loop {
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[0]) {
            if let Ok(Some(info)) = signals.read_signal() {
                let _ = std::fs::remove_file(path);
                let name = i32::try_from(info.ssi_signo)
                    .ok()
                    .and_then(|n| Signal::try_from(n).ok())
                    .map_or("a signal", Signal::as_str);
                eprintln!(
                    "ixproxy: {name} while waiting on {} for the running instance's sockets: \
                     stopped, the socket removed",
                    path.display()
                );
                std::process::exit(1);
            }
        }
        if ready(&fds[1]) {
            return;
        }
    }
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
        let waiting = WaitSignals::arm(path);
        let received = fds.get_from_sock(text);
        drop(waiting);
        received.map_err(|e| {
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

    #[test]
    fn the_upgrade_socket_directory_must_belong_to_ixproxys_user_or_root() {
        use std::os::unix::fs::PermissionsExt;
        // Making a directory another user owns needs root (tests run as root here and in CI).
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test chowns a directory: run it as root"
        );
        let dir = tempfile::tempdir().expect("dir");
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        let err = check_private(&theirs.join("u.sock")).expect_err("another user's directory");
        assert!(
            err.contains("belongs to uid 65534, not to ixproxy's user (uid 0) or root"),
            "{err}"
        );
        // The same directory back in root's hands is fine.
        std::os::unix::fs::chown(&theirs, Some(0), Some(0)).expect("chown back");
        assert_eq!(check_private(&theirs.join("u.sock")), Ok(()));
        // Reached through another user's symbolic link: refused (they could repoint it).
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&theirs, &link).expect("symlink");
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).expect("lchown");
        let err = check_private(&link.join("u.sock")).expect_err("another user's link");
        assert!(err.contains("is a symbolic link of uid 65534"), "{err}");
        // Below a directory another user owns: refused too.
        let above = dir.path().join("above");
        std::fs::create_dir(&above).expect("mkdir");
        std::fs::create_dir(above.join("mine")).expect("mkdir");
        std::fs::set_permissions(above.join("mine"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::os::unix::fs::chown(&above, Some(65534), Some(65534)).expect("chown");
        let err = check_private(&above.join("mine/u.sock")).expect_err("another user's parent");
        assert!(err.contains("belongs to uid 65534"), "{err}");
    }

    #[test]
    fn proc_net_unix_rows_are_read_across_padding_and_spaces_in_paths() {
        let (fields, path) = unix_table_row(
            "0000000000000000: 00000002 00000000 00010000 0001 01   123 /run/a b/u.sock",
        );
        assert_eq!(fields[3], Some("00010000"));
        assert_eq!(fields[6], Some("123"));
        assert_eq!(path, "/run/a b/u.sock");
        let (fields, path) =
            unix_table_row("0000000000000000: 00000003 00000000 00000000 0001 03 40981");
        assert_eq!((fields[3], path), (Some("00000000"), ""));
    }

    #[test]
    fn a_stale_socket_is_removed_and_a_listening_one_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("u.sock");
        assert!(!remove_stale(&path), "nothing there");
        let listening = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(is_listening(&path));
        assert!(!remove_stale(&path), "a listening socket is kept");
        assert!(path.exists());
        // Closing a listener leaves its file behind, as a killed `serve -u` does.
        drop(listening);
        assert!(!is_listening(&path));
        assert!(remove_stale(&path));
        assert!(!path.exists());
        std::fs::write(&path, "not a socket").expect("write");
        assert!(!remove_stale(&path), "only sockets are removed");
        assert!(path.exists());
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
