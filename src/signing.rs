//! archway's signing key: ECDSA P-256, read from a PKCS#8 PEM file (what
//! `archway signing-key generate` and `openssl genpkey -algorithm EC -pkeyopt
//! ec_paramgen_curve:P-256` write), and signatures over SHA-256 with RFC 6979 deterministic
//! nonces, so every replica signs the same payload into the same bytes.
//!
//! The public half is a SubjectPublicKeyInfo PEM: what `cosign verify --key`, Kyverno's
//! `publicKeys` and containers-policy.json's `keyPath` read.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey as EcdsaKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use sha2::Digest as _;

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not an ECDSA P-256 private key in PKCS#8 PEM (BEGIN PRIVATE KEY) or SEC1 PEM (BEGIN EC PRIVATE KEY)")]
    Format,
    #[error("cannot encode the key")]
    Encode,
}

/// A private signing key. Never printed.
#[derive(Clone)]
pub struct SigningKey {
    key: EcdsaKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.fingerprint())
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> SigningKey {
        SigningKey {
            key: EcdsaKey::random(&mut rand_core::OsRng),
        }
    }

    /// Reads a PEM private key file.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        SigningKey::from_pem(&pem)
    }

    /// Parses a PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        if let Ok(key) = EcdsaKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey { key });
        }
        let secret = p256::SecretKey::from_sec1_pem(pem).map_err(|_| KeyError::Format)?;
        Ok(SigningKey {
            key: EcdsaKey::from(secret),
        })
    }

    /// The private key as PKCS#8 PEM.
    pub fn private_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|p| p.to_string())
            .map_err(|_| KeyError::Encode)
    }

    /// The public key as a SubjectPublicKeyInfo PEM.
    pub fn public_pem(&self) -> Result<String, KeyError> {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| KeyError::Encode)
    }

    /// The sha256 of the public key's DER, in hex: what `openssl pkey -pubin -outform DER |
    /// sha256sum` prints, and how logs and `archway inspect` name the key.
    pub fn fingerprint(&self) -> String {
        match self.key.verifying_key().to_public_key_der() {
            Ok(der) => hex::encode(sha2::Sha256::digest(der.as_bytes())),
            Err(_) => "unknown".into(),
        }
    }

    /// The base64 of the DER signature of `payload` (ECDSA P-256, SHA-256, RFC 6979).
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: Signature = self.key.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;
    use p256::pkcs8::DecodePublicKey;

    #[test]
    fn signatures_are_deterministic_and_verify_with_the_public_pem() {
        let k = SigningKey::generate();
        let again = SigningKey::from_pem(&k.private_pem().unwrap()).unwrap();
        assert_eq!(k.fingerprint(), again.fingerprint());
        let s = k.sign(b"payload");
        assert_eq!(
            s,
            again.sign(b"payload"),
            "RFC 6979: same key, same payload, same bytes"
        );
        let der = base64::engine::general_purpose::STANDARD
            .decode(&s)
            .unwrap();
        let verifier = VerifyingKey::from_public_key_pem(&k.public_pem().unwrap()).unwrap();
        let sig = Signature::from_der(&der).unwrap();
        assert!(verifier.verify(b"payload", &sig).is_ok());
        assert!(verifier.verify(b"other", &sig).is_err());
        assert!(!format!("{k:?}").contains("PRIVATE"));
    }

    #[test]
    fn keys_openssl_writes_are_read() {
        // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
        let pkcs8 = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgevZzL1gdAFr88hb2
OF/2NxApJCzGCEDdfSp6VQO30hyhRANCAAQRWz+jn65BtOMvdyHKcvjBeBSDZH2r
1RTwjmYSi9R/zpBnuQ4EiMnCqfMPWiZqB4QdbAd0E7oH50VpuZ1P087G
-----END PRIVATE KEY-----
";
        let k = SigningKey::from_pem(pkcs8).unwrap();
        assert!(k
            .public_pem()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(matches!(
            SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(KeyError::Format)
        ));
    }
}
