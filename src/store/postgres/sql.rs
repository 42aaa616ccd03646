//! The statements behind the store's hot paths, public so that the
//! benchmark's pgbench baselines run exactly the same SQL.

pub use super::record::RECORD_ATTEMPTS;

/// The end of both claim statements (after `UPDATE … FROM <picked rows>`):
/// what a claim returns, with its endpoint's settings and the secrets
/// that sign it.
///
/// Every lookup in the hot statements is a `LATERAL … LIMIT 1` probe on
/// a key: a plain join's shape depends on the table sizes the planner
/// sees, and the generic plan a prepared statement settles on after five
/// runs is kept for the life of the connection. Planned while the day's
/// partitions were nearly empty, a join became a hash over a sequential
/// scan of the whole table, run on every batch for the rest of the day
/// (the 100k backlog drain slowed from 2,500/s to 900/s that way, with
/// `autovacuum` off and so no `ANALYZE` to replan it). The claims update
/// the rows they locked by `id = ANY(<their IDs>)` (IDs are unique across
/// partitions): a restriction, not a join, so it cannot become a hash
/// over the table. Not by ctid: a row updated after the statement's
/// snapshot is locked in its newest version, whose ctid the snapshot's
/// version does not have. `tests/api/plans.rs` checks the shapes on
/// never-analyzed empty tables. A table analyzed while empty is planned
/// from its real size, so a generic plan made then can still scan it
/// whole until the next ANALYZE replans it (autovacuum's, in production).
///
/// A claim commits without waiting for its WAL flush (`synchronous_commit`
/// off for its own transaction, set in the statement so that it costs no
/// round trip). A lease is not something to keep: a claim lost in a
/// database crash leaves its deliveries unclaimed, so they are sent again
/// (at-least-once, as after any crash); the attempt made under the lost
/// lease is still recorded, as a late attempt (kept, not the log's latest,
/// counted toward max_retries). The attempt's record, which does wait for
/// its flush, is later in the WAL than the claim, so a durable record
/// implies a durable claim. Under Dispatch load the flush wait was most
/// of a claim's time; the claimer, one round at a time, was what kept
/// delivery behind acceptance (docs/PERFORMANCE.md).
macro_rules! claimed_with {
    () => {
        "RETURNING r.id, r.created_at, r.request_id, r.lease_id, r.webhook_url, r.webhook_type, \
                   r.attempt_count, r.max_retries, r.message_id, r.organization_id, r.endpoint_id, \
                   r.queue_key, r.manual_from, r.expires_at) \
         SELECT c.*, m.body, e.headers::text AS endpoint_headers, e.policy::text AS endpoint_policy, \
           COALESCE(e.paused OR e.disabled, false) AS hold, \
           COALESCE(e.consecutive_failures, 0) AS endpoint_failures, \
           CASE WHEN c.endpoint_id IS NULL THEN o.secret ELSE e.secret END AS secret, \
           CASE WHEN c.endpoint_id IS NULL THEN o.previous_secret ELSE e.previous_secret END \
             AS previous_secret, \
           CASE WHEN c.endpoint_id IS NULL THEN o.previous_secret_expires_at \
             ELSE e.previous_secret_expires_at END AS previous_secret_expires_at \
         FROM claimed c \
         CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) lazy_commit \
         CROSS JOIN LATERAL (SELECT m.body FROM webhook_messages m \
           WHERE m.message_id = c.message_id AND m.created_at = c.created_at LIMIT 1) m \
         LEFT JOIN LATERAL (SELECT * FROM endpoints e WHERE e.endpoint_id = c.endpoint_id LIMIT 1) e ON true \
         LEFT JOIN LATERAL (SELECT * FROM organization_secrets o \
           WHERE c.endpoint_id IS NULL AND o.organization_id = c.organization_id LIMIT 1) o ON true"
    };
}

