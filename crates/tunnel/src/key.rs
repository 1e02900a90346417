//! WireGuard keys as Postern passes them around: a [`PublicKey`] that reads and prints the
//! base64 form RouterOS and `wg` show, and a [`PrivateKey`] that never prints itself.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;

use crate::error::KeyError;

/// A peer's (or the gateway's) static public key, Curve25519, 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The base64 text form, 44 characters, as `wg` and RouterOS print it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub(crate) fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A static private key. Debug output is redacted; the text form is only reachable
/// through [`PrivateKey::to_base64`], for the caller to encrypt at rest.
#[derive(Clone)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(Self(clamp(bytes)))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(clamp(bytes))
    }

    /// Reads the base64 text form (what `wg genkey` prints).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self::from_bytes)
    }

    /// The base64 text form. A secret: encrypt it before it is stored, never log it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.to_x25519()).to_bytes())
    }

    pub(crate) fn to_x25519(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// Curve25519 clamping, as `wg genkey` does, so the stored form is canonical.
fn clamp(mut bytes: [u8; 32]) -> [u8; 32] {
    bytes[0] &= 248;
    bytes[31] = (bytes[31] & 127) | 64;
    bytes
}

fn decode_key(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    // 32 bytes are 44 characters of base64; refuse anything longer before decoding.
    if text.len() != 44 {
        return Err(KeyError::Length);
    }
    let bytes = STANDARD
        .decode(text.as_bytes())
        .map_err(|_| KeyError::Base64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_public_key_matches_x25519() {
        let private = PrivateKey::generate().unwrap();
        let again = PrivateKey::from_base64(&private.to_base64()).unwrap();
        assert_eq!(private.public_key(), again.public_key());
        let text = private.public_key().to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<PublicKey>().unwrap(), private.public_key());
    }

    #[test]
    fn known_vector_from_wg_pubkey() {
        // `echo 'YGJ2... ' | wg pubkey` pair, from the wg(8) key format: the RFC 7748
        // test vector's Alice, base64-encoded.
        let alice = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public = PrivateKey::from_bytes(alice).public_key();
        assert_eq!(
            hex(public.as_bytes()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hostile_text_is_refused() {
        for bad in [
            "",
            "abc",
            "not base64 at all, but exactly 44 chars long",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let private = PrivateKey::generate().unwrap();
        let shown = format!("{private:?}");
        assert!(!shown.contains(&private.to_base64()));
    }
}
