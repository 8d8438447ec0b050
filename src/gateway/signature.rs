//! The request `Signature` (assist-api.md §6.1), used by services that define one (Token Pay).
//!
//! Assist's documentation says: build `Merchant_ID;OrderNumber;OrderAmount;OrderCurrency`, take
//! its MD5, sign it with the merchant's RSA-1024 private key, send base64. We read that as the
//! official Android SDK does (`MD5WithRSA`): RSASSA-PKCS1-v1_5 with the MD5 DigestInfo, which is
//! also what `openssl dgst -md5 -sign` produces. The base64 uses the standard alphabet, padded.
//!
//! The private key lives only inside [`SigningKey`], whose `Debug` shows the key size and nothing
//! else: the `rsa` crate's own `Debug` prints the private exponent and primes.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest, Md5};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use secrecy::{ExposeSecret, SecretString};

use crate::money::{Currency, Money};

/// The only key size Assist accepts for request signatures.
pub const KEY_BITS: usize = 1024;

/// Why a private key cannot be used. No message contains any part of the key: not the PEM text,
/// not a number derived from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the RSA private key is encrypted; store it unencrypted, in a file only recurrentd can \
         read"
    )]
    Encrypted,
    #[error(
        "the RSA private key is not an unencrypted PEM RSA private key (expected PKCS#8 \
         `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`)"
    )]
    NotAKey,
    #[error("the RSA private key failed its consistency check")]
    Inconsistent,
    #[error("the RSA private key has {bits} bits; Assist requires a {KEY_BITS}-bit key")]
    WrongSize { bits: usize },
}

/// Signing failed; this should not happen with a key that [`SigningKey::from_pem`] accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RSA signing of the request failed")]
pub struct SignError;

/// The merchant's RSA private key for request signatures: checked, 1024 bits.
pub struct SigningKey {
    key: RsaPrivateKey,
}

impl fmt::Debug for SigningKey {
    /// Only the size: the wrapped key's derived `Debug` would print the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("bits", &self.bits())
            .finish()
    }
}

