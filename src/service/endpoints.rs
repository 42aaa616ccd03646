//! Endpoint use cases: register, read, list, change, delete, and the signing
//! secret's life (read again, rotate with a grace period). Another
//! organization's endpoint answers exactly like a missing one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::WebhookService;
use crate::auth::Principal;
use crate::delivery::sign::SigningSecret;
use crate::domain::{Cursor, Endpoint, EndpointFilter, EndpointInput, EndpointSpec, apply_update};
use crate::error::{Error, Result};
use crate::pagination;
use crate::store::NewEndpoint;

/// Default and longest time a rotated-out secret keeps signing.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which endpoint a request names, and the scope it must lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointRef {
    pub organization_id: Uuid,
    /// When set (as on the REST routes), an endpoint of another workspace
    /// answers NOT_FOUND.
    pub workspace_id: Option<Uuid>,
    pub endpoint_id: Uuid,
}

/// A page of endpoints.
#[derive(Debug, Clone)]
pub struct EndpointPage {
    pub endpoints: Vec<Endpoint>,
    pub next_page_token: Option<String>,
}

fn not_found(id: Uuid) -> Error {
    Error::not_found(format!("no endpoint with ID {id}"))
}

/// An organization key acts for its own organization only; naming another
/// answers as if nothing were there.
fn may_act_for(who: &Principal, organization_id: Uuid) -> bool {
    who.organization().is_none_or(|own| own == organization_id)
}

/// When a rotated-out secret stops signing, for a requested grace period.
fn grace_until(grace: Option<Duration>) -> Result<DateTime<Utc>> {
    let grace = grace.unwrap_or(DEFAULT_GRACE);
    if grace > MAX_GRACE {
        return Err(Error::invalid("grace_period", "must be at most 7 days"));
    }
    Ok(Utc::now() + chrono::TimeDelta::from_std(grace).map_err(|e| Error::internal(e.into()))?)
}

impl WebhookService {
    /// A new signing secret for `owner` (an endpoint or an organization):
    /// its `whsec_` form, and that sealed for the store, bound to the owner so
    /// it cannot be moved to another row.
    fn new_secret(&self, owner: Uuid) -> (String, Vec<u8>) {
        let secret = SigningSecret::generate().expose();
        let sealed = self.secrets.encrypt(secret.as_bytes(), owner.as_bytes());
        (secret, sealed)
    }

    /// Registers an endpoint; answers it with its new secret (shown once).
    pub async fn create_endpoint(
        &self,
        who: &Principal,
        organization_id: Uuid,
        workspace_id: Option<Uuid>,
        input: EndpointInput,
    ) -> Result<(Endpoint, String)> {
        if !may_act_for(who, organization_id) {
            return Err(Error::new(
                crate::error::ErrorCode::PermissionDenied,
                "organization_id differs from the API key's organization",
            ));
        }
        let spec = EndpointSpec::parse(input, &self.limits)?;
        let endpoint_id = Uuid::new_v4();
        let (secret, sealed) = self.new_secret(endpoint_id);
        let new = NewEndpoint { endpoint_id, organization_id, workspace_id, spec, secret: sealed };
        let endpoint = self.store.insert_endpoint(&new, self.limits.max_endpoints_per_organization).await?;
        Ok((endpoint, secret))
    }

    pub async fn get_endpoint(&self, who: &Principal, r: EndpointRef) -> Result<Endpoint> {
        if !may_act_for(who, r.organization_id) {
            return Err(not_found(r.endpoint_id));
        }
        let endpoint = self.store.get_endpoint(r.organization_id, r.endpoint_id).await?;
        endpoint
            .filter(|e| r.workspace_id.is_none_or(|w| e.workspace_id == Some(w)))
            .ok_or_else(|| not_found(r.endpoint_id))
    }

