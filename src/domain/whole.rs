//! Non-negative integers in request bodies. JSON Schema's `integer` includes `3.0` and `3e2`,
//! which serde refuses for integer fields; these helpers accept any JSON number with an exact
//! integral value in range, so what the OpenAPI document calls valid is accepted.

use serde::de::{Deserializer, Error, Unexpected, Visitor};
use serde::Deserialize;
use std::fmt;

/// A non-negative integer written in any JSON number form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole(pub u64);

struct WholeVisitor;

impl Visitor<'_> for WholeVisitor {
    type Value = Whole;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative integer")
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Whole, E> {
        Ok(Whole(v))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Whole, E> {
        u64::try_from(v)
            .map(Whole)
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Whole, E> {
        // 2^64 is exactly representable; everything below it that is integral fits a u64.
        if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
            Ok(Whole(v as u64))
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WholeVisitor)
    }
}

/// `deserialize_with` for a `u32` field.
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let Whole(v) = Whole::deserialize(d)?;
    u32::try_from(v).map_err(|_| D::Error::invalid_value(Unexpected::Unsigned(v), &"a u32"))
}

/// `deserialize_with` for an `Option<u64>` field (`null` is `None`).
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "u32")]
        a: u32,
        #[serde(default, deserialize_with = "opt_u64")]
        b: Option<u64>,
    }

    fn parse(s: &str) -> Option<(u32, Option<u64>)> {
        serde_json::from_str::<T>(s).ok().map(|t| (t.a, t.b))
    }

    #[test]
    fn integral_numbers_in_any_form() {
        assert_eq!(parse(r#"{"a": 3}"#), Some((3, None)));
        assert_eq!(parse(r#"{"a": 3.0, "b": 2e2}"#), Some((3, Some(200))));
        assert_eq!(parse(r#"{"a": 1, "b": null}"#), Some((1, None)));
        assert_eq!(parse(r#"{"a": 4294967295}"#), Some((u32::MAX, None)));
        for bad in [
            r#"{"a": 3.5}"#,
            r#"{"a": -1}"#,
            r#"{"a": -1.0}"#,
            r#"{"a": 4294967296}"#,
            r#"{"a": "3"}"#,
            r#"{"a": 1, "b": 18446744073709551616}"#,
            r#"{"a": 1, "b": 1.5}"#,
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
