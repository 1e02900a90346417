//! Tidy checks: every module opens with a `//!` comment, and the crate root's `# Layout`
//! names every top-level module.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_is_documented_and_listed() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not open with a //! comment",
            f.display()
        );
    }
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let layout = lib
        .split("# Layout")
        .nth(1)
        .expect("lib.rs has a # Layout section");
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
        let name = line.trim_end_matches(';');
        assert!(
            layout.contains(&format!("[`{name}`]")),
            "# Layout does not list {name}"
        );
    }
}
