//! TLS configurations and certificate identity.
//!
//! Both hops use rustls with the aws-lc-rs provider, so the hybrid
//! post-quantum group X25519MLKEM768 is offered and preferred by default.
//! Only HTTP/2 is negotiated. Client certificates are required on every
//! listener and verified against the configured CA bundle and CRLs; there is
//! no switch to turn that off. Backends' certificates are checked against
//! the upstream CRLs the same way.
//!
//! With partner instances (federation), a listener trusts each partner's
//! CAs for that instance's identities only, and its own CAs for no
//! partner's: the instance a certificate names picks the CAs it must chain
//! to ([`InstanceVerifier`]).
//!
//! A CRL past its next update and the grace the configuration allows is
//! refused when loaded, and every handshake checked against it is refused
//! from the second it gets there while the gateway runs
//! ([`CrlFreshness`]): revocations published since would not be seen.
//! Sessions are never resumed: a resumed session would skip the
//! certificate checks (revocation, expiry) that a full handshake makes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{InvalidMemberId, MemberId};

/// HTTP/2: gRPC, on both hops.
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1: JSON calls of partners without gRPC (`crate::proxy`'s
/// transcoding), offered by the listener after HTTP/2.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The process-wide crypto provider: aws-lc-rs, with its default (post-quantum
/// first) key exchange groups.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config that verifies the server against the CA certificates in
/// `ca` and presents none of its own, speaking whatever the server speaks:
/// the fleet's database connection.
pub fn verifying_client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let roots = root_store(ca)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(identity_error(ca))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
    #[error(
        "{first} and {second} share a certificate authority ({subject}): an instance's CAs \
         vouch for its members only, so no CA may be both, nor issue the other's"
    )]
    SharedAuthority {
        first: PathBuf,
        second: PathBuf,
        subject: String,
    },
    #[error("{path}: certificate and key do not make a usable identity: {source}")]
    Identity {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "{path}: the CRL is out of date: its next update was due {overdue}s ago{}; \
         publish a fresh CRL (or allow a grace with `crl_grace`)",
        grace_note(*grace)
    )]
    StaleCrl {
        path: PathBuf,
        /// Seconds past its next update.
        overdue: u64,
        grace: Duration,
    },
    #[error(transparent)]
    Exposed(#[from] super::secret::ExposedSecret),
}

impl TlsError {
    /// Whether this is a CRL refused for being past its next update.
    pub fn is_stale_crl(&self) -> bool {
        matches!(self, Self::StaleCrl { .. })
    }
}

fn grace_note(grace: Duration) -> String {
    if grace.is_zero() {
        String::new()
    } else {
        format!(", more than the {}s grace allowed", grace.as_secs())
    }
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

/// Seconds since the epoch.
fn unix_now() -> i64 {
    i64::try_from(UnixTime::now().as_secs()).unwrap_or(i64::MAX)
}

/// When the CRLs checking one set of certificates go out of date: the one
/// due first, and the grace allowed past its next update. Past both, every
/// certificate they check is refused, as at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFreshness {
    path: PathBuf,
    next_update: i64,
    grace: Duration,
}

impl CrlFreshness {
    /// The last second the CRLs are accepted in (seconds since the epoch).
    pub fn stale_after(&self) -> i64 {
        let grace = i64::try_from(self.grace.as_secs()).unwrap_or(i64::MAX);
        self.next_update.saturating_add(grace)
    }

    /// Why the CRLs are refused at `now` (seconds since the epoch), if
    /// they are.
    pub fn stale_at(&self, now: i64) -> Option<TlsError> {
        (now > self.stale_after()).then(|| TlsError::StaleCrl {
            path: self.path.clone(),
            overdue: u64::try_from(now.saturating_sub(self.next_update)).unwrap_or(0),
            grace: self.grace,
        })
    }

    /// A handshake's refusal at `now`, once the CRLs are out of date.
    fn check(&self, now: UnixTime) -> Result<(), rustls::Error> {
        let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if seconds <= self.stale_after() {
            return Ok(());
        }
        let next_update = u64::try_from(self.next_update).unwrap_or(0);
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ExpiredRevocationListContext {
                time: now,
                next_update: UnixTime::since_unix_epoch(Duration::from_secs(next_update)),
            },
        ))
    }
}

/// CRLs read from their files, and when they go out of date (`None`: none
/// says when it is due).
struct LoadedCrls {
    crls: Vec<CertificateRevocationListDer<'static>>,
    freshness: Option<CrlFreshness>,
}

