//! Sort specifications with MongoDB's array-aware sort keys.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde_json::{Map, Value};

use super::{array_index, compare_values, parse_path, type_rank, Document, QueryError};
use serde_json::json;

/// Maximum number of fields in a sort specification.
pub const MAX_SORT_KEYS: usize = 8;

/// A validated sort specification `{field: 1 | -1, ...}`.
///
/// Sort keys follow MongoDB: a missing field sorts as `null`; for an array the
/// smallest element is used when ascending and the largest when descending; an
/// empty array sorts before `null`. Ties are broken by `_id` ascending, so the
/// order is total and deterministic.
#[derive(Debug, Clone)]
pub struct Sort {
    keys: Vec<SortKey>,
    has_id: bool,
}

#[derive(Debug, Clone)]
struct SortKey {
    path: String,
    parts: Vec<String>,
    descending: bool,
}

impl Sort {
    /// Validates a sort specification; `null` or `{}` means "by `_id` only".
    pub fn parse(v: &Value) -> Result<Sort, QueryError> {
        let spec = match v {
            Value::Null => return Ok(Sort::by_id()),
            Value::Object(m) => m,
            _ => {
                return Err(QueryError::at(
                    "invalid_sort",
                    "",
                    "sort must be a JSON object",
                ))
            }
        };
        if spec.len() > MAX_SORT_KEYS {
            return Err(QueryError::at(
                "invalid_sort",
                "",
                format!("sort has more than {MAX_SORT_KEYS} fields"),
            ));
        }
        let mut keys = Vec::with_capacity(spec.len());
        for (path, dir) in spec {
            let parts = parse_path(path)?;
            let descending = match dir.as_f64() {
                Some(1.0) => false,
                Some(-1.0) => true,
                _ => {
                    return Err(QueryError::at(
                        "invalid_sort",
                        path,
                        "sort direction must be 1 or -1",
                    ))
                }
            };
            keys.push(SortKey {
                path: path.clone(),
                parts,
                descending,
            });
        }
        let has_id = keys.iter().any(|k| k.path == "_id");
        Ok(Sort { keys, has_id })
    }

    fn by_id() -> Sort {
        Sort {
            keys: Vec::new(),
            has_id: false,
        }
    }

