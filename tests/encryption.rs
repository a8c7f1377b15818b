//! Encrypted backups (`.age`, feature `encryption`): round trips in both
//! formats, compressed and not; no plaintext ever reaching the store; and
//! the three distinct failures (no identity, a wrong identity, damage).
#![cfg(feature = "encryption")]

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::{craft::MemStore, table_map};
use dictdb::encryption::{Identity, Recipient};
use dictdb::restore::{list_store, verify_store, Restore};
use dictdb::store::{BackupWriter, FileReader, StoredFile};
use dictdb::{
    BackupConfig, BackupManager, BackupStore, Compression, DecryptFailure, DictDB, Error,
    FileFormat, Result,
};
use serde_json::json;

/// A value that must never reach the store in clear.
const SECRET: &str = "plaintext-marker-7f3a9c";

/// A store that keeps every chunk a writer hands it, in order.
#[derive(Debug, Default)]
struct Recording {
    inner: Arc<MemStore>,
    chunks: Arc<Mutex<Vec<Vec<u8>>>>,
}

struct RecordingWriter {
    inner: Box<dyn BackupWriter>,
    chunks: Arc<Mutex<Vec<Vec<u8>>>>,
}

#[async_trait]
impl BackupWriter for RecordingWriter {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        self.chunks.lock().unwrap().push(chunk.clone());
        self.inner.write(chunk).await
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit().await
    }
    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}

#[async_trait]
impl BackupStore for Recording {
    fn location(&self) -> String {
        "recording".into()
    }
    async fn list(&self) -> Result<Vec<StoredFile>> {
        self.inner.list().await
    }
    async fn create(&self, name: &str) -> Result<Box<dyn BackupWriter>> {
        Ok(Box::new(RecordingWriter {
            inner: self.inner.create(name).await?,
            chunks: Arc::clone(&self.chunks),
        }))
    }
    async fn open(&self, name: &str) -> Result<FileReader> {
        self.inner.open(name).await
    }
    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.inner.read_range(name, range).await
    }
    async fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name).await
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The chain every test works on: a full backup and two deltas of a small
/// database (one record holds [`SECRET`]), encrypted to `to`.
async fn chain(
    store: Arc<dyn BackupStore>,
    format: FileFormat,
    compression: Compression,
    to: Vec<Recipient>,
) -> (DictDB, Vec<String>) {
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    for i in 1..=300 {
        users
            .insert(json!({"name": format!("user {i}"), "note": SECRET, "n": i}))
            .unwrap();
    }
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(store)
            .file_format(format)
            .incremental(true)
            .compression(compression)
            .encrypt_to(to),
    )
    .await
    .unwrap();
    let mut files = vec![m.backup_full().await.unwrap().file];
    users.update(1, json!({"n": -1})).unwrap();
    users.delete(2).unwrap();
    files.push(m.backup_delta().await.unwrap().info().unwrap().file.clone());
    db.create_table("later")
        .unwrap()
        .insert(json!({"secret": SECRET}))
        .unwrap();
    files.push(m.backup_delta().await.unwrap().info().unwrap().file.clone());
    m.stop().await.unwrap();
    (db, files)
}

#[tokio::test]
async fn encrypted_chains_round_trip_in_both_formats_compressed_and_not() {
    let id = Identity::generate();
    for format in [FileFormat::Json, FileFormat::MessagePack] {
        for compression in [Compression::None, Compression::zstd()] {
            let store = Arc::new(Recording::default());
            let (db, files) = chain(store.clone(), format, compression, vec![id.to_public()]).await;
            let suffix = match compression {
                Compression::None => format!(".{format}.age"),
                _ => format!(".{format}.zst.age"),
            };
            for f in &files {
                assert!(f.ends_with(&suffix), "{f}");
                let bytes = store.inner.get(f).unwrap();
                assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{f}");
            }
            // Nothing in clear ever went to the store: no record, no key name.
            for chunk in store.chunks.lock().unwrap().iter() {
                assert!(!contains(chunk, SECRET.as_bytes()));
                assert!(!contains(chunk, b"primary_key"));
            }
            let restore = Restore::new(store.clone()).identity(id.clone());
            let restored = restore.run().await.unwrap();
            assert_eq!(
                table_map(&restored.db),
                table_map(&db),
                "{format} {compression:?}"
            );
            assert!(restored.verified);
            assert_eq!(restored.applied.len(), 3);
            assert!(restore.verify().await.unwrap().is_ok());
            let listing = restore.list().await.unwrap();
            for f in &listing.files {
                assert!(
                    f.encrypted && f.error.is_none(),
                    "{}: {:?}",
                    f.name,
                    f.error
                );
                assert!(f.ours && f.seq.is_some() && !f.tables.is_empty());
            }
            let r = restore.inspect(&files[0], None).await.unwrap();
            assert!(r.status.unwrap().is_verified());
            assert_eq!(r.records, 300);
        }
    }
}

