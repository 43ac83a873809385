//! A bounded soak through one gateway: valid signed requests mixed with 1% hostile and 1%
//! faulty-origin requests, sent over a pool of keep-alive connections the way a pooling front
//! proxy sends them (a few connections, each reused for every request until the gateway says
//! `Connection: close`).
//!
//! What it holds the gateway to:
//! - every valid request gets its 200 and its own body; a connection reused after a response
//!   that did not say `Connection: close` is never found closed under the next request (behind
//!   a pooling proxy that request is another user's);
//! - every hostile and faulty request gets its status (or, for a body cut by the origin, an
//!   aborted transfer);
//! - `ixproxy_requests_total{outcome}` moves by exactly one count per request, on the label the
//!   request predicts;
//! - the gateway's resident memory stays under a bound stated by the caller.
//!
//! The mix is deterministic: each connection's schedule comes from a fixed seed, so a failure
//! names a request that the same run sends again. The length is [`DURATION_ENV`] seconds
//! (default [`DEFAULT_DURATION`]); everything else is bounded by count as well as time.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::Outcome;

use crate::client::{try_parse, RawRequest, RawResponse};
use crate::gateway::resident_kib;
use crate::gateway::Gateway;
use crate::harness::DeadPort;
use crate::metrics::{await_deltas, scrape, Deltas};
use crate::origin::{pattern, RecordingOrigin};
use crate::scripted::{OriginConn, ScriptedOrigin};
use crate::HarnessError;

/// Environment variable: how many seconds the soak runs against each runtime.
pub const DURATION_ENV: &str = "IXPROXY_SOAK_SECONDS";
/// How long the soak runs against one runtime when [`DURATION_ENV`] is not set.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(28);
/// Client connections in the pool, each driven by its own thread.
pub const CONNECTIONS: usize = 8;
/// `upstream.timeout` of the soak's config: the silent origin costs this much per request.
/// Valid requests must get their response header within it even on a loaded machine (the
/// slowest took up to 650 ms with a load average of 11 on 2 cores, typically 70-170 ms; 2 s
/// leaves room for a CI machine busier than that).
pub const ORIGIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The host of the soak's one source.
pub const HOST: &str = "soak.test";
const TOKEN: &str = "soakToken7e1";
/// Bound on the requests of one connection's schedule, whatever the duration.
const MAX_REQUESTS_PER_CONNECTION: u64 = 5_000_000;
/// Longest one exchange may take (connect, write, whole response).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between two samples of the gateway's resident memory.
const RSS_INTERVAL: Duration = Duration::from_millis(250);
/// Failures described in full per connection (the first); the others are counted by class.
const EXAMPLES_SHOWN: usize = 1;
/// Seed of the schedules (connection `i` uses `SEED + i`).
const SEED: u64 = 0x50a6_2026_1217;

/// A request the client gateway may be sent by an attacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    /// A signed URL with one hex digit of `s` changed.
    BadSignature,
    /// A validly signed URL for a host no source has.
    UnknownHost,
    /// `DELETE`.
    WrongMethod,
    /// Five 8000-byte headers, over the 32 KiB of request headers.
    OversizedHeaders,
    /// A `GET` with a 5-byte body.
    GetWithBody,
    /// `Content-Length` and `Transfer-Encoding: chunked` together (a smuggling attempt).
    AmbiguousFraming,
    /// Two different `Content-Length` values: malformed, refused by the HTTP codec of both
    /// runtimes before any ixproxy code sees it, so nothing is counted.
    ConflictingLength,
}

const HOSTILE: [Hostile; 7] = [
    Hostile::BadSignature,
    Hostile::UnknownHost,
    Hostile::WrongMethod,
    Hostile::OversizedHeaders,
    Hostile::GetWithBody,
    Hostile::AmbiguousFraming,
    Hostile::ConflictingLength,
];

/// A request whose origin misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Faulty {
    /// The origin resets the connection once the request has arrived.
    Reset,
    /// The origin accepts the request and never answers.
    Silent,
    /// The origin declares a body, sends half of it and drops the connection.
    CutBody,
    /// Nothing listens on the origin's port.
    Refused,
}