    /// True when no sort fields were given (documents are then ordered by `_id`).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Compares two documents: the sort fields in order, then `_id` ascending.
    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        for key in &self.keys {
            let ka = sort_key(a, &key.parts, key.descending);
            let kb = sort_key(b, &key.parts, key.descending);
            let ord = cmp_keys(&ka, &kb);
            let ord = if key.descending { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        if self.has_id {
            return Ordering::Equal;
        }
        let id = ["_id".to_string()];
        cmp_keys(&sort_key(a, &id, false), &sort_key(b, &id, false))
    }

    /// `Some(descending)` when the order is `_id` order (no sort fields, or `_id` first: it is
    /// unique, so later fields never matter): both backends then read it from their `_id`
    /// index and stop once the page is full. `None` for any other order, which needs a
    /// top-k sort bounded by `skip + limit`.
    pub fn id_order(&self) -> Option<bool> {
        match self.keys.first() {
            None => Some(false),
            Some(k) if k.path == "_id" => Some(k.descending),
            Some(_) => None,
        }
    }

    /// Where `doc` stands in this order: its sort key values and its `_id`.
    pub fn position(&self, doc: &Document) -> SortPosition {
        SortPosition {
            keys: self
                .keys
                .iter()
                .map(|k| match sort_key(doc, &k.parts, k.descending) {
                    Key::Undefined => None,
                    Key::Val(v) => Some(v.clone()),
                })
                .collect(),
            id: doc_id(doc).to_owned(),
        }
    }

    /// Compares `doc` with a position in this order (`Greater`: `doc` comes after it).
    /// The position must come from this sort (same number of keys).
    pub fn compare_to(&self, doc: &Document, pos: &SortPosition) -> Ordering {
        for (key, at) in self.keys.iter().zip(&pos.keys) {
            let ord = cmp_keys(&sort_key(doc, &key.parts, key.descending), &owned_key(at));
            let ord = if key.descending { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        if self.has_id {
            return Ordering::Equal;
        }
        doc_id(doc).as_bytes().cmp(pos.id.as_bytes())
    }

    /// Whether two positions of this order have equal sort keys, `_id` aside (also when it
    /// is one of the keys).
    pub fn same_keys(&self, a: &SortPosition, b: &SortPosition) -> bool {
        self.keys
            .iter()
            .zip(a.keys.iter().zip(&b.keys))
            .filter(|(k, _)| k.path != "_id")
            .all(|(_, (x, y))| cmp_keys(&owned_key(x), &owned_key(y)) == Ordering::Equal)
    }

    /// Compares two positions of this order.
    pub fn compare_positions(&self, a: &SortPosition, b: &SortPosition) -> Ordering {
        for ((key, x), y) in self.keys.iter().zip(&a.keys).zip(&b.keys) {
            let ord = cmp_keys(&owned_key(x), &owned_key(y));
            let ord = if key.descending { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        if self.has_id {
            return Ordering::Equal;
        }
        a.id.as_bytes().cmp(b.id.as_bytes())
    }

    /// A MongoDB filter matching at least every document strictly after `after` in this
    /// order (`None`: no narrowing). It may match more (a document with an array spanning
    /// the cursor value, say), so the caller keeps only the documents that
    /// [`Sort::compare_to`] puts after `after`; never less, or a page would skip documents.
    ///
    /// Lexicographic: `k1 > c1`, or `k1 = c1 and k2 > c2`, ..., or all equal and
    /// `_id > id`. Each comparison is a superset of the sort-key relation it stands for,
    /// written with operators whose array and type semantics are plain (see `after_key` and
    /// `equal_key`); where none is safe the comparison is left out, which only widens.
    pub fn keyset_filter(&self, after: &SortPosition) -> Option<Value> {
        let mut branches = Vec::new();
        let mut equal: Vec<Value> = Vec::new();
        for (key, at) in self.keys.iter().zip(&after.keys) {
            if key.path == "_id" {
                // Unique: nothing after it is ever needed.
                let op = if key.descending { "$lt" } else { "$gt" };
                equal.push(json!({"_id": {op: after.id}}));
                branches.push(all_of(std::mem::take(&mut equal))?);
                return any_of(branches);
            }
            let positional = key.parts.iter().any(|p| array_index(p).is_some());
            let (gt, eq) = if positional {
                (None, None)
            } else {
                (
                    after_key(&key.path, at.as_ref(), key.descending),
                    equal_key(&key.path, at.as_ref(), key.descending),
                )
            };
            let mut branch = equal.clone();
            branch.extend(gt);
            branches.push(all_of(branch)?);
            equal.extend(eq);
        }
        equal.push(json!({"_id": {"$gt": after.id}}));
        branches.push(all_of(equal)?);
        any_of(branches)
    }

    /// The sort for MongoDB, with `_id: 1` appended unless `_id` is already a key.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for key in &self.keys {
            m.insert(
                key.path.clone(),
                Value::from(if key.descending { -1 } else { 1 }),
            );
        }
        if !self.has_id {
            m.insert("_id".to_string(), Value::from(1));
        }
        Value::Object(m)
    }
}

/// The first `k` documents of a stream in a [`Sort`]'s order, kept as positions in a bounded
/// max-heap: O(k) memory and O(n log k) time however many documents are offered, instead of
/// sorting the whole stream.
pub struct TopK<'s> {
    sort: &'s Sort,
    k: usize,
    heap: BinaryHeap<Ranked<'s>>,
}

/// A position ordered by its sort, so the heap's top is the last of the kept ones.
struct Ranked<'s> {
    sort: &'s Sort,
    pos: SortPosition,
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked<'_> {}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort.compare_positions(&self.pos, &other.pos)
    }
}

impl<'s> TopK<'s> {
    /// Keeps the first `k` documents in `sort`'s order.
    pub fn new(sort: &'s Sort, k: usize) -> Self {
        TopK {
            sort,
            k,
            heap: BinaryHeap::with_capacity(k.min(1024)),
        }
    }

    /// Offers a document; its position is kept only if it is among the first `k` so far
    /// (nothing is cloned otherwise).
    pub fn offer(&mut self, doc: &Document) {
        if self.heap.len() < self.k {
            let pos = self.sort.position(doc);
            self.heap.push(Ranked {
                sort: self.sort,
                pos,
            });
        } else if let Some(mut last) = self.heap.peek_mut() {
            if self.sort.compare_to(doc, &last.pos) == Ordering::Less {
                last.pos = self.sort.position(doc);
            }
        }
    }

    /// The kept positions, first to last.
    pub fn into_sorted(self) -> Vec<SortPosition> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.pos)
            .collect()
    }
}

