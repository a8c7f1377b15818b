//! Serialising snapshots and deltas, streaming, in either format.

use std::sync::Arc;

use super::{ChunkWriter, FileFormat, Meta};
use crate::db::Snapshot;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::record::{
    encode_value, put_array_len, put_key, put_map_len, put_nil, put_str, write_json,
    write_json_f64, write_json_key, write_json_str, Record,
};

/// One table's part of a delta.
#[derive(Debug, Default, Clone)]
pub(crate) struct DeltaTable {
    pub(crate) upserts: Vec<Record>,
    pub(crate) deletes: Vec<Key>,
}

fn meta_json(out: &mut Vec<u8>, meta: &Meta) -> Result<()> {
    serde_json::to_writer(&mut *out, meta).map_err(|e| Error::corrupt("metadata", e))
}

fn meta_msgpack(out: &mut Vec<u8>, meta: &Meta) -> Result<()> {
    let bytes = rmp_serde::to_vec_named(meta).map_err(|e| Error::corrupt("metadata", e))?;
    out.extend_from_slice(&bytes);
    Ok(())
}

fn json_record(out: &mut Vec<u8>, rec: &Record) -> Result<()> {
    write_json(out, rec.as_msgpack()).map_err(|e| Error::corrupt("record", e))
}

/// Writes a full document for `snapshot`. Records go out in key order (which
/// is also roughly allocation order: visiting them that way is the cache
/// friendly path, see WORKLOAD.md).
pub(crate) fn write_full<F>(
    w: &mut ChunkWriter<F>,
    format: FileFormat,
    snapshot: &Snapshot,
    meta: &Meta,
) -> Result<()>
where
    F: FnMut(Vec<u8>) -> Result<()>,
{
    match format {
        FileFormat::Json => {
            w.buf.extend_from_slice(b"{\"dictdb\":");
            meta_json(&mut w.buf, meta)?;
            w.buf.extend_from_slice(b",\"tables\":{");
            for (i, t) in snapshot.tables().iter().enumerate() {
                if i > 0 {
                    w.buf.push(b',');
                }
                write_json_str(&mut w.buf, t.name());
                w.buf.extend_from_slice(b":{\"primary_key\":");
                write_json_str(&mut w.buf, t.primary_key());
                w.buf.extend_from_slice(b",\"schema\":");
                match t.schema() {
                    Some(s) => serde_json::to_writer(&mut w.buf, s)
                        .map_err(|e| Error::corrupt("schema", e))?,
                    None => w.buf.extend_from_slice(b"null"),
                }
                w.buf.extend_from_slice(b",\"records\":[");
                for (j, (_, rec)) in t.iter().enumerate() {
                    w.buf.extend_from_slice(if j > 0 { b",\n" } else { b"\n" });
                    json_record(&mut w.buf, rec)?;
                    w.maybe_flush()?;
                }
                w.buf.extend_from_slice(b"]}");
            }
            w.buf.push(b'}');
        }
        FileFormat::MessagePack => {
            put_map_len(&mut w.buf, 3);
            put_str(&mut w.buf, "dictdb");
            meta_msgpack(&mut w.buf, meta)?;
            put_str(&mut w.buf, "tables");
            put_map_len(&mut w.buf, snapshot.tables().len());
            for t in snapshot.tables() {
                put_str(&mut w.buf, t.name());
                put_map_len(&mut w.buf, 3);
                put_str(&mut w.buf, "primary_key");
                put_str(&mut w.buf, t.primary_key());
                put_str(&mut w.buf, "schema");
                match t.schema() {
                    Some(s) => encode_value(&mut w.buf, s),
                    None => put_nil(&mut w.buf),
                }
                put_str(&mut w.buf, "records");
                put_array_len(&mut w.buf, t.len());
                for (_, rec) in t.iter() {
                    w.buf.extend_from_slice(rec.as_msgpack());
                    w.maybe_flush()?;
                }
            }
        }
    }
    Ok(())
}

/// Writes a delta document.
pub(crate) fn write_delta<F>(
    w: &mut ChunkWriter<F>,
    format: FileFormat,
    timestamp: f64,
    meta: &Meta,
    tables: &[(Arc<str>, DeltaTable)],
) -> Result<()>
where
    F: FnMut(Vec<u8>) -> Result<()>,
{
    match format {
        FileFormat::Json => {
            w.buf
                .extend_from_slice(b"{\"type\":\"delta\",\"timestamp\":");
            write_json_f64(&mut w.buf, timestamp);
            w.buf.extend_from_slice(b",\"dictdb\":");
            meta_json(&mut w.buf, meta)?;
            w.buf.extend_from_slice(b",\"tables\":{");
            for (i, (name, t)) in tables.iter().enumerate() {
                if i > 0 {
                    w.buf.push(b',');
                }
                write_json_str(&mut w.buf, name);
                w.buf.extend_from_slice(b":{\"upserts\":[");
                for (j, rec) in t.upserts.iter().enumerate() {
                    w.buf.extend_from_slice(if j > 0 { b",\n" } else { b"\n" });
                    json_record(&mut w.buf, rec)?;
                    w.maybe_flush()?;
                }
                w.buf.extend_from_slice(b"],\"deletes\":[");
                for (j, key) in t.deletes.iter().enumerate() {
                    if j > 0 {
                        w.buf.push(b',');
                    }
                    write_json_key(&mut w.buf, key);
                    w.maybe_flush()?;
                }
                w.buf.extend_from_slice(b"]}");
            }
            w.buf.push(b'}');
        }
        FileFormat::MessagePack => {
            put_map_len(&mut w.buf, 5);
            put_str(&mut w.buf, "type");
            put_str(&mut w.buf, "delta");
            put_str(&mut w.buf, "timestamp");
            w.buf.push(0xcb);
            w.buf.extend_from_slice(&timestamp.to_bits().to_be_bytes());
            put_str(&mut w.buf, "dictdb");
            meta_msgpack(&mut w.buf, meta)?;
            put_str(&mut w.buf, "tables");
            put_map_len(&mut w.buf, tables.len());
            for (name, t) in tables {
                put_str(&mut w.buf, name);
                put_map_len(&mut w.buf, 2);
                put_str(&mut w.buf, "upserts");
                put_array_len(&mut w.buf, t.upserts.len());
                for rec in &t.upserts {
                    w.buf.extend_from_slice(rec.as_msgpack());
                    w.maybe_flush()?;
                }
                put_str(&mut w.buf, "deletes");
                put_array_len(&mut w.buf, t.deletes.len());
                for key in &t.deletes {
                    put_key(&mut w.buf, key);
                }
                w.maybe_flush()?;
            }
        }
    }
    Ok(())
}
