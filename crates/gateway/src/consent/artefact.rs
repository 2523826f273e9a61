//! Consent artefacts: a citizen's consent, signed by the issuer (the MyGov
//! portal) as a compact JWS (RFC 7515) with EdDSA over Ed25519 (RFC 8037).
//!
//! An artefact is `b64url(header).b64url(payload).b64url(signature)`. The
//! header is `{"alg":"EdDSA","kid":"<key id>","typ":"JWT"}`; the payload is
//! the JSON of [`ConsentClaims`]: who consents (`sub`), which consumer may
//! ask, which providers and gRPC methods are in scope, for what purpose,
//! when, and how many times. The consumer presents the artefact with its
//! calls; the gateway verifies it here with the issuer keys it trusts
//! ([`IssuerKeys`], a JWK Set, several key ids at once during a rotation).
//!
//! [`IssuerKeys::verify`] checks, in this order:
//!
//! 1. structure: bounded length first, so nothing else allocates more than
//!    [`MAX_ARTEFACT_LEN`] bytes; three base64url parts without padding; a
//!    64-byte signature;
//! 2. the header: `alg` must be exactly `EdDSA`, so a token cannot choose a
//!    weaker algorithm (`none`, `HS256` with the public key as secret);
//!    `crit` is refused because no extension is understood; `kid` picks
//!    the key;
//! 3. the key: only from the trusted set, by `kid` (never from `jwk`,
//!    `jku` or `x5u` headers). An unknown key id is its own error, so an
//!    operator tells a missed rotation from a forgery;
//! 4. the signature over the header and payload exactly as received;
//! 5. only then the payload: unauthenticated bytes never reach the claims
//!    parser, and a claims error points at the issuer, not at the caller.
//!
//! This module never checks time, consumer, scope or use counts: the
//! gateway does, against the request and the revocation feed. It never
//! panics on any input.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The longest artefact accepted, in bytes. Real artefacts are well under
/// 2 KiB; the bound is checked before anything is decoded.
pub const MAX_ARTEFACT_LEN: usize = 8192;

/// The only JWS algorithm accepted and produced.
const ALG: &str = "EdDSA";
/// The longest key id accepted, in bytes.
const MAX_KID_LEN: usize = 128;
/// The length of an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// The claims of a consent artefact (JSON payload of the JWS).
///
/// Unknown extra claims are ignored; a claim given twice is an error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsentClaims {
    /// The consent's id, e.g. a UUID.
    #[serde(rename = "jti")]
    pub consent_id: String,
    /// The citizen's NIN.
    #[serde(rename = "sub")]
    pub subject: String,
    /// Member id of the data consumer, e.g. `SN/COM/CBAO/kyc`.
    pub consumer: String,
    /// Member ids of the providers in scope, e.g.
    /// `SN/GOV/ANEC/civil-registry`.
    pub providers: Vec<String>,
    /// Full gRPC paths in scope, e.g.
    /// `/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity`.
    pub methods: Vec<String>,
    /// The purpose code, e.g. `KYC`.
    pub purpose: String,
    /// Start of validity, in unix seconds.
    #[serde(rename = "nbf")]
    pub not_before: i64,
    /// End of validity, in unix seconds.
    #[serde(rename = "exp")]
    pub expires: i64,
    /// How many calls the consent covers.
    pub max_uses: u32,
    /// Member id of the issuer, `SN/GOV/MYGOV/app`.
    #[serde(rename = "iss")]
    pub issuer: String,
    /// When the artefact was signed, in unix seconds.
    #[serde(rename = "iat")]
    pub issued_at: i64,
}

/// Why an artefact or a key is refused.
#[derive(Debug, thiserror::Error)]
pub enum ArtefactError {
    /// The artefact is not a well-formed EdDSA compact JWS with consent
    /// claims; the message says what is wrong.
    #[error("malformed consent artefact: {0}")]
    Malformed(String),
    /// The header names a key id the gateway does not trust.
    #[error("consent artefact signed with unknown key id `{0}`")]
    UnknownKey(String),
    /// The signature does not match the header and payload.
    #[error("consent artefact signature does not verify")]
    BadSignature,
    /// Loading or parsing keys and key files.
    #[error("{0}")]
    Key(String),
}

