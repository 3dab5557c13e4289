//! Several gateways on one MongoDB catalog, as operators run them behind a load balancer.

#[path = "../common/gateway.rs"]
mod gateway;
#[path = "../common/mongo.rs"]
mod mongo_env;
#[path = "../common/redis.rs"]
mod redis_env;

mod fleet_env;
mod limits;
