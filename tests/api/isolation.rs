//! Property test: random operations of five organizations, interleaved, never let one see or
//! change another's documents.

use crate::gateway::{Options, TestGateway};
use proptest::prelude::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    Insert { org: usize, key: u8 },
    Get { org: usize, target: usize, key: u8 },
    Patch { org: usize, target: usize, key: u8 },
    Delete { org: usize, target: usize, key: u8 },
    Query { org: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let o = 0..5usize;
    let k = 0..6u8;
    prop_oneof![
        (o.clone(), k.clone()).prop_map(|(org, key)| Op::Insert { org, key }),
        (o.clone(), o.clone(), k.clone()).prop_map(|(org, target, key)| Op::Get {
            org,
            target,
            key
        }),
        (o.clone(), o.clone(), k.clone()).prop_map(|(org, target, key)| Op::Patch {
            org,
            target,
            key
        }),
        (o.clone(), o.clone(), k).prop_map(|(org, target, key)| Op::Delete { org, target, key }),
        o.prop_map(|org| Op::Query { org }),
    ]
}

fn id(org: usize, key: u8) -> String {
    format!("o{org}-k{key}")
}

#[test]
fn tenants_never_see_each_other() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\nrequests_per_minute = 100000\nrequests_per_hour = 100000\n".into(),
        ..Default::default()
    });
    let tokens: Vec<String> = (0..5)
        .map(|i| gw.org_with_token(&format!("Iso {i}"), &format!("iso{i}@example.com")))
        .collect();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 8,
        ..ProptestConfig::default()
    });
    let round = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| {
            round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // model: what each org holds, keyed by _id
            let mut model: Vec<BTreeMap<String, i64>> = vec![BTreeMap::new(); 5];
            for t in &tokens {
                // start each case empty
                let docs: Value = gw
                    .req(Method::POST, "/data/query")
                    .bearer_auth(t)
                    .json(&json!({"limit": 1000}))
                    .send()
                    .unwrap()
                    .json()
                    .unwrap();
                for d in docs["documents"].as_array().unwrap() {
                    gw.req(
                        Method::DELETE,
                        &format!("/data/{}", d["_id"].as_str().unwrap()),
                    )
                    .bearer_auth(t)
                    .send()
                    .unwrap();
                }
            }
            for op in ops {
                match op {
                    Op::Insert { org, key } => {
                        let _id = id(org, key);
                        let r = gw
                            .req(Method::POST, "/data")
                            .bearer_auth(&tokens[org])
                            .json(&json!({"_id": _id, "owner": org, "v": 0}))
                            .send()
                            .unwrap();
                        let expect = if model[org].contains_key(&_id) {
                            409
                        } else {
                            201
                        };
                        prop_assert_eq!(r.status().as_u16(), expect);
                        model[org].entry(_id).or_insert(0);
                    }
                    Op::Get { org, target, key } => {
                        let _id = id(target, key);
                        let r = gw
                            .req(Method::GET, &format!("/data/{_id}"))
                            .bearer_auth(&tokens[org])
                            .send()
                            .unwrap();
                        if model[org].contains_key(&_id) {
                            let d: Value = r.json().unwrap();
                            prop_assert_eq!(d["owner"].as_u64(), Some(org as u64));
                        } else {
                            prop_assert_eq!(r.status().as_u16(), 404);
                        }
                    }
                    Op::Patch { org, target, key } => {
                        let _id = id(target, key);
                        let r = gw
                            .req(Method::PATCH, &format!("/data/{_id}"))
                            .bearer_auth(&tokens[org])
                            .json(&json!({"$inc": {"v": 1}}))
                            .send()
                            .unwrap();
                        match model[org].get_mut(&_id) {
                            Some(v) => {
                                *v += 1;
                                let d: Value = r.json().unwrap();
                                prop_assert_eq!(d["v"].as_i64(), Some(*v));
                            }
                            None => prop_assert_eq!(r.status().as_u16(), 404),
                        }
                    }
                    Op::Delete { org, target, key } => {
                        let _id = id(target, key);
                        let r = gw
                            .req(Method::DELETE, &format!("/data/{_id}"))
                            .bearer_auth(&tokens[org])
                            .send()
                            .unwrap();
                        let expect = if model[org].remove(&_id).is_some() {
                            200
                        } else {
                            404
                        };
                        prop_assert_eq!(r.status().as_u16(), expect);
                    }
                    Op::Query { org } => {
                        let docs: Value = gw
                            .req(Method::POST, "/data/query")
                            .bearer_auth(&tokens[org])
                            .json(&json!({"limit": 1000}))
                            .send()
                            .unwrap()
                            .json()
                            .unwrap();
                        let got: BTreeMap<String, i64> = docs["documents"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|d| {
                                (
                                    d["_id"].as_str().unwrap().to_owned(),
                                    d["v"].as_i64().unwrap(),
                                )
                            })
                            .collect();
                        prop_assert_eq!(&got, &model[org]);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(round.load(std::sync::atomic::Ordering::Relaxed) >= 8);
}
