//! The endpoint store: one narrow trait, implemented for both stores. Every
//! statement is scoped by organization, so another organization's endpoint
//! is indistinguishable from a missing one. Secrets arrive and leave
//! encrypted; this layer never sees them in the clear.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use crate::domain::{Cursor, DeliveryPolicy, Endpoint, EndpointFilter, EndpointSpec};
use crate::error::{Error, ErrorCode, Result};

/// A new endpoint with its encrypted secret.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub endpoint_id: Uuid,
    pub organization_id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub spec: EndpointSpec,
    pub secret: Vec<u8>,
    /// The secret's `whpk_` public key when it is an ed25519 key.
    pub public_key: Option<String>,
}

/// An endpoint's or organization's signing secrets, encrypted.
pub use crate::domain::SealedSecrets as StoredSecrets;

#[async_trait]
pub trait EndpointStore: Send + Sync {
    /// Stores a new endpoint unless its organization already has
    /// `max_per_organization` (RESOURCE_EXHAUSTED then).
    async fn insert_endpoint(&self, e: &NewEndpoint, max_per_organization: u32) -> Result<Endpoint>;

    async fn get_endpoint(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<Option<Endpoint>>;

    /// Up to `limit` endpoints after `after`, oldest first; and whether more follow.
    async fn list_endpoints(
        &self,
        f: &EndpointFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Endpoint>, bool)>;

    /// Replaces the settable fields; `None` when there is no such endpoint.
    async fn update_endpoint(
        &self,
        organization_id: Uuid,
        endpoint_id: Uuid,
        spec: &EndpointSpec,
    ) -> Result<Option<Endpoint>>;

    async fn delete_endpoint(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<bool>;

    async fn endpoint_secrets(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<Option<StoredSecrets>>;

    /// Makes `new` the current secret (with `public_key`, its public key when
    /// it is an ed25519 key) and the current one the previous, signing until
    /// `previous_until`. False when there is no such endpoint.
    async fn rotate_endpoint_secret(
        &self,
        organization_id: Uuid,
        endpoint_id: Uuid,
        new: &[u8],
        public_key: Option<&str>,
        previous_until: DateTime<Utc>,
    ) -> Result<bool>;

    /// Stores `secret` as the organization's signing secret unless it has one.
    async fn ensure_organization_secret(&self, organization_id: Uuid, secret: &[u8]) -> Result<()>;

    async fn organization_secrets(&self, organization_id: Uuid) -> Result<Option<StoredSecrets>>;

    /// As [`EndpointStore::rotate_endpoint_secret`], for the organization's secret.
    async fn rotate_organization_secret(
        &self,
        organization_id: Uuid,
        new: &[u8],
        previous_until: DateTime<Utc>,
    ) -> Result<bool>;

    /// Pauses or resumes; `None` when there is no such endpoint.
    async fn set_paused(&self, organization_id: Uuid, endpoint_id: Uuid, paused: bool) -> Result<Option<Endpoint>>;

    /// Counts an attempt's outcome toward the endpoint's run of failures and
    /// applies the auto-disable rule; returns the endpoint when this very
    /// outcome disabled it (so that exactly one caller announces it).
    async fn record_endpoint_outcome(
        &self,
        endpoint_id: Uuid,
        outcome: EndpointOutcome,
        rule: &DisableRule,
    ) -> Result<Option<Endpoint>>;
}

/// What an attempt tells about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointOutcome {
    Succeeded,
    Failed,
    /// The receiver answered 410 Gone: it asks not to be called again.
    Gone,
}

/// When hookpost disables an endpoint by itself: every attempt failed for
/// at least `window`, and at least `min_failures` in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisableRule {
    pub window: chrono::TimeDelta,
    pub min_failures: u32,
}

/// The decision for one outcome, given the endpoint's run so far: the new
/// run (count, since) and the reason to disable, if it must be.
fn next_run(
    outcome: EndpointOutcome,
    failures: i64,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    rule: &DisableRule,
) -> (i64, Option<DateTime<Utc>>, Option<String>) {
    match outcome {
        EndpointOutcome::Succeeded => (0, None, None),
        EndpointOutcome::Gone => (failures + 1, since.or(Some(now)), Some("the receiver answered 410 Gone".to_owned())),
        EndpointOutcome::Failed => {
            let (n, since) = (failures + 1, since.unwrap_or(now));
            let reason = (n >= i64::from(rule.min_failures) && now - since >= rule.window).then(|| {
                format!("every delivery failed for {} hours ({n} attempts in a row)", (now - since).num_hours())
            });
            (n, Some(since), reason)
        }
    }
}

fn too_many(max: u32) -> Error {
    Error::new(ErrorCode::ResourceExhausted, format!("the organization already has {max} endpoints, the most allowed"))
}

fn json_columns(spec: &EndpointSpec) -> Result<(String, String, String)> {
    let enc = |v: serde_json::Result<String>| v.map_err(|e| Error::internal(e.into()));
    Ok((
        enc(serde_json::to_string(&spec.event_types))?,
        enc(serde_json::to_string(&spec.headers))?,
        enc(serde_json::to_string(&spec.policy))?,
    ))
}

fn spec_from(
    url: String,
    description: String,
    event_types: &str,
    disabled: bool,
    headers: &str,
    policy: &str,
) -> Result<EndpointSpec> {
    let bad = |e: serde_json::Error| Error::internal(anyhow::anyhow!("a stored endpoint does not decode: {e}"));
    Ok(EndpointSpec {
        url,
        description,
        event_types: serde_json::from_str(event_types).map_err(bad)?,
        disabled,
        headers: serde_json::from_str(headers).map_err(bad)?,
        policy: serde_json::from_str::<DeliveryPolicy>(policy).map_err(bad)?,
    })
}

/// An endpoint's headers and policy as a claim reads them (JSON text).
pub(crate) fn settings(
    headers: Option<String>,
    policy: Option<String>,
) -> Result<Option<crate::domain::EndpointSettings>> {
    let (Some(headers), Some(policy)) = (headers, policy) else { return Ok(None) };
    let bad = |e: serde_json::Error| Error::internal(anyhow::anyhow!("a stored endpoint does not decode: {e}"));
    Ok(Some(crate::domain::EndpointSettings {
        headers: serde_json::from_str(&headers).map_err(bad)?,
        policy: serde_json::from_str(&policy).map_err(bad)?,
    }))
}

/// Sealed secrets as a claim reads them.
pub(crate) fn sealed(
    current: Option<Vec<u8>>,
    previous: Option<Vec<u8>>,
    until: Option<DateTime<Utc>>,
) -> Option<StoredSecrets> {
    current.map(|current| StoredSecrets { current, previous: previous.zip(until) })
}

/// The secret columns (`secret`, `previous_secret`,
/// `previous_secret_expires_at`) of an endpoint or organization row.
fn pg_secrets(row: &sqlx::postgres::PgRow) -> Result<StoredSecrets> {
    let previous: Option<Vec<u8>> = row.try_get("previous_secret")?;
    let until: Option<DateTime<Utc>> = row.try_get("previous_secret_expires_at")?;
    Ok(StoredSecrets { current: row.try_get("secret")?, previous: previous.zip(until) })
}

/// As [`pg_secrets`], for the embedded store's columns.
fn sqlite_secrets(row: &sqlx::sqlite::SqliteRow) -> Result<StoredSecrets> {
    let previous: Option<Vec<u8>> = row.try_get("previous_secret")?;
    let until: Option<i64> = row.try_get("previous_secret_expires_at")?;
    let until = until.map(super::sqlite::time).transpose()?;
    Ok(StoredSecrets { current: row.try_get("secret")?, previous: previous.zip(until) })
}

const PG_COLUMNS: &str = "id, endpoint_id, organization_id, workspace_id, url, description, event_types::text AS event_types, \
     disabled, headers::text AS headers, policy::text AS policy, public_key, created_at, updated_at, paused, \
     disabled_reason, disabled_at";

fn pg_endpoint(row: &sqlx::postgres::PgRow) -> Result<Endpoint> {
    Ok(Endpoint {
        seq: row.try_get("id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        organization_id: row.try_get("organization_id")?,
        workspace_id: row.try_get("workspace_id")?,
        spec: spec_from(
            row.try_get("url")?,
            row.try_get("description")?,
            row.try_get("event_types")?,
            row.try_get("disabled")?,
            row.try_get("headers")?,
            row.try_get("policy")?,
        )?,
        public_key: row.try_get("public_key")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        paused: row.try_get("paused")?,
        disabled_reason: row.try_get("disabled_reason")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

#[async_trait]
impl EndpointStore for PostgresStore {
    async fn insert_endpoint(&self, e: &NewEndpoint, max_per_organization: u32) -> Result<Endpoint> {
        let (event_types, headers, policy) = json_columns(&e.spec)?;
        let mut tx = self.db().begin().await?;
        // Creates of one organization take turns, so the count cannot be
        // passed by two at once.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 1001))")
            .bind(e.organization_id)
            .execute(tx.ex())
            .await?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM endpoints WHERE organization_id = $1")
            .bind(e.organization_id)
            .fetch_one(tx.ex())
            .await?;
        if count >= i64::from(max_per_organization) {
            return Err(too_many(max_per_organization));
        }
        let row = sqlx::query(&format!(
            "INSERT INTO endpoints (endpoint_id, organization_id, workspace_id, url, description, event_types, \
               disabled, headers, policy, secret, public_key) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8::jsonb, $9::jsonb, $10, $11) RETURNING {PG_COLUMNS}"
        ))
        .bind(e.endpoint_id)
        .bind(e.organization_id)
        .bind(e.workspace_id)
        .bind(&e.spec.url)
        .bind(&e.spec.description)
        .bind(event_types)
        .bind(e.spec.disabled)
        .bind(headers)
        .bind(policy)
        .bind(&e.secret)
        .bind(&e.public_key)
        .fetch_one(tx.ex())
        .await?;
        tx.commit().await?;
        pg_endpoint(&row)
    }

    async fn get_endpoint(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<Option<Endpoint>> {
        let row =
            sqlx::query(&format!("SELECT {PG_COLUMNS} FROM endpoints WHERE endpoint_id = $1 AND organization_id = $2"))
                .bind(endpoint_id)
                .bind(organization_id)
                .fetch_optional(self.db())
                .await?;
        row.as_ref().map(pg_endpoint).transpose()
    }

    async fn list_endpoints(
        &self,
        f: &EndpointFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Endpoint>, bool)> {
        let mut q = sqlx::QueryBuilder::new(format!("SELECT {PG_COLUMNS} FROM endpoints WHERE organization_id = "));
        q.push_bind(f.organization_id);
        if let Some(w) = f.workspace_id {
            q.push(" AND workspace_id = ").push_bind(w);
        }
        if let Some(c) = after {
            q.push(" AND (created_at, id) > (").push_bind(c.created_at).push(", ").push_bind(c.log_id).push(")");
        }
        q.push(format_args!(" ORDER BY created_at, id LIMIT {}", u64::from(limit) + 1));
        let rows = q.build().fetch_all(self.db()).await?;
        let mut out = rows.iter().map(pg_endpoint).collect::<Result<Vec<_>>>()?;
        let more = out.len() > limit as usize;
        out.truncate(limit as usize);
        Ok((out, more))
    }

    async fn update_endpoint(
        &self,
        organization_id: Uuid,
        endpoint_id: Uuid,
        spec: &EndpointSpec,
    ) -> Result<Option<Endpoint>> {
        let (event_types, headers, policy) = json_columns(spec)?;
        let row = sqlx::query(&format!(
            "UPDATE endpoints SET url = $3, description = $4, event_types = $5::jsonb, disabled = $6, \
               headers = $7::jsonb, policy = $8::jsonb, updated_at = now(), \
               disabled_reason = CASE WHEN $6 THEN disabled_reason END, \
               disabled_at = CASE WHEN $6 THEN COALESCE(disabled_at, now()) END, \
               consecutive_failures = CASE WHEN $6 THEN consecutive_failures ELSE 0 END, \
               failing_since = CASE WHEN $6 THEN failing_since END \
             WHERE endpoint_id = $1 AND organization_id = $2 RETURNING {PG_COLUMNS}"
        ))
        .bind(endpoint_id)
        .bind(organization_id)
        .bind(&spec.url)
        .bind(&spec.description)
        .bind(event_types)
        .bind(spec.disabled)
        .bind(headers)
        .bind(policy)
        .fetch_optional(self.db())
        .await?;
        row.as_ref().map(pg_endpoint).transpose()
    }

    async fn delete_endpoint(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM endpoints WHERE endpoint_id = $1 AND organization_id = $2")
            .bind(endpoint_id)
            .bind(organization_id)
            .execute(self.db())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn endpoint_secrets(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<Option<StoredSecrets>> {
        let row = sqlx::query(
            "SELECT secret, previous_secret, previous_secret_expires_at FROM endpoints \
             WHERE endpoint_id = $1 AND organization_id = $2",
        )
        .bind(endpoint_id)
        .bind(organization_id)
        .fetch_optional(self.db())
        .await?;
        row.as_ref().map(pg_secrets).transpose()
    }

    async fn rotate_endpoint_secret(
        &self,
        organization_id: Uuid,
        endpoint_id: Uuid,
        new: &[u8],
        public_key: Option<&str>,
        previous_until: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE endpoints SET previous_secret = secret, previous_secret_expires_at = $4, secret = $3, \
               public_key = $5, updated_at = now() WHERE endpoint_id = $1 AND organization_id = $2",
        )
        .bind(endpoint_id)
        .bind(organization_id)
        .bind(new)
        .bind(previous_until)
        .bind(public_key)
        .execute(self.db())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn ensure_organization_secret(&self, organization_id: Uuid, secret: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO organization_secrets (organization_id, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(organization_id)
        .bind(secret)
        .execute(self.db())
        .await?;
        Ok(())
    }

    async fn organization_secrets(&self, organization_id: Uuid) -> Result<Option<StoredSecrets>> {
        let row = sqlx::query(
            "SELECT secret, previous_secret, previous_secret_expires_at FROM organization_secrets \
             WHERE organization_id = $1",
        )
        .bind(organization_id)
        .fetch_optional(self.db())
        .await?;
        row.as_ref().map(pg_secrets).transpose()
    }

    async fn rotate_organization_secret(
        &self,
        organization_id: Uuid,
        new: &[u8],
        previous_until: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE organization_secrets SET previous_secret = secret, previous_secret_expires_at = $3, \
               secret = $2, updated_at = now() WHERE organization_id = $1",
        )
        .bind(organization_id)
        .bind(new)
        .bind(previous_until)
        .execute(self.db())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_paused(&self, organization_id: Uuid, endpoint_id: Uuid, paused: bool) -> Result<Option<Endpoint>> {
        let row = sqlx::query(&format!(
            "UPDATE endpoints SET paused = $3, updated_at = now() \
             WHERE endpoint_id = $1 AND organization_id = $2 RETURNING {PG_COLUMNS}"
        ))
        .bind(endpoint_id)
        .bind(organization_id)
        .bind(paused)
        .fetch_optional(self.db())
        .await?;
        row.as_ref().map(pg_endpoint).transpose()
    }

    async fn record_endpoint_outcome(
        &self,
        endpoint_id: Uuid,
        outcome: EndpointOutcome,
        rule: &DisableRule,
    ) -> Result<Option<Endpoint>> {
        let mut tx = self.db().begin().await?;
        let Some(row) = sqlx::query(
            "SELECT disabled, consecutive_failures, failing_since, now() AS now FROM endpoints \
             WHERE endpoint_id = $1 FOR UPDATE",
        )
        .bind(endpoint_id)
        .fetch_optional(tx.ex())
        .await?
        else {
            return Ok(None);
        };
        let was_disabled: bool = row.try_get("disabled")?;
        let (n, since, reason) = next_run(
            outcome,
            i64::from(row.try_get::<i32, _>("consecutive_failures")?),
            row.try_get("failing_since")?,
            row.try_get("now")?,
            rule,
        );
        let disable = reason.as_ref().filter(|_| !was_disabled);
        let updated = sqlx::query(&format!(
            "UPDATE endpoints SET consecutive_failures = $2, failing_since = $3, \
               disabled = disabled OR $4, disabled_reason = CASE WHEN $4 THEN $5 ELSE disabled_reason END, \
               disabled_at = CASE WHEN $4 THEN now() ELSE disabled_at END, \
               updated_at = CASE WHEN $4 THEN now() ELSE updated_at END \
             WHERE endpoint_id = $1 RETURNING {PG_COLUMNS}"
        ))
        .bind(endpoint_id)
        .bind(i32::try_from(n).unwrap_or(i32::MAX))
        .bind(since)
        .bind(disable.is_some())
        .bind(disable)
        .fetch_one(tx.ex())
        .await?;
        tx.commit().await?;
        if disable.is_some() { pg_endpoint(&updated).map(Some) } else { Ok(None) }
    }
}

const SQLITE_COLUMNS: &str = "id, endpoint_id, organization_id, workspace_id, url, description, event_types, \
     disabled, headers, policy, public_key, created_at, updated_at, paused, disabled_reason, disabled_at";

fn sqlite_endpoint(row: &sqlx::sqlite::SqliteRow) -> Result<Endpoint> {
    let uuid = |col: &str| -> Result<Uuid> {
        let s: String = row.try_get(col)?;
        Uuid::parse_str(&s).map_err(|e| Error::internal(e.into()))
    };
    let workspace: Option<String> = row.try_get("workspace_id")?;
    Ok(Endpoint {
        seq: row.try_get("id")?,
        endpoint_id: uuid("endpoint_id")?,
        organization_id: uuid("organization_id")?,
        workspace_id: workspace.map(|w| Uuid::parse_str(&w)).transpose().map_err(|e| Error::internal(e.into()))?,
        spec: spec_from(
            row.try_get("url")?,
            row.try_get("description")?,
            row.try_get("event_types")?,
            row.try_get("disabled")?,
            row.try_get("headers")?,
            row.try_get("policy")?,
        )?,
        public_key: row.try_get("public_key")?,
        created_at: super::sqlite::time(row.try_get("created_at")?)?,
        updated_at: super::sqlite::time(row.try_get("updated_at")?)?,
        paused: row.try_get("paused")?,
        disabled_reason: row.try_get("disabled_reason")?,
        disabled_at: row.try_get::<Option<i64>, _>("disabled_at")?.map(super::sqlite::time).transpose()?,
    })
}

#[async_trait]
impl EndpointStore for SqliteStore {
    async fn insert_endpoint(&self, e: &NewEndpoint, max_per_organization: u32) -> Result<Endpoint> {
        let (event_types, headers, policy) = json_columns(&e.spec)?;
        let now = super::sqlite::micros(Utc::now());
        // One writer connection: the count and the insert cannot interleave
        // with another create.
        let mut tx = self.writer().begin().await?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM endpoints WHERE organization_id = ?")
            .bind(e.organization_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        if count >= i64::from(max_per_organization) {
            return Err(too_many(max_per_organization));
        }
        let row = sqlx::query(&format!(
            "INSERT INTO endpoints (endpoint_id, organization_id, workspace_id, url, description, event_types, \
               disabled, headers, policy, secret, public_key, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {SQLITE_COLUMNS}"
        ))
        .bind(e.endpoint_id.to_string())
        .bind(e.organization_id.to_string())
        .bind(e.workspace_id.map(|w| w.to_string()))
        .bind(&e.spec.url)
        .bind(&e.spec.description)
        .bind(event_types)
        .bind(e.spec.disabled)
        .bind(headers)
        .bind(policy)
        .bind(&e.secret)
        .bind(&e.public_key)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        sqlite_endpoint(&row)
    }

    async fn get_endpoint(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<Option<Endpoint>> {
        let row = sqlx::query(&format!(
            "SELECT {SQLITE_COLUMNS} FROM endpoints WHERE endpoint_id = ? AND organization_id = ?"
        ))
        .bind(endpoint_id.to_string())
        .bind(organization_id.to_string())
        .fetch_optional(self.reader())
        .await?;
        row.as_ref().map(sqlite_endpoint).transpose()
    }

    async fn list_endpoints(
        &self,
        f: &EndpointFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Endpoint>, bool)> {
        let mut q: sqlx::QueryBuilder<sqlx::Sqlite> =
            sqlx::QueryBuilder::new(format!("SELECT {SQLITE_COLUMNS} FROM endpoints WHERE organization_id = "));
        q.push_bind(f.organization_id.to_string());
        if let Some(w) = f.workspace_id {
            q.push(" AND workspace_id = ").push_bind(w.to_string());
        }
        if let Some(c) = after {
            q.push(" AND (created_at, id) > (")
                .push_bind(super::sqlite::micros(c.created_at))
                .push(", ")
                .push_bind(c.log_id)
                .push(")");
        }
        q.push(" ORDER BY created_at, id LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(self.reader()).await?;
        let mut out = rows.iter().map(sqlite_endpoint).collect::<Result<Vec<_>>>()?;
        let more = out.len() > limit as usize;
        out.truncate(limit as usize);
        Ok((out, more))
    }

    async fn update_endpoint(
        &self,
        organization_id: Uuid,
        endpoint_id: Uuid,
        spec: &EndpointSpec,
    ) -> Result<Option<Endpoint>> {
        let (event_types, headers, policy) = json_columns(spec)?;
        let row = sqlx::query(&format!(
            "UPDATE endpoints SET url = ?1, description = ?2, event_types = ?3, disabled = ?4, headers = ?5, \
               policy = ?6, updated_at = ?7, \
               disabled_reason = CASE WHEN ?4 THEN disabled_reason END, \
               disabled_at = CASE WHEN ?4 THEN COALESCE(disabled_at, ?7) END, \
               consecutive_failures = CASE WHEN ?4 THEN consecutive_failures ELSE 0 END, \
               failing_since = CASE WHEN ?4 THEN failing_since END \
             WHERE endpoint_id = ?8 AND organization_id = ?9 RETURNING {SQLITE_COLUMNS}"
        ))
        .bind(&spec.url)
        .bind(&spec.description)
        .bind(event_types)
        .bind(spec.disabled)
        .bind(headers)
        .bind(policy)
        .bind(super::sqlite::micros(Utc::now()))
        .bind(endpoint_id.to_string())
        .bind(organization_id.to_string())
        .fetch_optional(self.writer())
        .await?;
        row.as_ref().map(sqlite_endpoint).transpose()
    }

    async fn delete_endpoint(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM endpoints WHERE endpoint_id = ? AND organization_id = ?")
            .bind(endpoint_id.to_string())
            .bind(organization_id.to_string())
            .execute(self.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn endpoint_secrets(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<Option<StoredSecrets>> {
        let row = sqlx::query(
            "SELECT secret, previous_secret, previous_secret_expires_at FROM endpoints \
             WHERE endpoint_id = ? AND organization_id = ?",
        )
        .bind(endpoint_id.to_string())
        .bind(organization_id.to_string())
        .fetch_optional(self.reader())
        .await?;
        row.as_ref().map(sqlite_secrets).transpose()
    }

    async fn rotate_endpoint_secret(
        &self,
        organization_id: Uuid,
        endpoint_id: Uuid,
        new: &[u8],
        public_key: Option<&str>,
        previous_until: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE endpoints SET previous_secret = secret, previous_secret_expires_at = ?, secret = ?, \
               public_key = ?, updated_at = ? WHERE endpoint_id = ? AND organization_id = ?",
        )
        .bind(super::sqlite::micros(previous_until))
        .bind(new)
        .bind(public_key)
        .bind(super::sqlite::micros(Utc::now()))
        .bind(endpoint_id.to_string())
        .bind(organization_id.to_string())
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn ensure_organization_secret(&self, organization_id: Uuid, secret: &[u8]) -> Result<()> {
        let now = super::sqlite::micros(Utc::now());
        sqlx::query(
            "INSERT INTO organization_secrets (organization_id, secret, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(organization_id.to_string())
        .bind(secret)
        .bind(now)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn organization_secrets(&self, organization_id: Uuid) -> Result<Option<StoredSecrets>> {
        let row = sqlx::query(
            "SELECT secret, previous_secret, previous_secret_expires_at FROM organization_secrets \
             WHERE organization_id = ?",
        )
        .bind(organization_id.to_string())
        .fetch_optional(self.reader())
        .await?;
        row.as_ref().map(sqlite_secrets).transpose()
    }

    async fn rotate_organization_secret(
        &self,
        organization_id: Uuid,
        new: &[u8],
        previous_until: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE organization_secrets SET previous_secret = secret, previous_secret_expires_at = ?, secret = ?, \
               updated_at = ? WHERE organization_id = ?",
        )
        .bind(super::sqlite::micros(previous_until))
        .bind(new)
        .bind(super::sqlite::micros(Utc::now()))
        .bind(organization_id.to_string())
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }
    async fn set_paused(&self, organization_id: Uuid, endpoint_id: Uuid, paused: bool) -> Result<Option<Endpoint>> {
        let row = sqlx::query(&format!(
            "UPDATE endpoints SET paused = ?, updated_at = ? \
             WHERE endpoint_id = ? AND organization_id = ? RETURNING {SQLITE_COLUMNS}"
        ))
        .bind(paused)
        .bind(super::sqlite::micros(Utc::now()))
        .bind(endpoint_id.to_string())
        .bind(organization_id.to_string())
        .fetch_optional(self.writer())
        .await?;
        row.as_ref().map(sqlite_endpoint).transpose()
    }

    async fn record_endpoint_outcome(
        &self,
        endpoint_id: Uuid,
        outcome: EndpointOutcome,
        rule: &DisableRule,
    ) -> Result<Option<Endpoint>> {
        let mut tx = self.writer().begin().await?;
        let Some(row) =
            sqlx::query("SELECT disabled, consecutive_failures, failing_since FROM endpoints WHERE endpoint_id = ?")
                .bind(endpoint_id.to_string())
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        let now = Utc::now();
        let was_disabled: bool = row.try_get("disabled")?;
        let since = row.try_get::<Option<i64>, _>("failing_since")?.map(super::sqlite::time).transpose()?;
        let (n, since, reason) = next_run(outcome, row.try_get("consecutive_failures")?, since, now, rule);
        let disable = reason.as_ref().filter(|_| !was_disabled);
        let now = super::sqlite::micros(now);
        let updated = sqlx::query(&format!(
            "UPDATE endpoints SET consecutive_failures = ?2, failing_since = ?3, \
               disabled = disabled OR ?4, disabled_reason = CASE WHEN ?4 THEN ?5 ELSE disabled_reason END, \
               disabled_at = CASE WHEN ?4 THEN ?6 ELSE disabled_at END, \
               updated_at = CASE WHEN ?4 THEN ?6 ELSE updated_at END \
             WHERE endpoint_id = ?1 RETURNING {SQLITE_COLUMNS}"
        ))
        .bind(endpoint_id.to_string())
        .bind(n)
        .bind(since.map(super::sqlite::micros))
        .bind(disable.is_some())
        .bind(disable)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if disable.is_some() { sqlite_endpoint(&updated).map(Some) } else { Ok(None) }
    }
}
