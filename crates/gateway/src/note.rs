//! Checkpoints as C2SP signed notes (<https://c2sp.org/signed-note>,
//! <https://c2sp.org/tlog-checkpoint>), signed with Ed25519.
//!
//! A checkpoint is three lines, origin, tree size and base64 root hash,
//! followed by a blank line and signature lines
//! `— <key name> <base64(key id || signature)>`. The key id is the first
//! four bytes of SHA-256(name || "\n" || 0x01 || public key), so a verifier
//! holding several keys picks the right one. Public keys travel in the
//! standard verifier-key form `<name>+<key id hex>+<base64(0x01 || key)>`,
//! which Go's `golang.org/x/mod/sumdb/note` and other tlog tools read.

use std::fmt;
use std::path::Path;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// A SHA-256 hash, as the tree's roots are.
type Hash = [u8; 32];

/// The signature algorithm byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;
/// What starts a signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a key, a note or a checkpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("invalid key name `{0}`: it must be non-empty, without spaces or `+`")]
    KeyName(String),
    #[error("malformed verifier key: {0}")]
    VerifierKey(&'static str),
    #[error("malformed private key: {0}")]
    PrivateKey(String),
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("the note has no valid signature by {0}")]
    Unsigned(String),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
    #[error("the checkpoint is for log `{found}`, not `{expected}`")]
    WrongOrigin { expected: String, found: String },
}

fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    key_id_of(name, ALG_ED25519, public_key)
}

/// The signature type of a C2SP tlog-cosignature/v1 (Ed25519 over the
/// checkpoint and a timestamp).
const ALG_COSIGNATURE_V1: u8 = 0x04;

/// What a witness's cosignature signs: the header, its time, the
/// checkpoint's text.
fn cosigned_message(checkpoint_text: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{checkpoint_text}")
}

fn key_id_of(name: &str, algorithm: u8, public_key: &[u8]) -> [u8; 4] {
    let mut input = Vec::with_capacity(name.len() + 2 + public_key.len());
    input.extend_from_slice(name.as_bytes());
    input.push(b'\n');
    input.push(algorithm);
    input.extend_from_slice(public_key);
    let hash = digest(&SHA256, &input);
    let mut id = [0; 4];
    id.copy_from_slice(&hash.as_ref()[..4]);
    id
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains(['+', ' ', '\t', '\n']) {
        return Err(NoteError::KeyName(name.to_owned()));
    }
    Ok(())
}

/// The log's signing key.
pub struct SigningKey {
    name: String,
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("verifier", &self.verifier().to_string())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key named `name` (the log's origin).
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        check_name(name)?;
        let pkcs8 = crate::keys::generate_ed25519()
            .ok_or_else(|| NoteError::PrivateKey("the random source failed".into()))?;
        Self::from_pkcs8(name, &pkcs8)
    }

