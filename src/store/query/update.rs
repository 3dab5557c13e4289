//! Updates: `$set`/`$unset`/`$inc` operators or a JSON merge patch.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::{
    array_index, check_field_name, check_key, check_value, clip, join_path, value_depth,
    walk_value, Document, QueryError, QueryLimits, Step, Trail, MAX_DOCUMENT_DEPTH, MAX_PATH_PARTS,
};

/// Largest number of `null`s an update may append to pad an array
/// (`$set: {"a.100": 1}` on a short array).
pub const MAX_ARRAY_PADDING: usize = 10_000;

/// Most bytes the dotted paths of one update may add up to. A merge patch repeats a parent's
/// key in the path of each of its leaves, so without this bound a long key over a few hundred
/// leaves would build hundreds of megabytes of paths.
pub const MAX_UPDATE_PATH_BYTES: usize = 1024 * 1024;

/// A validated update.
///
/// Both forms are applied with MongoDB's update semantics so that
/// [`Update::apply`] and MongoDB (given [`Update::to_mongo_update`]) produce the
/// same document: paths are applied in MongoDB's field order (lexicographic,
/// numeric for array indexes), dotted paths create missing intermediate objects,
/// numeric components index arrays (padding with `null`), `$unset` of an array
/// element sets it to `null`, and creating a field inside a non-container value
/// is an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Operator form. Each map goes from dotted path to operand.
    Operators {
        /// `$set` paths and values.
        set: Document,
        /// `$unset` paths (operands are ignored, as in MongoDB).
        unset: Document,
        /// `$inc` paths and numeric increments.
        inc: Document,
    },
    /// An RFC 7396 JSON merge patch (`null` deletes), applied as the equivalent
    /// `$set`/`$unset` of dotted leaf paths. Differences from RFC 7396: an object
    /// in the patch that meets an existing non-object value is an error (where
    /// MongoDB fails with "cannot create field") rather than a replacement,
    /// numeric keys index existing arrays, and a patch object with no non-null
    /// leaves does not create an empty object where none exists.
    MergePatch(Value),
}

