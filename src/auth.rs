//! API keys and who a caller is.
//!
//! A key looks like `hpk_<12 chars>_<32 chars>`; its first part (`hpk_…`) is
//! the visible prefix that identifies it, and only the SHA-256 of the whole
//! key is stored. Keys are random (190 bits), so a plain hash is enough; it is
//! compared in constant time.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::{Error, ErrorCode, Result};
use crate::store::Store;

const KEY_TAG: &str = "hpk_";
const PREFIX_CHARS: usize = 12;
const SECRET_CHARS: usize = 32;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Acts for this organization only.
    Organization(Uuid),
    /// An internal caller, acting for any organization it names.
    Service,
}

impl KeyKind {
    /// How both stores keep a kind: its name and the organization, if any.
    pub fn to_stored(self) -> (&'static str, Option<Uuid>) {
        match self {
            Self::Organization(o) => ("organization", Some(o)),
            Self::Service => ("service", None),
        }
    }

    /// The inverse of [`Self::to_stored`].
    pub fn from_stored(kind: &str, organization_id: Option<Uuid>) -> Result<Self> {
        match (kind, organization_id) {
            ("service", _) => Ok(Self::Service),
            ("organization", Some(o)) => Ok(Self::Organization(o)),
            (other, org) => Err(Error::internal(anyhow::anyhow!("stored API key kind {other:?} with {org:?}"))),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: KeyKind,
    /// The key's visible prefix, for logs and rate limiting.
    pub key_prefix: String,
}

impl Principal {
    /// The organization this caller is confined to, if any.
    pub fn organization(&self) -> Option<Uuid> {
        match self.kind {
            KeyKind::Organization(o) => Some(o),
            KeyKind::Service => None,
        }
    }
}

/// A key as stored.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub prefix: String,
    pub key_hash: Vec<u8>,
    pub kind: KeyKind,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new key: the plaintext (shown once) and what is stored.
pub struct NewApiKey {
    pub plaintext: String,
    pub prefix: String,
    pub key_hash: Vec<u8>,
    pub kind: KeyKind,
}

pub fn generate(kind: KeyKind) -> NewApiKey {
    let mut rng = rand::rng();
    let prefix = format!("{KEY_TAG}{}", Alphanumeric.sample_string(&mut rng, PREFIX_CHARS));
    let plaintext = format!("{prefix}_{}", Alphanumeric.sample_string(&mut rng, SECRET_CHARS));
    NewApiKey { key_hash: hash(&plaintext).to_vec(), plaintext, prefix, kind }
}

pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The visible prefix of a well-formed key.
pub fn prefix_of(key: &str) -> Option<&str> {
    let prefix = key.get(..KEY_TAG.len() + PREFIX_CHARS)?;
    let rest = key.get(prefix.len()..)?;
    (prefix.starts_with(KEY_TAG) && rest.len() == SECRET_CHARS + 1 && rest.starts_with('_')).then_some(prefix)
}

/// The key in an `Authorization` value: `Bearer <key>` or `AccessKey <key>`.
pub fn parse_authorization(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("accesskey");
    (known && !key.is_empty()).then_some(key)
}

fn unauthenticated(message: &str) -> Error {
    Error::new(ErrorCode::Unauthenticated, message)
}

/// Resolves keys to principals, with a short cache of looked-up keys and an
/// optional per-key rate limit.
pub struct Authenticator {
    store: Arc<dyn Store>,
    cache_ttl: Duration,
    cache: Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl Authenticator {
    /// `cache_ttl` bounds how long a revoked key keeps working in this
    /// process; `rate_limit` is requests per second per key (None: no limit).
    pub fn new(store: Arc<dyn Store>, cache_ttl: Duration, rate_limit: Option<NonZeroU32>) -> Self {
        Self {
            store,
            cache_ttl,
            cache: Mutex::new(HashMap::new()),
            limiter: rate_limit.map(|r| RateLimiter::keyed(Quota::per_second(r))),
        }
    }

    /// `authorization` is the raw header or metadata value, if any.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let Some(value) = authorization else {
            return Err(unauthenticated("missing API key: send \"authorization: Bearer <key>\""));
        };
        let invalid = || unauthenticated("invalid API key");
        let key = parse_authorization(value)
            .ok_or_else(|| unauthenticated("authorization must be \"Bearer <key>\" or \"AccessKey <key>\""))?;
        let prefix = prefix_of(key).ok_or_else(invalid)?;
        let record = self.lookup(prefix).await?.ok_or_else(invalid)?;
        let matches: bool = hash(key).ct_eq(record.key_hash.as_slice()).into();
        if !matches || record.revoked_at.is_some() {
            return Err(invalid());
        }
        if let Some(limiter) = &self.limiter
            && let Err(not_until) = limiter.check_key(&record.prefix)
        {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            let mut err = Error::new(ErrorCode::ResourceExhausted, "rate limit exceeded for this API key");
            err.retry_after = Some(wait.max(Duration::from_secs(1)));
            return Err(err);
        }
        Ok(Principal { kind: record.kind, key_prefix: record.prefix })
    }

    async fn lookup(&self, prefix: &str) -> Result<Option<ApiKeyRecord>> {
        if let Some((record, at)) = self.cache.lock().expect("key cache poisoned").get(prefix)
            && at.elapsed() < self.cache_ttl
        {
            return Ok(Some(record.clone()));
        }
        let record = self.store.find_api_key(prefix).await?;
        if let Some(r) = &record
            && !self.cache_ttl.is_zero()
        {
            let mut cache = self.cache.lock().expect("key cache poisoned");
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(prefix.to_owned(), (r.clone(), Instant::now()));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_a_visible_prefix_and_a_stored_hash() {
        let k = generate(KeyKind::Service);
        assert_eq!(prefix_of(&k.plaintext), Some(k.prefix.as_str()));
        assert_eq!(k.key_hash, hash(&k.plaintext).to_vec());
        assert!(!k.key_hash.is_empty() && !k.plaintext.contains(' '));
        assert_ne!(generate(KeyKind::Service).plaintext, k.plaintext);
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        for bad in [
            "",
            "hpk_",
            "abcd",
            "hpk_123456789012",
            "hpk_123456789012_short",
            "xyz_123456789012_12345678901234567890123456789012",
        ] {
            assert_eq!(prefix_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn both_documented_schemes_carry_a_key() {
        assert_eq!(parse_authorization("Bearer abc"), Some("abc"));
        assert_eq!(parse_authorization("AccessKey abc"), Some("abc"));
        assert_eq!(parse_authorization("bearer  abc "), Some("abc"));
        assert_eq!(parse_authorization("Basic abc"), None);
        assert_eq!(parse_authorization("Bearer"), None);
    }
}