    /// A key from its PKCS#8 encoding.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, NoteError> {
        check_name(name)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|error| NoteError::PrivateKey(error.to_string()))?;
        Ok(Self {
            name: name.to_owned(),
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// A key from a PEM `PRIVATE KEY` file.
    pub fn from_pem(name: &str, pem: &str) -> Result<Self, NoteError> {
        let der = crate::keys::pkcs8_from_pem(pem).map_err(NoteError::PrivateKey)?;
        Self::from_pkcs8(name, &der)
    }

    /// The key at `path` (a PEM `PRIVATE KEY`), named as the verifier key
    /// beside it (`path` with the extension `.pub`) says, which must be its
    /// public half.
    pub fn read(path: &Path) -> Result<Self, String> {
        let public = path.with_extension("pub");
        let verifier = Verifier::read(&public)?;
        let pem = std::fs::read_to_string(path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        let key = Self::from_pem(verifier.name(), &pem)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        if key.verifier() != verifier {
            return Err(format!(
                "{} is not the public half of {}",
                public.display(),
                path.display()
            ));
        }
        Ok(key)
    }

    /// The key as a PEM `PRIVATE KEY`.
    pub fn to_pem(&self) -> String {
        crate::keys::pkcs8_pem(&self.pkcs8)
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A witness's cosignature of the checkpoint whose text (its first
    /// three lines) is `checkpoint_text`, made at `time` (Unix seconds): a
    /// signature line in the C2SP tlog-cosignature/v1 format, to append
    /// to the checkpoint's note.
    pub fn cosign(&self, checkpoint_text: &str, time: u64) -> String {
        let public_key = self.pair.public_key().as_ref();
        let id = key_id_of(&self.name, ALG_COSIGNATURE_V1, public_key);
        let signature = self
            .pair
            .sign(cosigned_message(checkpoint_text, time).as_bytes());
        let mut blob = id.to_vec();
        blob.extend_from_slice(&time.to_be_bytes());
        blob.extend_from_slice(signature.as_ref());
        format!("{SIGNATURE_PREFIX}{} {}\n", self.name, BASE64.encode(blob))
    }

    /// The public half, for verifiers.
    pub fn verifier(&self) -> Verifier {
        let mut public_key = [0; 32];
        public_key.copy_from_slice(self.pair.public_key().as_ref());
        Verifier {
            name: self.name.clone(),
            algorithm: ALG_ED25519,
            id: key_id(&self.name, &public_key),
            public_key,
        }
    }

    /// The public half as a witness's verifier key (C2SP
    /// tlog-cosignature: signature type 0x04), as other tlog tools expect
    /// a witness's key: it checks cosignatures, not notes.
    pub fn cosignature_verifier(&self) -> Verifier {
        let verifier = self.verifier();
        Verifier {
            algorithm: ALG_COSIGNATURE_V1,
            id: key_id_of(&self.name, ALG_COSIGNATURE_V1, &verifier.public_key),
            ..verifier
        }
    }

    /// Signs `text` (which must end in a newline) into a signed note.
    pub fn sign(&self, text: &str) -> String {
        format!("{text}\n{}", self.signature_line(text))
    }

    /// Signs `text` into one note carrying each key's signature, in
    /// order: a verifier of any of them opens it (a key being replaced,
    /// and its successor, sign alike meanwhile).
    pub fn sign_by_all(keys: &[&Self], text: &str) -> String {
        let mut note = format!("{text}\n");
        for key in keys {
            note.push_str(&key.signature_line(text));
        }
        note
    }

    /// This key's signature line of `text`, with its newline.
    fn signature_line(&self, text: &str) -> String {
        let verifier = self.verifier();
        let signature = self.pair.sign(text.as_bytes());
        let mut blob = verifier.id.to_vec();
        blob.extend_from_slice(signature.as_ref());
        format!("{SIGNATURE_PREFIX}{} {}\n", self.name, BASE64.encode(blob))
    }
}

/// A public key that verifies notes, with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    /// Ed25519 notes (0x01), or a witness's cosignatures (0x04).
    algorithm: u8,
    id: [u8; 4],
    public_key: [u8; 32],
}

impl Verifier {
    /// The key's name: the log's origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's id, as its text form carries it: 8 hex digits of a hash
    /// of its name and key.
    pub fn id_hex(&self) -> String {
        format!("{:08x}", u32::from_be_bytes(self.id))
    }

    /// Parses `<name>+<key id hex>+<base64(ALG || key)>`, ALG being 0x01
    /// (Ed25519 notes) or 0x04 (a witness's cosignatures, C2SP
    /// tlog-cosignature/v1).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::VerifierKey("expected name+id+key"));
        };
        check_name(name)?;
        let key = BASE64
            .decode(key)
            .map_err(|_| NoteError::VerifierKey("the key is not base64"))?;
        let Some((&algorithm, public_key)) = key
            .split_first()
            .filter(|(algorithm, _)| [ALG_ED25519, ALG_COSIGNATURE_V1].contains(algorithm))
        else {
            return Err(NoteError::VerifierKey(
                "not an Ed25519 key (0x01) nor a witness's (0x04)",
            ));
        };
        let public_key: [u8; 32] = public_key
            .try_into()
            .map_err(|_| NoteError::VerifierKey("an Ed25519 key is 32 bytes"))?;
        let expected = key_id_of(name, algorithm, &public_key);
        if id.len() != 8 || u32::from_str_radix(id, 16).ok() != Some(u32::from_be_bytes(expected)) {
            return Err(NoteError::VerifierKey("the key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            algorithm,
            id: expected,
            public_key,
        })
    }

    /// Reads a verifier key file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        Self::parse(&text).map_err(|error| format!("{}: {error}", path.display()))
    }

    /// Checks that `note` carries a valid signature by this key; returns
    /// the signed text.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        self.open_signed(note).map(|(text, _)| text)
    }

    /// Checks that `note` carries a valid signature by this key; returns
    /// the signed text and that signature's line (without its newline).
    pub fn open_signed<'a>(&self, note: &'a str) -> Result<(&'a str, &'a str), NoteError> {
        if self.algorithm != ALG_ED25519 {
            // A witness's key signs cosignatures, never a note.
            return Err(NoteError::Unsigned(self.name.clone()));
        }
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        if !signatures.ends_with('\n') {
            return Err(NoteError::Malformed(
                "the last signature line has no newline",
            ));
        }
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix(SIGNATURE_PREFIX) else {
                return Err(NoteError::Malformed(
                    "a signature line must start with `— `",
                ));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed(
                    "a signature line is `— name signature`",
                ));
            };
            if name != self.name {
                continue;
            }
            let Ok(blob) = BASE64.decode(blob) else {
                continue;
            };
            if blob.len() == 4 + 64
                && blob[..4] == self.id
                && UnparsedPublicKey::new(&ED25519, &self.public_key)
                    .verify(text.as_bytes(), &blob[4..])
                    .is_ok()
            {
                return Ok((text, line));
            }
        }
        Err(NoteError::Unsigned(self.name.clone()))
    }
}

