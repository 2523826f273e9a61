use std::time::Duration;

use super::cache::{self, Cache};
use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn published(dir: &Path, version: u64, key: &SigningKey) -> Bundle {
    Bundle::build(dir, "SN", version, DAY, key).unwrap()
}

fn instance_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(GLOBAL_FILE),
        "[purposes]\nKYC = \"Know your customer\"\n\n[members.\"SN/COM/CBAO/kyc\"]\nname = \"CBAO\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/banks.cedar"),
        "permit(principal, action, resource);\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".hidden"), "not published").unwrap();
    dir
}

fn key() -> SigningKey {
    SigningKey::generate("SN-directory").unwrap()
}

#[test]
fn a_bundle_round_trips_and_names_every_file() {
    let (dir, key) = (instance_dir(), key());
    let bundle = published(dir.path(), 1, &key);
    let names: Vec<&str> = bundle.files.keys().map(String::as_str).collect();
    assert_eq!(names, ["global.toml", "policies/banks.cedar"]);
    let opened = Bundle::open(&bundle.to_json(), &key.verifier()).unwrap();
    assert_eq!(opened, bundle);
    assert_eq!(
        Manifest::parse(&bundle.manifest.text()).unwrap(),
        bundle.manifest
    );
}

/// A gateway reads versions up to `i64::MAX`: one past it is not built,
/// since every gateway would refuse it and the next publication after it.
#[test]
fn a_version_no_gateway_reads_is_not_built() {
    let (dir, key) = (instance_dir(), key());
    let highest = u64::try_from(i64::MAX).unwrap();
    let bundle = published(dir.path(), highest, &key);
    assert_eq!(
        Bundle::open(&bundle.to_json(), &key.verifier())
            .unwrap()
            .manifest
            .version,
        highest
    );
    let error = Bundle::build(dir.path(), "SN", highest + 1, DAY, &key).unwrap_err();
    assert!(error.to_string().contains("past the largest"), "{error}");
}

#[test]
fn an_altered_or_foreign_bundle_is_refused() {
    let (dir, key) = (instance_dir(), key());
    let json = String::from_utf8(published(dir.path(), 1, &key).to_json()).unwrap();
    let verifier = key.verifier();

    // A file changed after signing.
    let mut wire: serde_json::Value = serde_json::from_str(&json).unwrap();
    wire["files"]["policies/banks.cedar"] = BASE64
        .encode("permit(principal, action, resource) when { true };")
        .into();
    let altered = serde_json::to_vec(&wire).unwrap();
    assert_eq!(
        Bundle::open(&altered, &verifier).unwrap_err(),
        BundleError::Altered("policies/banks.cedar".into())
    );

    // A file added, or one removed.
    let mut wire: serde_json::Value = serde_json::from_str(&json).unwrap();
    wire["files"]["policies/extra.cedar"] =
        BASE64.encode("permit(principal, action, resource);").into();
    assert_eq!(
        Bundle::open(&serde_json::to_vec(&wire).unwrap(), &verifier).unwrap_err(),
        BundleError::Unlisted("policies/extra.cedar".into())
    );
    let mut wire: serde_json::Value = serde_json::from_str(&json).unwrap();
    wire["files"]
        .as_object_mut()
        .unwrap()
        .remove("policies/banks.cedar");
    assert_eq!(
        Bundle::open(&serde_json::to_vec(&wire).unwrap(), &verifier).unwrap_err(),
        BundleError::Missing("policies/banks.cedar".into())
    );

    // Signed by another key, even one of the same name.
    let other = SigningKey::generate("SN-directory").unwrap();
    assert!(matches!(
        Bundle::open(json.as_bytes(), &other.verifier()),
        Err(BundleError::Unsigned(_))
    ));
    assert!(matches!(
        Bundle::open(b"{}", &verifier),
        Err(BundleError::Malformed(_))
    ));
}

#[test]
fn only_a_newer_unexpired_bundle_of_the_instance_replaces_another() {
    let (dir, key) = (instance_dir(), key());
    let first = published(dir.path(), 3, &key);
    let now = crate::unix_time::now();
    assert_eq!(first.accept("SN", None, now), Ok(true));
    assert_eq!(first.accept("SN", Some(&first.manifest), now), Ok(false));
    assert!(matches!(
        first.accept("AZ", None, now),
        Err(BundleError::WrongInstance { .. })
    ));

    std::fs::write(
        dir.path().join("policies/tax.cedar"),
        "forbid(principal, action, resource);\n",
    )
    .unwrap();
    let second = published(dir.path(), 4, &key);
    assert_eq!(second.accept("SN", Some(&first.manifest), now), Ok(true));
    assert_eq!(
        first.accept("SN", Some(&second.manifest), now),
        Err(BundleError::Replayed {
            offered: 3,
            current: 4
        })
    );
    let same_version = published(dir.path(), 3, &key);
    assert_eq!(
        same_version.accept("SN", Some(&first.manifest), now),
        Err(BundleError::Republished { version: 3 })
    );
    let day = i64::try_from(DAY.as_secs()).unwrap();
    assert!(matches!(
        second.accept("SN", Some(&first.manifest), now + day + 1),
        Err(BundleError::Expired { version: 4, .. })
    ));
}

#[test]
fn paths_that_could_leave_the_cache_are_refused() {
    for path in [
        "../x",
        "/etc/passwd",
        "a/../b",
        "a//b",
        ".git/config",
        "a/.b",
        "a b",
        "a\\b",
        "",
    ] {
        assert!(check_path(path).is_err(), "{path:?} accepted");
    }
    for path in ["global.toml", "policies/banks.cedar", "pki/ca-2026.pem"] {
        check_path(path).unwrap();
    }
}

