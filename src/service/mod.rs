//! The use cases, free of any transport type: gRPC and REST both call these.

mod calls;
mod endpoints;
mod recovery;
mod stats;
mod tail;

pub use calls::{CallChunk, CallChunkAfter};
use endpoints::may_act_for;
pub use endpoints::{DEFAULT_GRACE, EndpointPage, EndpointRef, MAX_GRACE, ShownSecret};
pub use recovery::{ENDPOINT_DISABLED, RecoverInput, Recovery};
pub use stats::{EndpointStats, STATS_HOURS, StatsBucket, window_at};
pub use tail::{WatchEvent, WatchQuery, matches};

use std::sync::Arc;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::auth::Principal;
use crate::domain::valid_webhook_type;
use crate::domain::{
    AttemptRecord, Cursor, DispatchInput, Dispatched, Draft, Endpoint, EndpointFilter, Limits, LogFilter, LogRecord,
    NewDelivery, Target, WebhookUrl, event_type_matches,
};
use crate::error::{Error, ErrorCode, FieldViolation, Result};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::pagination;
use crate::store::{ReadFrom, Store};

pub const DEFAULT_PAGE_SIZE: u32 = 10;
/// Shortest time between two announcements of due work to other replicas:
/// what it adds to another replica's pickup, at most.
const ANNOUNCE_GAP: std::time::Duration = std::time::Duration::from_millis(5);

/// The organization a request lookup is confined to: the key's own, or the
/// one named (a service key; `None` for any). `None` when an organization
/// key names another organization: the caller answers as if missing.
fn request_scope(who: &Principal, named: Option<Uuid>) -> Option<Option<Uuid>> {
    match (who.organization(), named) {
        (Some(own), Some(named)) if own != named => None,
        (Some(own), _) => Some(Some(own)),
        (None, named) => Some(named),
    }
}

/// When a delivery of `draft` to `e` gives up: the request's own deadline,
/// else the endpoint policy's time to live from now.
fn expiry(draft: &Draft, e: &Endpoint) -> Option<chrono::DateTime<chrono::Utc>> {
    let ttl = e.spec.policy.ttl_ms.map(|ms| chrono::TimeDelta::milliseconds(ms as i64));
    draft.expires_at.or_else(|| ttl.map(|ttl| chrono::Utc::now() + ttl))
}

/// Whether endpoint `e` takes events of `event_type` in a fan-out. hookpost's
/// own operational events (`hookpost.*`) go only to endpoints that name them
/// (exactly or by a wildcard such as `hookpost.*`), never to catch-all ones
/// (no event types, or `*`).
fn subscribes(e: &Endpoint, event_type: &str) -> bool {
    if !event_type.starts_with("hookpost.") {
        return event_type_matches(&e.spec.event_types, event_type);
    }
    e.spec.event_types.iter().any(|p| p != "*" && event_type_matches(std::slice::from_ref(p), event_type))
}
pub const MAX_PAGE_SIZE: u32 = 100;
/// Bodies (request, response) one page or chunk of logs may hold: a page
/// stops early past it (AIP-158 lets a page be shorter than page_size), so
/// reading logs costs memory in proportion to this, not to page_size times
/// the largest payload.
pub const MAX_PAGE_BYTES: usize = 2 << 20;

/// A page request: filters plus AIP-158 `page_size` / `page_token`.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub filter: LogFilter,
    /// 0 means the default; above the maximum is coerced to it.
    pub page_size: i32,
    pub page_token: String,
}

#[derive(Debug, Clone)]
pub struct LogPage {
    pub logs: Vec<LogRecord>,
    /// `None` on the last page.
    pub next_page_token: Option<String>,
}

/// Which request to detail, and the scope it must lie in (else NOT_FOUND).
#[derive(Debug, Clone, Default)]
pub struct DetailsQuery {
    pub request_id: Uuid,
    pub organization_id: Option<Uuid>,
    pub workspace_id: Option<Uuid>,
    pub subscription_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct LogDetails {
    pub log: LogRecord,
    /// Newest first.
    pub attempts: Vec<AttemptRecord>,
}

/// Filter values that could never match are refused by name rather than sent
/// to the store (where some would be a database error, not a client one).
fn check_filter(f: &LogFilter, limits: &Limits) -> Result<()> {
    let mut v = Vec::new();
    if let Some(t) = &f.webhook_type
        && (t.len() > limits.max_webhook_type_len || !valid_webhook_type(t))
    {
        v.push(FieldViolation {
            field: "webhook_type".into(),
            description: format!(
                "must be at most {} bytes of letters, digits and \"._:-\"",
                limits.max_webhook_type_len
            ),
        });
    }
    // Postgres' timestamptz spans 4713 BC .. 294276 AD; keep well inside it.
    let sane = |t: &chrono::DateTime<chrono::Utc>| (1..=9999).contains(&chrono::Datelike::year(t));
    for (field, t) in [("created_after", &f.created_after), ("created_before", &f.created_before)] {
        if t.as_ref().is_some_and(|t| !sane(t)) {
            v.push(FieldViolation { field: field.into(), description: "must be between years 1 and 9999".into() });
        }
    }
    if v.is_empty() { Ok(()) } else { Err(Error::invalid_fields(v)) }
}

/// AIP-158's `page_size`: 0 means the default, above the maximum is coerced
/// to it, negative is refused.
fn page_size(requested: i32) -> Result<u32> {
    match requested {
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as u32).min(MAX_PAGE_SIZE)),
    }
}

