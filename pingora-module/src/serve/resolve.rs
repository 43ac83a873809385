//! Origin name resolution for the native gateway.
//!
//! Names are resolved by an asynchronous stub resolver (hickory) that never blocks a thread: a
//! name server that does not answer costs a pending future and one lookup slot until the
//! lookup's own timeout, never a thread of a pool that other origins need. On top of it:
//!
//! - `/etc/hosts` (and IP literals) answer first, without a lookup slot;
//! - a bounded cache ([`CACHE_ENTRIES`] answers, within their DNS TTLs: the resolver's own);
//! - in-flight coalescing: concurrent lookups of one name share one query;
//! - at most `max_lookups` names looked up at once ([`MAX_LOOKUPS_IN_FLIGHT`] in `serve`); a
//!   lookup waiting for a slot counts its wait against its timeout.
//!
//! The core checks every resolved address ([`ixproxy_core::Forward::check_resolved`]: one
//! denied address refuses the whole answer) and the peer is built from a checked
//! [`SocketAddr`] (see [`super::peer`]), so Pingora never resolves the name again: a DNS answer
//! that changes between check and connect (rebinding) cannot reach a private address.
//!
//! When a connection to one address fails, the next address of the same answer is tried (a
//! name resolving to `::1` and `127.0.0.1`, a dual-stack origin down on one family).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Hosts, TokioResolver};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// Answers the resolver keeps (a bounded LRU; entries also expire with their TTL).
pub const CACHE_ENTRIES: u64 = 1024;
/// Names looked up at once by `ixproxy serve`.
pub const MAX_LOOKUPS_IN_FLIGHT: usize = 256;

/// Why no origin address was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name did not resolve (or resolved to nothing).
    #[error("origin host does not resolve: {0}")]
    NotFound(String),
    /// No answer within the lookup's timeout (a slot wait included).
    #[error("origin host resolution timed out")]
    TimedOut,
}

type Answer = Result<Arc<[IpAddr]>, ResolveError>;

/// The origin resolver: hosts file, then a coalesced, cached, bounded DNS lookup.
#[derive(Clone)]
pub struct OriginResolver {
    inner: Arc<Inner>,
}

struct Inner {
    hosts: Hosts,
    dns: TokioResolver,
    timeout: Duration,
    slots: Arc<Semaphore>,
    pending: parking_lot::Mutex<HashMap<String, watch::Receiver<Option<Answer>>>>,
}

impl OriginResolver {
    /// The system's resolver: name servers, search domains and options from `/etc/resolv.conf`,
    /// names from `/etc/hosts`; every lookup bounded by `timeout`.
    ///
    /// # Errors
    /// The system resolver configuration cannot be read.
    pub fn system(timeout: Duration) -> Result<Self, String> {
        let (config, opts) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
        // A missing hosts file is an empty one, as for the system resolver.
        let hosts = Hosts::from_system().unwrap_or_default();
        Self::new(config, opts, hosts, timeout, MAX_LOOKUPS_IN_FLIGHT)
    }

