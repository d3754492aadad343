//! A redb database file that is closed and opened again after an I/O error.
//!
//! Once a write to its file fails (a full disk: `ENOSPC`), redb fails every later write
//! transaction with [`StorageError::PreviousIo`] ("close and re-open the database"), and every
//! read its page cache does not serve: held open for the life of the process, the database
//! stays broken after the cause is gone. A [`RedbFile`] opens it again instead, at the next
//! transaction that meets that error: the operation that met the I/O error fails, the next
//! write works once the disk has room, and a read ([`RedbFile::read`]) is run again at once
//! on the file opened again, so reads work on a disk that stays full.
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
    /// redb's page cache in bytes; `None` for its default.
    cache: Option<usize>,
}

impl RedbFile {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        Self::open_with_cache(path, None)
    }

    /// [`open`](Self::open), with redb's page cache set to `cache` bytes.
    fn open_with_cache(path: &Path, cache: Option<usize>) -> Result<Self, redb::Error> {
        let db = Self::create(path, cache)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: Mutex::new(Some(Arc::new(db))),
            cache,
        })
    }

    fn create(path: &Path, cache: Option<usize>) -> Result<Database, redb::Error> {
        let mut builder = Database::builder();
        if let Some(bytes) = cache {
            builder.set_cache_size(bytes);
        }
        Ok(builder.create(path)?)
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

    /// Runs `read` in a read transaction; if it meets an earlier write's I/O error (redb's
    /// `PreviousIo`: after a failed write, redb fails every read its cache does not serve),
    /// closes the database, opens it again and runs `read` once more. So reads work again
    /// once a write failed, without waiting for a write to reopen the file; on a disk that
    /// stays full, that may be never.
    pub fn read<T>(
        &self,
        read: impl Fn(&ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, redb::Error> {
        let db = self.database()?;
        let first = db
            .begin_read()
            .map_err(redb::Error::from)
            .and_then(|tx| read(&tx));
        match first {
            Err(redb::Error::PreviousIo) => {
                self.close(db);
                read(&self.database()?.begin_read()?)
            }
            done => done,
        }
    }

    /// The open database, opening it if the last reopen failed.
    fn database(&self) -> Result<Arc<Database>, redb::Error> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = &*current {
            return Ok(db.clone());
        }
        // The old handle is closed once its last clone (a transaction being begun) is gone;
        // until then this open fails (the file is locked) and the next call tries again.
        let db = Arc::new(Self::create(&self.path, self.cache)?);
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
        file.read(|tx| keys_in(tx, T))
    }

    fn keys_in(
        tx: &ReadTransaction,
        table: TableDefinition<u64, &[u8]>,
    ) -> Result<Vec<u64>, redb::Error> {
        use redb::ReadableTable;
        let table = tx.open_table(table)?;
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
    fn reads_that_miss_the_cache_work_again_after_a_failed_write()
    -> Result<(), Box<dyn std::error::Error>> {
        const COLD: TableDefinition<u64, &[u8]> = TableDefinition::new("cold");
        let dir = tempfile::tempdir()?;
        let Some(disk) = Tmpfs::mount(dir.path()) else {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return Ok(());
        };
        let path = disk.0.join("x.redb");
        {
            // Rows over many pages, written before the open below: not in its cache.
            let file = RedbFile::open(&path)?;
            let tx = file.begin_write()?;
            let mut table = tx.open_table(COLD)?;
            for key in 0..64 {
                table.insert(key, vec![9u8; 4000].as_slice())?;
            }
            drop(table);
            tx.commit()?;
        }
        // No page cache: every read goes to the file, as a read of what the cache does not
        // hold (a larger database, after a restart) does. A debug build reads every page on
        // open (redb's `mark_allocated_page_for_debug`), so a cache would hold them all.
        let file = RedbFile::open_with_cache(&path, Some(0))?;
        fill(&disk.0.join("junk"))?;
        let failed = put(&file, 1, 100_000).err();
        assert!(matches!(&failed, Some(redb::Error::Io(_))), "{failed:?}");
        // The control: a read of the same database as it is now fails where the cache has no
        // page of what it reads.
        let db = file.database()?;
        let stale = db
            .begin_read()
            .map_err(redb::Error::from)
            .and_then(|tx| keys_in(&tx, COLD))
            .err();
        assert!(matches!(stale, Some(redb::Error::PreviousIo)), "{stale:?}");
        drop(db);
        // The disk is still full: no write has reopened the file, and the read works.
        assert_eq!(
            file.read(|tx| keys_in(tx, COLD))?,
            (0..64).collect::<Vec<_>>()
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
