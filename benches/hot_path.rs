//! Micro-benchmarks of the per-request hot path: JWT verification and tenant lookup through
//! the moka cache (100,000 organizations cached); and what a create or login costs: one argon2id
//! hash at OWASP cost, and a login answered from remembered credentials.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use org_gateway::auth::JwtKeys;
use org_gateway::catalog::embedded::EmbeddedCatalog;
use org_gateway::catalog::{AdminRecord, Catalog, OrgRecord, OrgState, Placement};
use org_gateway::domain::{AdminId, DatabaseName, Email, OrgId, OrgName, ShardId};
use org_gateway::router::TenantRouter;
use std::sync::Arc;
use std::time::Duration;

fn jwt(c: &mut Criterion) {
    let keys = JwtKeys::new(
        "bench-signing-secret-0123456789abcdef",
        "k1",
        "org-gateway",
        "org-gateway",
        3600,
        5,
    )
    .unwrap();
    let token = keys.issue(AdminId::generate(), OrgId::generate(), 0);
    c.bench_function("jwt_verify_hs256", |b| {
        b.iter(|| keys.verify(std::hint::black_box(&token)).unwrap())
    });
    c.bench_function("jwt_issue_hs256", |b| {
        b.iter(|| keys.issue(AdminId::generate(), OrgId::generate(), 0))
    });
}

fn org(set: usize, i: usize) -> (OrgRecord, AdminRecord) {
    let now = chrono::Utc::now();
    let name = OrgName::parse(&format!("Bench Org {set} {i}")).unwrap();
    let id = OrgId::generate();
    let org = OrgRecord {
        id,
        placement: Placement {
            shard: ShardId::parse("local").unwrap(),
            database: DatabaseName::numbered("db", 1),
            collection: name.collection_name(),
            epoch: 1,
            created_at: now,
            updated_at: now,
        },
        name,
        state: OrgState::Active,
        created_at: now,
        updated_at: now,
        revision: 1,
        moving: None,
    };
    let admin = AdminRecord {
        id: AdminId::generate(),
        org_id: id,
        email: Email::parse(&format!("bench{set}-{i}@example.com")).unwrap(),
        password_hash: String::new(),
        credential_version: 0,
        created_at: now,
        updated_at: now,
        revision: 1,
    };
    (org, admin)
}

fn lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let catalog: Arc<dyn Catalog> =
        Arc::new(EmbeddedCatalog::open(&dir.path().join("catalog.redb")).unwrap());
    let router = TenantRouter::new(catalog.clone(), 200_000, Duration::from_secs(3600));
    let mut group = c.benchmark_group("tenant_lookup");
    for n in [1_000usize, 100_000] {
        let ids: Vec<OrgId> = rt.block_on(async {
            let mut ids = Vec::with_capacity(n);
            let orgs: Vec<_> = (0..n).map(|i| org(n, i)).collect();
            // Bulk load through the catalog would fsync per org; benchmark set-up inserts
            // straight into the cache instead, which is what a warm gateway looks like.
            for (o, a) in &orgs[..n.min(200)] {
                catalog.insert_org(o, a).await.unwrap();
            }
            for (o, _) in &orgs {
                router.prime(o.clone()).await;
                ids.push(o.id);
            }
            ids
        });
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("cached_org_by_id", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % ids.len();
                rt.block_on(router.org(ids[i])).unwrap().unwrap()
            })
        });
    }
    group.finish();
}

fn filters(c: &mut Criterion) {
    use org_gateway::store::query::{Filter, QueryLimits};
    use serde_json::json;
    let raw = json!({"$and": [
        {"status": {"$in": ["active", "trial"]}},
        {"$or": [{"plan.tier": {"$gte": 2}}, {"tags": "vip"}]},
        {"deleted_at": {"$exists": false}}
    ]});
    let limits = QueryLimits::default();
    c.bench_function("filter_validate", |b| {
        b.iter(|| Filter::parse(std::hint::black_box(&raw), &limits).unwrap())
    });
    let filter = Filter::parse(&raw, &limits).unwrap();
    let doc =
        json!({"_id": "x", "status": "trial", "plan": {"tier": 1}, "tags": ["a", "vip"], "n": 5});
    let doc = doc.as_object().unwrap().clone();
    c.bench_function("filter_evaluate", |b| {
        b.iter(|| filter.matches(std::hint::black_box(&doc)))
    });
}

fn limiter(c: &mut Criterion) {
    use org_gateway::limits::rate::RateLimits;
    let limits = RateLimits::new(u32::MAX / 2, u32::MAX / 2);
    let orgs: Vec<OrgId> = (0..100_000).map(|_| OrgId::generate()).collect();
    let mut i = 0usize;
    c.bench_function("rate_limit_check_100k_orgs", |b| {
        b.iter(|| {
            i = (i + 7919) % orgs.len();
            limits.check(orgs[i]).allowed
        })
    });
}

/// One argon2id hash at m = 19 MiB, t = 2, p = 1 through the hashing threads (what a create or
/// a login waits for), and a check of credentials verified a moment ago (the login after a
/// create).
fn password(c: &mut Criterion) {
    use org_gateway::auth::PasswordHasher;
    use org_gateway::domain::Password;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hasher = PasswordHasher::new(19_456, 2, 1, 1, 8)
        .unwrap()
        .with_credential_cache(1_000, Duration::from_secs(600));
    let password = Password::parse("correct horse battery").unwrap();
    let phc = rt.block_on(hasher.hash(&password)).unwrap();
    let mut group = c.benchmark_group("argon2id_owasp");
    group.sample_size(20);
    group.bench_function("hash", |b| {
        b.iter(|| rt.block_on(hasher.hash(&password)).unwrap())
    });
    group.bench_function("verify_wrong_password", |b| {
        b.iter(|| {
            assert!(!rt
                .block_on(hasher.verify("wrong horse battery", Some(&phc)))
                .unwrap())
        })
    });
    // The fill alone, by implementation, one thread each with reused scratch memory: the
    // gateway hashes with `argon2-rust`; `argon2` 0.5 is what it used before.
    let salt = *b"sixteen byte sal";
    let mut tag = [0u8; 32];
    let params = argon2::Params::new(19_456, 2, 1, Some(32)).unwrap();
    let mut blocks = vec![argon2::Block::default(); params.block_count()];
    let rustcrypto =
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    group.bench_function("fill_argon2_0_5", |b| {
        b.iter(|| {
            rustcrypto
                .hash_password_into_with_memory(b"correct horse", &salt, &mut tag, &mut blocks)
                .unwrap()
        })
    });
    let mut simd = argon2_rust::Argon2::new(
        argon2_rust::Algorithm::Argon2id,
        argon2_rust::Version::V0x13,
        argon2_rust::Params::default(),
    )
    .hasher();
    group.bench_function("fill_argon2_rust_1_1", |b| {
        b.iter(|| simd.hash_into(b"correct horse", &salt, &mut tag).unwrap())
    });
    group.finish();
    c.bench_function("verify_remembered_credentials", |b| {
        b.iter(|| {
            assert!(rt
                .block_on(hasher.verify("correct horse battery", Some(&phc)))
                .unwrap())
        })
    });
}

criterion_group!(benches, jwt, lookup, filters, limiter, password);
criterion_main!(benches);
