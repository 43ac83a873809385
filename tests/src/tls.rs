//! The test PKI, generated at test time: a CA, a certificate for `localhost` / `127.0.0.1` signed
//! by it (trusted by the gateway through `upstream.ca_file`), and one for another name only;
//! [`TestCa`] issues more (the gateway's own HTTPS certificates in the TLS tests).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
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

/// Whether `curl` can be run; prints why not when it cannot (the curl tests then pass on a
/// developer's machine). Under CI (`CI` set, as `.ci/run` does), where `scripts/test-all.sh`
/// installs curl, a missing curl fails instead: the SNI and HTTP/2 checks must never pass
/// unrun there.
pub fn have_curl() -> bool {
    let found = Command::new("curl")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "curl is not on the PATH under CI (scripts/test-all.sh installs it)"
        );
        println!(
            "skipped: curl is not on the PATH (needed to drive HTTP/2 and TLS as a user would)"
        );
    }
    found
}

/// Writes `issued` as `<name>.crt` / `<name>.key` under `dir` (overwriting); returns both paths.
///
/// # Errors
/// A file that cannot be written.
pub fn write_issued(
    dir: &Path,
    name: &str,
    issued: &Issued,
) -> Result<(PathBuf, PathBuf), HarnessError> {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &issued.cert_pem).map_err(|e| HarnessError::io("write cert", e))?;
    std::fs::write(&key, &issued.key_pem).map_err(|e| HarnessError::io("write key", e))?;
    Ok((cert, key))
}

/// An ixproxy `tls:` block with one `certificates` entry per `(hosts, (cert_file, key_file))`,
/// `hosts` written as YAML (`[a.test, "*.wild.test"]`).
pub fn certificates_yaml(entries: &[(&str, &(PathBuf, PathBuf))]) -> String {
    let mut yaml = "tls:\n  certificates:\n".to_owned();
    for (hosts, (cert, key)) in entries {
        yaml.push_str(&format!(
            "    - hosts: {hosts}\n      cert_file: {}\n      key_file: {}\n",
            cert.display(),
            key.display()
        ));
    }
    yaml
}

/// What `curl` saw on one HTTPS request (see [`served_by_sni`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// `%{http_version}`: `2` or `1.1`.
    pub version: String,
    /// The response status.
    pub status: u16,
    /// The common name of the certificate the server sent.
    pub cn: String,
}

/// Runs `curl` for `path` on `https://host:port`, `host` resolved to 127.0.0.1 (`--resolve`,
/// so `host` is the SNI and the name checked) unless it is an address (then curl sends no
/// SNI); `args` go first (`--cacert FILE` or `-k`, `--http2`, ...).
///
/// # Errors
/// curl that cannot run or fails (a certificate that does not name `host` with `--cacert`
/// included), or output without the certificate's subject.
pub fn served_by_sni(
    port: u16,
    host: &str,
    path: &str,
    args: &[&str],
) -> Result<Served, HarnessError> {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--path-as-is", "--max-time", "10", "-o", "/dev/null"])
        .args(["-w", "%{http_version} %{http_code}\\n%{certs}"])
        .args(args);
    if host.parse::<IpAddr>().is_err() {
        command.args(["--resolve", &format!("{host}:{port}:127.0.0.1")]);
    }
    let out = command
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .map_err(|e| HarnessError::io("run curl", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let fail = |why: &str| {
        HarnessError::Http(format!(
            "curl {host}: {why}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    if !out.status.success() {
        return Err(fail("failed"));
    }
    let (first, certs) = stdout.split_once('\n').ok_or_else(|| fail("no -w lines"))?;
    let (version, status) = first.split_once(' ').ok_or_else(|| fail("no status"))?;
    // `%{certs}`: the chain the server sent, leaf first, each with a `Subject:CN = ...` line.
    let cn = certs
        .lines()
        .find_map(|l| l.strip_prefix("Subject:"))
        .and_then(|s| s.trim().strip_prefix("CN = "))
        .ok_or_else(|| fail("no certificate subject"))?;
    Ok(Served {
        version: version.to_owned(),
        status: status.parse().map_err(|_| fail("status"))?,
        cn: cn.to_owned(),
    })
}

/// The certificates of the SNI tests, each with its own common name, written with their CA
/// under a temporary directory: `cert-default` for `localhost` (the first entry, so also the
/// default), `cert-ab` for `a.test` and `b.test` (listed as `B.Test`: names are
/// case-insensitive), `cert-wild` for `*.wild.test`.
pub struct SniCertificates {
    /// The CA that signed them.
    pub ca: TestCa,
    /// Where the files are (removed on drop).
    pub dir: tempfile::TempDir,
    /// The CA certificate's file (`curl --cacert`).
    pub ca_file: PathBuf,
    /// The ixproxy `tls:` block naming them.
    pub tls_yaml: String,
    /// Each entry's certificate and key files, in config order.
    pub files: Vec<(PathBuf, PathBuf)>,
}

/// A source `hosts` list holding every name the SNI tests request.
pub const SNI_TEST_HOSTS: &str =
    "[localhost, a.test, b.test, img.wild.test, deep.img.wild.test, other.test, 127.0.0.1]";

impl SniCertificates {
    /// Generates the CA and the three certificates and writes them.
    ///
    /// # Errors
    /// Key generation, signing or a file that cannot be written.
    pub fn generate() -> Result<Self, HarnessError> {
        let ca = TestCa::generate("ixproxy SNI test CA")?;
        let dir = tempfile::Builder::new()
            .prefix("ixproxy-sni-")
            .tempdir()
            .map_err(|e| HarnessError::io("temp dir", e))?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).map_err(|e| HarnessError::io("write ca", e))?;
        let mut files = Vec::new();
        for (name, names, cn) in [
            ("default", &["localhost"][..], "cert-default"),
            ("ab", &["a.test", "b.test"][..], "cert-ab"),
            ("wild", &["*.wild.test"][..], "cert-wild"),
        ] {
            files.push(write_issued(dir.path(), name, &ca.issue_names(names, cn)?)?);
        }
        let tls_yaml = certificates_yaml(&[
            ("[localhost]", &files[0]),
            ("[a.test, B.Test]", &files[1]),
            ("[\"*.wild.test\"]", &files[2]),
        ]);
        Ok(SniCertificates {
            ca,
            dir,
            ca_file,
            tls_yaml,
            files,
        })
    }

    /// Replaces entry `index`'s files with a new certificate for `names` called `cn`.
    ///
    /// # Errors
    /// As [`SniCertificates::generate`].
    pub fn reissue(&self, index: usize, names: &[&str], cn: &str) -> Result<(), HarnessError> {
        let issued = self.ca.issue_names(names, cn)?;
        let (cert, key) = self
            .files
            .get(index)
            .ok_or_else(|| HarnessError::Tls(format!("no entry {index}")))?;
        std::fs::write(cert, &issued.cert_pem).map_err(|e| HarnessError::io("write cert", e))?;
        std::fs::write(key, &issued.key_pem).map_err(|e| HarnessError::io("write key", e))?;
        Ok(())
    }
}
