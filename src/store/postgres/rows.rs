//! Rows into the store's types: logs, attempts and claims, each column
//! found once per result and read by position.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::domain::{AttemptRecord, ClaimedDelivery, ExecutionStatus, LogRecord};
use crate::error::{Error, Result};

fn status_from_db(s: &str) -> Result<ExecutionStatus> {
    ExecutionStatus::parse(s).ok_or_else(|| Error::internal(anyhow::anyhow!("unknown status {s:?} in store")))
}

fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// Declares where each named column sits in a result set, found once per
/// result rather than for every value: by name, `try_get` hashes the name
/// for each value of each row, which was an eighth of a listing page's CPU
/// in a profile of the server (docs/PERFORMANCE.md). The logs' and
/// attempts' columns are then read with `try_get_unchecked`: checking each
/// value's type against the Rust type's list of compatible Postgres types
/// was another twelfth. Their types are not checked, so the SELECTs these
/// decode (`LOG_SELECT`, `LIST_PAGE`, `LOGS_BY_ID` and `LOGS_BY_ID_BASIC`,
/// and `ATTEMPT_COLUMNS` and `ATTEMPT_COLUMNS_BASIC` in this store and in
/// the tail) must keep the column types the Rust fields have: int8 for
/// i64, int4 for i32, timestamptz (not timestamp) for times, jsonb for the
/// metadata, text for the bodies (the BASIC statements' empty bodies are
/// cast for that reason).
macro_rules! column_positions {
    ($name:ident { $($col:ident),* $(,)? }) => {
        #[derive(Debug, Clone, Copy)]
        pub(crate) struct $name { $($col: usize),* }
        impl $name {
            pub(crate) fn of(row: &PgRow) -> Result<Self> {
                use sqlx::Column;
                Ok(Self { $($col: row.try_column(stringify!($col))?.ordinal()),* })
            }
        }
    };
}

column_positions!(AttemptColumns {
    attempt_number,
    attempted_at,
    success,
    status_code,
    response_body,
    response_truncated,
    response_time_ms,
    error_category,
    error_message,
    manual,
});

column_positions!(DeliveryColumns {
    id,
    request_id,
    message_id,
    organization_id,
    workspace_id,
    subscription_id,
    call_id,
    assistant_id,
    webhook_url,
    webhook_type,
    body,
    metadata,
    status,
    attempt_count,
    max_retries,
    next_attempt_at,
    expires_at,
    endpoint_id,
    created_at,
    updated_at,
});

/// The columns of a log: its delivery and message, and its latest attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogColumns {
    delivery: DeliveryColumns,
    attempt: AttemptColumns,
}

impl LogColumns {
    pub(crate) fn of(row: &PgRow) -> Result<Self> {
        Ok(Self { delivery: DeliveryColumns::of(row)?, attempt: AttemptColumns::of(row)? })
    }
}

/// A decoder of the rows of one result: finds the columns (`of`) in the
/// first row, then reads every row by position (`at`).
fn decoder<C: Copy, T>(
    of: fn(&PgRow) -> Result<C>,
    at: fn(&C, &PgRow) -> Result<T>,
) -> impl FnMut(&PgRow) -> Result<T> {
    let mut columns = None;
    move |row| {
        let c = match columns {
            Some(c) => c,
            None => *columns.insert(of(row)?),
        };
        at(&c, row)
    }
}

/// Decodes rows of attempts, finding the columns once.
pub(crate) fn attempts_from_rows(rows: &[PgRow]) -> Result<Vec<AttemptRecord>> {
    rows.iter().map(decoder(AttemptColumns::of, attempt_at)).collect()
}

/// A timestamptz read straight from its binary form, microseconds since
/// 2000-01-01 UTC. sqlx's own decode goes through `DateTime<FixedOffset>`
/// and `NaiveDateTime` arithmetic: about 380 instructions a value against
/// about 150 here. A log carries up to five; in a listing page's profile
/// they went from 17.5M to 7.0M of 390M instructions (docs/PERFORMANCE.md).
struct PgTime(DateTime<Utc>);

/// 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl sqlx::Type<sqlx::Postgres> for PgTime {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <DateTime<Utc> as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for PgTime {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        if value.format() == sqlx::postgres::PgValueFormat::Text {
            return <DateTime<Utc> as sqlx::Decode<sqlx::Postgres>>::decode(value).map(PgTime);
        }
        let micros = i64::from_be_bytes(value.as_bytes()?.try_into()?);
        micros
            .checked_add(POSTGRES_EPOCH_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .map(PgTime)
            .ok_or_else(|| format!("timestamptz {micros} is out of range").into())
    }
}

