//! Conformance suites: the same tests run against every backend of the store and of the
//! catalog, so the embedded and the MongoDB implementations cannot drift apart.
//!
//! MongoDB variants need `MONGODB_URI` (see `tests/common/mongo.rs`); `scripts/test` starts a
//! local server and sets it.

#[path = "../common/mongo.rs"]
mod mongo_env;

mod catalog;
mod copy;
mod data;
mod startup;
mod store;
