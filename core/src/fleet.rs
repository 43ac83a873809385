//! Purge across the fleet (SPEC §16, README: Caching, *Purge across the fleet*): with
//! `cache.peers`, a purge on one instance (`POST /cache/purge?url=…` or imgix's purge API) is
//! applied here, then on every peer's admin listener, and the answer lists the peers that
//! confirmed and those that failed.
//!
//! Everything but the I/O is here: the peer-only request a purge is forwarded as (it is applied
//! locally only, so a forwarded purge is never fanned out again), the peer's answer and how it
//! is read, how an instance recognises itself among the addresses of a headless Service (every
//! process draws an instance id; a peer answers with its own, and an answer carrying the
//! asker's id came from the asker), the timeouts, and the status and text of the answer. The
//! runtime resolves names, connects, writes [`peer_request`] and feeds what it reads to
//! [`read_peer_answer`].
//!
//! Trust: the peer path is as unauthenticated as `/cache/purge` and can purge no more than it
//! (one URL under one source, or under every source), so reaching the admin listener is what
//! it takes, as for `/cache/purge`. A purge through imgix's API is forwarded as the entries it
//! resolved to (source and origin URL), never with the API key: peers trust each other on the
//! admin network, which only the fleet and operators reach.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::cache::{one_param, purge_url, PurgeError};
use crate::config::{Config, ConfigWarning, PeerAddr, Peers};

/// The admin path of a forwarded purge: `POST /cache/purge/peer?url=<percent-encoded origin
/// URL>[&source=<percent-encoded source name>]`, applied on the instance that receives it and
/// nowhere else.
pub const PEER_PATH: &str = "/cache/purge/peer";

/// One peer must be connected to and have answered within this (a purge is a map lookup on the
/// peer: a peer slower than this is as good as down for the caller waiting on the answer).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// `cache.peers.dns` must resolve within this. With the peers asked concurrently, a whole purge
/// takes at most `RESOLVE_TIMEOUT + PEER_TIMEOUT`.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);

/// The most peers one purge asks; further addresses of a DNS answer are reported failed,
/// never silently skipped.
pub const MAX_PEERS: usize = 256;

/// The most purges one instance fans out at once. Each holds up to [`MAX_PEERS`] connections
/// for up to `RESOLVE_TIMEOUT + PEER_TIMEOUT`; a purge beyond this is refused before it is
/// applied anywhere ([`busy_text`], 503 with `Retry-After`), so that whoever reaches the admin
/// listener cannot make it hold an unbounded number of sockets (at most
/// `MAX_PURGES_IN_FLIGHT * MAX_PEERS` peer connections, whatever arrives).
pub const MAX_PURGES_IN_FLIGHT: usize = 4;

/// The status of a purge refused because [`MAX_PURGES_IN_FLIGHT`] are under way: nothing was
/// purged, retrying later is the answer.
pub const BUSY_STATUS: u16 = 503;

/// The status of a purge applied here and on every peer asked (or with no peers).
pub const PURGED_STATUS: u16 = 200;

/// The answer of `/cache/purge` without `cache.peers`: [`PURGED_STATUS`] and `purged N`, the
/// entries removed (the first line of [`FleetReport::text`] too).
pub fn purge_answer(purged: usize) -> (u16, String) {
    (PURGED_STATUS, format!("purged {purged}\n"))
}

/// The `Retry-After` (seconds) of a refused purge: the longest a purge in flight keeps its
/// place (`RESOLVE_TIMEOUT + PEER_TIMEOUT`).
pub const RETRY_AFTER: &str = "3";

/// The body of `/cache/purge`'s 503 when [`MAX_PURGES_IN_FLIGHT`] are under way.
pub fn busy_text() -> String {
    // The imgix API's refusal states the same rule in its `detail`.
    format!("{}\n", crate::purge_api::PurgeApiError::Busy)
}

/// The largest peer answer read (the answer is two short lines and a small head).
pub const MAX_ANSWER_BYTES: usize = 4096;

