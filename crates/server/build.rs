//! Embeds Swagger UI (npm's `swagger-ui-dist`, installed by `npm ci` at the repository
//! root) so `/api/docs` needs no CDN. Without `node_modules` the server still builds and
//! `/api/docs` says how to get the assets.

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
}
