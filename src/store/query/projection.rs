//! Inclusion / exclusion projections.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{parse_path, Document, QueryError};

/// Most fields in a projection. Each is matched against every returned document (and sent to
/// MongoDB), so a body of tens of thousands of fields would cost per document what its parse
/// cost once.
pub const MAX_PROJECTION_FIELDS: usize = 256;

/// A validated projection: `{a: 1, "b.c": 1}` (inclusion) or `{a: 0}` (exclusion).
///
/// As in MongoDB 4.4+: `_id` is kept unless excluded (`_id: 0` may appear in an
/// inclusion projection), dotted paths project into embedded documents and into
/// every element of arrays, output keeps the document's field order, an included
/// path through a scalar drops that field, and overlapping paths are rejected.
#[derive(Debug, Clone)]
pub struct Projection {
    spec: Vec<(String, bool)>,
    mode: Mode,
    tree: PNode,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    None,
    Include,
    Exclude,
}

#[derive(Debug, Clone, Default)]
struct PNode {
    leaf: bool,
    children: BTreeMap<String, PNode>,
}

impl Projection {
    /// Validates a projection; `null` or `{}` returns documents unchanged.
    pub fn parse(v: &Value) -> Result<Projection, QueryError> {
        let spec_obj = match v {
            Value::Null => return Ok(Projection::none()),
            Value::Object(m) if m.is_empty() => return Ok(Projection::none()),
            Value::Object(m) => m,
            _ => {
                return Err(QueryError::at(
                    "invalid_projection",
                    "",
                    "projection must be a JSON object",
                ))
            }
        };
        if spec_obj.len() > MAX_PROJECTION_FIELDS {
            return Err(QueryError::at(
                "invalid_projection",
                "",
                format!("projection has more than {MAX_PROJECTION_FIELDS} fields"),
            ));
        }
        let mut spec = Vec::with_capacity(spec_obj.len());
        let mut mode = None;
        let mut id_setting = None;
        for (path, val) in spec_obj {
            let include = match val {
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::Object(m) if m.keys().any(|k| k.starts_with('$')) => {
                    let op = m
                        .keys()
                        .find(|k| k.starts_with('$'))
                        .map_or("", String::as_str);
                    return Err(QueryError::unsupported(path, op));
                }
                _ => {
                    return Err(QueryError::at(
                        "invalid_projection",
                        path,
                        "projection values must be 1/0 or true/false",
                    ))
                }
            };
            if path == "$" || path.ends_with(".$") {
                return Err(QueryError::unsupported(path, "$"));
            }
            parse_path(path)?;
            spec.push((path.clone(), include));
            if path == "_id" {
                id_setting = Some(include);
                continue;
            }
            match mode {
                None => mode = Some(include),
                Some(m) if m != include => {
                    return Err(QueryError::at(
                        "invalid_projection",
                        path,
                        "cannot mix inclusion and exclusion (except `_id: 0`)",
                    ))
                }
                Some(_) => {}
            }
        }
        // Only `_id` given: `{_id: 1}` keeps just `_id`, `{_id: 0}` drops it.
        let mode = match mode.or(id_setting) {
            Some(true) => Mode::Include,
            _ => Mode::Exclude,
        };
        let mut tree = PNode::default();
        for (path, include) in &spec {
            let relevant = match mode {
                Mode::Include => *include,
                _ => !*include,
            };
            if relevant {
                insert(&mut tree, path)?;
            }
        }
        let id_mentioned = spec
            .iter()
            .any(|(p, _)| p == "_id" || p.starts_with("_id."));
        if mode == Mode::Include && !id_mentioned {
            insert(&mut tree, "_id")?;
        }
        Ok(Projection { spec, mode, tree })
    }

    fn none() -> Projection {
        Projection {
            spec: Vec::new(),
            mode: Mode::None,
            tree: PNode::default(),
        }
    }

    /// True when the projection returns documents unchanged.
    pub fn is_empty(&self) -> bool {
        self.mode == Mode::None
    }

    /// Projects one document.
    pub fn apply(&self, doc: &Document) -> Document {
        match self.mode {
            Mode::None => doc.clone(),
            Mode::Include => include_obj(doc, &self.tree),
            Mode::Exclude => exclude_obj(doc, &self.tree),
        }
    }

    /// The normalized projection (`1`/`0` values) for MongoDB.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.spec
                .iter()
                .map(|(p, inc)| (p.clone(), Value::from(i32::from(*inc))))
                .collect(),
        )
    }
}

fn insert(tree: &mut PNode, path: &str) -> Result<(), QueryError> {
    let collision = || {
        QueryError::at(
            "invalid_projection",
            path,
            "path collision: a path and its prefix are both projected",
        )
    };
    let mut node = tree;
    for part in path.split('.') {
        if node.leaf {
            return Err(collision());
        }
        node = node.children.entry(part.to_string()).or_default();
    }
    if node.leaf || !node.children.is_empty() {
        return Err(collision());
    }
    node.leaf = true;
    Ok(())
}

fn include_obj(obj: &Map<String, Value>, node: &PNode) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in obj {
        let Some(child) = node.children.get(k) else {
            continue;
        };
        if child.leaf {
            out.insert(k.clone(), v.clone());
            continue;
        }
        match v {
            Value::Object(m) => {
                out.insert(k.clone(), Value::Object(include_obj(m, child)));
            }
            Value::Array(a) => {
                out.insert(k.clone(), Value::Array(include_arr(a, child)));
            }
            _ => {}
        }
    }
    out
}

