//! Standard Webhooks signatures (spec 1.0.0, `spec/standard-webhooks.md` in
//! github.com/standard-webhooks/standard-webhooks).
//!
//! Every attempt carries `webhook-id`, `webhook-timestamp` and
//! `webhook-signature`. The signed content is `{id}.{timestamp}.{body}`, so the
//! receiver authenticates the metadata as well as the body: a captured request
//! cannot be replayed later (the timestamp is signed) or under another ID.
//!
//! Two schemes, told apart by the secret's prefix:
//! - `whsec_<base64>`: HMAC-SHA256 with a 24–64 byte shared secret, `v1,<sig>`;
//! - `whsk_<base64>` / `whpk_<base64>`: ed25519, `v1a,<sig>`; the receiver only
//!   holds the public key, so it cannot forge webhooks.
//!
//! The signature header is a space-separated list so that during a rotation the
//! old and the new secret both sign, and receivers holding either keep working.
//!
//! Everything here is a pure function of its inputs (the clock is a parameter),
//! except key generation.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The tolerance the reference libraries use: a receiver accepts timestamps
/// within five minutes either side of its clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const SYMMETRIC_PREFIX: &str = "whsec_";
const ASYMMETRIC_SECRET_PREFIX: &str = "whsk_";
const ASYMMETRIC_PUBLIC_PREFIX: &str = "whpk_";
const SYMMETRIC_VERSION: &str = "v1";
const ASYMMETRIC_VERSION: &str = "v1a";

/// A secret or key string that could not be parsed. The message names the
/// expected form, never the material that was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("expected a secret of the form {expected}")]
    UnknownPrefix { expected: &'static str },
    #[error("the part after {prefix} is not valid base64")]
    Base64 { prefix: &'static str },
    #[error("a {prefix} secret must be {expected} bytes, got {got}")]
    Length { prefix: &'static str, expected: &'static str, got: usize },
    #[error("the {prefix} key is not a valid ed25519 key")]
    InvalidEd25519 { prefix: &'static str },
}

/// Why a received webhook was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not an integer")]
    InvalidTimestamp,
    #[error("webhook-timestamp is too old")]
    TimestampTooOld,
    #[error("webhook-timestamp is too far in the future")]
    TimestampTooNew,
    #[error("no signature matches")]
    NoMatchingSignature,
}

/// A symmetric (`whsec_`) signing secret: the raw HMAC key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Box<[u8]>);

impl SigningSecret {
    /// The spec's bounds: at least 192 bits, at most one SHA-256 block.
    pub const MIN_LEN: usize = 24;
    pub const MAX_LEN: usize = 64;
    /// What [`Self::generate`] makes: 256 bits, the HMAC-SHA256 output size.
    pub const GENERATED_LEN: usize = 32;

    pub fn generate() -> Self {
        Self(Box::new(random_bytes::<{ Self::GENERATED_LEN }>()))
    }

    pub fn from_bytes(key: &[u8]) -> Result<Self, KeyError> {
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&key.len()) {
            return Err(KeyError::Length { prefix: SYMMETRIC_PREFIX, expected: "24 to 64", got: key.len() });
        }
        Ok(Self(key.into()))
    }

    /// The `whsec_<base64>` form shown to the endpoint's owner. Named so that a
    /// call site that puts the secret into a response or a column reads as such.
    pub fn expose(&self) -> String {
        format!("{SYMMETRIC_PREFIX}{}", STANDARD.encode(&self.0))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, content: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(content);
        mac.finalize().into_bytes().into()
    }
}

