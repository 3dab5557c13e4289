//! A validated subset of the MongoDB query language for JSON documents.
//!
//! The same validated [`Filter`], [`Sort`], [`Projection`] and [`Update`] are
//! evaluated in-process against the embedded JSON store and passed through to
//! MongoDB (`to_json` / `to_mongo_update`), so the evaluation here mirrors
//! MongoDB semantics for JSON data: array fan-out on dotted paths, type
//! bracketing, `null` matching missing fields, BSON comparison order, and
//! array-aware sort keys.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Number, Value};

mod filter;
mod projection;
mod sort;
mod update;

pub use self::filter::{CmpOp, Conjunct, Filter};
pub use self::projection::Projection;
pub use self::sort::{index_keys, IndexKey, Sort, SortPosition, TopK};
pub use self::update::Update;

/// A stored document: a JSON object.
pub type Document = Map<String, Value>;

/// Maximum nesting depth of a stored document (the top-level object is depth 1).
pub const MAX_DOCUMENT_DEPTH: usize = 32;

/// Most components in a dotted field path. A stored document nests at most
/// [`MAX_DOCUMENT_DEPTH`] levels, so longer paths can address nothing; the bound keeps the
/// trees built from paths (projections, updates) shallow enough to walk and drop recursively.
pub const MAX_PATH_PARTS: usize = 100;

/// Longest field path, name or operator quoted in an error, in bytes; longer ones are cut
/// short and end in `…`, so a 400 KiB key does not come back as a 400 KiB error body.
pub const MAX_QUOTED_BYTES: usize = 200;

/// `s` cut to at most [`MAX_QUOTED_BYTES`] (at a character boundary) and marked with `…`
/// when it was longer. Cutting an already cut string gives the same string.
pub fn clip(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_QUOTED_BYTES {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_QUOTED_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

/// A rejected filter, sort, projection, update or document.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryError {
    /// Stable machine-readable code, e.g. `unsupported_operator`.
    pub code: &'static str,
    /// Dotted path of the offending field (empty at the top level).
    pub path: String,
    /// The offending operator, when there is one.
    pub operator: Option<String>,
    /// Human-readable description.
    pub message: String,
}

impl QueryError {
    fn new(code: &'static str, path: &str, operator: Option<&str>, message: String) -> Self {
        // Paths and operators come from the request: quote them clipped.
        let path = clip(path);
        let message = if path.is_empty() {
            message
        } else {
            format!("{message} at `{path}`")
        };
        QueryError {
            code,
            path: path.into_owned(),
            operator: operator.map(|op| clip(op).into_owned()),
            message,
        }
    }

    pub(crate) fn unsupported(path: &str, op: &str) -> Self {
        Self::new(
            "unsupported_operator",
            path,
            Some(op),
            format!("unsupported operator `{}`", clip(op)),
        )
    }

    pub(crate) fn with_op(
        code: &'static str,
        path: &str,
        op: &str,
        msg: impl Into<String>,
    ) -> Self {
        Self::new(code, path, Some(op), msg.into())
    }

    pub(crate) fn at(code: &'static str, path: &str, msg: impl Into<String>) -> Self {
        Self::new(code, path, None, msg.into())
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for QueryError {}

/// Size limits applied when parsing filters and updates.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Maximum nesting of `$and`/`$or`/`$nor`/`$not`/operator objects (default 8).
    pub max_depth: usize,
    /// Maximum number of predicate and logical nodes (default 256).
    pub max_nodes: usize,
    /// Maximum length of an `$in`/`$nin` list (default 1000).
    pub max_in_len: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_depth: 8,
            max_nodes: 256,
            max_in_len: 1000,
        }
    }
}

/// Checks a document before it is stored: every field name (recursively) must be
/// non-empty and must not start with `$` or contain `.` or NUL
/// (`invalid_field_name`); nesting may not exceed [`MAX_DOCUMENT_DEPTH`]
/// (`document_too_deep`). The limits are not used yet; the depth is fixed.
pub fn validate_document(doc: &Document, _limits: &QueryLimits) -> Result<(), QueryError> {
    check_map(doc, 1, "")
}