fn include_arr(arr: &[Value], node: &PNode) -> Vec<Value> {
    arr.iter()
        .filter_map(|e| match e {
            Value::Object(m) => Some(Value::Object(include_obj(m, node))),
            Value::Array(a) => Some(Value::Array(include_arr(a, node))),
            _ => None,
        })
        .collect()
}

fn exclude_obj(obj: &Map<String, Value>, node: &PNode) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in obj {
        let projected = match node.children.get(k) {
            None => v.clone(),
            Some(child) if child.leaf => continue,
            Some(child) => exclude_value(v, child),
        };
        out.insert(k.clone(), projected);
    }
    out
}

fn exclude_value(v: &Value, node: &PNode) -> Value {
    match v {
        Value::Object(m) => Value::Object(exclude_obj(m, node)),
        Value::Array(a) => Value::Array(a.iter().map(|e| exclude_value(e, node)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(spec: Value, doc: Value) -> Value {
        let p = Projection::parse(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        Value::Object(p.apply(doc.as_object().expect("object")))
    }

    fn text(v: &Value) -> String {
        serde_json::to_string(v).unwrap()
    }

    fn sample() -> Value {
        json!({
            "_id": "x",
            "a": 1,
            "b": {"c": 2, "d": 3},
            "e": [{"c": 1, "f": 2}, 5, [{"c": 3, "g": 4}], {"f": 6}],
            "s": "str"
        })
    }

    #[test]
    fn inclusion() {
        assert_eq!(
            text(&apply(json!({"b": 1, "a": 1}), sample())),
            r#"{"_id":"x","a":1,"b":{"c":2,"d":3}}"#
        );
        assert_eq!(
            apply(json!({"b.c": 1, "_id": 0}), sample()),
            json!({"b": {"c": 2}})
        );
        // arrays: objects projected, scalars dropped, nested arrays recursed,
        // objects without the field kept as {}
        assert_eq!(
            apply(json!({"e.c": 1, "_id": false}), sample()),
            json!({"e": [{"c": 1}, [{"c": 3}], {}]})
        );
        // a path through a scalar drops the field; a missing sub-field leaves {}
        assert_eq!(apply(json!({"s.x": 1}), sample()), json!({"_id": "x"}));
        assert_eq!(
            apply(json!({"b.zz": 1}), sample()),
            json!({"_id": "x", "b": {}})
        );
        assert_eq!(apply(json!({"_id": 1}), sample()), json!({"_id": "x"}));
        assert_eq!(apply(json!({"missing": 1}), sample()), json!({"_id": "x"}));
    }

    #[test]
    fn exclusion() {
        assert_eq!(
            text(&apply(json!({"b": 0, "e": 0}), sample())),
            r#"{"_id":"x","a":1,"s":"str"}"#
        );
        assert_eq!(
            apply(json!({"e.c": 0, "b.d": 0, "_id": 0, "a": false}), sample()),
            json!({"b": {"c": 2}, "e": [{"f": 2}, 5, [{"g": 4}], {"f": 6}], "s": "str"})
        );
        assert_eq!(
            apply(json!({"_id": 0}), sample()),
            json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [{"c": 1, "f": 2}, 5, [{"c": 3, "g": 4}], {"f": 6}], "s": "str"})
        );
        // `_id: 1` is allowed alongside exclusions
        assert_eq!(
            apply(json!({"_id": 1, "b": 0, "e": 0, "s": 0}), sample()),
            json!({"_id": "x", "a": 1})
        );
        assert_eq!(apply(json!({"s.x": 0}), sample())["s"], json!("str"));
    }

    #[test]
    fn empty_projection() {
        for spec in [json!(null), json!({})] {
            let p = Projection::parse(&spec).unwrap();
            assert!(p.is_empty());
            assert_eq!(
                Value::Object(p.apply(sample().as_object().unwrap())),
                sample()
            );
            assert_eq!(p.to_json(), json!({}));
        }
    }

    #[test]
    fn to_json_is_normalized() {
        let p = Projection::parse(&json!({"a": true, "b.c": 1.0, "_id": 0})).unwrap();
        assert!(!p.is_empty());
        assert_eq!(text(&p.to_json()), r#"{"a":1,"b.c":1,"_id":0}"#);
    }

    #[test]
    fn projections_have_a_bounded_number_of_fields() {
        let fields = |n: usize| -> Value {
            Value::Object((0..n).map(|i| (format!("f{i}"), json!(1))).collect())
        };
        Projection::parse(&fields(MAX_PROJECTION_FIELDS)).unwrap();
        let e = Projection::parse(&fields(MAX_PROJECTION_FIELDS + 1)).unwrap_err();
        assert_eq!(e.code, "invalid_projection");
    }

    #[test]
    fn rejects_bad_projections() {
        for (spec, code) in [
            (json!({"a": 1, "b": 0}), "invalid_projection"),
            (json!({"a": 0, "b": 1}), "invalid_projection"),
            (json!({"a": 1, "a.b": 1}), "invalid_projection"),
            (json!({"a.b": 0, "a": 0}), "invalid_projection"),
            (json!({"a": "x"}), "invalid_projection"),
            (json!({"a": null}), "invalid_projection"),
            (json!([1]), "invalid_projection"),
            (json!({"a": {"$slice": 1}}), "unsupported_operator"),
            (
                json!({"a": {"$elemMatch": {"b": 1}}}),
                "unsupported_operator",
            ),
            (json!({"a.$": 1}), "unsupported_operator"),
            (json!({"$a": 1}), "invalid_field_name"),
            (json!({"a..b": 1}), "invalid_field_name"),
        ] {
            assert_eq!(Projection::parse(&spec).unwrap_err().code, code, "{spec}");
        }
    }
}