#[derive(Debug, Clone, Copy)]
enum Op<'a> {
    Set(&'a Value),
    Unset,
    Inc(&'a Number),
}

enum UNode<'a> {
    Leaf(Op<'a>),
    Inner(Vec<(String, UNode<'a>)>),
}

impl Update {
    /// Validates an update. An object whose keys start with `$` is the operator
    /// form (only `$set`, `$unset`, `$inc`); any other object is a merge patch.
    /// `_id` may not be modified. At most `limits.max_nodes` paths are allowed.
    pub fn parse(v: &Value, limits: &QueryLimits) -> Result<Update, QueryError> {
        let Value::Object(top) = v else {
            return Err(QueryError::at(
                "invalid_update",
                "",
                "update must be a JSON object",
            ));
        };
        let update = if top.keys().any(|k| k.starts_with('$')) {
            parse_operators(top)?
        } else {
            check_patch(top)?;
            // Counted before `ops` builds the paths, which is what this bounds.
            let (mut leaves, mut bytes) = (0, 0);
            patch_size(top, 0, &mut leaves, &mut bytes);
            if leaves > limits.max_nodes {
                return Err(too_many_paths(limits));
            }
            if bytes > MAX_UPDATE_PATH_BYTES {
                return Err(QueryError::at(
                    "invalid_update",
                    "",
                    format!("update paths add up to more than {MAX_UPDATE_PATH_BYTES} bytes"),
                ));
            }
            Update::MergePatch(v.clone())
        };
        let ops = update.ops();
        if ops.len() > limits.max_nodes {
            return Err(too_many_paths(limits));
        }
        build_tree(&ops)?;
        Ok(update)
    }

    /// Applies the update in place. On error the document is left unchanged.
    pub fn apply(&self, doc: &mut Document) -> Result<(), QueryError> {
        // Re-check what `parse` checks: the enum's fields are public.
        let mut ops = self.ops();
        if let Update::MergePatch(patch) = self {
            let Value::Object(patch) = patch else {
                return Err(QueryError::at(
                    "invalid_update",
                    "",
                    "merge patch must be an object",
                ));
            };
            check_patch(patch)?;
            if let Some(id) = patch.get("_id") {
                match doc.get("_id") {
                    Some(current) if current == id => {
                        ops.retain(|(path, _)| path != "_id");
                    }
                    Some(_) => {
                        return Err(QueryError::at(
                            "invalid_update",
                            "_id",
                            "`_id` may not be changed",
                        ))
                    }
                    None => {}
                }
            }
        } else if let Update::Operators { set, unset, inc } = self {
            for path in set.keys().chain(unset.keys()).chain(inc.keys()) {
                check_update_path(path)?;
            }
            if let Some(path) = inc.iter().find(|(_, v)| !v.is_number()).map(|(p, _)| p) {
                return Err(QueryError::with_op(
                    "invalid_update",
                    path,
                    "$inc",
                    "`$inc` needs a number",
                ));
            }
        }
        let tree = build_tree(&ops)?;
        let mut root = Value::Object(doc.clone());
        apply_children(&mut root, &tree, "")?;
        if value_depth(&root) > MAX_DOCUMENT_DEPTH {
            return Err(QueryError::at(
                "invalid_update",
                "",
                format!("update would nest the document deeper than {MAX_DOCUMENT_DEPTH} levels"),
            ));
        }
        if let Value::Object(m) = root {
            *doc = m;
        }
        Ok(())
    }

    /// The update for MongoDB: the operator form as given, or the merge patch
    /// as `{$set: {dotted paths}, $unset: {...}}`. Never an empty document
    /// (which MongoDB would treat as a replacement); a no-op is `{$set: {}}`.
    pub fn to_mongo_update(&self) -> Value {
        let (set, unset, inc) = match self {
            Update::Operators { set, unset, inc } => (set.clone(), unset.clone(), inc.clone()),
            Update::MergePatch(_) => {
                let mut set = Map::new();
                let mut unset = Map::new();
                for (path, op) in self.ops() {
                    match op {
                        Op::Set(v) => {
                            set.insert(path, v.clone());
                        }
                        _ => {
                            unset.insert(path, Value::from(""));
                        }
                    }
                }
                (set, unset, Map::new())
            }
        };
        let mut out = Map::new();
        for (name, m) in [("$set", set), ("$unset", unset), ("$inc", inc)] {
            if !m.is_empty() {
                out.insert(name.to_string(), Value::Object(m));
            }
        }
        if out.is_empty() {
            out.insert("$set".to_string(), Value::Object(Map::new()));
        }
        Value::Object(out)
    }

    /// The flat list of (dotted path, operation).
    fn ops(&self) -> Vec<(String, Op<'_>)> {
        let mut ops = Vec::new();
        match self {
            Update::Operators { set, unset, inc } => {
                ops.extend(set.iter().map(|(p, v)| (p.clone(), Op::Set(v))));
                ops.extend(unset.keys().map(|p| (p.clone(), Op::Unset)));
                // Non-numbers (only possible in hand-built values) are rejected by `apply`.
                ops.extend(inc.iter().filter_map(|(p, v)| match v {
                    Value::Number(n) => Some((p.clone(), Op::Inc(n))),
                    _ => None,
                }));
            }
            Update::MergePatch(Value::Object(patch)) => flatten(patch, "", &mut ops),
            Update::MergePatch(_) => {}
        }
        ops
    }
}

fn too_many_paths(limits: &QueryLimits) -> QueryError {
    QueryError::at(
        "invalid_update",
        "",
        format!("update touches more than {} paths", limits.max_nodes),
    )
}

/// Adds the leaves of a merge patch under a path of `prefix` bytes, and the bytes of their
/// dotted paths, without building the paths.
fn patch_size(patch: &Map<String, Value>, prefix: usize, leaves: &mut usize, bytes: &mut usize) {
    for (k, v) in patch {
        let len = if prefix == 0 {
            k.len()
        } else {
            prefix + 1 + k.len()
        };
        match v {
            Value::Object(m) => patch_size(m, len, leaves, bytes),
            _ => {
                *leaves += 1;
                *bytes += len;
            }
        }
    }
}

fn parse_operators(top: &Map<String, Value>) -> Result<Update, QueryError> {
    let mut set = Map::new();
    let mut unset = Map::new();
    let mut inc = Map::new();
    for (op, arg) in top {
        if !op.starts_with('$') {
            return Err(QueryError::at(
                "invalid_update",
                op,
                "cannot mix update operators and plain fields",
            ));
        }
        if !matches!(op.as_str(), "$set" | "$unset" | "$inc") {
            return Err(QueryError::unsupported("", op));
        }
        let Value::Object(fields) = arg else {
            return Err(QueryError::with_op(
                "invalid_update",
                "",
                op,
                format!("`{op}` needs an object of paths"),
            ));
        };
        for (path, v) in fields {
            check_update_path(path)?;
            match op.as_str() {
                "$set" => {
                    check_value(v, 2, path)?;
                    set.insert(path.clone(), v.clone());
                }
                "$unset" => {
                    unset.insert(path.clone(), v.clone());
                }
                _ => {
                    if !v.is_number() {
                        return Err(QueryError::with_op(
                            "invalid_update",
                            path,
                            op,
                            "`$inc` needs a number",
                        ));
                    }
                    inc.insert(path.clone(), v.clone());
                }
            }
        }
    }
    Ok(Update::Operators { set, unset, inc })
}

fn check_update_path(path: &str) -> Result<(), QueryError> {
    if path.split('.').nth(MAX_PATH_PARTS).is_some() {
        return Err(QueryError::at(
            "invalid_field_name",
            path,
            format!("field path has more than {MAX_PATH_PARTS} components"),
        ));
    }
    for part in path.split('.') {
        if part == "$" || part.starts_with("$[") {
            return Err(QueryError::unsupported(path, part));
        }
        check_field_name(part, path)?;
    }
    if path == "_id" || path.starts_with("_id.") {
        return Err(QueryError::at(
            "invalid_update",
            path,
            "`_id` may not be modified",
        ));
    }
    Ok(())
}

/// Checks a merge patch: field names, nesting, and `_id` left alone.
fn check_patch(patch: &Map<String, Value>) -> Result<(), QueryError> {
    if let Some(id) = patch.get("_id") {
        if id.is_null() || id.is_object() || id.is_array() {
            return Err(QueryError::at(
                "invalid_update",
                "_id",
                "`_id` may not be removed, merged or set to an array",
            ));
        }
    }
    walk_patch(patch, 1, &mut Trail::new(""))
}

fn walk_patch<'a>(
    patch: &'a Map<String, Value>,
    depth: usize,
    trail: &mut Trail<'a>,
) -> Result<(), QueryError> {
    if depth > MAX_DOCUMENT_DEPTH {
        return Err(QueryError::at(
            "invalid_update",
            &trail.render(),
            format!("merge patch nests deeper than {MAX_DOCUMENT_DEPTH} levels"),
        ));
    }
    for (k, v) in patch {
        trail.push(Step::Key(k));
        check_key(k, trail)?;
        match v {
            Value::Object(m) => walk_patch(m, depth + 1, trail)?,
            other => walk_value(other, depth + 1, trail)?,
        }
        trail.pop();
    }
    Ok(())
}

fn flatten<'a>(patch: &'a Map<String, Value>, prefix: &str, ops: &mut Vec<(String, Op<'a>)>) {
    for (k, v) in patch {
        let path = join_path(prefix, k);
        match v {
            Value::Null => ops.push((path, Op::Unset)),
            Value::Object(m) => flatten(m, &path, ops),
            other => ops.push((path, Op::Set(other))),
        }
    }
}

/// MongoDB applies update paths per component in this order: array indexes
/// numerically, everything else by bytes.
fn cmp_field_names(a: &str, b: &str) -> Ordering {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if digits(a) && digits(b) {
        let (ta, tb) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
        ta.len()
            .cmp(&tb.len())
            .then_with(|| ta.cmp(tb))
            .then_with(|| a.cmp(b))
    } else {
        a.as_bytes().cmp(b.as_bytes())
    }
}

fn build_tree<'a>(ops: &[(String, Op<'a>)]) -> Result<Vec<(String, UNode<'a>)>, QueryError> {
    let mut root: Vec<(String, UNode<'a>)> = Vec::new();
    for (path, op) in ops {
        let conflict = || {
            QueryError::at(
                "invalid_update",
                path,
                "update paths conflict (a path and its prefix are both updated)",
            )
        };
        let parts: Vec<&str> = path.split('.').collect();
        let mut level = &mut root;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let pos = level.iter().position(|(n, _)| n == part);
            match (pos, last) {
                (Some(_), true) => return Err(conflict()),
                (None, true) => level.push((part.to_string(), UNode::Leaf(*op))),
                (None, false) => {
                    level.push((part.to_string(), UNode::Inner(Vec::new())));
                    let idx = level.len() - 1;
                    let UNode::Inner(next) = &mut level[idx].1 else {
                        return Err(conflict());
                    };
                    level = next;
                }
                (Some(idx), false) => match &mut level[idx].1 {
                    UNode::Inner(next) => level = next,
                    UNode::Leaf(_) => return Err(conflict()),
                },
            }
        }
    }
    sort_tree(&mut root);
    Ok(root)
}

