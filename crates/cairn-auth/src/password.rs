//! Passwords and client secrets: argon2id in the PHC string format, with a
//! random salt per hash. [`PasswordHasher::verify_unknown`] spends the same
//! work as a real check, so a login for a user that does not exist takes as
//! long as one with a wrong password.

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{self, PasswordHash, PasswordVerifier, SaltString},
};
use zeroize::Zeroizing;

use crate::{AuthError, master::random};

/// Hashes and checks passwords with argon2id.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: Params,
    /// A hash of a random password, for [`verify_unknown`](Self::verify_unknown).
    decoy: String,
}

impl Default for PasswordHasher {
    /// OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self::with_params(Params::default()).expect("default parameters are valid")
    }
}

impl PasswordHasher {
    /// With explicit cost parameters (memory in KiB, passes, lanes).
    pub fn new(memory_kib: u32, passes: u32, lanes: u32) -> Result<Self, AuthError> {
        let params = Params::new(memory_kib, passes, lanes, None)
            .map_err(|e| AuthError::config(format!("argon2 parameters: {e}")))?;
        Self::with_params(params)
    }

    fn with_params(params: Params) -> Result<Self, AuthError> {
        let mut this = Self {
            params,
            decoy: String::new(),
        };
        let mut decoy = Zeroizing::new([0u8; 24]);
        random(&mut decoy[..])?;
        this.decoy = this.hash(&base64_text(&decoy[..]))?;
        Ok(this)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// The PHC string of `password` (`$argon2id$v=19$...`).
    pub fn hash(&self, password: &str) -> Result<String, AuthError> {
        use argon2::PasswordHasher as _;
        let mut salt = [0u8; 16];
        random(&mut salt)?;
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| AuthError::config(format!("salt: {e}")))?;
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::config(format!("hashing a password: {e}")))
    }

    /// Whether `password` matches `phc`. A malformed hash never matches.
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        match self.argon2().verify_password(password.as_bytes(), &parsed) {
            Ok(()) => true,
            Err(password_hash::Error::Password) => false,
            Err(_) => false,
        }
    }

    /// Does the work of a failed [`verify`](Self::verify); always false.
    pub fn verify_unknown(&self, password: &str) -> bool {
        let _ = self.verify(password, &self.decoy);
        false
    }
}

/// Generates a password of `len` characters from an unambiguous alphabet.
pub fn generate_password(len: usize) -> Result<Zeroizing<String>, AuthError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = Zeroizing::new(vec![0u8; len]);
    let mut out = Zeroizing::new(String::with_capacity(len));
    let mut filled = 0;
    while filled < len {
        random(&mut bytes[..])?;
        for b in bytes.iter() {
            // Rejection sampling keeps the choice uniform.
            let limit = 256 - (256 % ALPHABET.len());
            if (*b as usize) < limit && filled < len {
                out.push(ALPHABET[*b as usize % ALPHABET.len()] as char);
                filled += 1;
            }
        }
    }
    Ok(out)
}

/// A random opaque token (refresh tokens, client secrets): 32 bytes, base64url.
pub fn random_token() -> Result<Zeroizing<String>, AuthError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    random(&mut bytes[..])?;
    Ok(Zeroizing::new(base64_text(&bytes[..])))
}

fn base64_text(bytes: &[u8]) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_the_right_password() {
        let hasher = PasswordHasher::new(1024, 1, 1).unwrap();
        let hash = hasher.hash("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"));
        assert!(!hash.contains("correct horse"));
        assert!(hasher.verify("correct horse", &hash));
        assert!(!hasher.verify("correct horsf", &hash));
        assert!(!hasher.verify("correct horse", "not a hash"));
        assert!(!hasher.verify_unknown("correct horse"));
        assert_ne!(hash, hasher.hash("correct horse").unwrap(), "salted");
    }

    #[test]
    fn generated_passwords_have_the_length_and_alphabet() {
        let a = generate_password(20).unwrap();
        let b = generate_password(20).unwrap();
        assert_eq!(a.len(), 20);
        assert_ne!(*a, *b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(random_token().unwrap().len(), 43);
    }
}
