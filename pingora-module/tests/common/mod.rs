//! Helpers shared by the `ixproxy serve` end-to-end tests: OS-picked loopback ports, a raw
//! HTTP/1.1 client that sees exactly what went over the wire, a loopback origin that records
//! the request heads it receives, and the real binary started and stopped with SIGINT.
//!
//! Each test file is its own crate, so an item one of them does not use carries
//! `#[allow(dead_code)]`.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ixproxy_core::signer::{sign_url, SignOptions};

/// Read timeout of every test socket, client and origin side.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A directory of this test process under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ixproxy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `origin_url` signed with `token` and `params`, as the path and query of a gateway request.
pub fn signed(token: &str, origin_url: &str, params: &[(&str, &str)]) -> String {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    sign_url(token, origin_url, &params, &SignOptions::default())
}

/// The value of header `name` in a request or response head (the first line skipped).
pub fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The request target of a request head (`""` when there is none).
pub fn request_path(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}

/// Everything the client received, raw, and how the connection ended.
pub struct Raw {
    /// The bytes received, head and body.
    pub bytes: Vec<u8>,
    /// From connecting to the end of the transfer.
    pub took: Duration,
    /// Whether the transfer ended with a connection reset rather than a clean close.
    pub reset: bool,
}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Raw")
            .field("text", &self.text())
            .field("took", &self.took)
            .field("reset", &self.reset)
            .finish()
    }
}

impl Raw {
    /// The response head (everything when the head never ended).
    pub fn head(&self) -> String {
        let end = self.header_end().unwrap_or(self.bytes.len());
        String::from_utf8_lossy(&self.bytes[..end]).into_owned()
    }

    /// Where the blank line ending the head starts.
    pub fn header_end(&self) -> Option<usize> {
        self.bytes.windows(4).position(|w| w == b"\r\n\r\n")
    }

    /// The status code; panics without a status line.
    pub fn status(&self) -> u16 {
        self.head()
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {:?}", self.text()))
    }

    /// The value of response header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.head(), name)
    }

    /// The bytes after the head.
    pub fn body(&self) -> &[u8] {
        self.header_end().map_or(&[], |end| &self.bytes[end + 4..])
    }

    /// Everything received, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// This reply, after checking that it is a response head that arrived whole on a
    /// connection closed cleanly (not reset).
    #[allow(dead_code)]
    pub fn whole(self) -> Raw {
        assert!(
            !self.reset,
            "read: connection reset after {:?}: {:?}",
            self.took,
            self.text()
        );
        assert!(
            self.header_end().is_some(),
            "no header end in {:?}",
            self.text()
        );
        self
    }

    /// Whether the response body arrived complete by its own framing: all of its
    /// `Content-Length`, or the final `0` chunk of a chunked body.
    #[allow(dead_code)]
    pub fn is_complete(&self) -> bool {
        if let Some(len) = self.header("content-length") {
            return len.parse::<usize>().ok() == Some(self.body().len());
        }
        if self
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            return self.body().ends_with(b"\r\n0\r\n\r\n") || self.body() == b"0\r\n\r\n";
        }
        false
    }
}

/// Sends `raw` as is and reads until the peer closes (the requests carry
/// `Connection: close`). A reset ends the transfer too (see [`Raw::reset`]); a timeout
/// means the peer hung and panics.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Raw {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.write_all(raw).expect("write");
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut reset = false;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                reset = true;
                break;
            }
            Err(e) => panic!("client read failed after {:?}: {e}", started.elapsed()),
        }
    }
    Raw {
        bytes,
        took: started.elapsed(),
        reset,
    }
}

/// One HTTP/1.1 request with `Connection: close` and the `extra` header lines.
pub fn request(addr: SocketAddr, method: &str, host: &str, target: &str, extra: &[&str]) -> Raw {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    exchange(addr, head.as_bytes())
}

/// One connection accepted by an [`Origin`].
pub struct OriginConn {
    /// The write side of the connection.
    pub out: TcpStream,
    /// The origin's own address.
    #[allow(dead_code)]
    pub me: SocketAddr,
    reader: BufReader<TcpStream>,
    log: Arc<Mutex<Vec<String>>>,
}

