//! Endpoint use cases: register, read, list, change, delete, and the signing
//! secret's life (read again, rotate with a grace period, which is also how an
//! endpoint changes its signature scheme). Another organization's endpoint
//! answers exactly like a missing one.
//!
//! The sealed secret is the key's text form itself (`whsec_` or `whsk_`), so
//! delivery signs by its prefix; an ed25519 key's public key is also stored
//! in the clear beside it, for reads that must not open secrets.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::WebhookService;
use crate::auth::Principal;
use crate::delivery::sign::{self, AsymmetricSecret, SigningSecret};
use crate::domain::{
    Cursor, Endpoint, EndpointFilter, EndpointInput, EndpointSpec, SignatureScheme, apply_update, scheme_not_updatable,
};
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

/// A signing secret as shown to its owner: the secret's text form and, for
/// an ed25519 key, the public key receivers verify with. No `Debug`, so that
/// it cannot end up in a log by accident.
pub struct ShownSecret {
    /// `whsec_...` or `whsk_...`.
    pub secret: String,
    /// `whpk_...`, for an ed25519 key.
    pub public_key: Option<String>,
}

impl ShownSecret {
    fn new(secret: &sign::Secret) -> Self {
        let public_key = match secret.verification_key() {
            sign::VerificationKey::Asymmetric(public) => Some(public.expose()),
            sign::VerificationKey::Symmetric(_) => None,
        };
        Self { secret: secret.expose(), public_key }
    }
}

fn not_found(id: Uuid) -> Error {
    Error::not_found(format!("no endpoint with ID {id}"))
}