/// Reads the CRLs of every file of `paths`. A file without a CRL is an
/// error; a CRL past its next update but within `grace` is accepted with
/// a warning. One beyond its grace is read too: whoever uses the lists
/// decides ([`CrlFreshness::stale_at`]), and their handshakes refuse it.
fn load_crl_files(paths: &[PathBuf], grace: Duration) -> Result<LoadedCrls, TlsError> {
    let now = unix_now();
    let (newest, dropped) = newest_crls(paths)?;
    // Said where the lists are loaded for handshakes, once a start or
    // reload.
    for (dropped, used) in dropped {
        tracing::warn!(
            dropped = %dropped.display(),
            used = %used.display(),
            "two CRLs of one issuer: the older is not used; remove it"
        );
    }
    for (path, next_update) in newest
        .iter()
        .filter_map(|(path, crl)| Some((path, crl_next_update(crl)?)))
    {
        let overdue = u64::try_from(now.saturating_sub(next_update)).unwrap_or(0);
        // Revocations published since are not seen: the operator chose to
        // ride out a late CRL publisher for `grace`.
        if overdue > 0 && Duration::from_secs(overdue) <= grace {
            tracing::warn!(
                crl = %path.display(),
                overdue_seconds = overdue,
                grace_seconds = grace.as_secs(),
                "CRL past its next update, accepted within its grace: publish a fresh one"
            );
        }
    }
    Ok(LoadedCrls {
        freshness: earliest(&newest, grace),
        crls: newest.into_iter().map(|(_, crl)| crl).collect(),
    })
}

/// When the CRLs of `paths` go out of date, read again from their files
/// (`None`: none says when it is due).
pub fn crl_freshness(paths: &[PathBuf], grace: Duration) -> Result<Option<CrlFreshness>, TlsError> {
    Ok(earliest(&newest_of_each_issuer(paths)?, grace))
}

/// The CRLs of `paths`, each with its file, keeping of the lists one
/// issuer publishes for one scope only the newest (highest CRL number,
/// then latest `thisUpdate`). A handshake checks a certificate against
/// the first list of its issuer alone: an older one left beside (a fetch
/// that appended instead of replacing) would hide the revocations
/// published since, or, out of date, refuse everyone.
pub fn newest_of_each_issuer(
    paths: &[PathBuf],
) -> Result<Vec<(PathBuf, CertificateRevocationListDer<'static>)>, TlsError> {
    newest_crls(paths).map(|(kept, _)| kept)
}

/// CRLs, each with the file it was read from.
type CrlsOfFiles = Vec<(PathBuf, CertificateRevocationListDer<'static>)>;

/// Which list of which issuer a CRL is, and how recent: what a reload
/// compares with the list the gateway used before, so that an older CRL
/// put back (one from before a revocation, still within its next update)
/// does not undo the revocation.
#[derive(Clone, PartialEq, Eq)]
pub struct CrlVersion(CrlScope);

impl std::fmt::Debug for CrlVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlVersion")
            .field("number", &self.0.number)
            .field("this_update", &self.0.this_update)
            .finish_non_exhaustive()
    }
}

impl CrlVersion {
    /// Whether `other` is a list of the same issuer and scope.
    pub fn same_list(&self, other: &Self) -> bool {
        self.0.same(&other.0)
    }

    /// Whether this list was published before `other`, of the same list.
    pub fn older_than(&self, other: &Self) -> bool {
        self.0 < other.0
    }

    /// Its CRL number, in hexadecimal, if it has one.
    pub fn number(&self) -> Option<String> {
        self.0
            .number
            .as_ref()
            .map(|(_, bytes)| bytes.iter().map(|byte| format!("{byte:02x}")).collect())
    }

    /// Its `thisUpdate`, in seconds since the epoch.
    pub fn this_update(&self) -> i64 {
        self.0.this_update
    }
}

/// The version of each list [`newest_of_each_issuer`] keeps of `paths`,
/// with its file (lists not readable here have none).
pub fn crl_versions(paths: &[PathBuf]) -> Result<Vec<(PathBuf, CrlVersion)>, TlsError> {
    Ok(newest_of_each_issuer(paths)?
        .into_iter()
        .filter_map(|(path, crl)| Some((path, CrlVersion(CrlScope::of(&crl)?))))
        .collect())
}