const FAULTY: [Faulty; 4] = [
    Faulty::Reset,
    Faulty::Silent,
    Faulty::CutBody,
    Faulty::Refused,
];

/// What one request of the schedule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A signed request for an asset whose body names its path.
    Asset,
    /// A signed request for `n` pattern bytes with a `Content-Length`.
    Bytes(usize),
    Hostile(Hostile),
    Faulty(Faulty),
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Asset | Kind::Bytes(_) => "valid",
            Kind::Hostile(Hostile::BadSignature) => "hostile: bad signature",
            Kind::Hostile(Hostile::UnknownHost) => "hostile: unknown host",
            Kind::Hostile(Hostile::WrongMethod) => "hostile: wrong method",
            Kind::Hostile(Hostile::OversizedHeaders) => "hostile: oversized headers",
            Kind::Hostile(Hostile::GetWithBody) => "hostile: GET with a body",
            Kind::Hostile(Hostile::AmbiguousFraming) => "hostile: Content-Length with chunked",
            Kind::Hostile(Hostile::ConflictingLength) => "hostile: two Content-Lengths",
            Kind::Faulty(Faulty::Reset) => "faulty: origin resets",
            Kind::Faulty(Faulty::Silent) => "faulty: origin never answers",
            Kind::Faulty(Faulty::CutBody) => "faulty: origin cuts the body",
            Kind::Faulty(Faulty::Refused) => "faulty: origin refuses",
        }
    }

    /// The status the client must get (a cut body may instead end in an aborted transfer), and
    /// the outcome the gateway must count (`None`: nothing may be counted).
    fn expected(self) -> (u16, Option<Outcome>) {
        let (status, outcome) = match self {
            Kind::Asset | Kind::Bytes(_) => (200, Outcome::Forwarded),
            Kind::Hostile(Hostile::BadSignature) => (403, Outcome::BadSignature),
            Kind::Hostile(Hostile::UnknownHost) => (410, Outcome::UnknownHost),
            Kind::Hostile(Hostile::WrongMethod) => (405, Outcome::MethodNotAllowed),
            Kind::Hostile(Hostile::OversizedHeaders) => (431, Outcome::RequestTooLarge),
            Kind::Hostile(Hostile::GetWithBody | Hostile::AmbiguousFraming) => {
                (400, Outcome::BadRequest)
            }
            Kind::Hostile(Hostile::ConflictingLength) => return (400, None),
            Kind::Faulty(Faulty::Silent) => (504, Outcome::OriginTimeout),
            Kind::Faulty(Faulty::Reset | Faulty::CutBody | Faulty::Refused) => {
                (502, Outcome::OriginError)
            }
        };
        (status, Some(outcome))
    }
}

/// splitmix64: a fixed, dependency-free sequence per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One connection's endless, deterministic schedule: in every block of 100 requests one hostile
/// and one faulty request at positions drawn from the seed, the kinds taken in turn, the rest
/// valid (one in ten of them a pattern body of up to 64 KiB).
struct Schedule {
    rng: Rng,
    block: u64,
    hostile_at: u64,
    faulty_at: u64,
    index: u64,
}

impl Schedule {
    fn new(connection: usize) -> Self {
        Schedule {
            rng: Rng(SEED.wrapping_add(connection as u64)),
            block: u64::MAX,
            hostile_at: 0,
            faulty_at: 0,
            index: 0,
        }
    }

    fn next(&mut self) -> Kind {
        let (block, slot) = (self.index / 100, self.index % 100);
        self.index += 1;
        if block != self.block {
            self.block = block;
            self.hostile_at = self.rng.below(100);
            self.faulty_at = (self.hostile_at + 1 + self.rng.below(99)) % 100;
        }
        let turn = usize::try_from(block).unwrap_or(0);
        if slot == self.hostile_at {
            Kind::Hostile(HOSTILE[turn % HOSTILE.len()])
        } else if slot == self.faulty_at {
            Kind::Faulty(FAULTY[turn % FAULTY.len()])
        } else if self.rng.below(10) == 0 {
            Kind::Bytes(1 + usize::try_from(self.rng.below(64 * 1024)).unwrap_or(0))
        } else {
            Kind::Asset
        }
    }
}