impl FromStr for SigningSecret {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let encoded = s.strip_prefix(SYMMETRIC_PREFIX).ok_or(KeyError::UnknownPrefix { expected: "whsec_<base64>" })?;
        Self::from_bytes(&decode(SYMMETRIC_PREFIX, encoded)?)
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

/// An asymmetric (`whsk_`) signing key.
///
/// The spec says only "base64 encoded, prefixed with `whsk_`", not which bytes.
/// [`Self::expose`] writes the 64-byte `seed ‖ public key` form, which Go's
/// `crypto/ed25519` and libsodium load as a private key as-is; parsing also
/// takes a bare 32-byte seed, which other tools write.
///
/// Boxed: an expanded ed25519 key is over 200 bytes, and a [`Secret`] is
/// mostly the 16-byte symmetric kind.
#[derive(Clone, PartialEq, Eq)]
pub struct AsymmetricSecret(Box<SigningKey>);

impl AsymmetricSecret {
    pub fn generate() -> Self {
        Self::from_seed(&random_bytes::<32>())
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(Box::new(SigningKey::from_bytes(seed)))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The `whsk_<base64 of seed ‖ public key>` form.
    pub fn expose(&self) -> String {
        format!("{ASYMMETRIC_SECRET_PREFIX}{}", STANDARD.encode(self.0.to_keypair_bytes()))
    }
}

impl FromStr for AsymmetricSecret {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let encoded =
            s.strip_prefix(ASYMMETRIC_SECRET_PREFIX).ok_or(KeyError::UnknownPrefix { expected: "whsk_<base64>" })?;
        let bytes = decode(ASYMMETRIC_SECRET_PREFIX, encoded)?;
        if let Ok(seed) = <&[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(Self::from_seed(seed));
        }
        let keypair = <&[u8; 64]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length {
            prefix: ASYMMETRIC_SECRET_PREFIX,
            expected: "32 (seed) or 64 (seed and public key)",
            got: bytes.len(),
        })?;
        // Rejects a keypair whose public half does not belong to its seed.
        SigningKey::from_keypair_bytes(keypair)
            .map(|key| Self(Box::new(key)))
            .map_err(|_| KeyError::InvalidEd25519 { prefix: ASYMMETRIC_SECRET_PREFIX })
    }
}

impl fmt::Debug for AsymmetricSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AsymmetricSecret").field(&self.public_key()).finish()
    }
}

/// An ed25519 public key (`whpk_`), given to receivers to verify `v1a`
/// signatures. Not secret, so `Debug` shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn expose(&self) -> String {
        format!("{ASYMMETRIC_PUBLIC_PREFIX}{}", STANDARD.encode(self.0.as_bytes()))
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let encoded =
            s.strip_prefix(ASYMMETRIC_PUBLIC_PREFIX).ok_or(KeyError::UnknownPrefix { expected: "whpk_<base64>" })?;
        let bytes = decode(ASYMMETRIC_PUBLIC_PREFIX, encoded)?;
        let bytes = <&[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length {
            prefix: ASYMMETRIC_PUBLIC_PREFIX,
            expected: "32",
            got: bytes.len(),
        })?;
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| KeyError::InvalidEd25519 { prefix: ASYMMETRIC_PUBLIC_PREFIX })
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.expose())
    }
}

/// One signing secret of an endpoint, of either scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Symmetric(SigningSecret),
    Asymmetric(AsymmetricSecret),
}

impl Secret {
    /// What a receiver needs to check this secret's signatures.
    pub fn verification_key(&self) -> VerificationKey {
        match self {
            Self::Symmetric(secret) => VerificationKey::Symmetric(secret.clone()),
            Self::Asymmetric(secret) => VerificationKey::Asymmetric(secret.public_key()),
        }
    }

    pub fn expose(&self) -> String {
        match self {
            Self::Symmetric(secret) => secret.expose(),
            Self::Asymmetric(secret) => secret.expose(),
        }
    }

    /// `v1,<base64>` or `v1a,<base64>`.
    fn sign(&self, content: &[u8]) -> String {
        match self {
            Self::Symmetric(secret) => format!("{SYMMETRIC_VERSION},{}", STANDARD.encode(secret.mac(content))),
            Self::Asymmetric(secret) => {
                format!("{ASYMMETRIC_VERSION},{}", STANDARD.encode(secret.0.sign(content).to_bytes()))
            }
        }
    }
}

/// Parses either scheme; the prefix decides which.
impl FromStr for Secret {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        if s.starts_with(SYMMETRIC_PREFIX) {
            s.parse().map(Self::Symmetric)
        } else if s.starts_with(ASYMMETRIC_SECRET_PREFIX) {
            s.parse().map(Self::Asymmetric)
        } else {
            Err(KeyError::UnknownPrefix { expected: "whsec_<base64> or whsk_<base64>" })
        }
    }
}

/// What a receiver holds: the shared secret, or the sender's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerificationKey {
    Symmetric(SigningSecret),
    Asymmetric(PublicKey),
}

