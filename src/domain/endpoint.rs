//! Endpoints (the documented API's webhook subscriptions): a URL registered
//! once, with an event filter, custom headers and a delivery policy. Parsed
//! and bounded here, so that the store only ever holds valid ones.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Limits, WebhookUrl, valid_webhook_type};
use crate::error::{Error, FieldViolation, Result};

/// Bounds on what one endpoint may carry.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
pub const MAX_EVENT_TYPES: usize = 100;
pub const MAX_HEADERS: usize = 20;
pub const MAX_HEADER_NAME_BYTES: usize = 64;
pub const MAX_HEADER_VALUE_BYTES: usize = 1024;
pub const MAX_RETRY_SCHEDULE: usize = 20;

/// Headers an endpoint may not set: hop-by-hop ones, those hookpost owns,
/// and `webhook-*` (the signature headers must be hookpost's alone).
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "user-agent",
];

/// How deliveries to one endpoint are retried and paced; `None` takes the
/// server default. Stored as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Delays before each retry, in milliseconds; the last one repeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_schedule_ms: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Deliveries without their own deadline expire this long after dispatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// A policy as a request gives it, before its bounds are checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyInput {
    pub max_retries: Option<u32>,
    /// `Err` for a duration that is not one (negative, out of range).
    pub retry_schedule: Vec<std::result::Result<Duration, ()>>,
    pub attempt_timeout: Option<std::result::Result<Duration, ()>>,
    pub rate_limit_per_second: Option<u32>,
    pub max_in_flight: Option<u32>,
    pub ttl: Option<std::result::Result<Duration, ()>>,
}

/// The settable fields of an endpoint as a request gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointInput {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub disabled: bool,
    pub headers: BTreeMap<String, String>,
    pub policy: Option<PolicyInput>,
}

/// The settable fields, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub disabled: bool,
    pub headers: BTreeMap<String, String>,
    pub policy: DeliveryPolicy,
}

/// How deliveries to an endpoint are signed (Standard Webhooks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SignatureScheme {
    /// A shared `whsec_` secret; `v1,` signatures.
    #[default]
    HmacSha256,
    /// A `whsk_` ed25519 key; `v1a,` signatures, verified with its `whpk_`
    /// public key.
    Ed25519,
}

/// An endpoint as stored (its secrets stay in the store layer's record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Internal key, for keyset paging.
    pub seq: i64,
    pub endpoint_id: Uuid,
    pub organization_id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub spec: EndpointSpec,
    /// The current secret's `whpk_` public key when it is an ed25519 key.
    /// Kept in the clear beside the sealed secret (it is public), so that
    /// reading or listing endpoints never has to open a secret.
    pub public_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Paused by PauseEndpoint: its deliveries are held.
    pub paused: bool,
    /// Why hookpost disabled it (None when it is enabled, or was disabled by
    /// an update), and when it was disabled.
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
}

impl Endpoint {
    /// Deliveries to it are held rather than sent.
    pub fn holds(&self) -> bool {
        self.paused || self.spec.disabled
    }
}

impl Endpoint {
    /// The current secret's scheme: only an ed25519 key has a public key.
    pub fn signature_scheme(&self) -> SignatureScheme {
        match self.public_key {
            Some(_) => SignatureScheme::Ed25519,
            None => SignatureScheme::HmacSha256,
        }
    }
}

/// Which endpoints to list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointFilter {
    pub organization_id: Uuid,
    pub workspace_id: Option<Uuid>,
}

/// True when `pattern` (an exact event type, or a prefix ending in `.*`)
/// selects `event_type`. An endpoint with no patterns takes every event.
pub fn event_type_matches(patterns: &[String], event_type: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => event_type.starts_with(prefix),
            None => p == event_type,
        })
}

fn check_event_type_pattern(p: &str, max_len: usize) -> std::result::Result<(), String> {
    let exact = p.strip_suffix(".*").unwrap_or(p);
    if p.is_empty() || p.len() > max_len {
        return Err(format!("each must be 1 to {max_len} bytes"));
    }
    if p == "*" {
        return Ok(());
    }
    if exact.is_empty() || !valid_webhook_type(exact) || exact.contains('*') {
        return Err(format!("{p:?} is neither an event type (letters, digits, \"._:-\") nor a prefix like \"call.*\""));
    }
    Ok(())
}