/// [`newest_of_each_issuer`], and the file of each list left out with the
/// file of the list used instead.
fn newest_crls(paths: &[PathBuf]) -> Result<(CrlsOfFiles, Vec<(PathBuf, PathBuf)>), TlsError> {
    // Each with its scope, `None` when not readable here (webpki then
    // says what is wrong with it).
    let mut kept: Vec<(
        PathBuf,
        CertificateRevocationListDer<'static>,
        Option<CrlScope>,
    )> = Vec::new();
    let mut dropped = Vec::new();
    for path in paths {
        let loaded = load_crls(path)?;
        // A configured CRL file without a CRL (truncated, or something
        // else written over it) would silently turn revocation off.
        if loaded.is_empty() {
            return Err(TlsError::Empty {
                path: path.clone(),
                what: "CRL",
            });
        }
        for crl in loaded {
            let scope = CrlScope::of(&crl);
            let same = scope.as_ref().and_then(|scope| {
                kept.iter()
                    .position(|(_, _, other)| other.as_ref().is_some_and(|other| other.same(scope)))
            });
            let Some(at) = same else {
                kept.push((path.clone(), crl, scope));
                continue;
            };
            let newer = (path.clone(), crl, scope);
            let left_out = if kept[at].2.as_ref() < newer.2.as_ref() {
                std::mem::replace(&mut kept[at], newer).0
            } else {
                newer.0
            };
            dropped.push((left_out, kept[at].0.clone()));
        }
    }
    let kept = kept.into_iter().map(|(path, crl, _)| (path, crl)).collect();
    Ok((kept, dropped))
}

/// What tells two CRLs of one issuer apart, read from one; ordered by
/// publication (CRL number, then `thisUpdate`) among those of one scope.
#[derive(Clone, PartialEq, Eq)]
struct CrlScope {
    issuer: Vec<u8>,
    /// The issuing distribution point: partitions of one issuer's
    /// revocations are lists of their own. (Not the authority key: a
    /// handshake takes the first list of the issuer's name and scope,
    /// whichever key signed it, so two CAs of one name cannot both be
    /// checked.)
    partition: Option<Vec<u8>>,
    /// The CRL number's length and big-endian bytes (no leading zeros:
    /// longer is larger).
    number: Option<(usize, Vec<u8>)>,
    this_update: i64,
}

impl CrlScope {
    fn of(crl: &CertificateRevocationListDer<'_>) -> Option<Self> {
        let (_, parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(crl).ok()?;
        let extension = |oid: &str| {
            parsed
                .extensions()
                .iter()
                .find(|extension| extension.oid.to_id_string() == oid)
                .map(|extension| extension.value.to_vec())
        };
        Some(Self {
            issuer: parsed.issuer().as_raw().to_vec(),
            partition: extension("2.5.29.28"),
            number: parsed.crl_number().map(|number| {
                let bytes = number.to_bytes_be();
                (bytes.len(), bytes)
            }),
            this_update: parsed.last_update().timestamp(),
        })
    }

    fn same(&self, other: &CrlScope) -> bool {
        self.issuer == other.issuer && self.partition == other.partition
    }
}

impl PartialOrd for CrlScope {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.same(other)
            .then(|| (&self.number, self.this_update).cmp(&(&other.number, other.this_update)))
    }
}

