//! Secondary index keys and query plans for the embedded store.
//!
//! An index entry's key is the document's index key values, each encoded so that byte order
//! is MongoDB's value order (the order `query::compare_values` implements, type brackets
//! included), then the document's `_id`; every encoding is prefix-free, so the entries of
//! one key value form one contiguous range whatever follows. A descending field is stored
//! with its bytes inverted, which reverses its order. Missing fields are indexed as `null`;
//! an array gives one entry per element (multikey); an empty array gives `undefined`.

use super::query::{index_keys, CmpOp, Conjunct, Filter, IndexKey, Sort};
use super::{Document, StoreError};
use serde_json::{Number, Value};

const T_UNDEFINED: u8 = 0x01;
const T_NULL: u8 = 0x05;
const T_NUMBER: u8 = 0x0A;
const T_STRING: u8 = 0x0F;
const T_OBJECT: u8 = 0x14;
const T_ARRAY: u8 = 0x19;
const T_BOOL: u8 = 0x28;
/// Ends an object or array (below every type tag, so a shorter one sorts first).
const END: u8 = 0x00;

/// Most ranges a plan scans (the product of `$in` list lengths over the fields it uses).
const MAX_RANGES: usize = 1000;

/// An index as the planner and the write path see it.
#[derive(Debug, Clone)]
pub struct IndexDef {
    /// Its name.
    pub name: String,
    /// Key fields: path components and whether descending.
    pub fields: Vec<(Vec<String>, bool)>,
    /// Unique keys.
    pub unique: bool,
    /// Some document had an array on a key path: a document may have several entries, and
    /// index order is not sort order.
    pub multikey: bool,
}

impl IndexDef {
    /// The definition of a key pattern `{"path": 1 | -1}` (already validated).
    pub fn from_keys(name: &str, keys: &Value, unique: bool, multikey: bool) -> Self {
        let fields = keys
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(p, d)| {
                        (
                            p.split('.').map(str::to_owned).collect(),
                            d.as_f64() == Some(-1.0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        IndexDef {
            name: name.to_owned(),
            fields,
            unique,
            multikey,
        }
    }
}

/// Whether two key patterns are the same: same fields, same directions, same order (map
/// equality ignores order, which matters here).
pub fn same_key_pattern(a: &Value, b: &Value) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((ka, va), (kb, vb))| ka == kb && va.as_f64() == vb.as_f64())
        }
        _ => false,
    }
}

/// Appends the order-preserving encoding of `v`.
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(T_NULL),
        Value::Bool(b) => {
            out.push(T_BOOL);
            out.push(u8::from(*b));
        }
        Value::Number(n) => {
            out.push(T_NUMBER);
            encode_number(n, out);
        }
        Value::String(s) => {
            out.push(T_STRING);
            encode_str(s, out);
        }
        Value::Object(m) => {
            // MongoDB compares objects field by field: value type, then name, then value.
            out.push(T_OBJECT);
            for (k, v) in m {
                out.push(tag(v));
                encode_str(k, out);
                encode_value(v, out);
            }
            out.push(END);
        }
        Value::Array(a) => {
            out.push(T_ARRAY);
            for v in a {
                encode_value(v, out);
            }
            out.push(END);
        }
    }
}

fn tag(v: &Value) -> u8 {
    match v {
        Value::Null => T_NULL,
        Value::Bool(_) => T_BOOL,
        Value::Number(_) => T_NUMBER,
        Value::String(_) => T_STRING,
        Value::Object(_) => T_OBJECT,
        Value::Array(_) => T_ARRAY,
    }
}

