//! A Directory from the store (DirectoryService.Get) or from the disk cache
//! (its canonical encoding): decoding and validation.

// libFuzzer's main, except in a test build (fuzz/Cargo.toml).
#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tvix_virtiofsd::proto::castore;
use tvix_virtiofsd::store::directory::{
    directory_digest, directory_size, is_valid_name, validate_directory, Node, ValidationError,
    MAX_SYMLINK_TARGET,
};
use tvix_virtiofsd::store::B3Digest;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = castore::Directory::decode(data) else {
        return;
    };
    // Asked for by another digest, it is refused before anything else.
    let other = B3Digest::of(data);
    if other != directory_digest(&dir) {
        assert!(matches!(
            validate_directory(&dir, &other, None),
            Err(ValidationError::DigestMismatch { .. })
        ));
    }
    // Asked for by its own digest, only the castore rules decide.
    let digest = directory_digest(&dir);
    let Ok(valid) = validate_directory(&dir, &digest, None) else {
        return;
    };
    assert_eq!(valid.digest, digest);
    assert_eq!(Some(valid.size), directory_size(&dir));
    assert_eq!(
        valid.entries.len(),
        dir.directories.len() + dir.files.len() + dir.symlinks.len()
    );
    assert_eq!(valid.subdirectory_count(), dir.directories.len());
    assert!(valid.entries.windows(2).all(|w| w[0].name < w[1].name));
    for entry in &valid.entries {
        assert!(is_valid_name(&entry.name));
        assert_eq!(valid.entry(&entry.name), Some(entry));
        if let Node::Symlink { target } = &entry.node {
            assert!(!target.is_empty() && target.len() <= MAX_SYMLINK_TARGET);
            assert!(!target.contains(&0));
        }
    }
    // The size a parent announces is a lower bound, checked as one.
    assert!(validate_directory(&dir, &digest, Some(valid.size)).is_ok());
    assert!(validate_directory(&dir, &digest, Some(u64::MAX)).is_ok());
    if valid.size > 0 {
        assert!(matches!(
            validate_directory(&dir, &digest, Some(valid.size - 1)),
            Err(ValidationError::Undersized { .. })
        ));
    }
    // What the disk cache keeps decodes to the same Directory.
    let stored = dir.encode_to_vec();
    let reread = castore::Directory::decode(stored.as_slice()).expect("canonical encoding");
    assert_eq!(validate_directory(&reread, &digest, None), Ok(valid));
});