/// The CRL of `crls` due first.
fn earliest(
    crls: &[(PathBuf, CertificateRevocationListDer<'_>)],
    grace: Duration,
) -> Option<CrlFreshness> {
    crls.iter()
        .filter_map(|(path, crl)| Some((path, crl_next_update(crl)?)))
        .min_by_key(|(_, next_update)| *next_update)
        .map(|(path, next_update)| CrlFreshness {
            path: path.clone(),
            next_update,
            grace,
        })
}

/// A certificate verifier whose CRLs go out of date: from then on it
/// refuses every certificate, whatever the CRLs say of it.
#[derive(Debug)]
struct Fresh<V: ?Sized> {
    inner: Arc<V>,
    freshness: Option<CrlFreshness>,
}

impl<V: ?Sized> Fresh<V> {
    fn check(&self, now: UnixTime) -> Result<(), rustls::Error> {
        self.freshness
            .as_ref()
            .map_or(Ok(()), |freshness| freshness.check(now))
    }

    fn stale_after(&self) -> Option<i64> {
        self.freshness.as_ref().map(CrlFreshness::stale_after)
    }
}

impl ServerCertVerifier for Fresh<WebPkiServerVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.check(now)?;
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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

/// The CA certificates in `path`, as a trust store.
pub(crate) fn root_store(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
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
    /// How long past its next update a CRL is still accepted.
    pub crl_grace: Duration,
    /// Partner instances' CAs, each trusted for its instance alone.
    pub partners: Vec<PartnerTrust>,
}

/// A partner instance's CAs and CRLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerTrust {
    /// The instance code its members' ids begin with.
    pub instance: String,
    pub ca: PathBuf,
    pub crls: Vec<PathBuf>,
}

impl ServerTls {
    /// A rustls server config that requires and verifies a client
    /// certificate and speaks only HTTP/2.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        Ok(self.listener_tls()?.config)
    }

    /// Checks the trust the listener would be built with (this instance's
    /// CA and CRLs, each partner's, no CA shared between two), without its
    /// own certificate: what a publication, which has none, can be
    /// checked for.
    pub fn check_trust(&self) -> Result<(), TlsError> {
        self.client_verifier().map(drop)
    }

    /// The verifier of partners' client certificates, by instance.
    fn client_verifier(&self) -> Result<Arc<InstanceVerifier>, TlsError> {
        let provider = crypto_provider();
        let client_verifier = |ca: &Path, crls: &[PathBuf]| -> Result<_, TlsError> {
            let roots = root_store(ca)?;
            let LoadedCrls { crls, freshness } = load_crl_files(crls, self.crl_grace)?;
            let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .with_crls(crls)
                .build()?;
            Ok(Fresh { inner, freshness })
        };
        let own = client_verifier(&self.client_ca, &self.crls)?;
        if let Some(stale) = own.freshness.as_ref().and_then(|f| f.stale_at(unix_now())) {
            return Err(stale);
        }
        let mut authorities = vec![(self.client_ca.clone(), load_certificates(&self.client_ca)?)];
        for partner in &self.partners {
            authorities.push((partner.ca.clone(), load_certificates(&partner.ca)?));
        }
        for (at, (first, mine)) in authorities.iter().enumerate() {
            for (second, theirs) in &authorities[at + 1..] {
                if let Some(subject) = shared_authority(mine, theirs) {
                    return Err(TlsError::SharedAuthority {
                        first: first.clone(),
                        second: second.clone(),
                        subject,
                    });
                }
            }
        }
        // A partner's late CRL publisher refuses its own members, not the
        // listener: its certificates are refused as the CRL vouching for
        // them is, and everyone else's are checked.
        let partners = self
            .partners
            .iter()
            .map(|partner| {
                let verifier = client_verifier(&partner.ca, &partner.crls)?;
                if let Some(stale) = verifier
                    .freshness
                    .as_ref()
                    .and_then(|f| f.stale_at(unix_now()))
                {
                    tracing::warn!(
                        instance = partner.instance,
                        error = %stale,
                        "a partner's CRL is out of date: its certificates are refused until it \
                         publishes a fresh one"
                    );
                }
                Ok((partner.instance.clone(), verifier))
            })
            .collect::<Result<Vec<_>, TlsError>>()?;
        Ok(Arc::new(InstanceVerifier::new(own, partners)))
    }

    /// The server config and the client certificate verifier inside it,
    /// with which a listener re-checks the certificates of its open
    /// connections.
    pub fn listener_tls(&self) -> Result<ListenerTls, TlsError> {
        let provider = crypto_provider();
        let verifier = self.client_verifier()?;
        let (chain, key) = load_identity(&self.certificate, &self.private_key)?;
        // The admin endpoint's, when it speaks HTTPS: the same identity,
        // HTTP/1.1, and no client certificate (Prometheus and curl send
        // none; operators send the admin token).
        let mut admin = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_no_client_auth()
                    .with_single_cert(chain.clone(), key.clone_key())
            })
            .map_err(identity_error(&self.certificate))?;
        admin.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_client_cert_verifier(verifier.clone())
                    .with_single_cert(chain, key)
            })
            .map_err(identity_error(&self.certificate))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        // No resumption: a resumed session carries the client certificate
        // of its first handshake without checking it again, so a revoked
        // or expired certificate would get in. The cost is a full
        // handshake (signatures and a chain check, no extra round trip in
        // TLS 1.3) on every new connection. The default ticketer already
        // issues no stateless tickets; this turns off the session cache
        // (TLS 1.2 session ids, TLS 1.3 stateful tickets).
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(ListenerTls {
            config: Arc::new(config),
            client_verifier: verifier,
            admin: Arc::new(admin),
        })
    }
}