/// The origins the soak's requests go to.
struct Origins {
    recording: RecordingOrigin,
    reset: ScriptedOrigin,
    silent: ScriptedOrigin,
    dead: DeadPort,
}

/// Waits for the request, then closes with it unread: the kernel answers with a reset.
fn reset_after_request(conn: OriginConn) {
    let mut first = [0u8; 1];
    if conn.peek(&mut first) > 0 {
        drop(conn);
    }
}

/// Reads the request and never answers; returns when the gateway gives up and closes (or at
/// the scripted origin's read timeout).
fn never_answer(mut conn: OriginConn) {
    if conn.read_head().is_some() {
        // No second request comes: this read ends at the gateway's close.
        let _ = conn.read_head();
    }
}

impl Origins {
    fn start() -> Result<Self, HarnessError> {
        Ok(Origins {
            recording: RecordingOrigin::start()?,
            reset: ScriptedOrigin::start(reset_after_request)?,
            silent: ScriptedOrigin::start(never_answer)?,
            dead: DeadPort::bind()?,
        })
    }

    fn signed(&self, host: &str, origin_url: &str) -> RawRequest {
        RawRequest::get(
            host,
            &sign_url(TOKEN, origin_url, &[], &SignOptions::default()),
        )
    }

    /// The request for `kind`, number `index` of connection `connection`.
    fn request(&self, kind: Kind, connection: usize, index: u64) -> RawRequest {
        let http = self.recording.http;
        let asset = format!("http://{http}/asset/soak/{connection}/{index}");
        match kind {
            Kind::Asset => self.signed(HOST, &asset),
            Kind::Bytes(n) => self.signed(HOST, &format!("http://{http}/bytes-cl/{n}")),
            Kind::Hostile(hostile) => {
                let mut req = self.signed(HOST, &asset);
                match hostile {
                    Hostile::BadSignature => {
                        let last = req.target.pop();
                        req.target.push(if last == Some('0') { '1' } else { '0' });
                    }
                    Hostile::UnknownHost => req.host = "unknown.test".to_owned(),
                    Hostile::WrongMethod => req.method = "DELETE".to_owned(),
                    Hostile::OversizedHeaders => {
                        for i in 0..5 {
                            req.headers
                                .push((format!("X-Filler-{i}"), "f".repeat(8000)));
                        }
                    }
                    Hostile::GetWithBody => {
                        add_body(&mut req, &[("Content-Length", "5")], b"hello");
                    }
                    // The same five bytes end the body under either framing, so a gateway that
                    // picked one would still not desynchronise.
                    Hostile::AmbiguousFraming => add_body(
                        &mut req,
                        &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
                        b"0\r\n\r\n",
                    ),
                    Hostile::ConflictingLength => add_body(
                        &mut req,
                        &[("Content-Length", "5"), ("Content-Length", "6")],
                        b"hello!",
                    ),
                }
                req
            }
            Kind::Faulty(faulty) => {
                let path = format!("/faulty/{connection}/{index}");
                let url = match faulty {
                    Faulty::Reset => self.reset.url(&path),
                    Faulty::Silent => self.silent.url(&path),
                    Faulty::CutBody => format!("http://{http}/reset/2000"),
                    Faulty::Refused => format!("http://{}{path}", self.dead.addr()),
                };
                self.signed(HOST, &url)
            }
        }
    }
}

/// Adds `headers` and `body` to `req`, exactly as given.
fn add_body(req: &mut RawRequest, headers: &[(&str, &str)], body: &[u8]) {
    req.headers.extend(
        headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    );
    req.body = body.to_vec();
}

