//! API keys and who a caller is.
//!
//! A key looks like `hpk_<12 chars>_<32 chars>`; its first part (`hpk_…`) is
//! the visible prefix that identifies it, and only the SHA-256 of the whole
//! key is stored. Keys are random (190 bits), so a plain hash is enough; it is
//! compared in constant time.

use std::collections::HashMap;
use std::net::IpAddr;
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

/// Failed authentications (unknown or wrong keys) allowed per client
/// address: per second, and in a burst. Past them, the address gets
/// RESOURCE_EXHAUSTED without a query until its allowance refills, so a
/// client trying random keys cannot turn each one into a database query.
const LOOKUPS_PER_SECOND_PER_ADDRESS: u32 = 20;
const LOOKUP_BURST_PER_ADDRESS: u32 = 40;
/// Store lookups in flight at once in this process, so that authentication
/// can never take more than this many of the pool's connections (which the
/// delivery engine needs too).
const MAX_CONCURRENT_LOOKUPS: usize = 4;
/// Longest wait for one of those lookup slots before answering UNAVAILABLE.
const LOOKUP_SLOT_WAIT: Duration = Duration::from_secs(2);
/// Entries in each cache before it is emptied (a crude but bounded eviction:
/// the cache is an optimisation, never the source of truth).
const MAX_CACHED_KEYS: usize = 10_000;

/// A cached answer for a key prefix: the stored key, or "no such key".
type CacheEntry = (Option<ApiKeyRecord>, Instant);

/// Resolves keys to principals, with a short cache of looked-up keys (known
/// and unknown), a limit on store lookups per client address, and an
/// optional per-key rate limit.
pub struct Authenticator {
    store: Arc<dyn Store>,
    cache_ttl: Duration,
    cache: Mutex<HashMap<String, CacheEntry>>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    failures_per_address: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses past their failure allowance, and until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    lookup_slots: tokio::sync::Semaphore,
}

impl Authenticator {
    /// `cache_ttl` bounds how long a revoked key keeps working in this
    /// process (and how long an unknown key is remembered as unknown);
    /// `rate_limit` is requests per second per key (None: no limit).
    pub fn new(store: Arc<dyn Store>, cache_ttl: Duration, rate_limit: Option<NonZeroU32>) -> Self {
        let per_address = Quota::per_second(NonZeroU32::new(LOOKUPS_PER_SECOND_PER_ADDRESS).expect("non-zero"))
            .allow_burst(NonZeroU32::new(LOOKUP_BURST_PER_ADDRESS).expect("non-zero"));
        Self {
            store,
            cache_ttl,
            cache: Mutex::new(HashMap::new()),
            limiter: rate_limit.map(|r| RateLimiter::keyed(Quota::per_second(r))),
            failures_per_address: RateLimiter::keyed(per_address),
            blocked: Mutex::new(HashMap::new()),
            lookup_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS),
        }
    }

    /// `authorization` is the raw header or metadata value, if any; `peer`
    /// the client's address, which bounds its lookups of uncached keys.
    pub async fn authenticate(&self, authorization: Option<&str>, peer: Option<IpAddr>) -> Result<Principal> {
        let Some(value) = authorization else {
            return Err(unauthenticated("missing API key: send \"authorization: Bearer <key>\""));
        };
        let invalid = || unauthenticated("invalid API key");
        let key = parse_authorization(value)
            .ok_or_else(|| unauthenticated("authorization must be \"Bearer <key>\" or \"AccessKey <key>\""))?;
        self.check_blocked(peer)?;
        let record = match prefix_of(key) {
            Some(prefix) => self.lookup(prefix).await?,
            None => None,
        };
        let Some(record) = record.filter(|r| {
            let matches: bool = hash(key).ct_eq(r.key_hash.as_slice()).into();
            matches && r.revoked_at.is_none()
        }) else {
            self.note_failure(peer);
            return Err(invalid());
        };
        if let Some(limiter) = &self.limiter
            && let Err(not_until) = limiter.check_key(&record.prefix)
        {
            return Err(too_many("rate limit exceeded for this API key", not_until));
        }
        Ok(Principal { kind: record.kind, key_prefix: record.prefix })
    }

    /// Refuses an address that is past its allowance of failures.
    fn check_blocked(&self, peer: Option<IpAddr>) -> Result<()> {
        let Some(ip) = peer else { return Ok(()) };
        let mut blocked = self.blocked.lock().expect("blocked addresses poisoned");
        match blocked.get(&ip) {
            Some(until) if *until > Instant::now() => {
                let mut err =
                    Error::new(ErrorCode::ResourceExhausted, "too many failed authentications from this address");
                err.retry_after = Some((*until - Instant::now()).max(Duration::from_secs(1)));
                Err(err)
            }
            Some(_) => {
                blocked.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn note_failure(&self, peer: Option<IpAddr>) {
        let Some(ip) = peer else { return };
        if let Err(not_until) = self.failures_per_address.check_key(&ip) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            let mut blocked = self.blocked.lock().expect("blocked addresses poisoned");
            if blocked.len() >= MAX_CACHED_KEYS {
                blocked.retain(|_, until| *until > Instant::now());
                self.failures_per_address.retain_recent();
            }
            blocked.insert(ip, Instant::now() + wait.max(Duration::from_secs(1)));
        }
    }

    async fn lookup(&self, prefix: &str) -> Result<Option<ApiKeyRecord>> {
        if let Some((record, at)) = self.cache.lock().expect("key cache poisoned").get(prefix)
            && at.elapsed() < self.cache_ttl
        {
            return Ok(record.clone());
        }
        let _slot = tokio::time::timeout(LOOKUP_SLOT_WAIT, self.lookup_slots.acquire())
            .await
            .map_err(|_| Error::new(ErrorCode::Unavailable, "too many API key lookups in progress; try again"))?
            .expect("the lookup semaphore is never closed");
        let record = self.store.find_api_key(prefix).await?;
        if !self.cache_ttl.is_zero() {
            let mut cache = self.cache.lock().expect("key cache poisoned");
            if cache.len() >= MAX_CACHED_KEYS {
                cache.clear();
            }
            cache.insert(prefix.to_owned(), (record.clone(), Instant::now()));
        }
        Ok(record)
    }
}

fn too_many(
    message: &str,
    not_until: governor::NotUntil<<governor::clock::DefaultClock as governor::clock::Clock>::Instant>,
) -> Error {
    let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
    let mut err = Error::new(ErrorCode::ResourceExhausted, message);
    err.retry_after = Some(wait.max(Duration::from_secs(1)));
    err
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