/// The subject of a CA that two instances' CA files share, or that one of
/// them issued to the other: either would vouch for the other instance's
/// identities.
fn shared_authority(a: &[CertificateDer<'_>], b: &[CertificateDer<'_>]) -> Option<String> {
    let names = |certificates: &[CertificateDer<'_>]| -> Vec<(Vec<u8>, Vec<u8>, String)> {
        certificates
            .iter()
            .filter_map(|der| {
                let (_, parsed) = X509Certificate::from_der(der).ok()?;
                Some((
                    parsed.subject().as_raw().to_vec(),
                    parsed.issuer().as_raw().to_vec(),
                    parsed.subject().to_string(),
                ))
            })
            .collect()
    };
    let (a, b) = (names(a), names(b));
    a.iter().find_map(|(subject, issuer, name)| {
        b.iter()
            .any(|(other_subject, other_issuer, _)| {
                subject == other_subject || issuer == other_subject || other_issuer == subject
            })
            .then(|| name.clone())
    })
}

/// Client certificates checked against the CAs of the instance they name:
/// a partner's for its members, the listener's own for everyone else. Each
/// set of CAs has its CRLs, refused once out of date.
#[derive(Debug)]
pub struct InstanceVerifier {
    own: ClientVerifier,
    /// Each partner's verifier, by instance code.
    partners: Vec<(String, ClientVerifier)>,
    hints: Vec<rustls::DistinguishedName>,
}

type ClientVerifier = Fresh<dyn ClientCertVerifier>;

impl InstanceVerifier {
    fn new(own: ClientVerifier, partners: Vec<(String, ClientVerifier)>) -> Self {
        let hints = std::iter::once(&own)
            .chain(partners.iter().map(|(_, verifier)| verifier))
            .flat_map(|verifier| verifier.inner.root_hint_subjects().iter().cloned())
            .collect();
        Self {
            own,
            partners,
            hints,
        }
    }

    /// The verifier for a certificate naming `end_entity`'s member.
    fn for_certificate(&self, end_entity: &CertificateDer<'_>) -> &ClientVerifier {
        // Without partners, no certificate is parsed twice.
        if self.partners.is_empty() {
            return &self.own;
        }
        member_of_certificate(end_entity)
            .ok()
            .and_then(|member| {
                self.partners
                    .iter()
                    .find(|(instance, _)| instance == member.instance())
            })
            .map_or(&self.own, |(_, verifier)| verifier)
    }
}

impl ClientCertVerifier for InstanceVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verifier = self.for_certificate(end_entity);
        verifier.check(now)?;
        verifier
            .inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.own.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.own.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.own.inner.supported_verify_schemes()
    }
}

/// What a listener serves with: the TLS configuration of new connections
/// and the verifier it checks client certificates with, to check again the
/// certificates of connections already open when the CAs or CRLs change.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub config: Arc<ServerConfig>,
    client_verifier: Arc<InstanceVerifier>,
    /// The admin endpoint's, with `gateway.admin_tls`.
    pub admin: Arc<ServerConfig>,
}

impl ListenerTls {
    /// Checks a client chain (leaf first) as a handshake would now: the
    /// current CAs and CRLs, and the current time.
    pub fn check_client(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        self.check_client_at(chain, UnixTime::now())
    }

    /// Checks a client chain (leaf first) as a handshake would at `now`.
    pub fn check_client_at(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.client_verifier
            .verify_client_cert(leaf, intermediates, now)
            .map(drop)
    }

    /// The last second (since the epoch) the CRLs that check a client
    /// chain (leaf first) are accepted in: after it, the chain is refused.
    /// `None` when no CRL says when it is due.
    pub fn crls_stale_after(&self, chain: &[CertificateDer<'_>]) -> Option<i64> {
        let leaf = chain.first()?;
        self.client_verifier.for_certificate(leaf).stale_after()
    }
}

/// What a TLS client needs: the CAs it accepts server certificates from,
/// the CRLs it checks them against, and its own client certificate.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub server_ca: PathBuf,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// Empty: server certificates are not checked for revocation.
    pub crls: Vec<PathBuf>,
    /// How long past its next update a CRL is still accepted.
    pub crl_grace: Duration,
}