/// The longest part of a peer's refusal quoted in the answer.
const MAX_QUOTED_CHARS: usize = 120;

/// The id an instance draws once at start: 32 lowercase hex characters from 16 random bytes.
/// It tells this instance apart from its peers in a DNS answer that lists it too.
pub fn instance_id(random: [u8; 16]) -> String {
    crate::hex::encode(&random, crate::hex::LOWER)
}

/// What a forwarded purge removes: the origin URL (normalised, as a purge names it) under one
/// source, or under every source the peer serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPurge {
    /// The normalised origin URL.
    pub url: String,
    /// The source whose entry goes (imgix's purge API); `None`: every source's
    /// (`/cache/purge`).
    pub source: Option<String>,
}

/// The request target of a forwarded purge.
pub fn peer_target(purge: &PeerPurge) -> String {
    let mut target = format!(
        "{PEER_PATH}?url={}",
        utf8_percent_encode(&purge.url, NON_ALPHANUMERIC)
    );
    if let Some(source) = &purge.source {
        target.push_str("&source=");
        target.extend(utf8_percent_encode(source, NON_ALPHANUMERIC));
    }
    target
}

/// The whole HTTP/1.1 request a purge is forwarded as, to the peer `host` (its `Host`: the
/// peer as the answer names it, a `host:port` checked by the config or a socket address).
/// `Connection: close`: one request per connection, the answer is read to its
/// `Content-Length`.
pub fn peer_request(purge: &PeerPurge, host: &str) -> Vec<u8> {
    format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ixproxy/{}\r\nContent-Length: \
         0\r\nConnection: close\r\n\r\n",
        peer_target(purge),
        env!("CARGO_PKG_VERSION"),
    )
    .into_bytes()
}

/// Reads a forwarded purge (the peer side): `None` when `path` is not [`PEER_PATH`].
///
/// # Errors
/// As [`crate::cache::parse_purge`] for the method and `url`; [`PurgeError::BadUrl`] for a repeated `source`
/// or one that is not UTF-8 once decoded.
pub fn parse_peer_purge(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Option<Result<PeerPurge, PurgeError>> {
    if path != PEER_PATH {
        return None;
    }
    Some(peer_purge(method, query))
}

fn peer_purge(method: &str, query: Option<&str>) -> Result<PeerPurge, PurgeError> {
    // The `url` rules are the purge's own (other parameters are ignored there).
    let url = purge_url(method, query)?;
    let source = match one_param(query, "source=") {
        Ok(None) => None,
        Ok(Some(raw)) => Some(
            percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| PurgeError::BadUrl("source: not utf-8 after decoding".to_owned()))?
                .into_owned(),
        ),
        Err(()) => return Err(PurgeError::BadUrl("source: given twice".to_owned())),
    };
    Ok(PeerPurge { url, source })
}

/// The body of a peer's 200: the entries it removed and its instance id, one per line.
pub fn peer_answer(purged: usize, instance: &str) -> String {
    format!("purged {purged}\ninstance {instance}\n")
}

/// A peer's answer, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReply {
    /// The entries the peer removed.
    pub purged: usize,
    /// The peer's instance id.
    pub instance: String,
}