fn kind_of(e: &Error) -> DecryptFailure {
    match e {
        Error::Decrypt { kind, .. } => *kind,
        other => panic!("not a decryption error: {other:?}"),
    }
}

#[tokio::test]
async fn missing_and_wrong_identities_are_distinct_clear_errors() {
    let id = Identity::generate();
    let stranger = Identity::generate();
    let store = Arc::new(MemStore::default());
    let (_, files) = chain(
        store.clone(),
        FileFormat::Json,
        Compression::zstd(),
        vec![id.to_public()],
    )
    .await;
    let full = &files[0];

    // No identity.
    let e = Restore::new(store.clone()).run().await.unwrap_err();
    assert_eq!(kind_of(&e), DecryptFailure::MissingIdentity);
    let text = e.to_string();
    assert!(
        text.contains(full) && text.contains("no identity"),
        "{text}"
    );
    assert!(
        text.contains(&id.to_public().to_string()),
        "names the recipient: {text}"
    );
    // list without an identity: every file is there, said to be encrypted.
    let listing = list_store(store.clone()).await.unwrap();
    assert_eq!(listing.files.len(), 3);
    for f in &listing.files {
        assert!(f.encrypted && f.compressed && f.kind.is_some());
        assert_eq!(
            kind_of(f.error.as_ref().unwrap()),
            DecryptFailure::MissingIdentity
        );
    }
    assert_eq!(
        kind_of(&listing.plan.unwrap_err()),
        DecryptFailure::MissingIdentity
    );
    let report = verify_store(store.clone()).await.unwrap();
    assert!(!report.is_ok());

    // A wrong identity.
    let wrong = Restore::new(store.clone()).identity(stranger.clone());
    let e = wrong.run().await.unwrap_err();
    assert_eq!(kind_of(&e), DecryptFailure::WrongIdentity);
    let text = e.to_string();
    assert!(text.contains(full), "{text}");
    assert!(text.contains(&id.to_public().to_string()), "{text}");
    assert!(text.contains(&stranger.to_public().to_string()), "{text}");
    let r = wrong.inspect(full, None).await.unwrap();
    assert_eq!(
        kind_of(&r.status.unwrap_err()),
        DecryptFailure::WrongIdentity
    );

    // The wrong one and the right one: the right one opens it.
    let both = Restore::new(store).identities([stranger, id]);
    assert!(both.run().await.is_ok());
}

#[tokio::test]
async fn tampered_bytes_are_damage_wherever_they_are() {
    let id = Identity::generate();
    for compression in [Compression::None, Compression::zstd()] {
        let store = Arc::new(MemStore::default());
        let (_, files) = chain(
            store.clone(),
            FileFormat::Json,
            compression,
            vec![id.to_public()],
        )
        .await;
        let full = &files[0];
        let bytes = store.get(full).unwrap();
        let find = |needle: &[u8]| {
            bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
        };
        let mac = find(b"\n--- ") + 5;
        let payload = bytes[mac..].iter().position(|&b| b == b'\n').unwrap() + mac + 1;
        let positions = [
            ("the version line", 3),
            ("the X25519 stanza", find(b"-> X25519 ") + 12),
            ("the recipient listing", find(b"-> dictdb-recipients ") + 25),
            ("the header MAC", mac + 2),
            ("the payload nonce", payload + 3),
            ("the first payload byte", payload + 16),
            ("the middle", (payload + bytes.len()) / 2),
            ("the last byte", bytes.len() - 1),
        ];
        for (what, at) in positions {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            let s = MemStore::with(&store.snapshot());
            s.put(full, bad);
            let restore = Restore::new(s.clone()).identity(id.clone());
            let e = restore.run().await.unwrap_err();
            assert_eq!(kind_of(&e), DecryptFailure::Damaged, "{what}: {e}");
            assert!(e.to_string().contains(full.as_str()), "{what}: {e}");
            assert!(!restore.verify().await.unwrap().is_ok(), "{what}");
            let r = restore.inspect(full, None).await.unwrap();
            assert_eq!(
                kind_of(&r.status.unwrap_err()),
                DecryptFailure::Damaged,
                "{what}"
            );
        }
        // Truncated, or not an age file at all.
        for bad in [
            bytes[..bytes.len() - 1].to_vec(),
            bytes[..payload + 100].to_vec(),
            bytes[..40].to_vec(),
            b"{\"tables\": {}}".to_vec(),
        ] {
            let s = MemStore::with(&store.snapshot());
            s.put(full, bad);
            let e = Restore::new(s)
                .identity(id.clone())
                .run()
                .await
                .unwrap_err();
            assert_eq!(kind_of(&e), DecryptFailure::Damaged, "{e}");
        }
    }
}

