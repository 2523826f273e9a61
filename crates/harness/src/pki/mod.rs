//! A development PKI: one root CA, certificates for the gateway, the mock
//! agencies and partner members, and a CRL.
//!
//! This is for demos and tests only; production deployments bring their own
//! CA (SPIRE or any CA that writes `spiffe://` URI SANs). Keys are ECDSA
//! P-256, generated with aws-lc-rs, and written with mode 0600. This module
//! never decides what a certificate is *for* beyond its key usages: the TLS
//! layer and the member registry decide that.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;

use gateway::identity::MemberId;

/// File names inside a PKI directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const CRL: &str = "crl.pem";

/// A failure of the dev PKI. Always names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid name for a certificate: {0}")]
    Name(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a leaf certificate is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (the gateway's listener, an agency).
    Server,
    /// A TLS client (a partner member, the gateway's upstream identity).
    Client,
    /// Both: an agency that also calls other members.
    ServerAndClient,
}

/// Everything that goes into one leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    pub common_name: String,
    pub member: Option<MemberId>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub usage: Usage,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafRequest {
    /// A certificate valid from an hour ago for `days` days.
    pub fn new(common_name: impl Into<String>, usage: Usage, days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: common_name.into(),
            member: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }

    /// A client certificate for a member, valid for a year.
    pub fn member(member: &MemberId) -> Self {
        Self {
            member: Some(member.clone()),
            ..Self::new(member.as_str(), Usage::Client, 365)
        }
    }

    /// A server certificate for loopback names, valid for a year.
    pub fn loopback_server(common_name: impl Into<String>) -> Self {
        Self {
            dns_names: vec!["localhost".to_owned()],
            ip_addresses: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ],
            ..Self::new(common_name, Usage::Server, 365)
        }
    }

    fn params(&self) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&self.common_name);
        params.serial_number = Some(random_serial());
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match self.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        if let Some(member) = &self.member {
            let uri = member.to_spiffe_uri();
            params.subject_alt_names.push(SanType::URI(
                uri.clone().try_into().map_err(|_| PkiError::Name(uri))?,
            ));
        }
        for name in &self.dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|_| PkiError::Name(name.clone()))?,
            ));
        }
        for ip in &self.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        Ok(params)
    }
}

/// A freshly issued certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub der: Vec<u8>,
}

impl IssuedCertificate {
    /// Writes `NAME.pem` (0644) and `NAME.key` (0600) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let certificate = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write_file(&certificate, self.certificate_pem.as_bytes(), 0o644)?;
        write_file(&key, self.private_key_pem.as_bytes(), 0o600)?;
        Ok((certificate, key))
    }
}

/// A certificate authority that can issue leaves and CRLs.
#[derive(Debug)]
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
}