/// A document's place in a [`Sort`]'s order: the value of each sort key (`None` for
/// MongoDB's `undefined`, the key of an empty array) and its `_id`, the tiebreaker. Keyset
/// cursors carry one, so the next page starts strictly after it whatever was inserted or
/// deleted meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub struct SortPosition {
    keys: Vec<Option<Value>>,
    id: String,
}

/// Longest `_id` a position may carry (as for documents).
const MAX_POSITION_ID_BYTES: usize = 128;

impl SortPosition {
    /// The sort key values, one per sort field (`None`: undefined).
    pub fn keys(&self) -> &[Option<Value>] {
        &self.keys
    }

    /// The `_id` of the document the position was taken from.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// JSON form `[[key...], id]`, where each key is `[]` (undefined) or `[value]`.
    pub fn to_json(&self) -> Value {
        let keys = self
            .keys
            .iter()
            .map(|k| Value::Array(k.iter().cloned().collect()))
            .collect();
        Value::Array(vec![Value::Array(keys), Value::String(self.id.clone())])
    }

    /// Reads the form written by [`SortPosition::to_json`] for `sort`. It comes from a
    /// client, so everything is checked: one key per sort field, key values that a stored
    /// document could hold (integers within i64, bounded nesting) and a valid `_id`.
    pub fn from_json(v: &Value, sort: &Sort) -> Option<SortPosition> {
        let [Value::Array(raw), Value::String(id)] = v.as_array()?.as_slice() else {
            return None;
        };
        if raw.len() != sort.keys.len()
            || id.is_empty()
            || id.len() > MAX_POSITION_ID_BYTES
            || id.contains('\0')
        {
            return None;
        }
        let mut keys = Vec::with_capacity(raw.len());
        for k in raw {
            match k.as_array()?.as_slice() {
                [] => keys.push(None),
                [v] if storable(v, 0) => keys.push(Some(v.clone())),
                _ => return None,
            }
        }
        Some(SortPosition {
            keys,
            id: id.clone(),
        })
    }
}

/// Whether a value could be a stored document's: integers fit i64 (as MongoDB stores them)
/// and nesting stays within [`super::MAX_DOCUMENT_DEPTH`].
fn storable(v: &Value, depth: usize) -> bool {
    match v {
        Value::Number(n) => !(n.is_u64() && n.as_i64().is_none()),
        Value::Array(a) => {
            depth < super::MAX_DOCUMENT_DEPTH && a.iter().all(|x| storable(x, depth + 1))
        }
        Value::Object(m) => {
            depth < super::MAX_DOCUMENT_DEPTH && m.values().all(|x| storable(x, depth + 1))
        }
        _ => true,
    }
}

fn doc_id(doc: &Document) -> &str {
    doc.get("_id").and_then(Value::as_str).unwrap_or("")
}

fn owned_key(k: &Option<Value>) -> Key<'_> {
    match k {
        None => Key::Undefined,
        Some(v) => Key::Val(v),
    }
}

/// `None` when `conds` is empty (always true), else their conjunction.
fn all_of(mut conds: Vec<Value>) -> Option<Value> {
    match conds.len() {
        0 => None,
        1 => conds.pop(),
        _ => Some(json!({ "$and": conds })),
    }
}

/// The disjunction of `branches`; `None` (always true) never reaches here, as `?` on a
/// branch that is always true returns early.
fn any_of(mut branches: Vec<Value>) -> Option<Value> {
    match branches.len() {
        0 => None,
        1 => branches.pop(),
        _ => Some(json!({ "$or": branches })),
    }
}

/// BSON type aliases of the JSON types ranked above `v`'s (with `array` only when
/// `with_array`: a field that is an array need not have an array *key*, its elements are).
fn types_above(rank: u8, with_array: bool) -> Vec<&'static str> {
    [
        (10, "number"),
        (15, "string"),
        (20, "object"),
        (25, "array"),
        (40, "bool"),
    ]
    .into_iter()
    .filter(|&(r, name)| r > rank && (with_array || name != "array"))
    .map(|(_, name)| name)
    .collect()
}