/// Reads what a peer sent so far: `None` while the answer is incomplete (read more, unless the
/// connection ended: then it is a failure), else the peer's reply or why it is not one.
///
/// # Errors
/// (inside the `Some`) a message for the answer: a status other than 200 (with the start of
/// the peer's reason), an answer over [`MAX_ANSWER_BYTES`], or one that is not a peer answer.
pub fn read_peer_answer(bytes: &[u8]) -> Option<Result<PeerReply, String>> {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (bytes.len() >= MAX_ANSWER_BYTES).then(|| Err(answer_too_large()));
    };
    let (head, body) = (&bytes[..head_end], &bytes[head_end + 4..]);
    let Ok(head) = std::str::from_utf8(head) else {
        return Some(Err(unreadable()));
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status else {
        return Some(Err(unreadable()));
    };
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Some(Err(unreadable()));
        }
    }
    let Some(length) = length else {
        return Some(Err(unreadable()));
    };
    if head_end + 4 + length > MAX_ANSWER_BYTES {
        return Some(Err(answer_too_large()));
    }
    let body = body.get(..length)?;
    let text = String::from_utf8_lossy(body);
    if status != 200 {
        return Some(Err(format!("answered {status}: {}", quoted(&text))));
    }
    let mut purged = None;
    let mut instance = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("purged ") {
            purged = n.parse().ok();
        } else if let Some(id) = line.strip_prefix("instance ") {
            instance = Some(id.to_owned());
        }
    }
    Some(match (purged, instance) {
        (Some(purged), Some(instance)) => Ok(PeerReply { purged, instance }),
        _ => Err(format!(
            "answered 200 but not a peer purge: {}",
            quoted(&text)
        )),
    })
}

/// The failure of a peer whose answer exceeds [`MAX_ANSWER_BYTES`].
pub fn answer_too_large() -> String {
    format!("answer over {MAX_ANSWER_BYTES} bytes")
}

fn unreadable() -> String {
    "answer is not a readable HTTP/1.1 response".to_owned()
}

/// The first line of a peer's text, at most [`MAX_QUOTED_CHARS`] printable ASCII characters
/// (it is written into an answer line and a JSON string).
fn quoted(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_QUOTED_CHARS)
        .collect()
}

/// A configured peer that needs no resolution: an IP literal's socket address.
pub fn literal(peer: &PeerAddr) -> Option<SocketAddr> {
    peer.host
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, peer.port))
}

/// The peers of a DNS answer: every distinct address, in address order, at most [`MAX_PEERS`];
/// the second list holds the addresses left out (each reported failed).
pub fn dns_peers(mut resolved: Vec<SocketAddr>) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    resolved.sort_unstable();
    resolved.dedup();
    let rest = resolved.split_off(resolved.len().min(MAX_PEERS));
    (resolved, rest)
}

/// The failure of an address left out by [`dns_peers`].
pub fn not_asked() -> String {
    format!("not asked: the name resolves to more than {MAX_PEERS} addresses")
}

/// The failure of a peer that did not answer within `timeout` ([`PEER_TIMEOUT`]).
pub fn timed_out(timeout: Duration) -> String {
    format!("no answer within {} seconds", timeout.as_secs_f32())
}

/// The failure of a peer whose name (`cache.peers.dns`, or a `static` entry) does not resolve:
/// the resolver's `error`.
pub fn not_resolved(host: &str, error: impl std::fmt::Display) -> String {
    format!("cannot resolve {host}: {error}")
}

/// The failure of a `static` peer whose name resolves to no address.
pub fn no_address(host: &str) -> String {
    format!("{host} resolves to no address")
}

/// The failure of a peer that could not be connected to, written to or read from: the kind of
/// the I/O error (`connection refused`), never the OS's text (it varies by system).
pub fn io_failed(kind: std::io::ErrorKind) -> String {
    kind.to_string()
}

/// The failure of one address of a `static` peer's name, the last one tried: [`io_failed`]
/// preceded by the address.
pub fn address_failed(addr: SocketAddr, kind: std::io::ErrorKind) -> String {
    format!("{addr}: {}", io_failed(kind))
}

/// The failure of a peer that closed the connection before its answer was whole.
pub fn closed_early() -> String {
    "the connection closed before a whole answer".to_owned()
}

/// The failure of a peer whose request task ended without an answer (it panicked): kept in
/// the answer so that the peer is listed, never dropped.
pub fn task_failed() -> String {
    "the request task failed".to_owned()
}

/// The failure of `cache.peers.dns` that did not resolve within [`RESOLVE_TIMEOUT`].
pub fn resolve_timed_out() -> String {
    format!(
        "not resolved within {} seconds",
        RESOLVE_TIMEOUT.as_secs_f32()
    )
}

