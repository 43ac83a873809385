//! The Pingora peer for a checked origin address, and the trust anchors for https origins.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ixproxy_core::config::Upstream;
use ixproxy_core::OriginUrl;
use pingora::protocols::tls::CaType;
use pingora::tls::{load_native_certs, CertificateDer, RootCertStore};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long an idle pooled origin connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the Pingora peer for a checked address.
///
/// SNI and certificate host name are the origin host (verification on); the SNI also keys the
/// connection pool, so two origin names on one address never share a connection. `ca` replaces
/// Pingora's default trust store for this peer (see [`load_trust_anchors`]).
///
/// `remaining` is what is left of the request's origin-header budget (`upstream.timeout` from
/// the first resolution): the TCP connect (also bounded by `connect_timeout`), the TLS
/// handshake and each write of the request are bounded by it. Each read, of the response
/// header and of the body alike, is bounded by `upstream.body_timeout`: that is the longest
/// pause allowed inside an origin body, and the only limit a long download meets (a read
/// waits only while the origin is silent, not while a slow client holds the transfer back).
/// The header as a whole is bounded by the deadline (see [`super::deadline`]).
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
    options.read_timeout = Some(upstream.body_timeout);
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

    #[test]
    fn the_peer_connects_to_the_checked_address_with_sni_and_timeouts() {
        let origin =
            ixproxy_core::origin::parse_origin("https://img.example.com/a.png").expect("origin");
        let upstream = Upstream {
            ca_file: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(7),
            body_timeout: Duration::from_secs(30),
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
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(30)));
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        // Late attempts only get what is left of the total budget.
        let late = build_peer(addr, &origin, &upstream, None, Duration::from_millis(300));
        for t in [
            late.options.connection_timeout,
            late.options.total_connection_timeout,
            late.options.write_timeout,
        ] {
            assert_eq!(t, Some(Duration::from_millis(300)));
        }
        // The body's pauses are never bounded by what is left of the header budget.
        assert_eq!(late.options.read_timeout, Some(Duration::from_secs(30)));

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