/// A MongoDB condition on `path` met by every document whose sort key comes strictly after
/// `at` (`None`: undefined). Reasoning, with the key the minimum (ascending) or maximum
/// (descending) of the values at `path` (array elements one level down):
/// - ascending, key > c: every value is > c, so one is: `$gt c` in c's type (any value of
///   c's type for objects and arrays), or a value of a type ranked above (`$type` also matches array elements; `array` matches the
///   arrays that nested-array keys come from);
/// - descending, key < c: no value is >= c, so the document matches neither `$gte c` nor
///   `$type` of a higher non-array type (each of which implies a value >= c): `$nor`.
///
/// Null keys (missing fields, nulls) are never matched directly: MongoDB's `null` equality
/// differs from its sort keys on some array shapes, so they are reached through `$nor`.
fn after_key(path: &str, at: Option<&Value>, descending: bool) -> Option<Value> {
    let Some(c) = at else {
        // Undefined sorts first: everything may follow it ascending, nothing descending.
        return descending.then(|| json!({"_id": {"$in": []}}));
    };
    let rank = type_rank(c);
    let scalar = matches!(c, Value::Number(_) | Value::String(_) | Value::Bool(_));
    if !descending {
        if c.is_null() {
            return Some(json!({ path: {"$type": types_above(rank, true)} }));
        }
        let mut any = Vec::new();
        let mut above = types_above(rank, true);
        if scalar {
            any.push(json!({ path: {"$gt": c} }));
        } else {
            // No safe `$gt` for objects and arrays: any value of c's own type may follow.
            above.insert(0, if c.is_object() { "object" } else { "array" });
        }
        if !above.is_empty() {
            any.push(json!({ path: {"$type": above} }));
        }
        return any_of(any).or_else(|| Some(json!({"_id": {"$in": []}})));
    }
    if c.is_null() {
        // Only undefined (an empty array) sorts below null.
        return Some(json!({ path: {"$type": "array"} }));
    }
    let mut none = Vec::new();
    if scalar {
        none.push(json!({ path: {"$gte": c} }));
    }
    let above = types_above(rank, false);
    if !above.is_empty() {
        none.push(json!({ path: {"$type": above} }));
    }
    if none.is_empty() {
        return None;
    }
    Some(json!({ "$nor": none }))
}

/// A MongoDB condition on `path` met by every document whose sort key equals `at`: the key
/// is one of the values at `path`, so plain equality for scalars; `$type` for objects,
/// arrays and undefined (an empty array); for null, descending, no value of a higher
/// non-array type (ascending, nothing safe: left out).
fn equal_key(path: &str, at: Option<&Value>, descending: bool) -> Option<Value> {
    let Some(c) = at else {
        return Some(json!({ path: {"$type": "array"} }));
    };
    match c {
        Value::Number(_) | Value::String(_) | Value::Bool(_) => Some(json!({ path: c })),
        Value::Object(_) => Some(json!({ path: {"$type": "object"} })),
        Value::Array(_) => Some(json!({ path: {"$type": "array"} })),
        Value::Null if descending => Some(json!({
            "$nor": [{ path: {"$type": types_above(type_rank(c), false)} }]
        })),
        Value::Null => None,
    }
}

/// One key an index holds for a document at a path: a value, or `undefined` (an empty
/// array).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IndexKey<'a> {
    /// MongoDB's `undefined`: the key of an empty array.
    Undefined,
    /// A value (`null` for a missing field).
    Val(&'a Value),
}

/// The keys MongoDB's btree key generator produces for `doc` at `parts` (one per element
/// of an array met on the way; `null` for a missing field): an index holds one entry per
/// key, and a sort uses their minimum or maximum.
pub fn index_keys<'a>(doc: &'a Document, parts: &[String]) -> Vec<IndexKey<'a>> {
    let mut keys = Vec::new();
    collect_keys(doc, parts, &mut keys);
    keys.into_iter()
        .map(|k| match k {
            Key::Undefined => IndexKey::Undefined,
            Key::Val(v) => IndexKey::Val(v),
        })
        .collect()
}

impl Sort {
    /// The sort fields as `(path, descending)`, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, bool)> {
        self.keys.iter().map(|k| (k.path.as_str(), k.descending))
    }
}

/// A sort key: a value, or MongoDB's `undefined` (produced by an empty array),
/// which sorts before `null`.
#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    Undefined,
    Val(&'a Value),
}

static NULL: Value = Value::Null;

fn cmp_keys(a: &Key<'_>, b: &Key<'_>) -> Ordering {
    match (a, b) {
        (Key::Undefined, Key::Undefined) => Ordering::Equal,
        (Key::Undefined, Key::Val(_)) => Ordering::Less,
        (Key::Val(_), Key::Undefined) => Ordering::Greater,
        (Key::Val(x), Key::Val(y)) => compare_values(x, y),
    }
}