/// Bytes with NUL escaped (`00 FF`), then `00 00`: prefix-free and in byte order.
fn encode_str(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// Numbers compare exactly across integers and floats: the nearest double (rounding is
/// monotonic, so a smaller double means a smaller number), then the integer's exact
/// distance from it (zero for a double). NaN sorts below every number.
fn encode_number(n: &Number, out: &mut Vec<u8>) {
    let (primary, rest): (u64, i64) = if let Some(i) = n.as_i64() {
        let f = i as f64;
        let rest = i128::from(i) - f as i128;
        (ordered_bits(f), rest as i64)
    } else if let Some(u) = n.as_u64() {
        let f = u as f64;
        let rest = i128::from(u) - f as i128;
        (ordered_bits(f), rest as i64)
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        if f.is_nan() {
            (0, 0)
        } else {
            (ordered_bits(f), 0)
        }
    };
    out.extend_from_slice(&primary.to_be_bytes());
    // The remainder is zero for almost every number: one byte then, else a sign byte and
    // eight bytes (ordered and prefix-free either way).
    match rest.cmp(&0) {
        std::cmp::Ordering::Equal => out.push(0x80),
        std::cmp::Ordering::Greater => {
            out.push(0x81);
            out.extend_from_slice(&(rest as u64).to_be_bytes());
        }
        std::cmp::Ordering::Less => {
            out.push(0x7F);
            out.extend_from_slice(&((rest as u64) ^ (1 << 63)).to_be_bytes());
        }
    }
}

fn ordered_bits(f: f64) -> u64 {
    let f = if f == 0.0 { 0.0 } else { f }; // -0 equals 0
    let bits = f.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

fn encode_key(k: IndexKey<'_>, descending: bool, out: &mut Vec<u8>) {
    let start = out.len();
    match k {
        IndexKey::Undefined => out.push(T_UNDEFINED),
        IndexKey::Val(v) => encode_value(v, out),
    }
    if descending {
        invert(&mut out[start..]);
    }
}

fn invert(bytes: &mut [u8]) {
    bytes.iter_mut().for_each(|b| *b = !*b);
}

/// The least byte string above every string that starts with `p` (`p` holds a byte other
/// than `FF`, as every encoding here starts with a type tag).
pub fn succ(p: &[u8]) -> Vec<u8> {
    let mut out = p.to_vec();
    while let Some(last) = out.pop() {
        if last != 0xFF {
            out.push(last + 1);
            return out;
        }
    }
    vec![0xFF; p.len() + 1]
}

/// The entry key of a document `id` under the encoded index key `key`: the key, the `_id`'s
/// bytes, NUL, and the `_id`'s length. Entries of one key sort by `_id` (ids hold no NUL, so
/// the NUL ends the shorter of two ids first) and the `_id` is read back from the end, so
/// an entry needs no value.
pub fn entry_key(key: &[u8], id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + id.len() + 3);
    out.extend_from_slice(key);
    out.extend_from_slice(id.as_bytes());
    out.push(0);
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out
}

/// The `_id` of an entry key written by [`entry_key`].
pub fn entry_id(entry: &[u8]) -> Option<&str> {
    let n = entry.len();
    let len = usize::from(u16::from_be_bytes([
        *entry.get(n.checked_sub(2)?)?,
        entry[n - 1],
    ]));
    let end = n.checked_sub(3)?;
    std::str::from_utf8(entry.get(end.checked_sub(len)?..end)?).ok()
}

/// The distinct encoded keys of `doc` in the index, and whether a key path met an array.
/// Two key fields that both meet arrays are refused, as MongoDB refuses them.
pub fn document_keys(def: &IndexDef, doc: &Document) -> Result<(Vec<Vec<u8>>, bool), StoreError> {
    let mut per_field = Vec::with_capacity(def.fields.len());
    let mut array_field: Option<usize> = None;
    for (i, (parts, _)) in def.fields.iter().enumerate() {
        if meets_array(doc, parts) {
            if let Some(first) = array_field {
                return Err(StoreError::ParallelArrays(format!(
                    "index {} has arrays at {} and {}",
                    crate::store::query::clip(&def.name),
                    crate::store::query::clip(&def.fields[first].0.join(".")),
                    crate::store::query::clip(&parts.join("."))
                )));
            }
            array_field = Some(i);
        }
        per_field.push(index_keys(doc, parts));
    }
    let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
    for ((_, descending), values) in def.fields.iter().zip(&per_field) {
        let mut next = Vec::with_capacity(keys.len() * values.len().max(1));
        for prefix in &keys {
            for v in values {
                let mut k = prefix.clone();
                encode_key(*v, *descending, &mut k);
                next.push(k);
            }
        }
        keys = next;
    }
    keys.sort_unstable();
    keys.dedup();
    Ok((keys, array_field.is_some()))
}

/// Whether walking `parts` from `doc` meets an array (the index becomes multikey).
fn meets_array(doc: &Document, parts: &[String]) -> bool {
    let mut cur = doc;
    for part in parts {
        match cur.get(part.as_str()) {
            Some(Value::Array(_)) => return true,
            Some(Value::Object(m)) => cur = m,
            _ => return false,
        }
    }
    false
}

/// A plan: which index, which key ranges, and what the scan gives.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Position of the index in the list planned over.
    pub index: usize,
    /// Key ranges to read: from (included) to (excluded; `None`: to the end), in key order.
    pub ranges: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Read the ranges backwards.
    pub reverse: bool,
    /// The scan yields documents in the query's sort order, except that documents with
    /// equal sort keys may need reordering by `_id` (`regroup`).
    pub sorted: bool,
    /// Documents with equal sort keys come out of the scan in another `_id` order than the
    /// sort's: buffer each run of them and reorder it.
    pub regroup: bool,
    /// The ranges hold exactly the documents matching the filter, once each: a count
    /// needs no document.
    pub exact: bool,
    /// A document may appear in several entries: keep the first only.
    pub dedupe: bool,
    /// For a sorted plan, where a keyset page's cursor lands in the index.
    pub seek: Option<Seek>,
}