fn check_header(name: &str, value: &str) -> std::result::Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if name.is_empty() || name.len() > MAX_HEADER_NAME_BYTES {
        return Err(format!("names must be 1 to {MAX_HEADER_NAME_BYTES} bytes"));
    }
    if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") {
        return Err(format!("{name:?} is set by hookpost and cannot be overridden"));
    }
    if value.len() > MAX_HEADER_VALUE_BYTES || axum::http::HeaderValue::from_str(value).is_err() {
        return Err(format!("the value of {name:?} must be at most {MAX_HEADER_VALUE_BYTES} bytes of visible ASCII"));
    }
    Ok(())
}

fn check_policy(p: PolicyInput, limits: &Limits, v: &mut Vec<FieldViolation>) -> DeliveryPolicy {
    let mut violation = |field: &str, description: String| {
        v.push(FieldViolation { field: format!("endpoint.policy.{field}"), description })
    };
    if p.max_retries.is_some_and(|m| m > limits.max_retries) {
        violation("max_retries", format!("must be at most {}", limits.max_retries));
    }
    if p.retry_schedule.len() > MAX_RETRY_SCHEDULE {
        violation("retry_schedule", format!("must have at most {MAX_RETRY_SCHEDULE} entries"));
    }
    let mut schedule = Vec::new();
    for d in &p.retry_schedule {
        match d {
            Ok(d) if (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(d) => {
                schedule.push(d.as_millis() as u64)
            }
            _ => {
                violation("retry_schedule", "each delay must be from 1s to 24h".into());
                break;
            }
        }
    }
    let attempt_timeout_ms = match p.attempt_timeout {
        None => None,
        Some(Ok(d)) if (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d) => Some(d.as_millis() as u64),
        Some(_) => {
            violation("attempt_timeout", "must be from 1s to 60s".into());
            None
        }
    };
    if p.rate_limit_per_second.is_some_and(|r| !(1..=10_000).contains(&r)) {
        violation("rate_limit_per_second", "must be from 1 to 10000".into());
    }
    if p.max_in_flight.is_some_and(|m| !(1..=1000).contains(&m)) {
        violation("max_in_flight", "must be from 1 to 1000".into());
    }
    let ttl_ms = match p.ttl {
        None => None,
        Some(Ok(d)) if (super::MIN_TTL..=super::MAX_TTL_STD).contains(&d) => Some(d.as_millis() as u64),
        Some(_) => {
            violation("ttl", "must be from 1s to 365 days".into());
            None
        }
    };
    DeliveryPolicy {
        max_retries: p.max_retries,
        retry_schedule_ms: schedule,
        attempt_timeout_ms,
        rate_limit_per_second: p.rate_limit_per_second,
        max_in_flight: p.max_in_flight,
        ttl_ms,
    }
}

impl EndpointSpec {
    /// Validates every field and reports all violations at once, named as
    /// fields of the request's `endpoint`.
    pub fn parse(input: EndpointInput, limits: &Limits) -> Result<Self> {
        let mut v = Vec::new();
        let url = match WebhookUrl::parse(&input.url, limits.max_url_len, limits.allow_private_targets) {
            Ok(u) => u.as_str().to_owned(),
            Err(e) => {
                v.push(FieldViolation { field: "endpoint.url".into(), description: e });
                String::new()
            }
        };
        if input.description.len() > MAX_DESCRIPTION_BYTES {
            v.push(FieldViolation {
                field: "endpoint.description".into(),
                description: format!("must be at most {MAX_DESCRIPTION_BYTES} bytes"),
            });
        }
        if input.event_types.len() > MAX_EVENT_TYPES {
            v.push(FieldViolation {
                field: "endpoint.event_types".into(),
                description: format!("must have at most {MAX_EVENT_TYPES} entries"),
            });
        } else if let Some(e) =
            input.event_types.iter().find_map(|p| check_event_type_pattern(p, limits.max_webhook_type_len).err())
        {
            v.push(FieldViolation { field: "endpoint.event_types".into(), description: e });
        }
        if input.headers.len() > MAX_HEADERS {
            v.push(FieldViolation {
                field: "endpoint.headers".into(),
                description: format!("must have at most {MAX_HEADERS} entries"),
            });
        } else if let Some(e) = input.headers.iter().find_map(|(k, val)| check_header(k, val).err()) {
            v.push(FieldViolation { field: "endpoint.headers".into(), description: e });
        }
        let policy = check_policy(input.policy.unwrap_or_default(), limits, &mut v);
        let mut event_types = input.event_types;
        event_types.sort();
        event_types.dedup();
        if !v.is_empty() {
            return Err(Error::invalid_fields(v));
        }
        Ok(Self {
            url,
            description: input.description,
            event_types,
            disabled: input.disabled,
            headers: input.headers,
            policy,
        })
    }

    /// This spec as an input again, so that an update can change some fields
    /// and validate the whole.
    pub fn to_input(&self) -> EndpointInput {
        let ms = |m: u64| Ok(Duration::from_millis(m));
        EndpointInput {
            url: self.url.clone(),
            description: self.description.clone(),
            event_types: self.event_types.clone(),
            disabled: self.disabled,
            headers: self.headers.clone(),
            policy: Some(PolicyInput {
                max_retries: self.policy.max_retries,
                retry_schedule: self.policy.retry_schedule_ms.iter().map(|m| ms(*m)).collect(),
                attempt_timeout: self.policy.attempt_timeout_ms.map(ms),
                rate_limit_per_second: self.policy.rate_limit_per_second,
                max_in_flight: self.policy.max_in_flight,
                ttl: self.policy.ttl_ms.map(ms),
            }),
        }
    }
}

/// The fields an update may name in its mask (proto names; camelCase JSON
/// names are accepted too).
pub const UPDATABLE_FIELDS: &[&str] = &[
    "url",
    "description",
    "event_types",
    "disabled",
    "headers",
    "policy",
    "policy.max_retries",
    "policy.retry_schedule",
    "policy.attempt_timeout",
    "policy.rate_limit_per_second",
    "policy.max_in_flight",
    "policy.ttl",
];

/// The scheme follows the secret, so it changes with a new secret: a
/// rotation, during whose grace period the previous secret keeps signing.
/// Changing it in place would break every receiver at once.
pub fn scheme_not_updatable(field: &str) -> Error {
    Error::invalid(
        field,
        "signature_scheme cannot be changed by UpdateEndpoint; rotate the secret with \
         RotateEndpointSecret and its signature_scheme instead (the previous secret keeps signing during the \
         grace period)",
    )
}

fn snake(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Applies the fields of `update` named in `mask` to `current` (AIP-134). An
/// empty mask applies every field `update` sets (non-empty, non-default).
pub fn apply_update(current: EndpointInput, update: EndpointInput, mask: &[String]) -> Result<EndpointInput> {
    let mut out = current;
    if mask.is_empty() {
        if !update.url.is_empty() {
            out.url = update.url;
        }
        if !update.description.is_empty() {
            out.description = update.description;
        }
        if !update.event_types.is_empty() {
            out.event_types = update.event_types;
        }
        out.disabled |= update.disabled;
        if !update.headers.is_empty() {
            out.headers = update.headers;
        }
        if update.policy.is_some() {
            out.policy = update.policy;
        }
        return Ok(out);
    }
    let mut bad = Vec::new();
    let new_policy = update.policy.clone().unwrap_or_default();
    for raw in mask {
        let path = snake(raw);
        let policy = out.policy.get_or_insert_with(PolicyInput::default);
        match path.as_str() {
            "url" => out.url = update.url.clone(),
            "description" => out.description = update.description.clone(),
            "event_types" => out.event_types = update.event_types.clone(),
            "disabled" => out.disabled = update.disabled,
            "headers" => out.headers = update.headers.clone(),
            "policy" => out.policy = Some(new_policy.clone()),
            "policy.max_retries" => policy.max_retries = new_policy.max_retries,
            "policy.retry_schedule" => policy.retry_schedule = new_policy.retry_schedule.clone(),
            "policy.attempt_timeout" => policy.attempt_timeout = new_policy.attempt_timeout,
            "policy.rate_limit_per_second" => policy.rate_limit_per_second = new_policy.rate_limit_per_second,
            "policy.max_in_flight" => policy.max_in_flight = new_policy.max_in_flight,
            "policy.ttl" => policy.ttl = new_policy.ttl,
            "signature_scheme" => return Err(scheme_not_updatable("update_mask")),
            _ => bad.push(raw.clone()),
        }
    }
    if !bad.is_empty() {
        return Err(Error::invalid(
            "update_mask",
            format!("{bad:?} cannot be updated; updatable: {}", UPDATABLE_FIELDS.join(", ")),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { allow_private_targets: true, ..Limits::default() }
    }

    fn input() -> EndpointInput {
        EndpointInput { url: "http://127.0.0.1:8080/hook".into(), ..Default::default() }
    }

    #[test]
    fn exact_names_and_prefix_wildcards_select_event_types() {
        let p = vec!["call.*".to_string(), "sms_received".to_string()];
        assert!(event_type_matches(&p, "call.started"));
        assert!(event_type_matches(&p, "call.ended"));
        assert!(event_type_matches(&p, "sms_received"));
        assert!(!event_type_matches(&p, "sms_sent"));
        assert!(!event_type_matches(&p, "callx"));
        assert!(event_type_matches(&[], "anything"));
        assert!(event_type_matches(&["*".to_string()], "anything"));
    }

    #[test]
    fn bad_fields_are_all_named() {
        let mut i = input();
        i.url = "ftp://x".into();
        i.event_types = vec!["call.*.x".into()];
        i.headers.insert("Webhook-Signature".into(), "forged".into());
        i.policy = Some(PolicyInput {
            max_in_flight: Some(0),
            attempt_timeout: Some(Ok(Duration::from_secs(600))),
            ..Default::default()
        });
        let err = EndpointSpec::parse(i, &limits()).unwrap_err();
        let fields: Vec<_> = err.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "endpoint.url",
                "endpoint.event_types",
                "endpoint.headers",
                "endpoint.policy.attempt_timeout",
                "endpoint.policy.max_in_flight"
            ]
        );
    }

    #[test]
    fn hop_by_hop_and_owned_headers_are_refused() {
        for name in ["Connection", "transfer-encoding", "Host", "content-type", "webhook-id", "bad name"] {
            assert!(check_header(name, "x").is_err(), "{name}");
        }
        assert!(check_header("X-Tenant", "acme").is_ok());
        assert!(check_header("X-Tenant", "line\nbreak").is_err());
    }

    #[test]
    fn a_mask_changes_only_the_fields_it_names() {
        let current = EndpointSpec::parse(
            EndpointInput { description: "old".into(), event_types: vec!["a".into()], ..input() },
            &limits(),
        )
        .unwrap()
        .to_input();
        let update = EndpointInput { description: "new".into(), disabled: true, ..Default::default() };
        let out = apply_update(current.clone(), update.clone(), &["description".into()]).unwrap();
        assert_eq!((out.description.as_str(), out.disabled, out.event_types.len()), ("new", false, 1));
        let out = apply_update(current.clone(), update.clone(), &["disabled".into(), "eventTypes".into()]).unwrap();
        assert!(out.disabled && out.event_types.is_empty() && out.description == "old");
        let err = apply_update(current.clone(), update.clone(), &["endpoint_id".into()]).unwrap_err();
        assert_eq!(err.violations[0].field, "update_mask");
        for path in ["signature_scheme", "signatureScheme"] {
            let err = apply_update(current.clone(), update.clone(), &[path.into()]).unwrap_err();
            assert_eq!(err.violations[0].field, "update_mask");
            assert!(err.violations[0].description.contains("RotateEndpointSecret"), "{err:?}");
        }
    }
}