/// The columns of a log: the delivery (`r`), its message (`m`) and its
/// latest attempt (`a`); given the message's body columns and the
/// attempt's, a log in the BASIC view (see `LOGS_BY_ID_BASIC`).
macro_rules! log_columns {
    () => {
        log_columns!("m.body, m.metadata", "a.response_body")
    };
    ($message_bodies:literal, $response_body:literal) => {
        concat!(
            "SELECT r.id, r.request_id, r.organization_id, r.workspace_id, r.subscription_id, \
             r.endpoint_id, r.message_id, \
             r.call_id, m.assistant_id, r.webhook_url, r.webhook_type, ",
            $message_bodies,
            ", r.status, \
             r.attempt_count, r.max_retries, r.next_attempt_at, r.created_at, r.updated_at, r.expires_at, \
             a.attempt_number, a.attempted_at, a.success, a.status_code, ",
            $response_body,
            ", a.response_truncated, a.response_time_ms, a.error_category, a.error_message, a.manual "
        )
    };
}
/// A delivery's latest recorded attempt, by its key.
macro_rules! latest_attempt {
    () => {
        "LEFT JOIN LATERAL (SELECT * FROM webhook_attempts la \
           WHERE la.request_pk = r.id AND la.request_created_at = r.created_at AND la.held \
           ORDER BY la.attempt_number DESC LIMIT 1) a ON true"
    };
}

/// Logs, to be followed by a WHERE on the delivery (`r`).
pub const LOG_SELECT: &str = concat!(
    log_columns!(),
    "FROM webhook_requests r \
     JOIN webhook_messages m ON m.message_id = r.message_id AND m.created_at = r.created_at ",
    latest_attempt!()
);

/// A lookup of logs by key (see [`LOGS_BY_ID`]) with these columns, and
/// these of the message.
macro_rules! logs_by_id {
    ([$($columns:tt)*], $message_columns:literal) => {
        concat!(
            $($columns)*,
            "FROM (SELECT id, created_at, min(n) AS n \
               FROM unnest($1::int8[], $2::timestamptz[]) WITH ORDINALITY AS u(id, created_at, n) \
               GROUP BY id, created_at) AS k \
             CROSS JOIN LATERAL (SELECT * FROM webhook_requests r \
               WHERE r.id = k.id AND r.created_at = k.created_at LIMIT 1) r \
             CROSS JOIN LATERAL (SELECT ",
            $message_columns,
            " FROM webhook_messages m \
               WHERE m.message_id = r.message_id AND m.created_at = r.created_at LIMIT 1) m ",
            latest_attempt!(),
            " ORDER BY k.n"
        )
    };
}

/// The logs of the deliveries keyed ($1 IDs, $2 their creation times),
/// each found by its key, once however often it is named, in the order
/// first named (so that a reader can stop at a byte budget). Not `WHERE
/// (r.id, r.created_at) IN (…)`: on tables never analyzed, Postgres
/// planned that as a parallel hash join over every delivery and message,
/// read on every look of the live tail.
pub const LOGS_BY_ID: &str = logs_by_id!([log_columns!()], "m.assistant_id, m.body, m.metadata");

/// [`LOGS_BY_ID`] in the BASIC view: the bodies (payload, metadata, the
/// latest response) as empty as `LogRecord::strip_bodies` leaves them,
/// never read from the tables. The live tail reads so while no watcher
/// asks for FULL: a batch of 500 logs with 256 KiB payloads is 125 MiB.
pub const LOGS_BY_ID_BASIC: &str = logs_by_id!(
    [log_columns!("''::text AS body, NULL::jsonb AS metadata", "''::text AS response_body")],
    "m.assistant_id"
);

/// A page of the log listing, in two steps: the deliveries (`r`) with
/// their latest attempts (`a`) are filtered, ordered and limited first,
/// and only the page is joined to its messages. Joined before the limit,
/// Postgres estimates the two-column message join at one row whatever the
/// filter, and for a narrow filter (a status and a time bound) hashed the
/// whole messages table and sorted, rather than read the page in index
/// order (see the plan test in tests/api/filter.rs).
pub const LIST_PAGE: &str = "SELECT p.*, m.assistant_id, m.body, m.metadata FROM ( \
     SELECT r.id, r.request_id, r.organization_id, r.workspace_id, r.subscription_id, r.endpoint_id, \
     r.call_id, r.webhook_url, r.webhook_type, r.status, r.attempt_count, r.max_retries, r.next_attempt_at, \
     r.created_at, r.updated_at, r.expires_at, r.message_id, \
     a.attempt_number, a.attempted_at, a.success, a.status_code, a.response_body, \
     a.response_truncated, a.response_time_ms, a.error_category, a.error_message, a.manual \
     FROM webhook_requests r \
     LEFT JOIN LATERAL (SELECT * FROM webhook_attempts la \
         WHERE la.request_pk = r.id AND la.request_created_at = r.created_at AND la.held \
         ORDER BY la.attempt_number DESC LIMIT 1) a ON true";