impl SigningKey {
    /// Loads an unencrypted PEM private key, PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`), checks its consistency and requires 1024 bits.
    pub fn from_pem(pem: &SecretString) -> Result<SigningKey, KeyError> {
        let text = pem.expose_secret();
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(KeyError::Encrypted);
        }
        // The parsers' own errors are dropped: they are not meant to be shown to operators, and a
        // fixed message is the only sure way to keep key material out of logs.
        let key = RsaPrivateKey::from_pkcs8_pem(text)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(text))
            .map_err(|_| KeyError::NotAKey)?;
        key.validate().map_err(|_| KeyError::Inconsistent)?;
        let key = SigningKey { key };
        let bits = key.bits();
        if bits != KEY_BITS {
            return Err(KeyError::WrongSize { bits });
        }
        Ok(key)
    }

    /// The public half, which the merchant uploads to Assist (and the sandbox verifies with).
    pub fn public_key(&self) -> rsa::RsaPublicKey {
        self.key.to_public_key()
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.n().bits()
    }

    /// The string that is signed: `Merchant_ID;OrderNumber;OrderAmount;OrderCurrency`, with the
    /// amount in its wire form (`100.00`).
    pub fn signed_string(
        merchant_id: &str,
        order_number: &str,
        amount: Money,
        currency: Currency,
    ) -> String {
        super::request_string(merchant_id, order_number, amount, currency)
    }

    /// The base64 `Signature` for a request: RSASSA-PKCS1-v1_5 with the MD5 DigestInfo over
    /// [`SigningKey::signed_string`].
    ///
    /// Signing is blinded with the operating system's random numbers, so its timing does not
    /// depend on the private key. PKCS#1 v1.5 is deterministic, so blinding does not change the
    /// result. A failure the `rsa` crate reports is returned as [`SignError`]; for a key
    /// `from_pem` accepted none is expected. One failure is outside our control: `rand_core`'s
    /// `OsRng` panics if the operating system cannot supply random numbers at all.
    pub fn sign(
        &self,
        merchant_id: &str,
        order_number: &str,
        amount: Money,
        currency: Currency,
    ) -> Result<String, SignError> {
        let message = SigningKey::signed_string(merchant_id, order_number, amount, currency);
        let digest = Md5::digest(message.as_bytes());
        let signature = self
            .key
            .sign_with_rng(&mut OsRng, Pkcs1v15Sign::new::<Md5>(), &digest)
            .map_err(|_| SignError)?;
        Ok(STANDARD.encode(signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::signature::Verifier;
    use std::path::Path;
    use std::process::Command;
    use std::sync::OnceLock;

    /// One throw-away key in both PEM forms, generated once for all tests.
    struct TestKey {
        pkcs1: String,
        pkcs8: String,
        /// Whether openssl made it; if not, the openssl comparison cannot run.
        by_openssl: bool,
    }

    fn have_openssl() -> bool {
        Command::new("openssl")
            .arg("version")
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    }

    fn openssl(args: &[&str], dir: &Path) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    /// Generates a key of `bits` bits in both PEM forms: with openssl when it is installed,
    /// else with the rsa crate.
    fn generate(bits: usize) -> TestKey {
        if have_openssl() {
            let dir = tempfile::tempdir().unwrap();
            let bits_text = bits.to_string();
            openssl(
                &["genrsa", "-traditional", "-out", "key1.pem", &bits_text],
                dir.path(),
            );
            openssl(
                &[
                    "pkcs8", "-topk8", "-nocrypt", "-in", "key1.pem", "-out", "key8.pem",
                ],
                dir.path(),
            );
            TestKey {
                pkcs1: read(dir.path(), "key1.pem"),
                pkcs8: read(dir.path(), "key8.pem"),
                by_openssl: true,
            }
        } else {
            println!("no openssl binary found: generating the test key with the rsa crate");
            let key = RsaPrivateKey::new(&mut OsRng, bits).unwrap();
            TestKey {
                pkcs1: key.to_pkcs1_pem(LineEnding::LF).unwrap().to_string(),
                pkcs8: key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                by_openssl: false,
            }
        }
    }

    fn test_key() -> &'static TestKey {
        static KEY: OnceLock<TestKey> = OnceLock::new();
        KEY.get_or_init(|| generate(KEY_BITS))
    }

    fn secret(text: &str) -> SecretString {
        SecretString::from(text.to_string())
    }

    fn load_pkcs1() -> SigningKey {
        SigningKey::from_pem(&secret(&test_key().pkcs1)).unwrap()
    }

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    fn rub() -> Currency {
        Currency::parse("RUB").unwrap()
    }

    fn verifies(key: &SigningKey, message: &str, signature_b64: &str) -> bool {
        let bytes = STANDARD.decode(signature_b64).unwrap();
        let signature = Signature::try_from(bytes.as_slice()).unwrap();
        VerifyingKey::<Md5>::new(key.key.to_public_key())
            .verify(message.as_bytes(), &signature)
            .is_ok()
    }

    /// Base64 body lines of a PEM, which no error message may contain.
    fn body_lines(pem: &str) -> Vec<&str> {
        pem.lines()
            .filter(|line| !line.starts_with("-----") && line.len() >= 8)
            .collect()
    }

    #[test]
    fn signed_string_is_semicolon_joined_in_wire_form() {
        assert_eq!(
            SigningKey::signed_string("123456", "A1_R1", money("100"), rub()),
            "123456;A1_R1;100.00;RUB"
        );
    }

    #[test]
    fn signature_verifies_with_the_public_key() {
        let key = load_pkcs1();
        let signature = key.sign("123456", "A1_R1", money("100.00"), rub()).unwrap();
        assert!(verifies(&key, "123456;A1_R1;100.00;RUB", &signature));
        // A 1024-bit signature is 128 bytes: 172 base64 characters, padded.
        assert_eq!(signature.len(), 172);
        assert!(signature.ends_with('='));
    }

    #[test]
    fn signature_is_byte_identical_to_openssl_dgst_md5_sign() {
        let test_key = test_key();
        if !test_key.by_openssl {
            println!("skipped: no openssl binary to compare with");
            return;
        }
        let key = load_pkcs1();
        let message = SigningKey::signed_string("123456", "A1_R1", money("100.00"), rub());
        let ours = STANDARD
            .decode(key.sign("123456", "A1_R1", money("100.00"), rub()).unwrap())
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.pem"), &test_key.pkcs1).unwrap();
        std::fs::write(dir.path().join("message.txt"), &message).unwrap();
        openssl(
            &[
                "dgst",
                "-md5",
                "-sign",
                "key.pem",
                "-out",
                "signature.bin",
                "message.txt",
            ],
            dir.path(),
        );
        let theirs = std::fs::read(dir.path().join("signature.bin")).unwrap();
        assert_eq!(ours.len(), 128);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_tampered_string_fails_verification() {
        let key = load_pkcs1();
        let signature = key.sign("123456", "A1_R1", money("100.00"), rub()).unwrap();
        for tampered in [
            "123456;A1_R1;100.01;RUB",
            "123456;A1_R2;100.00;RUB",
            "123457;A1_R1;100.00;RUB",
            "123456;A1_R1;100.00;USD",
            "123456A1_R1100.00RUB",
        ] {
            assert!(!verifies(&key, tampered, &signature), "{tampered}");
        }
    }

    #[test]
    fn pkcs1_and_pkcs8_pem_both_load_and_sign_alike() {
        let test_key = test_key();
        assert!(
            test_key
                .pkcs1
                .starts_with("-----BEGIN RSA PRIVATE KEY-----")
        );
        assert!(test_key.pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"));
        let pkcs1 = load_pkcs1();
        let pkcs8 = SigningKey::from_pem(&secret(&test_key.pkcs8)).unwrap();
        assert_eq!(pkcs1.bits(), KEY_BITS);
        assert_eq!(pkcs8.bits(), KEY_BITS);
        let one = pkcs1.sign("123456", "Заказ-1", money("10.50"), rub());
        let eight = pkcs8.sign("123456", "Заказ-1", money("10.50"), rub());
        assert_eq!(one.unwrap(), eight.unwrap());
    }

    #[test]
    fn a_2048_bit_key_is_refused_naming_its_size() {
        let big = generate(2048);
        for pem in [&big.pkcs1, &big.pkcs8] {
            let error = SigningKey::from_pem(&secret(pem)).unwrap_err();
            assert_eq!(error, KeyError::WrongSize { bits: 2048 });
            let message = error.to_string();
            assert!(
                message.contains("2048") && message.contains("1024"),
                "{message}"
            );
            for line in body_lines(pem) {
                assert!(!message.contains(line), "{message}");
            }
        }
    }

    #[test]
    fn garbage_pem_is_refused_without_echoing_it() {
        let real = &test_key().pkcs1;
        // A real key with one body line changed: the DER no longer parses.
        let lines: Vec<&str> = real.lines().collect();
        let mut corrupted = lines.clone();
        let broken_line = lines[3].replace(|c: char| c.is_ascii_alphanumeric(), "A");
        corrupted[3] = &broken_line;
        let corrupted = corrupted.join("\n");
        // The public half of the key is not a private key.
        let public = load_pkcs1()
            .key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        for pem in [
            "",
            "not a key at all: hunter2-xyz",
            "-----BEGIN RSA PRIVATE KEY-----\nhunter2xyzhunter2xyz\n-----END RSA PRIVATE KEY-----\n",
            &corrupted,
            &public,
            &real.replace("RSA PRIVATE KEY", "CERTIFICATE"),
        ] {
            let error = SigningKey::from_pem(&secret(pem)).unwrap_err();
            let message = error.to_string();
            assert_eq!(error, KeyError::NotAKey, "{message}");
            assert!(!message.contains("hunter2"), "{message}");
            for line in body_lines(pem) {
                assert!(!message.contains(line), "{message}");
            }
        }
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIC\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            SigningKey::from_pem(&secret(encrypted)).unwrap_err(),
            KeyError::Encrypted
        );
    }

    #[test]
    fn debug_shows_only_the_size() {
        let key = load_pkcs1();
        let shown = format!("{key:?}");
        let pretty = format!("{key:#?}");
        assert_eq!(shown, "SigningKey { bits: 1024 }");
        assert_eq!(pretty, "SigningKey {\n    bits: 1024,\n}");
        for text in [&shown, &pretty] {
            assert!(!text.contains("BigUint"), "{text}");
            // No digit other than those of "1024" can appear, so no part of n, d or the primes.
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            assert_eq!(digits, "1024");
        }
    }
}