/// Signs artefacts: the MyGov mock holds one.
pub struct ConsentSigner {
    key_id: String,
    pair: Ed25519KeyPair,
    /// Kept to write the key back out.
    pkcs8: Vec<u8>,
    /// The encoded header, the same for every artefact of this key.
    header_b64: String,
}

impl fmt::Debug for ConsentSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsentSigner")
            .field("key_id", &self.key_id)
            .field(
                "public_key",
                &URL_SAFE_NO_PAD.encode(self.pair.public_key()),
            )
            .finish_non_exhaustive()
    }
}

impl ConsentSigner {
    /// A fresh key with id `key_id`.
    pub fn generate(key_id: &str) -> Result<Self, ArtefactError> {
        let pkcs8 = crate::keys::generate_ed25519().ok_or_else(|| {
            ArtefactError::Key("cannot generate a key: the random source failed".into())
        })?;
        Self::from_pkcs8(key_id, &pkcs8)
    }

    /// A key from its PKCS#8 (v1 or v2) DER encoding.
    pub fn from_pkcs8(key_id: &str, pkcs8_der: &[u8]) -> Result<Self, ArtefactError> {
        check_kid(key_id).map_err(|why| ArtefactError::Key(format!("signing key id: {why}")))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8_der).map_err(|rejected| {
            ArtefactError::Key(format!("not an Ed25519 PKCS#8 private key ({rejected})"))
        })?;
        let header = serde_json::json!({ "alg": ALG, "kid": key_id, "typ": "JWT" });
        Ok(Self {
            key_id: key_id.to_owned(),
            pair,
            pkcs8: pkcs8_der.to_vec(),
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
        })
    }

    /// A key from a PEM `PRIVATE KEY` (PKCS#8) file.
    pub fn load(key_id: &str, pem_path: &Path) -> Result<Self, ArtefactError> {
        let in_file =
            |message: String| ArtefactError::Key(format!("{}: {message}", pem_path.display()));
        crate::identity::secret::check_permissions(pem_path)
            .map_err(|exposed| ArtefactError::Key(exposed.to_string()))?;
        let der = PrivatePkcs8KeyDer::from_pem_file(pem_path).map_err(|error| match error {
            rustls_pki_types::pem::Error::NoItemsFound => {
                in_file("no PEM `PRIVATE KEY` (PKCS#8) section".into())
            }
            error => in_file(error.to_string()),
        })?;
        Self::from_pkcs8(key_id, der.secret_pkcs8_der()).map_err(|error| in_file(error.to_string()))
    }

    /// Writes the key as a PEM `PRIVATE KEY` (PKCS#8), readable by its
    /// owner only (mode 0600), replacing the file atomically.
    pub fn write(&self, pem_path: &Path) -> std::io::Result<()> {
        let pem = crate::keys::pkcs8_pem(&self.pkcs8);
        crate::keys::write_file(pem_path, pem.as_bytes(), 0o600).map_err(|source| {
            std::io::Error::new(source.kind(), format!("{}: {source}", pem_path.display()))
        })
    }

    /// The key id, as in the `kid` header of every artefact it signs.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign(&self, claims: &ConsentClaims) -> String {
        #[expect(
            clippy::expect_used,
            reason = "serde_json fails only on maps with non-string keys or failing \
                      Serialize impls; the claims are strings, integers and lists of strings"
        )]
        let payload = serde_json::to_vec(claims).expect("consent claims serialize to JSON");
        self.sign_payload(&payload)
    }

    /// Signs any payload under this key's header.
    fn sign_payload(&self, payload: &[u8]) -> String {
        let mut token = format!("{}.{}", self.header_b64, URL_SAFE_NO_PAD.encode(payload));
        let signature = self.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        token
    }

    /// The public key as a JWK (RFC 8037), for the issuer's JWK Set.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.pair.public_key()),
            "kid": self.key_id,
            "alg": ALG,
            "use": "sig",
        })
    }
}