#[derive(Clone)]
pub struct WebhookService {
    store: Arc<dyn Store>,
    limits: Limits,
    default_max_retries: u32,
    /// Wakes this process's delivery workers the moment a webhook is stored.
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Encrypts signing secrets at rest.
    secrets: Arc<crate::secrets::SecretKey>,
    /// Organizations known to have a signing secret, so that dispatching to
    /// a bare URL checks the store once per organization, not per webhook.
    signed_organizations: Arc<std::sync::Mutex<std::collections::HashSet<Uuid>>>,
    /// Logs older than this are gone: recoveries reach no further back.
    retention: std::time::Duration,
    /// Wakes the operation runner when a recovery starts.
    operations: Arc<Notify>,
    /// This process's watch streams.
    watchers: Arc<tail::Watchers>,
    /// Set when work was committed that other replicas should hear about.
    announce: Arc<Notify>,
}

impl WebhookService {
    pub fn new(
        store: Arc<dyn Store>,
        limits: Limits,
        default_max_retries: u32,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        secrets: Arc<crate::secrets::SecretKey>,
        retention: std::time::Duration,
    ) -> Self {
        Self {
            store,
            limits,
            default_max_retries,
            wake,
            metrics,
            secrets,
            signed_organizations: Default::default(),
            retention,
            operations: Default::default(),
            watchers: Default::default(),
            announce: Default::default(),
        }
    }

    /// An organization key dispatches for its own organization (which the
    /// request may omit); a service key must name one.
    pub async fn dispatch(&self, who: &Principal, mut input: DispatchInput) -> Result<Dispatched> {
        if let Some(org) = who.organization() {
            if input.organization_id.is_empty() {
                input.organization_id = org.to_string();
            } else if Uuid::parse_str(&input.organization_id).is_ok_and(|o| o != org) {
                return Err(Error::new(
                    ErrorCode::PermissionDenied,
                    "organization_id differs from the API key's organization",
                ));
            }
        }
        let draft = Draft::parse(input, &self.limits)?;
        let message_id = draft.message_id;
        let deliveries = self.deliveries_of(draft).await?;
        let dispatched = match deliveries.as_slice() {
            // No endpoint subscribes: nothing to store or deliver.
            [] => {
                return Ok(Dispatched {
                    message_id,
                    request_id: Uuid::nil(),
                    log_id: 0,
                    request_ids: Vec::new(),
                    duplicate: false,
                });
            }
            [one] => self.store.insert_delivery(one).await?,
            many => self.store.insert_deliveries(many).await?,
        };
        let outcome = if dispatched.duplicate { "duplicate" } else { "stored" };
        self.metrics.dispatches.get_or_create(&OutcomeLabels { outcome }).inc();
        if !dispatched.duplicate {
            self.wake.notify_one();
            self.announce.notify_one();
        }
        tracing::debug!(request_id = %dispatched.request_id, duplicate = dispatched.duplicate, "dispatched");
        Ok(dispatched)
    }

