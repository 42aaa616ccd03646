//! hookpost: durable webhook delivery over gRPC, with a log of every attempt.
//!
//! Data flows one way: transport → service → store / delivery engine.
//!
//! - [`proto`]: the generated `hookpost.v1` contract (from `proto/`).
//! - [`grpc`]: the tonic transport; converts messages and calls the service.
//! - [`transport`]: the bounded listener, the per-request deadline and the
//!   one authentication layer (headers only) in front of gRPC and REST; and
//!   the browser console's embedded files (`/console`), which call REST.
//! - [`rest`]: the JSON routes of the documented APIs and the grpc-gateway
//!   routes, on the same listener as gRPC, over the same service.
//! - [`service`]: the use cases (dispatch, list logs, log details), free of
//!   transport types.
//! - [`domain`]: types parsed once at the edge (`NewDelivery`, `LogFilter`...).
//! - [`store`]: the attempt store trait and its Postgres implementation; the
//!   requests table doubles as the delivery queue. Postgres partition upkeep
//!   and retention (`store::postgres::maintenance`) run one process at a
//!   time under an advisory lock.
//! - [`delivery`]: the engine that claims due webhooks, POSTs them, records
//!   each attempt and schedules retries (a pure backoff function).
//! - [`client`]: the Rust client (generated tonic client + API key).
//! - [`auth`]: API keys (stored hashed), principals, per-key rate limits.
//! - [`metrics`]: Prometheus metrics, one registry per application.
//! - [`pagination`]: opaque, checked keyset page tokens.
//! - [`secrets`]: encryption at rest (XChaCha20-Poly1305) for endpoint
//!   signing secrets, under an operator-held key.
//! - [`error`]: one error type and one code table for gRPC and HTTP.
//! - [`config`] / [`app`]: the CLI and the wiring (`Application::build`, `run`).

pub mod app;
pub mod auth;
pub mod client;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod pagination;
pub mod proto;
pub mod rest;
pub mod secrets;
pub mod service;
pub mod store;
pub mod transport;

pub use app::Application;
pub use config::Config;