/// A bundle of more files than an instance publishes is refused before
/// any is written: built, and read from a manifest (a partner's, signed).
#[test]
fn a_bundle_of_too_many_files_is_refused() {
    let (dir, key) = (instance_dir(), key());
    let bundle = published(dir.path(), 1, &key);
    let mut text = bundle.manifest.text();
    let hash = "00".repeat(32);
    for n in 0..MAX_BUNDLE_FILES {
        text.push_str(&format!("file {hash} policies/p{n}.cedar\n"));
    }
    let refused = Manifest::parse(&text).unwrap_err().to_string();
    assert!(refused.contains("more than 4096 files"), "{refused}");

    for n in 0..MAX_BUNDLE_FILES {
        std::fs::write(dir.path().join(format!("policies/p{n}.cedar")), "").unwrap();
    }
    let refused = Bundle::build(dir.path(), "SN", 2, DAY, &key)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("at most 4096"), "{refused}");
}

/// A cached manifest signed by another key reads as a key's rotation
/// (its pointer is then a floor); one damaged (cut, emptied) is damage,
/// not a rotation.
#[test]
fn a_damaged_cached_manifest_is_no_rotation() {
    let (dir, key) = (instance_dir(), key());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(cache_dir.path());
    let staged = cache.stage(&published(dir.path(), 1, &key)).unwrap();
    cache.commit(&staged).unwrap();
    let other = SigningKey::generate("SN-directory").unwrap();
    let error = |verifier: &Verifier| match cache.current(verifier) {
        Err(cache::CacheError::Bundle { error, .. }) => error,
        other => panic!("{other:?}"),
    };
    assert!(matches!(error(&other.verifier()), BundleError::Unsigned(_)));
    let manifest = cache_dir.path().join("v1").join(cache::MANIFEST);
    for damaged in ["", "govbridge global configuration v1\n"] {
        std::fs::write(&manifest, damaged).unwrap();
        let error = error(&key.verifier());
        assert!(matches!(error, BundleError::Malformed(_)), "{error:?}");
    }
}

#[test]
fn the_cache_keeps_the_bundle_in_use_and_the_one_before() {
    let (dir, key) = (instance_dir(), key());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(cache_dir.path());
    let verifier = key.verifier();
    assert!(cache.current(&verifier).unwrap().is_none());

    for version in 1..=3 {
        let staged = cache.stage(&published(dir.path(), version, &key)).unwrap();
        if version > 1 {
            // Staged is not in use.
            assert_eq!(
                cache.current(&verifier).unwrap().unwrap().manifest.version,
                version - 1
            );
        }
        cache.commit(&staged).unwrap();
        let current = cache.current(&verifier).unwrap().unwrap();
        assert_eq!(current.manifest.version, version);
        assert!(current.dir.join("policies/banks.cedar").is_file());
    }
    let mut kept: Vec<String> = std::fs::read_dir(cache_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["current", "v2", "v3"]);

    // A file added beside the bundle's in use is found: the policies
    // directory's every file would be loaded.
    let extra = cache_dir.path().join("v3/policies/zz.cedar");
    std::fs::write(&extra, "permit (principal, action, resource);\n").unwrap();
    let error = cache.current(&verifier).unwrap_err().to_string();
    assert!(
        error.contains("policies/zz.cedar") && error.contains("does not name"),
        "{error}"
    );
    std::fs::remove_file(&extra).unwrap();
    // A file of the bundle in use changed on disk is found.
    std::fs::write(cache_dir.path().join("v3/global.toml"), "[purposes]\n").unwrap();
    let error = cache.current(&verifier).unwrap_err().to_string();
    assert!(
        error.contains("global.toml") && error.contains("altered"),
        "{error}"
    );
}

/// A directory that keeps serving newer versions that cannot run (each
/// staged, then refused when applied) fills no disk: staging one removes
/// those staged before and never put in use.
#[test]
fn versions_staged_and_never_used_do_not_pile_up() {
    let (dir, key) = (instance_dir(), key());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(cache_dir.path());
    let verifier = key.verifier();
    let first = cache.stage(&published(dir.path(), 1, &key)).unwrap();
    cache.commit(&first).unwrap();
    for version in 2..=5 {
        cache.stage(&published(dir.path(), version, &key)).unwrap();
    }
    let mut kept: Vec<String> = std::fs::read_dir(cache_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["current", "v1", "v5"]);
    assert_eq!(
        cache.current(&verifier).unwrap().unwrap().manifest.version,
        1
    );
}

#[test]
fn a_diff_names_what_a_publication_changes() {
    let (dir, key) = (instance_dir(), key());
    let old = published(dir.path(), 1, &key);
    std::fs::write(
        dir.path().join(GLOBAL_FILE),
        "[purposes]\nKYC = \"Know your customer, at opening\"\n\n[members.\"SN/COM/ECOBANK/kyc\"]\nname = \"Ecobank\"\n",
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("policies/banks.cedar")).unwrap();
    let new = published(dir.path(), 2, &key);
    let changes: Vec<String> = diff::diff(&old, &new)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        changes,
        [
            "- members SN/COM/CBAO/kyc",
            "+ members SN/COM/ECOBANK/kyc",
            "~ purposes KYC",
            "~ files global.toml",
            "- files policies/banks.cedar",
        ]
    );
}
