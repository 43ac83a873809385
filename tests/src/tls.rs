//! The test PKI, generated at test time: a CA, a certificate for `localhost` / `127.0.0.1` signed
//! by it (trusted by the gateway through `upstream.ca_file`), and one for another name only.

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
}

/// The only name in the mismatching certificate.
pub const WRONG_NAME: &str = "wrong.test";

fn tls_err(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Tls(e.to_string())
}

impl TestPki {
    /// Generates a fresh CA and both server certificates.
    ///
    /// # Errors
    /// Key generation, signing or rustls config errors.
    pub fn generate() -> Result<Self, HarnessError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ixproxy conformance test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(tls_err)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;

        let leaf = |sans: Vec<SanType>, cn: &str| -> Result<Arc<ServerConfig>, HarnessError> {
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
            params.subject_alt_names = sans;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().map_err(tls_err)?;
            let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(tls_err)?;
            let chain = vec![CertificateDer::from(cert.der().to_vec())];
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(tls_err)?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(tls_err)?;
            Ok(Arc::new(config))
        };
        let good = leaf(
            vec![
                SanType::DnsName("localhost".try_into().map_err(tls_err)?),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ],
            "localhost",
        )?;
        let wrong = leaf(
            vec![SanType::DnsName(WRONG_NAME.try_into().map_err(tls_err)?)],
            WRONG_NAME,
        )?;
        Ok(TestPki {
            ca_pem: ca_cert.pem(),
            good,
            wrong,
        })
    }
}