impl Verifier {
    /// The time (Unix seconds) at which this key, as a witness, cosigned
    /// the checkpoint `note` (C2SP tlog-cosignature/v1), if a signature
    /// line of the note is such a cosignature. The note's other
    /// signatures are not checked here.
    pub fn cosigned(&self, note: &str) -> Result<u64, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        let id = key_id_of(&self.name, ALG_COSIGNATURE_V1, &self.public_key);
        for line in signatures.lines() {
            let Some((name, blob)) = line
                .strip_prefix(SIGNATURE_PREFIX)
                .and_then(|rest| rest.split_once(' '))
            else {
                continue;
            };
            let Ok(blob) = BASE64.decode(blob) else {
                continue;
            };
            if name != self.name || blob.len() != 4 + 8 + 64 || blob[..4] != id {
                continue;
            }
            let mut time = [0; 8];
            time.copy_from_slice(&blob[4..12]);
            let time = u64::from_be_bytes(time);
            if UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(cosigned_message(text, time).as_bytes(), &blob[12..])
                .is_ok()
            {
                return Ok(time);
            }
        }
        Err(NoteError::Unsigned(self.name.clone()))
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = vec![self.algorithm];
        key.extend_from_slice(&self.public_key);
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            u32::from_be_bytes(self.id),
            BASE64.encode(key)
        )
    }
}

/// A checkpoint's contents: which log, how many leaves, which root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// `note` with the cosignature `line` (one signature line) in the place of
/// the one its signer (key name and id) gave before, if any: a witness's
/// newest cosignature of a checkpoint says all its older ones do, and
/// later. An older one than that kept stays out; the note's first
/// signature (the log's own) is always kept.
pub fn with_cosignature(note: &str, line: &str) -> String {
    let (text, lines) = split_signatures(note);
    let new = Cosignature::of(line);
    let mut kept = String::from(text);
    let mut newer_kept = false;
    for (position, signature) in lines.split_inclusive('\n').enumerate() {
        match (&new, Cosignature::of(signature)) {
            (Some(new), Some(old)) if position > 0 && old.signer == new.signer => {
                if old.time > new.time {
                    newer_kept = true;
                    kept.push_str(signature);
                }
            }
            _ => kept.push_str(signature),
        }
    }
    if !newer_kept {
        kept.push_str(line);
    }
    kept
}

/// The signature lines of `note` after its first (the log's own): its
/// witnesses' cosignatures, each with its line end.
pub fn cosignature_lines(note: &str) -> impl Iterator<Item = &str> {
    split_signatures(note).1.split_inclusive('\n').skip(1)
}

/// `note`'s signed text (with the blank line after it), and its signature
/// lines; all text when it has no blank line.
fn split_signatures(note: &str) -> (&str, &str) {
    note.split_at(note.rfind("\n\n").map_or(note.len(), |blank| blank + 2))
}

/// What a cosignature line (`— NAME BASE64(key id, time, signature)`)
/// says of itself, unverified: whose key, and when.
struct Cosignature<'a> {
    signer: (&'a str, [u8; 4]),
    time: u64,
}

impl<'a> Cosignature<'a> {
    fn of(line: &'a str) -> Option<Self> {
        let (name, blob) = line
            .strip_prefix(SIGNATURE_PREFIX)?
            .trim_end_matches('\n')
            .split_once(' ')?;
        let blob = BASE64.decode(blob).ok()?;
        let id = blob.get(..4)?.try_into().ok()?;
        let time = u64::from_be_bytes(blob.get(4..12)?.try_into().ok()?);
        Some(Self {
            signer: (name, id),
            time,
        })
    }
}

