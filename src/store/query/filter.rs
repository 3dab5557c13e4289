//! Filter parsing, validation and MongoDB-compatible matching.

use std::cmp::Ordering;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{
    array_index, check_value, clip, compare_values, parse_path, type_rank, Document, QueryError,
    QueryLimits,
};

/// A validated query filter.
///
/// Supported: implicit equality, `$eq $ne $gt $gte $lt $lte $in $nin $exists`,
/// field-level `$not`, and `$and`/`$or`/`$nor`. Matching follows MongoDB:
/// dotted paths fan out over arrays, numeric components index arrays, a leaf
/// array matches if any element (or the array as a whole) matches, `null`
/// matches missing fields and comparisons only match values of the same type.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Shared: a filter is cloned into every store call, and its literals may be a
    /// megabyte.
    inner: Arc<Parsed>,
}

#[derive(Debug)]
struct Parsed {
    root: Node,
    original: Value,
}

#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    Not(Box<Node>),
    Leaf(Vec<String>, Pred),
}

#[derive(Debug, Clone)]
enum Pred {
    Eq(Value),
    Cmp(CmpOp, Value),
    In(Vec<Value>),
    Exists,
}

/// A comparison operator of a filter predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `$gt`
    Gt,
    /// `$gte`
    Gte,
    /// `$lt`
    Lt,
    /// `$lte`
    Lte,
}

/// One top-level conjunct of a filter, as an index planner sees it.
#[derive(Debug, Clone, Copy)]
pub enum Conjunct<'a> {
    /// Equality with a literal at a path (`{path: v}`, `$eq`).
    Eq(&'a [String], &'a Value),
    /// `$in` at a path.
    In(&'a [String], &'a [Value]),
    /// A comparison at a path.
    Cmp(&'a [String], CmpOp, &'a Value),
    /// Anything else (`$or`, `$not`, `$exists`, ...): only a scan or a fetch answers it.
    Other,
}

impl Filter {
    /// Validates a filter. `null` and `{}` match every document.
    pub fn parse(v: &Value, limits: &QueryLimits) -> Result<Filter, QueryError> {
        let mut parser = Parser { limits, nodes: 0 };
        // Validated before the copy kept for MongoDB is made: a refusal costs one walk.
        let (root, original) = match v {
            Value::Null => (Node::And(Vec::new()), Value::Object(Map::new())),
            Value::Object(m) => (parser.parse_doc(m, 1)?, v.clone()),
            _ => {
                return Err(QueryError::at(
                    "invalid_filter",
                    "",
                    "filter must be a JSON object",
                ))
            }
        };
        Ok(Filter {
            inner: Arc::new(Parsed { root, original }),
        })
    }

    /// Whether `doc` satisfies the filter.
    pub fn matches(&self, doc: &Document) -> bool {
        eval(&self.inner.root, doc)
    }

    /// The validated filter, to be sent to MongoDB verbatim (`null` becomes `{}`).
    pub fn to_json(&self) -> Value {
        self.inner.original.clone()
    }

    /// The filter's top-level conjuncts (nested `$and`s flattened): a document matches
    /// the filter exactly when it matches all of them.
    pub fn conjuncts(&self) -> Vec<Conjunct<'_>> {
        fn walk<'a>(node: &'a Node, out: &mut Vec<Conjunct<'a>>) {
            match node {
                Node::And(children) => children.iter().for_each(|c| walk(c, out)),
                Node::Leaf(path, Pred::Eq(v)) => out.push(Conjunct::Eq(path, v)),
                Node::Leaf(path, Pred::In(list)) => out.push(Conjunct::In(path, list)),
                Node::Leaf(path, Pred::Cmp(op, v)) => out.push(Conjunct::Cmp(path, *op, v)),
                _ => out.push(Conjunct::Other),
            }
        }
        let mut out = Vec::new();
        walk(&self.inner.root, &mut out);
        out
    }

    /// True when the filter matches every document (`null` or `{}`).
    pub fn is_empty(&self) -> bool {
        self.inner.original.as_object().is_none_or(Map::is_empty)
    }
}

struct Parser<'l> {
    limits: &'l QueryLimits,
    nodes: usize,
}

