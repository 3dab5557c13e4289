//! Building blocks of an online tenant move between any two stores: copying a collection in
//! resumable batches ([`copy_collection`]) and verifying both sides hold the same documents
//! ([`fingerprint`], after Vitess VDiff: a document count and an order-independent hash).

use crate::domain::{IndexKeys, IndexName, ID_INDEX_NAME};
use crate::store::index::same_key_pattern;
use crate::store::{
    Document, IndexInfo, IndexSpec, IndexState, Namespace, StoreError, StoreResult, TenantStore,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;

/// Documents per read when fingerprinting.
const FINGERPRINT_BATCH: usize = 1_000;

/// What a collection holds, independent of document order and of the backend: the number of
/// documents and the sum, modulo 2^256, of the SHA-256 of each document's canonical JSON
/// ([`canonical_json`]). A sum rather than an XOR, so that two equal documents (under
/// different `_id`s they cannot be equal, but a bug might duplicate one) do not cancel out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// Number of documents.
    pub count: u64,
    /// Sum of the per-document digests as a big-endian 256-bit integer.
    pub hash: [u8; 32],
}

impl Fingerprint {
    /// Adds one document.
    pub fn add(&mut self, doc: &Document) {
        let digest = digest_of(doc);
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let sum = u16::from(self.hash[i]) + u16::from(digest[i]) + carry;
            self.hash[i] = sum as u8;
            carry = sum >> 8;
        }
        self.count += 1;
    }

    /// Takes one document out again (it was added before): a move keeps the target's
    /// fingerprint current as its catch-up replaces documents.
    pub fn remove(&mut self, doc: &Document) {
        let digest = digest_of(doc);
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let diff = i16::from(self.hash[i]) - i16::from(digest[i]) - borrow;
            self.hash[i] = diff.rem_euclid(256) as u8;
            borrow = i16::from(diff < 0);
        }
        self.count = self.count.saturating_sub(1);
    }

    /// The hash in hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

impl fmt::Display for Fingerprint {
    /// `<count>:<hash in hex>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.count, hex::encode(self.hash))
    }
}

fn digest_of(doc: &Document) -> [u8; 32] {
    let mut buf = Vec::with_capacity(256);
    write_canonical_object(doc, &mut buf);
    Sha256::digest(&buf).into()
}

/// The document as JSON with object keys sorted (by their UTF-8 bytes) at every level and no
/// whitespace, so that key order does not matter. Numbers keep their JSON type: both backends
/// keep integers as integers and floats as floats (`2.0` stays `2.0` through BSON's Double),
/// and int 2 and float 2.0 are different values to MongoDB, so they hash differently.
pub fn canonical_json(doc: &Document) -> Vec<u8> {
    let mut buf = Vec::new();
    write_canonical_object(doc, &mut buf);
    buf
}

fn write_canonical_object(map: &Document, out: &mut Vec<u8>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    out.push(b'{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_scalar(&Value::String(k.clone()), out);
        out.push(b':');
        write_canonical(&map[k], out);
    }
    out.push(b'}');
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => write_canonical_object(map, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    serde_json::to_writer(out, v).expect("JSON scalars always serialize");
}

/// The fingerprint of a collection, read in batches with [`TenantStore::scan_after`]. A
/// missing collection has the empty fingerprint. Not a snapshot: the caller compares both
/// sides while no writes reach them (at cutover), or compares again until they agree.
pub async fn fingerprint(store: &dyn TenantStore, ns: &Namespace) -> StoreResult<Fingerprint> {
    let mut fp = Fingerprint::default();
    let mut after: Option<String> = None;
    loop {
        let docs = store
            .scan_after(ns, after.as_deref(), FINGERPRINT_BATCH)
            .await?;
        for d in &docs {
            fp.add(d);
        }
        if docs.len() < FINGERPRINT_BATCH {
            return Ok(fp);
        }
        after = Some(last_id(&docs)?);
    }
}

/// How far a copy got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyProgress {
    /// Documents written to the target by this call.
    pub documents: u64,
    /// Their size as JSON.
    pub bytes: u64,
    /// The `_id` of the last document written: every document up to it is in the target, so a
    /// copy resumed with this `after` continues where this one stopped.
    pub last_id: Option<String>,
}

/// Copies the documents of `from_ns` whose `_id` is greater than `after` (all when `None`) to
/// `to_ns`, in `_id` order, `batch` documents per write, replacing documents already there
/// with the same `_id`. Replaying any part of a copy changes nothing, so a crashed copy resumes
/// from the last `last_id` it reported. The target collection must exist (writes never create
/// one on the embedded store). `progress` is called after each batch is written.
///
/// Documents written to the source meanwhile may or may not be copied: a move catches up on
/// them from its change log.
pub async fn copy_collection(
    from: &dyn TenantStore,
    from_ns: &Namespace,
    to: &dyn TenantStore,
    to_ns: &Namespace,
    after: Option<String>,
    batch: usize,
    mut progress: impl FnMut(&CopyProgress),
) -> StoreResult<CopyProgress> {
    let batch = batch.max(1);
    let mut done = CopyProgress {
        last_id: after,
        ..CopyProgress::default()
    };
    let mut pending = from
        .scan_after(from_ns, done.last_id.as_deref(), batch)
        .await?;
    while !pending.is_empty() {
        let last = last_id(&pending)?;
        let count = pending.len() as u64;
        let bytes: u64 = pending
            .iter()
            .map(|d| serde_json::to_vec(d).map_or(0, |b| b.len() as u64))
            .sum();
        // Read the next batch while this one is written: the two stores work in parallel.
        let next = async {
            if count < batch as u64 {
                Ok(Vec::new())
            } else {
                from.scan_after(from_ns, Some(&last), batch).await
            }
        };
        let (written, next) = tokio::join!(to.upsert_many(to_ns, pending), next);
        written?;
        done.documents += count;
        done.bytes += bytes;
        done.last_id = Some(last);
        progress(&done);
        pending = next?;
    }
    Ok(done)
}

