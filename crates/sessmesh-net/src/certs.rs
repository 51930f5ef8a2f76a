//! Cluster certificates: a cluster CA, the node certificates it signs, and
//! their PEM files.
//!
//! Every node holds the CA's certificate ([`CaCertificate`]) and its own
//! certificate and key ([`NodeIdentity`]); only the machine that issues
//! certificates holds the CA's key ([`ClusterCa`]). A node certificate names
//! the node (a DNS-style name, as its first DNS subject alternative name) and
//! its IP addresses, and is valid for both server and client authentication,
//! because every node both accepts and dials. Keys are Ed25519: small, fast,
//! and with fixed-size signatures.

use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Error;

/// How long a node certificate is valid by default.
pub const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How long a cluster CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Certificates start being valid this long before they are issued, so a node
/// whose clock is a little behind the issuer's accepts them.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// A cluster's certificate authority: its certificate and signing key.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CaCertificate,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new CA for the cluster named `cluster_name`, valid for [`CA_VALIDITY`].
    ///
    /// # Errors
    /// [`Error::Certificate`] if key generation or signing fails.
    pub fn generate(cluster_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("sessmesh cluster CA ({cluster_name})"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = datetime(now - BACKDATE)?;
        params.not_after = datetime(now + CA_VALIDITY)?;
        let key = KeyPair::generate_for(&PKCS_ED25519)
            .map_err(|e| Error::certificate("generating the CA key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::certificate("signing the CA certificate", e))?;
        let key_pem = key.serialize_pem();
        Ok(ClusterCa {
            cert: CaCertificate {
                der: cert.der().clone(),
            },
            issuer: Issuer::new(params, key),
            key_pem,
        })
    }

    /// Writes the certificate and (readable by its owner only) the key as PEM.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file that could not be written.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), Error> {
        write(cert_path, &self.cert.to_pem(), false)?;
        write(key_path, &self.key_pem, true)
    }

    /// Reads a CA that [`save`](Self::save) wrote.
    ///
    /// # Errors
    /// [`Error::Io`] naming a file that could not be read; as
    /// [`from_pem`](Self::from_pem) for its contents.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, Error> {
        Self::from_pem(&read(cert_path)?, &read(key_path)?)
    }

    /// Loads a CA from its certificate and key in PEM.
    ///
    /// # Errors
    /// [`Error::Pem`] when either is not valid PEM, [`Error::Certificate`] when
    /// the certificate is not a CA certificate or the key does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let cert = CaCertificate::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::pem("CA key", e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert.der, key)
            .map_err(|e| Error::certificate("reading the CA certificate", e))?;
        Ok(ClusterCa {
            issuer,
            cert,
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA's certificate, which every node trusts.
    pub fn certificate(&self) -> &CaCertificate {
        &self.cert
    }

    /// The CA's private key in PEM. Keep it off the nodes.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for `node_name` and `ips`, valid from now for [`NODE_VALIDITY`].
    ///
    /// # Errors
    /// [`Error::InvalidNodeName`] when the name is not a DNS-style name,
    /// [`Error::Certificate`] when signing fails.
    pub fn issue(&self, node_name: &str, ips: &[IpAddr]) -> Result<NodeIdentity, Error> {
        let now = SystemTime::now();
        self.issue_valid(node_name, ips, now - BACKDATE, now + NODE_VALIDITY)
    }

    /// Issues a certificate valid from `not_before` to `not_after`.
    ///
    /// # Errors
    /// As [`ClusterCa::issue`].
    pub fn issue_valid(
        &self,
        node_name: &str,
        ips: &[IpAddr],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<NodeIdentity, Error> {
        check_node_name(node_name)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_name);
        params.distinguished_name = dn;
        let dns = node_name
            .try_into()
            .map_err(|e| Error::certificate("encoding the node name", e))?;
        params.subject_alt_names = std::iter::once(SanType::DnsName(dns))
            .chain(ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = datetime(not_before)?;
        params.not_after = datetime(not_after)?;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ED25519)
            .map_err(|e| Error::certificate("generating a node key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::certificate("signing the node certificate", e))?;
        Ok(NodeIdentity {
            name: node_name.to_owned(),
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }
}

/// The cluster CA's certificate: the one trust anchor of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaCertificate {
    der: CertificateDer<'static>,
}

impl CaCertificate {
    /// Parses the CA certificate from PEM (the first certificate in it).
    ///
    /// # Errors
    /// [`Error::Pem`] when no certificate parses; [`Error::CertificateRejected`]
    /// when it is not usable as a trust anchor.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Error::pem("CA certificate", e.to_string()))?;
        webpki::anchor_from_trusted_cert(&der).map_err(|e| {
            Error::rejected("the cluster CA certificate", format!("malformed: {e}"))
        })?;
        Ok(CaCertificate { der })
    }

    /// Reads the CA certificate from a PEM file.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file, or as [`CaCertificate::from_pem`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::from_pem(&read(path)?)
    }

    /// The certificate in PEM.
    pub fn to_pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// The certificate in DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }
}

/// A node's certificate and private key.
#[derive(Debug)]
pub struct NodeIdentity {
    name: String,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        NodeIdentity {
            name: self.name.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl NodeIdentity {
    /// Parses a node certificate and its PKCS#8 key from PEM.
    ///
    /// # Errors
    /// [`Error::Pem`] when either does not parse, [`Error::CertificateRejected`]
    /// when the certificate names no node.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| Error::pem("node certificate", e.to_string()))?;
        let key = match PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) {
            Ok(PrivateKeyDer::Pkcs8(key)) => key,
            Ok(_) => return Err(Error::pem("node key", "not a PKCS#8 private key".into())),
            Err(e) => return Err(Error::pem("node key", e.to_string())),
        };
        let name = node_name_of(&cert)?;
        Ok(NodeIdentity { name, cert, key })
    }

    /// Reads a node certificate and key from PEM files.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file, or as [`NodeIdentity::from_pem`].
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, Error> {
        Self::from_pem(&read(cert_path)?, &read(key_path)?)
    }

    /// Writes the certificate and key as PEM files; the key file is readable
    /// by its owner only.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), Error> {
        write(cert_path, &self.cert_pem(), false)?;
        write(key_path, &self.key_pem(), true)
    }

    /// The node's name, from its certificate.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The certificate in PEM.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert)
    }

    /// The private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", self.key.secret_pkcs8_der())
    }

    /// The certificate in DER.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Checks that the certificate is signed by `ca`, valid at `now`, and usable
    /// for both server and client authentication: what a node checks at start,
    /// so a bad certificate is reported there and not as failed connections.
    ///
    /// # Errors
    /// [`Error::CertificateRejected`] saying why.
    pub fn verify(&self, ca: &CaCertificate, now: SystemTime) -> Result<(), Error> {
        verify_node_cert(&self.cert, ca, now, webpki::KeyUsage::server_auth())?;
        verify_node_cert(&self.cert, ca, now, webpki::KeyUsage::client_auth())
    }
}