impl Parser<'_> {
    fn bump(&mut self, path: &str) -> Result<(), QueryError> {
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            return Err(QueryError::at(
                "filter_too_large",
                path,
                format!("filter has more than {} predicates", self.limits.max_nodes),
            ));
        }
        Ok(())
    }

    fn check_depth(&self, depth: usize, path: &str) -> Result<(), QueryError> {
        if depth > self.limits.max_depth {
            return Err(QueryError::at(
                "filter_too_deep",
                path,
                format!(
                    "filter is nested more than {} levels",
                    self.limits.max_depth
                ),
            ));
        }
        Ok(())
    }

    fn parse_doc(&mut self, obj: &Map<String, Value>, depth: usize) -> Result<Node, QueryError> {
        self.check_depth(depth, "")?;
        let mut children = Vec::with_capacity(obj.len());
        for (key, value) in obj {
            if key.starts_with('$') && !key.contains('.') {
                children.push(self.parse_logical(key, value, depth)?);
            } else {
                children.push(self.parse_field(key, value, depth)?);
            }
        }
        Ok(single_or_and(children))
    }

    fn parse_logical(&mut self, op: &str, value: &Value, depth: usize) -> Result<Node, QueryError> {
        if !matches!(op, "$and" | "$or" | "$nor") {
            return Err(QueryError::unsupported("", op));
        }
        let items = match value {
            Value::Array(items) if !items.is_empty() => items,
            _ => {
                return Err(QueryError::with_op(
                    "invalid_filter",
                    "",
                    op,
                    format!("`{op}` needs a non-empty array of filters"),
                ))
            }
        };
        self.bump("")?;
        let mut children = Vec::with_capacity(items.len());
        for item in items {
            let Value::Object(m) = item else {
                return Err(QueryError::with_op(
                    "invalid_filter",
                    "",
                    op,
                    format!("`{op}` entries must be objects"),
                ));
            };
            if m.is_empty() {
                // Counted like a predicate: it is evaluated like one, and would otherwise
                // let `{"$and": [{}, {}, ...]}` grow past every limit.
                self.bump("")?;
            }
            children.push(self.parse_doc(m, depth + 1)?);
        }
        Ok(match op {
            "$and" => Node::And(children),
            "$or" => Node::Or(children),
            _ => Node::Nor(children),
        })
    }

    fn parse_field(&mut self, key: &str, value: &Value, depth: usize) -> Result<Node, QueryError> {
        let path = parse_path(key)?;
        match value {
            Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => {
                if let Some(field) = ops.keys().find(|k| !k.starts_with('$')) {
                    return Err(QueryError::at(
                        "invalid_filter",
                        key,
                        format!(
                            "cannot mix operators and the field `{}` in one object",
                            clip(field)
                        ),
                    ));
                }
                let nodes = self.parse_ops(key, &path, ops, depth + 1)?;
                Ok(single_or_and(nodes))
            }
            _ => {
                check_literal(value, key)?;
                self.bump(key)?;
                Ok(Node::Leaf(path, Pred::Eq(value.clone())))
            }
        }
    }

    fn parse_ops(
        &mut self,
        key: &str,
        path: &[String],
        ops: &Map<String, Value>,
        depth: usize,
    ) -> Result<Vec<Node>, QueryError> {
        self.check_depth(depth, key)?;
        let mut nodes = Vec::with_capacity(ops.len());
        for (op, arg) in ops {
            let leaf = |pred| Node::Leaf(path.to_vec(), pred);
            let node = match op.as_str() {
                "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" => {
                    check_literal(arg, key)?;
                    let v = arg.clone();
                    match op.as_str() {
                        "$eq" => leaf(Pred::Eq(v)),
                        "$ne" => Node::Not(Box::new(leaf(Pred::Eq(v)))),
                        "$gt" => leaf(Pred::Cmp(CmpOp::Gt, v)),
                        "$gte" => leaf(Pred::Cmp(CmpOp::Gte, v)),
                        "$lt" => leaf(Pred::Cmp(CmpOp::Lt, v)),
                        _ => leaf(Pred::Cmp(CmpOp::Lte, v)),
                    }
                }
                "$in" | "$nin" => {
                    let Value::Array(list) = arg else {
                        return Err(QueryError::with_op(
                            "invalid_filter",
                            key,
                            op,
                            format!("`{op}` needs an array"),
                        ));
                    };
                    if list.len() > self.limits.max_in_len {
                        return Err(QueryError::with_op(
                            "in_list_too_long",
                            key,
                            op,
                            format!(
                                "`{op}` list has {} entries, more than {}",
                                list.len(),
                                self.limits.max_in_len
                            ),
                        ));
                    }
                    for item in list {
                        check_literal(item, key)?;
                    }
                    let pred = leaf(Pred::In(list.clone()));
                    if op == "$in" {
                        pred
                    } else {
                        Node::Not(Box::new(pred))
                    }
                }
                "$exists" => {
                    let wanted = match arg {
                        Value::Bool(b) => *b,
                        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                        _ => {
                            return Err(QueryError::with_op(
                                "invalid_filter",
                                key,
                                op,
                                "`$exists` needs a boolean",
                            ))
                        }
                    };
                    if wanted {
                        leaf(Pred::Exists)
                    } else {
                        Node::Not(Box::new(leaf(Pred::Exists)))
                    }
                }
                "$not" => {
                    let inner = match arg {
                        Value::Object(m) if !m.is_empty() => m,
                        _ => {
                            return Err(QueryError::with_op(
                                "invalid_filter",
                                key,
                                op,
                                "`$not` needs a non-empty operator object",
                            ))
                        }
                    };
                    if let Some(field) = inner.keys().find(|k| !k.starts_with('$')) {
                        return Err(QueryError::with_op(
                            "invalid_filter",
                            key,
                            op,
                            format!("`$not` accepts only operators, found `{}`", clip(field)),
                        ));
                    }
                    self.bump(key)?;
                    let children = self.parse_ops(key, path, inner, depth + 1)?;
                    nodes.push(Node::Not(Box::new(single_or_and(children))));
                    continue;
                }
                _ => return Err(QueryError::unsupported(key, op)),
            };
            self.bump(key)?;
            nodes.push(node);
        }
        Ok(nodes)
    }
}