/// The config the gateway runs: one source, private origins allowed (everything is loopback),
/// a short `upstream.timeout` so the silent origin costs little; the connect and body timeouts
/// play no part in the faults (a refusal and a cut are immediate) and are left generous.
fn config_text() -> String {
    format!(
        "listen: 127.0.0.1:0\n\
         admin_listen: 127.0.0.1:0\n\
         upstream:\n  connect_timeout: 5s\n  timeout: {}ms\n  body_timeout: 5s\n\
         sources:\n  - name: soak\n    hosts: [{HOST}]\n    secure_url_tokens: [{TOKEN}]\n    \
         allow_private_origins: true\n",
        ORIGIN_TIMEOUT.as_millis()
    )
}

/// How one exchange on a pooled connection ended.
#[derive(Debug)]
enum Exchange {
    /// A whole response (the connection stays open unless it said `Connection: close` or
    /// ended with it).
    Response(RawResponse),
    /// The connection ended inside a response, after its head (an aborted transfer).
    Cut(String),
    /// The connection was closed or reset before any byte of a response.
    Lost(String),
    /// A timeout or a malformed response.
    Failed(String),
}

/// One client connection of the pool: opened when needed, reused until a response says
/// `Connection: close` or the connection ends.
struct Pooled {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    raw: Vec<u8>,
    opened: u64,
}

impl Pooled {
    fn new(addr: SocketAddr) -> Self {
        Pooled {
            addr,
            stream: None,
            raw: Vec::new(),
            opened: 0,
        }
    }

    /// Sends `req` (keep-alive) and reads its response; returns how it ended and whether the
    /// connection had carried an earlier response.
    fn exchange(&mut self, req: &RawRequest) -> (Exchange, bool) {
        let reused = self.stream.is_some();
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => match TcpStream::connect_timeout(&self.addr, EXCHANGE_TIMEOUT) {
                Ok(stream) => {
                    self.opened += 1;
                    self.raw.clear();
                    stream
                }
                Err(e) => return (Exchange::Lost(format!("connect: {e}")), false),
            },
        };
        let written = stream
            .set_write_timeout(Some(EXCHANGE_TIMEOUT))
            .and_then(|()| stream.write_all(&req.to_bytes_with(false)));
        if let Err(e) = written {
            // A reset while writing still leaves what the gateway sent before it readable;
            // only a response already there tells a lost request from an answered one.
            if self.raw.is_empty() {
                return (Exchange::Lost(format!("write: {e}")), reused);
            }
        }
        let head_request = req.method.eq_ignore_ascii_case("HEAD");
        let deadline = Instant::now() + EXCHANGE_TIMEOUT;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match try_parse(&self.raw, head_request, false) {
                Ok(Some((response, used))) => {
                    self.raw.drain(..used);
                    if !response.says_close() {
                        self.stream = Some(stream);
                    }
                    return (Exchange::Response(response), reused);
                }
                Ok(None) => {}
                Err(e) => return (Exchange::Failed(e.to_string()), reused),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (
                    Exchange::Failed(format!(
                        "no whole response within {EXCHANGE_TIMEOUT:?} ({} bytes)",
                        self.raw.len()
                    )),
                    reused,
                );
            }
            if let Err(e) = stream.set_read_timeout(Some(left)) {
                return (Exchange::Failed(format!("set timeout: {e}")), reused);
            }
            let ended = match stream.read(&mut buf) {
                Ok(0) => "closed",
                Ok(n) => {
                    self.raw.extend_from_slice(&buf[..n]);
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::BrokenPipe
                            | ErrorKind::UnexpectedEof
                    ) =>
                {
                    "reset"
                }
                Err(e) => return (Exchange::Failed(format!("read: {e}")), reused),
            };
            if self.raw.is_empty() {
                return (Exchange::Lost(format!("connection {ended}")), reused);
            }
            let exchange = match try_parse(&self.raw, head_request, true) {
                Ok(Some((response, _))) => Exchange::Response(response),
                Ok(None) | Err(HarnessError::Incomplete(_)) => Exchange::Cut(format!(
                    "connection {ended} after {} bytes: {:?}",
                    self.raw.len(),
                    String::from_utf8_lossy(&self.raw[..self.raw.len().min(120)])
                )),
                Err(e) => Exchange::Failed(e.to_string()),
            };
            self.raw.clear();
            return (exchange, reused);
        }
    }
}