fn sort_tree(level: &mut [(String, UNode<'_>)]) {
    level.sort_by(|(a, _), (b, _)| cmp_field_names(a, b));
    for (_, node) in level.iter_mut() {
        if let UNode::Inner(children) = node {
            sort_tree(children);
        }
    }
}

/// Whether a subtree sets or increments something (and so may create fields).
fn creates(node: &UNode<'_>) -> bool {
    match node {
        UNode::Leaf(Op::Unset) => false,
        UNode::Leaf(_) => true,
        UNode::Inner(children) => children.iter().any(|(_, c)| creates(c)),
    }
}

fn apply_children(
    container: &mut Value,
    children: &[(String, UNode<'_>)],
    prefix: &str,
) -> Result<(), QueryError> {
    for (name, node) in children {
        let path = join_path(prefix, name);
        match container {
            Value::Object(map) => apply_in_object(map, name, node, &path)?,
            Value::Array(arr) => apply_in_array(arr, name, node, &path)?,
            _ => return Err(not_a_container(&path)),
        }
    }
    Ok(())
}

fn apply_in_object(
    map: &mut Map<String, Value>,
    name: &str,
    node: &UNode<'_>,
    path: &str,
) -> Result<(), QueryError> {
    match node {
        UNode::Leaf(Op::Set(v)) => {
            map.insert(name.to_string(), (*v).clone());
        }
        UNode::Leaf(Op::Unset) => {
            if map.contains_key(name) {
                // `retain` keeps the order of the remaining fields with or without
                // serde_json's `preserve_order` feature.
                map.retain(|k, _| k != name);
            }
        }
        UNode::Leaf(Op::Inc(n)) => match map.get_mut(name) {
            None => {
                map.insert(name.to_string(), Value::Number((*n).clone()));
            }
            Some(cur) => *cur = increment(cur, n, path)?,
        },
        UNode::Inner(children) => match map.get_mut(name) {
            None => {
                if creates(node) {
                    let mut fresh = Value::Object(Map::new());
                    apply_children(&mut fresh, children, path)?;
                    map.insert(name.to_string(), fresh);
                }
            }
            Some(v) if v.is_object() || v.is_array() => apply_children(v, children, path)?,
            Some(_) => {
                if creates(node) {
                    return Err(not_a_container(path));
                }
            }
        },
    }
    Ok(())
}

fn apply_in_array(
    arr: &mut Vec<Value>,
    name: &str,
    node: &UNode<'_>,
    path: &str,
) -> Result<(), QueryError> {
    let Some(idx) = array_index(name) else {
        if creates(node) {
            return Err(QueryError::at(
                "invalid_update",
                path,
                format!("cannot create field `{}` in an array", clip(name)),
            ));
        }
        return Ok(());
    };
    match node {
        UNode::Leaf(Op::Set(v)) => {
            pad(arr, idx, path)?;
            arr[idx] = (*v).clone();
        }
        UNode::Leaf(Op::Unset) => {
            if let Some(e) = arr.get_mut(idx) {
                *e = Value::Null;
            }
        }
        UNode::Leaf(Op::Inc(n)) => {
            if let Some(e) = arr.get_mut(idx) {
                *e = increment(e, n, path)?;
            } else {
                pad(arr, idx, path)?;
                arr[idx] = Value::Number((*n).clone());
            }
        }
        UNode::Inner(children) => {
            if let Some(e) = arr.get_mut(idx) {
                if e.is_object() || e.is_array() {
                    apply_children(e, children, path)?;
                } else if creates(node) {
                    return Err(not_a_container(path));
                }
            } else if creates(node) {
                let mut fresh = Value::Object(Map::new());
                apply_children(&mut fresh, children, path)?;
                pad(arr, idx, path)?;
                arr[idx] = fresh;
            }
        }
    }
    Ok(())
}

fn pad(arr: &mut Vec<Value>, idx: usize, path: &str) -> Result<(), QueryError> {
    if idx >= arr.len() {
        if idx - arr.len() > MAX_ARRAY_PADDING {
            return Err(QueryError::at(
                "invalid_update",
                path,
                format!("cannot pad an array with more than {MAX_ARRAY_PADDING} nulls"),
            ));
        }
        arr.resize(idx + 1, Value::Null);
    }
    Ok(())
}

fn not_a_container(path: &str) -> QueryError {
    QueryError::at(
        "invalid_update",
        path,
        "cannot create a field inside a value that is not an object or array",
    )
}

/// `$inc` arithmetic as in MongoDB: integer + integer stays integer (overflow is
/// an error), anything involving a float is a float.
fn increment(cur: &Value, by: &Number, path: &str) -> Result<Value, QueryError> {
    let Value::Number(cur) = cur else {
        return Err(QueryError::with_op(
            "invalid_update",
            path,
            "$inc",
            "cannot apply `$inc` to a non-numeric value",
        ));
    };
    let overflow = || QueryError::with_op("invalid_update", path, "$inc", "`$inc` overflows");
    if let (Some(a), Some(b)) = (cur.as_i64(), by.as_i64()) {
        return a.checked_add(b).map(Value::from).ok_or_else(overflow);
    }
    let sum = cur.as_f64().unwrap_or(f64::NAN) + by.as_f64().unwrap_or(f64::NAN);
    Number::from_f64(sum)
        .map(Value::Number)
        .ok_or_else(overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(v: Value) -> Update {
        Update::parse(&v, &QueryLimits::default()).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn err(v: Value) -> QueryError {
        match Update::parse(&v, &QueryLimits::default()) {
            Ok(_) => panic!("{v} should be rejected"),
            Err(e) => e,
        }
    }

    fn obj(v: Value) -> Document {
        v.as_object().cloned().expect("object")
    }

    /// Applies and returns the document as compact JSON text (order-sensitive).
    fn run(update: Value, doc: Value) -> Result<String, QueryError> {
        let mut d = obj(doc);
        parse(update).apply(&mut d)?;
        Ok(serde_json::to_string(&d).unwrap())
    }

    #[test]
    fn set_creates_paths_in_mongodb_order() {
        assert_eq!(
            run(
                json!({"$set": {"z": 1, "b.y": 2, "b.x": 3, "a": 4}}),
                json!({"_id": 1, "a": 0})
            )
            .unwrap(),
            r#"{"_id":1,"a":4,"b":{"x":3,"y":2},"z":1}"#
        );
        // existing fields are replaced in place
        assert_eq!(
            run(
                json!({"$set": {"a.b": [1], "c": null}}),
                json!({"a": {"b": 0, "c": 1}, "c": 2})
            )
            .unwrap(),
            r#"{"a":{"b":[1],"c":1},"c":null}"#
        );
        // numeric components index arrays (padding with null) and name object fields
        assert_eq!(
            run(
                json!({"$set": {"arr.3": "x", "arr.0.k": 1, "o.0": true}}),
                json!({"arr": [{}, 2], "o": {}})
            )
            .unwrap(),
            r#"{"arr":[{"k":1},2,null,"x"],"o":{"0":true}}"#
        );
        // array indexes are processed numerically
        assert_eq!(
            run(json!({"$set": {"a.10": 10, "a.9": 9}}), json!({"a": []})).unwrap(),
            serde_json::to_string(
                &json!({"a": [null, null, null, null, null, null, null, null, null, 9, 10]})
            )
            .unwrap()
        );
    }

    #[test]
    fn set_into_scalars_fails_without_changes() {
        for (update, doc) in [
            (json!({"$set": {"a.b": 1}}), json!({"a": 5})),
            (json!({"$set": {"a.b": 1}}), json!({"a": null})),
            (json!({"$set": {"a.b": 1}}), json!({"a": [1, 2]})),
            (json!({"$set": {"x": 1, "a.0.b": 1}}), json!({"a": [1, 2]})),
            (json!({"$inc": {"a.b.c": 1}}), json!({"a": {"b": "s"}})),
            (json!({"$set": {"a.100000": 1}}), json!({"a": []})),
        ] {
            let mut d = obj(doc.clone());
            let e = parse(update.clone()).apply(&mut d).unwrap_err();
            assert_eq!(e.code, "invalid_update", "{update}");
            assert_eq!(Value::Object(d), doc, "document must be unchanged");
        }
    }

    #[test]
    fn unset() {
        assert_eq!(
            run(
                json!({"$unset": {"b": "", "c.d": 1, "arr.1": true, "nope.x": 1, "s.x": 1}}),
                json!({"a": 1, "b": 2, "c": {"d": 1, "e": 2}, "arr": [1, 2, 3], "s": "str", "z": 0})
            )
            .unwrap(),
            r#"{"a":1,"c":{"e":2},"arr":[1,null,3],"s":"str","z":0}"#
        );
        // unsetting inside a missing path creates nothing
        assert_eq!(
            run(json!({"$unset": {"a.b.c": 1}}), json!({})).unwrap(),
            "{}"
        );
    }

    #[test]
    fn inc() {
        assert_eq!(
            run(
                json!({"$inc": {"i": 2, "f": 0.5, "new": -1, "m": 1.5, "n.x": 3}}),
                json!({"i": 1, "f": 1, "m": 2})
            )
            .unwrap(),
            r#"{"i":3,"f":1.5,"m":3.5,"n":{"x":3},"new":-1}"#
        );
        let d = run(json!({"$inc": {"a": 1.0}}), json!({"a": 1})).unwrap();
        assert_eq!(d, r#"{"a":2.0}"#);
        for doc in [
            json!({"a": "1"}),
            json!({"a": null}),
            json!({"a": [1]}),
            json!({"a": i64::MAX}),
        ] {
            let mut d = obj(doc.clone());
            assert_eq!(
                parse(json!({"$inc": {"a": 1}}))
                    .apply(&mut d)
                    .unwrap_err()
                    .code,
                "invalid_update",
                "{doc}"
            );
        }
    }

    #[test]
    fn operator_form_validation() {
        for (update, code) in [
            (json!({"$push": {"a": 1}}), "unsupported_operator"),
            (json!({"$rename": {"a": "b"}}), "unsupported_operator"),
            (json!({"$set": {"a": 1}, "b": 2}), "invalid_update"),
            (json!({"$set": 1}), "invalid_update"),
            (json!({"$inc": {"a": "1"}}), "invalid_update"),
            (json!({"$set": {"_id": 1}}), "invalid_update"),
            (json!({"$unset": {"_id": 1}}), "invalid_update"),
            (json!({"$inc": {"_id.x": 1}}), "invalid_update"),
            (
                json!({"$set": {"a": 1}, "$unset": {"a": 1}}),
                "invalid_update",
            ),
            (
                json!({"$set": {"a.b": 1}, "$inc": {"a": 1}}),
                "invalid_update",
            ),
            (json!({"$set": {"a": 1, "a.b": 1}}), "invalid_update"),
            (json!({"$set": {"a.$.b": 1}}), "unsupported_operator"),
            (json!({"$set": {"a.$[].b": 1}}), "unsupported_operator"),
            (json!({"$set": {"a.$b": 1}}), "invalid_field_name"),
            (json!({"$set": {"a..b": 1}}), "invalid_field_name"),
            (json!({"$set": {"a": {"$x": 1}}}), "invalid_field_name"),
            (json!({"$set": {"a": [{"b.c": 1}]}}), "invalid_field_name"),
            (json!([]), "invalid_update"),
            (json!(null), "invalid_update"),
        ] {
            assert_eq!(err(update.clone()).code, code, "{update}");
        }
        let e = err(json!({"$push": {"a": 1}}));
        assert_eq!(e.operator.as_deref(), Some("$push"));
        // `$set: {a.b}` with `$set: {a.c}` is fine
        parse(json!({"$set": {"a.b": 1, "a.c": 2}, "$inc": {"a.d": 1}}));
        let limits = QueryLimits {
            max_nodes: 2,
            ..QueryLimits::default()
        };
        assert!(Update::parse(&json!({"$set": {"a": 1, "b": 1}}), &limits).is_ok());
        assert_eq!(
            Update::parse(
                &json!({"$set": {"a": 1, "b": 1}, "$unset": {"c": 1}}),
                &limits
            )
            .unwrap_err()
            .code,
            "invalid_update"
        );
    }

    #[test]
    fn operator_form_passes_through() {
        let u =
            parse(json!({"$inc": {"n": 1}, "$set": {"a.b": [1, {"c": 2}]}, "$unset": {"x": ""}}));
        assert_eq!(
            u.to_mongo_update(),
            json!({"$set": {"a.b": [1, {"c": 2}]}, "$unset": {"x": ""}, "$inc": {"n": 1}})
        );
        assert_eq!(
            parse(json!({"$set": {}})).to_mongo_update(),
            json!({"$set": {}})
        );
        assert!(matches!(u, Update::Operators { .. }));
    }

    #[test]
    fn merge_patch_size_is_bounded_before_paths_are_built() {
        let limits = QueryLimits::default();
        // A long key over many leaves: refused by count, before any path is built.
        let key = "k".repeat(400 * 1024);
        let leaves: Map<String, Value> = (0..50_000).map(|i| (format!("f{i}"), json!(1))).collect();
        let e = Update::parse(&json!({ key.clone(): leaves }), &limits).unwrap_err();
        assert_eq!(e.code, "invalid_update");
        assert!(e.message.contains("paths"), "{}", e.message);
        // Few leaves, but their paths repeat the long key: refused by bytes.
        let leaves: Map<String, Value> = (0..10).map(|i| (format!("f{i}"), json!(1))).collect();
        let e = Update::parse(&json!({ key.clone(): leaves }), &limits).unwrap_err();
        assert!(e.message.contains("bytes"), "{}", e.message);
        // One leaf under the long key is fine.
        parse(json!({ key: {"f": 1} }));
    }

    #[test]
    fn merge_patch() {
        let patch =
            json!({"a": "z", "b": {"c": null, "d": {"e": 2}}, "f": null, "g": [1, {"h": null}]});
        let u = parse(patch.clone());
        assert_eq!(u, Update::MergePatch(patch));
        assert_eq!(
            serde_json::to_string(&u.to_mongo_update()).unwrap(),
            r#"{"$set":{"a":"z","b.d.e":2,"g":[1,{"h":null}]},"$unset":{"b.c":"","f":""}}"#
        );
        assert_eq!(
            run(json!({"a": "z", "b": {"c": null, "d": {"e": 2}}, "f": null, "g": [1, {"h": null}]}),
                json!({"_id": "k", "a": "y", "b": {"c": 1, "x": 0}, "f": 1, "g": {"old": 1}}))
            .unwrap(),
            r#"{"_id":"k","a":"z","b":{"x":0,"d":{"e":2}},"g":[1,{"h":null}]}"#
        );
        // empty patch is a no-op, and never an empty (replacement) Mongo update
        let u = parse(json!({}));
        assert_eq!(u.to_mongo_update(), json!({"$set": {}}));
        assert_eq!(run(json!({}), json!({"a": 1})).unwrap(), r#"{"a":1}"#);
    }

    #[test]
    fn merge_patch_rfc7396_examples() {
        // RFC 7396 appendix A, restricted to object targets and object patches.
        for (target, patch, result) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({})), // RFC: {"a": {"bb": {}}}
        ] {
            let mut d = obj(target);
            parse(patch).apply(&mut d).unwrap();
            assert_eq!(Value::Object(d), result);
        }
    }

    #[test]
    fn merge_patch_validation_and_id() {
        for (patch, code) in [
            (json!({"a": {"$set": 1}}), "invalid_field_name"),
            (json!({"a.b": 1}), "invalid_field_name"),
            (json!({"": 1}), "invalid_field_name"),
            (json!({"a": {"b": [{"c\u{0}": 1}]}}), "invalid_field_name"),
            (json!({"_id": null}), "invalid_update"),
            (json!({"_id": {"x": 1}}), "invalid_update"),
            (json!({"_id": [1]}), "invalid_update"),
            (json!("x"), "invalid_update"),
        ] {
            assert_eq!(err(patch.clone()).code, code, "{patch}");
        }
        // `_id` may be repeated unchanged but not changed
        assert_eq!(
            run(json!({"_id": "k", "a": 1}), json!({"_id": "k"})).unwrap(),
            r#"{"_id":"k","a":1}"#
        );
        let mut d = obj(json!({"_id": "k", "a": 0}));
        assert_eq!(
            parse(json!({"_id": "j", "a": 1}))
                .apply(&mut d)
                .unwrap_err()
                .code,
            "invalid_update"
        );
        assert_eq!(Value::Object(d), json!({"_id": "k", "a": 0}));
        assert_eq!(
            parse(json!({"_id": "k", "a": 1})).to_mongo_update(),
            json!({"$set": {"_id": "k", "a": 1}})
        );
        // merge patches into a non-object are errors, as in MongoDB
        let mut d = obj(json!({"a": 5}));
        assert_eq!(
            parse(json!({"a": {"b": 1}}))
                .apply(&mut d)
                .unwrap_err()
                .code,
            "invalid_update"
        );
    }

    #[test]
    fn hand_built_values_are_checked() {
        let mut d = obj(json!({"a": 1}));
        let bad = Update::Operators {
            set: obj(json!({"_id": 2})),
            unset: Map::new(),
            inc: Map::new(),
        };
        assert_eq!(bad.apply(&mut d).unwrap_err().code, "invalid_update");
        let bad = Update::Operators {
            set: Map::new(),
            unset: Map::new(),
            inc: obj(json!({"a": "x"})),
        };
        assert_eq!(bad.apply(&mut d).unwrap_err().code, "invalid_update");
        assert!(Update::MergePatch(json!(1)).apply(&mut d).is_err());
        let mut with_id = obj(json!({"_id": 1, "a": 1}));
        assert!(Update::MergePatch(json!({"_id": null}))
            .apply(&mut with_id)
            .is_err());
        assert_eq!(Value::Object(with_id), json!({"_id": 1, "a": 1}));
        assert_eq!(Value::Object(d), json!({"a": 1}));
    }

    fn rfc_merge(target: &Value, patch: &Value) -> Value {
        let Value::Object(p) = patch else {
            return patch.clone();
        };
        let mut t = match target {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        for (k, v) in p {
            if v.is_null() {
                t.retain(|key, _| key != k);
            } else {
                let cur = t.get(k).cloned().unwrap_or(Value::Null);
                t.insert(k.clone(), rfc_merge(&cur, v));
            }
        }
        Value::Object(t)
    }

    /// Every nested patch object sets at least one value.
    fn sets_something(v: &Value) -> bool {
        match v {
            Value::Object(m) => m
                .values()
                .any(|x| !x.is_null() && (!x.is_object() || sets_something(x))),
            _ => true,
        }
    }

    fn nested_objects_set_something(m: &Map<String, Value>) -> bool {
        m.values().all(|v| match v {
            Value::Object(o) => sets_something(v) && nested_objects_set_something(o),
            _ => true,
        })
    }

    fn arb_patch() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            Just(Value::Null),
            super::super::tests::arb_json().prop_filter("no objects", |v| !v.is_object()),
        ];
        let tree = leaf.prop_recursive(3, 16, 3, |inner| {
            prop::collection::vec((prop::sample::select(vec!["a", "b", "c"]), inner), 0..3)
                .prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                })
        });
        prop::collection::vec((prop::sample::select(vec!["a", "b", "c"]), tree), 0..4)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    fn arb_doc() -> impl Strategy<Value = Document> {
        prop::collection::vec(
            (
                prop::sample::select(vec!["a", "b", "c"]),
                super::super::tests::arb_json(),
            ),
            0..4,
        )
        .prop_map(|kv| kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    proptest! {
        #[test]
        fn merge_patch_agrees_with_rfc7396(doc in arb_doc(), patch in arb_patch()) {
            prop_assume!(nested_objects_set_something(patch.as_object().unwrap()));
            let update = parse(patch.clone());
            let mut ours = doc.clone();
            if update.apply(&mut ours).is_ok() {
                prop_assert_eq!(Value::Object(ours), rfc_merge(&Value::Object(doc), &patch));
            } else {
                prop_assert_eq!(&ours, &doc);
            }
        }

        #[test]
        fn mongo_translation_is_equivalent(doc in arb_doc(), patch in arb_patch()) {
            let update = parse(patch);
            let translated = parse(update.to_mongo_update());
            let (mut a, mut b) = (doc.clone(), doc);
            let ra = update.apply(&mut a).map_err(|e| e.code);
            let rb = translated.apply(&mut b).map_err(|e| e.code);
            prop_assert_eq!(ra, rb);
            // field order included
            prop_assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        }
    }
}
