//! Sending again: redeliver one delivery, recover many (an operation run in
//! the background), pause and resume endpoints, and the operational event
//! hookpost sends when it disables an endpoint by itself.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{EndpointRef, LogDetails, WebhookService, may_act_for};
use crate::auth::{KeyKind, Principal};
use crate::domain::{DispatchInput, Endpoint, ExecutionStatus};
use crate::error::{Error, ErrorCode, FieldViolation, Result};
use crate::store::{Operation, ReadFrom, RecoverFilter, Redelivered};

/// The event hookpost dispatches through itself when it disables an endpoint.
pub const ENDPOINT_DISABLED: &str = "hookpost.endpoint.disabled";

/// Deliveries a recovery sends back per batch (one transaction each).
const RECOVER_BATCH: u32 = 500;
/// How long one replica holds a running operation without progress: a
/// replica that dies mid-run leaves it to another (or its restart) after this.
const OPERATION_LEASE: Duration = Duration::from_secs(10);
/// How often a replica looks for operations to run (or resume).
const OPERATION_POLL: Duration = Duration::from_secs(1);
/// How often held deliveries of endpoints that no longer hold are released.
const STRANDED_SWEEP: Duration = Duration::from_secs(5);

/// What a RecoverWebhooks call asks for.
#[derive(Debug, Clone)]
pub struct RecoverInput {
    pub organization_id: Uuid,
    pub endpoint_id: Option<Uuid>,
    pub error_category: Option<String>,
    pub webhook_type: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub dry_run: bool,
}

/// A recovery's answer: a count (dry run) or the operation doing it.
#[derive(Debug, Clone)]
pub enum Recovery {
    DryRun(u64),
    Started(Box<Operation>),
}

fn no_request(id: Uuid) -> Error {
    Error::not_found(format!("no webhook log with request ID {id}"))
}

impl WebhookService {
    /// Sends a settled delivery again now, with a fresh retry budget.
    pub async fn redeliver(
        &self,
        who: &Principal,
        request_id: Uuid,
        organization_id: Option<Uuid>,
    ) -> Result<LogDetails> {
        let org = super::request_scope(who, organization_id).ok_or_else(|| no_request(request_id))?;
        match self.store.redeliver(request_id, org).await? {
            Redelivered::Missing => return Err(no_request(request_id)),
            Redelivered::NotSettled(status) => {
                let why = match status {
                    ExecutionStatus::Held => "is held (its endpoint is paused or disabled)",
                    _ => "is still pending",
                };
                return Err(Error::new(ErrorCode::FailedPrecondition, format!("request {request_id} {why}")));
            }
            Redelivered::Done => {}
        }
        self.wake.notify_one();
        self.announce.notify_one();
        self.recorded();
        let (log, attempts) =
            self.store.log_details(request_id, org, ReadFrom::Primary).await?.ok_or_else(|| no_request(request_id))?;
        Ok(LogDetails { log, attempts })
    }

    /// Pauses (or resumes) an endpoint. Resuming releases what was held
    /// unless the endpoint is also disabled; returns how many were released.
    pub async fn set_paused(&self, who: &Principal, r: EndpointRef, paused: bool) -> Result<(Endpoint, u64)> {
        self.get_endpoint(who, r).await?;
        let endpoint = self
            .store
            .set_paused(r.organization_id, r.endpoint_id, paused)
            .await?
            .ok_or_else(|| Error::not_found(format!("no endpoint with ID {}", r.endpoint_id)))?;
        let released = self.release_if_active(&endpoint).await?;
        Ok((endpoint, released))
    }

    /// An endpoint neither paused nor disabled gets its held deliveries.
    pub(super) async fn release_if_active(&self, e: &Endpoint) -> Result<u64> {
        if e.holds() {
            return Ok(0);
        }
        let n = self.store.release_held(e.endpoint_id).await?;
        if n > 0 {
            self.wake.notify_one();
            self.announce.notify_one();
            self.recorded();
        }
        Ok(n)
    }