    /// One delivery per target of the message: the URL given, the endpoint
    /// named, or every enabled endpoint whose event types match.
    async fn deliveries_of(&self, draft: Draft) -> Result<Vec<NewDelivery>> {
        let org = draft.organization_id;
        match draft.target.clone() {
            Target::Url(url) => {
                // Deliveries to a bare URL are signed with the organization's
                // secret: make sure it has one before the first is sent.
                self.ensure_organization_secret(org).await?;
                let max_retries = draft.max_retries.unwrap_or(self.default_max_retries);
                Ok(vec![draft.into_delivery(url, None, max_retries)])
            }
            Target::Endpoint(id) => {
                let missing = || Error::not_found(format!("no endpoint with ID {id}"));
                let endpoint = self.store.get_endpoint(org, id).await?.ok_or_else(missing)?;
                if draft.workspace_id.is_some_and(|w| endpoint.workspace_id != Some(w)) {
                    return Err(missing());
                }
                if !event_type_matches(&endpoint.spec.event_types, &draft.webhook_type) {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!("endpoint {id} does not take {:?} events", draft.webhook_type),
                    ));
                }
                let (url, max_retries) = self.endpoint_target(&draft, &endpoint)?;
                // A paused or disabled endpoint's deliveries are held, not
                // dropped: they flow once it is resumed or re-enabled.
                let (held, expires_at) = (endpoint.holds(), expiry(&draft, &endpoint));
                Ok(vec![NewDelivery { held, expires_at, ..draft.into_delivery(url, Some(id), max_retries) }])
            }
            Target::Subscribers => {
                let filter = EndpointFilter { organization_id: org, workspace_id: draft.workspace_id };
                let mut out = Vec::new();
                let mut after = None;
                loop {
                    let (page, more) = self.store.list_endpoints(&filter, after, MAX_PAGE_SIZE).await?;
                    for e in &page {
                        if subscribes(e, &draft.webhook_type) {
                            let (url, max_retries) = self.endpoint_target(&draft, e)?;
                            let (held, expires_at) = (e.holds(), expiry(&draft, e));
                            let delivery = draft.delivery(url, Some(e.endpoint_id), max_retries);
                            out.push(NewDelivery { held, expires_at, ..delivery });
                        }
                    }
                    match page.last() {
                        Some(last) if more => after = Some(Cursor { created_at: last.created_at, log_id: last.seq }),
                        _ => return Ok(out),
                    }
                }
            }
        }
    }

    /// Where and with how many retries `draft` goes to endpoint `e`.
    fn endpoint_target(&self, draft: &Draft, e: &Endpoint) -> Result<(WebhookUrl, u32)> {
        let url = WebhookUrl::parse(&e.spec.url, self.limits.max_url_len, self.limits.allow_private_targets).map_err(
            |err| Error::new(ErrorCode::FailedPrecondition, format!("endpoint {}: its URL {err}", e.endpoint_id)),
        )?;
        let max_retries = draft.max_retries.or(e.spec.policy.max_retries).unwrap_or(self.default_max_retries);
        Ok((url, max_retries))
    }

    /// Lists logs; an organization key sees only its own organization, and a
    /// filter naming another one matches nothing, as if it did not exist.
    pub async fn list_logs(&self, who: &Principal, mut q: ListQuery) -> Result<LogPage> {
        check_filter(&q.filter, &self.limits)?;
        let page_size = page_size(q.page_size)?;
        // Scope first: the token is checked against (and issued for) the
        // filter as it runs, organization included.
        if let Some(org) = who.organization() {
            match q.filter.organization_id {
                Some(named) if named != org => return Ok(LogPage { logs: Vec::new(), next_page_token: None }),
                _ => q.filter.organization_id = Some(org),
            }
        }
        let pages = pagination::Pages::of(&q.filter);
        let after = match q.page_token.as_str() {
            "" => None,
            token => Some(pages.decode(token, "page_token")?),
        };
        let batch = self.store.list_logs(&q.filter, after, page_size, MAX_PAGE_BYTES).await?;
        let next_page_token = match batch.more {
            true => batch.logs.last().map(|last| pages.encode(last.cursor())),
            false => None,
        };
        Ok(LogPage { logs: batch.logs, next_page_token })
    }

    /// One request's attempts. Outside the caller's scope (another
    /// organization, workspace or subscription) answers exactly like a
    /// missing request, after the same single lookup.
    pub async fn log_details(&self, who: &Principal, q: DetailsQuery) -> Result<LogDetails> {
        let not_found = || Error::not_found(format!("no webhook log with request ID {}", q.request_id));
        let org = request_scope(who, q.organization_id).ok_or_else(not_found)?;
        let (log, attempts) =
            self.store.log_details(q.request_id, org, ReadFrom::Replica).await?.ok_or_else(not_found)?;
        let in_scope = q.workspace_id.is_none_or(|w| Some(w) == log.workspace_id)
            && q.subscription_id.is_none_or(|s| Some(s) == log.subscription_id);
        if !in_scope {
            return Err(not_found());
        }
        Ok(LogDetails { log, attempts })
    }

    /// Announces committed work to the other replicas until `shutdown`:
    /// one announcement at a time and at most one per `ANNOUNCE_GAP`, so a
    /// burst of dispatches becomes one more announcement, whatever the rate
    /// (sent back to back at full rate, they cost Dispatch 16 %: every
    /// NOTIFY takes the server's notification queue lock and signals every
    /// listener).
    pub async fn run_announcer(self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.announce.notified() => {}
            }
            if let Err(err) = self.store.announce_due().await {
                tracing::debug!(error = %err, "announcing due work failed; other replicas will poll");
            }
            tokio::time::sleep(ANNOUNCE_GAP).await;
        }
    }

    /// Readiness: the store answers.
    pub async fn ready(&self) -> Result<()> {
        self.store.ping().await
    }

    /// The read replicas and whether each serves reads now.
    pub fn read_replicas(&self) -> Vec<crate::store::ReplicaState> {
        self.store.read_replicas()
    }
}