/// An organization key acts for its own organization only; naming another
/// answers as if nothing were there.
pub(super) fn may_act_for(who: &Principal, organization_id: Uuid) -> bool {
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
    /// A new signing secret of `scheme` for `owner` (an endpoint or an
    /// organization): as shown, and sealed for the store, bound to the owner
    /// so it cannot be moved to another row.
    fn new_secret(&self, owner: Uuid, scheme: SignatureScheme) -> (ShownSecret, Vec<u8>) {
        let secret = match scheme {
            SignatureScheme::HmacSha256 => sign::Secret::Symmetric(SigningSecret::generate()),
            SignatureScheme::Ed25519 => sign::Secret::Asymmetric(AsymmetricSecret::generate()),
        };
        let shown = ShownSecret::new(&secret);
        let sealed = self.secrets.encrypt(shown.secret.as_bytes(), owner.as_bytes());
        (shown, sealed)
    }

    /// Opens a sealed secret of `owner`.
    fn open_secret(&self, sealed: &[u8], owner: Uuid) -> Result<sign::Secret> {
        let plain = self
            .secrets
            .decrypt(sealed, owner.as_bytes())
            .map_err(|e| Error::internal(anyhow::Error::new(e).context("decrypting a signing secret")))?;
        let text = String::from_utf8(plain).map_err(|e| Error::internal(e.into()))?;
        text.parse().map_err(|e: sign::KeyError| Error::internal(anyhow::Error::new(e).context("a stored secret")))
    }

    /// Registers an endpoint signing with `scheme`; answers it with its new
    /// secret (shown once).
    pub async fn create_endpoint(
        &self,
        who: &Principal,
        organization_id: Uuid,
        workspace_id: Option<Uuid>,
        input: EndpointInput,
        scheme: SignatureScheme,
    ) -> Result<(Endpoint, ShownSecret)> {
        if !may_act_for(who, organization_id) {
            return Err(Error::new(
                crate::error::ErrorCode::PermissionDenied,
                "organization_id differs from the API key's organization",
            ));
        }
        let spec = EndpointSpec::parse(input, &self.limits)?;
        let endpoint_id = Uuid::new_v4();
        let (secret, sealed) = self.new_secret(endpoint_id, scheme);
        let new = NewEndpoint {
            endpoint_id,
            organization_id,
            workspace_id,
            spec,
            secret: sealed,
            public_key: secret.public_key.clone(),
        };
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
        let pages = pagination::Pages::of(&filter);
        let after = match page_token {
            "" => None,
            token => Some(pages.decode(token, "page_token")?),
        };
        let (endpoints, more) = self.store.list_endpoints(&filter, after, page_size).await?;
        let next_page_token = endpoints
            .last()
            .filter(|_| more)
            .map(|last| pages.encode(Cursor { created_at: last.created_at, log_id: last.seq }));
        Ok(EndpointPage { endpoints, next_page_token })
    }

    /// Changes the fields `mask` names (AIP-134) and validates the result
    /// as a whole. The signature scheme is not among them (see
    /// [`scheme_not_updatable`]): `scheme` is the one the request's endpoint
    /// gives, if any, which without a mask must be the current one.
    pub async fn update_endpoint(
        &self,
        who: &Principal,
        r: EndpointRef,
        update: EndpointInput,
        scheme: Option<SignatureScheme>,
        mask: &[String],
    ) -> Result<Endpoint> {
        let current = self.get_endpoint(who, r).await?;
        // An unchanged scheme is let through: a client may send back the
        // endpoint it read.
        if mask.is_empty() && scheme.is_some_and(|s| s != current.signature_scheme()) {
            return Err(scheme_not_updatable("endpoint.signature_scheme"));
        }
        let merged = apply_update(current.spec.to_input(), update, mask)?;
        let spec = EndpointSpec::parse(merged, &self.limits)?;
        let endpoint = self
            .store
            .update_endpoint(r.organization_id, r.endpoint_id, &spec)
            .await?
            .ok_or_else(|| not_found(r.endpoint_id))?;
        // Re-enabled: what was held while it was disabled flows now.
        if current.spec.disabled && !endpoint.spec.disabled {
            self.release_if_active(&endpoint).await?;
        }
        Ok(endpoint)
    }

    pub async fn delete_endpoint(&self, who: &Principal, r: EndpointRef) -> Result<()> {
        // The scope check (workspace) reads the endpoint first.
        self.get_endpoint(who, r).await?;
        match self.store.delete_endpoint(r.organization_id, r.endpoint_id).await? {
            true => Ok(()),
            false => Err(not_found(r.endpoint_id)),
        }
    }

    /// The current signing secret, decrypted, with its public key.
    pub async fn endpoint_secret(&self, who: &Principal, r: EndpointRef) -> Result<ShownSecret> {
        self.get_endpoint(who, r).await?;
        let stored = self.store.endpoint_secrets(r.organization_id, r.endpoint_id).await?;
        let stored = stored.ok_or_else(|| not_found(r.endpoint_id))?;
        Ok(ShownSecret::new(&self.open_secret(&stored.current, r.endpoint_id)?))
    }

    /// A new secret of `scheme` (`None`: the endpoint's current one) signs
    /// from now on; the previous one, of whichever scheme, also signs until
    /// the grace period ends.
    pub async fn rotate_endpoint_secret(
        &self,
        who: &Principal,
        r: EndpointRef,
        grace: Option<Duration>,
        scheme: Option<SignatureScheme>,
    ) -> Result<(ShownSecret, DateTime<Utc>)> {
        let until = grace_until(grace)?;
        let current = self.get_endpoint(who, r).await?;
        let (secret, sealed) = self.new_secret(r.endpoint_id, scheme.unwrap_or(current.signature_scheme()));
        let public_key = secret.public_key.as_deref();
        match self.store.rotate_endpoint_secret(r.organization_id, r.endpoint_id, &sealed, public_key, until).await? {
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
        let (_, sealed) = self.new_secret(organization_id, SignatureScheme::HmacSha256);
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
        let (secret, sealed) = self.new_secret(organization_id, SignatureScheme::HmacSha256);
        self.store.rotate_organization_secret(organization_id, &sealed, until).await?;
        Ok((secret.secret, until))
    }
}
