//! Origin name resolution for the native gateway.
//!
//! The origin name is resolved once, asynchronously; the core checks every resolved address
//! ([`ixproxy_core::Forward::check_resolved`]: one denied address refuses the whole answer)
//! and the peer is built from a checked [`SocketAddr`] (see [`super::peer`]), so Pingora never
//! resolves the name again: a DNS answer that changes between check and connect (rebinding)
//! cannot reach a private address.
//!
//! When a connection to one address fails, the next address of the same answer is tried (a
//! name resolving to `::1` and `127.0.0.1`, a dual-stack origin down on one family).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Why no origin address was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name did not resolve (or resolved to nothing).
    #[error("origin host does not resolve: {0}")]
    NotFound(String),
    /// Resolution took longer than the connect timeout.
    #[error("origin host resolution timed out")]
    TimedOut,
}

/// Resolves `host:port` and returns every address, in resolver order.
///
/// An IP literal is used as it is. A name is looked up with the system resolver (on Tokio's
/// blocking pool, bounded by `timeout`).
///
/// # Errors
/// [`ResolveError::NotFound`] (also for an empty answer) or [`ResolveError::TimedOut`].
pub async fn resolve(
    host: &str,
    port: u16,
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
    if addrs.is_empty() {
        return Err(ResolveError::NotFound("no address".to_owned()));
    }
    Ok(addrs)
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
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn names_and_literals_resolve_to_every_address() {
        let addrs = resolve("localhost", 8080, T)
            .await
            .expect("localhost resolves");
        assert!(!addrs.is_empty());
        for addr in addrs {
            assert!(addr.ip().is_loopback(), "{addr}");
            assert_eq!(addr.port(), 8080);
        }
        assert_eq!(
            resolve("8.8.8.8", 443, T).await,
            Ok(vec![SocketAddr::from(([8, 8, 8, 8], 443))])
        );
        assert_eq!(
            resolve("::1", 80, T).await,
            Ok(vec![SocketAddr::from((
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                80
            ))])
        );
    }

    #[tokio::test]
    async fn an_unknown_name_is_not_found() {
        assert!(matches!(
            resolve("does-not-exist.invalid", 80, T).await,
            Err(ResolveError::NotFound(_))
        ));
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