/// What one peer did with a forwarded purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerResult {
    /// The peer applied it and removed this many entries.
    Confirmed(usize),
    /// The peer could not be resolved, reached or read, or refused: why.
    Failed(String),
    /// The address is this instance's own (a DNS answer lists every replica): not a peer,
    /// neither confirmed nor failed, but listed (a fleet where only `self` answers, e.g.
    /// `dns` naming a Service that reaches one random pod, shows as such).
    Myself,
    /// The peer answered with the instance id of the peer named here, asked earlier in the
    /// same purge: one instance reachable at two addresses (a name and its IP, a pod's A and
    /// AAAA). Counted once, as that peer's result.
    Same(String),
}

impl PeerResult {
    /// Every `ixproxy_purge_peer_requests_total{result}` label.
    pub const LABELS: [&'static str; 4] = ["confirmed", "failed", "self", "same"];

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            PeerResult::Confirmed(_) => Self::LABELS[0],
            PeerResult::Failed(_) => Self::LABELS[1],
            PeerResult::Myself => Self::LABELS[2],
            PeerResult::Same(_) => Self::LABELS[3],
        }
    }
}

/// What a purge did on the fleet: each peer asked (named as configured, or by address for a
/// DNS answer) and its result, in the order asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetReport {
    /// Each peer and its result.
    pub peers: Vec<(String, PeerResult)>,
}

impl FleetReport {
    /// The report of the answers of one purge (each peer asked, in order, and its reply or
    /// why there is none) for the instance `own`: an answer with `own`'s id is
    /// [`PeerResult::Myself`]; one with the id of an earlier answer is [`PeerResult::Same`]
    /// as that peer.
    pub fn of(answers: Vec<(String, Result<PeerReply, String>)>, own: &str) -> FleetReport {
        let mut seen: Vec<(String, String)> = Vec::new();
        let peers = answers
            .into_iter()
            .map(|(peer, answer)| {
                let result = match answer {
                    Err(e) => PeerResult::Failed(e),
                    Ok(reply) if reply.instance == own => PeerResult::Myself,
                    Ok(reply) => match seen.iter().find(|(id, _)| *id == reply.instance) {
                        Some((_, first)) => PeerResult::Same(first.clone()),
                        None => {
                            seen.push((reply.instance, peer.clone()));
                            PeerResult::Confirmed(reply.purged)
                        }
                    },
                };
                (peer, result)
            })
            .collect();
        FleetReport { peers }
    }

    /// The peers that confirmed, with the entries each removed.
    pub fn confirmed(&self) -> impl Iterator<Item = (&str, usize)> {
        self.peers.iter().filter_map(|(peer, r)| match r {
            PeerResult::Confirmed(n) => Some((peer.as_str(), *n)),
            _ => None,
        })
    }

