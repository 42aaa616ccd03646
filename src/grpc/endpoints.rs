//! Endpoint messages: parsed at the edge into the service's types, and the
//! endpoint RPCs as transport-neutral calls (request message in, response
//! message out), which the tonic methods and the REST gateway both use.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::auth::Principal;
use crate::domain::{Endpoint, EndpointFilter, EndpointInput, PolicyInput, SignatureScheme};
use crate::error::{Error, FieldViolation, Result};
use crate::proto::v1 as pb;
use crate::service::{EndpointRef, WebhookService};

pub(super) fn required_uuid(field: &str, raw: &str, v: &mut Vec<FieldViolation>) -> Option<Uuid> {
    if raw.is_empty() {
        v.push(FieldViolation { field: field.into(), description: "is required".into() });
        return None;
    }
    crate::domain::parse_uuid(field, raw, v)
}

fn optional_uuid(field: &str, raw: &str, v: &mut Vec<FieldViolation>) -> Option<Uuid> {
    super::convert::opt_uuid(field, Some(raw), v)
}

pub(super) fn endpoint_ref(organization_id: &str, workspace_id: &str, endpoint_id: &str) -> Result<EndpointRef> {
    let mut v = Vec::new();
    let organization = required_uuid("organization_id", organization_id, &mut v);
    let workspace_id = optional_uuid("workspace_id", workspace_id, &mut v);
    let endpoint = required_uuid("endpoint_id", endpoint_id, &mut v);
    match (organization, endpoint) {
        (Some(organization_id), Some(endpoint_id)) if v.is_empty() => {
            Ok(EndpointRef { organization_id, workspace_id, endpoint_id })
        }
        _ => Err(Error::invalid_fields(v)),
    }
}

fn duration(d: pbjson_types::Duration) -> std::result::Result<std::time::Duration, ()> {
    std::time::Duration::try_from(d).map_err(|_| ())
}

/// A requested scheme: `None` when unspecified (each RPC says what that
/// means), INVALID_ARGUMENT naming `field` for a value this server does not
/// know (proto3 enums are open, so any number can arrive).
fn signature_scheme(field: &str, raw: i32) -> Result<Option<SignatureScheme>> {
    match pb::SignatureScheme::try_from(raw) {
        Ok(pb::SignatureScheme::Unspecified) => Ok(None),
        Ok(pb::SignatureScheme::HmacSha256) => Ok(Some(SignatureScheme::HmacSha256)),
        Ok(pb::SignatureScheme::Ed25519) => Ok(Some(SignatureScheme::Ed25519)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{raw} is not a signature scheme (SIGNATURE_SCHEME_HMAC_SHA256 or SIGNATURE_SCHEME_ED25519)"),
        )),
    }
}

fn scheme_to_proto(scheme: SignatureScheme) -> pb::SignatureScheme {
    match scheme {
        SignatureScheme::HmacSha256 => pb::SignatureScheme::HmacSha256,
        SignatureScheme::Ed25519 => pb::SignatureScheme::Ed25519,
    }
}

/// The settable fields of an `Endpoint` message.
pub fn endpoint_input(e: pb::Endpoint) -> EndpointInput {
    EndpointInput {
        url: e.url,
        description: e.description,
        event_types: e.event_types,
        disabled: e.disabled,
        headers: e.headers.into_iter().collect::<BTreeMap<_, _>>(),
        policy: e.policy.map(|p| PolicyInput {
            max_retries: p.max_retries,
            retry_schedule: p.retry_schedule.into_iter().map(duration).collect(),
            attempt_timeout: p.attempt_timeout.map(duration),
            rate_limit_per_second: p.rate_limit_per_second,
            max_in_flight: p.max_in_flight,
            ttl: p.ttl.map(duration),
        }),
    }
}