    pub async fn list_endpoints(
        &self,
        who: &Principal,
        filter: EndpointFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<EndpointPage> {
        let page_size = super::page_size(page_size)?;
        if !may_act_for(who, filter.organization_id) {
            return Ok(EndpointPage { endpoints: Vec::new(), next_page_token: None });
        }
        let after = match page_token {
            "" => None,
            token => Some(pagination::decode(token, &filter, "page_token")?),
        };
        let (endpoints, more) = self.store.list_endpoints(&filter, after, page_size).await?;
        let next_page_token = endpoints
            .last()
            .filter(|_| more)
            .map(|last| pagination::encode(Cursor { created_at: last.created_at, log_id: last.seq }, &filter));
        Ok(EndpointPage { endpoints, next_page_token })
    }

    /// Changes the fields `mask` names (AIP-134) and validates the result
    /// as a whole.
    pub async fn update_endpoint(
        &self,
        who: &Principal,
        r: EndpointRef,
        update: EndpointInput,
        mask: &[String],
    ) -> Result<Endpoint> {
        let current = self.get_endpoint(who, r).await?;
        let merged = apply_update(current.spec.to_input(), update, mask)?;
        let spec = EndpointSpec::parse(merged, &self.limits)?;
        self.store
            .update_endpoint(r.organization_id, r.endpoint_id, &spec)
            .await?
            .ok_or_else(|| not_found(r.endpoint_id))
    }

    pub async fn delete_endpoint(&self, who: &Principal, r: EndpointRef) -> Result<()> {
        // The scope check (workspace) reads the endpoint first.
        self.get_endpoint(who, r).await?;
        match self.store.delete_endpoint(r.organization_id, r.endpoint_id).await? {
            true => Ok(()),
            false => Err(not_found(r.endpoint_id)),
        }
    }

    /// The current signing secret, decrypted.
    pub async fn endpoint_secret(&self, who: &Principal, r: EndpointRef) -> Result<String> {
        self.get_endpoint(who, r).await?;
        let stored = self.store.endpoint_secrets(r.organization_id, r.endpoint_id).await?;
        let stored = stored.ok_or_else(|| not_found(r.endpoint_id))?;
        let plain = self
            .secrets
            .decrypt(&stored.current, r.endpoint_id.as_bytes())
            .map_err(|e| Error::internal(anyhow::anyhow!("decrypting an endpoint secret: {e}")))?;
        String::from_utf8(plain).map_err(|e| Error::internal(e.into()))
    }

    /// A new secret signs from now on; the previous one also signs until
    /// the grace period ends.
    pub async fn rotate_endpoint_secret(
        &self,
        who: &Principal,
        r: EndpointRef,
        grace: Option<Duration>,
    ) -> Result<(String, DateTime<Utc>)> {
        let until = grace_until(grace)?;
        self.get_endpoint(who, r).await?;
        let (secret, sealed) = self.new_secret(r.endpoint_id);
        match self.store.rotate_endpoint_secret(r.organization_id, r.endpoint_id, &sealed, until).await? {
            true => Ok((secret, until)),
            false => Err(not_found(r.endpoint_id)),
        }
    }

    /// Gives the organization a signing secret unless it has one.
    pub(super) async fn ensure_organization_secret(&self, organization_id: Uuid) -> Result<()> {
        let known = |set: &std::collections::HashSet<Uuid>| set.contains(&organization_id);
        if known(&self.signed_organizations.lock().expect("organization set poisoned")) {
            return Ok(());
        }
        let (_, sealed) = self.new_secret(organization_id);
        self.store.ensure_organization_secret(organization_id, &sealed).await?;
        let mut set = self.signed_organizations.lock().expect("organization set poisoned");
        if set.len() >= 100_000 {
            set.clear();
        }
        set.insert(organization_id);
        Ok(())
    }

    /// The organization's current signing secret (created on first use).
    pub async fn organization_secret(&self, who: &Principal, organization_id: Uuid) -> Result<String> {
        if !may_act_for(who, organization_id) {
            return Err(Error::new(
                crate::error::ErrorCode::PermissionDenied,
                "organization_id differs from the API key's organization",
            ));
        }
        self.ensure_organization_secret(organization_id).await?;
        let stored = self.store.organization_secrets(organization_id).await?;
        let stored = stored.ok_or_else(|| Error::internal(anyhow::anyhow!("an organization secret vanished")))?;
        let plain = self
            .secrets
            .decrypt(&stored.current, organization_id.as_bytes())
            .map_err(|e| Error::internal(anyhow::anyhow!("decrypting an organization secret: {e}")))?;
        String::from_utf8(plain).map_err(|e| Error::internal(e.into()))
    }

    /// As [`Self::rotate_endpoint_secret`], for the organization's secret.
    pub async fn rotate_organization_secret(
        &self,
        who: &Principal,
        organization_id: Uuid,
        grace: Option<Duration>,
    ) -> Result<(String, DateTime<Utc>)> {
        let until = grace_until(grace)?;
        // Checks the caller's organization and creates a first secret if needed.
        self.organization_secret(who, organization_id).await?;
        let (secret, sealed) = self.new_secret(organization_id);
        self.store.rotate_organization_secret(organization_id, &sealed, until).await?;
        Ok((secret, until))
    }
}