    /// The peers that failed, with why.
    pub fn failed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.peers.iter().filter_map(|(peer, r)| match r {
            PeerResult::Failed(e) => Some((peer.as_str(), e.as_str())),
            _ => None,
        })
    }

    /// The answer's status: 200 when every peer confirmed (or there was none but this
    /// instance), 502 when one failed: the purge is applied here and on the peers that
    /// confirmed, but an instance may still serve the entry, and a retry is safe.
    pub fn status(&self) -> u16 {
        if self.failed().next().is_some() {
            502
        } else {
            PURGED_STATUS
        }
    }

    /// The body of `/cache/purge`'s answer: the first line as without peers (`purged N`, the
    /// entries removed here), a summary, then one line per peer asked, this instance's own
    /// address and a second address of an instance included:
    ///
    /// ```text
    /// purged 1
    /// peers confirmed 1 failed 1
    /// peer 10.0.0.6:9901 self
    /// peer 10.0.0.7:9901 confirmed purged 1
    /// peer [fd00::7]:9901 same instance as 10.0.0.7:9901
    /// peer 10.0.0.8:9901 failed: connection refused
    /// ```
    pub fn text(&self, purged: usize) -> String {
        let (_, mut text) = purge_answer(purged);
        text.push_str(&format!(
            "peers confirmed {} failed {}\n",
            self.confirmed().count(),
            self.failed().count()
        ));
        for (peer, result) in &self.peers {
            match result {
                PeerResult::Confirmed(n) => {
                    text.push_str(&format!("peer {peer} confirmed purged {n}\n"));
                }
                PeerResult::Failed(e) => text.push_str(&format!("peer {peer} failed: {e}\n")),
                PeerResult::Myself => text.push_str(&format!("peer {peer} self\n")),
                PeerResult::Same(first) => {
                    text.push_str(&format!("peer {peer} same instance as {first}\n"));
                }
            }
        }
        text
    }

    /// The JSON of the report, for imgix's purge API's `meta.peers`: `{confirmed: [{peer,
    /// purged}], failed: [{peer, error}], self: [peer], same: [{peer, same_as}]}`.
    pub fn json(&self) -> Value {
        let confirmed: Vec<Value> = self
            .confirmed()
            .map(|(peer, purged)| json!({ "peer": peer, "purged": purged }))
            .collect();
        let failed: Vec<Value> = self
            .failed()
            .map(|(peer, error)| json!({ "peer": peer, "error": error }))
            .collect();
        let myself: Vec<&str> = self
            .peers
            .iter()
            .filter(|(_, r)| *r == PeerResult::Myself)
            .map(|(peer, _)| peer.as_str())
            .collect();
        let same: Vec<Value> = self
            .peers
            .iter()
            .filter_map(|(peer, r)| match r {
                PeerResult::Same(first) => Some(json!({ "peer": peer, "same_as": first })),
                _ => None,
            })
            .collect();
        json!({ "confirmed": confirmed, "failed": failed, "self": myself, "same": same })
    }

    /// One line for the 502's `detail`: how many peers failed out of how many asked.
    pub fn failure_summary(&self) -> String {
        let failed = self.failed().count();
        let asked = failed + self.confirmed().count();
        let first = self
            .failed()
            .next()
            .map(|(peer, e)| format!(" ({peer}: {e})"))
            .unwrap_or_default();
        format!("purged on this instance; {failed} of {asked} peers failed{first}")
    }
}