/// What closes [`LIST_PAGE`] after its WHERE, ORDER BY and LIMIT.
pub const LIST_PAGE_END: &str = ") p JOIN webhook_messages m ON m.message_id = p.message_id \
     AND m.created_at = p.created_at ORDER BY p.created_at DESC, p.id DESC";

/// Dispatch to one endpoint or URL: the idempotency key row (if any),
/// the message and its delivery, one statement.
pub const INSERT_DELIVERY: &str = "WITH key AS ( \
               INSERT INTO idempotency_keys (organization_id, idempotency_key, request_id, log_id, created_at, \
                 message_id) \
               SELECT $2, $11, $1, nextval('webhook_requests_log_id_seq'), now(), $13 WHERE $11::text IS NOT NULL \
               ON CONFLICT DO NOTHING RETURNING log_id), \
             ins AS ( \
               INSERT INTO webhook_requests (id, request_id, organization_id, workspace_id, subscription_id, \
                 call_id, webhook_url, webhook_type, max_retries, next_attempt_at, message_id, endpoint_id, \
                 queue_key, created_at, status, expires_at) \
               SELECT COALESCE((SELECT log_id FROM key), nextval('webhook_requests_log_id_seq')), \
                 $1, $2, $3, $4, $5, $7, $8, $12, CASE WHEN NOT $16 THEN now() END, $13, $14, $15, now(), \
                 CASE WHEN $16 THEN 'held' ELSE 'pending' END, $17 \
               WHERE $11::text IS NULL OR EXISTS (SELECT 1 FROM key) \
               RETURNING id, created_at), \
             msg AS ( \
               INSERT INTO webhook_messages (message_id, organization_id, workspace_id, webhook_type, body, \
                 call_id, assistant_id, metadata, idempotency_key, created_at) \
               SELECT $13, $2, $3, $8, $9, $5, $6, $10, $11, created_at FROM ins) \
             SELECT id FROM ins";

/// Claims up to $1 due deliveries for a lease of $2 milliseconds.
pub const CLAIM_DUE: &str = concat!(
    "WITH due AS ( \
               SELECT id, created_at FROM webhook_requests \
               WHERE status = 'pending' AND next_attempt_at <= now() \
                 AND (lease_id IS NULL OR COALESCE(leased_until, '-infinity') <= now()) \
               ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED), \
             claimed AS ( \
               UPDATE webhook_requests r \
               SET leased_until = now() + make_interval(secs => $2::float8 / 1000), \
                   lease_id = gen_random_uuid() \
               WHERE r.id = ANY(ARRAY(SELECT id FROM due)) AND r.created_at = ANY(ARRAY(SELECT created_at FROM due)) \
               ",
    claimed_with!()
);

/// The queues with pending deliveries after $1 in key order, at most $2,
/// each with whether its oldest delivery is due and its endpoint's caps.
/// One index probe per queue (a loose index scan), so the cost follows
/// the number of queues, never their backlogs. A claimed delivery keeps
/// its due time, so a queue whose work is all in flight looks due here
/// (the engine copes: see `Engine::run`). Asking whether a due row is
/// free of a lease cost a second walk over the queue's head on every
/// round, and delivery under Dispatch load fell from 1.00 to 0.7 of
/// acceptance.
pub const DUE_QUEUES: &str = "WITH RECURSIVE keys(k, due_at, n) AS ( \
               (SELECT queue_key, next_attempt_at, 1 FROM webhook_requests \
                WHERE status = 'pending' AND queue_key > $1 ORDER BY queue_key, next_attempt_at LIMIT 1) \
               UNION ALL \
               (SELECT nxt.queue_key, nxt.next_attempt_at, keys.n + 1 FROM keys \
                CROSS JOIN LATERAL (SELECT queue_key, next_attempt_at FROM webhook_requests \
                  WHERE status = 'pending' AND queue_key > keys.k ORDER BY queue_key, next_attempt_at LIMIT 1) nxt \
                WHERE keys.n < $2)) \
             SELECT keys.k, keys.due_at <= now() AS due, \
               (e.policy->>'max_in_flight')::int4 AS max_in_flight, \
               (e.policy->>'rate_limit_per_second')::int4 AS rate_limit_per_second \
             FROM keys LEFT JOIN LATERAL (SELECT e.policy FROM endpoints e \
               WHERE e.endpoint_id = CASE WHEN left(keys.k, 2) = 'e:' THEN substr(keys.k, 3)::uuid END \
               LIMIT 1) e ON true \
             ORDER BY keys.n";

