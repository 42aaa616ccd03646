//! Encryption at rest for endpoint signing secrets.
//!
//! Signing secrets must be readable (we sign with them), so they cannot be
//! hashed like API keys. They are sealed with XChaCha20-Poly1305 under one
//! operator-held key, so a database dump or backup alone does not let anyone
//! forge webhooks.
//!
//! A sealed value is `version (1 byte) ‖ nonce (24 bytes) ‖ ciphertext ‖ tag`.
//! The nonce is random: XChaCha's 192-bit nonce makes collisions negligible
//! without a counter to keep. The version byte lets the format change later;
//! it is authenticated with the caller's associated data (the endpoint ID), so
//! a sealed secret copied to another endpoint's row does not open.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

/// The key file's name inside the data directory.
pub const KEY_FILE_NAME: &str = "secret-encryption.key";

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// The form an operator must give, repeated in every key error so the fix is
/// in the message.
const EXPECTED_FORM: &str =
    "expected 32 bytes in standard base64 (44 characters, e.g. the output of `openssl rand -base64 32`)";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key text is wrong; the message never quotes it.
    #[error("invalid secret encryption key: {problem}; {EXPECTED_FORM}")]
    InvalidKey { problem: String },
    #[error("secret encryption key file {}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: Box<SecretsError>,
    },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("sealed secret has unknown format version {0}")]
    UnknownVersion(u8),
    #[error("sealed secret is too short to be valid")]
    Truncated,
    /// Wrong key, wrong associated data, or altered bytes: the AEAD cannot
    /// tell these apart, and neither can we.
    #[error("sealed secret failed authentication (wrong key, wrong endpoint, or corrupted)")]
    Unauthentic,
}

/// Every failure here is ours (configuration or stored data), never the
/// caller's, so the caller sees a terse internal error and the log the cause.
impl From<SecretsError> for crate::error::Error {
    fn from(err: SecretsError) -> Self {
        crate::error::Error::internal(anyhow::Error::new(err))
    }
}

/// The key that seals signing secrets.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    pub fn generate() -> Self {
        use rand::TryRngCore;
        let mut key = [0u8; KEY_LEN];
        // Straight from the OS for a long-lived key; there is no sensible way
        // to go on if it fails.
        rand::rngs::OsRng.try_fill_bytes(&mut key).expect("the OS random number generator failed");
        Self(key)
    }

    /// Parses the operator's option or environment variable. Surrounding
    /// whitespace (a trailing newline from a file or `echo`) is ignored.
    pub fn from_base64(text: &str) -> Result<Self, SecretsError> {
        let bytes = STANDARD_PAD_INDIFFERENT
            .decode(text.trim())
            .map_err(|_| SecretsError::InvalidKey { problem: "it is not valid base64".into() })?;
        let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice())
            .map_err(|_| SecretsError::InvalidKey { problem: format!("it decodes to {} bytes", bytes.len()) })?;
        Ok(Self(key))
    }

    /// The text form [`Self::from_base64`] reads. Named so that printing a
    /// key reads as a deliberate act at the call site.
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Reads `dir/secret-encryption.key`, or creates it with a new key if it
    /// does not exist. An existing file is never overwritten: losing the key
    /// would make every stored secret unreadable.
    ///
    /// The file is written to a temporary name (mode 0600 from the start, so
    /// the key is never readable by others) and published with a hard link,
    /// which, unlike a rename, fails if the name exists. Two replicas starting
    /// at once therefore agree on one key. Blocking I/O: call at start-up.
    pub fn load_or_create(dir: &Path) -> Result<Self, SecretsError> {
        let path = dir.join(KEY_FILE_NAME);
        match Self::read_file(&path) {
            Err(SecretsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let key = Self::generate();
        let tmp = dir.join(format!(".{KEY_FILE_NAME}.{}.tmp", std::process::id()));
        let written = write_new_private_file(&tmp, format!("{}\n", key.expose_base64()).as_bytes())
            .and_then(|()| fs::hard_link(&tmp, &path));
        // The temporary name goes whatever happened; the link, if made, keeps
        // the contents.
        let _ = fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                // Make the new directory entry durable before any secret is
                // sealed with this key.
                File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("syncing directory", dir))?;
                tracing::info!(path = %path.display(), "created a new secret encryption key");
                Ok(key)
            }
            // Another process created it first: use theirs.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && path.exists() => Self::read_file(&path),
            Err(err) => Err(SecretsError::Io { action: "creating", path, source: err }),
        }
    }

    fn read_file(path: &Path) -> Result<Self, SecretsError> {
        let text = fs::read_to_string(path).map_err(io_error("reading", path))?;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the secret encryption key file is readable by other users; chmod 600 it");
        }
        Self::from_base64(&text).map_err(|err| SecretsError::KeyFile { path: path.to_owned(), source: Box::new(err) })
    }

    /// Seals `plaintext`, bound to `associated_data` (the endpoint ID): the
    /// same data must be given to [`Self::decrypt`].
    pub fn encrypt(&self, plaintext: &[u8], associated_data: &[u8]) -> Vec<u8> {
        let nonce = random_nonce();
        let sealed = self
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad: &aad(VERSION, associated_data) })
            .expect("XChaCha20-Poly1305 only fails on inputs of 256 GiB and more");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn decrypt(&self, sealed: &[u8], associated_data: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let (&version, rest) = sealed.split_first().ok_or(SecretsError::Truncated)?;
        if version != VERSION {
            return Err(SecretsError::UnknownVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretsError::Truncated);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at the nonce length");
        self.cipher()
            .decrypt(&XNonce::from(nonce), Payload { msg: ciphertext, aad: &aad(version, associated_data) })
            .map_err(|_| SecretsError::Unauthentic)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&Key::from(self.0))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// The version byte is fixed-length, so prefixing it cannot make two
/// different (version, data) pairs look alike.
fn aad(version: u8, associated_data: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + associated_data.len());
    aad.push(version);
    aad.extend_from_slice(associated_data);
    aad
}

