//! TLS configurations and certificate identity.
//!
//! Both hops use rustls with the aws-lc-rs provider, so the hybrid
//! post-quantum group X25519MLKEM768 is offered and preferred by default.
//! Only HTTP/2 is negotiated. Client certificates are required on every
//! listener and verified against the configured CA bundle and CRLs; there is
//! no switch to turn that off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{InvalidMemberId, MemberId};

/// The only application protocol either hop speaks.
const ALPN_H2: &[u8] = b"h2";

/// The process-wide crypto provider: aws-lc-rs, with its default (post-quantum
/// first) key exchange groups.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A failure to load or assemble TLS material. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read PEM: {source}")]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: not a usable CA certificate: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{path}: certificate and key do not make a usable identity: {source}")]
    Identity {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(transparent)]
    Exposed(#[from] super::secret::ExposedSecret),
}

/// Reads every certificate of a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certificates)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
/// Refused when every user of the machine may read it.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    super::secret::check_permissions(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_owned(),
            what: "private key",
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

/// When a CRL's next update is due, in seconds since the epoch: past it,
/// the CRL is stale and should be replaced.
pub fn crl_next_update(crl: &CertificateRevocationListDer<'_>) -> Option<i64> {
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl).ok()?;
    Some(parsed.next_update()?.timestamp())
}

/// Reads every CRL of a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    CertificateRevocationListDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })
}

/// A certificate chain and its private key.
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn load_identity(certificate: &Path, private_key: &Path) -> Result<Identity, TlsError> {
    Ok((
        load_certificates(certificate)?,
        load_private_key(private_key)?,
    ))
}

fn identity_error(certificate: &Path) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
    move |source| TlsError::Identity {
        path: certificate.to_owned(),
        source,
    }
}

fn root_store(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path)? {
        roots.add(certificate).map_err(|source| TlsError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// What a TLS listener needs: its own identity, the CAs it accepts client
/// certificates from, and the CRLs it checks them against.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub client_ca: PathBuf,
    pub crls: Vec<PathBuf>,
}

impl ServerTls {
    /// A rustls server config that requires and verifies a client
    /// certificate and speaks only HTTP/2.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = crypto_provider();
        let roots = root_store(&self.client_ca)?;
        let mut crls = Vec::new();
        for path in &self.crls {
            let loaded = load_crls(path)?;
            // A configured CRL file without a CRL (truncated, or something
            // else written over it) would silently turn revocation off.
            if loaded.is_empty() {
                return Err(TlsError::Empty {
                    path: path.clone(),
                    what: "CRL",
                });
            }
            crls.extend(loaded);
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .with_crls(crls)
            .build()?;
        let (chain, key) = load_identity(&self.certificate, &self.private_key)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain, key)
            })
            .map_err(identity_error(&self.certificate))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// What a TLS client needs: the CAs it accepts server certificates from and
/// its own client certificate.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub server_ca: PathBuf,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

impl ClientTls {
    /// A rustls client config presenting our certificate and speaking only
    /// HTTP/2.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = crypto_provider();
        let roots = root_store(&self.server_ca)?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?;
        let (chain, key) = load_identity(&self.certificate, &self.private_key)?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_webpki_verifier(verifier)
                    .with_client_auth_cert(chain, key)
            })
            .map_err(identity_error(&self.certificate))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// Why a verified certificate does not name a member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer certificate cannot be parsed")]
    Unparseable,
    #[error("the peer certificate has no spiffe:// URI SAN naming a member")]
    NoMemberSan,
    #[error(
        "the peer certificate has {0} spiffe:// URI SANs; a member certificate has exactly one"
    )]
    SeveralMemberSans(usize),
    #[error("the peer certificate's spiffe:// URI SAN is not a member id: {0}")]
    InvalidMemberSan(InvalidMemberId),
}

/// The member named by an end-entity certificate: its one `spiffe://` URI
/// SAN. Call only on certificates rustls has verified.
pub fn member_of_certificate(
    certificate: &CertificateDer<'_>,
) -> Result<MemberId, PeerIdentityError> {
    let (_, parsed) =
        X509Certificate::from_der(certificate).map_err(|_| PeerIdentityError::Unparseable)?;
    member_of_parsed(&parsed)
}

/// The member named by a parsed certificate.
fn member_of_parsed(parsed: &X509Certificate<'_>) -> Result<MemberId, PeerIdentityError> {
    let san = parsed
        .subject_alternative_name()
        .map_err(|_| PeerIdentityError::Unparseable)?
        .ok_or(PeerIdentityError::NoMemberSan)?;
    let mut spiffe = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri)
                if uri
                    .get(..9)
                    .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe://")) =>
            {
                Some(*uri)
            }
            _ => None,
        });
    match (spiffe.next(), spiffe.count()) {
        (None, _) => Err(PeerIdentityError::NoMemberSan),
        (Some(uri), 0) => {
            MemberId::from_spiffe_uri(uri).map_err(PeerIdentityError::InvalidMemberSan)
        }
        (Some(_), more) => Err(PeerIdentityError::SeveralMemberSans(more + 1)),
    }
}

/// The member named by the first certificate of a verified chain.
pub fn member_of_chain(
    chain: Option<&[CertificateDer<'_>]>,
) -> Result<MemberId, PeerIdentityError> {
    let leaf = chain
        .and_then(<[_]>::first)
        .ok_or(PeerIdentityError::NoCertificate)?;
    member_of_certificate(leaf)
}

/// What a connection's verified certificate chain says about its peer.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    pub member: Result<MemberId, PeerIdentityError>,
    /// When the leaf certificate expires, in seconds since the epoch.
    pub not_after: Option<i64>,
}

/// The member and the expiry of a chain's leaf certificate, from one parse
/// (a parse costs about as much as both reads together): what a listener
/// learns of each connection. Call only on chains rustls has verified.
pub fn peer_of_chain(chain: Option<&[CertificateDer<'_>]>) -> PeerCertificate {
    let Some(leaf) = chain.and_then(<[_]>::first) else {
        return PeerCertificate {
            member: Err(PeerIdentityError::NoCertificate),
            not_after: None,
        };
    };
    match X509Certificate::from_der(leaf) {
        Ok((_, parsed)) => PeerCertificate {
            member: member_of_parsed(&parsed),
            not_after: Some(parsed.validity().not_after.timestamp()),
        },
        Err(_) => PeerCertificate {
            member: Err(PeerIdentityError::Unparseable),
            not_after: None,
        },
    }
}

/// When a certificate expires, in seconds since the epoch.
pub fn certificate_not_after(certificate: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = X509Certificate::from_der(certificate).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, LeafRequest};

    /// One parse reads what the two separate reads do, and a chain
    /// without a certificate names no member.
    #[test]
    fn peer_of_chain_reads_the_member_and_the_expiry() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let member = MemberId::parse("SN/COM/CBAO/kyc").unwrap();
        let issued = ca.issue(&LeafRequest::member(&member)).unwrap();
        let chain = [CertificateDer::from(issued.der)];
        let peer = peer_of_chain(Some(&chain));
        assert_eq!(peer.member, Ok(member));
        assert_eq!(peer.member, member_of_certificate(&chain[0]));
        assert!(peer.not_after.is_some());
        assert_eq!(peer.not_after, certificate_not_after(&chain[0]));

        let none = peer_of_chain(None);
        assert_eq!(none.member, Err(PeerIdentityError::NoCertificate));
        assert_eq!(none.not_after, None);
        let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0xff])];
        assert_eq!(
            peer_of_chain(Some(&garbage)).member,
            Err(PeerIdentityError::Unparseable)
        );
    }
}
