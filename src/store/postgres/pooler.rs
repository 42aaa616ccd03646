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

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::Either;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Describe, Execute, Executor, PgConnection, Postgres, Transaction};

/// The store's pool, and whether a transaction pooler stands between it and
/// Postgres.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    pooled: bool,
}

impl Db {
    pub fn new(pool: PgPool, pooled: bool) -> Self {
        Self { pool, pooled }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(Tx { tx: self.pool.begin().await?, pooled: self.pooled })
    }

    /// One connection for reads that follow one another. sqlx tests a
    /// connection with a round trip (Sync, ReadyForQuery) each time it goes
    /// back to the pool, on another task; between two statements that test
    /// ran beside the second one, and the two statements of GetLogDetails
    /// took 0.1 ms longer than on one connection (docs/PERFORMANCE.md).
    /// Behind a pooler it is a transaction, which pins one server
    /// connection (and saves each statement its own BEGIN and COMMIT).
    pub async fn session(&self) -> Result<Session, sqlx::Error> {
        Ok(match self.pooled {
            false => Session::Direct(self.pool.acquire().await?),
            true => Session::Pooled(self.begin().await?),
        })
    }
}

/// Statements in a row on one connection: see [`Db::session`].
pub enum Session {
    Direct(PoolConnection<Postgres>),
    Pooled(Tx),
}

impl Session {
    pub fn ex(&mut self) -> Conn<'_> {
        match self {
            Session::Direct(conn) => Conn { conn: &mut *conn, pooled: false },
            Session::Pooled(tx) => tx.ex(),
        }
    }

    /// Ends the session: behind a pooler, commits its transaction.
    pub async fn finish(self) -> Result<(), sqlx::Error> {
        match self {
            Session::Direct(_) => Ok(()),
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
            return self.pool.fetch_many(query);
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
            return self.pool.fetch_optional(query);
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
