//! Files that hold secrets: private keys and the admin token.
//!
//! A secret that every user of the machine may read is no longer the
//! gateway's alone, so such a file is refused at load, naming the file and
//! the fix; one its group may read is loaded with a warning (keys shared
//! with a group such as `ssl-cert` are a common, deliberate setup). This
//! module never reads a secret's contents into a log or an error.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A secret file others may read or write.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: mode {mode:04o} lets every user of the machine read or change this secret; \
     `chmod 600` it"
)]
pub struct ExposedSecret {
    pub path: PathBuf,
    pub mode: u32,
}

/// Refuses `path` when others than its owner and group may read or write
/// it; warns when its group may. A file that cannot be inspected is left
/// to the read that follows, which reports why.
pub fn check_permissions(path: &Path) -> Result<(), ExposedSecret> {
    let Ok(metadata) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(ExposedSecret {
            path: path.to_owned(),
            mode,
        });
    }
    if mode & 0o070 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{mode:04o}"),
            "a secret readable by its group: `chmod 600` it unless the group is meant to"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_readable_secrets_are_refused_and_private_ones_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("gateway.key");
        std::fs::write(&key, "secret").unwrap();
        for (mode, refused) in [(0o644, true), (0o602, true), (0o640, false), (0o600, false)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let result = check_permissions(&key);
            assert_eq!(result.is_err(), refused, "{mode:o}");
            if let Err(error) = result {
                let message = error.to_string();
                assert!(message.contains("gateway.key") && message.contains("chmod 600"));
                assert!(message.contains(&format!("{mode:04o}")), "{message}");
            }
        }
    }
}
