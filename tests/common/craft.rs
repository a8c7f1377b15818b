//! Crafting files for integrity tests: an in-memory store, re-sealing a
//! document with a valid checksum, and a small MessagePack builder.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dictdb::store::{BackupStore, BackupWriter, FileReader, StoredFile};
use dictdb::{Error, Result};

/// A store in memory: what tests put in it is what restore reads.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl MemStore {
    pub fn with(files: &[(String, Vec<u8>)]) -> Arc<MemStore> {
        let s = MemStore::default();
        for (n, b) in files {
            s.put(n, b.clone());
        }
        Arc::new(s)
    }

    pub fn put(&self, name: &str, bytes: Vec<u8>) {
        self.files.lock().unwrap().insert(name.to_string(), bytes);
    }

    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.files.lock().unwrap().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.files.lock().unwrap().keys().cloned().collect()
    }

    pub fn remove(&self, name: &str) {
        self.files.lock().unwrap().remove(name);
    }

    pub fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        self.files
            .lock()
            .unwrap()
            .iter()
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect()
    }
}

fn missing(name: &str) -> Error {
    Error::Store {
        path: name.to_string(),
        message: "no such file".into(),
    }
}

struct MemWriter {
    store: MemStore,
    name: String,
    buf: Vec<u8>,
}

#[async_trait]
impl BackupWriter for MemWriter {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let mut files = self.store.files.lock().unwrap();
        if files.contains_key(&self.name) {
            return Err(Error::Store {
                path: self.name.clone(),
                message: "exists".into(),
            });
        }
        files.insert(self.name.clone(), self.buf);
        Ok(())
    }

    async fn abort(self: Box<Self>) {}
}

#[async_trait]
impl BackupStore for MemStore {
    fn location(&self) -> String {
        "memory".into()
    }

    async fn list(&self) -> Result<Vec<StoredFile>> {
        Ok(self
            .files
            .lock()
            .unwrap()
            .iter()
            .map(|(n, b)| StoredFile {
                name: n.clone(),
                size: b.len() as u64,
            })
            .collect())
    }

    async fn create(&self, name: &str) -> Result<Box<dyn BackupWriter>> {
        Ok(Box::new(MemWriter {
            store: self.clone(),
            name: name.to_string(),
            buf: Vec::new(),
        }))
    }

    async fn open(&self, name: &str) -> Result<FileReader> {
        let bytes = self.get(name).ok_or_else(|| missing(name))?;
        Ok(Box::new(Cursor::new(bytes)))
    }

    async fn read_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let bytes = self.get(name).ok_or_else(|| missing(name))?;
        let end = (range.end as usize).min(bytes.len());
        let start = (range.start as usize).min(end);
        Ok(bytes[start..end].to_vec())
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.remove(name);
        Ok(())
    }
}

/// The checksum value of `body`, as the library writes it.
pub fn checksum_of(body: &[u8]) -> String {
    format!("xxh3-64:{:016x}", xxhash_rust::xxh3::xxh3_64(body))
}

/// A JSON file of ours without its checksum entry and closing brace: the
/// part the checksum covers, ready to be edited and sealed again.
pub fn json_body(file: &[u8]) -> String {
    let text = String::from_utf8(file.to_vec()).unwrap();
    let at = text.rfind(",\"checksum\":\"").expect("a checksum entry");
    text[..at].to_string()
}

/// Seals an edited JSON body with a valid checksum.
pub fn seal_json(body: &str) -> Vec<u8> {
    let sum = checksum_of(body.as_bytes());
    format!("{body},\"checksum\":\"{sum}\"}}").into_bytes()
}

/// A MessagePack value with map entries in the order given.
#[derive(Clone, Debug)]
pub enum M {
    Map(Vec<(String, M)>),
    Arr(Vec<M>),
    Str(String),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Nil,
    /// Bytes written as they are.
    Raw(Vec<u8>),
}

