//! Embeds Swagger UI (npm's `swagger-ui-dist`, installed by `npm ci` at the repository
//! root) so `/api/docs` needs no CDN. Without `node_modules` the server still builds and
//! `/api/docs` says how to get the assets.
//!
//! Embeds the portal's assets the same way: htmx and xterm.js from `node_modules`, and
//! the portal's own stylesheet and script from `assets/`, each with a content hash that
//! goes into its URL (so it can be cached for a year). A missing npm asset is `None`: the
//! portal still works, as plain pages without live updates.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dist = manifest.join("../../node_modules/swagger-ui-dist");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut code = String::new();
    for (name, file) in [
        ("BUNDLE", "swagger-ui-bundle.js"),
        ("CSS", "swagger-ui.css"),
    ] {
        let path = dist.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        match path.canonicalize() {
            Ok(abs) if abs.is_file() => code.push_str(&format!(
                "pub const {name}: Option<&[u8]> = Some(include_bytes!({:?}));\n",
                abs.display().to_string()
            )),
            _ => {
                println!(
                    "cargo:warning=swagger-ui-dist not found at {}: run `npm ci` at the repository root to embed Swagger UI",
                    dist.display()
                );
                code.push_str(&format!("pub const {name}: Option<&[u8]> = None;\n"));
            }
        }
    }
    if let Err(e) = std::fs::write(out.join("swagger_assets.rs"), code) {
        println!("cargo:warning=cannot write swagger_assets.rs: {e}");
        std::process::exit(1);
    }
    portal_assets(&manifest, &out);
}

/// Writes `portal_assets.rs`: `PORTAL_ASSETS`, a table of (name, content type, content
/// hash, bytes).
fn portal_assets(manifest: &std::path::Path, out: &std::path::Path) {
    let npm = manifest.join("../../node_modules");
    let own = manifest.join("assets");
    let table = [
        (
            "htmx.min.js",
            "text/javascript; charset=utf-8",
            npm.join("htmx.org/dist/htmx.min.js"),
        ),
        (
            "xterm.js",
            "text/javascript; charset=utf-8",
            npm.join("@xterm/xterm/lib/xterm.js"),
        ),
        (
            "xterm.css",
            "text/css; charset=utf-8",
            npm.join("@xterm/xterm/css/xterm.css"),
        ),
        (
            "addon-fit.js",
            "text/javascript; charset=utf-8",
            npm.join("@xterm/addon-fit/lib/addon-fit.js"),
        ),
        (
            "portal.css",
            "text/css; charset=utf-8",
            own.join("portal.css"),
        ),
        (
            "portal.js",
            "text/javascript; charset=utf-8",
            own.join("portal.js"),
        ),
        (
            "terminal.css",
            "text/css; charset=utf-8",
            own.join("terminal.css"),
        ),
        (
            "terminal.js",
            "text/javascript; charset=utf-8",
            own.join("terminal.js"),
        ),
    ];
    let mut code =
        String::from("pub const PORTAL_ASSETS: &[(&str, &str, &str, Option<&[u8]>)] = &[\n");
    for (name, kind, path) in table {
        println!("cargo:rerun-if-changed={}", path.display());
        match (path.canonicalize(), std::fs::read(&path)) {
            (Ok(abs), Ok(bytes)) => code.push_str(&format!(
                "    ({name:?}, {kind:?}, {:?}, Some(include_bytes!({:?}))),\n",
                fnv64(&bytes),
                abs.display().to_string()
            )),
            _ => {
                println!(
                    "cargo:warning=portal asset {name} not found at {}: run `npm ci` at the repository root",
                    path.display()
                );
                code.push_str(&format!("    ({name:?}, {kind:?}, \"missing\", None),\n"));
            }
        }
    }
    code.push_str("];\n");
    if let Err(e) = std::fs::write(out.join("portal_assets.rs"), code) {
        println!("cargo:warning=cannot write portal_assets.rs: {e}");
        std::process::exit(1);
    }
}

/// FNV-1a, 64 bits, hex: enough to tell versions of a file apart in a URL.
fn fnv64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}