    /// A resolver over `config` (name servers, search domains) with `opts` (ndots and the
    /// like; timeout, cache and strategy are set here) and `hosts`, each lookup bounded by
    /// `timeout`, at most `max_lookups` names looked up at once.
    ///
    /// # Errors
    /// The resolver cannot be built.
    pub fn new(
        config: ResolverConfig,
        mut opts: ResolverOpts,
        hosts: Hosts,
        timeout: Duration,
        max_lookups: usize,
    ) -> Result<Self, String> {
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.cache_size = CACHE_ENTRIES;
        // Every address of the answer: the core checks them all, and both families are tried.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // The hosts file is read here, before a lookup slot is taken.
        opts.use_hosts_file = ResolveHosts::Never;
        let dns = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| format!("cannot build the resolver: {e}"))?;
        Ok(OriginResolver {
            inner: Arc::new(Inner {
                hosts,
                dns,
                timeout,
                slots: Arc::new(Semaphore::new(max_lookups.max(1))),
                pending: parking_lot::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Resolves `host:port` and returns every address, in answer order.
    ///
    /// An IP literal is used as it is; a name in the hosts file gets its addresses there; any
    /// other name is looked up in DNS, waiting at most `budget` (and never longer than the
    /// resolver's own timeout).
    ///
    /// # Errors
    /// [`ResolveError::NotFound`] (also for an empty answer) or [`ResolveError::TimedOut`].
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        budget: Duration,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        let ips: Arc<[IpAddr]> = if let Ok(ip) = host.parse::<IpAddr>() {
            Arc::from([ip])
        } else {
            let key = host.to_ascii_lowercase();
            match self.inner.hosts_file(&key) {
                Some(ips) => ips,
                None => self.lookup(key, budget.min(self.inner.timeout)).await?,
            }
        };
        if ips.is_empty() {
            return Err(ResolveError::NotFound("no address".to_owned()));
        }
        Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }

    /// The DNS answer for `name`, shared with every concurrent lookup of it.
    async fn lookup(&self, name: String, wait: Duration) -> Answer {
        let mut answer = {
            let mut pending = self.inner.pending.lock();
            match pending.get(&name) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    pending.insert(name.clone(), rx.clone());
                    // Its own task: the answer reaches every waiter even when the request that
                    // started the lookup is gone.
                    let inner = Arc::clone(&self.inner);
                    tokio::spawn(async move {
                        let found = inner.query(&name).await;
                        // Removed before the answer is sent: a later lookup asks the cache.
                        inner.pending.lock().remove(&name);
                        let _ = tx.send(Some(found));
                    });
                    rx
                }
            }
        };
        let found = match tokio::time::timeout(wait, answer.wait_for(Option::is_some)).await {
            Ok(Ok(found)) => found.clone(),
            // Timed out, or the lookup task was dropped (runtime shutting down).
            Ok(Err(_)) | Err(_) => None,
        };
        found.unwrap_or(Err(ResolveError::TimedOut))
    }
}

impl Inner {
    /// The hosts file's addresses for `name` (IPv4 first), if it lists the name.
    fn hosts_file(&self, name: &str) -> Option<Arc<[IpAddr]>> {
        let name = Name::from_ascii(name).ok()?;
        let mut ips = Vec::new();
        for record_type in [RecordType::A, RecordType::AAAA] {
            let query = Query::query(name.clone(), record_type);
            if let Some(lookup) = self.hosts.lookup_static_host(&query) {
                ips.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                    _ => None,
                }));
            }
        }
        (!ips.is_empty()).then(|| Arc::from(ips))
    }

    /// One DNS lookup of `name`: a slot, then the query, within the resolver's timeout.
    async fn query(&self, name: &str) -> Answer {
        let deadline = Instant::now() + self.timeout;
        let Ok(Ok(_slot)) =
            tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned()).await
        else {
            return Err(ResolveError::TimedOut);
        };
        match tokio::time::timeout_at(deadline, self.dns.lookup_ip(name)).await {
            Err(_) => Err(ResolveError::TimedOut),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => {
                Err(ResolveError::NotFound(e.to_string()))
            }
            Ok(Err(NetError::Timeout)) => Err(ResolveError::TimedOut),
            Ok(Err(e)) => Err(ResolveError::NotFound(e.to_string())),
            Ok(Ok(found)) => Ok(found.iter().collect()),
        }
    }
}

/// How many resolved addresses one origin request may try.
pub const MAX_CANDIDATES: usize = 3;