/// Claims, from each queue in $1, up to its quota in $2 of due deliveries,
/// oldest first, for a lease of $3 milliseconds; with each its endpoint's
/// settings and the secrets that sign it.
pub const CLAIM_FROM: &str = concat!(
    "WITH picked AS ( \
               SELECT r.id, r.created_at FROM unnest($1::text[], $2::int4[]) AS q(k, quota) \
               CROSS JOIN LATERAL (SELECT id, created_at FROM webhook_requests \
                 WHERE status = 'pending' AND queue_key = q.k AND next_attempt_at <= now() \
                   AND (lease_id IS NULL OR COALESCE(leased_until, '-infinity') <= now()) \
                 ORDER BY next_attempt_at LIMIT q.quota FOR UPDATE SKIP LOCKED) r), \
             claimed AS ( \
               UPDATE webhook_requests r \
               SET leased_until = now() + make_interval(secs => $3::float8 / 1000), \
                   lease_id = gen_random_uuid() \
               WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) AND r.created_at = ANY(ARRAY(SELECT created_at FROM picked)) \
               ",
    claimed_with!()
);

/// Gives claimed deliveries back, due again after $4 milliseconds.
///
/// Rare (a delivery this replica may not send), so a connection may run
/// it for the first time when the day's partition is large, with a plan
/// made while it was small. So it is shaped as the claims are: each row
/// is found by a `LATERAL … LIMIT 1` probe on its key (the limit keeps
/// the status test out of the probe, where it made the index of pending
/// rows look cheaper than the key) and locked, in ID order as the
/// records lock theirs, and the update takes the locked rows by
/// `id = ANY(…)`; and it is planned with `enable_seqscan` off (see
/// [`SEQSCAN_OFF`]). (A join of the table with the claimed pairs,
/// filtered by status, was planned as a walk over every pending row.)
pub const RELEASE: &str = "WITH picked AS ( \
       SELECT r.id, r.created_at \
       FROM (SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[]) AS c(id, lease_id, created_at) \
         ORDER BY id) c \
       CROSS JOIN LATERAL (SELECT r.id, r.created_at, r.lease_id, r.status FROM webhook_requests r \
         WHERE r.id = c.id AND r.created_at = c.created_at LIMIT 1 FOR NO KEY UPDATE) r \
       WHERE r.lease_id = c.lease_id AND r.status = 'pending') \
     UPDATE webhook_requests r \
     SET next_attempt_at = now() + make_interval(secs => $4::float8 / 1000), lease_id = NULL \
     WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) \
       AND r.created_at = ANY(ARRAY(SELECT created_at FROM picked))";

/// Set in the transaction of the rare statements that give claims back
/// or hold them ([`RELEASE`], [`HOLD`]), before they run, so that they
/// are planned as the claims are on their own connections (see
/// `claims_pool`): on a partition of a few hundred rows, the update of
/// the rows found by key was otherwise planned as a scan of the
/// partition, a plan the connection keeps. They run on the main pool:
/// the claims' three connections are the claimer's, and a release per
/// delivery (a replica that cannot open a delivery's secret) or a hold
/// waiting on an endpoint's lock must not take them from it.
pub const SEQSCAN_OFF: &str = "SET LOCAL enable_seqscan = off";

