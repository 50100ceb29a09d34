//! Signing keys: Ed25519 (JWS `EdDSA`), one active per tenant, earlier ones
//! kept in the JWKS for an overlap window after a rotation so tokens they
//! signed stay valid until they expire.
//!
//! A [`SigningKey`] holds the private key in memory only; what is stored is
//! a [`StoredKey`]: the public half in the clear and the private half
//! sealed under the [`MasterKey`].

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
        OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
    },
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{AuthError, MasterKey, master::random};

/// A private signing key, ready to sign.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    /// PKCS#8 DER of the private key.
    pkcs8: Zeroizing<Vec<u8>>,
    /// The 32-byte public key.
    public: [u8; 32],
    /// Seconds since the Unix epoch.
    created_at: i64,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A signing key as stored: public half clear, private half sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    pub kid: String,
    /// Always `EdDSA` for now.
    pub alg: String,
    /// The public key, unpadded base64url (the JWK's `x`).
    pub public_key: String,
    /// The PKCS#8 private key sealed under the master key, bound to `kid`.
    pub sealed_private_key: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
}

impl SigningKey {
    /// A fresh Ed25519 key with a random `kid`, created `now` (seconds).
    pub fn generate(now: i64) -> Result<Self, AuthError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        random(&mut seed[..])?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|e| AuthError::config(format!("cannot encode a signing key: {e}")))?;
        let mut kid = [0u8; 12];
        random(&mut kid)?;
        Ok(Self {
            kid: URL_SAFE_NO_PAD.encode(kid),
            pkcs8: Zeroizing::new(pkcs8.as_bytes().to_vec()),
            public: key.verifying_key().to_bytes(),
            created_at: now,
        })
    }

    /// The key id (`kid`) tokens it signs carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// When it was made (seconds since the Unix epoch).
    pub fn created_at(&self) -> i64 {
        self.created_at
    }

    /// The public half, as a JWK.
    pub fn public_jwk(&self) -> Jwk {
        public_jwk(&self.kid, &URL_SAFE_NO_PAD.encode(self.public))
    }

    /// Seals the private half under `master` for storage.
    pub fn seal(&self, master: &MasterKey) -> Result<StoredKey, AuthError> {
        Ok(StoredKey {
            kid: self.kid.clone(),
            alg: "EdDSA".into(),
            public_key: URL_SAFE_NO_PAD.encode(self.public),
            sealed_private_key: master.seal(&self.pkcs8, &self.kid)?,
            created_at: self.created_at,
        })
    }

    /// Opens a stored key. Fails on a wrong master key, a changed value, or a
    /// private key that does not match the stored public key.
    pub fn open(stored: &StoredKey, master: &MasterKey) -> Result<Self, AuthError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        if stored.alg != "EdDSA" {
            return Err(AuthError::config(format!(
                "signing key {}: unsupported algorithm {}",
                stored.kid, stored.alg
            )));
        }
        let pkcs8 = master.open(&stored.sealed_private_key, &stored.kid)?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(&pkcs8).map_err(|_| {
            AuthError::config(format!("signing key {}: not a valid key", stored.kid))
        })?;
        let public = key.verifying_key().to_bytes();
        if URL_SAFE_NO_PAD.encode(public) != stored.public_key {
            return Err(AuthError::config(format!(
                "signing key {}: private and public halves differ",
                stored.kid
            )));
        }
        Ok(Self {
            kid: stored.kid.clone(),
            pkcs8,
            public,
            created_at: stored.created_at,
        })
    }

    /// Signs `claims` as a compact JWS (`alg: EdDSA`, `typ: JWT`, this key's `kid`).
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .map_err(|e| AuthError::config(format!("cannot sign a token: {e}")))
    }
}

impl StoredKey {
    /// The public half, as a JWK.
    pub fn public_jwk(&self) -> Jwk {
        public_jwk(&self.kid, &self.public_key)
    }
}

fn public_jwk(kid: &str, x: &str) -> Jwk {
    Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            key_id: Some(kid.to_owned()),
            ..CommonParameters::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: x.to_owned(),
        }),
    }
}

/// The keys of one tenant: the newest is active (signs); the others are
/// retired at the moment the next one was added and stay published for
/// `overlap` seconds after that, so tokens they signed still verify.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyHistory {
    /// Oldest first; each with the time it was retired, if it was.
    pub keys: Vec<(StoredKey, Option<i64>)>,
}

impl KeyHistory {
    /// Adds `key` as the active one, retiring the previous at `now`.
    pub fn push(&mut self, key: StoredKey, now: i64) {
        if let Some((_, retired)) = self.keys.last_mut()
            && retired.is_none()
        {
            *retired = Some(now);
        }
        self.keys.push((key, None));
    }

    /// The active key, if any.
    pub fn active(&self) -> Option<&StoredKey> {
        self.keys
            .last()
            .filter(|(_, retired)| retired.is_none())
            .map(|(k, _)| k)
    }

    /// The JWKS to publish at `now`: the active key and every key retired
    /// less than `overlap` seconds ago, newest first.
    pub fn jwks(&self, now: i64, overlap: i64) -> JwkSet {
        JwkSet {
            keys: self
                .keys
                .iter()
                .rev()
                .filter(|(_, retired)| retired.is_none_or(|at| now < at + overlap))
                .map(|(k, _)| k.public_jwk())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_and_signs_what_its_jwk_verifies() {
        let master = MasterKey::generate().unwrap();
        let key = SigningKey::generate(100).unwrap();
        let stored = key.seal(&master).unwrap();
        let serialized = serde_json::to_string(&stored).unwrap();
        let reopened = SigningKey::open(&stored, &master).unwrap();
        assert_eq!(reopened.kid(), key.kid());
        let token = reopened
            .sign(&serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}))
            .unwrap();
        let jwk = stored.public_jwk();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        // The stored form has no private key material in the clear.
        let pkcs8_b64 = URL_SAFE_NO_PAD.encode(&*key.pkcs8);
        assert!(!serialized.contains(&pkcs8_b64));
        // Another master key cannot open it; a swapped public half is refused.
        assert!(SigningKey::open(&stored, &MasterKey::generate().unwrap()).is_err());
        let other = SigningKey::generate(100).unwrap().seal(&master).unwrap();
        let swapped = StoredKey {
            public_key: other.public_key,
            ..stored
        };
        assert!(SigningKey::open(&swapped, &master).is_err());
    }

    #[test]
    fn rotation_keeps_the_old_key_published_for_the_overlap() {
        let master = MasterKey::generate().unwrap();
        let first = SigningKey::generate(0).unwrap().seal(&master).unwrap();
        let second = SigningKey::generate(50).unwrap().seal(&master).unwrap();
        let mut history = KeyHistory::default();
        history.push(first.clone(), 0);
        assert_eq!(history.active(), Some(&first));
        history.push(second.clone(), 50);
        assert_eq!(history.active(), Some(&second));
        let kids = |now| -> Vec<String> {
            history
                .jwks(now, 100)
                .keys
                .into_iter()
                .map(|k| k.common.key_id.unwrap())
                .collect()
        };
        assert_eq!(kids(60), vec![second.kid.clone(), first.kid.clone()]);
        assert_eq!(kids(150), vec![second.kid.clone()]);
    }
}
