//! Redeliver, recover, operations, pause and resume as transport-neutral
//! calls (request message in, response message out), which the tonic
//! methods and the REST gateway both use.

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::proto::v1 as pb;
use crate::service::{RecoverInput, Recovery, WebhookService};
use crate::store::Operation;

use super::convert::{error_category, opt_uuid, timestamp};
use super::endpoints::{endpoint_ref, endpoint_to_proto, required_uuid};

pub fn operation_to_proto(op: Operation) -> pb::Operation {
    pb::Operation {
        operation_id: op.operation_id.to_string(),
        organization_id: op.organization_id.to_string(),
        kind: op.kind,
        done: op.done,
        matched: op.matched as i64,
        recovered: op.recovered as i64,
        error: op.error.unwrap_or_default(),
        create_time: Some(op.created_at.into()),
        update_time: Some(op.updated_at.into()),
    }
}

/// The delivery a RedeliverWebhook names, and the organization scope it
/// gives (if any). The REST gateway parses its requests with this too.
pub fn redeliver_target(r: &pb::RedeliverWebhookRequest) -> Result<(uuid::Uuid, Option<uuid::Uuid>)> {
    let mut v = Vec::new();
    let request_id = required_uuid("request_id", &r.request_id, &mut v);
    let organization_id = opt_uuid("organization_id", Some(&r.organization_id), &mut v);
    match request_id.filter(|_| v.is_empty()) {
        Some(request_id) => Ok((request_id, organization_id)),
        None => Err(Error::invalid_fields(v)),
    }
}

pub async fn redeliver(
    s: &WebhookService,
    who: &Principal,
    r: pb::RedeliverWebhookRequest,
) -> Result<pb::RedeliverWebhookResponse> {
    let (request_id, organization_id) = redeliver_target(&r)?;
    let details = s.redeliver(who, request_id, organization_id).await?;
    Ok(pb::RedeliverWebhookResponse { log: Some(details.log.into()) })
}

pub async fn recover(
    s: &WebhookService,
    who: &Principal,
    r: pb::RecoverWebhooksRequest,
) -> Result<pb::RecoverWebhooksResponse> {
    let mut v = Vec::new();
    let organization_id = required_uuid("organization_id", &r.organization_id, &mut v);
    let endpoint_id = opt_uuid("endpoint_id", Some(&r.endpoint_id), &mut v);
    let category = error_category(r.error_category, &mut v);
    let start = timestamp("start_time", r.start_time, &mut v);
    let end = timestamp("end_time", r.end_time, &mut v);
    let webhook_type = Some(r.webhook_type).filter(|t| !t.is_empty());
    if webhook_type.as_ref().is_some_and(|t| t.len() > 128 || !crate::domain::valid_webhook_type(t)) {
        v.push(crate::error::FieldViolation {
            field: "webhook_type".into(),
            description: "must be at most 128 bytes of letters, digits and \"._:-\"".into(),
        });
    }
    let Some(organization_id) = organization_id.filter(|_| v.is_empty()) else {
        return Err(Error::invalid_fields(v));
    };
    let input = RecoverInput {
        organization_id,
        endpoint_id,
        error_category: category,
        webhook_type,
        start,
        end,
        dry_run: r.dry_run,
    };
    Ok(match s.recover(who, input).await? {
        Recovery::DryRun(n) => pb::RecoverWebhooksResponse { operation: None, matched: n as i64 },
        Recovery::Started(op) => {
            pb::RecoverWebhooksResponse { matched: op.matched as i64, operation: Some(operation_to_proto(*op)) }
        }
    })
}

pub async fn get_operation(
    s: &WebhookService,
    who: &Principal,
    r: pb::GetOperationRequest,
) -> Result<pb::GetOperationResponse> {
    let mut v = Vec::new();
    let organization_id = required_uuid("organization_id", &r.organization_id, &mut v);
    let operation_id = required_uuid("operation_id", &r.operation_id, &mut v);
    let (Some(organization_id), Some(operation_id)) = (organization_id, operation_id) else {
        return Err(Error::invalid_fields(v));
    };
    let op = s.get_operation(who, organization_id, operation_id).await?;
    Ok(pb::GetOperationResponse { operation: Some(operation_to_proto(op)) })
}

pub async fn pause(
    s: &WebhookService,
    who: &Principal,
    r: pb::PauseEndpointRequest,
) -> Result<pb::PauseEndpointResponse> {
    let target = endpoint_ref(&r.organization_id, &r.workspace_id, &r.endpoint_id)?;
    let (endpoint, _) = s.set_paused(who, target, true).await?;
    Ok(pb::PauseEndpointResponse { endpoint: Some(endpoint_to_proto(endpoint)) })
}

pub async fn resume(
    s: &WebhookService,
    who: &Principal,
    r: pb::ResumeEndpointRequest,
) -> Result<pb::ResumeEndpointResponse> {
    let target = endpoint_ref(&r.organization_id, &r.workspace_id, &r.endpoint_id)?;
    let (endpoint, released) = s.set_paused(who, target, false).await?;
    Ok(pb::ResumeEndpointResponse { endpoint: Some(endpoint_to_proto(endpoint)), released: released as i64 })
}