pub fn endpoint_to_proto(e: Endpoint) -> pb::Endpoint {
    let ms = |m: u64| pbjson_types::Duration::from(std::time::Duration::from_millis(m));
    let signature_scheme = scheme_to_proto(e.signature_scheme()).into();
    let p = e.spec.policy;
    let policy = pb::DeliveryPolicy {
        max_retries: p.max_retries,
        retry_schedule: p.retry_schedule_ms.into_iter().map(ms).collect(),
        attempt_timeout: p.attempt_timeout_ms.map(ms),
        rate_limit_per_second: p.rate_limit_per_second,
        max_in_flight: p.max_in_flight,
        ttl: p.ttl_ms.map(ms),
    };
    pb::Endpoint {
        signature_scheme,
        public_key: e.public_key.unwrap_or_default(),
        endpoint_id: e.endpoint_id.to_string(),
        organization_id: e.organization_id.to_string(),
        workspace_id: e.workspace_id.map(|w| w.to_string()).unwrap_or_default(),
        url: e.spec.url,
        description: e.spec.description,
        event_types: e.spec.event_types,
        disabled: e.spec.disabled,
        headers: e.spec.headers.into_iter().collect(),
        policy: Some(policy),
        create_time: Some(e.created_at.into()),
        update_time: Some(e.updated_at.into()),
        paused: e.paused,
        disabled_reason: e.disabled_reason.unwrap_or_default(),
        disable_time: e.disabled_at.map(Into::into),
    }
}

pub async fn create(
    s: &WebhookService,
    who: &Principal,
    r: pb::CreateEndpointRequest,
) -> Result<pb::CreateEndpointResponse> {
    let mut v = Vec::new();
    let organization_id = required_uuid("organization_id", &r.organization_id, &mut v);
    let workspace_id = optional_uuid("workspace_id", &r.workspace_id, &mut v);
    if r.endpoint.is_none() {
        v.push(FieldViolation { field: "endpoint".into(), description: "is required".into() });
    }
    let (Some(organization_id), Some(endpoint)) = (organization_id, r.endpoint) else {
        return Err(Error::invalid_fields(v));
    };
    if !v.is_empty() {
        return Err(Error::invalid_fields(v));
    }
    let scheme = signature_scheme("endpoint.signature_scheme", endpoint.signature_scheme)?.unwrap_or_default();
    let (endpoint, secret) =
        s.create_endpoint(who, organization_id, workspace_id, endpoint_input(endpoint), scheme).await?;
    Ok(pb::CreateEndpointResponse { endpoint: Some(endpoint_to_proto(endpoint)), secret: secret.secret })
}

pub async fn get(s: &WebhookService, who: &Principal, r: pb::GetEndpointRequest) -> Result<pb::GetEndpointResponse> {
    let r = endpoint_ref(&r.organization_id, &r.workspace_id, &r.endpoint_id)?;
    Ok(pb::GetEndpointResponse { endpoint: Some(endpoint_to_proto(s.get_endpoint(who, r).await?)) })
}

pub async fn list(
    s: &WebhookService,
    who: &Principal,
    r: pb::ListEndpointsRequest,
) -> Result<pb::ListEndpointsResponse> {
    let mut v = Vec::new();
    let organization_id = required_uuid("organization_id", &r.organization_id, &mut v);
    let workspace_id = optional_uuid("workspace_id", &r.workspace_id, &mut v);
    let Some(organization_id) = organization_id.filter(|_| v.is_empty()) else {
        return Err(Error::invalid_fields(v));
    };
    let page =
        s.list_endpoints(who, EndpointFilter { organization_id, workspace_id }, r.page_size, &r.page_token).await?;
    Ok(pb::ListEndpointsResponse {
        endpoints: page.endpoints.into_iter().map(endpoint_to_proto).collect(),
        next_page_token: page.next_page_token.unwrap_or_default(),
    })
}

pub async fn update(
    s: &WebhookService,
    who: &Principal,
    r: pb::UpdateEndpointRequest,
) -> Result<pb::UpdateEndpointResponse> {
    let target = endpoint_ref(&r.organization_id, &r.workspace_id, &r.endpoint_id)?;
    let endpoint = r.endpoint.unwrap_or_default();
    let scheme = signature_scheme("endpoint.signature_scheme", endpoint.signature_scheme)?;
    let mask = r.update_mask.map(|m| m.paths).unwrap_or_default();
    let endpoint = s.update_endpoint(who, target, endpoint_input(endpoint), scheme, &mask).await?;
    Ok(pb::UpdateEndpointResponse { endpoint: Some(endpoint_to_proto(endpoint)) })
}

