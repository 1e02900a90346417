//! What a joined `postern gateway` keeps in its data directory: its identity and its
//! keys, and nothing that would let it reach the database.

#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Asserts that `dir` holds exactly the gateway's five files, its private keys readable
/// by their owner alone, and none of `forbidden` (compared in lower case) in any file.
pub fn holds_only_its_identity(dir: &Path, forbidden: &[&str]) {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ca.crt",
            "control.crt",
            "control.key",
            "gateway.toml",
            "wireguard.key"
        ]
    );
    for key in ["control.key", "wireguard.key"] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    for file in &files {
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap()
            .to_lowercase();
        for word in forbidden {
            assert!(
                !text.contains(&word.to_lowercase()),
                "{file} holds {word:?}"
            );
        }
    }
}
