//! Secrets at rest: AES-256-GCM (ring) with a random 96-bit nonce per value, stored as
//! nonce‖ciphertext‖tag. The additional data binds the table, column and row id, so a
//! ciphertext copied into another row or column fails to decrypt. [`Secret`] carries the
//! plaintext in memory and never prints it.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Result, StoreError};

/// A plaintext secret (a password). `Debug` and `Display` show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a plaintext.
    pub fn new(plain: impl Into<String>) -> Self {
        Self(plain.into())
    }

    /// The plaintext, for the one place that needs it (a router login, a credentials
    /// response).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The plaintext, by value.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The column a secret lives in, part of the additional data.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    RouterPassword,
    AccessPassword,
    RegionTunnelKey,
    ControlCaKey,
}

impl Slot {
    fn label(self) -> &'static str {
        match self {
            Slot::RouterPassword => "routers.password",
            Slot::AccessPassword => "transient_access.password",
            Slot::RegionTunnelKey => "region_tunnels.private_key",
            Slot::ControlCaKey => "control_ca.private_key",
        }
    }
}

/// AES-256-GCM with the store's key.
pub(crate) struct Cipher {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Cipher {
    pub(crate) fn new(key: &[u8; 32]) -> Result<Self> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| StoreError::Crypto)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    fn aad(slot: Slot, row_id: &str) -> String {
        format!("postern:{}:{row_id}", slot.label())
    }

    pub(crate) fn seal(&self, slot: Slot, row_id: &str, plain: &str) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| StoreError::Crypto)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        let mut body = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(slot, row_id).as_bytes()),
                &mut body,
            )
            .map_err(|_| StoreError::Crypto)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub(crate) fn open(&self, slot: Slot, row_id: &str, sealed: &[u8]) -> Result<Secret> {
        let (nonce, body) = sealed
            .split_at_checked(NONCE_LEN)
            .ok_or(StoreError::Crypto)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| StoreError::Crypto)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(
                nonce,
                Aad::from(Self::aad(slot, row_id).as_bytes()),
                &mut body,
            )
            .map_err(|_| StoreError::Crypto)?;
        String::from_utf8(plain.to_vec())
            .map(Secret)
            .map_err(|_| StoreError::Crypto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let c = Cipher::new(&[7u8; 32]).unwrap();
        let sealed = c.seal(Slot::RouterPassword, "r1", "hunter2").unwrap();
        assert_eq!(sealed.len(), 12 + 7 + 16);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            c.open(Slot::RouterPassword, "r1", &sealed)
                .unwrap()
                .expose(),
            "hunter2"
        );
        // Another row, another column, another key, a flipped bit: all refused.
        assert!(matches!(
            c.open(Slot::RouterPassword, "r2", &sealed),
            Err(StoreError::Crypto)
        ));
        assert!(matches!(
            c.open(Slot::AccessPassword, "r1", &sealed),
            Err(StoreError::Crypto)
        ));
        let other = Cipher::new(&[8u8; 32]).unwrap();
        assert!(other.open(Slot::RouterPassword, "r1", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[14] ^= 1;
        assert!(c.open(Slot::RouterPassword, "r1", &flipped).is_err());
        assert!(c.open(Slot::RouterPassword, "r1", &sealed[..5]).is_err());
        // Two seals of the same text differ (fresh nonce).
        assert_ne!(
            sealed,
            c.seal(Slot::RouterPassword, "r1", "hunter2").unwrap()
        );
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(<redacted>) <redacted>");
    }
}
