//! ed25519 signatures over Nix's path fingerprint, and Nix's key-file
//! formats (`NAME:<base64>`), so keys from `nix-store
//! --generate-binary-cache-key` work and ours work in Nix.

use data_encoding::BASE64;
use ed25519_dalek::{Signer, Verifier};

use super::{nixbase32, store_path::StorePath};

/// A key or signature string that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// No `NAME:` prefix, or an empty name.
    #[error("key or signature is not of the form NAME:BASE64")]
    MissingName,
    /// The part after `:` is not base64.
    #[error("invalid base64 in key or signature")]
    InvalidBase64,
    /// Decoded to the wrong number of bytes.
    #[error("invalid length {got}, expected {expected}")]
    InvalidLength {
        /// bytes decoded
        got: usize,
        /// bytes required
        expected: usize,
    },
    /// The secret key's second half is not its public key.
    #[error("secret key does not match its embedded public key")]
    Inconsistent,
}

fn split_named(s: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, b64) = s.trim().split_once(':').ok_or(KeyError::MissingName)?;
    if name.is_empty() {
        return Err(KeyError::MissingName);
    }
    let data = BASE64
        .decode(b64.as_bytes())
        .map_err(|_| KeyError::InvalidBase64)?;
    Ok((name, data))
}

fn exact<const N: usize>(data: &[u8]) -> Result<[u8; N], KeyError> {
    data.try_into().map_err(|_| KeyError::InvalidLength {
        got: data.len(),
        expected: N,
    })
}

/// The exact bytes Nix signs for a path:
/// `1;<path>;sha256:<nixbase32 narhash>;<narsize>;<comma-joined references>`.
pub fn fingerprint(
    path: &StorePath,
    nar_sha256: &[u8; 32],
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let refs: Vec<String> = references.iter().map(|r| r.to_absolute()).collect();
    format!(
        "1;{};sha256:{};{};{}",
        path.to_absolute(),
        nixbase32::encode(nar_sha256),
        nar_size,
        refs.join(",")
    )
}

/// A named ed25519 signature as found in a narinfo `Sig:` line.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Signature {
    /// The key name.
    pub name: String,
    /// The 64 signature bytes.
    #[serde(serialize_with = "ser_b64")]
    pub bytes: [u8; 64],
}

fn ser_b64<S: serde::Serializer>(b: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&BASE64.encode(b))
}

impl Signature {
    /// Parses `NAME:<base64 of 64 bytes>`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, data) = split_named(s)?;
        Ok(Self {
            name: name.to_string(),
            bytes: exact::<64>(&data)?,
        })
    }

    /// Renders `NAME:<base64>`.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(&self.bytes))
    }
}

/// A public key clients trust (`trusted-public-keys = NAME:…`).
#[derive(Clone, Debug)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// Parses `NAME:<base64 of 32 bytes>`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, data) = split_named(s)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&exact::<32>(&data)?)
            .map_err(|_| KeyError::Inconsistent)?;
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` is by this key (same name) and valid for `fingerprint`.
    pub fn verify(&self, fingerprint: &str, sig: &Signature) -> bool {
        sig.name == self.name
            && self
                .key
                .verify(
                    fingerprint.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&sig.bytes),
                )
                .is_ok()
    }

    /// Renders `NAME:<base64>` as Nix's public key files hold it.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

/// A secret signing key in Nix's format: `NAME:<base64 of seed ‖ public>`.
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secret material.
        write!(f, "SecretKey({})", self.name)
    }
}

impl SecretKey {
    /// Generates a fresh key.
    pub fn generate(name: &str) -> Self {
        Self {
            name: name.to_string(),
            key: ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Parses a secret key file's content.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, data) = split_named(s)?;
        let full = exact::<64>(&data)?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&full)
            .map_err(|_| KeyError::Inconsistent)?;
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    /// Renders the secret key file's content.
    pub fn to_nix_string(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(&self.key.to_keypair_bytes())
        )
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a fingerprint.
    pub fn sign(&self, fingerprint: &str) -> Signature {
        Signature {
            name: self.name.clone(),
            bytes: self.key.sign(fingerprint.as_bytes()).to_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_key_roundtrip() {
        let sk = SecretKey::generate("cache.example-1");
        let sk2 = SecretKey::parse(&sk.to_nix_string()).unwrap();
        let pk = PublicKey::parse(&sk2.public().to_nix_string()).unwrap();
        let path = StorePath::parse("xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-pkg").unwrap();
        let dep = StorePath::parse("8rxrfg5hidkgcrwp9xaf9fclvf8bpsak-dep").unwrap();
        let fp = fingerprint(&path, &[7u8; 32], 152256, &[dep, path.clone()]);
        assert!(fp.starts_with("1;/nix/store/xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-pkg;sha256:"));
        assert!(fp.ends_with(";152256;/nix/store/8rxrfg5hidkgcrwp9xaf9fclvf8bpsak-dep,/nix/store/xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-pkg"));
        let sig = Signature::parse(&sk.sign(&fp).to_nix_string()).unwrap();
        assert!(pk.verify(&fp, &sig));
        assert!(!pk.verify(&format!("{fp}x"), &sig));
        let other = SecretKey::generate("cache.example-1").public();
        assert!(!other.verify(&fp, &sig));
    }

    #[test]
    fn rejects_malformed_keys() {
        assert_eq!(
            PublicKey::parse("nokey").unwrap_err(),
            KeyError::MissingName
        );
        assert_eq!(
            PublicKey::parse(":AAAA").unwrap_err(),
            KeyError::MissingName
        );
        assert_eq!(
            PublicKey::parse("n:!!!").unwrap_err(),
            KeyError::InvalidBase64
        );
        assert!(matches!(
            SecretKey::parse("n:AAAA").unwrap_err(),
            KeyError::InvalidLength {
                got: 3,
                expected: 64
            }
        ));
        // Seed and public halves that do not belong together.
        let mut bytes = [1u8; 64];
        bytes[40] = 9;
        let s = format!("n:{}", BASE64.encode(&bytes));
        assert!(SecretKey::parse(&s).is_err());
    }
}
