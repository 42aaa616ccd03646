//! Statements that work both on a direct connection and behind a connection
//! pooler in transaction mode (PgBouncer `pool_mode = transaction`).
//!
//! Behind such a pooler a client holds a server connection only for the
//! length of a transaction; between transactions its next message may reach
//! another server. sqlx speaks the extended protocol in two round trips
//! (Parse/Describe/Sync, then Bind/Execute/Sync) and by default names and
//! caches its prepared statements per connection. Both break there: the Bind
//! may reach a server that never saw the Parse (or saw another client's
//! unnamed statement), and a cached name may not exist on, or already exist
//! on, the server reached. PgBouncer learned to track prepared statements in
//! 1.21; Debian's is 1.18, and many deployments run older ones.
//!
//! So, behind a pooler ([`Db::pooled`]), every statement runs unnamed (never
//! cached), and a statement not already inside a transaction runs in one of
//! its own, which pins the server connection from Parse to the end. Session
//! state is never relied on: hookpost sets nothing with `SET`, and what needs
//! a session (LISTEN, maintenance's advisory lock, migrations) connects to the
//! database directly (see `PostgresStore::connect_with`).
//!
//! Direct (the default), [`Db`] and [`Tx`] are the pool and its transaction,
//! with sqlx's statement cache.
//!
//! Not covered: `prepare`/`describe` (named by sqlx, never used by the store)
//! and sqlx's own lookups of custom type OIDs (named too). The schema uses
//! built-in types only; a custom type (an enum, a domain) would need them
//! made safe first.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::Either;
use sqlx::postgres::{PgPool, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Describe, Execute, Executor, PgConnection, Postgres, Transaction};

use super::warm::{Out, Warm};

/// The store's pool, and whether a transaction pooler stands between it and
/// Postgres.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    pooled: bool,
    /// Direct only: connections between statements (see `warm`).
    warm: Arc<Warm>,
}

impl Db {
    pub fn new(pool: PgPool, pooled: bool) -> Self {
        let warm = Arc::<Warm>::default();
        warm.spawn_sweeper();
        Self { pool, pooled, warm }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether a transaction pooler stands between this pool and Postgres.
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// The pool's connections: (in use, idle), the warm ones counted idle.
    pub fn usage(&self) -> (u32, u32) {
        let size = self.pool.size();
        let warm = u32::try_from(self.warm.len()).unwrap_or(u32::MAX);
        let idle = crate::store::idle_connections(&self.pool).saturating_add(warm).min(size);
        (size - idle, idle)
    }

    /// A connection for statements run to their end, then [`Lease::done`].
    async fn lease(&self) -> Result<Lease, sqlx::Error> {
        Ok(Lease { out: self.warm.lease(&self.pool).await?, db: self.clone() })
    }

    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        // sqlx's transaction takes its connection from the pool itself:
        // make one warm connection takeable there, so that it never waits
        // on connections parked warm.
        self.warm.give_back();
        Ok(Tx { tx: self.pool.begin().await?, pooled: self.pooled })
    }

    /// One connection for reads that follow one another. sqlx tests a
    /// connection with a round trip (Sync, ReadyForQuery) each time it goes
    /// back to the pool, on another task; between two statements that test
    /// ran beside the second one, and the two statements of GetLogDetails
    /// took 0.1 ms longer than on one connection (docs/PERFORMANCE.md).
    /// (Warm connections now spare statements that end cleanly that test;
    /// the session still keeps the two on one connection.)
    /// Behind a pooler it is a transaction, which pins one server
    /// connection (and saves each statement its own BEGIN and COMMIT).
    pub async fn session(&self) -> Result<Session, sqlx::Error> {
        Ok(match self.pooled {
            false => Session::Direct(self.lease().await?),
            true => Session::Pooled(self.begin().await?),
        })
    }
}

/// A connection of [`Db`]: kept warm by [`Lease::done`] once its statements
/// have run to their end; dropped before that, it goes back to sqlx's pool,
/// which tests it (see `warm`).
pub struct Lease {
    out: Out,
    db: Db,
}

impl Lease {
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.out.conn
    }

    fn done(self) {
        self.db.warm.keep(&self.db.pool, self.out);
    }
}