impl OriginConn {
    /// Copies the first bytes of the request into `buf` without consuming them.
    #[allow(dead_code)]
    pub fn peek(&self, buf: &mut [u8]) -> usize {
        self.reader.get_ref().peek(buf).unwrap_or(0)
    }

    /// Reads the request head up to its blank line and records it; `None` when the
    /// connection ended (or failed) first.
    pub fn read_head(&mut self) -> Option<String> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        if let Ok(mut seen) = self.log.lock() {
            seen.push(head.clone());
        }
        Some(head)
    }
}

/// A loopback origin on an OS-picked port: each connection goes to `serve` on its own
/// thread, and the request heads it reads are recorded.
pub struct Origin {
    /// Where the origin listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    /// Starts listening; `serve` answers each connection.
    pub fn start(serve: fn(OriginConn)) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("origin bind");
        let addr = listener.local_addr().expect("origin addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = Arc::clone(&log);
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                    let Ok(out) = stream.try_clone() else {
                        return;
                    };
                    serve(OriginConn {
                        out,
                        me: addr,
                        reader: BufReader::new(stream),
                        log,
                    });
                });
            }
        });
        Origin { addr, seen }
    }

    /// `http://` URL of `path` on this origin.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Request heads received for paths starting with `prefix`, in arrival order.
    pub fn heads(&self, prefix: &str) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|h| request_path(h).starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// The `ixproxy` binary under test.
pub fn ixproxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ixproxy"))
}

/// Waits up to `limit` for `child` to exit.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Sends SIGINT to `child`; panics when `kill` fails.
pub fn sigint(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A running `ixproxy serve`; stopped with SIGINT when dropped.
pub struct Gateway {
    /// The `ixproxy serve` process.
    pub child: Child,
    /// The proxy listener.
    pub listen: SocketAddr,
    /// The admin listener (`/healthz`, `/metrics`).
    pub admin: SocketAddr,
}

impl Gateway {
    /// Starts `ixproxy serve` on two free loopback ports with `config` (everything but the
    /// listen addresses) and the extra environment `env`, and waits until `/healthz`
    /// answers 200. The process's stderr goes to a file next to the config, shown if it
    /// exits early; with `IXPROXY_TEST_LOG` set, it is inherited and `RUST_LOG` is that value.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Gateway {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let dir = temp_dir("serve");
        let path = dir.join(format!("gateway-{}.yaml", listen.port()));
        let text = format!("listen: {listen}\nadmin_listen: {admin}\n{config}");
        std::fs::write(&path, text).expect("config");
        let stderr_path = dir.join(format!("gateway-{}.stderr", listen.port()));
        let mut cmd = ixproxy();
        cmd.arg("serve")
            .arg("-c")
            .arg(&path)
            .envs(env.iter().copied())
            .stdout(Stdio::null());
        if let Ok(level) = std::env::var("IXPROXY_TEST_LOG") {
            cmd.env("RUST_LOG", level).stderr(Stdio::inherit());
        } else {
            let file = std::fs::File::create(&stderr_path).expect("stderr file");
            cmd.stderr(file);
        }
        let mut child = cmd.spawn().expect("spawn ixproxy");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("ixproxy serve exited early ({status}): {err}");
            }
            let ready = TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_ok()
                && request(admin, "GET", "admin", "/healthz", &[])
                    .whole()
                    .status()
                    == 200;
            if ready {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "ixproxy serve not ready within 15 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
        Gateway {
            child,
            listen,
            admin,
        }
    }

    /// A GET through the gateway, checked to be a whole response (see [`Raw::whole`]).
    #[allow(dead_code)]
    pub fn get(&self, host: &str, target: &str, extra: &[&str]) -> Raw {
        request(self.listen, "GET", host, target, extra).whole()
    }

    /// The `ixproxy_requests_total` counter for `outcome`.
    pub fn metric(&self, outcome: &str) -> u64 {
        let text = request(self.admin, "GET", "a", "/metrics", &[])
            .whole()
            .text();
        let key = format!("ixproxy_requests_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
    }

    /// Sends SIGINT and returns how long the process took to exit.
    #[allow(dead_code)]
    pub fn stop(mut self) -> (ExitStatus, Duration) {
        sigint(&self.child);
        let start = Instant::now();
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(10))
            .expect("ixproxy serve did not exit within 10 s of SIGINT");
        (status, start.elapsed())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            if wait_with_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