/// Total order over JSON values following MongoDB's BSON comparison order:
/// null < numbers < strings < objects < arrays < booleans. Numbers compare
/// numerically and exactly across integers and floats, strings by bytes,
/// objects field by field (value type, then name, then value) and arrays
/// element-wise, a shorter prefix sorting first.
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Object(x), Value::Object(y)) => {
            for ((ka, va), (kb, vb)) in x.iter().zip(y.iter()) {
                let ord = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                    .then_with(|| compare_values(va, vb));
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Array(x), Value::Array(y)) => {
            for (va, vb) in x.iter().zip(y.iter()) {
                let ord = compare_values(va, vb);
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => Ordering::Equal, // both null
    }
}

/// MongoDB's canonical type rank; values of different ranks never compare
/// equal and comparison operators only match within one rank ("type bracketing").
/// A missing field has rank 0 (see `filter`).
pub(crate) fn type_rank(v: &Value) -> u8 {
    match v {
        Value::Null => 5,
        Value::Number(_) => 10,
        Value::String(_) => 15,
        Value::Object(_) => 20,
        Value::Array(_) => 25,
        Value::Bool(_) => 40,
    }
}

enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Exact numeric comparison; NaN sorts below every number and equals NaN (as in MongoDB).
fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => compare_floats(x, y),
        (Num::Int(x), Num::Float(y)) => compare_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => compare_int_float(y, x).reverse(),
    }
}

fn compare_floats(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

fn compare_int_float(i: i128, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Greater;
    }
    // Rounding is monotonic, so a strict inequality after rounding holds exactly.
    let rounded = i as f64;
    match rounded.partial_cmp(&f) {
        Some(Ordering::Equal) | None => i.cmp(&(f as i128)), // f is integral and in range here
        Some(ord) => ord,
    }
}

/// Splits and checks a dotted field path used in a filter, sort or projection.
pub(crate) fn parse_path(path: &str) -> Result<Vec<String>, QueryError> {
    if path.is_empty() {
        return Err(QueryError::at(
            "invalid_field_name",
            path,
            "field path must not be empty",
        ));
    }
    if path.split('.').nth(MAX_PATH_PARTS).is_some() {
        return Err(QueryError::at(
            "invalid_field_name",
            path,
            format!("field path has more than {MAX_PATH_PARTS} components"),
        ));
    }
    path.split('.')
        .map(|part| {
            if part.is_empty() {
                Err(QueryError::at(
                    "invalid_field_name",
                    path,
                    "field path has an empty component",
                ))
            } else if part.contains('\0') {
                Err(QueryError::at(
                    "invalid_field_name",
                    path,
                    "field path contains NUL",
                ))
            } else if part.starts_with('$') {
                Err(QueryError::at(
                    "invalid_field_name",
                    path,
                    format!(
                        "field path component `{}` must not start with `$`",
                        clip(part)
                    ),
                ))
            } else {
                Ok(part.to_string())
            }
        })
        .collect()
}

/// `Some(i)` when `part` is a canonical array index (`0`, `1`, `12`, not `01`).
pub(crate) fn array_index(part: &str) -> Option<usize> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if part.len() > 1 && part.starts_with('0') {
        return None;
    }
    part.parse().ok()
}

pub(crate) fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Checks one stored field name.
pub(crate) fn check_field_name(name: &str, path: &str) -> Result<(), QueryError> {
    field_name_problem(name).map_err(|problem| QueryError::at("invalid_field_name", path, problem))
}

/// What is wrong with a stored field name, if anything.
pub(crate) fn field_name_problem(name: &str) -> Result<(), &'static str> {
    Err(if name.is_empty() {
        "field names must not be empty"
    } else if name.starts_with('$') {
        "field names must not start with `$`"
    } else if name.contains('.') {
        "field names must not contain `.`"
    } else if name.contains('\0') {
        "field names must not contain NUL"
    } else {
        return Ok(());
    })
}

/// One step into a JSON value: a field name or an array position.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step<'a> {
    /// A field of an object.
    Key(&'a str),
    /// An element of an array.
    Index(usize),
}

/// The path a walker stands at, as borrowed steps under a dotted `base`. It is rendered only
/// when an error quotes it: building a string per visited node would cost key length x node
/// count (a 400 KiB key over 300,000 array items is 120 GB of copying).
#[derive(Debug)]
pub(crate) struct Trail<'a> {
    base: &'a str,
    steps: Vec<Step<'a>>,
}

