//! The test PKI, generated at test time: a CA, a certificate for `localhost` / `127.0.0.1` signed
//! by it (trusted by the gateway through `upstream.ca_file`), and one for another name only;
//! [`TestCa`] issues more (the gateway's own HTTPS certificates in the TLS tests).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::HarnessError;

/// A CA and two server identities it signed.
pub struct TestPki {
    /// The CA certificate, PEM (what `upstream.ca_file` points to).
    pub ca_pem: String,
    /// Server config whose certificate names `localhost` and `127.0.0.1`.
    pub good: Arc<ServerConfig>,
    /// Server config whose certificate names only [`WRONG_NAME`].
    pub wrong: Arc<ServerConfig>,
    ca: TestCa,
}

/// The only name in the mismatching certificate.
pub const WRONG_NAME: &str = "wrong.test";

fn tls_err(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Tls(e.to_string())
}

/// A generated CA that signs server certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate signed by a [`TestCa`], with its key, in PEM and as a rustls config.
pub struct Issued {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf certificate, DER (what a client sees in the handshake).
    pub cert_der: Vec<u8>,
    /// A rustls server config serving this certificate.
    pub config: Arc<ServerConfig>,
}

impl TestCa {
    /// A fresh CA called `name`.
    ///
    /// # Errors
    /// Key generation or signing errors.
    pub fn generate(name: &str) -> Result<Self, HarnessError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, name);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = ca_params.self_signed(&key).map_err(tls_err)?;
        Ok(TestCa { cert, key })
    }

    /// The CA certificate, PEM (for `--cacert`, `upstream.ca_file`, a client's trust store).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// A server certificate for `sans` (common name `cn`), signed by this CA.
    ///
    /// # Errors
    /// Key generation, signing or rustls config errors.
    pub fn issue(&self, sans: Vec<SanType>, cn: &str) -> Result<Issued, HarnessError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(tls_err)?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(tls_err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            config: Arc::new(config),
        })
    }

    /// A server certificate for the DNS names `names` (`*.example.com` wildcards allowed), with
    /// common name `cn` (how a test tells certificates apart in what a client saw).
    ///
    /// # Errors
    /// As [`TestCa::issue`].
    pub fn issue_names(&self, names: &[&str], cn: &str) -> Result<Issued, HarnessError> {
        let sans = names
            .iter()
            .map(|name| Ok(SanType::DnsName((*name).try_into().map_err(tls_err)?)))
            .collect::<Result<Vec<_>, HarnessError>>()?;
        self.issue(sans, cn)
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    ///
    /// # Errors
    /// As [`TestCa::issue`].
    pub fn issue_localhost(&self) -> Result<Issued, HarnessError> {
        self.issue(
            vec![
                SanType::DnsName("localhost".try_into().map_err(tls_err)?),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ],
            "localhost",
        )
    }
}

impl TestPki {
    /// Generates a fresh CA and both server certificates.
    ///
    /// # Errors
    /// Key generation, signing or rustls config errors.
    pub fn generate() -> Result<Self, HarnessError> {
        let ca = TestCa::generate("ixproxy conformance test CA")?;
        let good = ca.issue_localhost()?.config;
        let wrong = ca
            .issue(
                vec![SanType::DnsName(WRONG_NAME.try_into().map_err(tls_err)?)],
                WRONG_NAME,
            )?
            .config;
        Ok(TestPki {
            ca_pem: ca.pem(),
            good,
            wrong,
            ca,
        })
    }

    /// The CA that signed [`TestPki::good`] and [`TestPki::wrong`].
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }
}
