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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// RFC 8037, appendix A.1: the example key.
    const RFC_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    /// RFC 8037, appendix A.4: the JWS of "Example of Ed25519 signing".
    const RFC_JWS: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.\
                           hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    /// The same R with another S: a mistyped copy of the vector seen in
    /// circulation. It must not verify.
    const MISTYPED_SIGNATURE: &str =
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcmR4biEE4bZfsaBYp2YvKRnRJ4gZUl6LtyACw";
    /// The DER prefix of a PKCS#8 v1 Ed25519 private key (RFC 8410), before
    /// the 32-byte seed.
    const PKCS8_V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];

    fn claims() -> ConsentClaims {
        ConsentClaims {
            consent_id: "6f1c1f5e-8a55-4c3e-9a53-3f2b8f0f4a11".into(),
            subject: "1751199900123".into(),
            consumer: "SN/COM/CBAO/kyc".into(),
            providers: vec!["SN/GOV/ANEC/civil-registry".into()],
            methods: vec!["/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity".into()],
            purpose: "KYC".into(),
            not_before: 1_750_000_000,
            expires: 1_750_086_400,
            max_uses: 3,
            issuer: "SN/GOV/MYGOV/app".into(),
            issued_at: 1_750_000_000,
        }
    }

    fn keys_of(signers: &[&ConsentSigner]) -> IssuerKeys {
        IssuerKeys::from_jwks(&IssuerKeys::jwks(signers)).unwrap()
    }

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    fn malformed_message(result: Result<ConsentClaims, ArtefactError>) -> String {
        match result {
            Err(ArtefactError::Malformed(message)) => message,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    /// A token with `header` (JSON text) signed by `signer`, whatever its kid.
    fn with_header(signer: &ConsentSigner, header: &str) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
        let input = format!("{}.{payload}", URL_SAFE_NO_PAD.encode(header));
        let signature = signer.pair.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    fn jwks_error(json: &str) -> String {
        match IssuerKeys::from_jwks(json) {
            Err(ArtefactError::Key(message)) => message,
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    fn jwk_set(key: serde_json::Value) -> String {
        serde_json::json!({ "keys": [key] }).to_string()
    }

    #[test]
    fn sign_verify_round_trip() {
        let signer = ConsentSigner::generate("mygov-2025-01").unwrap();
        let keys = keys_of(&[&signer]);
        let token = signer.sign(&claims());
        assert_eq!(keys.verify(&token).unwrap(), claims());
    }

    #[test]
    fn header_is_exactly_alg_kid_typ() {
        let signer = ConsentSigner::generate("mygov-2025-01").unwrap();
        let token = signer.sign(&claims());
        let header = URL_SAFE_NO_PAD.decode(&parts(&token)[0]).unwrap();
        assert_eq!(
            String::from_utf8(header).unwrap(),
            r#"{"alg":"EdDSA","kid":"mygov-2025-01","typ":"JWT"}"#
        );
    }

    #[test]
    fn payload_uses_registered_claim_names() {
        let signer = ConsentSigner::generate("k").unwrap();
        let token = signer.sign(&claims());
        let payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts(&token)[1]).unwrap()).unwrap();
        for name in [
            "jti", "sub", "nbf", "exp", "iss", "iat", "consumer", "max_uses",
        ] {
            assert!(payload.get(name).is_some(), "missing {name} in {payload}");
        }
    }

    #[test]
    fn public_jwk_has_rfc_8037_members() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let jwk = signer.public_jwk();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["kid"], "k1");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["use"], "sig");
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        assert_eq!(x, signer.pair.public_key().as_ref());
    }

    #[test]
    fn debug_shows_no_private_key() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let debug = format!("{signer:?}");
        assert!(debug.contains("k1"));
        assert!(!debug.contains(&base64::engine::general_purpose::STANDARD.encode(&signer.pkcs8)));
        assert!(!debug.contains("pkcs8"));
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let token = parts(&signer.sign(&claims()));
        let mut forged = claims();
        forged.max_uses = 1000;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let token = format!("{}.{forged_payload}.{}", token[0], token[2]);
        assert!(matches!(
            keys.verify(&token),
            Err(ArtefactError::BadSignature)
        ));
    }

    #[test]
    fn tampered_signature_is_bad_signature() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let token = parts(&signer.sign(&claims()));
        let mut signature = URL_SAFE_NO_PAD.decode(&token[2]).unwrap();
        signature[10] ^= 0x01;
        let token = format!(
            "{}.{}.{}",
            token[0],
            token[1],
            URL_SAFE_NO_PAD.encode(signature)
        );
        assert!(matches!(
            keys.verify(&token),
            Err(ArtefactError::BadSignature)
        ));
    }

    #[test]
    fn signature_by_another_key_with_the_same_kid_is_bad_signature() {
        let trusted = ConsentSigner::generate("k1").unwrap();
        let impostor = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&trusted]);
        assert!(matches!(
            keys.verify(&impostor.sign(&claims())),
            Err(ArtefactError::BadSignature)
        ));
    }

    #[test]
    fn unknown_kid_is_unknown_key() {
        let trusted = ConsentSigner::generate("k1").unwrap();
        let other = ConsentSigner::generate("k2").unwrap();
        let keys = keys_of(&[&trusted]);
        match keys.verify(&other.sign(&claims())) {
            Err(ArtefactError::UnknownKey(kid)) => assert_eq!(kid, "k2"),
            other => panic!("expected UnknownKey, got {other:?}"),
        }
        assert!(matches!(
            IssuerKeys::default().verify(&trusted.sign(&claims())),
            Err(ArtefactError::UnknownKey(_))
        ));
    }

    #[test]
    fn alg_none_and_hs256_are_refused() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        for alg in ["none", "HS256", "ES256", "eddsa", "Ed25519"] {
            let token = with_header(&signer, &format!(r#"{{"alg":"{alg}","kid":"k1"}}"#));
            let message = malformed_message(keys.verify(&token));
            assert_eq!(message, format!("header: alg must be EdDSA, not {alg}"));
        }
        // alg `none` with an empty signature: refused on structure already.
        let token = with_header(&signer, r#"{"alg":"none","kid":"k1"}"#);
        let unsigned = format!("{}.", token.rsplit_once('.').unwrap().0);
        assert!(malformed_message(keys.verify(&unsigned)).contains("signature part is empty"));
    }

    #[test]
    fn header_checks() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let cases = [
            (r#"{"kid":"k1"}"#, "header: missing field `alg`"),
            (r#"{"alg":"EdDSA"}"#, "header: kid is required"),
            (
                r#"{"alg":"EdDSA","kid":""}"#,
                "header: kid must not be empty",
            ),
            (
                r#"{"alg":"EdDSA","kid":"k1","crit":["exp"]}"#,
                "header: crit is not supported",
            ),
            (
                r#"{"alg":"EdDSA","kid":"k1","crit":null}"#,
                "header: crit is not supported",
            ),
            (
                r#"{"alg":"EdDSA","kid":"k1","alg":"EdDSA"}"#,
                "header: duplicate field `alg`",
            ),
            (r#"["EdDSA","k1"]"#, "header: must be a JSON object"),
            ("\"EdDSA\"", "header: must be a JSON object"),
            ("{not json", "header: key must be a string"),
            (
                r#"{"alg":1,"kid":"k1"}"#,
                "header: invalid type: integer `1`",
            ),
        ];
        for (header, expected) in cases {
            let message = malformed_message(keys.verify(&with_header(&signer, header)));
            assert!(message.starts_with(expected), "{header}: {message}");
        }
        // A valid header with extra members passes.
        let token = with_header(
            &signer,
            r#"{"alg":"EdDSA","kid":"k1","typ":"JWT","x5u":"https://evil"}"#,
        );
        assert_eq!(keys.verify(&token).unwrap(), claims());
    }

    #[test]
    fn padding_and_non_base64url_characters_are_refused() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let token = parts(&signer.sign(&claims()));
        let cases = [
            (
                format!("{}=.{}.{}", token[0], token[1], token[2]),
                "the header part ends in `=` padding",
            ),
            (
                format!("{}.{}.{}==", token[0], token[1], token[2]),
                "the signature part ends in `=` padding",
            ),
            (
                format!("{}.{}+.{}", token[0], token[1], token[2]),
                "the payload part contains '+'",
            ),
            (
                format!("{}.{}.{}/", token[0], token[1], token[2]),
                "the signature part contains '/'",
            ),
            (
                format!("{} .{}.{}", token[0], token[1], token[2]),
                "the header part contains ' '",
            ),
            (
                format!("{}.{}.{}\n", token[0], token[1], token[2]),
                "the signature part contains '\\n'",
            ),
            (
                format!("{}.{}.{}é", token[0], token[1], token[2]),
                "the signature part contains 'é'",
            ),
            (
                format!("{}.{}.{}", token[0], token[1], &token[2][..84]),
                "the signature must be 64 bytes (Ed25519), not 63",
            ),
            (
                format!("{}.A.{}", token[0], token[2]),
                "the payload part is not valid base64url",
            ),
            (
                format!(".{}.{}", token[1], token[2]),
                "the header part is empty",
            ),
        ];
        for (token, expected) in cases {
            let message = malformed_message(keys.verify(&token));
            assert!(message.starts_with(expected), "{token}: {message}");
        }
    }

    #[test]
    fn non_canonical_base64url_is_refused() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let token = parts(&signer.sign(&claims()));
        // 64 bytes encode to 86 characters; the last carries 4 unused bits,
        // which must be zero. The next character sets one: the same bytes
        // would decode from another text.
        let signature = &token[2];
        let last = signature.chars().last().unwrap();
        let twin = char::from_u32(u32::from(last) + 1).unwrap();
        let token = format!("{}.{}.{}{twin}", token[0], token[1], &signature[..85]);
        let message = malformed_message(keys.verify(&token));
        assert!(message.contains("not valid base64url"), "{message}");
    }

    #[test]
    fn two_or_four_parts_are_refused() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let token = signer.sign(&claims());
        let (two, _) = token.rsplit_once('.').unwrap();
        let four = format!("{token}.{}", parts(&token)[2]);
        for (token, found) in [(two.to_owned(), 2), (four, 4), ("abc".to_owned(), 1)] {
            assert_eq!(
                malformed_message(keys.verify(&token)),
                format!(
                    "the artefact must be three base64url parts separated by dots \
                     (header.payload.signature), not {found}"
                )
            );
        }
        assert_eq!(malformed_message(keys.verify("")), "the artefact is empty");
    }

    #[test]
    fn oversize_token_is_refused_before_decoding() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let mut big = claims();
        big.methods = vec!["/a.B/C".repeat(1000)];
        let token = signer.sign(&big);
        assert!(token.len() > MAX_ARTEFACT_LEN);
        let message = malformed_message(keys.verify(&token));
        assert!(
            message.contains(&format!("more than the {MAX_ARTEFACT_LEN} allowed")),
            "{message}"
        );
        // Just at the bound the length is not what fails.
        let at_bound = "A".repeat(MAX_ARTEFACT_LEN);
        assert!(malformed_message(keys.verify(&at_bound)).contains("three base64url parts"));
        let over = "A".repeat(MAX_ARTEFACT_LEN + 1);
        assert!(malformed_message(keys.verify(&over)).contains("more than"));
    }

    #[test]
    fn missing_claim_is_malformed() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let mut payload = serde_json::to_value(claims()).unwrap();
        payload.as_object_mut().unwrap().remove("exp");
        let token = signer.sign_payload(payload.to_string().as_bytes());
        let message = malformed_message(keys.verify(&token));
        assert!(
            message.starts_with("payload: missing field `exp`"),
            "{message}"
        );
    }

    #[test]
    fn wrong_claim_type_is_malformed() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let cases = [
            (
                "exp",
                serde_json::json!("1750086400"),
                "payload: invalid type: string \"1750086400\", expected i64",
            ),
            (
                "max_uses",
                serde_json::json!(-1),
                "payload: invalid value: integer `-1`, expected u32",
            ),
            (
                "providers",
                serde_json::json!("SN/GOV/ANEC/civil-registry"),
                "payload: invalid type: string",
            ),
            (
                "sub",
                serde_json::json!(null),
                "payload: invalid type: null, expected a string",
            ),
        ];
        for (name, value, expected) in cases {
            let mut payload = serde_json::to_value(claims()).unwrap();
            payload[name] = value;
            let token = signer.sign_payload(payload.to_string().as_bytes());
            let message = malformed_message(keys.verify(&token));
            assert!(message.starts_with(expected), "{name}: {message}");
        }
    }

    #[test]
    fn payload_must_be_an_object() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let c = claims();
        let array = serde_json::json!([
            c.consent_id,
            c.subject,
            c.consumer,
            c.providers,
            c.methods,
            c.purpose,
            c.not_before,
            c.expires,
            c.max_uses,
            c.issuer,
            c.issued_at
        ]);
        // The derived Deserialize would take this array; the check must not.
        assert!(serde_json::from_value::<ConsentClaims>(array.clone()).is_ok());
        let token = signer.sign_payload(array.to_string().as_bytes());
        assert_eq!(
            malformed_message(keys.verify(&token)),
            "payload: the claims must be a JSON object"
        );
        let token = signer.sign_payload(b"Example of Ed25519 signing");
        assert_eq!(
            malformed_message(keys.verify(&token)),
            "payload: the claims must be a JSON object"
        );
    }

    #[test]
    fn extra_claims_are_allowed_and_duplicate_claims_refused() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let keys = keys_of(&[&signer]);
        let mut payload = serde_json::to_value(claims()).unwrap();
        payload["aud"] = serde_json::json!("SN/GOV/GATEWAY/gateway");
        payload["scope"] = serde_json::json!({ "nested": [1, 2, 3] });
        let token = signer.sign_payload(payload.to_string().as_bytes());
        assert_eq!(keys.verify(&token).unwrap(), claims());

        let json = serde_json::to_string(&claims()).unwrap();
        let duplicated = format!(r#"{{"max_uses":1000,{}"#, &json[1..]);
        let token = signer.sign_payload(duplicated.as_bytes());
        let message = malformed_message(keys.verify(&token));
        assert!(
            message.starts_with("payload: duplicate field `max_uses`"),
            "{message}"
        );
    }

    #[test]
    fn jwks_parse_errors_name_the_key() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let good = signer.public_jwk();
        let with = |name: &str, value: serde_json::Value| {
            let mut key = good.clone();
            key[name] = value;
            jwk_set(key)
        };
        let without = |name: &str| {
            let mut key = good.clone();
            key.as_object_mut().unwrap().remove(name);
            jwk_set(key)
        };
        let short_x = URL_SAFE_NO_PAD.encode([7u8; 31]);
        let cases = [
            (
                with("kty", "EC".into()),
                "JWK Set: key 0 (kid `k1`): kty must be OKP (Ed25519), not EC",
            ),
            (
                with("kty", "RSA".into()),
                "JWK Set: key 0 (kid `k1`): kty must be OKP (Ed25519), not RSA",
            ),
            (
                with("crv", "X25519".into()),
                "JWK Set: key 0 (kid `k1`): crv must be Ed25519, not X25519",
            ),
            (
                without("crv"),
                "JWK Set: key 0 (kid `k1`): crv is required (Ed25519)",
            ),
            (
                with("x", short_x.into()),
                "JWK Set: key 0 (kid `k1`): x must be 32 bytes (an Ed25519 key), not 31",
            ),
            (
                with("x", "AAAA=".into()),
                "JWK Set: key 0 (kid `k1`): x is not base64url without padding",
            ),
            (
                without("x"),
                "JWK Set: key 0 (kid `k1`): x (the public key) is required",
            ),
            (without("kid"), "JWK Set: key 0: kid is required"),
            (
                with("kid", "".into()),
                "JWK Set: key 0 (kid ``): kid must not be empty",
            ),
            (
                with("alg", "ES256".into()),
                "JWK Set: key 0 (kid `k1`): alg must be EdDSA, not ES256",
            ),
            (
                with("use", "enc".into()),
                "JWK Set: key 0 (kid `k1`): use must be sig, not enc",
            ),
            (
                with("d", RFC_D.into()),
                "JWK Set: key 0 (kid `k1`): holds a private key",
            ),
            (
                with("kid", 5.into()),
                "JWK Set: keys[0].kid: invalid type: integer `5`",
            ),
            (
                r#"{"keys":{}}"#.to_owned(),
                "JWK Set: keys: invalid type: map",
            ),
            ("{}".to_owned(), "JWK Set: missing field `keys`"),
            ("[".to_owned(), "JWK Set: EOF while parsing"),
            ("[[]]".to_owned(), "JWK Set: must be a JSON object"),
            (
                r#"{"keys":[["OKP"]]}"#.to_owned(),
                "JWK Set: key 0: must be a JSON object",
            ),
            (
                r#"{"keys":[{"x":"a","x":"b"}]}"#.to_owned(),
                "JWK Set: keys[0]: duplicate field `x`",
            ),
        ];
        for (json, expected) in cases {
            let message = jwks_error(&json);
            assert!(message.starts_with(expected), "{json}: {message}");
        }
    }

    #[test]
    fn jwks_duplicate_kid_is_refused() {
        let first = ConsentSigner::generate("k1").unwrap();
        let second = ConsentSigner::generate("k1").unwrap();
        let other = ConsentSigner::generate("k2").unwrap();
        let message = jwks_error(&IssuerKeys::jwks(&[&first, &other, &second]));
        assert_eq!(
            message,
            "JWK Set: key 2 (kid `k1`): duplicate kid, also key 0"
        );
    }

    #[test]
    fn jwks_keeps_every_key_and_ignores_unknown_members() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let mut key = signer.public_jwk();
        key["key_ops"] = serde_json::json!(["verify"]);
        key["x5c"] = serde_json::json!([]);
        let keys = IssuerKeys::from_jwks(&jwk_set(key)).unwrap();
        assert_eq!(keys.verify(&signer.sign(&claims())).unwrap(), claims());
        let empty = IssuerKeys::from_jwks(r#"{"keys":[]}"#).unwrap();
        assert!(empty.is_empty());
        assert!(!keys.is_empty());
    }

    #[test]
    fn key_rotation() {
        let old = ConsentSigner::generate("mygov-2025-01").unwrap();
        let new = ConsentSigner::generate("mygov-2025-07").unwrap();
        let both = keys_of(&[&old, &new]);
        assert_eq!(both.verify(&old.sign(&claims())).unwrap(), claims());
        assert_eq!(both.verify(&new.sign(&claims())).unwrap(), claims());

        let only_new = keys_of(&[&new]);
        assert_eq!(only_new.verify(&new.sign(&claims())).unwrap(), claims());
        match only_new.verify(&old.sign(&claims())) {
            Err(ArtefactError::UnknownKey(kid)) => assert_eq!(kid, "mygov-2025-01"),
            other => panic!("expected UnknownKey, got {other:?}"),
        }
    }

    #[test]
    fn insert_trusts_a_raw_key() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let mut keys = IssuerKeys::default();
        assert!(keys.is_empty());
        let public_key: [u8; 32] = signer.pair.public_key().as_ref().try_into().unwrap();
        keys.insert("k1", public_key);
        assert_eq!(keys.verify(&signer.sign(&claims())).unwrap(), claims());
    }

    #[test]
    fn signer_pem_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("consent.key");
        let signer = ConsentSigner::generate("k1").unwrap();
        signer.write(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let loaded = ConsentSigner::load("k1", &path).unwrap();
        assert_eq!(loaded.key_id(), "k1");
        assert_eq!(loaded.public_jwk(), signer.public_jwk());
        // What one signs, a JWKS of the other verifies.
        assert_eq!(
            keys_of(&[&signer]).verify(&loaded.sign(&claims())).unwrap(),
            claims()
        );
    }

    #[test]
    fn signer_load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.key");
        let message = ConsentSigner::load("k1", &missing).unwrap_err().to_string();
        assert!(
            message.starts_with(&missing.display().to_string()),
            "{message}"
        );

        let not_pem = dir.path().join("not-pem.key");
        crate::keys::write_file(&not_pem, b"garbage", 0o600).unwrap();
        let message = ConsentSigner::load("k1", &not_pem).unwrap_err().to_string();
        assert!(
            message.starts_with(&not_pem.display().to_string()),
            "{message}"
        );
        assert!(message.contains("PRIVATE KEY"), "{message}");

        let not_ed25519 = dir.path().join("not-ed25519.key");
        crate::keys::write_file(
            &not_ed25519,
            crate::keys::pkcs8_pem(&[0x30, 0x03, 0x02, 0x01, 0x00]).as_bytes(),
            0o600,
        )
        .unwrap();
        let message = ConsentSigner::load("k1", &not_ed25519)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with(&not_ed25519.display().to_string()),
            "{message}"
        );
        assert!(
            message.contains("not an Ed25519 PKCS#8 private key"),
            "{message}"
        );
    }

    #[test]
    fn signer_key_id_is_checked() {
        assert!(ConsentSigner::generate("").is_err());
        assert!(ConsentSigner::generate("a\nb").is_err());
        assert!(ConsentSigner::generate(&"k".repeat(MAX_KID_LEN + 1)).is_err());
        assert!(ConsentSigner::generate(&"k".repeat(MAX_KID_LEN)).is_ok());
    }

    #[test]
    fn jwks_load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuers.jwks");
        let message = IssuerKeys::load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
        std::fs::write(&path, r#"{"keys":[{"kty":"EC"}]}"#).unwrap();
        let message = IssuerKeys::load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: JWK Set: key 0", path.display())),
            "{message}"
        );

        let signer = ConsentSigner::generate("k1").unwrap();
        std::fs::write(&path, IssuerKeys::jwks(&[&signer])).unwrap();
        let keys = IssuerKeys::load(&path).unwrap();
        assert_eq!(keys.verify(&signer.sign(&claims())).unwrap(), claims());
    }

    #[test]
    fn rfc_8037_a4_signature_verifies() {
        let x: [u8; 32] = URL_SAFE_NO_PAD.decode(RFC_X).unwrap().try_into().unwrap();
        let [header_b64, payload_b64, signature_b64] = RFC_JWS.split('.').collect::<Vec<_>>()[..]
        else {
            panic!("the vector has three parts");
        };
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).unwrap();
        check_signature(&x, header_b64, payload_b64, &signature).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(payload_b64).unwrap(),
            b"Example of Ed25519 signing"
        );

        // Another S, one changed byte of the signature or the input fails.
        let mistyped = URL_SAFE_NO_PAD.decode(MISTYPED_SIGNATURE).unwrap();
        assert!(matches!(
            check_signature(&x, header_b64, payload_b64, &mistyped),
            Err(ArtefactError::BadSignature)
        ));
        let mut bad = signature.clone();
        bad[0] ^= 0x80;
        assert!(matches!(
            check_signature(&x, header_b64, payload_b64, &bad),
            Err(ArtefactError::BadSignature)
        ));
        assert!(matches!(
            check_signature(
                &x,
                header_b64,
                "RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmd",
                &signature
            ),
            Err(ArtefactError::BadSignature)
        ));

        // Through the full path the header has no kid, so it stops there.
        let mut keys = IssuerKeys::default();
        keys.insert("rfc8037", x);
        assert_eq!(
            malformed_message(keys.verify(RFC_JWS)),
            "header: kid is required"
        );
    }

    #[test]
    fn rfc_8037_a4_signing_reproduces_the_vector() {
        let d = URL_SAFE_NO_PAD.decode(RFC_D).unwrap();
        let pair = Ed25519KeyPair::from_seed_unchecked(&d).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(pair.public_key()), RFC_X);
        let (input, signature) = RFC_JWS.rsplit_once('.').unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes())),
            signature
        );

        // The same key as a PKCS#8 v1 document makes a signer with that x.
        let mut pkcs8 = PKCS8_V1_PREFIX.to_vec();
        pkcs8.extend_from_slice(&d);
        let signer = ConsentSigner::from_pkcs8("rfc8037", &pkcs8).unwrap();
        assert_eq!(signer.public_jwk()["x"], RFC_X);
        assert_eq!(
            keys_of(&[&signer]).verify(&signer.sign(&claims())).unwrap(),
            claims()
        );
    }
}