/// The issuer keys the gateway trusts, by key id (rotation: several kids
/// at once).
#[derive(Debug, Clone, Default)]
pub struct IssuerKeys {
    keys: BTreeMap<String, [u8; 32]>,
}

/// A JWK Set as read: only what is checked.
#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// One JWK as read. Every member is optional so that a missing one gets a
/// message naming the key.
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    d: Present,
}

impl IssuerKeys {
    /// Parses an RFC 7517 JWK Set `{"keys":[...]}`. Only Ed25519 keys
    /// (`kty` OKP, `crv` Ed25519) with a `kid` are accepted; a private key
    /// or a key id given twice is an error.
    pub fn from_jwks(json: &str) -> Result<Self, ArtefactError> {
        // Derived impls take arrays for structs; a JWK Set and its keys are
        // objects only. The shapes are checked on a first, untyped read.
        let shape: serde_json::Value = serde_json::from_str(json)
            .map_err(|error| ArtefactError::Key(format!("JWK Set: {error}")))?;
        let Some(members) = shape.as_object() else {
            return Err(ArtefactError::Key(
                "JWK Set: must be a JSON object {\"keys\": [...]}".into(),
            ));
        };
        let not_an_object = members
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .and_then(|keys| keys.iter().position(|key| !key.is_object()));
        if let Some(index) = not_an_object {
            return Err(ArtefactError::Key(format!(
                "JWK Set: key {index}: must be a JSON object"
            )));
        }
        let set: JwkSet =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(json))
                .map_err(|error| {
                    let at = error.path().to_string();
                    let error = error.into_inner();
                    if at == "." {
                        ArtefactError::Key(format!("JWK Set: {error}"))
                    } else {
                        ArtefactError::Key(format!("JWK Set: {at}: {error}"))
                    }
                })?;
        let mut keys = Self::default();
        let mut indices = BTreeMap::new();
        for (index, jwk) in set.keys.into_iter().enumerate() {
            let refuse = |why: String| {
                let kid = jwk
                    .kid
                    .as_deref()
                    .map_or_else(String::new, |kid| format!(" (kid `{}`)", shorten(kid)));
                ArtefactError::Key(format!("JWK Set: key {index}{kid}: {why}"))
            };
            let Some(kid) = jwk.kid.as_deref() else {
                return Err(refuse("kid is required".into()));
            };
            check_kid(kid).map_err(|why| refuse(format!("kid {why}")))?;
            match jwk.kty.as_deref() {
                Some("OKP") => {}
                Some(other) => {
                    return Err(refuse(format!(
                        "kty must be OKP (Ed25519), not {}",
                        shorten(other)
                    )));
                }
                None => return Err(refuse("kty is required (OKP)".into())),
            }
            match jwk.crv.as_deref() {
                Some("Ed25519") => {}
                Some(other) => {
                    return Err(refuse(format!(
                        "crv must be Ed25519, not {}",
                        shorten(other)
                    )));
                }
                None => return Err(refuse("crv is required (Ed25519)".into())),
            }
            if let Some(alg) = jwk.alg.as_deref().filter(|alg| *alg != ALG) {
                return Err(refuse(format!("alg must be EdDSA, not {}", shorten(alg))));
            }
            if let Some(usage) = jwk.use_.as_deref().filter(|usage| *usage != "sig") {
                return Err(refuse(format!("use must be sig, not {}", shorten(usage))));
            }
            if jwk.d.0 {
                return Err(refuse(
                    "holds a private key (`d`); a set of trusted keys holds public keys only"
                        .into(),
                ));
            }
            let Some(x) = jwk.x.as_deref() else {
                return Err(refuse("x (the public key) is required".into()));
            };
            let x = URL_SAFE_NO_PAD
                .decode(x)
                .map_err(|error| refuse(format!("x is not base64url without padding: {error}")))?;
            let public_key: [u8; 32] = x.as_slice().try_into().map_err(|_| {
                refuse(format!(
                    "x must be 32 bytes (an Ed25519 key), not {}",
                    x.len()
                ))
            })?;
            if let Some(first) = indices.insert(kid.to_owned(), index) {
                return Err(refuse(format!("duplicate kid, also key {first}")));
            }
            keys.insert(kid, public_key);
        }
        Ok(keys)
    }

    /// Reads a JWK Set file.
    pub fn load(path: &Path) -> Result<Self, ArtefactError> {
        let json = std::fs::read_to_string(path)
            .map_err(|error| ArtefactError::Key(format!("{}: {error}", path.display())))?;
        Self::from_jwks(&json)
            .map_err(|error| ArtefactError::Key(format!("{}: {error}", path.display())))
    }

    /// The JWK Set of `signers`' public keys, pretty-printed, for dev PKI
    /// files.
    pub fn jwks(signers: &[&ConsentSigner]) -> String {
        let keys: Vec<_> = signers.iter().map(|signer| signer.public_jwk()).collect();
        format!("{:#}\n", serde_json::json!({ "keys": keys }))
    }

    /// Trusts `public_key` for artefacts with key id `kid`, replacing any
    /// key of that id.
    pub fn insert(&mut self, kid: &str, public_key: [u8; 32]) {
        self.keys.insert(kid.to_owned(), public_key);
    }

    /// Whether no key is trusted (then every artefact is refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Parses and verifies a compact JWS. Checks, in this order: structure
    /// (3 base64url parts, no padding, total length <= 8192), header JSON
    /// (alg must be exactly "EdDSA"; "crit" present = malformed; kid
    /// required), the kid is known (else UnknownKey), the Ed25519 signature
    /// over `header_b64 + "." + payload_b64` (else BadSignature), then the
    /// payload JSON into ConsentClaims (else Malformed). Time, consumer,
    /// scope etc. are NOT checked here (the gateway does that).
    pub fn verify(&self, token: &str) -> Result<ConsentClaims, ArtefactError> {
        let parts = Parts::split(token)?;
        let kid = parse_header(&parts.header)?;
        let public_key = self.keys.get(&kid).ok_or(ArtefactError::UnknownKey(kid))?;
        check_signature(
            public_key,
            parts.header_b64,
            parts.payload_b64,
            &parts.signature,
        )?;
        parse_claims(&parts.payload)
    }
}