    /// Starts (or, with `dry_run`, counts) a recovery of failed deliveries.
    pub async fn recover(&self, who: &Principal, r: RecoverInput) -> Result<Recovery> {
        if !may_act_for(who, r.organization_id) {
            return Err(Error::new(
                ErrorCode::PermissionDenied,
                "organization_id differs from the API key's organization",
            ));
        }
        let mut v = Vec::new();
        let now = Utc::now();
        let oldest = now - chrono::TimeDelta::from_std(self.retention).unwrap_or(chrono::TimeDelta::days(30));
        if r.start.is_none() {
            v.push(FieldViolation { field: "start_time".into(), description: "is required".into() });
        }
        if r.end.is_none() {
            v.push(FieldViolation { field: "end_time".into(), description: "is required".into() });
        }
        if let (Some(start), Some(end)) = (r.start, r.end) {
            if end <= start {
                v.push(FieldViolation {
                    field: "end_time".into(),
                    description: "must be after start_time (the window is empty or inverted)".into(),
                });
            } else if end <= oldest {
                v.push(FieldViolation {
                    field: "end_time".into(),
                    description: format!("the whole window is older than the retention period ({oldest})"),
                });
            }
        }
        if !v.is_empty() {
            return Err(Error::invalid_fields(v));
        }
        let (Some(start), Some(end)) = (r.start, r.end) else { unreachable!("checked above") };
        if let Some(endpoint_id) = r.endpoint_id {
            // Another organization's endpoint answers like a missing one.
            let scope = EndpointRef { organization_id: r.organization_id, workspace_id: None, endpoint_id };
            self.get_endpoint(who, scope).await?;
        }
        let filter = RecoverFilter {
            organization_id: r.organization_id,
            endpoint_id: r.endpoint_id,
            error_category: r.error_category,
            webhook_type: r.webhook_type,
            // Nothing older than retention is left to recover.
            start: start.max(oldest),
            end,
        };
        if r.dry_run {
            return Ok(Recovery::DryRun(self.store.count_recoverable(&filter).await?));
        }
        let op = self.store.create_operation(Uuid::new_v4(), &filter).await?;
        self.operations.notify_one();
        Ok(Recovery::Started(Box::new(op)))
    }

    pub async fn get_operation(&self, who: &Principal, organization_id: Uuid, operation_id: Uuid) -> Result<Operation> {
        let missing = || Error::not_found(format!("no operation with ID {operation_id}"));
        if !may_act_for(who, organization_id) {
            return Err(missing());
        }
        self.store.get_operation(organization_id, operation_id).await?.ok_or_else(missing)
    }

    /// Runs recoveries until `shutdown`: takes an unfinished operation (a
    /// new one, or one whose replica died: its lease ran out) and works
    /// through it batch by batch. Each batch commits its deliveries and the
    /// operation's cursor together, so a restart resumes exactly there.
    pub async fn run_operations(self, shutdown: CancellationToken) {
        let mut last_sweep = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if last_sweep.elapsed() >= STRANDED_SWEEP {
                last_sweep = tokio::time::Instant::now();
                match self.store.release_stranded(1000).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(released = n, "released held deliveries of active endpoints");
                        self.wake.notify_one();
                        self.recorded();
                    }
                    Err(err) => tracing::warn!(error = %err, "releasing stranded held deliveries failed"),
                }
            }
            match self.store.lease_operation(OPERATION_LEASE).await {
                Ok(Some(mut op)) => {
                    tracing::info!(operation_id = %op.operation_id, "running a recovery");
                    while !op.done && !shutdown.is_cancelled() {
                        match self.store.recover_batch(&op, RECOVER_BATCH, OPERATION_LEASE).await {
                            Ok(next) => {
                                if next.recovered > op.recovered {
                                    self.wake.notify_one();
                                    self.announce.notify_one();
                                    self.recorded();
                                }
                                op = next;
                            }
                            Err(err) => {
                                // Left for the lease to run out; then retried.
                                tracing::warn!(operation_id = %op.operation_id, error = %err, "a recovery batch failed");
                                break;
                            }
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "looking for operations failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.operations.notified() => {}
                _ = tokio::time::sleep(OPERATION_POLL) => {}
            }
        }
    }
}

#[async_trait]
impl crate::delivery::Notices for WebhookService {
    fn recorded(&self) {
        WebhookService::recorded(self);
    }

    /// Tells the organization's endpoints that subscribe to
    /// `hookpost.endpoint.disabled` (by name or a `hookpost.*` wildcard).
    async fn endpoint_disabled(&self, e: Endpoint) {
        let payload = serde_json::json!({
            "type": ENDPOINT_DISABLED,
            "endpointId": e.endpoint_id.to_string(),
            "workspaceId": e.workspace_id.map(|w| w.to_string()),
            "url": e.spec.url,
            "reason": e.disabled_reason,
            "disableTime": e.disabled_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        });
        let input = DispatchInput {
            organization_id: e.organization_id.to_string(),
            webhook_type: ENDPOINT_DISABLED.into(),
            payload: payload.as_object().cloned(),
            // Once per disabling: a repeated notice (a retry of this call)
            // stores nothing twice.
            idempotency_key: format!(
                "{ENDPOINT_DISABLED}:{}:{}",
                e.endpoint_id,
                e.disabled_at.map_or(0, |t| t.timestamp_micros())
            ),
            ..DispatchInput::default()
        };
        let system = Principal { kind: KeyKind::Service, key_prefix: "hookpost".into() };
        match self.dispatch(&system, input).await {
            Ok(d) => {
                tracing::info!(endpoint_id = %e.endpoint_id, deliveries = d.request_ids.len(), "endpoint disabled; notice sent")
            }
            Err(err) => {
                tracing::warn!(endpoint_id = %e.endpoint_id, error = %err, "sending the endpoint-disabled notice failed")
            }
        }
    }
}
