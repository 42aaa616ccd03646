//! One integration binary: the real server on port 0, a fresh Postgres
//! database (or SQLite file) per test, and a real HTTP receiver on 127.0.0.1.

/// Instantiates each named `async fn(Backend)` test for both stores.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::helpers::Backend::Postgres).await
            })*
        }
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::helpers::Backend::Sqlite).await
            })*
        }
    };
}

mod conformance;
mod console;
mod delivery;
mod dispatch;
mod endpoints;
mod fairness;
mod filter;
mod hardening;
mod helpers;
mod list;
mod migration;
mod ops;
mod plans;
mod pooler;
mod processes;
mod recovery;
mod replicas;
mod rest;
mod retention;
mod signature_schemes;
mod stats;
mod tenancy;
mod watch;
