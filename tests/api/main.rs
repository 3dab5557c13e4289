//! HTTP tests of the organization and auth API against the real binary.

#[path = "../common/gateway.rs"]
mod gateway;
#[path = "../common/mongo.rs"]
mod mongo_env;
#[path = "../common/secantus.rs"]
mod secantus;

mod admins;
mod auth;
mod backup;
mod data;
mod deleted;
mod events;
mod indexes;
mod input;
mod isolation;
mod keys;
mod lifecycle;
mod limits;
mod malformed;
mod move_recovery;
mod moves;
mod openapi;
mod ops;
mod orgs;
mod paging;
mod recovery;
mod shards;
mod transfer;
mod validation;
