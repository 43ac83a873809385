//! A scripted origin: a raw loopback TCP server whose every connection is handed to a test's
//! own function, for behaviours the HTTP [`crate::origin::RecordingOrigin`] cannot produce
//! (a body delimited by closing the connection, a response header that never ends, a request
//! left unread so that closing resets the connection, exact connection counting).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::HarnessError;

/// Read timeout of every scripted origin connection.
pub const ORIGIN_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The request target of a request head (`""` when there is none).
pub fn request_path(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}

/// The value of header `name` in a request head (the request line skipped).
pub fn head_header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The RFC 9110 IMF-fixdate of `unix` seconds, for an origin's `Date` (Envoy's cache computes
/// an answer's age from it and stores nothing fresh without one).
pub fn http_date(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let (year, month, day) = ixproxy_core::access_log::civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// One connection accepted by a [`ScriptedOrigin`].
pub struct OriginConn {
    /// The write side of the connection.
    pub out: TcpStream,
    /// The origin's own address.
    pub me: SocketAddr,
    reader: BufReader<TcpStream>,
    log: Arc<Mutex<Vec<String>>>,
}

impl OriginConn {
    /// Copies the first bytes of the request into `buf` without consuming them; returns how many
    /// (0 when the peer sent nothing or the read failed).
    pub fn peek(&self, buf: &mut [u8]) -> usize {
        self.reader.get_ref().peek(buf).unwrap_or(0)
    }

    /// Reads the request head up to its blank line and records it (see
    /// [`ScriptedOrigin::heads`]); `None` when the connection ended or failed first.
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
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(head.clone());
        Some(head)
    }

    /// Writes `bytes` and flushes; `false` when the peer is gone.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.out
            .write_all(bytes)
            .and_then(|()| self.out.flush())
            .is_ok()
    }

    /// Sends `start` of a response head that never ends: then one byte every 200 ms, for at most
    /// 10 s or until the peer is gone. Each byte restarts any per-read timer, so only a deadline
    /// for the whole exchange ends it.
    pub fn drip(&mut self, start: &[u8]) {
        self.send(start);
        for _ in 0..50 {
            if !self.send(b"s") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// A loopback origin on an OS-assigned port: each connection goes to `serve` on its own thread,
/// and the request heads it reads are recorded. Stops accepting when dropped.
pub struct ScriptedOrigin {
    /// Where the origin listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl ScriptedOrigin {
    /// Starts listening on `127.0.0.1`; `serve` answers each connection.
    ///
    /// # Errors
    /// The listener cannot be bound or its thread cannot start.
    pub fn start(serve: fn(OriginConn)) -> Result<ScriptedOrigin, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| HarnessError::io("bind scripted origin", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("scripted origin address", e))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, count, stopped) = (seen.clone(), accepted.clone(), stop.clone());
        std::thread::Builder::new()
            .name("scripted-origin".to_owned())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    count.fetch_add(1, Ordering::SeqCst);
                    let log = log.clone();
                    std::thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(ORIGIN_IO_TIMEOUT));
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
            })
            .map_err(|e| HarnessError::io("scripted origin thread", e))?;
        Ok(ScriptedOrigin {
            addr,
            seen,
            accepted,
            stop,
        })
    }

    /// `http://` URL of `path` on this origin.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Request heads received for targets starting with `prefix`, in arrival order.
    pub fn heads(&self, prefix: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|h| request_path(h).starts_with(prefix))
            .cloned()
            .collect()
    }

    /// How many connections the origin has accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag and ends.
        let _ = TcpStream::connect(self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{send, RawRequest};

    fn answer(mut conn: OriginConn) {
        if let Some(head) = conn.read_head() {
            let body = request_path(&head).to_owned();
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.send(reply.as_bytes());
        }
    }

    #[test]
    fn serves_records_and_counts_connections() {
        let origin = ScriptedOrigin::start(answer).expect("origin");
        let mut req = RawRequest::get("o.test", "/one?x=1");
        req.headers.push(("X-Probe".to_owned(), "yes".to_owned()));
        let r = send(origin.addr, &req, Duration::from_secs(5)).expect("answer");
        assert_eq!((r.status, r.body_text().as_str()), (200, "/one?x=1"));
        let heads = origin.heads("/one");
        assert_eq!(heads.len(), 1);
        assert_eq!(head_header(&heads[0], "x-probe").as_deref(), Some("yes"));
        assert_eq!(origin.connections(), 1);
        assert!(origin.heads("/two").is_empty());
        assert_eq!(origin.url("/a"), format!("http://{}/a", origin.addr));
    }

    #[test]
    fn http_dates_are_imf_fixdates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(http_date(951_825_599), "Tue, 29 Feb 2000 11:59:59 GMT");
    }
}
