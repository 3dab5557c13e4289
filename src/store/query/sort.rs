//! Sort specifications with MongoDB's array-aware sort keys.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::{array_index, compare_values, parse_path, Document, QueryError};

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

    proptest! {
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