/// Checks a node certificate against the cluster CA, explaining a refusal.
pub(crate) fn verify_node_cert(
    cert: &CertificateDer<'_>,
    ca: &CaCertificate,
    now: SystemTime,
    usage: webpki::KeyUsage,
) -> Result<(), Error> {
    let subject = node_name_of(cert).unwrap_or_else(|_| "an unnamed node".into());
    let subject = format!("the certificate of {subject}");
    let anchor = webpki::anchor_from_trusted_cert(&ca.der)
        .map_err(|e| Error::rejected("the cluster CA certificate", format!("malformed: {e}")))?;
    let end_entity = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| Error::rejected(&subject, format!("malformed: {e}")))?;
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            now,
            usage,
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| Error::rejected(&subject, explain(&e)))
}

/// Says in words why webpki refused a certificate.
pub(crate) fn explain(err: &webpki::Error) -> String {
    match err {
        webpki::Error::CertExpired { time, not_after } => {
            format!(
                "expired at {}, it is now {}",
                rfc3339(*not_after),
                rfc3339(*time)
            )
        }
        webpki::Error::CertNotValidYet { time, not_before } => {
            format!(
                "not valid until {}, it is now {}",
                rfc3339(*not_before),
                rfc3339(*time)
            )
        }
        webpki::Error::UnknownIssuer => "not signed by this cluster's CA".into(),
        webpki::Error::InvalidSignatureForPublicKey => {
            "its signature does not match this cluster's CA".into()
        }
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "not issued for node-to-node use (it lacks server or client authentication)".into()
        }
        webpki::Error::BadDer | webpki::Error::BadDerTime | webpki::Error::TrailingData(_) => {
            "malformed (not valid DER)".into()
        }
        other => format!("refused: {other}"),
    }
}

fn rfc3339(time: UnixTime) -> String {
    i64::try_from(time.as_secs())
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {}", time.as_secs()))
}