/// The issuer an artefact names (`iss`), read without checking anything:
/// where it is to be checked, never whether to trust it. `None` when it
/// is not an artefact with an issuer.
pub fn claimed_issuer(token: &str) -> Option<String> {
    let parts = Parts::split(token).ok()?;
    if !is_json_object(&parts.payload) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Issuer {
        iss: String,
    }
    serde_json::from_slice::<Issuer>(&parts.payload)
        .ok()
        .map(|claims| claims.iss)
}

/// A compact JWS split and decoded, not yet checked.
struct Parts<'a> {
    header_b64: &'a str,
    payload_b64: &'a str,
    header: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> Parts<'a> {
    fn split(token: &'a str) -> Result<Self, ArtefactError> {
        if token.len() > MAX_ARTEFACT_LEN {
            return Err(malformed(format!(
                "the artefact is {} bytes, more than the {MAX_ARTEFACT_LEN} allowed",
                token.len()
            )));
        }
        if token.is_empty() {
            return Err(malformed("the artefact is empty".into()));
        }
        let mut split = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (split.next(), split.next(), split.next(), split.next())
        else {
            return Err(malformed(format!(
                "the artefact must be three base64url parts separated by dots \
                 (header.payload.signature), not {}",
                token.split('.').count()
            )));
        };
        let parts = Self {
            header_b64,
            payload_b64,
            header: decode_part("header", header_b64)?,
            payload: decode_part("payload", payload_b64)?,
            signature: decode_part("signature", signature_b64)?,
        };
        if parts.signature.len() != SIGNATURE_LEN {
            return Err(malformed(format!(
                "the signature must be {SIGNATURE_LEN} bytes (Ed25519), not {}",
                parts.signature.len()
            )));
        }
        Ok(parts)
    }
}

