//! HTTP tests of the organization and auth API against the real binary.

#[path = "../common/gateway.rs"]
mod gateway;

mod auth;
mod lifecycle;
mod orgs;
mod validation;