/// Statements in a row on one connection: see [`Db::session`].
pub enum Session {
    Direct(Lease),
    Pooled(Tx),
}

impl Session {
    pub fn ex(&mut self) -> Conn<'_> {
        match self {
            Session::Direct(lease) => Conn { conn: lease.conn(), pooled: false },
            Session::Pooled(tx) => tx.ex(),
        }
    }

    /// Ends the session (its statements all ran to their end): behind a
    /// pooler, commits its transaction.
    pub async fn finish(self) -> Result<(), sqlx::Error> {
        match self {
            Session::Direct(lease) => {
                lease.done();
                Ok(())
            }
            Session::Pooled(tx) => tx.commit().await,
        }
    }
}

/// A transaction on [`Db`]: run statements on [`Tx::ex`].
pub struct Tx {
    tx: Transaction<'static, Postgres>,
    pooled: bool,
}

impl Tx {
    /// The transaction's connection as an executor.
    pub fn ex(&mut self) -> Conn<'_> {
        Conn { conn: &mut self.tx, pooled: self.pooled }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// A connection inside a [`Tx`].
#[derive(Debug)]
pub struct Conn<'c> {
    conn: &'c mut PgConnection,
    pooled: bool,
}

/// A query that is never prepared under a name (so never cached).
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(&self) -> &'q str {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement<'q>> {
        None
    }

    fn take_arguments(&mut self) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

type Step = Either<PgQueryResult, PgRow>;

impl<'c> Executor<'c> for Conn<'c> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Step, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.pooled { self.conn.fetch_many(Unnamed(query)) } else { self.conn.fetch_many(query) }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.pooled { self.conn.fetch_optional(Unnamed(query)) } else { self.conn.fetch_optional(query) }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.conn.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.conn.describe(sql)
    }
}

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Step, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            let db = self.clone();
            return async_stream::try_stream! {
                let mut lease = db.lease().await?;
                {
                    let mut steps = lease.conn().fetch_many(query);
                    while let Some(step) = steps.try_next().await? {
                        yield step;
                    }
                }
                // Not reached if the reader stopped early: the lease then
                // goes back to sqlx's pool, which drains the rest.
                lease.done();
            }
            .boxed();
        }
        let pool = self.pool.clone();
        async_stream::try_stream! {
            let mut tx = pool.begin().await?;
            {
                let mut steps = (&mut *tx).fetch_many(Unnamed(query));
                while let Some(step) = steps.try_next().await? {
                    yield step;
                }
            }
            // Dropped before here (a reader that stopped early), the
            // transaction rolls back: only reads are ever read partly.
            tx.commit().await?;
        }
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            let db = self.clone();
            return Box::pin(async move {
                let mut lease = db.lease().await?;
                // sqlx reads on to the statement's ReadyForQuery.
                let row = lease.conn().fetch_optional(query).await?;
                lease.done();
                Ok(row)
            });
        }
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            let row = (&mut *tx).fetch_optional(Unnamed(query)).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.describe(sql)
    }
}

#[cfg(test)]
mod tests {
    //! Warm connections, on the Postgres the test suite runs against.
    use std::time::Duration;

    use futures_util::TryStreamExt;
    use sqlx::postgres::PgPoolOptions;

    use super::*;

    fn admin_url() -> String {
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    async fn test_db(max: u32) -> Db {
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .connect(&admin_url())
            .await
            .expect("the test Postgres");
        Db::new(pool, false)
    }

    async fn backend(db: &Db) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(db).await.unwrap()
    }

    #[tokio::test]
    async fn a_statement_run_to_its_end_leaves_its_connection_warm_for_the_next() {
        let db = test_db(4).await;
        let first = backend(&db).await;
        assert_eq!(db.warm.len(), 1);
        assert_eq!(db.usage(), (0, 1), "a warm connection counts as idle");
        assert_eq!(backend(&db).await, first);
        let mut session = db.session().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(session.ex()).await.unwrap();
        assert_eq!(pid, first);
        assert_eq!(db.warm.len(), 0, "taken by the session");
        session.finish().await.unwrap();
        assert_eq!(db.warm.len(), 1);
    }