/// The addresses to try, from a checked answer: duplicates removed, at most
/// [`MAX_CANDIDATES`], in resolver order.
pub fn candidates(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(MAX_CANDIDATES);
    for addr in addrs {
        if out.len() == MAX_CANDIDATES {
            break;
        }
        if !out.contains(addr) {
            out.push(*addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_resolver::config::{ConnectionConfig, NameServerConfig};
    use tokio::net::UdpSocket;
    use tokio::task::JoinSet;

    use super::*;

    const T: Duration = Duration::from_secs(2);

    /// A resolver asking only the loopback name server at `port`, with `extra_hosts` as its
    /// hosts file.
    fn resolver(port: u16, extra_hosts: &str, timeout: Duration, slots: usize) -> OriginResolver {
        let mut udp = ConnectionConfig::udp();
        udp.port = port;
        let server = NameServerConfig::new(IpAddr::from([127, 0, 0, 1]), true, vec![udp]);
        let mut hosts = Hosts::default();
        hosts
            .read_hosts_conf(extra_hosts.as_bytes())
            .expect("hosts");
        OriginResolver::new(
            ResolverConfig::from_name_servers(vec![server]),
            ResolverOpts::default(),
            hosts,
            timeout,
            slots,
        )
        .expect("resolver")
    }

    /// Queries seen by a [`FakeDns`], by type.
    #[derive(Default)]
    struct Seen {
        a: AtomicUsize,
        aaaa: AtomicUsize,
    }

    /// A loopback UDP name server: answers `nx*` names with NXDOMAIN and every other name with
    /// 127.0.0.1 / ::1 (TTL 300) after `delay`; counts the queries. Serves at most 200.
    async fn fake_dns(delay: Duration) -> (u16, Arc<Seen>, tokio::task::JoinHandle<()>) {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let port = socket.local_addr().expect("addr").port();
        let seen = Arc::new(Seen::default());
        let counts = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            for _ in 0..200 {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Some(reply) = answer(&buf[..n], &counts) else {
                    continue;
                };
                let socket = Arc::clone(&socket);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&reply, from).await;
                });
            }
        });
        (port, seen, task)
    }

    /// The reply to one query (header, the question as sent, at most one answer).
    fn answer(query: &[u8], seen: &Seen) -> Option<Vec<u8>> {
        let mut end = 12;
        let mut first_label = Vec::new();
        while *query.get(end)? != 0 {
            let len = usize::from(query[end]);
            if first_label.is_empty() {
                first_label = query.get(end + 1..end + 1 + len)?.to_vec();
            }
            end += 1 + len;
        }
        let question = query.get(12..end + 5)?;
        let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
        let nx = first_label.starts_with(b"nx");
        let rdata: Vec<u8> = match qtype {
            1 => {
                seen.a.fetch_add(1, Ordering::SeqCst);
                vec![127, 0, 0, 1]
            }
            28 => {
                seen.aaaa.fetch_add(1, Ordering::SeqCst);
                let mut v6 = vec![0u8; 16];
                v6[15] = 1;
                v6
            }
            _ => return None,
        };
        let mut reply = Vec::new();
        reply.extend_from_slice(&query[..2]);
        reply.extend_from_slice(if nx { &[0x81, 0x83] } else { &[0x81, 0x80] });
        reply.extend_from_slice(&[0, 1, 0, u8::from(!nx), 0, 0, 0, 0]);
        reply.extend_from_slice(question);
        if !nx {
            reply.extend_from_slice(&[0xc0, 0x0c]);
            reply.extend_from_slice(&qtype.to_be_bytes());
            reply.extend_from_slice(&[0, 1, 0, 0, 0x01, 0x2c]);
            reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            reply.extend_from_slice(&rdata);
        }
        Some(reply)
    }

    #[tokio::test]
    async fn literals_and_hosts_names_resolve_without_dns() {
        // Port 9 on loopback: nothing answers there, and nothing may be asked.
        let r = resolver(9, "127.0.0.2 alias.test\n::1 alias.test\n", T, 4);
        assert_eq!(
            r.resolve("8.8.8.8", 443, T).await,
            Ok(vec![SocketAddr::from(([8, 8, 8, 8], 443))])
        );
        assert_eq!(
            r.resolve("::1", 80, T).await,
            Ok(vec![SocketAddr::from((
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                80
            ))])
        );
        let alias = r.resolve("ALIAS.test", 8080, T).await.expect("hosts name");
        assert_eq!(
            alias,
            [
                SocketAddr::from(([127, 0, 0, 2], 8080)),
                SocketAddr::from((IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 8080)),
            ]
        );
        // The system's own hosts file names localhost.
        let system = OriginResolver::system(T).expect("system resolver");
        let local = system.resolve("localhost", 80, T).await.expect("localhost");
        assert!(local.iter().all(|a| a.ip().is_loopback() && a.port() == 80));
        let alias = ixproxy_conformance::harness::loopback_alias();
        let found = system.resolve(&alias, 80, T).await.expect("loopback alias");
        assert!(found.iter().all(|a| a.ip().is_loopback()), "{found:?}");
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_query_and_answers_are_cached() {
        let (port, seen, server) = fake_dns(Duration::from_millis(300)).await;
        let r = resolver(port, "", T, 4);
        let mut lookups = JoinSet::new();
        for _ in 0..20 {
            let r = r.clone();
            lookups.spawn(async move { r.resolve("origin.test", 80, T).await });
        }
        while let Some(done) = lookups.join_next().await {
            let addrs = done.expect("task").expect("resolves");
            assert_eq!(
                addrs,
                [
                    SocketAddr::from(([127, 0, 0, 1], 80)),
                    SocketAddr::from((IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 80)),
                ]
            );
        }
        let counts = || {
            (
                seen.a.load(Ordering::SeqCst),
                seen.aaaa.load(Ordering::SeqCst),
            )
        };
        assert_eq!(
            counts(),
            (1, 1),
            "20 concurrent lookups, one query per type"
        );
        // Later lookups are answered from the cache.
        r.resolve("origin.test", 443, T).await.expect("cached");
        assert_eq!(counts(), (1, 1));
        r.resolve("other.test", 80, T).await.expect("another name");
        assert_eq!(counts(), (2, 2));
        assert!(matches!(
            r.resolve("nx.test", 80, T).await,
            Err(ResolveError::NotFound(_))
        ));
        server.abort();
    }

    #[tokio::test]
    async fn a_silent_name_server_times_out_and_does_not_stall_other_origins() {
        // Bound, never read: queries to it are never answered.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let timeout = Duration::from_millis(500);
        let r = resolver(port, "127.0.0.1 alias.test\n", timeout, 2);
        let started = Instant::now();
        let mut stuck = JoinSet::new();
        // More names than lookup slots: the waits count against each lookup's timeout.
        for i in 0..6 {
            let r = r.clone();
            stuck.spawn(async move { r.resolve(&format!("stuck{i}.test"), 80, T).await });
        }
        tokio::task::yield_now().await;
        // Meanwhile, literals and hosts names are answered at once.
        for host in ["127.0.0.1", "alias.test"] {
            let found = r.resolve(host, 80, T).await.expect(host);
            assert_eq!(found, [SocketAddr::from(([127, 0, 0, 1], 80))]);
        }
        assert!(started.elapsed() < Duration::from_millis(200));
        assert_eq!(stuck.len(), 6);
        while let Some(done) = stuck.join_next().await {
            assert_eq!(done.expect("task"), Err(ResolveError::TimedOut));
        }
        let took = started.elapsed();
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(700),
            "{took:?}"
        );
        // A caller's shorter budget ends its own wait sooner.
        let quick = Instant::now();
        assert_eq!(
            r.resolve("stuck-again.test", 80, Duration::from_millis(100))
                .await,
            Err(ResolveError::TimedOut)
        );
        assert!(quick.elapsed() < Duration::from_millis(400));
        drop(silent);
    }

    #[test]
    fn candidates_are_deduplicated_and_bounded() {
        let public = SocketAddr::from(([93, 184, 215, 14], 80));
        let private = SocketAddr::from(([10, 0, 0, 7], 80));
        assert_eq!(
            candidates(&[private, public, private]),
            vec![private, public]
        );
        let many: Vec<SocketAddr> = (1..=5u8)
            .map(|i| SocketAddr::from(([93, 184, 215, i], 80)))
            .collect();
        assert_eq!(candidates(&many).len(), MAX_CANDIDATES);
    }
}