fn single_or_and(mut nodes: Vec<Node>) -> Node {
    if nodes.len() == 1 {
        nodes.pop().unwrap_or(Node::And(Vec::new()))
    } else {
        Node::And(nodes)
    }
}

/// Literal values may not contain field names that could never be stored
/// (`$`-prefixed, dotted, empty, NUL), which also catches misplaced operators
/// such as `{a: {b: {$gt: 1}}}`.
fn check_literal(v: &Value, path: &str) -> Result<(), QueryError> {
    check_value(v, 1, path)
}

fn eval(node: &Node, doc: &Document) -> bool {
    match node {
        Node::And(children) => children.iter().all(|c| eval(c, doc)),
        Node::Or(children) => children.iter().any(|c| eval(c, doc)),
        Node::Nor(children) => !children.iter().any(|c| eval(c, doc)),
        Node::Not(child) => !eval(child, doc),
        Node::Leaf(path, pred) => walk_obj(doc, path, &mut |e| pred.matches(e)),
    }
}

impl Pred {
    /// Matches one candidate produced by the path walk; `None` is a missing field.
    fn matches(&self, e: Option<&Value>) -> bool {
        match self {
            Pred::Eq(rhs) => match e {
                None => rhs.is_null(),
                Some(v) => compare_values(v, rhs) == Ordering::Equal,
            },
            Pred::Cmp(op, rhs) => {
                let lr = e.map_or(0, type_rank);
                let rr = type_rank(rhs);
                if lr != rr {
                    // missing vs null behave like null == null
                    return lr + rr == 5 && matches!(op, CmpOp::Gte | CmpOp::Lte);
                }
                let Some(v) = e else { return false };
                let ord = compare_values(v, rhs);
                match op {
                    CmpOp::Gt => ord == Ordering::Greater,
                    CmpOp::Gte => ord != Ordering::Less,
                    CmpOp::Lt => ord == Ordering::Less,
                    CmpOp::Lte => ord != Ordering::Greater,
                }
            }
            Pred::In(list) => match e {
                None => list.iter().any(Value::is_null),
                Some(v) => list.iter().any(|x| compare_values(v, x) == Ordering::Equal),
            },
            Pred::Exists => e.is_some(),
        }
    }
}

/// Walks `parts` from `obj` like MongoDB's `BSONElementIterator`, calling `f` on
/// every candidate value (`None` = missing). Stops and returns true as soon as
/// `f` does.
fn walk_obj<'a>(
    obj: &'a Map<String, Value>,
    parts: &[String],
    f: &mut dyn FnMut(Option<&'a Value>) -> bool,
) -> bool {
    let mut cur = obj;
    let mut i = 0;
    loop {
        let last = i + 1 == parts.len();
        let Some(v) = cur.get(parts[i].as_str()) else {
            return f(None);
        };
        match v {
            Value::Array(arr) => return walk_array(v, arr, &parts[i + 1..], f),
            Value::Object(m) if !last => {
                cur = m;
                i += 1;
            }
            _ if last => return f(Some(v)),
            // a scalar in the middle of the path
            _ => return f(None),
        }
    }
}