/// The warning for `cache.peers` with an `admin_listen` on loopback while a peer may be on
/// another host (a name, or an address that is not loopback): such a peer's forwarded purges
/// cannot reach this instance.
pub fn warnings(config: &Config) -> Vec<ConfigWarning> {
    let admin = config.admin_listen;
    let Some(peers) = config.cache.as_ref().and_then(|c| c.peers.as_ref()) else {
        return Vec::new();
    };
    let elsewhere = |p: &PeerAddr| !literal(p).is_some_and(|a| a.ip().to_canonical().is_loopback());
    let remote = match peers {
        Peers::Dns(_) => true,
        Peers::Static(list) => list.iter().any(elsewhere),
    };
    if !admin.ip().to_canonical().is_loopback() || !remote {
        return Vec::new();
    }
    vec![ConfigWarning {
        path: "cache.peers".into(),
        message: format!(
            "admin_listen {admin} is a loopback address: peers on other hosts cannot forward \
             their purges to this instance (listen on an address the fleet reaches, and let \
             only the fleet reach it)"
        ),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{parse_purge, PURGE_PATH};

    fn purge(source: Option<&str>) -> PeerPurge {
        PeerPurge {
            url: "https://o.test/a b.png?x=1&y=2".to_owned(),
            source: source.map(str::to_owned),
        }
    }

    fn split_target(target: &str) -> (&str, &str) {
        target.split_once('?').expect("query")
    }

    #[test]
    fn a_forwarded_purge_reads_back_on_the_peer_path_only() {
        for p in [purge(None), purge(Some("a&b=c"))] {
            let target = peer_target(&p);
            let (path, query) = split_target(&target);
            assert_eq!(path, PEER_PATH);
            let read = parse_peer_purge("POST", path, Some(query)).expect("peer path");
            // The URL is normalised by the purge's rules (the space is encoded).
            assert_eq!(
                read,
                Ok(PeerPurge {
                    url: "https://o.test/a%20b.png?x=1&y=2".to_owned(),
                    source: p.source.clone()
                })
            );
        }
        // The peer path is not the purge path, and the purge path is not the peer path: a
        // forwarded purge can never be taken for one that fans out.
        let target = peer_target(&purge(None));
        let (_, query) = split_target(&target);
        assert_eq!(parse_peer_purge("POST", PURGE_PATH, Some(query)), None);
        assert_eq!(parse_purge("POST", PEER_PATH, Some(query)), None);
    }

    #[test]
    fn a_bad_forwarded_purge_is_refused() {
        let q = "url=https%3A%2F%2Fo.test%2F";
        assert_eq!(
            parse_peer_purge("GET", PEER_PATH, Some(q)),
            Some(Err(PurgeError::Method))
        );
        assert_eq!(
            parse_peer_purge("POST", PEER_PATH, None),
            Some(Err(PurgeError::MissingUrl))
        );
        let twice = format!("{q}&source=a&source=b");
        assert!(matches!(
            parse_peer_purge("POST", PEER_PATH, Some(&twice)),
            Some(Err(PurgeError::BadUrl(_)))
        ));
        let bad = format!("{q}&source=%FF");
        assert!(matches!(
            parse_peer_purge("POST", PEER_PATH, Some(&bad)),
            Some(Err(PurgeError::BadUrl(_)))
        ));
    }

    #[test]
    fn the_request_is_one_post_with_no_body() {
        let request =
            String::from_utf8(peer_request(&purge(Some("s")), "10.0.0.7:9901")).expect("utf-8");
        assert!(
            request.starts_with("POST /cache/purge/peer?url=https%3A%2F%2Fo%2Etest%2F"),
            "{request}"
        );
        assert!(request.contains("&source=s HTTP/1.1\r\nHost: 10.0.0.7:9901\r\n"));
        assert!(request.ends_with("Content-Length: 0\r\nConnection: close\r\n\r\n"));
    }

    fn answer(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn a_peer_answer_is_read_once_complete() {
        let full = answer("200 OK", &peer_answer(3, "abc"));
        for cut in 0..full.len() {
            assert_eq!(read_peer_answer(&full[..cut]), None, "incomplete at {cut}");
        }
        assert_eq!(
            read_peer_answer(&full),
            Some(Ok(PeerReply {
                purged: 3,
                instance: "abc".to_owned()
            }))
        );
    }

    #[test]
    fn a_refusal_or_a_stranger_is_a_failure() {
        let refused = read_peer_answer(&answer("404 Not Found", "no cache configured\n"));
        assert_eq!(
            refused,
            Some(Err("answered 404: no cache configured".to_owned()))
        );
        let control = read_peer_answer(&answer("500 X", "a\u{1b}[31mb\r\nsecond"));
        assert_eq!(control, Some(Err("answered 500: a[31mb".to_owned())));
        let stranger = read_peer_answer(&answer("200 OK", "ok\n"));
        assert!(matches!(stranger, Some(Err(e)) if e.contains("not a peer purge")));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(read_peer_answer(chunked), Some(Err(unreadable())));
        assert_eq!(
            read_peer_answer(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Some(Err(unreadable()))
        );
        let endless = vec![b'x'; MAX_ANSWER_BYTES];
        assert_eq!(read_peer_answer(&endless), Some(Err(answer_too_large())));
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n";
        assert_eq!(read_peer_answer(huge), Some(Err(answer_too_large())));
    }

    fn reply(purged: usize, instance: &str) -> Result<PeerReply, String> {
        Ok(PeerReply {
            purged,
            instance: instance.to_owned(),
        })
    }

    #[test]
    fn an_answer_with_the_own_instance_id_is_self_and_a_known_id_is_the_same_instance() {
        let report = FleetReport::of(
            vec![
                ("10.0.0.6:9901".into(), reply(1, "me")),
                ("peer-7:9901".into(), reply(1, "you")),
                ("10.0.0.8:9901".into(), Err("connection refused".into())),
                ("10.0.0.7:9901".into(), reply(0, "you")),
                ("[::1]:9901".into(), reply(0, "me")),
                ("10.0.0.9:9901".into(), reply(2, "other")),
            ],
            "me",
        );
        assert_eq!(
            report.peers,
            vec![
                ("10.0.0.6:9901".into(), PeerResult::Myself),
                ("peer-7:9901".into(), PeerResult::Confirmed(1)),
                (
                    "10.0.0.8:9901".into(),
                    PeerResult::Failed("connection refused".into())
                ),
                (
                    "10.0.0.7:9901".into(),
                    PeerResult::Same("peer-7:9901".into())
                ),
                ("[::1]:9901".into(), PeerResult::Myself),
                ("10.0.0.9:9901".into(), PeerResult::Confirmed(2)),
            ]
        );
        // One instance at two addresses is one confirmation, not two.
        assert_eq!(report.confirmed().count(), 2);
        let labels: Vec<&str> = report.peers.iter().map(|(_, r)| r.label()).collect();
        assert_eq!(
            labels,
            ["self", "confirmed", "failed", "same", "self", "confirmed"]
        );
        assert_eq!(instance_id([0xab; 16]), "ab".repeat(16));
    }

    #[test]
    fn a_purge_beyond_the_bound_is_told_when_to_retry() {
        let retry: u64 = RETRY_AFTER.parse().expect("seconds");
        assert_eq!(retry, (RESOLVE_TIMEOUT + PEER_TIMEOUT).as_secs());
        assert_eq!(BUSY_STATUS, 503);
        assert_eq!(
            busy_text(),
            "not purged: 4 purges are being forwarded to the fleet already; retry in 3 \
             seconds\n"
        );
        assert_eq!(
            timed_out(Duration::from_millis(250)),
            "no answer within 0.25 seconds"
        );
    }

    #[test]
    fn a_purge_without_peers_answers_the_first_line_of_one_with_peers() {
        let (status, text) = purge_answer(3);
        assert_eq!((status, text.as_str()), (200, "purged 3\n"));
        let report = FleetReport {
            peers: vec![("10.0.0.7:9901".into(), PeerResult::Confirmed(1))],
        };
        assert_eq!(report.status(), status);
        assert!(report.text(3).starts_with(&text), "{}", report.text(3));
    }

    #[test]
    fn each_failure_names_what_failed_and_the_io_error_by_kind() {
        use std::io::ErrorKind;
        let addr: SocketAddr = "[::1]:9901".parse().expect("addr");
        assert_eq!(
            not_resolved("peer-1", "no such host"),
            "cannot resolve peer-1: no such host"
        );
        assert_eq!(no_address("peer-1"), "peer-1 resolves to no address");
        assert_eq!(
            io_failed(ErrorKind::ConnectionRefused),
            "connection refused"
        );
        assert_eq!(
            address_failed(addr, ErrorKind::ConnectionRefused),
            "[::1]:9901: connection refused"
        );
        assert_eq!(
            closed_early(),
            "the connection closed before a whole answer"
        );
        assert_eq!(task_failed(), "the request task failed");
        assert_eq!(answer_too_large(), "answer over 4096 bytes");
        // `closed_early` is for a peer that hangs up while the core still waits for more.
        let half = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npurged";
        assert_eq!(read_peer_answer(half), None);
    }

    #[test]
    fn a_dns_answer_is_deduplicated_and_bounded() {
        let addr = |i: u32| SocketAddr::new(IpAddr::from(std::net::Ipv4Addr::from(i)), 9901);
        let (asked, left) = dns_peers(vec![addr(3), addr(1), addr(3), addr(2)]);
        assert_eq!((asked, left), (vec![addr(1), addr(2), addr(3)], vec![]));
        let many: Vec<SocketAddr> = (0..MAX_PEERS as u32 + 2).rev().map(addr).collect();
        let (asked, left) = dns_peers(many);
        assert_eq!(asked.len(), MAX_PEERS);
        assert_eq!(
            left,
            vec![addr(MAX_PEERS as u32), addr(MAX_PEERS as u32 + 1)]
        );
        let v6 = PeerAddr {
            host: "::1".into(),
            port: 9,
        };
        assert_eq!(literal(&v6), Some("[::1]:9".parse().expect("addr")));
        let name = PeerAddr {
            host: "peer-1".into(),
            port: 9,
        };
        assert_eq!(literal(&name), None);
    }

    #[test]
    fn the_report_lists_every_peer_and_self_is_neither_confirmed_nor_failed() {
        let report = FleetReport {
            peers: vec![
                ("10.0.0.6:9901".into(), PeerResult::Myself),
                ("10.0.0.7:9901".into(), PeerResult::Confirmed(1)),
                (
                    "[fd00::7]:9901".into(),
                    PeerResult::Same("10.0.0.7:9901".into()),
                ),
                (
                    "10.0.0.8:9901".into(),
                    PeerResult::Failed("connection refused".into()),
                ),
            ],
        };
        assert_eq!(report.status(), 502);
        assert_eq!(
            report.text(2),
            "purged 2\npeers confirmed 1 failed 1\npeer 10.0.0.6:9901 self\npeer 10.0.0.7:9901 \
             confirmed purged 1\npeer [fd00::7]:9901 same instance as 10.0.0.7:9901\npeer \
             10.0.0.8:9901 failed: connection refused\n"
        );
        assert_eq!(
            report.json(),
            json!({"confirmed": [{"peer": "10.0.0.7:9901", "purged": 1}],
                   "failed": [{"peer": "10.0.0.8:9901", "error": "connection refused"}],
                   "self": ["10.0.0.6:9901"],
                   "same": [{"peer": "[fd00::7]:9901", "same_as": "10.0.0.7:9901"}]})
        );
        assert_eq!(
            report.failure_summary(),
            "purged on this instance; 1 of 2 peers failed (10.0.0.8:9901: connection refused)"
        );
        // Only itself answering is a success (200), shown as such.
        let alone = FleetReport {
            peers: vec![("10.0.0.6:9901".into(), PeerResult::Myself)],
        };
        assert_eq!(alone.status(), 200);
        assert_eq!(
            alone.text(0),
            "purged 0\npeers confirmed 0 failed 0\npeer 10.0.0.6:9901 self\n"
        );
        assert_eq!(alone.json()["self"], json!(["10.0.0.6:9901"]));
    }

    #[test]
    fn peers_elsewhere_with_a_loopback_admin_listener_are_warned_about() {
        use crate::config::{MapSecrets, RawConfig};
        let paths = |admin: &str, peers: &str| -> Vec<String> {
            let config = RawConfig::from_yaml(&format!(
                "admin_listen: '{admin}'\ncache: {{peers: {peers}}}\nsources: [{{name: a, \
                 hosts: [a.test], secure_url_tokens: [0123456789abcdef]}}]\n"
            ))
            .and_then(|raw| raw.validate(&MapSecrets::new()))
            .expect("valid");
            warnings(&config).into_iter().map(|w| w.path).collect()
        };
        assert_eq!(
            paths("127.0.0.1:9901", "{dns: 'h.svc:9901'}"),
            ["cache.peers"]
        );
        assert_eq!(
            paths("127.0.0.1:9901", "{static: ['127.0.0.2:1', 'peer-2:9901']}"),
            ["cache.peers"]
        );
        assert_eq!(
            paths("127.0.0.1:9901", "{static: ['10.0.0.7:9901']}"),
            ["cache.peers"]
        );
        assert!(paths("127.0.0.1:9901", "{static: ['127.0.0.2:1', '[::1]:2']}").is_empty());
        assert!(paths("0.0.0.0:9901", "{dns: 'h.svc:9901'}").is_empty());
    }
}
