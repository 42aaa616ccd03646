//! Connections kept checked out of sqlx's pool between statements.
//!
//! sqlx 0.8 tests every connection it takes back into its pool with a round
//! trip (Sync, then ReadyForQuery; `Floating::return_to_pool`), on a task of
//! its own, and cannot be told not to. On two cores that test, and the
//! Postgres backend waking to answer it, ran beside the rest of the request:
//! a page of the log listing took 0.2–0.5 ms longer with it than without
//! (docs/PERFORMANCE.md), and every Dispatch batch and attempt record paid
//! a round trip more.
//!
//! So a statement that ran to its end leaves its connection here, still
//! checked out, for the next statement to take. The test has nothing to
//! find on such a connection: it has just read its ReadyForQuery. Anything
//! else (an error, a stream dropped early, a future cancelled mid-statement)
//! drops the connection into sqlx's pool as before, whose test drains it or
//! closes it.
//!
//! Limits keep the pool itself whole, for what takes its connections
//! without passing here (sqlx's transactions, LISTEN):
//! - a connection is kept only while the pool could still hand out another
//!   (one idle, or room to open one), and never more than all but
//!   [`RESERVED`] of the pool's connections (a pool of two keeps none);
//! - a transaction first gives one warm connection back (`Db::begin`), so
//!   it never waits on idle connections parked here;
//! - one unused for [`IDLE`] goes back to sqlx (swept every [`IDLE`]),
//!   whose idle timeout and lifetime then apply to it again; one out of the
//!   pool for longer than the pool's `max_lifetime` goes back when next
//!   done with, so that sqlx still recycles the connections that never rest.
//!
//! Nothing closes a `Db`'s pool: `Pool::close` would wait for the warm
//! connections too, so a caller added later must give them back first.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// How long a connection may sit here unused before it goes back to sqlx.
pub const IDLE: Duration = Duration::from_secs(30);

/// Connections of the pool never kept here: the LISTEN connection, and one
/// for whatever else takes from the pool directly while the rest are warm.
pub const RESERVED: u32 = 2;

type Conn = PoolConnection<Postgres>;

/// A connection out of sqlx's pool, and since when.
pub struct Out {
    pub conn: Conn,
    pub since: Instant,
}

/// A warm connection and when it was last done with.
struct Entry {
    out: Out,
    used: Instant,
}

/// The warm connections of one pool, the most recently used last.
#[derive(Default)]
pub struct Warm {
    conns: Mutex<Vec<Entry>>,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm").field("len", &self.len()).finish()
    }
}

impl Warm {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding the lock leaves a valid Vec behind.
        self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connections here now (the pool counts them as in use).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The most recently used warm connection, or one from the pool.
    pub async fn lease(&self, pool: &PgPool) -> Result<Out, sqlx::Error> {
        // Taken out of the lock's scope first: the guard is not Send.
        let warm = self.lock().pop();
        match warm {
            Some(entry) => Ok(entry.out),
            None => Ok(Out { conn: pool.acquire().await?, since: Instant::now() }),
        }
    }

    /// Gives the least recently used warm connection back to sqlx's pool.
    pub fn give_back(&self) {
        let mut conns = self.lock();
        let oldest = (!conns.is_empty()).then(|| conns.remove(0));
        drop(conns);
        drop(oldest);
    }

    /// Takes back a connection whose statements all ran to their end.
    pub fn keep(&self, pool: &PgPool, out: Out) {
        let options = pool.options();
        let max = options.get_max_connections();
        let spare = crate::store::idle_connections(pool) > 0 || pool.size() < max;
        let cap = max.saturating_sub(RESERVED) as usize;
        let now = Instant::now();
        let young = options.get_max_lifetime().is_none_or(|life| now.duration_since(out.since) < life);
        let mut back = Vec::new();
        {
            let mut conns = self.lock();
            back.extend(unused_since(&mut conns, now));
            match spare && young && conns.len() < cap {
                true => conns.push(Entry { out, used: now }),
                false => back.push(out.conn),
            }
        }
        // Outside the lock: each drop spawns sqlx's return to the pool.
        drop(back);
    }

    /// Gives back to sqlx what has sat here unused for [`IDLE`] at `now`.
    pub fn sweep(&self, now: Instant) {
        let back = unused_since(&mut self.lock(), now);
        drop(back);
    }

    /// Sweeps every [`IDLE`] while the set exists, so that an idle server
    /// does not hold connections that sqlx's idle timeout would close.
    pub fn spawn_sweeper(self: &std::sync::Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let warm = std::sync::Arc::downgrade(self);
        rt.spawn(async move {
            let mut every = tokio::time::interval(IDLE);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match warm.upgrade() {
                    Some(warm) => warm.sweep(Instant::now()),
                    None => return,
                }
            }
        });
    }
}

/// Takes out the connections unused for [`IDLE`] at `now` (the oldest come
/// first: `keep` pushes, `lease` pops).
fn unused_since(conns: &mut Vec<Entry>, now: Instant) -> Vec<Conn> {
    let fresh = conns.iter().position(|e| now.saturating_duration_since(e.used) < IDLE).unwrap_or(conns.len());
    conns.drain(..fresh).map(|e| e.out.conn).collect()
}

impl Drop for Warm {
    fn drop(&mut self) {
        let conns = std::mem::take(self.conns.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner));
        // sqlx returns a dropped connection on a task it spawns, which
        // panics without a runtime: outside one, close the sockets instead.
        if tokio::runtime::Handle::try_current().is_err() {
            conns.into_iter().for_each(|e| drop(e.out.conn.detach()));
        }
    }
}
