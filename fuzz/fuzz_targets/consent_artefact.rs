//! Fuzzes consent artefact verification (`IssuerKeys::verify`).
//!
//! Every input is verified as a token: it must never panic. Inputs that
//! parse as JSON claims are also signed with a fixed key and verified back:
//! the round trip must give the same claims, or refuse an artefact over the
//! size bound.

#![no_main]

use std::sync::LazyLock;

use govbridge::consent::artefact::{
    ArtefactError, ConsentClaims, ConsentSigner, IssuerKeys, MAX_ARTEFACT_LEN,
};
use libfuzzer_sys::fuzz_target;

/// The DER prefix of a PKCS#8 v1 Ed25519 private key (RFC 8410), before
/// the 32-byte seed.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const KEY_ID: &str = "fuzz";

struct Fixture {
    signer: ConsentSigner,
    keys: IssuerKeys,
}

/// A fixed key, so that a crash found once reproduces.
static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let mut pkcs8 = PKCS8_V1_PREFIX.to_vec();
    pkcs8.extend_from_slice(&[0x42; 32]);
    let signer = ConsentSigner::from_pkcs8(KEY_ID, &pkcs8).expect("a fixed Ed25519 key");
    let keys = IssuerKeys::from_jwks(&IssuerKeys::jwks(&[&signer])).expect("its own JWK Set");
    Fixture { signer, keys }
});

fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;

    // Arbitrary bytes: any answer but a panic. Whatever verifies (only a
    // token of the fixed key can, e.g. from a seed corpus) must also verify
    // once signed again, unchanged.
    let token = String::from_utf8_lossy(data);
    if let Ok(claims) = fixture.keys.verify(&token) {
        let again = fixture.keys.verify(&fixture.signer.sign(&claims));
        assert_eq!(again.ok(), Some(claims));
    }

    // Claims: what is signed verifies back unchanged.
    if let Ok(claims) = serde_json::from_slice::<ConsentClaims>(data) {
        let token = fixture.signer.sign(&claims);
        match fixture.keys.verify(&token) {
            Ok(verified) => {
                assert!(token.len() <= MAX_ARTEFACT_LEN);
                assert_eq!(verified, claims);
            }
            Err(ArtefactError::Malformed(_)) if token.len() > MAX_ARTEFACT_LEN => {}
            Err(error) => panic!("a signed artefact was refused: {error}"),
        }
    }
});