/// What one connection's thread saw.
#[derive(Debug, Default)]
struct ConnectionRun {
    sent: BTreeMap<&'static str, u64>,
    outcomes: BTreeMap<&'static str, u64>,
    counted: u64,
    /// Failures by what failed and what came before it on the connection.
    failures: BTreeMap<String, u64>,
    /// The first failures in full.
    examples: Vec<String>,
    /// Responses that said `Connection: close` (or ended with the connection), by kind.
    closed: BTreeMap<&'static str, u64>,
    opened: u64,
    /// The longest exchange of a valid request.
    slowest_valid: Duration,
}

/// What came before a request on its connection, for failure reports.
fn describe(previous: Option<(Kind, u16)>) -> String {
    match previous {
        None => "on a new connection".to_owned(),
        Some((kind, status)) => format!(
            "after a {status} ({}) that did not say `Connection: close`",
            kind.label()
        ),
    }
}

/// Judges one exchange: `None` when it is what `kind` expects, else what went wrong (a short
/// class for the summary) and the details.
fn judge(
    kind: Kind,
    req: &RawRequest,
    exchange: &Exchange,
    reused: bool,
) -> Option<(String, String)> {
    let (status, _) = kind.expected();
    match exchange {
        Exchange::Response(response) if response.status != status => Some((
            format!("status {} (expected {status})", response.status),
            response.body_text().chars().take(120).collect(),
        )),
        Exchange::Response(response) => {
            let body_ok = match kind {
                Kind::Asset => response.body_text() == format!("asset {}", req_origin_path(req)),
                Kind::Bytes(n) => response.body == pattern(n),
                Kind::Hostile(_) | Kind::Faulty(_) => true,
            };
            (!body_ok).then(|| {
                (
                    "the wrong body".to_owned(),
                    format!(
                        "{} bytes: {:?}",
                        response.body.len(),
                        String::from_utf8_lossy(&response.body[..response.body.len().min(120)])
                    ),
                )
            })
        }
        // The origin cut the body after its head: the gateway may have passed the head on.
        Exchange::Cut(_) if kind == Kind::Faulty(Faulty::CutBody) => None,
        Exchange::Cut(why) => Some(("an aborted transfer".to_owned(), why.clone())),
        Exchange::Lost(why) if reused => Some((
            "lost: the reused connection was closed under it".to_owned(),
            why.clone(),
        )),
        Exchange::Lost(why) => Some(("lost on a new connection".to_owned(), why.clone())),
        Exchange::Failed(why) => Some(("no whole response".to_owned(), why.clone())),
    }
}

/// The origin path an asset request asks for (`/asset/soak/C/I`), from the signed target.
fn req_origin_path(req: &RawRequest) -> String {
    let target = req.target.split('?').next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(target).decode_utf8_lossy();
    decoded
        .split_once("/asset/")
        .map(|(_, rest)| format!("/asset/{rest}"))
        .unwrap_or_default()
}