/// How to turn a keyset cursor into an index key, so a page starts at its cursor instead of
/// reading past every earlier entry.
#[derive(Debug, Clone)]
pub struct Seek {
    /// The encoded values of the fields fixed by equality.
    prefix: Vec<u8>,
    /// Per following index field: which sort key holds its value, and whether the field is
    /// descending.
    fields: Vec<(usize, bool)>,
}

impl Seek {
    /// The index key of a position's sort key values (`keys`, in sort order); `None` when
    /// one is undefined (never in a plan that provides order).
    pub fn key(&self, keys: &[Option<Value>]) -> Option<Vec<u8>> {
        let mut out = self.prefix.clone();
        for &(at, descending) in &self.fields {
            let v = keys.get(at)?.as_ref()?;
            encode_key(IndexKey::Val(v), descending, &mut out);
        }
        Some(out)
    }
}

/// A bound at the start or the end of the keys beginning with `prefix`.
#[derive(Debug, Clone)]
struct Edge {
    prefix: Vec<u8>,
    after: bool,
}

impl Edge {
    fn start(prefix: Vec<u8>) -> Self {
        Edge {
            prefix,
            after: false,
        }
    }
    fn end(prefix: Vec<u8>) -> Self {
        Edge {
            prefix,
            after: true,
        }
    }
    fn flip(mut self) -> Self {
        invert(&mut self.prefix);
        self.after = !self.after;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        if self.after {
            succ(&self.prefix)
        } else {
            self.prefix.clone()
        }
    }
}

fn point(v: &Value) -> Option<Vec<u8>> {
    // Objects and arrays have equality semantics (whole arrays, element order) that the
    // entries of their elements do not answer simply: left to a scan or another field.
    matches!(
        v,
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_)
    )
    .then(|| {
        let mut out = Vec::new();
        encode_value(v, &mut out);
        out
    })
}

/// `[lo, hi)` in ascending field space for a comparison, within `v`'s type bracket.
fn range(op: CmpOp, v: &Value) -> Option<(Edge, Edge)> {
    if !matches!(v, Value::Bool(_) | Value::Number(_) | Value::String(_)) {
        return None;
    }
    let enc = point(v)?;
    let bracket = vec![tag(v)];
    Some(match op {
        CmpOp::Gt => (Edge::end(enc), Edge::end(bracket)),
        CmpOp::Gte => (Edge::start(enc), Edge::end(bracket)),
        CmpOp::Lt => (Edge::start(bracket), Edge::start(enc)),
        CmpOp::Lte => (Edge::start(bracket), Edge::end(enc)),
    })
}

fn same_path(a: &[String], b: &[String]) -> bool {
    a == b
}

