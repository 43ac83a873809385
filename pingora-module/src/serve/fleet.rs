//! Purge across the fleet (README: Caching, *Purge across the fleet*): the I/O of
//! [`ixproxy_core::fleet`]. A purge applied here is forwarded to every peer of `cache.peers`
//! at once, each on its own connection within [`PEER_TIMEOUT`], and each answer is read by the
//! core's rules; names are resolved off the runtime's threads (tokio's `lookup_host`, the
//! system resolver, as a headless Service is meant to be looked up).
//!
//! Only the admin listener runs this: nothing here is on the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ixproxy_core::config::{PeerAddr, Peers};
use ixproxy_core::fleet::{
    self, FleetReport, PeerPurge, PeerReply, PeerResult, MAX_ANSWER_BYTES, PEER_TIMEOUT,
    RESOLVE_TIMEOUT,
};
use log::warn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinSet;

use super::metrics::Metrics;

/// Looks up a peer's name (an abstraction so tests need no DNS).
#[async_trait]
pub trait PeerResolver: Send + Sync {
    /// Every address `host` resolves to, with `port`.
    ///
    /// # Errors
    /// Why the name does not resolve, as the answer reports it.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool, so `/etc/hosts`, the search
/// domains of `resolv.conf` and the cluster DNS apply as for any program in the pod).
pub struct SystemResolver;

#[async_trait]
impl PeerResolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        tokio::net::lookup_host((host, port))
            .await
            .map(Iterator::collect)
            .map_err(|e| fleet::not_resolved(host, e))
    }
}

/// This instance's side of fleet purges: its instance id (drawn at start, sent back by every
/// peer so that this instance recognises itself), the resolver, the peer counter and the
/// bound on purges in flight ([`fleet::MAX_PURGES_IN_FLIGHT`]).
pub struct Fleet {
    instance: String,
    resolver: Arc<dyn PeerResolver>,
    metrics: Metrics,
    in_flight: Semaphore,
    peer_timeout: Duration,
}

/// A purge's place among the [`fleet::MAX_PURGES_IN_FLIGHT`] (see [`Fleet::admit`]).
pub struct Admitted<'a> {
    _place: SemaphorePermit<'a>,
}

impl Fleet {
    /// The fleet side of an instance counting into `metrics`, resolving with `resolver`.
    pub fn new(metrics: Metrics, resolver: Arc<dyn PeerResolver>) -> Self {
        Fleet {
            instance: fleet::instance_id(rand::random()),
            resolver,
            metrics,
            in_flight: Semaphore::new(fleet::MAX_PURGES_IN_FLIGHT),
            peer_timeout: PEER_TIMEOUT,
        }
    }

    /// The same with a peer timeout other than [`PEER_TIMEOUT`], so that tests of a stalled
    /// peer take milliseconds.
    #[cfg(test)]
    pub fn with_peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = timeout;
        self
    }

    /// This instance's id (what it answers a forwarded purge with).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A place for one purge to fan out, taken before the purge is applied anywhere; `None`
    /// when [`fleet::MAX_PURGES_IN_FLIGHT`] are under way (the purge is refused with 503 and
    /// `Retry-After`). The place is held until the purge's answer is built.
    pub fn admit(&self) -> Option<Admitted<'_>> {
        self.in_flight
            .try_acquire()
            .ok()
            .map(|place| Admitted { _place: place })
    }

    /// Forwards `purge` (already applied here) to every peer of `peers` at once and waits for
    /// all of them: at most [`RESOLVE_TIMEOUT`] for a `dns` name, then the peer timeout for
    /// the peers (a static name is resolved within its peer's time). Each peer is counted in
    /// `ixproxy_purge_peer_requests_total{result}`, and each failed peer logged on one line.
    /// Dropping the future (the caller hung up) closes every connection it opened.
    pub async fn purge(
        &self,
        _admitted: Admitted<'_>,
        peers: &Peers,
        purge: &PeerPurge,
    ) -> FleetReport {
        let mut answers: Vec<(String, Result<PeerReply, String>)> = Vec::new();
        let mut asking = JoinSet::new();
        let mut ask = |label: String, target: Target, answers: &mut Vec<_>| {
            let request = fleet::peer_request(purge, &label);
            let (index, timeout) = (answers.len(), self.peer_timeout);
            asking.spawn(async move {
                let answer = tokio::time::timeout(timeout, exchange(target, request))
                    .await
                    .unwrap_or_else(|_| Err(fleet::timed_out(timeout)));
                (index, answer)
            });
            answers.push((label, Err(fleet::task_failed())));
        };
        match peers {
            Peers::Static(list) => {
                for peer in list {
                    let target = match fleet::literal(peer) {
                        Some(addr) => Target::Addr(addr),
                        None => Target::Name(peer.clone(), Arc::clone(&self.resolver)),
                    };
                    ask(peer.to_string(), target, &mut answers);
                }
            }
            Peers::Dns(name) => {
                let resolved = tokio::time::timeout(
                    RESOLVE_TIMEOUT,
                    self.resolver.resolve(&name.host, name.port),
                )
                .await
                .unwrap_or_else(|_| Err(fleet::resolve_timed_out()));
                match resolved {
                    Ok(addrs) => {
                        let (peers, left) = fleet::dns_peers(addrs);
                        for addr in peers {
                            ask(addr.to_string(), Target::Addr(addr), &mut answers);
                        }
                        for addr in left {
                            answers.push((addr.to_string(), Err(fleet::not_asked())));
                        }
                    }
                    Err(e) => answers.push((name.to_string(), Err(e))),
                }
            }
        }
        // Every task ends within its timeout; a task that panicked keeps its placeholder.
        while let Some(done) = asking.join_next().await {
            if let Ok((index, answer)) = done {
                if let Some(slot) = answers.get_mut(index) {
                    slot.1 = answer;
                }
            }
        }
        let report = FleetReport::of(answers, &self.instance);
        for (peer, result) in &report.peers {
            self.metrics.count_purge_peer(result.label());
            if let PeerResult::Failed(e) = result {
                warn!("fleet purge: peer {peer} failed: {e}");
            }
        }
        report
    }
}

