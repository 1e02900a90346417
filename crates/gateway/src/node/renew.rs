//! The gateway's side of a certificate renewal: a server's `RenewCertificate` answered
//! with a request made from the key the gateway holds, and its `Certificate` checked
//! (it chains to the gateway's CA, names it, carries its key), written where the
//! certificate is kept (a temporary file, then a rename: never half a file), and served
//! to every new control connection. Live connections keep the certificate they have.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use control::msg::Up;
use control::pki::GatewayCertificate;

/// A gateway's renewable control-channel certificate.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// What the gateway's TLS server hands new connections
    /// (`control::pki::gateway_tls_renewable`).
    pub certificate: Arc<GatewayCertificate>,
    /// Where the certificate is kept (PEM, mode 0644), rewritten at each renewal; `None`:
    /// in memory only.
    pub file: Option<PathBuf>,
}

/// The answer to `RenewCertificate`.
pub(crate) fn request(renewal: Option<&Renewal>) -> Up {
    let Some(renewal) = renewal else {
        return Up::Refused {
            error: "this gateway has no certificate to renew".into(),
        };
    };
    match renewal.certificate.request() {
        Ok(csr_pem) => {
            tracing::info!("certificate renewal: a request made with the key held here");
            Up::CertificateRequest { csr_pem }
        }
        Err(e) => Up::Refused {
            error: format!("cannot make a certificate request: {e}"),
        },
    }
}

/// The answer to `Certificate`: checked, written, then served; or refused, and nothing
/// changed.
pub(crate) async fn install(renewal: Option<&Renewal>, certificate_pem: String) -> Up {
    let refused = |error: String| {
        tracing::warn!(%error, "certificate renewal refused");
        Up::Refused { error }
    };
    let Some(renewal) = renewal else {
        return refused("this gateway has no certificate to renew".into());
    };
    let certificate = renewal.certificate.clone();
    if let Err(e) = certificate.check(&certificate_pem) {
        return refused(format!("certificate refused: {e}"));
    }
    if let Some(file) = renewal.file.clone() {
        let text = certificate_pem.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&file, &text))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = written {
            return refused(format!("certificate not kept: {e}"));
        }
    }
    match certificate.install(&certificate_pem) {
        Ok(info) => {
            tracing::info!(not_after = %info.not_after, "certificate renewed: new control connections get it");
            Up::CertificateRenewed {
                not_after: info.not_after,
            }
        }
        Err(e) => refused(format!("certificate refused: {e}")),
    }
}

/// Writes `text` to `path` whole or not at all: a temporary file beside it (0644),
/// synced, then renamed over it.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o644);
    let mut file = options.open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    #[cfg(unix)]
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        // The rename itself survives a crash.
        let _ = dir.sync_all();
    }
    Ok(())
}