/// Decodes one part, saying what is wrong with it in the terms of RFC 7515.
fn decode_part(name: &str, part: &str) -> Result<Vec<u8>, ArtefactError> {
    if part.is_empty() {
        return Err(malformed(format!("the {name} part is empty")));
    }
    if part.contains('=') {
        return Err(malformed(format!(
            "the {name} part ends in `=` padding; JWS parts are base64url without padding"
        )));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        let hint = if c == '+' || c == '/' {
            " (base64url uses `-` and `_` where base64 uses `+` and `/`)"
        } else {
            ""
        };
        return Err(malformed(format!(
            "the {name} part contains {c:?}, which is not a base64url character{hint}"
        )));
    }
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|error| malformed(format!("the {name} part is not valid base64url: {error}")))
}

/// The protected header as read: only what is checked.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    #[serde(default)]
    crit: Present,
}

/// Whether a member is present, whatever its value (even `null`).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer)?;
        Ok(Self(true))
    }
}

/// Checks the header; returns the key id it names.
fn parse_header(header: &[u8]) -> Result<String, ArtefactError> {
    if !is_json_object(header) {
        return Err(malformed("header: must be a JSON object".into()));
    }
    let header: Header =
        serde_json::from_slice(header).map_err(|error| malformed(format!("header: {error}")))?;
    if header.alg != ALG {
        return Err(malformed(format!(
            "header: alg must be EdDSA, not {}",
            shorten(&header.alg)
        )));
    }
    if header.crit.0 {
        return Err(malformed(
            "header: crit is not supported (no JWS extension is understood)".into(),
        ));
    }
    let Some(kid) = header.kid else {
        return Err(malformed("header: kid is required".into()));
    };
    check_kid(&kid).map_err(|why| malformed(format!("header: kid {why}")))?;
    Ok(kid)
}

/// Checks an Ed25519 signature over `header_b64.payload_b64`.
fn check_signature(
    public_key: &[u8; 32],
    header_b64: &str,
    payload_b64: &str,
    signature: &[u8],
) -> Result<(), ArtefactError> {
    let mut signing_input = Vec::with_capacity(header_b64.len() + 1 + payload_b64.len());
    signing_input.extend_from_slice(header_b64.as_bytes());
    signing_input.push(b'.');
    signing_input.extend_from_slice(payload_b64.as_bytes());
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&signing_input, signature)
        .map_err(|_| ArtefactError::BadSignature)
}

/// Reads the (verified) payload into claims.
fn parse_claims(payload: &[u8]) -> Result<ConsentClaims, ArtefactError> {
    if !is_json_object(payload) {
        return Err(malformed(
            "payload: the claims must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(payload).map_err(|error| malformed(format!("payload: {error}")))
}

/// Whether `json` starts like an object. Derived `Deserialize` impls also
/// accept arrays; JWS headers and claim sets are objects only.
fn is_json_object(json: &[u8]) -> bool {
    json.iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|byte| *byte == b'{')
}

/// Key ids are short printable strings: they end up in logs and errors.
fn check_kid(kid: &str) -> Result<(), String> {
    if kid.is_empty() {
        return Err("must not be empty".into());
    }
    if kid.len() > MAX_KID_LEN {
        return Err(format!(
            "must be at most {MAX_KID_LEN} bytes, not {}",
            kid.len()
        ));
    }
    if kid.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// An untrusted string made safe and short for an error message.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut short: String = text
        .chars()
        .take(MAX_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        short.push('…');
    }
    short
}

fn malformed(message: String) -> ArtefactError {
    ArtefactError::Malformed(message)
}

#[cfg(test)]
mod tests;