/// Where a peer is: an address, or a static entry's name (each of its addresses is tried in
/// turn until one accepts the connection).
enum Target {
    Addr(SocketAddr),
    Name(PeerAddr, Arc<dyn PeerResolver>),
}

/// Connects, sends `request`, reads the answer until the core can read it.
async fn exchange(target: Target, request: Vec<u8>) -> Result<PeerReply, String> {
    let io = |e: std::io::Error| fleet::io_failed(e.kind());
    let mut stream = match target {
        Target::Addr(addr) => TcpStream::connect(addr).await.map_err(io)?,
        Target::Name(peer, resolver) => {
            // A name with an AAAA and an A record reaches a peer listening on one family
            // only through the other address.
            let addrs = resolver.resolve(&peer.host, peer.port).await?;
            let mut refused = fleet::no_address(&peer.host);
            let mut connected = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => {
                        connected = Some(stream);
                        break;
                    }
                    Err(e) => refused = fleet::address_failed(addr, e.kind()),
                }
            }
            connected.ok_or(refused)?
        }
    };
    stream.write_all(&request).await.map_err(io)?;
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(reply) = fleet::read_peer_answer(&answer) {
            return reply;
        }
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Err(fleet::closed_early());
        }
        answer.extend_from_slice(&buf[..n]);
        // The core refuses an answer over its bound; this only stops a peer that keeps
        // sending after a head the core cannot read yet.
        if answer.len() > 2 * MAX_ANSWER_BYTES {
            return Err(fleet::answer_too_large());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// The peer timeout of these tests: a stalled peer costs this, not [`PEER_TIMEOUT`].
    const TIMEOUT: Duration = Duration::from_millis(200);

    /// Answers whatever `resolve` was given, for any name.
    struct Fixed(Vec<SocketAddr>);

    #[async_trait]
    impl PeerResolver for Fixed {
        async fn resolve(&self, _host: &str, _port: u16) -> Result<Vec<SocketAddr>, String> {
            Ok(self.0.clone())
        }
    }

    /// A peer that answers one forwarded purge with `instance` (after reading its head), or
    /// never answers when `instance` is `None`; returns its address and the request it read.
    async fn peer(instance: Option<String>) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed before the head");
                head.extend_from_slice(&buf[..n]);
            }
            let Some(instance) = instance else {
                // Holds the connection past the peer timeout (the test aborts it).
                tokio::time::sleep(TIMEOUT * 50).await;
                return String::from_utf8_lossy(&head).into_owned();
            };
            let body = fleet::peer_answer(1, &instance);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, task)
    }

    /// A loopback address nothing listens on (bound, then released).
    async fn closed() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn a_dns_answer_is_asked_at_once_self_and_a_second_address_are_no_peers_and_failures_are_reported(
    ) {
        let metrics = Metrics::new().expect("metrics");
        let (other, _) = peer(Some("someone-else".to_owned())).await;
        // The same instance at a second address (a pod's A and AAAA records).
        let (other_again, _) = peer(Some("someone-else".to_owned())).await;
        let (stalled, stalled_task) = peer(None).await;
        let refused = closed().await;
        // This instance's own admin listener, in the DNS answer like every replica's; it
        // answers with the id drawn in `new`.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let own = listener.local_addr().expect("addr");
        let fleet = Fleet::new(
            metrics.clone(),
            Arc::new(Fixed(vec![
                stalled,
                refused,
                other,
                own,
                other_again,
                other,
            ])),
        )
        .with_peer_timeout(TIMEOUT);
        let instance = fleet.instance().to_owned();
        let myself = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf).await;
            let body = fleet::peer_answer(0, &instance);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.expect("write");
        });
        let name = PeerAddr {
            host: "ixproxy-headless".to_owned(),
            port: 9901,
        };
        let purge = PeerPurge {
            url: "https://o.test/a.png".to_owned(),
            source: Some("assets".to_owned()),
        };
        let started = std::time::Instant::now();
        let report = fleet
            .purge(fleet.admit().expect("free"), &Peers::Dns(name), &purge)
            .await;
        let took = started.elapsed();
        myself.await.expect("self answered");

        // Asked in address order: the first of the two addresses confirms, the second is
        // the same instance.
        let (first, second) = (other.min(other_again), other.max(other_again));
        let mut expected = vec![
            (first.to_string(), PeerResult::Confirmed(1)),
            (second.to_string(), PeerResult::Same(first.to_string())),
            (own.to_string(), PeerResult::Myself),
            (
                refused.to_string(),
                PeerResult::Failed("connection refused".into()),
            ),
            (
                stalled.to_string(),
                PeerResult::Failed(fleet::timed_out(TIMEOUT)),
            ),
        ];
        expected.sort_by_key(|(peer, _)| peer.parse::<SocketAddr>().expect("addr"));
        assert_eq!(report.peers, expected, "one entry per distinct address");
        assert_eq!(
            report.confirmed().count(),
            1,
            "one instance, one confirmation"
        );
        // Concurrent: the stalled peer's timeout is the whole wait.
        assert!(took >= TIMEOUT && took < TIMEOUT * 4, "{took:?}");
        stalled_task.abort();
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        for line in [
            "ixproxy_purge_peer_requests_total{result=\"confirmed\"} 1",
            "ixproxy_purge_peer_requests_total{result=\"failed\"} 2",
            "ixproxy_purge_peer_requests_total{result=\"self\"} 1",
            "ixproxy_purge_peer_requests_total{result=\"same\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn a_static_peer_gets_the_forwarded_request_and_a_dead_name_is_reported() {
        struct Unknown;
        #[async_trait]
        impl PeerResolver for Unknown {
            async fn resolve(&self, host: &str, _port: u16) -> Result<Vec<SocketAddr>, String> {
                Err(format!("cannot resolve {host}: not found"))
            }
        }
        let fleet = Fleet::new(Metrics::new().expect("metrics"), Arc::new(Unknown));
        let (addr, task) = peer(Some("p".to_owned())).await;
        let list = vec![
            PeerAddr {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            PeerAddr {
                host: "gone".to_owned(),
                port: 9901,
            },
        ];
        let purge = PeerPurge {
            url: "https://o.test/a.png".to_owned(),
            source: None,
        };
        let report = fleet
            .purge(fleet.admit().expect("free"), &Peers::Static(list), &purge)
            .await;
        assert_eq!(
            report.peers,
            vec![
                (addr.to_string(), PeerResult::Confirmed(1)),
                (
                    "gone:9901".to_owned(),
                    PeerResult::Failed("cannot resolve gone: not found".into())
                ),
            ]
        );
        let head = task.await.expect("peer");
        let expected =
            String::from_utf8(fleet::peer_request(&purge, &addr.to_string())).expect("utf-8");
        assert_eq!(head, expected);

        let dns = Peers::Dns(PeerAddr {
            host: "gone".to_owned(),
            port: 9901,
        });
        let report = fleet
            .purge(fleet.admit().expect("free"), &dns, &purge)
            .await;
        assert_eq!(report.status(), 502, "an unresolved fleet is reported");
        assert_eq!(report.failed().count(), 1);
    }

    /// The report of a purge to the static peer `peer-a:9901`, which resolves to `addrs`.
    async fn purge_peer_a(addrs: Vec<SocketAddr>) -> Vec<(String, PeerResult)> {
        let fleet = Fleet::new(Metrics::new().expect("metrics"), Arc::new(Fixed(addrs)))
            .with_peer_timeout(TIMEOUT);
        let peers = Peers::Static(vec![PeerAddr {
            host: "peer-a".to_owned(),
            port: 9901,
        }]);
        let purge = PeerPurge {
            url: "https://o.test/a.png".to_owned(),
            source: None,
        };
        let admitted = fleet.admit().expect("free");
        fleet.purge(admitted, &peers, &purge).await.peers
    }

    #[tokio::test]
    async fn a_static_name_is_asked_at_each_of_its_addresses_in_turn() {
        let refused = closed().await;
        let (reached, task) = peer(Some("p".to_owned())).await;
        // The first address refuses (a peer listening on the other family): the second is
        // the peer.
        assert_eq!(
            purge_peer_a(vec![refused, reached]).await,
            vec![("peer-a:9901".to_owned(), PeerResult::Confirmed(1))]
        );
        task.await.expect("asked");
        // None accepts: the failure names the last address tried.
        assert_eq!(
            purge_peer_a(vec![refused, refused]).await,
            vec![(
                "peer-a:9901".to_owned(),
                PeerResult::Failed(format!("{refused}: connection refused"))
            )]
        );
    }

    #[tokio::test]
    async fn purges_in_flight_are_bounded() {
        let fleet = Fleet::new(Metrics::new().expect("metrics"), Arc::new(Fixed(vec![])));
        let places: Vec<Admitted<'_>> = (0..fleet::MAX_PURGES_IN_FLIGHT)
            .map(|_| fleet.admit().expect("a free place"))
            .collect();
        assert!(fleet.admit().is_none(), "one more is refused");
        drop(places);
        assert!(fleet.admit().is_some(), "a finished purge frees its place");
    }
}