fn walk_array<'a>(
    whole: &'a Value,
    arr: &'a [Value],
    rest: &[String],
    f: &mut dyn FnMut(Option<&'a Value>) -> bool,
) -> bool {
    if rest.is_empty() {
        // Leaf array: each element, then the array itself.
        return arr.iter().any(|e| f(Some(e))) || f(Some(whole));
    }
    // A numeric component both names a field of object elements and selects
    // the element at that position.
    let offset = array_index(&rest[0]);
    for (idx, e) in arr.iter().enumerate() {
        let offset_match = offset == Some(idx);
        match e {
            Value::Object(m) => {
                // Implicit traversal: the element's own field named `rest[0]`...
                if walk_obj(m, rest, f) {
                    return true;
                }
                // ...and, for a numeric component, the element at that position.
                if offset_match {
                    let hit = if rest.len() == 1 {
                        f(Some(e))
                    } else {
                        walk_obj(m, &rest[1..], f)
                    };
                    if hit {
                        return true;
                    }
                }
            }
            _ if offset_match => {
                let hit = if rest.len() == 1 {
                    f(Some(e))
                } else if let Value::Array(inner) = e {
                    walk_array(e, inner, &rest[1..], f)
                } else {
                    false
                };
                if hit {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(v: Value) -> Filter {
        Filter::parse(&v, &QueryLimits::default()).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn err(v: Value) -> QueryError {
        match Filter::parse(&v, &QueryLimits::default()) {
            Ok(_) => panic!("{v} should be rejected"),
            Err(e) => e,
        }
    }

    fn corpus(docs: &[(&'static str, Value)]) -> Vec<(&'static str, Document)> {
        docs.iter()
            .map(|(id, v)| {
                let mut d = v.as_object().cloned().expect("object");
                d.insert("_id".into(), json!(id));
                (*id, d)
            })
            .collect()
    }

    fn check_table(docs: &[(&'static str, Document)], table: &[(Value, &[&str])]) {
        let mut failures = Vec::new();
        for (filter, expected) in table {
            let f = parse(filter.clone());
            let got: Vec<&str> = docs
                .iter()
                .filter(|(_, d)| f.matches(d))
                .map(|(id, _)| *id)
                .collect();
            let mut want: Vec<&str> = expected.to_vec();
            let mut got_sorted = got.clone();
            want.sort_unstable();
            got_sorted.sort_unstable();
            if want != got_sorted {
                failures.push(format!("{filter}: expected {want:?}, got {got_sorted:?}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    fn main_corpus() -> Vec<(&'static str, Document)> {
        corpus(&[
            ("int1", json!({"a": 1, "tags": ["x", "y"], "n": {"v": 10}})),
            ("flt1", json!({"a": 1.0, "tags": ["y"], "n": {"v": 10.5}})),
            ("flt25", json!({"a": 2.5, "tags": "x", "n": {"v": -3}})),
            ("str", json!({"a": "1", "tags": [], "n": {"v": "10"}})),
            ("null", json!({"a": null, "tags": [null], "n": null})),
            ("missing", json!({"tags": [["x"], "z"]})),
            ("arr", json!({"a": [1, 5, "x"], "n": [{"v": 1}, {"v": 20}]})),
            (
                "nested",
                json!({"a": [[2, 3], 7], "n": [{"w": 1}, {"v": null}]}),
            ),
            ("emptyarr", json!({"a": [], "n": []})),
            ("obj", json!({"a": {"b": 1, "c": 2}, "n": {"v": [3, 30]}})),
            ("bool", json!({"a": true, "n": 5})),
            (
                "big",
                json!({"a": 9_007_199_254_740_993_i64, "n": {"v": {"x": 1}}}),
            ),
        ])
    }

    const ALL: &[&str] = &[
        "int1", "flt1", "flt25", "str", "null", "missing", "arr", "nested", "emptyarr", "obj",
        "bool", "big",
    ];

    fn all_but(excluded: &[&str]) -> Vec<&'static str> {
        ALL.iter()
            .copied()
            .filter(|id| !excluded.contains(id))
            .collect()
    }

    #[test]
    fn match_table() {
        let not_a_null = all_but(&["null", "missing"]);
        let not_gt1 = all_but(&["flt25", "arr", "nested", "big"]);
        let not_tags_x = all_but(&["int1", "flt25"]);
        let nin_1_null = all_but(&["int1", "flt1", "arr", "null", "missing"]);
        let nin_null_empty = all_but(&["null", "missing", "emptyarr"]);
        let ne_arr = all_but(&["arr"]);
        let exists = all_but(&["missing"]);
        let table: Vec<(Value, &[&str])> = vec![
            // equality, int/float
            (json!({"a": 1}), &["int1", "flt1", "arr"]),
            (json!({"a": 1.0}), &["int1", "flt1", "arr"]),
            (json!({"a": {"$eq": 1}}), &["int1", "flt1", "arr"]),
            (json!({"a": "1"}), &["str"]),
            (json!({"a": 2}), &[]), // no traversal into nested arrays
            (json!({"a": 9_007_199_254_740_992_i64}), &[]),
            (json!({"a": 9_007_199_254_740_992.0_f64}), &[]),
            (json!({"a": {"$gt": 9_007_199_254_740_992.0_f64}}), &["big"]),
            (json!({"a": true}), &["bool"]),
            // null and missing
            (json!({"a": null}), &["null", "missing"]),
            (json!({"a": {"$ne": null}}), &not_a_null),
            (json!({"a": {"$exists": false}}), &["missing"]),
            (json!({"a": {"$exists": true}}), &exists),
            (json!({"a": {"$exists": 1}}), &exists),
            (json!({"a": {"$gte": null}}), &["null", "missing"]),
            (json!({"a": {"$lte": null}}), &["null", "missing"]),
            (json!({"a": {"$lt": null}}), &[]),
            (json!({"a": {"$gt": null}}), &[]),
            // comparisons with type bracketing
            (json!({"a": {"$gt": 1}}), &["flt25", "arr", "nested", "big"]),
            (
                json!({"a": {"$gte": 1}}),
                &["int1", "flt1", "flt25", "arr", "nested", "big"],
            ),
            (json!({"a": {"$lt": 2}}), &["int1", "flt1", "arr"]),
            (json!({"a": {"$lte": 1.0}}), &["int1", "flt1", "arr"]),
            (json!({"a": {"$gt": "0"}}), &["str", "arr"]),
            (json!({"a": {"$gt": false}}), &["bool"]),
            (json!({"a": {"$lt": true}}), &[]),
            (json!({"a": {"$gt": {}}}), &["obj"]),
            (json!({"a": {"$gt": []}}), &["arr", "nested"]),
            (json!({"a": {"$lt": [2]}}), &["arr", "emptyarr"]),
            // each operator of one field may be satisfied by a different element
            (json!({"a": {"$gt": 4, "$lt": 6}}), &["arr"]),
            (json!({"a": {"$gt": 1, "$lt": 3}}), &["flt25", "arr"]),
            // $in / $nin
            (json!({"a": {"$in": [1, "x"]}}), &["int1", "flt1", "arr"]),
            (
                json!({"a": {"$in": [null, 2.5]}}),
                &["flt25", "null", "missing"],
            ),
            (json!({"a": {"$in": []}}), &[]),
            (json!({"a": {"$in": [[]]}}), &["emptyarr"]),
            (json!({"a": {"$nin": [1, null]}}), &nin_1_null),
            (json!({"a": {"$nin": [null, []]}}), &nin_null_empty),
            // whole-array and element equality
            (json!({"a": [1, 5, "x"]}), &["arr"]),
            (json!({"a": [5, 1, "x"]}), &[]),
            (json!({"a": [2, 3]}), &["nested"]),
            (json!({"a": []}), &["emptyarr"]),
            (json!({"a": {"$ne": [1, 5, "x"]}}), &ne_arr),
            // embedded documents: exact, order-sensitive, numeric-aware
            (json!({"a": {"b": 1, "c": 2}}), &["obj"]),
            (json!({"a": {"c": 2, "b": 1}}), &[]),
            (json!({"a": {"$eq": {"b": 1, "c": 2.0}}}), &["obj"]),
            (json!({"a": {"b": 1}}), &[]),
            (json!({"a": {}}), &[]),
            // dotted paths and array positions
            (json!({"a.b": 1}), &["obj"]),
            (json!({"a.b": {"$exists": true}}), &["obj"]),
            (json!({"a.0": 1}), &["arr"]),
            (json!({"a.0": [2, 3]}), &["nested"]),
            (json!({"a.0.1": 3}), &["nested"]),
            (json!({"a.1": {"$gt": 6}}), &["nested"]),
            (json!({"tags.0": "x"}), &["int1"]),
            (json!({"tags.0.0": "x"}), &["missing"]),
            (json!({"tags": "x"}), &["int1", "flt25"]),
            (json!({"tags": ["x"]}), &["missing"]),
            (
                json!({"tags": null}),
                &["null", "arr", "nested", "emptyarr", "obj", "bool", "big"],
            ),
            (json!({"tags": {"$ne": "x"}}), &not_tags_x),
            (json!({"n.v": 10}), &["int1"]),
            (json!({"n.v": {"$gt": 5}}), &["int1", "flt1", "arr", "obj"]),
            (json!({"n.v": null}), &["null", "missing", "nested", "bool"]),
            (
                json!({"n.v": {"$exists": false}}),
                &["null", "missing", "emptyarr", "bool"],
            ),
            (json!({"n.v": {"$in": [1, 30]}}), &["arr", "obj"]),
            (json!({"n.v.x": 1}), &["big"]),
            (json!({"n.v": {"x": 1}}), &["big"]),
            (json!({"n.1.v": 20}), &["arr"]),
            // $not / $nor / $or / $and
            (json!({"a": {"$not": {"$gt": 1}}}), &not_gt1),
            (json!({"a": {"$not": {"$gte": null}}}), &not_a_null),
            (
                json!({"a": {"$not": {"$not": {"$gt": 1}}}}),
                &["flt25", "arr", "nested", "big"],
            ),
            (json!({"a": {"$not": {"$in": [1, null]}}}), &nin_1_null),
            (
                json!({"$nor": [{"a": 1}, {"a": null}]}),
                &["flt25", "str", "nested", "emptyarr", "obj", "bool", "big"],
            ),
            (
                json!({"$or": [{"a": 2.5}, {"n.v": "10"}]}),
                &["flt25", "str"],
            ),
            (
                json!({"$or": [{"a": {"$exists": false}}, {"a": []}]}),
                &["missing", "emptyarr"],
            ),
            (
                json!({"$and": [{"a": {"$gt": 0}}, {"a": {"$lt": 2}}]}),
                &["int1", "flt1", "arr"],
            ),
            (json!({"$and": [{"a": 1}], "tags": "y"}), &["int1", "flt1"]),
            (json!({"$or": [{}]}), ALL),
            (json!({}), ALL),
            (json!(null), ALL),
        ];
        assert!(table.len() >= 40);
        check_table(&main_corpus(), &table);
    }

    /// Cases from MongoDB's jstests/core/null_query_semantics.js (minus `undefined`).
    #[test]
    fn mongodb_null_semantics() {
        let docs = corpus(&[
            ("a_empty_subobject", json!({"a": {}})),
            ("a_null", json!({"a": null})),
            ("a_number", json!({"a": 4})),
            ("a_subobject_b_not_null", json!({"a": {"b": "hi"}})),
            ("a_subobject_b_null", json!({"a": {"b": null}})),
            ("no_a", json!({})),
            ("a_double_array", json!({"a": [[]]})),
            ("a_empty_array", json!({"a": []})),
            (
                "a_object_array_no_b_nulls",
                json!({"a": [{"b": 1}, {"b": 3}, {"b": "string"}]}),
            ),
            (
                "a_object_array_some_b_nulls",
                json!({"a": [{"b": null}, {"b": 3}, {"b": null}]}),
            ),
            (
                "a_object_array_some_b_missing",
                json!({"a": [{"b": 3}, {}]}),
            ),
            ("a_value_array_all_nulls", json!({"a": [null, null]})),
            ("a_value_array_no_nulls", json!({"a": [1, "string", 4]})),
            (
                "a_value_array_with_null",
                json!({"a": [1, "string", null, 4]}),
            ),
        ]);
        let a_null: &[&str] = &[
            "a_null",
            "a_value_array_all_nulls",
            "a_value_array_with_null",
            "no_a",
        ];
        let a_not_null: &[&str] = &[
            "a_double_array",
            "a_empty_array",
            "a_empty_subobject",
            "a_number",
            "a_object_array_no_b_nulls",
            "a_object_array_some_b_nulls",
            "a_object_array_some_b_missing",
            "a_subobject_b_not_null",
            "a_subobject_b_null",
            "a_value_array_no_nulls",
        ];
        let ab_null: &[&str] = &[
            "a_empty_subobject",
            "a_null",
            "a_number",
            "a_subobject_b_null",
            "no_a",
            "a_object_array_some_b_nulls",
            "a_object_array_some_b_missing",
        ];
        let ab_not_null: &[&str] = &[
            "a_subobject_b_not_null",
            "a_double_array",
            "a_empty_array",
            "a_object_array_no_b_nulls",
            "a_value_array_all_nulls",
            "a_value_array_no_nulls",
            "a_value_array_with_null",
        ];
        let table: Vec<(Value, &[&str])> = vec![
            (json!({"a": {"$eq": null}}), a_null),
            (json!({"a": {"$ne": null}}), a_not_null),
            (json!({"a": {"$not": {"$gte": null}}}), a_not_null),
            (json!({"a": {"$in": [null, 75]}}), a_null),
            (json!({"$or": [{"a": null}, {"a": 75}]}), a_null),
            (
                json!({"a": {"$nin": [null, []]}}),
                &[
                    "a_empty_subobject",
                    "a_number",
                    "a_subobject_b_not_null",
                    "a_subobject_b_null",
                    "a_object_array_no_b_nulls",
                    "a_object_array_some_b_nulls",
                    "a_object_array_some_b_missing",
                    "a_value_array_no_nulls",
                ],
            ),
            (json!({"a": {"$exists": false}}), &["no_a"]),
            (json!({"a.b": {"$eq": null}}), ab_null),
            (json!({"a.b": {"$in": [null, 75]}}), ab_null),
            (json!({"a.b": {"$ne": null}}), ab_not_null),
            (json!({"a.b": {"$nin": [null, 75]}}), ab_not_null),
            (
                json!({"a.b": {"$exists": false}}),
                &[
                    "no_a",
                    "a_empty_subobject",
                    "a_null",
                    "a_number",
                    "a_double_array",
                    "a_empty_array",
                    "a_value_array_all_nulls",
                    "a_value_array_no_nulls",
                    "a_value_array_with_null",
                ],
            ),
        ];
        check_table(&docs, &table);
    }

    #[test]
    fn numeric_components_also_match_object_fields() {
        let d = corpus(&[
            ("x", json!({"a": [{"0": 7}, 9]})),
            ("y", json!({"a": {"0": 7}})),
            ("z", json!({"a": [[{"b": 1}]]})),
        ]);
        check_table(
            &d,
            &[
                (json!({"a.0": 7}), &["x", "y"]),
                (json!({"a.0": {"0": 7}}), &["x"]),
                (json!({"a.1": 9}), &["x"]),
                (json!({"a.b": 1}), &[]),
                (json!({"a.0.b": 1}), &["z"]),
                (json!({"a.0.0.b": 1}), &["z"]),
            ],
        );
    }

    #[test]
    fn to_json_and_is_empty() {
        let f = parse(json!(null));
        assert!(f.is_empty());
        assert_eq!(f.to_json(), json!({}));
        assert!(parse(json!({})).is_empty());
        let v = json!({"a": {"$gt": 1}, "$or": [{"b": 2}, {"c": {"$in": [1, 2]}}]});
        let f = parse(v.clone());
        assert!(!f.is_empty());
        assert_eq!(f.to_json(), v);
    }

    #[test]
    fn unsupported_operators_are_named() {
        for (filter, op, path) in [
            (json!({"$where": "this.a == 1"}), "$where", ""),
            (json!({"$expr": {"$eq": ["$a", 1]}}), "$expr", ""),
            (json!({"$text": {"$search": "x"}}), "$text", ""),
            (json!({"$not": {"a": 1}}), "$not", ""),
            (json!({"$comment": "x"}), "$comment", ""),
            (json!({"a.b": {"$regex": "^x"}}), "$regex", "a.b"),
            (json!({"a": {"$elemMatch": {"b": 1}}}), "$elemMatch", "a"),
            (json!({"a": {"$function": {}}}), "$function", "a"),
            (json!({"a": {"$accumulator": {}}}), "$accumulator", "a"),
            (json!({"a": {"$size": 1}}), "$size", "a"),
            (json!({"a": {"$and": [{"b": 1}]}}), "$and", "a"),
            (json!({"a": {"$not": {"$regex": "x"}}}), "$regex", "a"),
            (json!({"$or": [{"a": {"$type": "string"}}]}), "$type", "a"),
        ] {
            let e = err(filter.clone());
            assert_eq!(e.code, "unsupported_operator", "{filter}");
            assert_eq!(e.operator.as_deref(), Some(op), "{filter}");
            assert_eq!(e.path, path, "{filter}");
            assert!(e.message.contains(op), "{}", e.message);
        }
        assert_eq!(
            err(json!({"a.b": {"$where": 1}})).to_string(),
            "unsupported operator `$where` at `a.b`"
        );
    }

    #[test]
    fn invalid_filters() {
        for filter in [
            json!(1),
            json!([{"a": 1}]),
            json!({"$and": []}),
            json!({"$or": {}}),
            json!({"$nor": [1]}),
            json!({"a": {"$gt": 1, "b": 2}}),
            json!({"a": {"b": 2, "$gt": 1}}),
            json!({"a": {"$in": 1}}),
            json!({"a": {"$nin": {"x": 1}}}),
            json!({"a": {"$not": 1}}),
            json!({"a": {"$not": {}}}),
            json!({"a": {"$not": {"$gt": 1, "b": 1}}}),
            json!({"a": {"$exists": "yes"}}),
        ] {
            assert_eq!(err(filter.clone()).code, "invalid_filter", "{filter}");
        }
    }

    #[test]
    fn invalid_field_names() {
        for filter in [
            json!({"": 1}),
            json!({"a..b": 1}),
            json!({"a.$b": 1}),
            json!({"$a.b": 1}),
            json!({"a.": 1}),
            json!({"a\u{0}": 1}),
            json!({"a": {"b": {"$gt": 1}}}),
            json!({"a": {"$eq": {"$gt": 1}}}),
            json!({"a": {"$in": [{"$gt": 1}]}}),
            json!({"a": [{"b.c": 1}]}),
        ] {
            assert_eq!(err(filter.clone()).code, "invalid_field_name", "{filter}");
        }
    }

    #[test]
    fn limits() {
        let limits = QueryLimits {
            max_depth: 3,
            max_nodes: 5,
            max_in_len: 3,
        };
        let ok = |v: Value| Filter::parse(&v, &limits).map(|_| ());
        let code = |v: Value| Filter::parse(&v, &limits).unwrap_err().code;
        // depth: top level 1, $and entry 2, operator object 3
        ok(json!({"$and": [{"a": {"$gt": 1}}]})).unwrap();
        assert_eq!(
            code(json!({"$and": [{"$or": [{"a": {"$gt": 1}}]}]})),
            "filter_too_deep"
        );
        assert_eq!(
            code(json!({"$and": [{"a": {"$not": {"$gt": 1}}}]})),
            "filter_too_deep"
        );
        ok(json!({"$and": [{"$or": [{"a": 1}]}]})).unwrap();
        assert_eq!(
            code(json!({"$and": [{"$or": [{"$nor": [{"a": 1}]}]}]})),
            "filter_too_deep"
        );
        // nodes
        ok(json!({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5})).unwrap();
        assert_eq!(
            code(json!({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6})),
            "filter_too_large"
        );
        assert_eq!(
            code(json!({"$or": [{"a": 1}, {"b": 1}, {"c": 1}, {"d": 1}, {"e": 1}]})),
            "filter_too_large"
        );
        // empty entries of logical operators count too
        ok(json!({"$or": [{}, {}, {}, {}]})).unwrap();
        assert_eq!(
            code(json!({"$or": [{}, {}, {}, {}, {}]})),
            "filter_too_large"
        );
        // $in length
        ok(json!({"a": {"$in": [1, 2, 3]}})).unwrap();
        assert_eq!(
            code(json!({"a": {"$in": [1, 2, 3, 4]}})),
            "in_list_too_long"
        );
        assert_eq!(
            code(json!({"a": {"$nin": [1, 2, 3, 4]}})),
            "in_list_too_long"
        );
        let e = Filter::parse(&json!({"a": {"$nin": [1, 2, 3, 4]}}), &limits).unwrap_err();
        assert_eq!(e.operator.as_deref(), Some("$nin"));
        assert_eq!(e.path, "a");
        // defaults
        let d = QueryLimits::default();
        assert_eq!((d.max_depth, d.max_nodes, d.max_in_len), (8, 256, 1000));
    }

    proptest! {
        #[test]
        fn negations_are_complements(
            d in super::super::tests::arb_json(),
            v in super::super::tests::arb_json(),
            path in prop::sample::select(vec!["a", "b", "a.b", "a.0", "b.1.a", "a.c.0"]),
            op in prop::sample::select(vec!["$eq", "$gt", "$gte", "$lt", "$lte", "$exists"]),
        ) {
            // Field names in the generated values are valid ("a", "b", "c", "0", "1").
            let mut doc = Document::new();
            doc.insert("a".into(), d);
            let operand = if op == "$exists" { json!(true) } else { v.clone() };
            let pos = parse(json!({ path: { op: operand.clone() } }));
            let not = parse(json!({ path: { "$not": { op: operand.clone() } } }));
            let nor = parse(json!({ "$nor": [{ path: { op: operand.clone() } }] }));
            prop_assert_eq!(pos.matches(&doc), !not.matches(&doc));
            prop_assert_eq!(pos.matches(&doc), !nor.matches(&doc));
            let eq = parse(json!({ path: { "$eq": v.clone() } }));
            let ne = parse(json!({ path: { "$ne": v.clone() } }));
            let inn = parse(json!({ path: { "$in": [v.clone()] } }));
            let nin = parse(json!({ path: { "$nin": [v.clone()] } }));
            prop_assert_eq!(eq.matches(&doc), !ne.matches(&doc));
            prop_assert_eq!(eq.matches(&doc), inn.matches(&doc));
            prop_assert_eq!(inn.matches(&doc), !nin.matches(&doc));
        }
    }
}
