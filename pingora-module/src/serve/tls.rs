//! HTTPS on the gateway listener (README: TLS and HTTP/2): the certificate and key of `tls:`,
//! read at start and again on every reload, served through Pingora's rustls acceptor (whose
//! handshake [`super::client`] runs once it has admitted a connection).
//!
//! Pingora's `TlsSettings` can load a cert/key pair from files only once, when the listener is
//! built, and then panics on a bad file. So ixproxy reads and checks both files itself
//! ([`TlsCerts::load`], a clean `tls.cert_file: …` / `tls.key_file: …` error before anything
//! is served) and installs a rustls certificate resolver (`TlsSettings::set_cert_resolver`)
//! that hands every handshake the pair held at that moment. [`TlsCerts::reload`] swaps that
//! pair: handshakes after it get the new certificate, established connections keep the one
//! they negotiated (rustls asks the resolver once per handshake), and a bad new file keeps the
//! old pair. ALPN offers `h2` then `http/1.1`.

use std::sync::Arc;

use ixproxy_core::config::TlsFiles;
use parking_lot::RwLock;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::protocols::ALPN;
use pingora::tls::install_default_crypto_provider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;

/// The certificate and key the gateway listener serves: a cheap handle, shared by the
/// listener's resolver and whoever reloads it (clones share one pair).
#[derive(Debug, Clone)]
pub struct TlsCerts {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

/// The listener's view of a [`TlsCerts`]: rustls asks it for the pair once per handshake.
#[derive(Debug)]
struct Resolver(TlsCerts);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current.read()))
    }
}

impl TlsCerts {
    /// Reads and checks `files` (see [`read_pair`]).
    ///
    /// # Errors
    /// As [`read_pair`]: the message starts with the field (`tls.cert_file` or `tls.key_file`).
    pub fn load(files: &TlsFiles) -> Result<Self, String> {
        let pair = read_pair(files)?;
        Ok(TlsCerts {
            current: Arc::new(RwLock::new(Arc::new(pair))),
        })
    }

    /// Reads `files` again and, if they hold a valid pair, serves it to every handshake from
    /// now on; connections already established keep the certificate they negotiated.
    ///
    /// # Errors
    /// As [`read_pair`]; the pair served until now stays in place.
    // Called by the SIGHUP reload (wired in `serve`'s reload, not here) and by the tests.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), String> {
        let pair = read_pair(files)?;
        *self.current.write() = Arc::new(pair);
        Ok(())
    }

    /// A Pingora TLS acceptor that serves these certificates, offering `h2` and `http/1.1`
    /// through ALPN.
    pub fn acceptor(&self) -> Acceptor {
        // With a resolver, `intermediate`'s file paths are never read (and cannot fail).
        let mut settings = match TlsSettings::intermediate("", "") {
            Ok(settings) => settings,
            Err(e) => unreachable!("TlsSettings::intermediate only copies its arguments: {e}"),
        };
        settings.set_cert_resolver(Arc::new(Resolver(self.clone())));
        settings.set_alpn(ALPN::H2H1);
        // With a resolver and no offload pool, `build` has nothing that can fail.
        settings.build()
    }
}

