//! Origin connections that cannot be steered into the private network.
//!
//! The origin name is resolved once, asynchronously; every resolved address is checked against
//! the SSRF deny list (unless the source allows private origins) and the peer is built from a
//! checked [`SocketAddr`], so Pingora never resolves the name again: a DNS answer that changes
//! between check and connect (rebinding) cannot reach a private address.
//!
//! When a connection to one address fails, the next checked address of the same answer is
//! tried (a name resolving to `::1` and `127.0.0.1`, a dual-stack origin down on one family).
//!
//! Policy: a name is refused when **any** of its addresses is denied. Skipping the denied ones
//! would let whoever controls the origin's DNS mix a private address into the answer and keep
//! probing; public origins never publish private addresses, so refusing costs nothing real.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ixproxy_core::addr::is_denied_ip;
use ixproxy_core::config::Upstream;
use ixproxy_core::OriginUrl;
use pingora::protocols::tls::CaType;
use pingora::tls::{load_native_certs, CertificateDer, RootCertStore};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long an idle pooled origin connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why no origin address may be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name did not resolve (or resolved to nothing).
    #[error("origin host does not resolve: {0}")]
    NotFound(String),
    /// Resolution took longer than the connect timeout.
    #[error("origin host resolution timed out")]
    TimedOut,
    /// An address of the origin is private, loopback or otherwise not public.
    #[error("origin address is private, loopback or otherwise not public")]
    Denied,
}

/// Resolves `host:port` and returns the addresses to try, in resolver order.
///
/// An IP literal is used as it is. A name is looked up with the system resolver (on Tokio's
/// blocking pool, bounded by `timeout`). Unless `allow_private`, every resolved address must
/// pass [`is_denied_ip`]. At most [`MAX_CANDIDATES`] addresses are returned: the gateway falls
/// back to the next one when a connection attempt fails.
///
/// # Errors
/// [`ResolveError::NotFound`], [`ResolveError::TimedOut`] or [`ResolveError::Denied`].
pub async fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let lookup = tokio::net::lookup_host((host, port));
            match tokio::time::timeout(timeout, lookup).await {
                Err(_) => return Err(ResolveError::TimedOut),
                Ok(Err(e)) => return Err(ResolveError::NotFound(e.to_string())),
                Ok(Ok(found)) => found.collect(),
            }
        }
    };
    check_addresses(&addrs, allow_private)
}

/// How many resolved addresses one origin request may try.
pub const MAX_CANDIDATES: usize = 3;

/// Applies the deny policy to a resolved address set and returns the addresses to try
/// (duplicates removed, at most [`MAX_CANDIDATES`]).
///
/// # Errors
/// [`ResolveError::NotFound`] for an empty set, [`ResolveError::Denied`] when any address is
/// denied and `allow_private` is false.
pub fn check_addresses(
    addrs: &[SocketAddr],
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    if addrs.is_empty() {
        return Err(ResolveError::NotFound("no address".to_owned()));
    }
    if !allow_private && addrs.iter().any(|a| is_denied_ip(a.ip())) {
        return Err(ResolveError::Denied);
    }
    let mut candidates: Vec<SocketAddr> = Vec::with_capacity(MAX_CANDIDATES);
    for addr in addrs {
        if candidates.len() == MAX_CANDIDATES {
            break;
        }
        if !candidates.contains(addr) {
            candidates.push(*addr);
        }
    }
    Ok(candidates)
}

/// Builds the Pingora peer for a checked address.
///
/// SNI and certificate host name are the origin host (verification on); the SNI also keys the
/// connection pool, so two origin names on one address never share a connection. `ca` replaces
/// Pingora's default trust store for this peer (see [`load_trust_anchors`]).
///
/// `remaining` is what is left of the request's total origin budget (`upstream.timeout` from
/// the first resolution): the TCP connect (also bounded by `connect_timeout`), the TLS
/// handshake and every single read or write of this attempt are bounded by it, so a stalled
/// origin cannot outlive the budget by more than one read started just before it ran out.
pub fn build_peer(
    addr: SocketAddr,
    origin: &OriginUrl,
    upstream: &Upstream,
    ca: Option<&Arc<CaType>>,
    remaining: Duration,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, origin.is_https(), origin.host.clone());
    let budget = upstream.timeout.min(remaining);
    let options = &mut peer.options;
    options.connection_timeout = Some(upstream.connect_timeout.min(budget));
    options.total_connection_timeout = Some(budget);
    options.read_timeout = Some(budget);
    options.write_timeout = Some(budget);
    options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
    options.verify_cert = true;
    options.verify_hostname = true;
    options.ca = ca.cloned();
    peer
}

/// Why the trust store could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The `upstream.ca_file` could not be read.
    #[error("upstream.ca_file: cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The file holds no usable certificate.
    #[error("upstream.ca_file: {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// The trust anchors for https origins when `upstream.ca_file` is set: the system roots plus
