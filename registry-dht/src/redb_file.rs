//! A redb database file that is closed and opened again after an I/O error.
//!
//! Once a write to its file fails (a full disk: `ENOSPC`), redb fails every later write
//! transaction with [`StorageError::PreviousIo`] ("close and re-open the database"): held open
//! for the life of the process, the database stays broken after the cause is gone. A
//! [`RedbFile`] opens it again instead, at the next transaction that meets that error: the
//! operation that met the I/O error fails, the next one works once the disk has room.
//!
//! A reopen keeps what the last durable commit holds: redb repairs the file as after a crash,
//! and commits made since with `Durability::None` are lost, as in a crash. Every caller's
//! in-memory state is the truth it serves, the file its copy for the next start; each says
//! why losing its non-durable commits is harmless.
//!
//! Every database of a station goes through one (the registry store here; the node's segment
//! index, location table, catalogs and subscriber database), so that the rule is in one place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use redb::{
    Database, ReadTransaction, ReadableDatabase, StorageError, TransactionError, WriteTransaction,
};

/// One redb file, opened again when an earlier write failed.
#[derive(Debug)]
pub struct RedbFile {
    path: PathBuf,
    /// The open database; `None` after a close whose reopen failed (tried again next time).
    /// Transactions are begun outside the lock: a write transaction waits for the one before.
    current: Mutex<Option<Arc<Database>>>,
}

impl RedbFile {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: Mutex::new(Some(Arc::new(db))),
        })
    }

    /// Begins a write transaction; closes and opens the database first if an earlier write
    /// failed (redb's [`StorageError::PreviousIo`]).
    pub fn begin_write(&self) -> Result<WriteTransaction, redb::Error> {
        let db = self.database()?;
        match db.begin_write() {
            Err(TransactionError::Storage(StorageError::PreviousIo)) => {
                self.close(db);
                Ok(self.database()?.begin_write()?)
            }
            begun => Ok(begun?),
        }
    }

    /// Begins a read transaction. Reads after a failed write are mostly served from redb's
    /// cache; one that is not fails, and the next write transaction reopens the database.
    pub fn begin_read(&self) -> Result<ReadTransaction, redb::Error> {
        Ok(self.database()?.begin_read()?)
    }

    /// The open database, opening it if the last reopen failed.
    fn database(&self) -> Result<Arc<Database>, redb::Error> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = &*current {
            return Ok(db.clone());
        }
        // The old handle is closed once its last clone (a transaction being begun) is gone;
        // until then this open fails (the file is locked) and the next call tries again.
        let db = Arc::new(Database::create(&self.path)?);
        tracing::info!(path = %self.path.display(), "database opened again after an I/O error");
        *current = Some(db.clone());
        Ok(db)
    }

    /// Drops `failed` as the open database (unless another caller did already).
    fn close(&self, failed: Arc<Database>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|db| Arc::ptr_eq(db, &failed)) {
            tracing::warn!(path = %self.path.display(), "an earlier write to the database failed (I/O error); closing it to open it again");
            *current = None;
        }
        drop(current);
        drop(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn put(file: &RedbFile, key: u64, len: usize) -> Result<(), redb::Error> {
        let tx = file.begin_write()?;
        tx.open_table(T)?.insert(key, vec![7u8; len].as_slice())?;
        tx.commit()?;
        Ok(())
    }

    fn keys(file: &RedbFile) -> Result<Vec<u64>, redb::Error> {
        use redb::ReadableTable;
        let tx = file.begin_read()?;
        let table = tx.open_table(T)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(row?.0.value());
        }
        Ok(out)
    }

    /// A tmpfs of 2 MiB at `path`, unmounted on drop; `None` unless root may mount one.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(path: &Path) -> Option<Self> {
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
                .arg(path)
                .stderr(std::process::Stdio::null())
                .status();
            mounted
                .is_ok_and(|s| s.success())
                .then(|| Self(path.into()))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// Fills the file system of `dir` to its last byte with the file `junk`.
    fn fill(junk: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(junk)?;
        for size in [64 * 1024, 4096, 1] {
            let block = vec![0xA5u8; size];
            while f.write_all(&block).and_then(|()| f.sync_all()).is_ok() {}
        }
        Ok(())
    }

    #[test]
    fn a_write_that_failed_on_a_full_disk_fails_alone_and_the_next_one_works()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let Some(disk) = Tmpfs::mount(dir.path()) else {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return Ok(());
        };
        let file = RedbFile::open(&disk.0.join("x.redb"))?;
        for key in 0..3 {
            put(&file, key, 5000)?;
        }
        fill(&disk.0.join("junk"))?;
        // A commit that needs pages the disk no longer has fails with the I/O error itself.
        let failed = put(&file, 3, 5000).err();
        assert!(
            matches!(
                &failed,
                Some(redb::Error::Io(e)) if e.kind() == std::io::ErrorKind::StorageFull
            ),
            "{failed:?}"
        );
        std::fs::remove_file(disk.0.join("junk"))?;
        // Without a reopen this is redb's PreviousIo.
        put(&file, 4, 5000)?;
        assert_eq!(
            keys(&file)?,
            vec![0, 1, 2, 4],
            "the failed commit is not kept"
        );
        // The reopened file is what the next start finds.
        drop(file);
        assert_eq!(
            keys(&RedbFile::open(&disk.0.join("x.redb"))?)?,
            vec![0, 1, 2, 4]
        );
        Ok(())
    }

    #[test]
    fn a_database_without_failures_stays_open() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = RedbFile::open(&dir.path().join("x.redb"))?;
        let first = file.database()?;
        put(&file, 1, 10)?;
        assert_eq!(keys(&file)?, vec![1]);
        assert!(Arc::ptr_eq(&first, &file.database()?), "not reopened");
        Ok(())
    }
}