impl M {
    pub fn map(entries: &[(&str, M)]) -> M {
        M::Map(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    pub fn s(v: &str) -> M {
        M::Str(v.to_string())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            M::Map(e) => {
                rmp::encode::write_map_len(out, e.len() as u32).unwrap();
                for (k, v) in e {
                    rmp::encode::write_str(out, k).unwrap();
                    v.encode(out);
                }
            }
            M::Arr(a) => {
                rmp::encode::write_array_len(out, a.len() as u32).unwrap();
                for v in a {
                    v.encode(out);
                }
            }
            M::Str(s) => rmp::encode::write_str(out, s).unwrap(),
            M::Int(i) => {
                rmp::encode::write_sint(out, *i).unwrap();
            }
            M::Uint(u) => {
                rmp::encode::write_uint(out, *u).unwrap();
            }
            M::Float(f) => rmp::encode::write_f64(out, *f).unwrap(),
            M::Bool(b) => rmp::encode::write_bool(out, *b).unwrap(),
            M::Nil => rmp::encode::write_nil(out).unwrap(),
            M::Raw(b) => out.extend_from_slice(b),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// A MessagePack document of these top-level entries, sealed with a valid
/// checksum as its last entry.
pub fn seal_msgpack(entries: &[(&str, M)]) -> Vec<u8> {
    let mut body = Vec::new();
    rmp::encode::write_map_len(&mut body, entries.len() as u32 + 1).unwrap();
    for (k, v) in entries {
        rmp::encode::write_str(&mut body, k).unwrap();
        v.encode(&mut body);
    }
    let sum = checksum_of(&body);
    rmp::encode::write_str(&mut body, "checksum").unwrap();
    rmp::encode::write_str(&mut body, &sum).unwrap();
    body
}

impl M {
    /// The value as JSON text, map entries in order; `Raw` bytes are taken
    /// as JSON text.
    pub fn json(&self) -> String {
        match self {
            M::Map(e) => {
                let inner: Vec<String> = e
                    .iter()
                    .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v.json()))
                    .collect();
                format!("{{{}}}", inner.join(","))
            }
            M::Arr(a) => format!("[{}]", a.iter().map(M::json).collect::<Vec<_>>().join(",")),
            M::Str(s) => serde_json::to_string(s).unwrap(),
            M::Int(i) => i.to_string(),
            M::Uint(u) => u.to_string(),
            M::Float(f) => serde_json::to_string(f).unwrap(),
            M::Bool(b) => b.to_string(),
            M::Nil => "null".into(),
            M::Raw(b) => String::from_utf8(b.clone()).unwrap(),
        }
    }
}

/// A document of these top-level entries in `format`, sealed with a valid
/// checksum.
pub fn sealed(format: dictdb::FileFormat, entries: &[(&str, M)]) -> Vec<u8> {
    match format {
        dictdb::FileFormat::MessagePack => seal_msgpack(entries),
        _ => {
            let inner: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v.json()))
                .collect();
            seal_json(&format!("{{{}", inner.join(",")))
        }
    }
}

/// A version 2 full backup named `name` of `tables` (name, key field,
/// records), sealed.
pub fn full_doc(
    format: dictdb::FileFormat,
    name: &str,
    seq: u64,
    tables: &[(&str, &str, Vec<M>)],
) -> Vec<u8> {
    let count: usize = tables.iter().map(|t| t.2.len()).sum();
    let meta = M::map(&[
        ("version", M::Uint(2)),
        ("kind", M::s("full")),
        ("name", M::s(name)),
        ("seq", M::Uint(seq)),
        (
            "next_keys",
            M::Map(
                tables
                    .iter()
                    .map(|t| (t.0.to_string(), M::Uint(1)))
                    .collect(),
            ),
        ),
        ("count", M::Uint(count as u64)),
        (
            "tables",
            M::Map(
                tables
                    .iter()
                    .map(|t| {
                        (
                            t.0.to_string(),
                            M::map(&[
                                ("primary_key", M::s(t.1)),
                                ("records", M::Uint(t.2.len() as u64)),
                            ]),
                        )
                    })
                    .collect(),
            ),
        ),
    ]);
    let body = M::Map(
        tables
            .iter()
            .map(|t| {
                (
                    t.0.to_string(),
                    M::map(&[
                        ("primary_key", M::s(t.1)),
                        ("schema", M::Nil),
                        ("records", M::Arr(t.2.clone())),
                    ]),
                )
            })
            .collect(),
    );
    sealed(format, &[("dictdb", meta), ("tables", body)])
}

/// A version 2 delta named `name` on `base`, covering `(from, seq]`, of
/// `tables` (name, key field, upserts, deletes), sealed.
pub fn delta_doc(
    format: dictdb::FileFormat,
    name: &str,
    base: &str,
    from: u64,
    seq: u64,
    tables: &[(&str, &str, Vec<M>, Vec<M>)],
) -> Vec<u8> {
    let count: usize = tables.iter().map(|t| t.2.len() + t.3.len()).sum();
    let meta = M::map(&[
        ("version", M::Uint(2)),
        ("kind", M::s("delta")),
        ("name", M::s(name)),
        ("seq", M::Uint(seq)),
        ("from_seq", M::Uint(from)),
        ("base", M::s(base)),
        ("next_keys", M::Map(Vec::new())),
        ("count", M::Uint(count as u64)),
        (
            "tables",
            M::Map(
                tables
                    .iter()
                    .map(|t| {
                        (
                            t.0.to_string(),
                            M::map(&[
                                ("primary_key", M::s(t.1)),
                                ("upserts", M::Uint(t.2.len() as u64)),
                                ("deletes", M::Uint(t.3.len() as u64)),
                            ]),
                        )
                    })
                    .collect(),
            ),
        ),
    ]);
    let body = M::Map(
        tables
            .iter()
            .map(|t| {
                (
                    t.0.to_string(),
                    M::map(&[
                        ("upserts", M::Arr(t.2.clone())),
                        ("deletes", M::Arr(t.3.clone())),
                    ]),
                )
            })
            .collect(),
    );
    sealed(
        format,
        &[
            ("dictdb", meta),
            ("type", M::s("delta")),
            ("timestamp", M::Float(1.5)),
            ("tables", body),
        ],
    )
}

/// A record `{"id": id, "v": v}`.
pub fn rec(id: M, v: &str) -> M {
    M::map(&[("id", id), ("v", M::s(v))])
}
