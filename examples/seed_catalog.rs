//! Seeds an embedded catalog with many organizations, for memory and cache measurements
//! (creating them through the API would spend an argon2 hash on each).
//!
//! `cargo run --release --example seed_catalog -- <data dir> <count>`; then start the gateway
//! on that data dir and warm its cache with `GET /org/get` for `Seed Org <i>`.

use org_gateway::auth::PasswordHasher;
use org_gateway::catalog::embedded::EmbeddedCatalog;
use org_gateway::catalog::{AdminRecord, Catalog, OrgRecord, OrgState, Placement};
use org_gateway::domain::{AdminId, DatabaseName, Email, OrgId, OrgName, Password, ShardId};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("data dir"));
    let count: usize = args.next().expect("count").parse().expect("number");
    let catalog = EmbeddedCatalog::open(&dir.join("catalog.redb")).expect("open catalog");
    let hasher = PasswordHasher::new(19_456, 2, 1, 1, 1).unwrap();
    let hash = hasher
        .hash(&Password::parse("password123").unwrap())
        .await
        .unwrap();
    let shard = ShardId::parse("local").unwrap();
    let per_db = 9_000;
    for i in 0..count {
        let now = chrono::Utc::now();
        let name = OrgName::parse(&format!("Seed Org {i}")).unwrap();
        let id = OrgId::generate();
        let org = OrgRecord {
            id,
            placement: Placement {
                shard: shard.clone(),
                database: DatabaseName::numbered("db", (i / per_db) as u32 + 1),
                collection: name.collection_name(),
                epoch: 1,
                created_at: now,
                updated_at: now,
            },
            name,
            state: OrgState::Active,
            created_at: now,
            updated_at: now,
            revision: 0,
            moving: None,
        };
        let admin = AdminRecord {
            id: AdminId::generate(),
            org_id: id,
            email: Email::parse(&format!("seed{i}@example.com")).unwrap(),
            password_hash: hash.clone(),
            credential_version: 0,
            created_at: now,
            updated_at: now,
            revision: 0,
        };
        catalog.insert_org(&org, &admin).await.expect("insert");
        if i % 10_000 == 0 {
            eprintln!("{i} organizations");
        }
    }
    eprintln!("seeded {count} organizations");
}