#[tokio::test]
async fn any_of_several_recipients_decrypts() {
    let a = Identity::generate();
    let b = Identity::generate();
    let store = Arc::new(MemStore::default());
    let (db, _) = chain(
        store.clone(),
        FileFormat::MessagePack,
        Compression::zstd(),
        vec![a.to_public(), b.to_public()],
    )
    .await;
    for id in [a, b] {
        let restored = Restore::new(store.clone())
            .identity(id)
            .run()
            .await
            .unwrap();
        assert_eq!(table_map(&restored.db), table_map(&db));
    }
}

#[tokio::test]
async fn keys_and_recipients_are_checked_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    let e = BackupManager::start(&db, BackupConfig::new(tmp.path()).encrypt_to([]))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    let e = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path()).compression(Compression::Zstd { level: 99 }),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("zstd level 99"), "{e}");
    let e = "age1notakey".parse::<Recipient>().unwrap_err();
    assert!(e.to_string().contains("age1notakey"), "{e}");

    let key = tmp.path().join("key.txt");
    std::fs::write(&key, "# a comment\nAGE-SECRET-KEY-1BROKEN\n").unwrap();
    let e = Identity::from_file(&key).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("key.txt"), "{e}");
    assert!(!e.contains("BROKEN"), "the key is never repeated: {e}");
    let id = Identity::generate();
    std::fs::write(
        &key,
        format!(
            "# public key: {}\n{}\n",
            id.to_public(),
            id.to_secret_string()
        ),
    )
    .unwrap();
    let ids = Identity::from_file(&key).unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].to_public(), id.to_public());
}

#[tokio::test]
async fn a_writer_with_only_the_public_key_continues_an_encrypted_store() {
    let tmp = tempfile::tempdir().unwrap();
    let id = Identity::generate();
    let config = || {
        BackupConfig::new(tmp.path())
            .incremental(true)
            .encrypt_to([id.to_public()])
    };
    let db = DictDB::new();
    db.create_table("t")
        .unwrap()
        .insert(json!({"a": 1}))
        .unwrap();
    let m = BackupManager::start(&db, config()).await.unwrap();
    m.backup_full().await.unwrap();
    m.stop().await.unwrap();
    // The sequence numbers are encrypted: without an identity the guard
    // can only refuse an empty database over the store's full backup.
    let empty = BackupManager::start(&DictDB::new(), config()).await;
    assert!(matches!(empty, Err(Error::StoreAhead { .. })), "{empty:?}");
    let m = BackupManager::start(&db, config()).await.unwrap();
    db.table("t").unwrap().insert(json!({"a": 2})).unwrap();
    m.backup_full().await.unwrap();
    m.stop().await.unwrap();
    // With the identity, restore on start continues the chain.
    let resumed = BackupManager::restore_or_start(config().identity(id.clone()))
        .await
        .unwrap();
    assert_eq!(resumed.db.table("t").unwrap().len().unwrap(), 2);
    resumed
        .db
        .table("t")
        .unwrap()
        .insert(json!({"a": 3}))
        .unwrap();
    let next = resumed.manager.backup_now().await.unwrap();
    assert_eq!(next.info().unwrap().kind, dictdb::BackupKind::Delta);
    resumed.manager.stop().await.unwrap();
    // Without it, restore on start says an identity is needed.
    let err = BackupManager::restore_or_start(config()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Decrypt {
                kind: DecryptFailure::MissingIdentity,
                ..
            }
        ),
        "{err}"
    );
}
