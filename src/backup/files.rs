//! mongodump's files: `<collection>.bson` (BSON documents one after another) and
//! `<collection>.metadata.json` (index definitions), written and read one document at a time.

use anyhow::Context;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Largest BSON document read back (MongoDB's 16 MiB plus room for its own overhead).
const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024 + 16 * 1024;

/// Writes BSON documents one after another into a file.
pub struct BsonWriter {
    path: PathBuf,
    out: BufWriter<File>,
    count: u64,
}

impl BsonWriter {
    /// Creates the file; refuses to overwrite one.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 20, file),
            count: 0,
        })
    }

    /// Appends one document.
    pub fn write(&mut self, doc: &bson::Document) -> anyhow::Result<()> {
        doc.to_writer(&mut self.out)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.count += 1;
        Ok(())
    }

    /// Flushes and syncs the file; returns how many documents it holds.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.out
            .get_ref()
            .sync_all()
            .with_context(|| format!("cannot sync {}", self.path.display()))?;
        Ok(self.count)
    }
}

/// Reads the BSON documents of a file one at a time.
pub struct BsonReader {
    path: PathBuf,
    input: BufReader<File>,
    read: u64,
}

impl BsonReader {
    /// Opens the file.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            input: BufReader::with_capacity(1 << 20, file),
            read: 0,
        })
    }

    /// The next document, or `None` at the end of the file.
    pub fn next_document(&mut self) -> anyhow::Result<Option<bson::Document>> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let n = self
                .input
                .read(&mut len[got..])
                .with_context(|| format!("cannot read {}", self.path.display()))?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                anyhow::bail!(
                    "{}: truncated after {} documents",
                    self.path.display(),
                    self.read
                );
            }
            got += n;
        }
        let size = i32::from_le_bytes(len);
        let size = usize::try_from(size)
            .ok()
            .filter(|s| (5..=MAX_DOCUMENT_BYTES).contains(s))
            .with_context(|| {
                format!(
                    "{}: document {} has an invalid length",
                    self.path.display(),
                    self.read + 1
                )
            })?;
        let mut buf = vec![0u8; size];
        buf[..4].copy_from_slice(&len);
        self.input.read_exact(&mut buf[4..]).with_context(|| {
            format!(
                "{}: truncated after {} documents",
                self.path.display(),
                self.read
            )
        })?;
        let doc = bson::Document::from_reader(&buf[..]).with_context(|| {
            format!(
                "{}: document {} is not valid BSON",
                self.path.display(),
                self.read + 1
            )
        })?;
        self.read += 1;
        Ok(Some(doc))
    }
}

/// One index as mongodump's `.metadata.json` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexDefinition {
    /// Its name (`_id_` for the `_id` index).
    pub name: String,
    /// Key pattern, `{"path": 1 | -1}`.
    pub key: Value,
    /// Unique keys.
    pub unique: bool,
}

/// Writes `<collection>.metadata.json` as mongodump does (no collection options, index
/// version 2, an empty `uuid`, which mongorestore uses only with `--preserveUUID`).
pub fn write_metadata(
    path: &Path,
    collection: &str,
    indexes: &[IndexDefinition],
) -> anyhow::Result<()> {
    let indexes: Vec<Value> = indexes
        .iter()
        .map(|i| {
            let mut v = json!({ "v": 2, "key": i.key, "name": i.name });
            if i.unique {
                v["unique"] = Value::Bool(true);
            }
            v
        })
        .collect();
    let body = json!({
        "options": {},
        "indexes": indexes,
        "uuid": "",
        "collectionName": collection,
        "type": "collection",
    });
    write_json(path, &body)
}

/// Reads the index definitions of a `.metadata.json` (mongodump's, or this gateway's).
pub fn read_metadata(path: &Path) -> anyhow::Result<Vec<IndexDefinition>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let Some(list) = v.get("indexes").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|i| {
            let name = i.get("name").and_then(Value::as_str);
            let key = i.get("key").cloned().map(plain_numbers);
            match (name, key) {
                (Some(name), Some(key)) => Ok(IndexDefinition {
                    name: name.to_owned(),
                    key,
                    unique: i.get("unique").and_then(Value::as_bool).unwrap_or(false),
                }),
                _ => anyhow::bail!("{}: an index without name or key", path.display()),
            }
        })
        .collect()
}

/// Canonical extended JSON numbers (`{"$numberInt": "1"}`, as some mongodump versions write
/// key patterns) as plain JSON numbers.
fn plain_numbers(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            if m.len() == 1 {
                for k in ["$numberInt", "$numberLong", "$numberDouble"] {
                    if let Some(n) = m.get(k).and_then(Value::as_str) {
                        if let Ok(i) = n.parse::<i64>() {
                            return Value::from(i);
                        }
                        if let Ok(f) = n.parse::<f64>() {
                            return json!(f);
                        }
                    }
                }
            }
            Value::Object(m.into_iter().map(|(k, v)| (k, plain_numbers(v))).collect())
        }
        other => other,
    }
}

/// Writes a JSON file and syncs it; refuses to overwrite one.
pub fn write_json(path: &Path, v: &Value) -> anyhow::Result<()> {
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut text = serde_json::to_vec_pretty(v).expect("JSON values serialize");
    text.push(b'\n');
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Syncs a directory, so the names created in it survive a crash.
pub fn sync_dir(path: &Path) -> anyhow::Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bson");
        let mut w = BsonWriter::create(&path).unwrap();
        for i in 0..3 {
            w.write(&bson::doc! { "_id": format!("id{i}"), "n": i })
                .unwrap();
        }
        assert_eq!(w.finish().unwrap(), 3);
        assert!(BsonWriter::create(&path).is_err(), "never overwrites");
        let mut r = BsonReader::open(&path).unwrap();
        for i in 0..3 {
            let d = r.next_document().unwrap().unwrap();
            assert_eq!(d.get_str("_id").unwrap(), format!("id{i}"));
        }
        assert!(r.next_document().unwrap().is_none());
        // A file cut short is an error, not a shorter collection.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let mut r = BsonReader::open(&path).unwrap();
        r.next_document().unwrap();
        r.next_document().unwrap();
        assert!(r.next_document().is_err());
    }

    #[test]
    fn metadata_round_trips_and_reads_extended_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.metadata.json");
        let idx = vec![
            IndexDefinition {
                name: "_id_".into(),
                key: json!({"_id": 1}),
                unique: false,
            },
            IndexDefinition {
                name: "a_1_b_-1".into(),
                key: json!({"a": 1, "b": -1}),
                unique: true,
            },
        ];
        write_metadata(&path, "c", &idx).unwrap();
        assert_eq!(read_metadata(&path).unwrap(), idx);
        let ext = dir.path().join("ext.metadata.json");
        std::fs::write(
            &ext,
            r#"{"indexes":[{"v":{"$numberInt":"2"},"key":{"x":{"$numberInt":"-1"}},"name":"x_-1"}]}"#,
        )
        .unwrap();
        let read = read_metadata(&ext).unwrap();
        assert_eq!(read[0].key, json!({"x": -1}));
    }
}