/// Holds claimed deliveries whose endpoint is paused or disabled, and
/// gives back, due now, those whose endpoint was resumed since the claim.
/// The endpoint is read again here, its row locked FOR SHARE: a resume
/// that committed since the claim releases the delivery instead, and one
/// still running waits for this to commit and then releases what it
/// held. Holding on the claim's stale view could strand a delivery held
/// on an active endpoint. Rare, and shaped and planned as [`RELEASE`] is.
pub const HOLD: &str = "WITH picked AS MATERIALIZED ( \
       SELECT r.id, r.created_at, r.endpoint_id \
       FROM (SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[]) AS c(id, lease_id, created_at) \
         ORDER BY id) c \
       CROSS JOIN LATERAL (SELECT r.id, r.created_at, r.lease_id, r.status, r.endpoint_id \
         FROM webhook_requests r WHERE r.id = c.id AND r.created_at = c.created_at LIMIT 1 FOR NO KEY UPDATE) r \
       WHERE r.lease_id = c.lease_id AND r.status = 'pending'), \
     still AS (SELECT e.endpoint_id FROM (SELECT DISTINCT endpoint_id FROM picked) p \
       CROSS JOIN LATERAL (SELECT e.endpoint_id FROM endpoints e \
         WHERE e.endpoint_id = p.endpoint_id AND (e.paused OR e.disabled) FOR SHARE) e), \
     upd AS (UPDATE webhook_requests r SET \
       status = CASE WHEN r.endpoint_id IN (SELECT endpoint_id FROM still) THEN 'held' ELSE 'pending' END, \
       next_attempt_at = CASE WHEN r.endpoint_id IN (SELECT endpoint_id FROM still) THEN NULL ELSE now() END, \
       lease_id = NULL, updated_at = now() \
     WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) \
       AND r.created_at = ANY(ARRAY(SELECT created_at FROM picked)) \
     RETURNING r.id, r.created_at, r.status) \
     INSERT INTO delivery_events (log_id, request_created_at, status, reason) \
     SELECT id, created_at, 'held', 'held' FROM upd WHERE status = 'held'";

/// Records one attempt and the request's new state, one statement. A
/// claim records at most one attempt: if this lease's attempt is already
/// there (the reply to an earlier try was lost), nothing changes. Retry or
/// fail is decided on the locked row: a retry past max_retries (counting
/// late attempts) fails. A late attempt (lease lost) is kept, marked not
/// held, and changes neither the status nor the log's latest attempt.
pub const RECORD_ATTEMPT: &str = "WITH old AS ( \
               SELECT id, attempt_count, max_retries, manual_from, \
                 COALESCE(lease_id = $2 AND status = 'pending', false) AS held \
               FROM webhook_requests r \
               LEFT JOIN LATERAL (SELECT true AS found FROM webhook_attempts \
                   WHERE request_pk = $1 AND lease_id = $2 AND request_created_at = $13 LIMIT 1) seen ON true \
               WHERE r.id = $1 AND r.created_at = $13 AND seen.found IS NULL \
               FOR UPDATE OF r), \
             dec AS ( \
               SELECT old.*, CASE WHEN NOT old.held THEN NULL \
                 WHEN $3 = 'pending' AND old.attempt_count + 1 - COALESCE(old.manual_from, 0) > old.max_retries \
                   THEN 'failed' \
                 ELSE $3 END AS new_status FROM old), \
             upd AS ( \
               UPDATE webhook_requests r SET \
                 attempt_count = dec.attempt_count + 1, \
                 status = COALESCE(dec.new_status, r.status), \
                 next_attempt_at = CASE WHEN NOT dec.held THEN r.next_attempt_at \
                   WHEN dec.new_status = 'pending' THEN now() + make_interval(secs => $4::float8 / 1000) END, \
                 lease_id = CASE WHEN dec.held THEN NULL ELSE r.lease_id END, \
                 leased_until = CASE WHEN dec.held THEN NULL ELSE r.leased_until END, \
                 updated_at = now() \
               FROM dec WHERE r.id = dec.id AND r.created_at = $13 \
               RETURNING r.id, r.created_at, r.attempt_count, dec.held, dec.manual_from IS NOT NULL AS manual), \
             ins AS ( \
               INSERT INTO webhook_attempts (request_pk, request_created_at, attempt_number, attempted_at, \
                 success, status_code, response_body, response_truncated, response_time_ms, error_category, \
                 error_message, lease_id, held, manual) \
               SELECT id, created_at, attempt_count, $5, $6, $7, $8, $9, $10, $11, $12, $2, held, manual FROM upd) \
             SELECT COALESCE((SELECT held FROM old), EXISTS (SELECT 1 FROM webhook_attempts \
               WHERE request_pk = $1 AND lease_id = $2 AND request_created_at = $13)) AS held";