fn random_nonce() -> [u8; NONCE_LEN] {
    use rand::TryRngCore;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.try_fill_bytes(&mut nonce).expect("the OS random number generator failed");
    nonce
}

/// Creates `path` (failing if it exists) readable by its owner only, and
/// flushes it to disk.
fn write_new_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SecretsError {
    let path = path.to_owned();
    move |source| SecretsError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &[u8] = b"ep_01";
    const PLAINTEXT: &[u8] = b"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    /// A fresh directory per test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let name = format!(
                "hookpost-secrets-{}-{}",
                std::process::id(),
                SecretKey::generate().0[0..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            let path = std::env::temp_dir().join(name);
            fs::create_dir(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_sealed_secret_opens_with_the_same_key_and_endpoint() {
        let key = SecretKey::generate();
        let sealed = key.encrypt(PLAINTEXT, ENDPOINT);
        assert_eq!(key.decrypt(&sealed, ENDPOINT).unwrap(), PLAINTEXT);
    }

    #[test]
    fn the_sealed_form_is_version_nonce_ciphertext_and_tag() {
        let sealed = SecretKey::generate().encrypt(PLAINTEXT, ENDPOINT);
        assert_eq!(sealed[0], 1);
        assert_eq!(sealed.len(), 1 + 24 + PLAINTEXT.len() + 16);
        assert!(!sealed.windows(PLAINTEXT.len()).any(|w| w == PLAINTEXT));
    }

    #[test]
    fn sealing_the_same_secret_twice_gives_different_bytes() {
        let key = SecretKey::generate();
        assert_ne!(key.encrypt(PLAINTEXT, ENDPOINT), key.encrypt(PLAINTEXT, ENDPOINT));
    }

    #[test]
    fn another_key_cannot_open_it() {
        let sealed = SecretKey::generate().encrypt(PLAINTEXT, ENDPOINT);
        assert!(matches!(SecretKey::generate().decrypt(&sealed, ENDPOINT), Err(SecretsError::Unauthentic)));
    }

    #[test]
    fn a_secret_moved_to_another_endpoint_does_not_open() {
        let key = SecretKey::generate();
        let sealed = key.encrypt(PLAINTEXT, ENDPOINT);
        assert!(matches!(key.decrypt(&sealed, b"ep_02"), Err(SecretsError::Unauthentic)));
        assert!(matches!(key.decrypt(&sealed, b""), Err(SecretsError::Unauthentic)));
    }

    #[test]
    fn any_altered_byte_makes_it_unauthentic() {
        let key = SecretKey::generate();
        let sealed = key.encrypt(PLAINTEXT, ENDPOINT);
        // Every byte after the version: nonce, ciphertext and tag.
        for i in 1..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert!(matches!(key.decrypt(&tampered, ENDPOINT), Err(SecretsError::Unauthentic)), "byte {i}");
        }
    }

    #[test]
    fn an_unknown_version_or_a_truncated_value_is_refused() {
        let key = SecretKey::generate();
        let mut sealed = key.encrypt(PLAINTEXT, ENDPOINT);
        assert!(matches!(key.decrypt(&sealed[..1 + 24 + 15], ENDPOINT), Err(SecretsError::Truncated)));
        assert!(matches!(key.decrypt(&[], ENDPOINT), Err(SecretsError::Truncated)));
        sealed[0] = 2;
        assert!(matches!(key.decrypt(&sealed, ENDPOINT), Err(SecretsError::UnknownVersion(2))));
    }

    #[test]
    fn an_empty_secret_round_trips() {
        let key = SecretKey::generate();
        assert_eq!(key.decrypt(&key.encrypt(b"", ENDPOINT), ENDPOINT).unwrap(), b"");
    }

    #[test]
    fn a_key_round_trips_through_base64_with_or_without_a_trailing_newline() {
        let key = SecretKey::generate();
        let text = key.expose_base64();
        assert_eq!(text.len(), 44);
        let sealed = key.encrypt(PLAINTEXT, ENDPOINT);
        for form in [text.clone(), format!("{text}\n"), text.trim_end_matches('=').to_owned()] {
            assert_eq!(SecretKey::from_base64(&form).unwrap().decrypt(&sealed, ENDPOINT).unwrap(), PLAINTEXT);
        }
    }

    #[test]
    fn a_key_that_is_not_base64_is_refused_with_the_expected_form() {
        let err = SecretKey::from_base64("not base64 at all!").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid secret encryption key: it is not valid base64; expected 32 bytes in standard base64 \
             (44 characters, e.g. the output of `openssl rand -base64 32`)"
        );
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused_without_quoting_it() {
        let short = STANDARD.encode([7u8; 16]);
        let err = SecretKey::from_base64(&short).unwrap_err().to_string();
        assert!(err.contains("it decodes to 16 bytes; expected 32 bytes in standard base64"), "{err}");
        assert!(!err.contains(&short), "{err}");
        assert!(SecretKey::from_base64(&STANDARD.encode([7u8; 33])).is_err());
        assert!(SecretKey::from_base64("").is_err());
    }

    #[test]
    fn debug_output_never_contains_the_key() {
        let key = SecretKey::generate();
        let printed = format!("{key:?}");
        assert_eq!(printed, "SecretKey([redacted])");
        assert!(!printed.contains(&key.expose_base64()[..16]));
    }

    #[test]
    fn the_key_file_is_created_owner_only_and_reused_on_the_next_start() {
        let dir = TempDir::new();
        let first = SecretKey::load_or_create(&dir.0).unwrap();
        let path = dir.0.join(KEY_FILE_NAME);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let second = SecretKey::load_or_create(&dir.0).unwrap();
        assert_eq!(first.0, second.0);
        assert_eq!(SecretKey::from_base64(&fs::read_to_string(&path).unwrap()).unwrap().0, first.0);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn an_existing_key_file_is_used_and_never_overwritten() {
        let dir = TempDir::new();
        let path = dir.0.join(KEY_FILE_NAME);
        let operator_key = SecretKey::generate();
        fs::write(&path, operator_key.expose_base64()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(SecretKey::load_or_create(&dir.0).unwrap().0, operator_key.0);
        assert_eq!(fs::read_to_string(&path).unwrap(), operator_key.expose_base64());
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_naming_the_file_not_a_new_key() {
        let dir = TempDir::new();
        let path = dir.0.join(KEY_FILE_NAME);
        fs::write(&path, "garbage").unwrap();
        let err = SecretKey::load_or_create(&dir.0).unwrap_err();
        assert!(matches!(&err, SecretsError::KeyFile { path: p, .. } if *p == path));
        let chain = format!("{:#}", anyhow::Error::new(err));
        assert!(chain.contains("secret-encryption.key") && chain.contains("not valid base64"), "{chain}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "garbage");
    }

    #[test]
    fn a_missing_data_directory_is_an_io_error() {
        let dir = TempDir::new();
        let missing = dir.0.join("absent");
        assert!(matches!(SecretKey::load_or_create(&missing), Err(SecretsError::Io { .. })));
    }

    #[test]
    fn secrets_errors_reach_callers_as_internal_errors() {
        let err = crate::error::Error::from(SecretsError::Unauthentic);
        assert_eq!(err.code, crate::error::ErrorCode::Internal);
        assert_eq!(err.message, "internal error");
    }
}