/// every certificate of the file. `None` without a `ca_file` (Pingora then uses the system
/// roots itself).
///
/// Pingora's rustls connector replaces, rather than extends, its trust store with a peer's
/// `ca` list, so the system roots are included here explicitly. Every certificate is checked
/// to be acceptable as a root now, so a bad one fails at start instead of on each connection.
///
/// # Errors
/// The file is unreadable, not PEM, holds no certificate, or a certificate is not acceptable.
pub fn load_trust_anchors(ca_file: Option<&str>) -> Result<Option<Arc<CaType>>, CaError> {
    let Some(path) = ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| CaError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let invalid = |message: String| CaError::Invalid {
        path: path.to_owned(),
        message,
    };
    let extra: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("not a pem certificate file: {e}")))?;
    if extra.is_empty() {
        return Err(invalid("no certificate found".to_owned()));
    }
    let mut anchors = Vec::new();
    for (i, der) in extra.into_iter().enumerate() {
        let cert = to_wrapped(der).map_err(|e| invalid(format!("certificate {i}: {e}")))?;
        anchors.push(cert);
    }
    // A system root that rustls or the X.509 parser refuses is skipped, as Pingora would
    // fail every handshake on it otherwise.
    let system = load_native_certs().unwrap_or_default();
    let system_count = system.len();
    anchors.extend(system.into_iter().filter_map(|der| to_wrapped(der).ok()));
    log::info!(
        "trusting {} system roots plus {path} for https origins",
        system_count
    );
    Ok(Some(Arc::from(anchors)))
}

fn to_wrapped(der: CertificateDer<'static>) -> Result<WrappedX509, String> {
    let mut probe = RootCertStore::empty();
    probe.add(der.clone()).map_err(|e| e.to_string())?;
    WrappedX509::try_new(der.to_vec(), |raw| {
        X509Certificate::from_der(raw)
            .map(|(_, cert)| cert)
            .map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_private_is_allowed() {
        assert_eq!(
            resolve_checked("localhost", 8080, false, T).await,
            Err(ResolveError::Denied)
        );
        let addrs = resolve_checked("localhost", 8080, true, T)
            .await
            .expect("localhost resolves");
        assert!(!addrs.is_empty());
        for addr in addrs {
            assert!(addr.ip().is_loopback(), "{addr}");
            assert_eq!(addr.port(), 8080);
        }
    }

    #[tokio::test]
    async fn ip_literals_are_checked_without_lookup() {
        assert_eq!(
            resolve_checked("169.254.169.254", 80, false, T).await,
            Err(ResolveError::Denied)
        );
        assert_eq!(
            resolve_checked("::1", 80, false, T).await,
            Err(ResolveError::Denied)
        );
        assert_eq!(
            resolve_checked("8.8.8.8", 443, false, T).await,
            Ok(vec![SocketAddr::from(([8, 8, 8, 8], 443))])
        );
    }

    #[tokio::test]
    async fn an_unknown_name_is_not_found() {
        assert!(matches!(
            resolve_checked("does-not-exist.invalid", 80, true, T).await,
            Err(ResolveError::NotFound(_))
        ));
    }

    #[test]
    fn one_denied_address_refuses_the_whole_answer() {
        let public = SocketAddr::from(([93, 184, 215, 14], 80));
        let private = SocketAddr::from(([10, 0, 0, 7], 80));
        assert_eq!(check_addresses(&[public], false), Ok(vec![public]));
        assert_eq!(
            check_addresses(&[public, private], false),
            Err(ResolveError::Denied)
        );
        assert_eq!(
            check_addresses(&[private, public, private], true),
            Ok(vec![private, public])
        );
        let many: Vec<SocketAddr> = (1..=5u8)
            .map(|i| SocketAddr::from(([93, 184, 215, i], 80)))
            .collect();
        assert_eq!(
            check_addresses(&many, false).map(|c| c.len()),
            Ok(MAX_CANDIDATES)
        );
        assert!(matches!(
            check_addresses(&[], true),
            Err(ResolveError::NotFound(_))
        ));
    }

    #[test]
    fn the_peer_connects_to_the_checked_address_with_sni_and_timeouts() {
        let origin =
            ixproxy_core::origin::parse_origin("https://img.example.com/a.png").expect("origin");
        let upstream = Upstream {
            ca_file: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(7),
        };
        let addr = SocketAddr::from(([93, 184, 215, 14], 443));
        let peer = build_peer(addr, &origin, &upstream, None, Duration::from_secs(60));
        assert_eq!(peer.sni, "img.example.com");
        assert!(peer.is_tls());
        assert_eq!(peer._address.to_string(), addr.to_string());
        assert_eq!(
            peer.options.connection_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(7)));
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        // Late attempts only get what is left of the total budget.
        let late = build_peer(addr, &origin, &upstream, None, Duration::from_millis(300));
        for t in [
            late.options.connection_timeout,
            late.options.total_connection_timeout,
            late.options.read_timeout,
            late.options.write_timeout,
        ] {
            assert_eq!(t, Some(Duration::from_millis(300)));
        }

        let other =
            ixproxy_core::origin::parse_origin("https://cdn.example.com/a.png").expect("origin");
        let other_peer = build_peer(addr, &other, &upstream, None, upstream.timeout);
        use pingora::upstreams::peer::Peer;
        assert_ne!(
            peer.reuse_hash(),
            other_peer.reuse_hash(),
            "two origin names on one address must not share pooled connections"
        );
    }

    #[test]
    fn ca_file_errors_name_the_field() {
        let err = load_trust_anchors(Some("/nonexistent/ca.pem")).expect_err("missing file");
        assert!(err.to_string().starts_with("upstream.ca_file: "), "{err}");
        let dir = std::env::temp_dir().join(format!("ixproxy-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = load_trust_anchors(empty.to_str()).expect_err("no certificate");
        assert!(err.to_string().contains("no certificate found"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load_trust_anchors(None).expect("no ca_file").is_none());
    }
}