/// Reads the PEM certificate chain and private key of `files` and checks they belong together.
///
/// # Errors
/// `tls.cert_file: …` when the certificate file cannot be read, holds no certificate or its
/// leaf certificate cannot be parsed; `tls.key_file: …` when the key file cannot be read, holds
/// no (or an unsupported) private key, or the key is not the leaf certificate's. Messages name
/// the file, never its contents.
pub fn read_pair(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let TlsFiles {
        cert_file,
        key_file,
    } = files;
    let cert_pem = std::fs::read(cert_file)
        .map_err(|e| format!("tls.cert_file: cannot read {cert_file}: {e}"))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|e| format!("tls.cert_file: {cert_file} is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert_file: no PEM certificate (BEGIN CERTIFICATE) in {cert_file}"
        ));
    }
    let key_pem = std::fs::read(key_file)
        .map_err(|e| format!("tls.key_file: cannot read {key_file}: {e}"))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("tls.key_file: {key_file} is not valid PEM: {e}"))?
        .ok_or_else(|| {
            format!("tls.key_file: no PEM private key (PKCS#8, PKCS#1 or SEC1) in {key_file}")
        })?;
    install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "tls: no rustls crypto provider installed".to_owned())?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key_file: unsupported private key in {key_file}: {e}"))?;
    let pair = CertifiedKey::new(chain, key);
    match pair.keys_match() {
        Ok(()) => Ok(pair),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(format!(
            "tls.key_file: the key in {key_file} is not the key of the certificate in \
                 {cert_file} (tls.cert_file)"
        )),
        // The key type cannot report its public half: nothing to compare, as rustls allows.
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(pair),
        Err(e) => Err(format!(
            "tls.cert_file: the first certificate in {cert_file} cannot be used: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ixproxy_conformance::tls::{Issued, TestCa};
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use pingora::tls::{ClientConfig, RootCertStore, ServerName, TlsConnector};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes `issued` as `cert.pem` / `key.pem` under `dir` (overwriting) and names them.
    fn write_pair(dir: &std::path::Path, issued: &Issued) -> TlsFiles {
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&cert_file, &issued.cert_pem).expect("write cert");
        std::fs::write(&key_file, &issued.key_pem).expect("write key");
        TlsFiles {
            cert_file: cert_file.display().to_string(),
            key_file: key_file.display().to_string(),
        }
    }

    /// A listener on 127.0.0.1 whose connections Pingora's rustls acceptor (built from
    /// `certs`' settings) answers with an echo of each read.
    async fn echo_server(certs: &TlsCerts) -> std::net::SocketAddr {
        let acceptor = certs.acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let acceptor = Arc::new(acceptor);
            // Ends with the test's runtime.
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = Arc::clone(&acceptor);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.tls_handshake(L4Stream::from(tcp)).await else {
                        return;
                    };
                    let mut buf = [0u8; 64];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        let _ = tls.flush().await;
                    }
                });
            }
        });
        addr
    }

    type Client = pingora::tls::ClientTlsStream<tokio::net::TcpStream>;

    /// Connects with TLS trusting only `ca`, offering h2 and http/1.1; returns the stream.
    async fn connect(addr: std::net::SocketAddr, ca: &TestCa) -> Client {
        connect_offering(addr, ca, &[b"h2", b"http/1.1"]).await
    }

    /// Connects with TLS trusting only `ca`, offering `alpn`.
    async fn connect_offering(addr: std::net::SocketAddr, ca: &TestCa, alpn: &[&[u8]]) -> Client {
        install_default_crypto_provider();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().into()).expect("ca");
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let connect = TlsConnector::from(Arc::new(config)).connect(name, tcp);
        tokio::time::timeout(std::time::Duration::from_secs(5), connect)
            .await
            .expect("handshake in time")
            .expect("handshake")
    }

    fn served_cert(client: &Client) -> Vec<u8> {
        let (_, conn) = client.get_ref();
        let chain = conn.peer_certificates().expect("server certificate");
        chain[0].as_ref().to_vec()
    }

    async fn echoes(client: &mut Client, what: &[u8]) -> bool {
        let exchange = async {
            client.write_all(what).await?;
            let mut back = vec![0u8; what.len()];
            client.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        };
        let back = tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await;
        matches!(back, Ok(Ok(b)) if b == what)
    }

    #[tokio::test]
    async fn a_reload_serves_the_new_pair_to_new_handshakes_and_keeps_it_on_bad_files() {
        let dir = tempfile_dir("reload");
        let ca = TestCa::generate("tls reload test CA").expect("ca");
        let first = ca.issue_localhost().expect("first");
        let second = ca.issue_localhost().expect("second");
        let files = write_pair(&dir, &first);
        let certs = TlsCerts::load(&files).expect("load");
        let addr = echo_server(&certs).await;

        let mut before = connect(addr, &ca).await;
        assert_eq!(served_cert(&before), first.cert_der);
        assert_eq!(before.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let h1_only = connect_offering(addr, &ca, &[b"http/1.1"]).await;
        assert_eq!(h1_only.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

        write_pair(&dir, &second);
        certs.reload(&files).expect("reload");
        let after = connect(addr, &ca).await;
        assert_eq!(served_cert(&after), second.cert_der);
        // The connection made before the reload keeps its session and still works.
        assert!(echoes(&mut before, b"still here").await);

        // A broken key file: the reload fails naming the field, the second pair stays.
        std::fs::write(&files.key_file, "not a key").expect("break key");
        let err = certs.reload(&files).expect_err("bad key");
        assert!(err.starts_with("tls.key_file: "), "{err}");
        let third = connect(addr, &ca).await;
        assert_eq!(served_cert(&third), second.cert_der);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_are_errors_naming_the_field_without_their_contents() {
        let dir = tempfile_dir("bad");
        let ca = TestCa::generate("tls bad files test CA").expect("ca");
        let issued = ca.issue_localhost().expect("issued");
        let other = ca.issue_localhost().expect("other");
        let files = write_pair(&dir, &issued);
        assert!(read_pair(&files).is_ok());

        let missing = TlsFiles {
            cert_file: dir.join("missing.pem").display().to_string(),
            ..files.clone()
        };
        let err = read_pair(&missing).expect_err("missing cert");
        assert!(err.starts_with("tls.cert_file: cannot read "), "{err}");
        assert!(err.contains("missing.pem"), "{err}");

        // The key file where the certificate should be: no certificate in it.
        let swapped = TlsFiles {
            cert_file: files.key_file.clone(),
            key_file: files.cert_file.clone(),
        };
        let err = read_pair(&swapped).expect_err("no cert");
        assert!(
            err.starts_with("tls.cert_file: no PEM certificate"),
            "{err}"
        );

        // Another certificate's key.
        let other_key = dir.join("other.key");
        std::fs::write(&other_key, &other.key_pem).expect("write");
        let mismatched = TlsFiles {
            key_file: other_key.display().to_string(),
            ..files.clone()
        };
        let err = read_pair(&mismatched).expect_err("mismatch");
        assert!(err.starts_with("tls.key_file: the key in "), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");

        // A PEM certificate block whose contents are not a certificate.
        std::fs::write(
            &files.cert_file,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = read_pair(&files).expect_err("garbage cert");
        assert!(err.starts_with("tls.cert_file: "), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(what: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ixproxy-tls-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }
}