fn last_id(docs: &[Document]) -> StoreResult<String> {
    docs.last()
        .and_then(|d| d.get("_id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Backend("document without string _id".into()))
}

/// Declares `source`'s indexes (at `from`) on `target` (at `to`), so that a tenant's
/// collection keeps its indexes wherever it goes. Unique ones only with `unique`: a target
/// still catching up may hold two versions of a key for a moment. With `exact`, a target
/// index the source no longer has (or has with other keys) is dropped. An index whose name
/// or keys the gateway would not accept (one made on a MongoDB shard by other means) is
/// left behind, with a warning.
pub async fn sync_indexes(
    source: &dyn TenantStore,
    from: &Namespace,
    target: &dyn TenantStore,
    to: &Namespace,
    unique: bool,
    exact: bool,
) -> StoreResult<()> {
    let wanted: Vec<IndexInfo> = source
        .list_indexes(from)
        .await?
        .into_iter()
        .filter(|i| i.name != ID_INDEX_NAME)
        .collect();
    let present = target.list_indexes(to).await?;
    for have in present.iter().filter(|i| i.name != ID_INDEX_NAME) {
        let keep = wanted.iter().any(|w| {
            w.name == have.name && same_key_pattern(&w.keys, &have.keys) && w.unique == have.unique
        });
        if exact && !keep {
            if let Ok(name) = IndexName::parse(&have.name) {
                match target.drop_index(to, &name).await {
                    Ok(()) | Err(StoreError::IndexNotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    for w in wanted.iter().filter(|w| unique || !w.unique) {
        let there = present.iter().any(|p| {
            p.name == w.name && same_key_pattern(&p.keys, &w.keys) && p.unique == w.unique
        });
        if there {
            continue;
        }
        let (Ok(name), Ok(keys)) = (IndexName::parse(&w.name), IndexKeys::parse(&w.keys)) else {
            tracing::warn!(
                "an index of a moved collection cannot be declared on the target; left behind"
            );
            continue;
        };
        let spec = IndexSpec {
            name,
            keys,
            unique: w.unique,
        };
        target.create_index(to, &spec, usize::MAX).await?;
    }
    Ok(())
}

/// Whether every index of the collection is ready (none still building).
pub async fn indexes_ready(store: &dyn TenantStore, ns: &Namespace) -> StoreResult<bool> {
    Ok(store
        .list_indexes(ns)
        .await?
        .iter()
        .all(|i| i.state == IndexState::Ready))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mongo::{document_to_json, json_to_document};
    use serde_json::json;

    fn doc(v: Value) -> Document {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn fp(docs: &[Document]) -> Fingerprint {
        let mut f = Fingerprint::default();
        docs.iter().for_each(|d| f.add(d));
        f
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = doc(json!({"b": 1, "a": {"y": [1, {"q": 1, "p": 2}], "x": 2.5}, "_id": "k"}));
        let b = doc(json!({"_id": "k", "a": {"x": 2.5, "y": [1, {"p": 2, "q": 1}]}, "b": 1}));
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            String::from_utf8(canonical_json(&a)).unwrap(),
            r#"{"_id":"k","a":{"x":2.5,"y":[1,{"p":2,"q":1}]},"b":1}"#
        );
    }

    #[test]
    fn fingerprint_ignores_order_but_not_content() {
        let docs: Vec<Document> = (0..5)
            .map(|i| doc(json!({"_id": i.to_string(), "v": i})))
            .collect();
        let mut reversed = docs.clone();
        reversed.reverse();
        assert_eq!(fp(&docs), fp(&reversed));
        assert_eq!(fp(&docs).count, 5);
        let mut changed = docs.clone();
        changed[2].insert("v".into(), json!(2.0));
        assert_ne!(fp(&docs), fp(&changed), "int 2 and float 2.0 must differ");
        // Array order matters; a duplicated document does not cancel out.
        let a = doc(json!({"_id": "a", "l": [1, 2]}));
        let b = doc(json!({"_id": "a", "l": [2, 1]}));
        assert_ne!(fp(std::slice::from_ref(&a)), fp(&[b]));
        assert_ne!(fp(&[a.clone(), a.clone()]).hash, [0; 32]);
    }

    #[test]
    fn remove_undoes_add() {
        let docs: Vec<Document> = (0..50)
            .map(|i| doc(json!({"_id": i.to_string(), "v": i * 7919})))
            .collect();
        let mut f = fp(&docs);
        for d in &docs[10..] {
            f.remove(d);
        }
        assert_eq!(f, fp(&docs[..10]));
        for d in &docs[..10] {
            f.remove(d);
        }
        assert_eq!(f, Fingerprint::default());
    }

    #[test]
    fn a_bson_round_trip_keeps_the_fingerprint() {
        let original = doc(json!({
            "_id": "x", "whole": 2.0, "half": 2.5, "big": 9_007_199_254_740_993_i64,
            "min": i64::MIN, "small": -7, "tiny": 1e-300, "zero": -0.0,
            "ключ": {"日本": ["ü", null, true, {"z": 1, "a": 2}]},
        }));
        let round_tripped = document_to_json(json_to_document(&original).unwrap());
        assert_eq!(fp(&[original]), fp(&[round_tripped]));
    }
}
