//! Tenant index declarations: [`IndexName`] and [`IndexKeys`], validated once at the edge.

use super::ValidationError;
use serde_json::{Map, Value};
use std::fmt;

/// Most fields in one index (MongoDB allows 32; a tenant gets 8, like a sort).
pub const MAX_INDEX_FIELDS: usize = 8;

/// Longest index name, in bytes.
pub const MAX_INDEX_NAME_BYTES: usize = 128;

/// Most components of an index key path (as for filter paths).
const MAX_PATH_PARTS: usize = 100;

/// The name of the `_id` index every collection has.
pub const ID_INDEX_NAME: &str = "_id_";

/// An index name: 1 to 128 bytes, no NUL, no `/`, not starting with `$`. Names are shown
/// back to clients, so nothing else is allowed in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexName(String);

impl IndexName {
    /// Validates a raw name.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.is_empty() || raw.len() > MAX_INDEX_NAME_BYTES {
            return Err(ValidationError::new(
                "name",
                format!("an index name is 1 to {MAX_INDEX_NAME_BYTES} bytes"),
            ));
        }
        if raw.contains('\0') || raw.contains('/') || raw.starts_with('$') {
            return Err(ValidationError::new(
                "name",
                "an index name may not contain NUL or `/`, nor start with `$`",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the `_id` index, which cannot be created or dropped.
    pub fn is_id(&self) -> bool {
        self.0 == ID_INDEX_NAME
    }
}

impl fmt::Display for IndexName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key pattern of an index: 1 to [`MAX_INDEX_FIELDS`] distinct dotted paths (filter
/// path rules: non-empty components without NUL, none starting with `$`), each ascending
/// (`1`) or descending (`-1`), in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexKeys(Vec<IndexField>);

/// One field of an index key pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexField {
    /// The dotted path.
    pub path: String,
    /// Descending (`-1`) rather than ascending (`1`).
    pub descending: bool,
}

impl IndexKeys {
    /// Validates a `{"path": 1 | -1, ...}` object (field order is the key order).
    pub fn parse(v: &Value) -> Result<Self, ValidationError> {
        let Value::Object(m) = v else {
            return Err(ValidationError::new(
                "keys",
                "must be an object of field paths to 1 or -1",
            ));
        };
        if m.is_empty() || m.len() > MAX_INDEX_FIELDS {
            return Err(ValidationError::new(
                "keys",
                format!("an index has 1 to {MAX_INDEX_FIELDS} fields"),
            ));
        }
        let mut fields = Vec::with_capacity(m.len());
        for (path, dir) in m {
            check_path(path)?;
            let descending = match dir.as_f64() {
                Some(1.0) => false,
                Some(-1.0) => true,
                _ => {
                    return Err(ValidationError::new(
                        "keys",
                        "each key direction must be 1 or -1",
                    ))
                }
            };
            fields.push(IndexField {
                path: path.clone(),
                descending,
            });
        }
        Ok(Self(fields))
    }

    /// The fields, in key order.
    pub fn fields(&self) -> &[IndexField] {
        &self.0
    }

    /// `{"path": 1 | -1, ...}`, as MongoDB takes and reports key patterns.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for f in &self.0 {
            m.insert(
                f.path.clone(),
                Value::from(if f.descending { -1 } else { 1 }),
            );
        }
        Value::Object(m)
    }

    /// MongoDB's default name: `path_1_other_-1`.
    pub fn default_name(&self) -> String {
        self.0
            .iter()
            .map(|f| format!("{}_{}", f.path, if f.descending { -1 } else { 1 }))
            .collect::<Vec<_>>()
            .join("_")
    }

    /// Whether this is exactly the `_id` key pattern (`{"_id": 1}`).
    pub fn is_id(&self) -> bool {
        matches!(self.0.as_slice(), [f] if f.path == "_id" && !f.descending)
    }
}

fn check_path(path: &str) -> Result<(), ValidationError> {
    let bad = path.is_empty()
        || path.split('.').nth(MAX_PATH_PARTS).is_some()
        || path
            .split('.')
            .any(|p| p.is_empty() || p.contains('\0') || p.starts_with('$'));
    if bad {
        return Err(ValidationError::new(
            "keys",
            format!(
                "key paths are dotted field names (at most {MAX_PATH_PARTS} non-empty components, \
                 none starting with `$` or holding NUL)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert_eq!(IndexName::parse("sku_1").unwrap().as_str(), "sku_1");
        for bad in ["", "$x", "a/b", "a\0b", &"n".repeat(129)] {
            assert!(IndexName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(IndexName::parse("_id_").unwrap().is_id());
    }

    #[test]
    fn keys() {
        let k = IndexKeys::parse(&json!({"sku": 1, "a.b": -1})).unwrap();
        assert_eq!(k.default_name(), "sku_1_a.b_-1");
        assert_eq!(k.to_json(), json!({"sku": 1, "a.b": -1}));
        assert!(k.fields()[1].descending);
        assert!(IndexKeys::parse(&json!({"_id": 1})).unwrap().is_id());
        for bad in [
            json!({}),
            json!([]),
            json!({"a": 2}),
            json!({"a": "text"}),
            json!({"$a": 1}),
            json!({"a..b": 1}),
            json!({"a.$b": 1}),
            json!({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1, "h": 1, "i": 1}),
        ] {
            assert!(IndexKeys::parse(&bad).is_err(), "{bad}");
        }
    }
}