pub async fn delete(
    s: &WebhookService,
    who: &Principal,
    r: pb::DeleteEndpointRequest,
) -> Result<pb::DeleteEndpointResponse> {
    let r = endpoint_ref(&r.organization_id, &r.workspace_id, &r.endpoint_id)?;
    s.delete_endpoint(who, r).await?;
    Ok(pb::DeleteEndpointResponse {})
}

pub async fn secret(
    s: &WebhookService,
    who: &Principal,
    r: pb::GetEndpointSecretRequest,
) -> Result<pb::GetEndpointSecretResponse> {
    let r = endpoint_ref(&r.organization_id, &r.workspace_id, &r.endpoint_id)?;
    let shown = s.endpoint_secret(who, r).await?;
    Ok(pb::GetEndpointSecretResponse { secret: shown.secret, public_key: shown.public_key.unwrap_or_default() })
}

pub async fn rotate(
    s: &WebhookService,
    who: &Principal,
    r: pb::RotateEndpointSecretRequest,
) -> Result<pb::RotateEndpointSecretResponse> {
    let target = endpoint_ref(&r.organization_id, &r.workspace_id, &r.endpoint_id)?;
    let grace = match r.grace_period.map(duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(())) => return Err(Error::invalid("grace_period", "must not be negative")),
    };
    let scheme = signature_scheme("signature_scheme", r.signature_scheme)?;
    let (shown, until) = s.rotate_endpoint_secret(who, target, grace, scheme).await?;
    Ok(pb::RotateEndpointSecretResponse {
        secret: shown.secret,
        previous_secret_expire_time: Some(until.into()),
        public_key: shown.public_key.unwrap_or_default(),
    })
}

/// `GetEndpointStats`: counts as int64, every hour of the window present.
pub async fn stats(
    s: &WebhookService,
    who: &Principal,
    r: pb::GetEndpointStatsRequest,
) -> Result<pb::GetEndpointStatsResponse> {
    let r = endpoint_ref(&r.organization_id, &r.workspace_id, &r.endpoint_id)?;
    let stats = s.endpoint_stats(who, r).await?;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Ok(pb::GetEndpointStatsResponse {
        start_time: Some(stats.start.into()),
        end_time: Some(stats.end.into()),
        buckets: stats
            .buckets
            .into_iter()
            .map(|b| pb::EndpointStatsBucket {
                start_time: Some(b.start.into()),
                attempts: count(b.attempts),
                successes: count(b.successes),
                p50_response_time_ms: b.p50_ms,
                p99_response_time_ms: b.p99_ms,
            })
            .collect(),
        pending_count: count(stats.queue.pending),
        held_count: count(stats.queue.held),
        oldest_pending_create_time: stats.queue.oldest_pending_created_at.map(Into::into),
    })
}

pub async fn organization_secret(
    s: &WebhookService,
    who: &Principal,
    r: pb::GetOrganizationSecretRequest,
) -> Result<pb::GetOrganizationSecretResponse> {
    let mut v = Vec::new();
    let organization_id = required_uuid("organization_id", &r.organization_id, &mut v);
    let Some(organization_id) = organization_id else { return Err(Error::invalid_fields(v)) };
    Ok(pb::GetOrganizationSecretResponse { secret: s.organization_secret(who, organization_id).await? })
}

pub async fn rotate_organization_secret(
    s: &WebhookService,
    who: &Principal,
    r: pb::RotateOrganizationSecretRequest,
) -> Result<pb::RotateOrganizationSecretResponse> {
    let mut v = Vec::new();
    let organization_id = required_uuid("organization_id", &r.organization_id, &mut v);
    let Some(organization_id) = organization_id else { return Err(Error::invalid_fields(v)) };
    let grace = match r.grace_period.map(duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(())) => return Err(Error::invalid("grace_period", "must not be negative")),
    };
    let (secret, until) = s.rotate_organization_secret(who, organization_id, grace).await?;
    Ok(pb::RotateOrganizationSecretResponse { secret, previous_secret_expire_time: Some(until.into()) })
}
