//! Multi-instance tests: two or three gateways on one MongoDB catalog (and one Redis), as an
//! operator runs them behind a load balancer.

#[path = "../common/gateway.rs"]
mod gateway;
#[path = "../common/mongo.rs"]
mod mongo_env;
#[path = "../common/redis.rs"]
mod redis_env;
#[path = "../common/secantus.rs"]
mod secantus;

mod cluster;
mod limits;
mod moves;
mod propagation;
mod races;
