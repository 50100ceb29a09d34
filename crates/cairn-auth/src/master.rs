//! The master key: private signing keys are stored only sealed under it
//! (XChaCha20-Poly1305, a random 192-bit nonce per seal, the key id as
//! associated data so a sealed key cannot be swapped for another's).
//!
//! It is 32 random bytes, written as unpadded base64url: read from the
//! environment, from a file (a Docker or Kubernetes secret), or generated
//! once into a file readable only by its owner.

use std::{fmt, path::Path};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chacha20poly1305::{
    Key, XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use zeroize::{Zeroize, Zeroizing};

use crate::AuthError;

/// Prefix of a sealed value, naming the format.
const SEALED_PREFIX: &str = "xc20p1.";

/// The key that seals private signing keys at rest.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, AuthError> {
        let mut key = Zeroizing::new([0u8; 32]);
        random(&mut key[..])?;
        Ok(Self { key })
    }

    /// A key from its text form (unpadded base64url or standard base64 of 32
    /// bytes; surrounding whitespace is ignored).
    pub fn from_text(text: &str) -> Result<Self, AuthError> {
        let text = text.trim();
        let mut bytes = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
                .map_err(|_| AuthError::config("the master key is not base64"))?,
        );
        if bytes.len() != 32 {
            bytes.zeroize();
            return Err(AuthError::config("the master key must be 32 bytes"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes);
        Ok(Self { key })
    }

    /// The text form [`from_text`](Self::from_text) reads.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(URL_SAFE_NO_PAD.encode(&self.key[..]))
    }

    /// Reads the key from `path`.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            AuthError::config(format!(
                "cannot read the master key {}: {e}",
                path.display()
            ))
        })?);
        Self::from_text(&text)
    }

    /// Reads the key from `path`, or, when the file does not exist, generates
    /// one and writes it there (mode 0600 on Unix). Returns the key and
    /// whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), AuthError> {
        if path.exists() {
            return Ok((Self::from_file(path)?, false));
        }
        let key = Self::generate()?;
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| AuthError::config(format!("cannot create {}: {e}", dir.display())))?;
        }
        write_private(path, key.to_text().as_bytes()).map_err(|e| {
            AuthError::config(format!(
                "cannot write the master key {}: {e}",
                path.display()
            ))
        })?;
        Ok((key, true))
    }

    /// Seals `plaintext`, bound to `context` (for example the key id): only
    /// [`open`](Self::open) with the same key and context gets it back.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String, AuthError> {
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&self.key[..]));
        let mut nonce = [0u8; 24];
        random(&mut nonce)?;
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| AuthError::config("sealing failed"))?;
        let mut out = Vec::with_capacity(24 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Opens what [`seal`](Self::seal) made. A wrong key, a wrong context or
    /// a changed byte is an error.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        let wrong = || {
            AuthError::config(
                "a sealed key cannot be opened: wrong master key, or the value was changed",
            )
        };
        let body = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(wrong)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| wrong())?;
        if bytes.len() < 24 + 16 {
            return Err(wrong());
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&self.key[..]));
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| wrong())
    }
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn random(buf: &mut [u8]) -> Result<(), AuthError> {
    getrandom::fill(buf).map_err(|e| AuthError::config(format!("no randomness: {e}")))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_only_with_the_same_key_and_context() {
        let key = MasterKey::generate().unwrap();
        let sealed = key.seal(b"private", "kid-1").unwrap();
        assert!(!sealed.contains("private"));
        assert_eq!(&key.open(&sealed, "kid-1").unwrap()[..], b"private");
        assert!(key.open(&sealed, "kid-2").is_err(), "context is bound");
        let other = MasterKey::generate().unwrap();
        assert!(other.open(&sealed, "kid-1").is_err(), "another key fails");
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            key.open(&String::from_utf8(tampered).unwrap(), "kid-1")
                .is_err()
        );
        // Two seals of one value differ (fresh nonce).
        assert_ne!(sealed, key.seal(b"private", "kid-1").unwrap());
    }

    #[test]
    fn text_form_round_trips_and_rejects_bad_lengths() {
        let key = MasterKey::generate().unwrap();
        let again = MasterKey::from_text(&format!(" {}\n", &*key.to_text())).unwrap();
        let sealed = key.seal(b"x", "c").unwrap();
        assert_eq!(&again.open(&sealed, "c").unwrap()[..], b"x");
        assert!(MasterKey::from_text("c2hvcnQ").is_err());
        assert!(MasterKey::from_text("not base64 at all!").is_err());
        assert!(!format!("{key:?}").contains(&*key.to_text()));
    }

    #[test]
    fn load_or_create_writes_once_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("cairn-master-{}", uuid::Uuid::now_v7()));
        let path = dir.join("master.key");
        let (key, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(&*key.to_text(), &*again.to_text());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
