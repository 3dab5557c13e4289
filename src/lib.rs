//! org-gateway: a tenant-aware gateway for collection-per-organization MongoDB deployments.
//!
//! See `ARCHITECTURE.md` for the request path and where each part lives.

pub mod api;
pub mod app;
pub mod auth;
pub mod backup;
pub mod bench;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod failpoints;
pub mod fleet;
pub mod limits;
pub mod listener;
pub mod movers;
pub mod placement;
pub mod router;
pub mod server;
pub mod store;
pub mod telemetry;
