//! Ed25519 signing keys as the gateway keeps them: PKCS#8 documents in PEM
//! `PRIVATE KEY` files, written readable by their owner only, and the
//! atomic file write every key and checkpoint file goes through.
//!
//! Shared by the exchange log's checkpoint key ([`crate::exchange_log::note`]) and
//! the consent issuer's key ([`crate::consent::artefact`]); each wraps the
//! document in its own key type and errors.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;

/// A fresh Ed25519 key as a PKCS#8 document, or `None` if the system's
/// random source failed.
pub fn generate_ed25519() -> Option<Vec<u8>> {
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).ok()?;
    Some(document.as_ref().to_vec())
}

/// A PKCS#8 document as a PEM `PRIVATE KEY`, in lines of 64 characters.
pub fn pkcs8_pem(der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// The PKCS#8 document of the first PEM `PRIVATE KEY` section of `pem`.
pub fn pkcs8_from_pem(pem: &str) -> Result<Vec<u8>, String> {
    match PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(der) => Ok(der.secret_pkcs8_der().to_vec()),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            Err("no PEM `PRIVATE KEY` (PKCS#8) section".to_owned())
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Writes a file with the given mode, atomically and durably: readers see
/// the old file or the new one, never a partial or missing one, and the
/// new one survives a crash once this returns. The error does not name
/// the file; callers say which file it was.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let temporary = parent.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        // The rename itself survives a crash once the directory is synced.
        fs::File::open(parent)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// The SHA-256 of `bytes`, in lowercase hex: fingerprints of what a node
/// runs, compared across a fleet.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The SHA-256 of the file at `path`, in lowercase hex, read in pieces
/// (an exchange log's store may be large).
pub fn sha256_file_hex(path: &Path) -> std::io::Result<String> {
    use std::fmt::Write as _;
    use std::io::Read as _;
    let mut file = fs::File::open(path)?;
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
    }
    let digest = context.finish();
    Ok(digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_round_trips_through_pem() {
        let der = generate_ed25519().unwrap();
        let pem = pkcs8_pem(&der);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|line| line.len() <= 64));
        assert_eq!(pkcs8_from_pem(&pem).unwrap(), der);
        assert!(Ed25519KeyPair::from_pkcs8(&der).is_ok());
        let error =
            pkcs8_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(error.unwrap_err().contains("PRIVATE KEY"));
    }
}