/// The key MongoDB sorts `doc` by: the minimum (ascending) or maximum
/// (descending) of the keys its btree key generator would produce for `parts`.
fn sort_key<'a>(doc: &'a Document, parts: &[String], descending: bool) -> Key<'a> {
    let mut keys = Vec::new();
    collect_keys(doc, parts, &mut keys);
    let pick = |best: Key<'a>, k: Key<'a>| {
        let ord = cmp_keys(&k, &best);
        let better = if descending {
            ord == Ordering::Greater
        } else {
            ord == Ordering::Less
        };
        if better {
            k
        } else {
            best
        }
    };
    let mut iter = keys.into_iter();
    let first = iter.next().unwrap_or(Key::Val(&NULL));
    iter.fold(first, pick)
}

fn collect_keys<'a>(obj: &'a Map<String, Value>, parts: &[String], out: &mut Vec<Key<'a>>) {
    let mut cur = obj;
    let mut i = 0;
    loop {
        let last = i + 1 == parts.len();
        let Some(v) = cur.get(parts[i].as_str()) else {
            out.push(Key::Val(&NULL));
            return;
        };
        match v {
            Value::Array(arr) => return array_keys(arr, &parts[i + 1..], out),
            Value::Object(m) if !last => {
                cur = m;
                i += 1;
            }
            _ if last => return out.push(Key::Val(v)),
            _ => return out.push(Key::Val(&NULL)),
        }
    }
}

