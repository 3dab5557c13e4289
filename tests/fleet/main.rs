//! Multi-instance tests: two or three gateways on one MongoDB catalog, as an operator runs
//! them behind a load balancer.

#[path = "../common/gateway.rs"]
mod gateway;
#[path = "../common/mongo.rs"]
mod mongo_env;

mod cluster;
mod propagation;
mod races;
