//! HTTPS on the gateway listener (README: TLS and HTTP/2): the certificates of `tls:` (one
//! pair, or `tls.certificates` chosen by SNI), read at start and again on every reload, served
//! through Pingora's rustls acceptor (whose handshake [`super::client`] runs once it has
//! admitted a connection).
//!
//! Pingora's `TlsSettings` can load a cert/key pair from files only once, when the listener is
//! built, and then panics on a bad file; nor can it pick a certificate by SNI. So ixproxy reads
//! and checks the files itself ([`TlsCerts::load`], a clean `tls.cert_file: …` /
//! `tls.certificates[1].key_file: …` error before anything is served) and installs a rustls
//! certificate resolver (`TlsSettings::set_cert_resolver`) that hands every handshake the
//! certificate its SNI picks from the set held at that moment: an exact name, else a `*.`
//! wildcard of the name minus its first label, else the first certificate (also for a client
//! that sends no SNI). [`TlsCerts::reload`] swaps the whole set: handshakes after it get the
//! new certificates, established connections keep the one they negotiated (rustls asks the
//! resolver once per handshake, never per request), and a bad new file keeps the old set. ALPN
//! offers `h2` then `http/1.1` whatever certificate is chosen.

use std::collections::HashMap;
use std::sync::Arc;

use ixproxy_core::config::{Tls, TlsFiles};
use parking_lot::RwLock;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::protocols::ALPN;
use pingora::tls::install_default_crypto_provider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;

/// The certificates the gateway listener serves: a cheap handle, shared by the listener's
/// resolver and whoever reloads it (clones share one set).
#[derive(Debug, Clone)]
pub struct TlsCerts {
    current: Arc<RwLock<Arc<CertSet>>>,
}

/// The certificates of one `tls:` as read, indexed by the SNI names they are chosen for.
#[derive(Debug)]
struct CertSet {
    /// The first certificate: for names no entry lists and for clients without SNI.
    default: Arc<CertifiedKey>,
    /// By exact lower-case name.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the name after `*.` (`example.com` for `*.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    /// Reads every certificate of `tls` (see [`read_pair`]).
    fn read(tls: &Tls) -> Result<Self, String> {
        let mut default = None;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for entry in &tls.certificates {
            let pair = Arc::new(read_pair(&entry.files, &entry.field)?);
            for host in &entry.hosts {
                // The config refuses a name listed twice, so nothing is replaced here.
                match host.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_owned(), Arc::clone(&pair)),
                    None => exact.insert(host.clone(), Arc::clone(&pair)),
                };
            }
            default.get_or_insert(pair);
        }
        let default = default.ok_or_else(|| "tls: no certificate".to_owned())?;
        Ok(CertSet {
            default,
            exact,
            wildcard,
        })
    }

    /// The certificate for a client hello naming `sni` (rustls hands it over lower-cased).
    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        // The single pair of `tls: {cert_file, key_file}` hashes nothing.
        let Some(name) = sni.filter(|_| !(self.exact.is_empty() && self.wildcard.is_empty()))
        else {
            return &self.default;
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(pair) = self.exact.get(name) {
            return pair;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

/// The listener's view of a [`TlsCerts`]: rustls asks it for a certificate once per handshake.
#[derive(Debug)]
struct Resolver(TlsCerts);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.current.read().pick(hello.server_name())))
    }
}

impl TlsCerts {
    /// Reads and checks every certificate of `tls` (see [`read_pair`]).
    ///
    /// # Errors
    /// As [`read_pair`]: the message starts with the field (`tls.cert_file`,
    /// `tls.certificates[1].key_file`, …).
    pub fn load(tls: &Tls) -> Result<Self, String> {
        let set = CertSet::read(tls)?;
        Ok(TlsCerts {
            current: Arc::new(RwLock::new(Arc::new(set))),
        })
    }