/// The `webhook-signature` value: one signature per secret, space-separated,
/// in the order given.
pub fn sign(msg_id: &str, timestamp: i64, body: &[u8], secrets: &[&Secret]) -> String {
    // The spec forbids `.` in IDs: the signature for ID `a.1`, timestamp 2 and
    // body `b` would otherwise also pass for ID `a`, timestamp 1, body `2.b`.
    debug_assert!(!msg_id.contains('.'), "webhook IDs must not contain '.'");
    let content = signed_content(msg_id, timestamp, body);
    secrets.iter().map(|secret| secret.sign(&content)).collect::<Vec<_>>().join(" ")
}

/// The three headers of one attempt. The timestamp is the attempt's, not the
/// message's: each retry is signed afresh so that it falls inside the
/// receiver's tolerance window.
pub fn headers(msg_id: &str, timestamp: i64, body: &[u8], secrets: &[&Secret]) -> [(&'static str, String); 3] {
    [
        (HEADER_ID, msg_id.to_owned()),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (HEADER_SIGNATURE, sign(msg_id, timestamp, body, secrets)),
    ]
}

/// The header values and body of a received webhook, as they arrived.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
    pub body: &'a [u8],
}

/// Accepts the webhook if its timestamp is within `tolerance` of `now` (Unix
/// seconds) and at least one listed signature verifies under one of `keys`.
///
/// Entries of an unknown version or malformed entries are skipped rather than
/// rejected, so a sender may add schemes without breaking receivers.
pub fn verify(
    received: &Received<'_>,
    keys: &[&VerificationKey],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let timestamp: i64 = received.timestamp.parse().map_err(|_| VerifyError::InvalidTimestamp)?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    // The timestamp is checked first: a stale request is refused even with a
    // valid signature, which is what stops replays.
    if now.saturating_sub(timestamp) > tolerance {
        return Err(VerifyError::TimestampTooOld);
    }
    if timestamp.saturating_sub(now) > tolerance {
        return Err(VerifyError::TimestampTooNew);
    }
    let content = signed_content(received.id, timestamp, received.body);
    let macs: Vec<[u8; 32]> = keys
        .iter()
        .filter_map(|key| match key {
            VerificationKey::Symmetric(secret) => Some(secret.mac(&content)),
            VerificationKey::Asymmetric(_) => None,
        })
        .collect();
    let matches = |entry: &str| {
        let Some((version, encoded)) = entry.split_once(',') else { return false };
        let Ok(signature) = STANDARD.decode(encoded) else { return false };
        match version {
            // Constant-time, so that response timing does not reveal how much
            // of a forged signature was right.
            SYMMETRIC_VERSION => macs.iter().any(|mac| bool::from(mac.as_slice().ct_eq(&signature))),
            ASYMMETRIC_VERSION => {
                let Ok(signature) = Signature::from_slice(&signature) else { return false };
                keys.iter().any(|key| match key {
                    VerificationKey::Asymmetric(public) => public.0.verify_strict(&content, &signature).is_ok(),
                    VerificationKey::Symmetric(_) => false,
                })
            }
            _ => false,
        }
    };
    if received.signature.split(' ').any(matches) { Ok(()) } else { Err(VerifyError::NoMatchingSignature) }
}

fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(msg_id.len() + 22 + body.len());
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// Reference libraries disagree on padding (the Python one accepts unpadded
/// secrets), so parsing takes either; output is always padded.
fn decode(prefix: &'static str, encoded: &str) -> Result<Vec<u8>, KeyError> {
    STANDARD_PAD_INDIFFERENT.decode(encoded).map_err(|_| KeyError::Base64 { prefix })
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::TryRngCore;
    let mut bytes = [0u8; N];
    // Straight from the OS: these are long-lived keys. A failing OS RNG leaves
    // nothing sensible to do, and rand's own generators would panic too.
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("the OS random number generator failed");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published vectors from github.com/standard-webhooks/standard-webhooks.
    // libraries/rust/src/lib.rs, `test_sign`:
    const RUST_LIB_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const RUST_LIB_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const RUST_LIB_TIMESTAMP: i64 = 1649367553;
    const RUST_LIB_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const RUST_LIB_SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    // libraries/python/tests/test_webhooks.py, `test_sign_function`:
    const PYTHON_LIB_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const PYTHON_LIB_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const PYTHON_LIB_TIMESTAMP: i64 = 1614265330;
    const PYTHON_LIB_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const PYTHON_LIB_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const NOW: i64 = 1_700_000_000;

    fn secret(s: &str) -> Secret {
        s.parse().unwrap()
    }

    fn received<'a>(id: &'a str, timestamp: &'a str, signature: &'a str, body: &'a [u8]) -> Received<'a> {
        Received { id, timestamp, signature, body }
    }

    #[test]
    fn signing_matches_the_reference_rust_library_vector() {
        let secret = secret(RUST_LIB_SECRET);
        assert_eq!(sign(RUST_LIB_ID, RUST_LIB_TIMESTAMP, RUST_LIB_BODY, &[&secret]), RUST_LIB_SIGNATURE);
    }

    #[test]
    fn signing_matches_the_reference_python_library_vector() {
        let secret = secret(PYTHON_LIB_SECRET);
        assert_eq!(sign(PYTHON_LIB_ID, PYTHON_LIB_TIMESTAMP, PYTHON_LIB_BODY, &[&secret]), PYTHON_LIB_SIGNATURE);
    }

    #[test]
    fn the_reference_vector_verifies_at_its_own_time() {
        let key = secret(RUST_LIB_SECRET).verification_key();
        let ts = RUST_LIB_TIMESTAMP.to_string();
        let msg = received(RUST_LIB_ID, &ts, RUST_LIB_SIGNATURE, RUST_LIB_BODY);
        assert_eq!(verify(&msg, &[&key], RUST_LIB_TIMESTAMP, DEFAULT_TOLERANCE), Ok(()));
    }

    #[test]
    fn an_ed25519_key_from_the_rfc_8032_seed_has_the_rfc_public_key_and_signature() {
        // RFC 8032 section 7.1, TEST 1 (empty message): checks that whsk_ seeds
        // and whpk_ keys are the standard ed25519 encodings.
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let signature = hex(concat!(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
            "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ));
        let key = AsymmetricSecret::from_seed(&seed.clone().try_into().unwrap());
        assert_eq!(key.public_key().expose(), format!("whpk_{}", STANDARD.encode(&public)));
        assert_eq!(key.0.sign(b"").to_bytes().as_slice(), signature.as_slice());
    }

    #[test]
    fn a_v1a_signature_is_ed25519_over_id_timestamp_and_body() {
        let key = AsymmetricSecret::from_seed(&[7; 32]);
        let header = sign("msg_1", 1000, b"{}", &[&Secret::Asymmetric(key.clone())]);
        let (version, encoded) = header.split_once(',').unwrap();
        assert_eq!(version, "v1a");
        let signature = Signature::from_slice(&STANDARD.decode(encoded).unwrap()).unwrap();
        key.public_key().0.verify_strict(b"msg_1.1000.{}", &signature).unwrap();
    }

    #[test]
    fn a_rotation_signs_with_both_secrets_and_each_alone_verifies() {
        let old = Secret::Symmetric(SigningSecret::generate());
        let new = Secret::Asymmetric(AsymmetricSecret::generate());
        let header = sign("msg_1", NOW, b"{}", &[&old, &new]);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts[0].starts_with("v1,") && parts[1].starts_with("v1a,"));
        let ts = NOW.to_string();
        for key in [old.verification_key(), new.verification_key()] {
            assert_eq!(verify(&received("msg_1", &ts, &header, b"{}"), &[&key], NOW, DEFAULT_TOLERANCE), Ok(()));
        }
    }

    #[test]
    fn a_tampered_body_fails_verification() {
        let secret = Secret::Symmetric(SigningSecret::generate());
        let header = sign("msg_1", NOW, b"{\"amount\":1}", &[&secret]);
        let ts = NOW.to_string();
        let msg = received("msg_1", &ts, &header, b"{\"amount\":9}");
        assert_eq!(
            verify(&msg, &[&secret.verification_key()], NOW, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn a_tampered_body_fails_ed25519_verification() {
        let secret = Secret::Asymmetric(AsymmetricSecret::generate());
        let header = sign("msg_1", NOW, b"a", &[&secret]);
        let ts = NOW.to_string();
        let msg = received("msg_1", &ts, &header, b"b");
        assert_eq!(
            verify(&msg, &[&secret.verification_key()], NOW, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn another_id_or_timestamp_fails_verification() {
        let secret = Secret::Symmetric(SigningSecret::generate());
        let key = secret.verification_key();
        let header = sign("msg_1", NOW, b"{}", &[&secret]);
        let ts = NOW.to_string();
        let later = (NOW + 1).to_string();
        assert!(verify(&received("msg_2", &ts, &header, b"{}"), &[&key], NOW, DEFAULT_TOLERANCE).is_err());
        assert!(verify(&received("msg_1", &later, &header, b"{}"), &[&key], NOW, DEFAULT_TOLERANCE).is_err());
    }

    #[test]
    fn a_stale_or_future_timestamp_fails_even_with_a_valid_signature() {
        let secret = Secret::Symmetric(SigningSecret::generate());
        let key = secret.verification_key();
        let tolerance = Duration::from_secs(300);
        for (ts, outcome) in [
            (NOW - 301, Err(VerifyError::TimestampTooOld)),
            (NOW - 300, Ok(())),
            (NOW + 300, Ok(())),
            (NOW + 301, Err(VerifyError::TimestampTooNew)),
        ] {
            let header = sign("msg_1", ts, b"{}", &[&secret]);
            let ts = ts.to_string();
            assert_eq!(verify(&received("msg_1", &ts, &header, b"{}"), &[&key], NOW, tolerance), outcome, "at {ts}");
        }
    }

    #[test]
    fn a_non_integer_timestamp_is_refused() {
        let key = secret(RUST_LIB_SECRET).verification_key();
        let msg = received(RUST_LIB_ID, "soon", RUST_LIB_SIGNATURE, RUST_LIB_BODY);
        assert_eq!(verify(&msg, &[&key], NOW, DEFAULT_TOLERANCE), Err(VerifyError::InvalidTimestamp));
    }

    #[test]
    fn unknown_versions_and_malformed_entries_are_skipped_not_fatal() {
        let secret = Secret::Symmetric(SigningSecret::generate());
        let good = sign("msg_1", NOW, b"{}", &[&secret]);
        let header = format!("v2,abc v1, v1,!!! nonsense v1a,AAAA {good}");
        let ts = NOW.to_string();
        let msg = received("msg_1", &ts, &header, b"{}");
        assert_eq!(verify(&msg, &[&secret.verification_key()], NOW, DEFAULT_TOLERANCE), Ok(()));
    }

    #[test]
    fn a_truncated_signature_does_not_verify() {
        let secret = Secret::Symmetric(SigningSecret::generate());
        let good = sign("msg_1", NOW, b"{}", &[&secret]);
        let ts = NOW.to_string();
        for cut in [&good[..3], &good[..8], &good[..good.len() - 4]] {
            let msg = received("msg_1", &ts, cut, b"{}");
            assert!(verify(&msg, &[&secret.verification_key()], NOW, DEFAULT_TOLERANCE).is_err(), "{cut}");
        }
    }

    #[test]
    fn a_v1_signature_is_not_checked_against_a_public_key_or_v1a_against_a_secret() {
        let symmetric = Secret::Symmetric(SigningSecret::generate());
        let asymmetric = Secret::Asymmetric(AsymmetricSecret::generate());
        let ts = NOW.to_string();
        let v1 = sign("msg_1", NOW, b"{}", &[&symmetric]);
        let v1a = sign("msg_1", NOW, b"{}", &[&asymmetric]);
        let wrong_key_for_v1 = asymmetric.verification_key();
        let wrong_key_for_v1a = symmetric.verification_key();
        assert!(verify(&received("msg_1", &ts, &v1, b"{}"), &[&wrong_key_for_v1], NOW, DEFAULT_TOLERANCE).is_err());
        assert!(verify(&received("msg_1", &ts, &v1a, b"{}"), &[&wrong_key_for_v1a], NOW, DEFAULT_TOLERANCE).is_err());
    }

    #[test]
    fn headers_carry_the_id_the_attempt_timestamp_and_the_signature() {
        let secret = secret(RUST_LIB_SECRET);
        let headers = headers(RUST_LIB_ID, RUST_LIB_TIMESTAMP, RUST_LIB_BODY, &[&secret]);
        assert_eq!(
            headers,
            [
                ("webhook-id", RUST_LIB_ID.to_owned()),
                ("webhook-timestamp", "1649367553".to_owned()),
                ("webhook-signature", RUST_LIB_SIGNATURE.to_owned()),
            ]
        );
    }

    #[test]
    fn a_generated_secret_is_32_random_bytes_and_round_trips_through_its_text_form() {
        let a = SigningSecret::generate();
        assert_eq!(a.as_bytes().len(), 32);
        assert_ne!(a, SigningSecret::generate());
        let text = a.expose();
        assert!(text.starts_with("whsec_"));
        assert_eq!(text.parse::<SigningSecret>().unwrap(), a);
    }

    #[test]
    fn a_generated_ed25519_key_round_trips_as_a_64_byte_keypair() {
        let key = AsymmetricSecret::generate();
        let text = key.expose();
        assert_eq!(STANDARD.decode(text.strip_prefix("whsk_").unwrap()).unwrap().len(), 64);
        assert_eq!(text.parse::<AsymmetricSecret>().unwrap(), key);
        let public = key.public_key().expose();
        assert_eq!(public.parse::<PublicKey>().unwrap(), key.public_key());
    }

    #[test]
    fn a_whsk_seed_of_32_bytes_is_accepted() {
        let seed = [9u8; 32];
        let parsed: AsymmetricSecret = format!("whsk_{}", STANDARD.encode(seed)).parse().unwrap();
        assert_eq!(parsed, AsymmetricSecret::from_seed(&seed));
    }

    #[test]
    fn a_whsk_keypair_whose_halves_do_not_match_is_refused() {
        let mut keypair = AsymmetricSecret::from_seed(&[1; 32]).0.to_keypair_bytes();
        keypair[32..].copy_from_slice(AsymmetricSecret::from_seed(&[2; 32]).public_key().0.as_bytes());
        let text = format!("whsk_{}", STANDARD.encode(keypair));
        assert_eq!(text.parse::<AsymmetricSecret>(), Err(KeyError::InvalidEd25519 { prefix: "whsk_" }));
    }

    #[test]
    fn an_unpadded_secret_parses_like_the_padded_one() {
        // 25 bytes: base64 needs "==" padding.
        let padded = format!("whsec_{}", STANDARD.encode([5u8; 25]));
        let unpadded = padded.trim_end_matches('=');
        assert_ne!(padded, unpadded);
        assert_eq!(unpadded.parse::<SigningSecret>().unwrap(), padded.parse::<SigningSecret>().unwrap());
    }

    #[test]
    fn secrets_outside_24_to_64_bytes_are_refused_with_the_bounds() {
        for len in [0, 23, 65] {
            let text = format!("whsec_{}", STANDARD.encode(vec![1u8; len]));
            let err = text.parse::<SigningSecret>().unwrap_err();
            assert_eq!(err, KeyError::Length { prefix: "whsec_", expected: "24 to 64", got: len });
            assert_eq!(err.to_string(), format!("a whsec_ secret must be 24 to 64 bytes, got {len}"));
        }
        for len in [24, 64] {
            assert!(format!("whsec_{}", STANDARD.encode(vec![1u8; len])).parse::<SigningSecret>().is_ok());
        }
    }

    #[test]
    fn a_secret_without_a_known_prefix_or_with_bad_base64_is_refused() {
        assert_eq!(
            "C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse::<Secret>(),
            Err(KeyError::UnknownPrefix { expected: "whsec_<base64> or whsk_<base64>" })
        );
        assert_eq!("whsec_not base64!".parse::<Secret>(), Err(KeyError::Base64 { prefix: "whsec_" }));
        assert_eq!("whpk_AAAA".parse::<PublicKey>().unwrap_err().to_string(), "a whpk_ secret must be 32 bytes, got 3");
    }

    #[test]
    fn the_prefix_picks_the_scheme() {
        assert!(matches!(secret(RUST_LIB_SECRET), Secret::Symmetric(_)));
        assert!(matches!(secret(&AsymmetricSecret::generate().expose()), Secret::Asymmetric(_)));
        assert_eq!(secret(RUST_LIB_SECRET).expose(), RUST_LIB_SECRET);
    }

    #[test]
    fn debug_output_never_contains_secret_material() {
        let symmetric = secret(RUST_LIB_SECRET);
        let asymmetric = AsymmetricSecret::from_seed(&[3; 32]);
        let seed_b64 = STANDARD.encode([3u8; 32]);
        let printed = format!("{symmetric:?} {:?} {asymmetric:?}", symmetric.verification_key());
        assert!(!printed.contains("C2FVsBQIhrscChlQIMV"), "{printed}");
        assert!(!format!("{asymmetric:?}").contains(&seed_b64[..20]));
        assert!(!format!("{asymmetric:?}").contains(&asymmetric.expose()[5..25]));
        // The public key is not secret and helps to tell keys apart.
        assert!(format!("{asymmetric:?}").contains("whpk_"));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }
}