fn run_connection(
    addr: SocketAddr,
    origins: &Origins,
    connection: usize,
    until: Instant,
) -> ConnectionRun {
    let mut run = ConnectionRun::default();
    let mut pooled = Pooled::new(addr);
    let mut schedule = Schedule::new(connection);
    // The previous response on the connection (when it is still open, it did not say close).
    let mut previous: Option<(Kind, u16)> = None;
    for index in 0..MAX_REQUESTS_PER_CONNECTION {
        if Instant::now() >= until {
            break;
        }
        let kind = schedule.next();
        let req = origins.request(kind, connection, index);
        *run.sent.entry(kind.label()).or_insert(0) += 1;
        let sent_at = Instant::now();
        let (exchange, reused) = pooled.exchange(&req);
        if matches!(kind, Kind::Asset | Kind::Bytes(_)) {
            run.slowest_valid = run.slowest_valid.max(sent_at.elapsed());
        }
        let before = describe(if reused { previous } else { None });
        if let Some((class, details)) = judge(kind, &req, &exchange, reused) {
            let summary = format!("{}: {class}, {before}", kind.label());
            if run.examples.len() < EXAMPLES_SHOWN {
                run.examples.push(format!(
                    "connection {connection} request {index} ({} {}): {summary}: {details}",
                    req.method,
                    req.target.chars().take(60).collect::<String>(),
                ));
            }
            *run.failures.entry(summary).or_insert(0) += 1;
        }
        // Every request that reached the gateway is counted once; a lost one never reached it.
        if let (false, (_, Some(outcome))) =
            (matches!(exchange, Exchange::Lost(_)), kind.expected())
        {
            *run.outcomes.entry(outcome.as_str()).or_insert(0) += 1;
            run.counted += 1;
        }
        previous = match &exchange {
            Exchange::Response(response) if pooled.stream.is_some() => {
                Some((kind, response.status))
            }
            _ => {
                *run.closed.entry(kind.label()).or_insert(0) += 1;
                None
            }
        };
    }
    run.opened = pooled.opened;
    run
}

/// The soak's duration: [`DURATION_ENV`] seconds, or [`DEFAULT_DURATION`].
pub fn duration() -> Duration {
    std::env::var(DURATION_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(DEFAULT_DURATION, Duration::from_secs)
}

/// The gateway's resident memory around a soak, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    /// Before the load.
    pub before: u64,
    /// After a quarter of the load (buffers, pools and caches of the runtime have grown).
    pub warm: u64,
    /// The highest sample during the load, or after it.
    pub peak: u64,
    /// Once the load has ended.
    pub after: u64,
}

/// Figures of one soak run.
#[derive(Debug)]
pub struct SoakReport {
    /// The runtime soaked.
    pub runtime: &'static str,
    /// How long the load ran.
    pub elapsed: Duration,
    /// Requests sent, by kind.
    pub sent: BTreeMap<&'static str, u64>,
    /// Client connections opened (the pool reconnects only after a close).
    pub connections_opened: u64,
    /// Exchanges after which the connection was closed (a response saying
    /// `Connection: close`, an aborted transfer, a lost request), by kind.
    pub closed: BTreeMap<&'static str, u64>,
    /// The longest exchange of a valid request (it must stay well under
    /// [`ORIGIN_TIMEOUT`], or a loaded machine would turn valid requests into 504s).
    pub slowest_valid: Duration,
    /// Requests whose answer was not the expected one, by what failed and what came before
    /// it on its connection.
    pub failures: BTreeMap<String, u64>,
    /// The first few failures of each connection, in full.
    pub examples: Vec<String>,
    /// Why the outcome counts do not match the requests, if they do not.
    pub count_problem: Option<String>,
    /// The gateway's resident memory.
    pub rss: Rss,
}

impl SoakReport {
    /// Requests sent in all.
    pub fn total(&self) -> u64 {
        self.sent.values().sum()
    }

    /// Requests that failed, in all.
    pub fn failure_count(&self) -> u64 {
        self.failures.values().sum()
    }
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.total();
        let secs = self.elapsed.as_secs_f64().max(0.001);
        writeln!(
            f,
            "{}: {total} requests in {:.1} s ({:.0}/s) over {CONNECTIONS} pooled connections \
             ({} opened), {} failed",
            self.runtime,
            secs,
            total as f64 / secs,
            self.connections_opened,
            self.failure_count()
        )?;
        for (kind, n) in &self.sent {
            let closed = self.closed.get(kind).copied().unwrap_or(0);
            writeln!(f, "  {kind}: {n} ({closed} ended their connection)")?;
        }
        writeln!(
            f,
            "  slowest valid request: {:?} (upstream.timeout {ORIGIN_TIMEOUT:?})",
            self.slowest_valid
        )?;
        let rss = &self.rss;
        writeln!(
            f,
            "  RSS: {} MiB before the load, {} MiB after a quarter of it, {} MiB peak, \
             {} MiB after it",
            rss.before / 1024,
            rss.warm / 1024,
            rss.peak / 1024,
            rss.after / 1024
        )?;
        match &self.count_problem {
            None => writeln!(
                f,
                "  ixproxy_requests_total: one count per request, as predicted"
            )?,
            Some(problem) => writeln!(f, "  ixproxy_requests_total: {problem}")?,
        }
        for (failure, n) in &self.failures {
            writeln!(f, "  FAILED {n}× {failure}")?;
        }
        for example in &self.examples {
            writeln!(f, "  e.g. {example}")?;
        }
        Ok(())
    }
}