    /// Reads `tls` again and, if every file holds a valid pair, serves that set to every
    /// handshake from now on; connections already established keep the certificate they
    /// negotiated.
    ///
    /// # Errors
    /// As [`read_pair`]; the set served until now stays in place.
    // Called by the SIGHUP reload (wired in `serve`'s reload, not here) and by the tests.
    pub fn reload(&self, tls: &Tls) -> Result<(), String> {
        let set = CertSet::read(tls)?;
        *self.current.write() = Arc::new(set);
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

/// Reads every certificate and key of `tls` as `ixproxy serve` would, without serving them
/// (`ixproxy check`).
///
/// # Errors
/// As [`read_pair`], for the first entry that fails.
pub fn check(tls: &Tls) -> Result<(), String> {
    CertSet::read(tls).map(drop)
}

/// Reads the PEM certificate chain and private key of `files`, configured at `field` (`tls`,
/// `tls.certificates[1]`), and checks they belong together.
///
/// # Errors
/// `<field>.cert_file: …` when the certificate file cannot be read, holds no certificate or its
/// leaf certificate cannot be parsed; `<field>.key_file: …` when the key file cannot be read,
/// holds no (or an unsupported) private key, or the key is not the leaf certificate's. Messages
/// name the file, never its contents.
pub fn read_pair(files: &TlsFiles, field: &str) -> Result<CertifiedKey, String> {
    let TlsFiles {
        cert_file,
        key_file,
    } = files;
    let cert_pem = std::fs::read(cert_file)
        .map_err(|e| format!("{field}.cert_file: cannot read {cert_file}: {e}"))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|e| format!("{field}.cert_file: {cert_file} is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "{field}.cert_file: no PEM certificate (BEGIN CERTIFICATE) in {cert_file}"
        ));
    }
    let key_pem = std::fs::read(key_file)
        .map_err(|e| format!("{field}.key_file: cannot read {key_file}: {e}"))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{field}.key_file: {key_file} is not valid PEM: {e}"))?
        .ok_or_else(|| {
            format!("{field}.key_file: no PEM private key (PKCS#8, PKCS#1 or SEC1) in {key_file}")
        })?;
    install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "tls: no rustls crypto provider installed".to_owned())?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{field}.key_file: unsupported private key in {key_file}: {e}"))?;
    let pair = CertifiedKey::new(chain, key);
    match pair.keys_match() {
        Ok(()) => Ok(pair),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(format!(
            "{field}.key_file: the key in {key_file} is not the key of the certificate in \
                 {cert_file} ({field}.cert_file)"
        )),
        // The key type cannot report its public half: nothing to compare, as rustls allows.
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(pair),
        Err(e) => Err(format!(
            "{field}.cert_file: the first certificate in {cert_file} cannot be used: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ixproxy_conformance::tls::{Issued, TestCa};
    use ixproxy_core::config::TlsCertificate;
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

    /// `tls: {cert_file, key_file}` of `files`.
    fn single(files: &TlsFiles) -> Tls {
        Tls {
            certificates: vec![TlsCertificate {
                hosts: Vec::new(),
                files: files.clone(),
                field: "tls".to_owned(),
            }],
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
        let certs = TlsCerts::load(&single(&files)).expect("load");
        let addr = echo_server(&certs).await;

        let mut before = connect(addr, &ca).await;
        assert_eq!(served_cert(&before), first.cert_der);
        assert_eq!(before.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let h1_only = connect_offering(addr, &ca, &[b"http/1.1"]).await;
        assert_eq!(h1_only.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

        write_pair(&dir, &second);
        certs.reload(&single(&files)).expect("reload");
        let after = connect(addr, &ca).await;
        assert_eq!(served_cert(&after), second.cert_der);
        // The connection made before the reload keeps its session and still works.
        assert!(echoes(&mut before, b"still here").await);

        // A broken key file: the reload fails naming the field, the second pair stays.
        std::fs::write(&files.key_file, "not a key").expect("break key");
        let err = certs.reload(&single(&files)).expect_err("bad key");
        assert!(err.starts_with("tls.key_file: "), "{err}");
        let third = connect(addr, &ca).await;
        assert_eq!(served_cert(&third), second.cert_der);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Accepts any server certificate (the SNI tests look at which one was served, including
    /// to names it does not cover); signatures are still checked.
    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &rustls::pki_types::ServerName<'_>,
            _ocsp_response: &[u8],
            _now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// Connects sending `sni` (none when `None`), offering h2 and http/1.1, accepting any
    /// certificate; returns the stream.
    async fn connect_sni(addr: std::net::SocketAddr, sni: Option<&str>) -> Client {
        install_default_crypto_provider();
        let provider = CryptoProvider::get_default().expect("provider").clone();
        let mut config = ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.enable_sni = sni.is_some();
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(sni.unwrap_or("no-sni.test").to_owned()).expect("name");
        let connect = TlsConnector::from(Arc::new(config)).connect(name, tcp);
        tokio::time::timeout(std::time::Duration::from_secs(5), connect)
            .await
            .expect("handshake in time")
            .expect("handshake")
    }

    /// Writes `issued` as `<name>.crt` / `<name>.key` under `dir` and names them.
    fn write_named(dir: &std::path::Path, name: &str, issued: &Issued) -> TlsFiles {
        let cert_file = dir.join(format!("{name}.crt"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, &issued.cert_pem).expect("write cert");
        std::fs::write(&key_file, &issued.key_pem).expect("write key");
        TlsFiles {
            cert_file: cert_file.display().to_string(),
            key_file: key_file.display().to_string(),
        }
    }

    #[tokio::test]
    async fn sni_picks_an_exact_name_then_a_wildcard_then_the_first_certificate() {
        let dir = tempfile_dir("sni");
        let ca = TestCa::generate("tls sni test CA").expect("ca");
        let issued = [
            ("default", &["default.test"][..]),
            ("ab", &["a.test", "b.test"][..]),
            ("wild", &["*.wild.test"][..]),
            ("exact", &["exact.wild.test"][..]),
        ]
        .map(|(name, names)| (name, ca.issue_names(names, name).expect("issue")));
        let tls = Tls {
            certificates: issued
                .iter()
                .enumerate()
                .map(|(i, (name, cert))| TlsCertificate {
                    hosts: match *name {
                        "default" => vec!["default.test".into()],
                        "ab" => vec!["a.test".into(), "b.test".into()],
                        "wild" => vec!["*.wild.test".into()],
                        _ => vec!["exact.wild.test".into()],
                    },
                    files: write_named(&dir, name, cert),
                    field: format!("tls.certificates[{i}]"),
                })
                .collect(),
        };
        let der = |name: &str| {
            issued
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, cert)| cert.cert_der.clone())
                .expect("issued")
        };
        let certs = TlsCerts::load(&tls).expect("load");
        let addr = echo_server(&certs).await;
        for (sni, served) in [
            (Some("a.test"), "ab"),
            (Some("B.Test"), "ab"),
            (Some("b.test."), "ab"),
            (Some("img.wild.test"), "wild"),
            (Some("exact.wild.test"), "exact"),
            // One label only, and never the apex.
            (Some("deep.img.wild.test"), "default"),
            (Some("wild.test"), "default"),
            (Some("unknown.test"), "default"),
            (None, "default"),
        ] {
            let mut client = connect_sni(addr, sni).await;
            assert_eq!(served_cert(&client), der(served), "{sni:?}");
            assert_eq!(
                client.get_ref().1.alpn_protocol(),
                Some(&b"h2"[..]),
                "{sni:?}"
            );
            assert!(echoes(&mut client, b"ping").await, "{sni:?}");
        }

        // A reload replacing one entry's files: new handshakes for its names get the new
        // certificate, the others keep theirs; a bad file in any entry keeps the whole set.
        let mut before = connect_sni(addr, Some("a.test")).await;
        let renewed = ca.issue_names(&["a.test", "b.test"], "ab2").expect("issue");
        write_named(&dir, "ab", &renewed);
        certs.reload(&tls).expect("reload");
        let after = connect_sni(addr, Some("b.test")).await;
        assert_eq!(served_cert(&after), renewed.cert_der);
        let wild = connect_sni(addr, Some("x.wild.test")).await;
        assert_eq!(served_cert(&wild), der("wild"));
        assert!(echoes(&mut before, b"still here").await);
        std::fs::write(&tls.certificates[2].files.cert_file, "garbage").expect("break");
        let err = certs.reload(&tls).expect_err("bad cert");
        assert!(err.starts_with("tls.certificates[2].cert_file: "), "{err}");
        assert_eq!(check(&tls), Err(err));
        let wild = connect_sni(addr, Some("x.wild.test")).await;
        assert_eq!(served_cert(&wild), der("wild"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_are_errors_naming_the_field_without_their_contents() {
        let dir = tempfile_dir("bad");
        let ca = TestCa::generate("tls bad files test CA").expect("ca");
        let issued = ca.issue_localhost().expect("issued");
        let other = ca.issue_localhost().expect("other");
        let files = write_pair(&dir, &issued);
        assert!(read_pair(&files, "tls").is_ok());

        let missing = TlsFiles {
            cert_file: dir.join("missing.pem").display().to_string(),
            ..files.clone()
        };
        let err = read_pair(&missing, "tls").expect_err("missing cert");
        assert!(err.starts_with("tls.cert_file: cannot read "), "{err}");
        assert!(err.contains("missing.pem"), "{err}");

        // The key file where the certificate should be: no certificate in it.
        let swapped = TlsFiles {
            cert_file: files.key_file.clone(),
            key_file: files.cert_file.clone(),
        };
        let err = read_pair(&swapped, "tls").expect_err("no cert");
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
        let err = read_pair(&mismatched, "tls").expect_err("mismatch");
        assert!(err.starts_with("tls.key_file: the key in "), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");

        // A PEM certificate block whose contents are not a certificate.
        std::fs::write(
            &files.cert_file,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = read_pair(&files, "tls").expect_err("garbage cert");
        assert!(err.starts_with("tls.cert_file: "), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(what: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ixproxy-tls-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }
}
