//! A call's logs for the per-call route, one chunk (one keyset query) at a
//! time, so that a call of any size is streamed in bounded memory.

use super::{MAX_PAGE_BYTES, WebhookService, check_filter};
use crate::auth::Principal;
use crate::domain::{LogFilter, LogRecord};
use crate::error::Result;
use crate::store::{CallCursor, CallLogFilter, log_bytes};

/// Logs per chunk, at most.
const CALL_CHUNK: u32 = 100;

/// One chunk of a call's logs, and where the next one starts (`None`: this
/// was the last).
#[derive(Debug)]
pub struct CallChunk {
    pub logs: Vec<LogRecord>,
    /// The logs' bodies and URLs, as the byte budget counts them.
    pub bytes: usize,
    pub next: Option<CallChunkAfter>,
}

/// Where a chunk starts and how many logs it asks for.
#[derive(Debug, Clone, Copy)]
pub struct CallChunkAfter {
    cursor: CallCursor,
    rows: u32,
}

impl WebhookService {
    /// A chunk of a call's logs, in the per-call API's order (by attempt
    /// time): the first, or the one after `after`. It stops at the byte
    /// budget ([`MAX_PAGE_BYTES`] of bodies, at least one log). An
    /// organization key reads only its own.
    pub async fn call_logs(
        &self,
        who: &Principal,
        call_id: i64,
        webhook_type: Option<String>,
        after: Option<CallChunkAfter>,
    ) -> Result<CallChunk> {
        let filter = LogFilter { webhook_type: webhook_type.clone(), ..Default::default() };
        check_filter(&filter, &self.limits)?;
        let filter = CallLogFilter { organization_id: who.organization(), call_id, webhook_type };
        let rows = after.map_or(CALL_CHUNK, |a| a.rows);
        let batch = self.store.call_logs(&filter, after.map(|a| a.cursor), rows, MAX_PAGE_BYTES).await?;
        let bytes = batch.logs.iter().map(log_bytes).sum();
        let next = match batch.logs.last() {
            Some(last) if batch.more => {
                Some(CallChunkAfter { cursor: cursor_of(last), rows: rows_fitting(bytes, batch.logs.len()) })
            }
            _ => None,
        };
        Ok(CallChunk { logs: batch.logs, bytes, next })
    }

    /// Whether the call has any log the caller may read: one row asked for.
    pub async fn call_known(&self, who: &Principal, call_id: i64) -> Result<bool> {
        let filter = CallLogFilter { organization_id: who.organization(), call_id, webhook_type: None };
        Ok(!self.store.call_logs(&filter, None, 1, MAX_PAGE_BYTES).await?.logs.is_empty())
    }
}

/// How many logs the next chunk asks for: as many of the average size of
/// `count` logs of `bytes` as reach the byte budget, rounded down to a power
/// of two (or [`CALL_CHUNK`]).
///
/// Rows past a chunk's byte cut are sent by Postgres all the same and read
/// off the connection to be thrown away: for a call of large payloads,
/// asking for CALL_CHUNK rows every time made Postgres send ten times the
/// response (see the memory test in tests/api/processes.rs). Rounded, so
/// that a call's chunks use a few statement texts, not one per row count:
/// the count is a literal in the SQL, and sqlx caches prepared statements
/// per connection by text.
fn rows_fitting(bytes: usize, count: usize) -> u32 {
    let average = bytes.div_ceil(count.max(1)).max(1);
    match u32::try_from(MAX_PAGE_BYTES.div_ceil(average)) {
        Ok(fit) if fit < CALL_CHUNK => 1 << fit.ilog2(),
        _ => CALL_CHUNK,
    }
}

/// Where a log sits in the per-call order.
fn cursor_of(l: &LogRecord) -> CallCursor {
    CallCursor { at: l.last_attempt.as_ref().map_or(l.created_at, |a| a.attempted_at), log_id: l.log_id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_asks_for_what_its_budget_fits_in_a_few_sizes() {
        // Small logs: the full chunk.
        assert_eq!(rows_fitting(100 * 1_000, 100), CALL_CHUNK);
        // 250 kB logs: the ninth reaches the budget; eight asked for.
        assert_eq!(rows_fitting(9 * 250_000, 9), 8);
        // 1 MiB logs: the second reaches it exactly.
        assert_eq!(rows_fitting(2 << 20, 2), 2);
        // One log over the whole budget: one at a time.
        assert_eq!(rows_fitting(5 << 20, 1), 1);
        // Nothing read (cannot happen: a chunk holds at least one log).
        assert_eq!(rows_fitting(0, 0), CALL_CHUNK);
        // Every answer is one of a few.
        for size in (1..=3 << 20).step_by(997) {
            let rows = rows_fitting(size, 1);
            assert!(rows == CALL_CHUNK || rows.is_power_of_two(), "{size}: {rows}");
        }
    }
}