/// The node name a certificate carries: its first DNS subject alternative name.
///
/// # Errors
/// [`Error::CertificateRejected`] when the certificate is malformed or names no node.
pub fn node_name_of(cert: &CertificateDer<'_>) -> Result<String, Error> {
    let end_entity = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| Error::rejected("a peer certificate", format!("malformed: {e}")))?;
    end_entity
        .valid_dns_names()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::rejected(
                "a peer certificate",
                "it names no node (no DNS subject alternative name)".into(),
            )
        })
}

fn check_node_name(name: &str) -> Result<(), Error> {
    let invalid = |reason: &str| {
        Err(Error::InvalidNodeName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) if !name.is_empty() => Ok(()),
        Ok(ServerName::IpAddress(_)) => {
            invalid("a node name must be a name, not an IP address (pass IPs separately)")
        }
        _ => invalid("use letters, digits, '-' and '.', like a host name"),
    }
}

fn datetime(t: SystemTime) -> Result<OffsetDateTime, Error> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| Error::certificate("encoding a validity date", e))
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), Error> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    #[test]
    fn issued_certificates_verify_and_round_trip_through_files() {
        let ca = ClusterCa::generate("test").unwrap();
        let node = ca
            .issue("node-1.cluster", &["127.0.0.1".parse().unwrap()])
            .unwrap();
        assert_eq!(node.name(), "node-1.cluster");
        node.verify(ca.certificate(), SystemTime::now()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("node.pem"), dir.path().join("node.key"));
        node.save(&cert, &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let loaded = NodeIdentity::load(&cert, &key).unwrap();
        assert_eq!(loaded.cert(), node.cert());
        assert_eq!(loaded.key_pem(), node.key_pem());

        let ca_again = ClusterCa::from_pem(&ca.certificate().to_pem(), ca.key_pem()).unwrap();
        let other = ca_again.issue("node-2", &[]).unwrap();
        other
            .verify(ca.certificate(), SystemTime::now())
            .expect("a reloaded CA signs for the same cluster");
        assert_eq!(
            CaCertificate::from_pem(&ca.certificate().to_pem()).unwrap(),
            *ca.certificate()
        );
    }

    #[test]
    fn an_expired_certificate_is_refused_saying_when_it_expired() {
        let ca = ClusterCa::generate("test").unwrap();
        let now = SystemTime::now();
        let node = ca
            .issue_valid("node-1", &[], now - 10 * DAY, now - DAY)
            .unwrap();
        let err = node.verify(ca.certificate(), now).unwrap_err().to_string();
        assert!(
            err.contains("the certificate of node-1 is refused: expired at"),
            "{err}"
        );
    }

    #[test]
    fn a_not_yet_valid_certificate_is_refused() {
        let ca = ClusterCa::generate("test").unwrap();
        let now = SystemTime::now();
        let node = ca
            .issue_valid("node-1", &[], now + DAY, now + 10 * DAY)
            .unwrap();
        let err = node.verify(ca.certificate(), now).unwrap_err().to_string();
        assert!(err.contains("not valid until"), "{err}");
    }

    #[test]
    fn a_certificate_from_another_cluster_is_refused() {
        let ours = ClusterCa::generate("ours").unwrap();
        let theirs = ClusterCa::generate("theirs").unwrap();
        let node = theirs.issue("node-1", &[]).unwrap();
        let err = node
            .verify(ours.certificate(), SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not signed by this cluster's CA"), "{err}");
    }

    #[test]
    fn malformed_pem_is_refused_naming_what() {
        let err = CaCertificate::from_pem("not a certificate")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("CA certificate is not valid PEM"), "{err}");
        let ca = ClusterCa::generate("test").unwrap();
        let node = ca.issue("node-1", &[]).unwrap();
        let err = NodeIdentity::from_pem(&node.cert_pem(), "garbage")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("node key is not valid PEM"), "{err}");
        let bad_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = NodeIdentity::from_pem(bad_der, &node.key_pem())
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed"), "{err}");
        let err = NodeIdentity::load(
            Path::new("/nonexistent/node.pem"),
            Path::new("/nonexistent/node.key"),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/node.pem:"),
            "{err}"
        );
    }

    #[test]
    fn node_names_must_be_host_names() {
        let ca = ClusterCa::generate("test").unwrap();
        for bad in ["", "has space", "127.0.0.1"] {
            let err = ca.issue(bad, &[]).unwrap_err();
            assert!(
                matches!(err, Error::InvalidNodeName { .. }),
                "{bad:?}: {err}"
            );
        }
    }
}