    #[tokio::test]
    async fn a_statement_cut_short_goes_back_to_sqlx_and_the_next_reads_its_own_rows() {
        let db = test_db(4).await;
        // Cancelled mid-statement.
        let slow = sqlx::query("SELECT pg_sleep(5)").execute(&db);
        assert!(tokio::time::timeout(Duration::from_millis(100), slow).await.is_err());
        assert_eq!(db.warm.len(), 0);
        // A reader that stops after one row of many.
        let mut rows = sqlx::query_scalar::<_, i32>("SELECT generate_series(1, 100000)").fetch(&db);
        assert_eq!(rows.try_next().await.unwrap(), Some(1));
        drop(rows);
        assert_eq!(db.warm.len(), 0);
        // A failed statement.
        assert!(sqlx::query("SELECT 1/0").execute(&db).await.is_err());
        assert_eq!(db.warm.len(), 0);
        for i in 0..4 {
            let got: i32 = sqlx::query_scalar("SELECT $1").bind(i).fetch_one(&db).await.unwrap();
            assert_eq!(got, i);
        }
    }

    #[tokio::test]
    async fn no_connection_is_kept_warm_while_the_pool_has_none_to_give() {
        let db = test_db(3).await;
        let (a, b, c) = (db.lease().await.unwrap(), db.lease().await.unwrap(), db.lease().await.unwrap());
        assert_eq!(db.pool.size(), 3);
        a.done();
        assert_eq!(db.warm.len(), 0, "the pool was spent: back to it");
        // What takes connections from the pool itself gets that one.
        let direct = db.pool.acquire().await.expect("a connection from the pool");
        drop((b, c, direct));
        // A pool of two keeps none warm (RESERVED).
        let two = test_db(2).await;
        backend(&two).await;
        assert_eq!(two.warm.len(), 0);
    }

    #[tokio::test]
    async fn a_transaction_gets_a_connection_while_the_rest_of_the_pool_is_warm_or_taken() {
        let db = test_db(4).await;
        let (a, b) = (db.lease().await.unwrap(), db.lease().await.unwrap());
        a.done();
        b.done();
        assert_eq!(db.warm.len(), 2);
        let held = (db.pool.acquire().await.unwrap(), db.pool.acquire().await.unwrap());
        assert_eq!(db.pool.size(), 4);
        // The pool's acquire timeout (5 s) would fail it otherwise.
        let mut tx = db.begin().await.expect("a transaction");
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(tx.ex()).await.unwrap();
        assert_eq!(one, 1);
        tx.commit().await.unwrap();
        drop(held);
    }

    #[tokio::test]
    async fn connections_unused_for_the_idle_time_go_back_to_sqlx() {
        let db = test_db(4).await;
        backend(&db).await;
        assert_eq!(db.warm.len(), 1);
        db.warm.sweep(std::time::Instant::now());
        assert_eq!(db.warm.len(), 1, "used just now");
        db.warm.sweep(std::time::Instant::now() + super::super::warm::IDLE);
        assert_eq!(db.warm.len(), 0);
        assert!(backend(&db).await > 0);
    }

    #[tokio::test]
    async fn a_connection_out_longer_than_the_pools_lifetime_goes_back_to_sqlx() {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .max_lifetime(Duration::from_millis(50))
            .connect(&admin_url())
            .await
            .unwrap();
        let db = Db::new(pool, false);
        let mut lease = db.lease().await.unwrap();
        let first: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(lease.conn()).await.unwrap();
        lease.out.since -= Duration::from_millis(100);
        lease.done();
        assert_eq!(db.warm.len(), 0, "past max_lifetime: back to sqlx");
        // sqlx closes it there (past its own lifetime) and opens another.
        let next = eventually_other_backend(&db, first).await;
        assert_ne!(next, first);
    }

    async fn eventually_other_backend(db: &Db, old: i32) -> i32 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let pid = backend(db).await;
            if pid != old || std::time::Instant::now() > deadline {
                return pid;
            }
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn warm_connections_outlive_their_runtime_without_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let db = rt.block_on(async {
            let db = test_db(4).await;
            backend(&db).await;
            db
        });
        assert_eq!(db.warm.len(), 1);
        drop(rt);
        drop(db);
    }
}