/// Picks the best ready index for a filter (and a sort, when the order is not `_id`
/// order), or `None` for a collection scan. An index is used for equality and `$in` on its
/// leading fields, then a range on the next one, and for a sort that follows its key order
/// (either way) after the fields fixed by equality; a multikey index never provides order.
/// The filter is applied again to every document read, so the ranges only need to hold
/// every match.
pub fn plan(defs: &[IndexDef], filter: &Filter, sort: Option<&Sort>) -> Option<Plan> {
    let conj = filter.conjuncts();
    let mut best: Option<(u32, Plan)> = None;
    for (i, def) in defs.iter().enumerate() {
        if let Some((score, p)) = plan_one(i, def, &conj, sort) {
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, p));
            }
        }
    }
    best.map(|(_, p)| p)
}

fn plan_one(
    index: usize,
    def: &IndexDef,
    conj: &[Conjunct<'_>],
    sort: Option<&Sort>,
) -> Option<(u32, Plan)> {
    // Any partial field path with a positional component (`a.0`) is left to scans.
    if def
        .fields
        .iter()
        .any(|(parts, _)| parts.iter().any(|p| super::query::array_index(p).is_some()))
    {
        return None;
    }
    let mut used = vec![false; conj.len()];
    let mut prefixes: Vec<Vec<u8>> = vec![Vec::new()];
    let mut fixed = 0usize; // leading fields fixed to one value
    let mut all_single = true;
    let mut eq_fields = 0u32;
    let mut tail: Option<(Vec<u8>, Vec<u8>)> = None;
    for (parts, descending) in &def.fields {
        let points = conj.iter().enumerate().find_map(|(ci, c)| {
            let values: Vec<&Value> = match c {
                Conjunct::Eq(p, v) if same_path(p, parts) => vec![*v],
                Conjunct::In(p, list) if same_path(p, parts) => list.iter().collect(),
                _ => return None,
            };
            let mut pts = values.into_iter().map(point).collect::<Option<Vec<_>>>()?;
            pts.sort_unstable();
            pts.dedup();
            Some((ci, pts))
        });
        if let Some((ci, mut pts)) = points {
            if pts.is_empty() || prefixes.len() * pts.len() > MAX_RANGES {
                break;
            }
            if *descending {
                pts.iter_mut().for_each(|p| invert(p));
            }
            used[ci] = true;
            prefixes = prefixes
                .iter()
                .flat_map(|pre| {
                    pts.iter().map(move |p| {
                        let mut k = pre.clone();
                        k.extend_from_slice(p);
                        k
                    })
                })
                .collect();
            if pts.len() == 1 && all_single {
                fixed += 1;
            } else {
                all_single = false;
            }
            eq_fields += 1;
            continue;
        }
        // A range on this field: one comparison on a multikey index (an array may meet
        // each bound with another element), their intersection otherwise.
        let mut lo: Option<Vec<u8>> = None;
        let mut hi: Option<Vec<u8>> = None;
        for (ci, c) in conj.iter().enumerate() {
            let Conjunct::Cmp(p, op, v) = c else { continue };
            if !same_path(p, parts) {
                continue;
            }
            let Some((l, h)) = range(*op, v) else {
                continue;
            };
            let (l, h) = if *descending {
                (h.flip(), l.flip())
            } else {
                (l, h)
            };
            let (l, h) = (l.bytes(), h.bytes());
            if lo.is_some() && def.multikey {
                break;
            }
            used[ci] = true;
            lo = Some(lo.map_or(l.clone(), |x| x.max(l)));
            hi = Some(hi.map_or(h.clone(), |x| x.min(h)));
        }
        if let (Some(l), Some(h)) = (lo, hi) {
            tail = Some((l, h));
        }
        break;
    }
    let ranges: Vec<(Vec<u8>, Option<Vec<u8>>)> = match &tail {
        Some((l, h)) => prefixes
            .iter()
            .map(|p| {
                let mut lo = p.clone();
                lo.extend_from_slice(l);
                let mut hi = p.clone();
                hi.extend_from_slice(h);
                if hi < lo {
                    hi = lo.clone();
                }
                (lo, Some(hi))
            })
            .collect(),
        None if eq_fields > 0 => prefixes
            .iter()
            .map(|p| (p.clone(), Some(succ(p))))
            .collect(),
        None => vec![(Vec::new(), None)],
    };
    let filtered = eq_fields > 0 || tail.is_some();
    let exact = !def.multikey
        && !conj.is_empty()
        && used.iter().all(|u| *u)
        && conj.iter().all(|c| !matches!(c, Conjunct::Other));
    let order = sort
        .filter(|s| s.id_order().is_none() && !def.multikey && prefixes.len() == 1)
        .and_then(|s| sort_order(def, fixed, s));
    if !filtered && order.is_none() {
        return None;
    }
    let (sorted, reverse, regroup, seek) = match order {
        Some((reverse, regroup, fields)) => (
            true,
            reverse,
            regroup,
            Some(Seek {
                prefix: prefixes[0].clone(),
                fields,
            }),
        ),
        None => (false, false, false, None),
    };
    let score = eq_fields * 8 + u32::from(tail.is_some()) * 4 + u32::from(sorted) * 2;
    Some((
        score,
        Plan {
            index,
            ranges,
            reverse,
            sorted,
            regroup,
            exact,
            dedupe: def.multikey,
            seek,
        },
    ))
}

/// `Some((reverse, regroup, seek fields))` when reading the index (after its first `fixed`
/// fields, each fixed to one value) gives `sort`'s order.
#[allow(clippy::type_complexity)]
fn sort_order(
    def: &IndexDef,
    fixed: usize,
    sort: &Sort,
) -> Option<(bool, bool, Vec<(usize, bool)>)> {
    let mut fields: Vec<(usize, &str, bool)> = sort
        .fields()
        .enumerate()
        .map(|(i, (p, d))| (i, p, d))
        .collect();
    // `_id` last sets the tiebreak's direction; anywhere else, later fields never matter
    // but this planner does not reason about it.
    let id_descending = match fields.last() {
        Some((_, "_id", d)) => {
            let d = *d;
            fields.pop();
            d
        }
        _ => false,
    };
    if fields.iter().any(|(_, p, _)| *p == "_id") {
        return None;
    }
    // Sort fields fixed by equality order nothing.
    let fixed_paths: Vec<String> = def.fields[..fixed]
        .iter()
        .map(|(p, _)| p.join("."))
        .collect();
    fields.retain(|(_, p, _)| !fixed_paths.iter().any(|f| f == p));
    if fields.is_empty() || fixed + fields.len() > def.fields.len() {
        return None;
    }
    let mut reverse = None;
    for ((_, path, desc), (parts, idx_desc)) in fields.iter().zip(&def.fields[fixed..]) {
        if parts.join(".") != *path {
            return None;
        }
        let r = desc != idx_desc;
        if *reverse.get_or_insert(r) != r {
            return None;
        }
    }
    let reverse = reverse?;
    // Entries with equal keys are in ascending `_id` order, after any further index fields.
    let natural = fixed + fields.len() == def.fields.len() && reverse == id_descending;
    let seek = fields
        .iter()
        .zip(&def.fields[fixed..])
        .map(|((at, _, _), (_, idx_desc))| (*at, *idx_desc))
        .collect();
    Some((reverse, !natural, seek))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::query::{compare_values, QueryLimits};
    use proptest::prelude::*;
    use serde_json::json;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(v, &mut out);
        out
    }

    #[test]
    fn encoding_follows_value_order() {
        let ordered = [
            json!(null),
            json!(-1e300),
            json!(i64::MIN),
            json!(-5),
            json!(-2.5),
            json!(0),
            json!(1),
            json!(1.5),
            json!(9_007_199_254_740_992.0_f64),
            json!(9_007_199_254_740_993_i64),
            json!(i64::MAX),
            json!(1e300),
            json!(""),
            json!("\u{0}"),
            json!("a"),
            json!("a\u{0}"),
            json!("ab"),
            json!("b"),
            json!({}),
            json!({"a": 1}),
            json!({"a": 1, "b": 0}),
            json!({"b": 1}),
            json!({"a": "x"}),
            json!([]),
            json!([1]),
            json!([1, 0]),
            json!([2]),
            json!(false),
            json!(true),
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(enc(a).cmp(&enc(b)), i.cmp(&j), "{a} vs {b}");
                assert_eq!(compare_values(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(enc(&json!(1)), enc(&json!(1.0)));
        assert_eq!(enc(&json!(-0.0)), enc(&json!(0)));
    }

    proptest! {
        #[test]
        fn encoding_agrees_with_compare_values(
            a in crate::store::query::tests::arb_json(),
            b in crate::store::query::tests::arb_json(),
        ) {
            let want = compare_values(&a, &b);
            prop_assert_eq!(enc(&a).cmp(&enc(&b)), want);
            let (mut x, mut y) = (enc(&a), enc(&b));
            invert(&mut x);
            invert(&mut y);
            prop_assert_eq!(x.cmp(&y), want.reverse());
        }
    }

    fn def(keys: Value, multikey: bool) -> IndexDef {
        IndexDef::from_keys("i", &keys, false, multikey)
    }

    fn filter(v: Value) -> Filter {
        Filter::parse(&v, &QueryLimits::default()).unwrap()
    }

    #[test]
    fn entries_carry_their_id() {
        for id in ["a", "\u{e9}t\u{e9}", &"x".repeat(512), "a\u{1}b"] {
            let e = entry_key(&enc(&json!(5)), id);
            assert_eq!(entry_id(&e), Some(id));
        }
        // Within one key, entries follow `_id` byte order.
        let k = enc(&json!("k"));
        let ids = ["", "a", "a\u{1}", "aa", "ab", "b"];
        for w in ids.windows(2) {
            assert!(entry_key(&k, w[0]) < entry_key(&k, w[1]), "{w:?}");
        }
    }

    #[test]
    fn keys_of_documents() {
        let d = def(json!({"a": 1, "b": -1}), false);
        let doc = json!({"_id": "x", "a": [1, 2, 1], "b": "s"});
        let (keys, multi) = document_keys(&d, doc.as_object().unwrap()).unwrap();
        assert!(multi);
        assert_eq!(keys.len(), 2);
        let doc = json!({"_id": "x", "a": [1], "b": [2]});
        assert!(matches!(
            document_keys(&d, doc.as_object().unwrap()),
            Err(StoreError::ParallelArrays(_))
        ));
        let (keys, multi) = document_keys(&d, json!({"_id": "y"}).as_object().unwrap()).unwrap();
        assert!(!multi);
        let mut null_null = enc(&json!(null));
        let mut inv = enc(&json!(null));
        invert(&mut inv);
        null_null.extend(inv);
        assert_eq!(keys, vec![null_null]);
    }

    #[test]
    fn plans() {
        let defs = vec![
            def(json!({"a": 1}), false),
            def(json!({"b": 1, "c": -1}), false),
        ];
        let p = plan(&defs, &filter(json!({"b": 3, "c": {"$gt": 1}})), None).unwrap();
        assert_eq!(p.index, 1);
        assert!(p.exact);
        let p = plan(&defs, &filter(json!({"a": {"$in": [1, 2, 2]}})), None).unwrap();
        assert_eq!((p.index, p.ranges.len(), p.exact), (0, 2, true));
        assert!(plan(&defs, &filter(json!({"z": 1})), None).is_none());
        let s = Sort::parse(&json!({"c": 1})).unwrap();
        let p = plan(&defs, &filter(json!({"b": 3})), Some(&s)).unwrap();
        assert!(p.sorted && p.reverse && p.regroup);
        let s = Sort::parse(&json!({"a": 1})).unwrap();
        let p = plan(&defs, &filter(json!({})), Some(&s)).unwrap();
        assert!(p.sorted && !p.reverse && !p.regroup && !p.exact);
        let multi = vec![def(json!({"a": 1}), true)];
        assert!(plan(&multi, &filter(json!({})), Some(&s)).is_none());
        let p = plan(&multi, &filter(json!({"a": {"$gt": 1, "$lt": 5}})), None).unwrap();
        assert!(p.dedupe && !p.exact);
    }
}