/// Runs the soak for `duration` against a fresh `G` and reports what it saw.
///
/// # Errors
/// The origins or the gateway cannot start, or the metrics cannot be read before the load.
pub fn run<G: Gateway>(duration: Duration, work_dir: &Path) -> Result<SoakReport, HarnessError> {
    let origins = Origins::start()?;
    let config = work_dir.join("soak.yaml");
    std::fs::write(&config, config_text()).map_err(|e| HarnessError::io("write config", e))?;
    let gateway = G::start(&config, &[], work_dir)?;
    let addr = gateway.addr();
    let pid = gateway.pid();
    let (admin, metrics_path) = gateway.metrics_endpoint();
    let before = scrape(admin, metrics_path).map_err(HarnessError::Http)?;
    let rss_before = resident_kib(pid).unwrap_or(0);

    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let until = started + duration;
    let (runs, (warm, peak)) = std::thread::scope(|scope| {
        let sampler = {
            let done = done.clone();
            let origins = &origins;
            scope.spawn(move || {
                let (mut warm, mut peak) = (None, rss_before);
                let warmed = started + duration / 4;
                // Bounded by the duration, plus slack for the last exchanges.
                let limit = until + EXCHANGE_TIMEOUT * 2;
                while !done.load(Ordering::SeqCst) && Instant::now() < limit {
                    let rss = resident_kib(pid).unwrap_or(0);
                    peak = peak.max(rss);
                    if warm.is_none() && Instant::now() >= warmed {
                        warm = Some(rss);
                    }
                    // The recording origin keeps every request; nothing here reads them.
                    origins.recording.clear();
                    std::thread::sleep(RSS_INTERVAL);
                }
                (warm.unwrap_or(peak), peak)
            })
        };
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|connection| {
                let origins = &origins;
                scope.spawn(move || run_connection(addr, origins, connection, until))
            })
            .collect();
        let runs: Vec<ConnectionRun> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect();
        done.store(true, Ordering::SeqCst);
        (runs, sampler.join().unwrap_or((0, 0)))
    });
    let elapsed = started.elapsed();

    let mut sent = BTreeMap::new();
    let mut expected_outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failures = BTreeMap::new();
    let mut examples = Vec::new();
    let mut closed = BTreeMap::new();
    let mut slowest_valid = Duration::ZERO;
    let (mut opened, mut counted) = (0, 0);
    for run in runs {
        for (kind, n) in run.sent {
            *sent.entry(kind).or_insert(0) += n;
        }
        for (outcome, n) in run.outcomes {
            *expected_outcomes.entry(outcome).or_insert(0) += n;
        }
        for (failure, n) in run.failures {
            *failures.entry(failure).or_insert(0) += n;
        }
        examples.extend(run.examples);
        slowest_valid = slowest_valid.max(run.slowest_valid);
        for (kind, n) in run.closed {
            *closed.entry(kind).or_insert(0) += n;
        }
        opened += run.opened;
        counted += run.counted;
    }
    let expected = Deltas::of(Outcome::ALL.iter().flat_map(|outcome| {
        let n = expected_outcomes
            .get(outcome.as_str())
            .copied()
            .unwrap_or(0);
        std::iter::repeat_n(*outcome, usize::try_from(n).unwrap_or(0))
    }));
    let count_problem = await_deltas(admin, metrics_path, G::NAME, &before, &expected)
        .err()
        .map(|m| format!("{} ({counted} requests reached the gateway)", m.problem));
    let rss_after = resident_kib(pid).unwrap_or(0);
    Ok(SoakReport {
        runtime: G::NAME,
        elapsed,
        sent,
        connections_opened: opened,
        closed,
        slowest_valid,
        failures,
        examples,
        count_problem,
        rss: Rss {
            before: rss_before,
            warm,
            peak: peak.max(rss_after),
            after: rss_after,
        },
    })
}

