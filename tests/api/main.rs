//! One integration binary: the real server on port 0, a fresh Postgres
//! database per test, and a real HTTP receiver on 127.0.0.1.

mod delivery;
mod dispatch;
mod helpers;
mod list;
mod ops;
mod processes;
mod rest;
mod tenancy;