fn array_keys<'a>(arr: &'a [Value], rest: &[String], out: &mut Vec<Key<'a>>) {
    if arr.is_empty() {
        out.push(if rest.is_empty() {
            Key::Undefined
        } else {
            Key::Val(&NULL)
        });
        return;
    }
    if rest.is_empty() {
        // Expanded one level: nested arrays stay array values.
        out.extend(arr.iter().map(Key::Val));
        return;
    }
    if let Some(e) = array_index(&rest[0]).and_then(|i| arr.get(i)) {
        // Positional component, e.g. `a.0.b`.
        let rest = &rest[1..];
        match e {
            Value::Array(inner) if rest.is_empty() => out.push(if inner.is_empty() {
                Key::Undefined
            } else {
                Key::Val(e)
            }),
            _ if rest.is_empty() => out.push(Key::Val(e)),
            Value::Object(m) => collect_keys(m, rest, out),
            Value::Array(inner) => array_keys(inner, rest, out),
            _ => out.push(Key::Val(&NULL)),
        }
        return;
    }
    for e in arr {
        match e {
            Value::Object(m) => collect_keys(m, rest, out),
            _ => out.push(Key::Val(&NULL)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn docs(items: &[Value]) -> Vec<Document> {
        items
            .iter()
            .map(|v| v.as_object().cloned().expect("object"))
            .collect()
    }

    fn sorted_ids(spec: Value, items: &[Value]) -> Vec<String> {
        let sort = Sort::parse(&spec).unwrap();
        let mut d = docs(items);
        d.sort_by(|a, b| sort.compare(a, b));
        d.iter()
            .map(|d| match &d["_id"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    }

    #[test]
    fn mixed_types_follow_bson_order() {
        let items = [
            json!({"_id": "bool", "a": false}),
            json!({"_id": "arr", "a": [[]]}),
            json!({"_id": "obj", "a": {"x": 1}}),
            json!({"_id": "str", "a": "s"}),
            json!({"_id": "num", "a": 2.5}),
            json!({"_id": "int", "a": 2}),
            json!({"_id": "null", "a": null}),
            json!({"_id": "missing"}),
            json!({"_id": "empty", "a": []}),
        ];
        assert_eq!(
            sorted_ids(json!({"a": 1}), &items),
            ["empty", "missing", "null", "int", "num", "str", "obj", "arr", "bool"]
        );
        assert_eq!(
            sorted_ids(json!({"a": -1}), &items),
            ["bool", "arr", "obj", "str", "num", "int", "missing", "null", "empty"]
        );
    }

    #[test]
    fn arrays_sort_by_min_or_max_element() {
        let items = [
            json!({"_id": "a", "v": [1, 10]}),
            json!({"_id": "b", "v": 5}),
            json!({"_id": "c", "v": [3, 4]}),
            json!({"_id": "d", "v": [0, "z"]}),
        ];
        // ascending uses the smallest element: a=1, b=5, c=3, d=0
        assert_eq!(sorted_ids(json!({"v": 1}), &items), ["d", "a", "c", "b"]);
        // descending uses the largest: a=10, b=5, c=4, d="z"
        assert_eq!(sorted_ids(json!({"v": -1}), &items), ["d", "a", "b", "c"]);
    }

    #[test]
    fn dotted_paths_through_arrays() {
        let items = [
            json!({"_id": "a", "o": [{"k": 5}, {"k": 2}]}),
            json!({"_id": "b", "o": [{"k": 3}, {}]}), // missing k -> null key
            json!({"_id": "c", "o": {"k": 4}}),
            json!({"_id": "d", "o": [7, {"k": 9}]}), // scalar element -> null key
            json!({"_id": "e", "o": []}),            // empty array mid-path -> null
        ];
        assert_eq!(
            sorted_ids(json!({"o.k": 1}), &items),
            ["b", "d", "e", "a", "c"]
        );
        assert_eq!(
            sorted_ids(json!({"o.k": -1}), &items),
            ["d", "a", "c", "b", "e"]
        );
        // positional component
        assert_eq!(
            sorted_ids(json!({"o.0.k": 1}), &items),
            ["c", "d", "e", "b", "a"]
        );
    }

    #[test]
    fn multiple_keys_and_id_tiebreak() {
        let items = [
            json!({"_id": "3", "a": 1, "b": 1}),
            json!({"_id": "1", "a": 1, "b": 1}),
            json!({"_id": "2", "a": 1, "b": 2}),
            json!({"_id": "0", "a": 2, "b": 0}),
            json!({"_id": "4", "a": 1.0, "b": 1}),
        ];
        assert_eq!(
            sorted_ids(json!({"a": 1, "b": -1}), &items),
            ["2", "1", "3", "4", "0"]
        );
        assert_eq!(
            sorted_ids(json!({"b": 1, "a": 1}), &items),
            ["0", "1", "3", "4", "2"]
        );
        assert_eq!(sorted_ids(json!(null), &items), ["0", "1", "2", "3", "4"]);
        assert_eq!(
            sorted_ids(json!({"_id": -1}), &items),
            ["4", "3", "2", "1", "0"]
        );
    }

    #[test]
    fn to_json_appends_id() {
        let s = Sort::parse(&json!({"b": -1, "a": 1.0})).unwrap();
        assert_eq!(
            serde_json::to_string(&s.to_json()).unwrap(),
            r#"{"b":-1,"a":1,"_id":1}"#
        );
        assert!(!s.is_empty());
        let s = Sort::parse(&json!({"a": 1, "_id": -1})).unwrap();
        assert_eq!(s.to_json(), json!({"a": 1, "_id": -1}));
        let s = Sort::parse(&json!({})).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.to_json(), json!({"_id": 1}));
        assert!(Sort::parse(&json!(null)).unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_specs() {
        for (spec, code) in [
            (json!([["a", 1]]), "invalid_sort"),
            (json!("a"), "invalid_sort"),
            (json!({"a": 2}), "invalid_sort"),
            (json!({"a": 0}), "invalid_sort"),
            (json!({"a": "asc"}), "invalid_sort"),
            (json!({"a": {"$meta": "textScore"}}), "invalid_sort"),
            (
                json!({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1, "h": 1, "i": 1}),
                "invalid_sort",
            ),
            (json!({"$a": 1}), "invalid_field_name"),
            (json!({"a..b": 1}), "invalid_field_name"),
        ] {
            assert_eq!(Sort::parse(&spec).unwrap_err().code, code, "{spec}");
        }
        assert!(Sort::parse(
            &json!({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1, "h": 1})
        )
        .is_ok());
    }

    fn arb_docs() -> impl Strategy<Value = Vec<Document>> {
        // Values of every type (arrays, objects, nulls), often equal, and sometimes missing.
        prop::collection::vec(
            prop::option::weighted(0.8, super::super::tests::arb_json()),
            0..40,
        )
        .prop_map(|vals| {
            vals.into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let mut d = Document::new();
                    d.insert("_id".into(), json!(format!("{:02}", (i * 7) % 41)));
                    if let Some(v) = v {
                        d.insert("v".into(), v);
                    }
                    d
                })
                .collect()
        })
    }

    fn arb_spec() -> impl Strategy<Value = Value> {
        prop::sample::select(vec![
            json!({"v": 1}),
            json!({"v": -1}),
            json!({"v.a": 1}),
            json!({"v.a": -1}),
            json!({"v.0": 1}),
            json!({"v.a": -1, "v": 1}),
            json!({"v": 1, "_id": -1}),
            json!({"_id": -1}),
            json!(null),
        ])
    }

    fn ids(docs: &[Document]) -> Vec<String> {
        docs.iter()
            .map(|d| d["_id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn top_k_keeps_ties_in_id_order() {
        let items = docs(&[
            json!({"_id": "c", "v": 1}),
            json!({"_id": "a", "v": 1.0}),
            json!({"_id": "d"}),
            json!({"_id": "b", "v": 1}),
            json!({"_id": "e", "v": null}),
        ]);
        let sort = Sort::parse(&json!({"v": -1})).unwrap();
        let mut top = TopK::new(&sort, 3);
        for d in &items {
            top.offer(d);
        }
        let kept: Vec<_> = top
            .into_sorted()
            .iter()
            .map(|p| p.id().to_owned())
            .collect();
        assert_eq!(kept, ["a", "b", "c"]);
        let mut none = TopK::new(&sort, 0);
        none.offer(&items[0]);
        assert!(none.into_sorted().is_empty());
    }

    #[test]
    fn id_order_is_recognised() {
        assert_eq!(Sort::parse(&json!(null)).unwrap().id_order(), Some(false));
        assert_eq!(
            Sort::parse(&json!({"_id": -1, "a": 1})).unwrap().id_order(),
            Some(true)
        );
        assert_eq!(
            Sort::parse(&json!({"a": 1, "_id": 1})).unwrap().id_order(),
            None
        );
    }

    #[test]
    fn positions_round_trip_and_reject_what_a_document_cannot_hold() {
        let sort = Sort::parse(&json!({"a": 1, "b": -1})).unwrap();
        let doc = docs(&[json!({"_id": "x", "a": [], "b": {"c": [1, "s"]}})]).remove(0);
        let pos = sort.position(&doc);
        assert_eq!(pos.to_json(), json!([[[], [{"c": [1, "s"]}]], "x"]));
        assert_eq!(
            SortPosition::from_json(&pos.to_json(), &sort),
            Some(pos.clone())
        );
        assert_eq!(sort.compare_to(&doc, &pos), Ordering::Equal);
        let too_deep = (0..40).fold(json!(1), |acc, _| json!([acc]));
        for bad in [
            json!([[[1]], "x"]),                            // one key for two fields
            json!([[[1], [2], [3]], "x"]),                  // three
            json!([[[1], [2, 3]], "x"]),                    // a key with two values
            json!([[[1], 2], "x"]),                         // a key not wrapped
            json!([[[1], [2]], ""]),                        // empty _id
            json!([[[1], [2]], "a\u{0}b"]),                 // NUL in _id
            json!([[[1], [2]], "x".repeat(129)]),           // _id too long
            json!([[[1], [2]], 7]),                         // _id not a string
            json!([[[18446744073709551615u64], [2]], "x"]), // above i64
            json!([[[too_deep], [2]], "x"]),
            json!({"k": [], "id": "x"}),
            json!([[[1], [2]], "x", "extra"]),
        ] {
            assert_eq!(SortPosition::from_json(&bad, &sort), None, "{bad}");
        }
    }

    #[test]
    fn keyset_filters_for_common_shapes() {
        let at = |spec: Value, doc: Value| {
            let sort = Sort::parse(&spec).unwrap();
            let pos = sort.position(&docs(&[doc]).remove(0));
            sort.keyset_filter(&pos)
        };
        // By _id: an exact range.
        assert_eq!(
            at(json!(null), json!({"_id": "k"})),
            Some(json!({"_id": {"$gt": "k"}}))
        );
        assert_eq!(
            at(json!({"_id": -1, "a": 1}), json!({"_id": "k"})),
            Some(json!({"_id": {"$lt": "k"}}))
        );
        // A number ascending: greater numbers or any higher type, or a tie with a later _id.
        assert_eq!(
            at(json!({"n": 1}), json!({"_id": "k", "n": 5})),
            Some(json!({"$or": [
                {"$or": [{"n": {"$gt": 5}}, {"n": {"$type": ["string", "object", "array", "bool"]}}]},
                {"$and": [{"n": 5}, {"_id": {"$gt": "k"}}]},
            ]}))
        );
        // Descending: nothing that is >= 5 (missing fields and nulls follow).
        assert_eq!(
            at(json!({"n": -1}), json!({"_id": "k", "n": "s"})),
            Some(json!({"$or": [
                {"$nor": [{"n": {"$gte": "s"}}, {"n": {"$type": ["object", "bool"]}}]},
                {"$and": [{"n": "s"}, {"_id": {"$gt": "k"}}]},
            ]}))
        );
        // A missing field ascending: any non-null value, or a later _id.
        assert_eq!(
            at(json!({"n": 1}), json!({"_id": "k"})),
            Some(json!({"$or": [
                {"n": {"$type": ["number", "string", "object", "array", "bool"]}},
                {"_id": {"$gt": "k"}},
            ]}))
        );
        // Positional paths are not narrowed (MongoDB also reads `0` as a field name there).
        assert_eq!(at(json!({"n.0": 1}), json!({"_id": "k", "n": [1]})), None);
        // An empty array ascending: anything may follow.
        assert_eq!(at(json!({"n": 1}), json!({"_id": "k", "n": []})), None);
    }

    proptest! {
        #[test]
        fn top_k_equals_a_plain_sort(docs in arb_docs(), spec in arb_spec(), k in 0usize..45) {
            let sort = Sort::parse(&spec).unwrap();
            let mut top = TopK::new(&sort, k);
            for d in &docs {
                top.offer(d);
            }
            let kept: Vec<String> = top.into_sorted().iter().map(|p| p.id().to_owned()).collect();
            let mut sorted = docs.clone();
            sorted.sort_by(|a, b| sort.compare(a, b));
            sorted.truncate(k);
            prop_assert_eq!(kept, ids(&sorted));
        }

        #[test]
        fn positions_compare_like_documents(docs in arb_docs(), spec in arb_spec()) {
            let sort = Sort::parse(&spec).unwrap();
            for a in &docs {
                for b in &docs {
                    let (pa, pb) = (sort.position(a), sort.position(b));
                    prop_assert_eq!(sort.compare_to(a, &pb), sort.compare(a, b));
                    prop_assert_eq!(sort.compare_positions(&pa, &pb), sort.compare(a, b));
                    let back = SortPosition::from_json(&pb.to_json(), &sort);
                    prop_assert_eq!(back.as_ref(), Some(&pb));
                }
            }
        }

        #[test]
        fn pages_after_positions_cover_the_sort(docs in arb_docs(), spec in arb_spec(), size in 1usize..5) {
            // Paging with positions and a top-k per page reads every document once, in order.
            let sort = Sort::parse(&spec).unwrap();
            let mut sorted = docs.clone();
            sorted.sort_by(|a, b| sort.compare(a, b));
            let (mut paged, mut after): (Vec<String>, Option<SortPosition>) = (Vec::new(), None);
            loop {
                let mut top = TopK::new(&sort, size);
                for d in &docs {
                    if after.as_ref().is_none_or(|p| sort.compare_to(d, p) == Ordering::Greater) {
                        top.offer(d);
                    }
                }
                let page = top.into_sorted();
                let Some(last) = page.last().cloned() else { break };
                paged.extend(page.iter().map(|p| p.id().to_owned()));
                after = Some(last);
            }
            prop_assert_eq!(paged, ids(&sorted));
        }

        #[test]
        fn compare_is_a_total_order(
            a in super::super::tests::arb_json(),
            b in super::super::tests::arb_json(),
            c in super::super::tests::arb_json(),
            spec in prop::sample::select(vec![
                json!({"v": 1}), json!({"v": -1}), json!({"v.a": 1}), json!({"v.0": -1}),
                json!({"v.a": -1, "v": 1}),
            ]),
        ) {
            let sort = Sort::parse(&spec).unwrap();
            let mk = |id: &str, v: &Value| docs(&[json!({"_id": id, "v": v})]).remove(0);
            let (da, db, dc) = (mk("a", &a), mk("b", &b), mk("c", &c));
            prop_assert_eq!(sort.compare(&da, &db), sort.compare(&db, &da).reverse());
            prop_assert_ne!(sort.compare(&da, &db), Ordering::Equal);
            if sort.compare(&da, &db) == Ordering::Less && sort.compare(&db, &dc) == Ordering::Less {
                prop_assert_eq!(sort.compare(&da, &dc), Ordering::Less);
            }
        }
    }
}