/// What the gateway's resident memory must stay within during a soak.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBound {
    /// The highest resident memory allowed at any sample, in MiB.
    pub peak_mib: u64,
    /// How much the peak may exceed the memory after a quarter of the load, in MiB: memory
    /// that keeps growing under a steady load is a leak, whatever the absolute figure.
    pub growth_mib: u64,
}

/// Runs the soak against `G` for [`duration`] and panics unless every request got its answer,
/// the outcome counts match, and the gateway's resident memory stayed within `bound`.
pub fn assert_soak<G: Gateway>(bound: MemoryBound) {
    let dir = tempfile::Builder::new()
        .prefix("ixproxy-soak-")
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir: {e}"));
    let report =
        run::<G>(duration(), dir.path()).unwrap_or_else(|e| panic!("{}: soak: {e}", G::NAME));
    let rss = report.rss;
    let mut problems = Vec::new();
    if report.failure_count() > 0 {
        problems.push(format!("{} requests failed", report.failure_count()));
    }
    if let Some(problem) = &report.count_problem {
        problems.push(problem.clone());
    }
    if rss.peak == 0 || rss.warm == 0 {
        problems.push("the gateway's RSS could not be read".to_owned());
    }
    if rss.peak > bound.peak_mib * 1024 {
        problems.push(format!(
            "peak RSS {} MiB over the bound of {} MiB",
            rss.peak / 1024,
            bound.peak_mib
        ));
    }
    if rss.peak.saturating_sub(rss.warm) > bound.growth_mib * 1024 {
        problems.push(format!(
            "RSS grew from {} MiB to {} MiB under a steady load (bound: +{} MiB)",
            rss.warm / 1024,
            rss.peak / 1024,
            bound.growth_mib
        ));
    }
    if report.sent.len() < 1 + HOSTILE.len() + FAULTY.len() {
        problems.push(format!(
            "the run was too short to send every kind of request once ({DURATION_ENV}={})",
            duration().as_secs()
        ));
    }
    assert!(
        problems.is_empty(),
        "{} soak: {}\n{report}",
        G::NAME,
        problems.join("; ")
    );
    // The figures of a passing run, for `--nocapture`.
    eprintln!("{report}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_fixed_and_one_percent_hostile_one_percent_faulty() {
        let first: Vec<Kind> = {
            let mut s = Schedule::new(3);
            (0..1000).map(|_| s.next()).collect()
        };
        let again: Vec<Kind> = {
            let mut s = Schedule::new(3);
            (0..1000).map(|_| s.next()).collect()
        };
        assert_eq!(first, again);
        let hostile = first
            .iter()
            .filter(|k| matches!(k, Kind::Hostile(_)))
            .count();
        let faulty = first
            .iter()
            .filter(|k| matches!(k, Kind::Faulty(_)))
            .count();
        assert_eq!((hostile, faulty), (10, 10));
        for kind in HOSTILE {
            assert!(first.contains(&Kind::Hostile(kind)), "{kind:?}");
        }
        for kind in FAULTY {
            assert!(first.contains(&Kind::Faulty(kind)), "{kind:?}");
        }
    }

    #[test]
    fn the_asset_path_is_read_back_from_the_signed_target() {
        let origins = Origins::start().expect("origins");
        let req = origins.request(Kind::Asset, 2, 41);
        assert_eq!(req_origin_path(&req), "/asset/soak/2/41");
    }
}