impl<'a> Trail<'a> {
    /// A trail at `base` (a dotted path, empty at the top level).
    pub(crate) fn new(base: &'a str) -> Self {
        Trail {
            base,
            steps: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, step: Step<'a>) {
        self.steps.push(step);
    }

    pub(crate) fn pop(&mut self) {
        self.steps.pop();
    }

    /// The dotted path, clipped like every quoted path ([`clip`]); the work is bounded by the
    /// clip length, not by the length of the keys.
    pub(crate) fn render(&self) -> String {
        // A few bytes over the limit tell `clip` to cut and mark the path.
        let cap = MAX_QUOTED_BYTES + 4;
        let mut out = String::new();
        let parts = (!self.base.is_empty())
            .then_some(Cow::Borrowed(self.base))
            .into_iter()
            .chain(self.steps.iter().map(|step| match step {
                Step::Key(k) => Cow::Borrowed(*k),
                Step::Index(i) => Cow::Owned(i.to_string()),
            }));
        for (n, part) in parts.enumerate() {
            if n > 0 {
                out.push('.');
            }
            let room = cap.saturating_sub(out.len());
            let mut end = part.len().min(room);
            while !part.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(&part[..end]);
            if out.len() >= cap {
                break;
            }
        }
        clip(&out).into_owned()
    }
}

/// Recursively checks field names and nesting of a value located at `path`,
/// whose own nesting depth is `depth` (objects and arrays count).
pub(crate) fn check_value(v: &Value, depth: usize, path: &str) -> Result<(), QueryError> {
    walk_value(v, depth, &mut Trail::new(path))
}

/// [`check_value`] at the walker's current position.
pub(crate) fn walk_value<'a>(
    v: &'a Value,
    depth: usize,
    trail: &mut Trail<'a>,
) -> Result<(), QueryError> {
    match v {
        Value::Object(m) => walk_map(m, depth, trail),
        Value::Array(a) => {
            check_depth(depth, trail)?;
            for (i, e) in a.iter().enumerate() {
                if e.is_object() || e.is_array() {
                    trail.push(Step::Index(i));
                    walk_value(e, depth + 1, trail)?;
                    trail.pop();
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_map(m: &Map<String, Value>, depth: usize, path: &str) -> Result<(), QueryError> {
    walk_map(m, depth, &mut Trail::new(path))
}

fn walk_map<'a>(
    m: &'a Map<String, Value>,
    depth: usize,
    trail: &mut Trail<'a>,
) -> Result<(), QueryError> {
    check_depth(depth, trail)?;
    for (k, v) in m {
        trail.push(Step::Key(k));
        check_key(k, trail)?;
        walk_value(v, depth + 1, trail)?;
        trail.pop();
    }
    Ok(())
}

/// Refuses a stored field name (`invalid_field_name`) at `trail`, which already ends with it.
pub(crate) fn check_key(key: &str, trail: &Trail<'_>) -> Result<(), QueryError> {
    field_name_problem(key)
        .map_err(|problem| QueryError::at("invalid_field_name", &trail.render(), problem))
}

fn check_depth(depth: usize, trail: &Trail<'_>) -> Result<(), QueryError> {
    if depth > MAX_DOCUMENT_DEPTH {
        Err(QueryError::at(
            "document_too_deep",
            &trail.render(),
            format!("document nesting exceeds {MAX_DOCUMENT_DEPTH} levels"),
        ))
    } else {
        Ok(())
    }
}

/// Nesting depth of a value (scalars 0, `{}` 1, `{"a": {}}` 2).
pub(crate) fn value_depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(value_depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn doc(v: Value) -> Document {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn type_order() {
        let ordered = [
            json!(null),
            json!(-5),
            json!(1),
            json!(1.5),
            json!(""),
            json!("a"),
            json!("b"),
            json!({}),
            json!({"a": 1}),
            json!([]),
            json!([1]),
            json!(false),
            json!(true),
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare_values(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn numbers_compare_exactly() {
        assert_eq!(compare_values(&json!(1), &json!(1.0)), Ordering::Equal);
        assert_eq!(compare_values(&json!(-0.0), &json!(0)), Ordering::Equal);
        // 2^53 + 1 is not representable as f64; must still be greater than 2^53.
        let big = json!(9_007_199_254_740_993_i64);
        let f = json!(9_007_199_254_740_992.0_f64);
        assert_eq!(compare_values(&big, &f), Ordering::Greater);
        assert_eq!(compare_values(&f, &big), Ordering::Less);
        assert_eq!(
            compare_values(&json!(u64::MAX), &json!(i64::MAX)),
            Ordering::Greater
        );
        assert_eq!(
            compare_values(&json!(u64::MAX), &json!(1e300)),
            Ordering::Less
        );
        assert_eq!(compare_values(&json!(-3), &json!(-2.5)), Ordering::Less);
    }

    #[test]
    fn strings_compare_by_bytes() {
        assert_eq!(compare_values(&json!("B"), &json!("a")), Ordering::Less);
        assert_eq!(compare_values(&json!("ab"), &json!("abc")), Ordering::Less);
        assert_eq!(compare_values(&json!("é"), &json!("z")), Ordering::Greater);
    }

    #[test]
    fn objects_compare_type_then_name_then_value() {
        // value type is compared before the field name
        assert_eq!(
            compare_values(&json!({"z": 1}), &json!({"a": "x"})),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&json!({"a": 1}), &json!({"b": 1})),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&json!({"a": 1}), &json!({"a": 1, "b": 0})),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&json!({"a": 1, "b": 2}), &json!({"a": 1.0, "b": 2})),
            Ordering::Equal
        );
        // field order is significant, as in BSON
        assert_ne!(
            compare_values(&json!({"a": 1, "b": 2}), &json!({"b": 2, "a": 1})),
            Ordering::Equal
        );
        assert_eq!(
            compare_values(&json!([1, 2]), &json!([1, 3])),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&json!([2]), &json!([1, 3])),
            Ordering::Greater
        );
        assert_eq!(compare_values(&json!([1]), &json!([1, 0])), Ordering::Less);
    }

    #[test]
    fn validate_document_rules() {
        let limits = QueryLimits::default();
        assert!(validate_document(&doc(json!({"a": {"b": [1, {"c": 2}]}})), &limits).is_ok());
        for (bad, path) in [
            (json!({"$a": 1}), "$a"),
            (json!({"a": {"": 1}}), "a."),
            (json!({"a": [{"b.c": 1}]}), "a.0.b.c"),
            (json!({"a\u{0}": 1}), "a\u{0}"),
            (json!({"x": {"$set": 1}}), "x.$set"),
        ] {
            let err = validate_document(&doc(bad.clone()), &limits).unwrap_err();
            assert_eq!(err.code, "invalid_field_name", "{bad}");
            assert_eq!(err.path, path);
        }
        let mut deep = json!(1);
        for _ in 0..32 {
            deep = json!({ "a": deep });
        }
        assert!(validate_document(&doc(deep.clone()), &limits).is_ok());
        let deeper = json!({ "a": deep });
        let err = validate_document(&doc(deeper), &limits).unwrap_err();
        assert_eq!(err.code, "document_too_deep");
        let mut deep_arr = json!(1);
        for _ in 0..32 {
            deep_arr = json!([deep_arr]);
        }
        let err = validate_document(&doc(json!({ "a": deep_arr })), &limits).unwrap_err();
        assert_eq!(err.code, "document_too_deep");
    }

    #[test]
    fn error_display() {
        let e = QueryError::unsupported("a.b", "$where");
        assert_eq!(e.to_string(), "unsupported operator `$where` at `a.b`");
        assert_eq!(e.operator.as_deref(), Some("$where"));
        let e = QueryError::unsupported("", "$where");
        assert_eq!(e.to_string(), "unsupported operator `$where`");
    }

    #[test]
    fn paths() {
        assert_eq!(parse_path("a.b.0").unwrap(), vec!["a", "b", "0"]);
        for bad in ["", "a..b", ".a", "a.", "a.$b", "$a", "a\u{0}b"] {
            assert_eq!(
                parse_path(bad).unwrap_err().code,
                "invalid_field_name",
                "{bad}"
            );
        }
        assert_eq!(array_index("0"), Some(0));
        assert_eq!(array_index("12"), Some(12));
        assert_eq!(array_index("01"), None);
        assert_eq!(array_index("+1"), None);
        assert_eq!(array_index("a"), None);
    }

    #[test]
    fn quoted_paths_are_clipped() {
        assert_eq!(clip("a.b"), "a.b");
        let long = "é".repeat(300);
        let cut = clip(&long);
        assert!(
            cut.len() <= MAX_QUOTED_BYTES + '…'.len_utf8(),
            "{}",
            cut.len()
        );
        assert!(cut.ends_with('…') && long.starts_with(cut.trim_end_matches('…')));
        assert_eq!(clip(&cut), cut, "clipping twice changes nothing");

        let key = "k".repeat(400 * 1024);
        let e = validate_document(
            &doc(json!({ key.clone(): [1, {"$x": 1}] })),
            &Default::default(),
        )
        .unwrap_err();
        assert_eq!(e.code, "invalid_field_name");
        assert!(e.path.len() <= MAX_QUOTED_BYTES + 3 && e.path.ends_with('…'));
        assert!(
            e.message.len() < 2 * MAX_QUOTED_BYTES,
            "{}",
            e.message.len()
        );
        let e = QueryError::unsupported(&key, &format!("${key}"));
        assert!(e.message.len() < 3 * MAX_QUOTED_BYTES);
        assert!(e.operator.unwrap().len() <= MAX_QUOTED_BYTES + 3);
    }

    #[test]
    fn trail_renders_only_what_it_is_asked_for() {
        let mut t = Trail::new("a.b");
        t.push(Step::Index(3));
        t.push(Step::Key("c"));
        assert_eq!(t.render(), "a.b.3.c");
        t.pop();
        assert_eq!(t.render(), "a.b.3");
        let mut t = Trail::new("");
        t.push(Step::Key(""));
        assert_eq!(t.render(), "");
        t.push(Step::Key("x"));
        assert_eq!(t.render(), ".x");
        // A path of many long keys is cut without being built whole.
        let key = "y".repeat(100_000);
        let mut t = Trail::new("");
        for _ in 0..1000 {
            t.push(Step::Key(&key));
        }
        let r = t.render();
        assert!(
            r.len() <= MAX_QUOTED_BYTES + 3 && r.ends_with('…'),
            "{}",
            r.len()
        );
    }

    #[test]
    fn long_keys_over_many_items_are_checked_in_one_pass() {
        // 400 KiB key over 300,000 nested arrays: a path string per element would copy
        // 120 GB; the trail copies nothing.
        let key = "k".repeat(400 * 1024);
        let items = vec![json!([]); 300_000];
        let d = doc(json!({ key.clone(): items }));
        validate_document(&d, &Default::default()).unwrap();
        let mut items = vec![json!({"ok": 1}); 300_000];
        items.push(json!({"bad.name": 1}));
        let e = validate_document(&doc(json!({ key: items })), &Default::default()).unwrap_err();
        assert_eq!(e.code, "invalid_field_name");
        assert!(e.path.ends_with('…'));
    }

    #[test]
    fn paths_have_a_bounded_number_of_components() {
        let ok = vec!["a"; MAX_PATH_PARTS].join(".");
        assert_eq!(parse_path(&ok).unwrap().len(), MAX_PATH_PARTS);
        let long = vec!["a"; MAX_PATH_PARTS + 1].join(".");
        assert_eq!(parse_path(&long).unwrap_err().code, "invalid_field_name");
        let huge = vec!["a"; 300_000].join(".");
        let e = parse_path(&huge).unwrap_err();
        assert!(e.message.contains("components"), "{}", e.message);
        assert!(Projection::parse(&json!({ huge.clone(): 1 })).is_err());
        assert!(Sort::parse(&json!({ huge.clone(): 1 })).is_err());
        assert!(Filter::parse(&json!({ huge.clone(): 1 }), &Default::default()).is_err());
        assert!(Update::parse(&json!({"$set": { huge: 1 }}), &Default::default()).is_err());
    }

    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..4).prop_map(|i| json!(i)),
            (-3i64..4).prop_map(|i| json!(i as f64 + 0.5)),
            (-3i64..4).prop_map(|i| json!(i as f64)),
            prop::sample::select(vec!["", "a", "b", "ab"]).prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (prop::sample::select(vec!["a", "b", "c", "0", "1"]), inner),
                    0..4
                )
                .prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn compare_values_is_a_total_order(a in arb_json(), b in arb_json(), c in arb_json()) {
            prop_assert_eq!(compare_values(&a, &a), Ordering::Equal);
            prop_assert_eq!(compare_values(&a, &b), compare_values(&b, &a).reverse());
            if compare_values(&a, &b) != Ordering::Greater
                && compare_values(&b, &c) != Ordering::Greater
            {
                prop_assert_ne!(compare_values(&a, &c), Ordering::Greater);
            }
        }
    }
}
