//! Unit tests of [`super`].

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
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
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