/// A checkpoint opened from its note: the signed text as it came (a
/// witness cosigns exactly that text) and the log's signature line.
#[derive(Debug)]
pub struct SignedCheckpoint<'a> {
    pub checkpoint: Checkpoint,
    pub text: &'a str,
    pub signature: &'a str,
}

impl SignedCheckpoint<'_> {
    /// The note with the log's signature only.
    pub fn note(&self) -> String {
        format!("{}\n{}\n", self.text, self.signature)
    }
}

impl Checkpoint {
    /// The checkpoint's note text, unsigned.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        )
    }

    /// Signs the checkpoint.
    pub fn sign(&self, key: &SigningKey) -> String {
        key.sign(&self.text())
    }

    /// Verifies a signed checkpoint with `verifier`, whose name must be the
    /// log's origin, and parses it.
    pub fn open(note: &str, verifier: &Verifier) -> Result<Self, NoteError> {
        Self::open_signed(note, verifier).map(|signed| signed.checkpoint)
    }

    /// [`Checkpoint::open`], keeping the signed text as it was and the
    /// line of the signature that verified.
    pub fn open_signed<'a>(
        note: &'a str,
        verifier: &Verifier,
    ) -> Result<SignedCheckpoint<'a>, NoteError> {
        let (text, signature) = verifier.open_signed(note)?;
        let checkpoint = Self::parse(text)?;
        if checkpoint.origin != verifier.name {
            return Err(NoteError::WrongOrigin {
                expected: verifier.name.clone(),
                found: checkpoint.origin,
            });
        }
        Ok(SignedCheckpoint {
            checkpoint,
            text,
            signature,
        })
    }

    /// Parses the text of a checkpoint without checking any signature.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|origin| !origin.is_empty())
            .ok_or(NoteError::Checkpoint("no origin line"))?;
        // Decimal, without sign or leading zeros: one text per size.
        let size = lines
            .next()
            .filter(|size| {
                size.bytes().all(|b| b.is_ascii_digit()) && (*size == "0" || !size.starts_with('0'))
            })
            .and_then(|size| size.parse::<u64>().ok())
            .ok_or(NoteError::Checkpoint(
                "the second line must be the tree size",
            ))?;
        let root = lines
            .next()
            .and_then(|root| BASE64.decode(root).ok())
            .and_then(|root| <Hash>::try_from(root).ok())
            .ok_or(NoteError::Checkpoint(
                "the third line must be the base64 root hash",
            ))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_sign_and_open() {
        let key = SigningKey::generate("govbridge.test/gw-1").unwrap();
        let checkpoint = Checkpoint {
            origin: "govbridge.test/gw-1".into(),
            size: 42,
            root: [7; 32],
        };
        let note = checkpoint.sign(&key);
        assert!(note.starts_with("govbridge.test/gw-1\n42\nBwcH"));
        assert!(note.contains("\n\n\u{2014} govbridge.test/gw-1 "));
        let verifier = Verifier::parse(&key.verifier().to_string()).unwrap();
        assert_eq!(Checkpoint::open(&note, &verifier).unwrap(), checkpoint);

        let tampered = note.replace("\n42\n", "\n43\n");
        assert_eq!(
            Checkpoint::open(&tampered, &verifier),
            Err(NoteError::Unsigned("govbridge.test/gw-1".into()))
        );
        let other = SigningKey::generate("govbridge.test/gw-1").unwrap();
        assert!(Checkpoint::open(&note, &other.verifier()).is_err());
    }

    #[test]
    fn sizes_have_one_spelling() {
        let text =
            |size: &str| format!("log\n{size}\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n");
        assert_eq!(Checkpoint::parse(&text("42")).unwrap().size, 42);
        assert_eq!(Checkpoint::parse(&text("0")).unwrap().size, 0);
        for bad in ["+42", "042", "-1", "4 2", ""] {
            assert!(Checkpoint::parse(&text(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_round_trip_through_pem() {
        let key = SigningKey::generate("log").unwrap();
        let again = SigningKey::from_pem("log", &key.to_pem()).unwrap();
        assert_eq!(again.verifier(), key.verifier());
        assert!(SigningKey::from_pem("log", "garbage").is_err());
        assert!(SigningKey::generate("a b").is_err());
    }

    /// A witness's newer cosignature takes the place of its older one;
    /// the log's signature and other witnesses' stay.
    #[test]
    fn a_newer_cosignature_replaces_the_older_of_its_witness() {
        let log = SigningKey::generate("log").unwrap();
        let (az, ke) = (
            SigningKey::generate("AZ-federation").unwrap(),
            SigningKey::generate("KE-federation").unwrap(),
        );
        let checkpoint = Checkpoint {
            origin: "log".into(),
            size: 3,
            root: [1; 32],
        };
        let text = checkpoint.text();
        let note = with_cosignature(&checkpoint.sign(&log), &az.cosign(&text, 7));
        let note = with_cosignature(&note, &ke.cosign(&text, 8));
        assert_eq!(az.verifier().cosigned(&note), Ok(7));
        let note = with_cosignature(&note, &az.cosign(&text, 90));
        assert_eq!(note.matches("\u{2014} AZ-federation ").count(), 1, "{note}");
        assert_eq!(az.verifier().cosigned(&note), Ok(90));
        assert_eq!(ke.verifier().cosigned(&note), Ok(8));
        assert_eq!(
            Checkpoint::open(&note, &log.verifier()).unwrap(),
            checkpoint
        );
        // An older one, late, does not take the newer's place.
        assert_eq!(with_cosignature(&note, &az.cosign(&text, 50)), note);
        // Another key of the same name is another witness.
        let namesake = SigningKey::generate("AZ-federation").unwrap();
        let note = with_cosignature(&note, &namesake.cosign(&text, 91));
        assert_eq!(az.verifier().cosigned(&note), Ok(90));
        assert_eq!(namesake.verifier().cosigned(&note), Ok(91));
    }

    #[test]
    fn witness_keys_take_the_cosignature_type() {
        let witness = SigningKey::generate("AZ-federation").unwrap();
        let vkey = witness.cosignature_verifier().to_string();
        // C2SP tlog-cosignature: base64(0x04 || key), and the key id the
        // first four bytes of SHA-256(name "\n" 0x04 key).
        let mut parts = vkey.splitn(3, '+');
        let (name, id, key) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let key = BASE64.decode(key).unwrap();
        assert_eq!((name, key[0], key.len()), ("AZ-federation", 0x04, 33));
        let mut input = b"AZ-federation\n".to_vec();
        input.extend_from_slice(&key);
        let hash = digest(&SHA256, &input);
        assert_eq!(
            id,
            format!(
                "{:08x}",
                u32::from_be_bytes(hash.as_ref()[..4].try_into().unwrap())
            )
        );
        let parsed = Verifier::parse(&vkey).unwrap();
        assert_eq!(parsed, witness.cosignature_verifier());

        // It checks cosignatures, as the note key's form does, and opens
        // no note.
        let log = SigningKey::generate("log").unwrap();
        let checkpoint = Checkpoint {
            origin: "log".into(),
            size: 3,
            root: [1; 32],
        };
        let cosigned = format!(
            "{}{}",
            checkpoint.sign(&log),
            witness.cosign(&checkpoint.text(), 7)
        );
        assert_eq!(parsed.cosigned(&cosigned), Ok(7));
        assert_eq!(witness.verifier().cosigned(&cosigned), Ok(7));
        assert!(parsed.open(&witness.sign("a note\n")).is_err());
        assert!(witness.verifier().open(&witness.sign("a note\n")).is_ok());
    }

    #[test]
    fn verifier_keys_are_checked() {
        let key = SigningKey::generate("log").unwrap();
        let text = key.verifier().to_string();
        let (name, rest) = text.split_once('+').unwrap();
        assert_eq!(name, "log");
        let bad_id = format!("log+00000000+{}", rest.split_once('+').unwrap().1);
        assert!(Verifier::parse(&bad_id).is_err());
        assert!(Verifier::parse("log").is_err());
    }

    /// A note signed by Go's `golang.org/x/mod/sumdb/note` (its test key
    /// PeterNeumann): the format is the standard one, not a look-alike.
    #[test]
    fn opens_a_note_signed_by_the_go_implementation() {
        let verifier =
            Verifier::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .unwrap();
        let note = "If you think cryptography is the answer to your problem,\n\
            then you don't know what your problem is.\n\
            \n\
            \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        assert_eq!(
            verifier.open(note).unwrap(),
            "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
        );
    }
}