fn time_at(row: &PgRow, at: usize) -> Result<DateTime<Utc>> {
    Ok(row.try_get_unchecked::<PgTime, _>(at)?.0)
}

fn opt_time_at(row: &PgRow, at: usize) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get_unchecked::<Option<PgTime>, _>(at)?.map(|t| t.0))
}

fn attempt_at(c: &AttemptColumns, row: &PgRow) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        attempt_number: to_u32(row.try_get_unchecked(c.attempt_number)?),
        attempted_at: time_at(row, c.attempted_at)?,
        success: row.try_get_unchecked(c.success)?,
        status_code: row.try_get_unchecked(c.status_code)?,
        response_body: row.try_get_unchecked(c.response_body)?,
        response_truncated: row.try_get_unchecked(c.response_truncated)?,
        response_time_ms: row.try_get_unchecked(c.response_time_ms)?,
        error_category: row.try_get_unchecked(c.error_category)?,
        error_message: row.try_get_unchecked(c.error_message)?,
        manual: row.try_get_unchecked(c.manual)?,
    })
}

pub(crate) fn log_from_row(row: &PgRow) -> Result<LogRecord> {
    log_at(&LogColumns::of(row)?, row)
}

/// A decoder of streamed log rows that finds the columns in the first.
pub(crate) fn log_decoder() -> impl FnMut(&PgRow) -> Result<LogRecord> {
    decoder(LogColumns::of, log_at)
}

fn log_at(c: &LogColumns, row: &PgRow) -> Result<LogRecord> {
    let a = &c.attempt;
    // No latest attempt: the LEFT JOIN's columns are all NULL.
    let last_attempt = match sqlx::ValueRef::is_null(&row.try_get_raw(a.attempt_number)?) {
        false => Some(attempt_at(a, row)?),
        true => None,
    };
    let d = &c.delivery;
    Ok(LogRecord {
        log_id: row.try_get_unchecked(d.id)?,
        request_id: row.try_get_unchecked(d.request_id)?,
        message_id: row.try_get_unchecked(d.message_id)?,
        organization_id: row.try_get_unchecked(d.organization_id)?,
        workspace_id: row.try_get_unchecked(d.workspace_id)?,
        subscription_id: row.try_get_unchecked(d.subscription_id)?,
        call_id: row.try_get_unchecked(d.call_id)?,
        assistant_id: row.try_get_unchecked(d.assistant_id)?,
        webhook_url: row.try_get_unchecked(d.webhook_url)?,
        webhook_type: row.try_get_unchecked(d.webhook_type)?,
        body: row.try_get_unchecked(d.body)?,
        metadata: row.try_get_unchecked(d.metadata)?,
        status: status_from_db(row.try_get_unchecked(d.status)?)?,
        attempt_count: to_u32(row.try_get_unchecked(d.attempt_count)?),
        max_retries: to_u32(row.try_get_unchecked(d.max_retries)?),
        next_attempt_at: opt_time_at(row, d.next_attempt_at)?,
        expires_at: opt_time_at(row, d.expires_at)?,
        endpoint_id: row.try_get_unchecked(d.endpoint_id)?,
        created_at: time_at(row, d.created_at)?,
        updated_at: time_at(row, d.updated_at)?,
        last_attempt,
    })
}

pub(super) fn claim_from_row(row: &PgRow) -> Result<ClaimedDelivery> {
    Ok(ClaimedDelivery {
        log_id: row.try_get("id")?,
        created_at: row.try_get("created_at")?,
        request_id: row.try_get("request_id")?,
        lease_id: row.try_get("lease_id")?,
        webhook_url: row.try_get("webhook_url")?,
        webhook_type: row.try_get("webhook_type")?,
        body: row.try_get("body")?,
        attempt_count: to_u32(row.try_get("attempt_count")?),
        max_retries: to_u32(row.try_get("max_retries")?),
        message_id: row.try_get("message_id")?,
        organization_id: row.try_get("organization_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        endpoint: crate::store::endpoints::settings(row.try_get("endpoint_headers")?, row.try_get("endpoint_policy")?)?,
        secrets: crate::store::endpoints::sealed(
            row.try_get("secret")?,
            row.try_get("previous_secret")?,
            row.try_get("previous_secret_expires_at")?,
        ),
        queue_key: row.try_get::<Option<String>, _>("queue_key")?.unwrap_or_default(),
        manual_from: row.try_get::<Option<i32>, _>("manual_from")?.map_or(0, to_u32),
        hold: row.try_get("hold")?,
        endpoint_failures: to_u32(row.try_get("endpoint_failures")?),
        expires_at: row.try_get("expires_at")?,
    })
}