impl ClientTls {
    /// Trusting the CAs of `server_ca`, presenting `certificate`, without
    /// CRLs.
    pub fn new(server_ca: PathBuf, certificate: PathBuf, private_key: PathBuf) -> Self {
        Self {
            server_ca,
            certificate,
            private_key,
            crls: Vec::new(),
            crl_grace: Duration::ZERO,
        }
    }

    /// A rustls client config presenting our certificate and speaking only
    /// HTTP/2; refused while one of its CRLs is out of date.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let (config, freshness) = self.client_config_with_freshness()?;
        match freshness.and_then(|freshness| freshness.stale_at(unix_now())) {
            Some(stale) => Err(stale),
            None => Ok(config),
        }
    }

    /// The client config also when a CRL is out of date already, and when
    /// its CRLs go out of date. Its handshakes refuse every server
    /// certificate from then on: a partner's, whose calls are refused
    /// meanwhile rather than this gateway's start.
    pub fn client_config_with_freshness(
        &self,
    ) -> Result<(Arc<ClientConfig>, Option<CrlFreshness>), TlsError> {
        let provider = crypto_provider();
        let roots = root_store(&self.server_ca)?;
        let LoadedCrls { crls, freshness } = load_crl_files(&self.crls, self.crl_grace)?;
        let verifier = Fresh {
            inner: WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .with_crls(crls)
                .build()?,
            freshness: freshness.clone(),
        };
        let (chain, key) = load_identity(&self.certificate, &self.private_key)?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_client_auth_cert(chain, key)
            })
            .map_err(identity_error(&self.certificate))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No resumption either way: a resumed session keeps the server
        // certificate of its first handshake unchecked, so a backend whose
        // certificate expired (or was revoked) could be resumed into.
        config.resumption = rustls::client::Resumption::disabled();
        Ok((Arc::new(config), freshness))
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

/// How long until a certificate valid until `not_after` (seconds since the
/// epoch, inclusive, as X.509 and webpki read it) is expired: zero if it
/// already is.
pub fn until_expired(not_after: i64) -> Duration {
    let expired = u64::try_from(not_after.saturating_add(1))
        .map_or(std::time::SystemTime::UNIX_EPOCH, |secs| {
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
        });
    expired
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// When a certificate expires, in seconds since the epoch.
pub fn certificate_not_after(certificate: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = X509Certificate::from_der(certificate).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Whole days from `now` until `not_after` (both seconds since the
/// epoch), rounded down: negative once expired. What the policies see as
/// `certificate_days_left` and what operators are told.
pub fn days_left(not_after: i64, now: i64) -> i64 {
    not_after.saturating_sub(now).div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate naming `member` in a SPIFFE URI SAN.
    fn certificate_of(member: &MemberId) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            member.to_spiffe_uri().try_into().unwrap(),
        )];
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    /// One parse reads what the two separate reads do, and a chain
    /// without a certificate names no member.
    #[test]
    fn peer_of_chain_reads_the_member_and_the_expiry() {
        let member = MemberId::parse("SN/COM/CBAO/kyc").unwrap();
        let chain = [certificate_of(&member)];
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

    /// A CA named `name`, self-signed, or issued by `issuer`.
    fn authority(
        name: &str,
        issuer: Option<&rcgen::Issuer<'_, rcgen::KeyPair>>,
    ) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = match issuer {
            Some(issuer) => params.signed_by(&key, issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        (certificate.der().clone(), key)
    }

    /// Two instances' CAs may share no authority: not the same CA, nor
    /// one issued by the other.
    #[test]
    fn instances_share_no_certificate_authority() {
        let (senegal, senegal_key) = authority("Senegal CA", None);
        let (azerbaijan, _) = authority("Azerbaijan CA", None);
        assert_eq!(
            shared_authority(
                std::slice::from_ref(&senegal),
                std::slice::from_ref(&azerbaijan)
            ),
            None
        );
        assert!(
            shared_authority(
                std::slice::from_ref(&senegal),
                &[azerbaijan, senegal.clone()]
            )
            .is_some()
        );
        let issuer = rcgen::Issuer::from_ca_cert_der(&senegal, senegal_key).unwrap();
        let (under_senegal, _) = authority("Azerbaijan CA", Some(&issuer));
        assert_eq!(
            shared_authority(
                std::slice::from_ref(&senegal),
                std::slice::from_ref(&under_senegal)
            )
            .as_deref(),
            Some("CN=Senegal CA")
        );
        assert!(shared_authority(&[under_senegal], &[senegal]).is_some());
    }
}