impl CertificateAuthority {
    /// A new self-signed root CA, valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let now = OffsetDateTime::now_utc();
        Self::generate_with_validity(
            common_name,
            now - Duration::hours(1),
            now + Duration::days(3650),
        )
    }

    /// A new self-signed root CA with an explicit validity window.
    pub fn generate_with_validity(
        common_name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.not_before = not_before;
        params.not_after = not_after;
        let certificate = params.self_signed(&key)?;
        Ok(Self {
            certificate_pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads `ca.pem` and `ca.key` from a PKI directory.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let certificate_pem = fs::read_to_string(&cert_path).map_err(io_error(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|error| PkiError::Parse {
            path: key_path.clone(),
            message: error.to_string(),
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&certificate_pem, key).map_err(|error| PkiError::Parse {
                path: cert_path.clone(),
                message: error.to_string(),
            })?;
        Ok(Self {
            issuer,
            certificate_pem,
        })
    }

    /// Writes `ca.pem` and `ca.key` into a PKI directory.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        write_file(&dir.join(CA_CERT), self.certificate_pem.as_bytes(), 0o644)?;
        write_file(
            &dir.join(CA_KEY),
            self.issuer.key().serialize_pem().as_bytes(),
            0o600,
        )
    }

    /// The CA certificate, PEM-encoded.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Issues a leaf certificate with a fresh key.
    pub fn issue(&self, request: &LeafRequest) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate()?;
        let certificate = request.params()?.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            private_key_pem: key.serialize_pem(),
            der: certificate.der().to_vec(),
        })
    }

    /// A CRL listing `revoked` serial numbers, valid for `days` days.
    pub fn crl(&self, number: u64, revoked: &[Vec<u8>], days: i64) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.crl_between(
            number,
            revoked,
            now - Duration::minutes(5),
            now + Duration::days(days),
        )
    }

    /// A CRL listing `revoked` serial numbers, issued at `this_update` and
    /// due to be replaced at `next_update` (in the past: a stale CRL, for
    /// tests).
    pub fn crl_between(
        &self,
        number: u64,
        revoked: &[Vec<u8>],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// Adds the certificate at `certificate` to the CRL of the PKI in `dir`,
/// keeping the serials already revoked and bumping the CRL number.
pub fn revoke(dir: &Path, certificate: &Path) -> Result<(), PkiError> {
    let ca = CertificateAuthority::load(dir)?;
    let serial = serial_of_certificate(certificate)?;
    let crl_path = dir.join(CRL);
    let (number, mut revoked) = if crl_path.exists() {
        read_crl(&crl_path)?
    } else {
        (0, Vec::new())
    };
    if !revoked.contains(&serial) {
        revoked.push(serial);
    }
    let pem = ca.crl(number + 1, &revoked, 30)?;
    write_file(&crl_path, pem.as_bytes(), 0o644)
}

/// Signs the CRL of the PKI in `dir` again, with the same serials and the
/// next number, when less than half of its 30 days are left (or none): a
/// dev directory reused a month later would otherwise refuse every
/// handshake. Returns whether it did.
pub fn refresh_crl(dir: &Path) -> Result<bool, PkiError> {
    let crl_path = dir.join(CRL);
    if !crl_path.exists() {
        return Ok(false);
    }
    let crl = read_crl_whole(&crl_path)?;
    let half_life = OffsetDateTime::now_utc() + Duration::days(15);
    if crl.next_update.is_some_and(|next| next > half_life) {
        return Ok(false);
    }
    let ca = CertificateAuthority::load(dir)?;
    let pem = ca.crl(crl.number + 1, &crl.revoked, 30)?;
    write_file(&crl_path, pem.as_bytes(), 0o644)?;
    Ok(true)
}

/// Writes an empty CRL, number 1, into `dir`.
pub fn write_empty_crl(ca: &CertificateAuthority, dir: &Path) -> Result<(), PkiError> {
    write_file(&dir.join(CRL), ca.crl(1, &[], 30)?.as_bytes(), 0o644)
}

fn serial_of_certificate(path: &Path) -> Result<Vec<u8>, PkiError> {
    let der = first_pem_block(path, "CERTIFICATE")?;
    let (_, certificate) =
        x509_parser::certificate::X509Certificate::from_der(&der).map_err(|error| {
            PkiError::Parse {
                path: path.to_owned(),
                message: error.to_string(),
            }
        })?;
    Ok(certificate.raw_serial().to_vec())
}

fn read_crl(path: &Path) -> Result<(u64, Vec<Vec<u8>>), PkiError> {
    let crl = read_crl_whole(path)?;
    Ok((crl.number, crl.revoked))
}

/// What a CRL says.
struct CrlContents {
    number: u64,
    /// The serials it revokes.
    revoked: Vec<Vec<u8>>,
    next_update: Option<OffsetDateTime>,
}

fn read_crl_whole(path: &Path) -> Result<CrlContents, PkiError> {
    let der = first_pem_block(path, "X509 CRL")?;
    let parse_error = |message: String| PkiError::Parse {
        path: path.to_owned(),
        message,
    };
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|error| parse_error(error.to_string()))?;
    let number = crl
        .crl_number()
        .and_then(|number| u64::try_from(number).ok())
        .unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|entry| entry.raw_serial().to_vec())
        .collect();
    let next_update = crl.next_update().map(|time| time.to_datetime());
    Ok(CrlContents {
        number,
        revoked,
        next_update,
    })
}

fn first_pem_block(path: &Path, label: &str) -> Result<Vec<u8>, PkiError> {
    use rustls_pki_types::pem::{PemObject, SectionKind};
    let bytes = fs::read(path).map_err(io_error(path))?;
    let wanted = match label {
        "X509 CRL" => SectionKind::Crl,
        _ => SectionKind::Certificate,
    };
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        let (kind, der) = section.map_err(|error| PkiError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
        if kind == wanted {
            return Ok(der);
        }
    }
    Err(PkiError::Parse {
        path: path.to_owned(),
        message: format!("no {label} PEM block"),
    })
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, "SN");
    name.push(DnType::OrganizationName, "govbridge dev PKI");
    name.push(DnType::CommonName, common_name);
    name
}

/// A positive 127-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Writes a file with the given mode, atomically (see
/// [`gateway::keys::write_file`]).
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    gateway::keys::write_file(path, contents, mode).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crl_past_half_its_life_is_signed_again_with_its_serials() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA").unwrap();
        ca.write(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        let serial = vec![0x01, 0x02, 0x03];
        let stale = ca
            .crl_between(
                4,
                std::slice::from_ref(&serial),
                now - Duration::days(40),
                now - Duration::days(10),
            )
            .unwrap();
        write_file(&dir.path().join(CRL), stale.as_bytes(), 0o644).unwrap();

        assert!(refresh_crl(dir.path()).unwrap());
        let crl = read_crl_whole(&dir.path().join(CRL)).unwrap();
        assert_eq!(crl.number, 5);
        assert_eq!(crl.revoked, [serial]);
        assert!(crl.next_update.unwrap() > now + Duration::days(29));
        // Fresh, it is left as it is.
        assert!(!refresh_crl(dir.path()).unwrap());
    }
}
