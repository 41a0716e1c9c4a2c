//! Durable storage of receipts (sled): a node keeps the newest valid receipt
//! of every channel, flushed to disk before the traffic it pays for counts
//! as paid, so a crash or `kill -9` loses no earnings. [`open_db`] is how
//! every sled database of ours is opened.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use hopwire_proto::pay::SignedReceipt;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("receipt store: {0}")]
    Sled(#[from] sled::Error),
    #[error("receipt store holds an unreadable entry: {0}")]
    Corrupt(String),
    #[error("receipt store {0} is in use (is the node running with this config? stop it first)")]
    InUse(std::path::PathBuf),
}

/// How long [`open_db`] waits for a lock that is being let go.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Whether sled failed to take its database's file lock.
pub fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Opens the sled database at `path`, waiting up to two seconds for its file
/// lock. A dropped `sled::Db` lets its lock go only when sled's background
/// threads finish (spacejam/sled#1234), so a database closed and opened
/// again in one process (a client runtime stopped and started by the app,
/// a test) can find it held for some milliseconds. A lock still held after
/// the wait is a database still open (most likely by another process, a
/// node or daemon already running) and is returned as the error
/// ([`is_locked`]).
pub fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_RELEASE_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        match sled::open(path) {
            Err(e) if is_locked(&e) && Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// The newest receipt per channel, and whether it was settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReceipt {
    pub receipt: SignedReceipt,
    /// The amount the ledger has paid out for this channel so far.
    pub settled: u64,
}

#[derive(Debug, Clone)]
pub struct ReceiptStore {
    tree: sled::Tree,
}

impl ReceiptStore {
    /// Opens the store kept in `dir` (a node's `receipts/`).
    pub fn open_dir(dir: &Path) -> Result<Self, StoreError> {
        let db = open_db(dir).map_err(|e| match e {
            e if is_locked(&e) => StoreError::InUse(dir.to_owned()),
            e => StoreError::Sled(e),
        })?;
        Self::open(&db)
    }

    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree("receipts")?,
        })
    }

    fn decode(bytes: &[u8]) -> Result<StoredReceipt, StoreError> {
        postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Keeps `receipt` if it is newer than the stored one for its channel,
    /// and returns only once it is on disk. `false`: an older or equal one.
    /// Atomic per channel against [`ReceiptStore::mark_settled`].
    pub fn save(&self, receipt: &SignedReceipt) -> Result<bool, StoreError> {
        let mut newer = false;
        let mut corrupt = None;
        self.tree.fetch_and_update(receipt.receipt.channel, |raw| {
            let keep = raw.map(<[u8]>::to_vec);
            let old = match raw.map(Self::decode).transpose() {
                Ok(old) => old,
                Err(e) => {
                    corrupt = Some(e);
                    return keep;
                }
            };
            newer = old.as_ref().is_none_or(|o| o.receipt.receipt.seq < receipt.receipt.seq);
            if !newer {
                return keep;
            }
            let entry = StoredReceipt {
                receipt: receipt.clone(),
                settled: old.map_or(0, |o| o.settled),
            };
            postcard::to_stdvec(&entry).ok().or(keep)
        })?;
        if let Some(e) = corrupt {
            return Err(e);
        }
        if newer {
            self.tree.flush()?;
        }
        Ok(newer)
    }

    /// Records what the ledger paid out for a channel.
    pub fn mark_settled(&self, channel: [u8; 32], settled: u64) -> Result<(), StoreError> {
        let mut corrupt = None;
        self.tree.fetch_and_update(channel, |old| {
            let bytes = old?;
            match Self::decode(bytes) {
                Ok(mut entry) => {
                    entry.settled = entry.settled.max(settled);
                    postcard::to_stdvec(&entry).ok().or_else(|| Some(bytes.to_vec()))
                }
                Err(e) => {
                    corrupt = Some(e);
                    Some(bytes.to_vec())
                }
            }
        })?;
        if let Some(e) = corrupt {
            return Err(e);
        }
        self.tree.flush()?;
        Ok(())
    }

    pub fn get(&self, channel: [u8; 32]) -> Result<Option<StoredReceipt>, StoreError> {
        self.tree.get(channel)?.map(|b| Self::decode(&b)).transpose()
    }

    /// Every channel's newest receipt.
    pub fn all(&self) -> Result<Vec<StoredReceipt>, StoreError> {
        self.tree.iter().map(|kv| Self::decode(&kv?.1)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use hopwire_proto::pay::Receipt;

    fn receipt(seq: u64, amount: u64) -> SignedReceipt {
        Receipt {
            domain: "testnet".into(),
            channel: [1; 32],
            session: [0; 16],
            seq,
            cumulative_bytes: amount,
            cumulative_amount: amount,
        }
        .sign(&SigningKey::from_bytes(&[5; 32]).into())
    }

    #[test]
    fn newest_receipt_survives_a_reopen() {
        let dir = std::env::temp_dir().join(format!("hopwire-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let db = open_db(&dir).expect("open");
            let store = ReceiptStore::open(&db).expect("store");
            assert!(store.save(&receipt(1, 10)).expect("save"));
            assert!(store.save(&receipt(3, 30)).expect("save"));
            assert!(
                !store.save(&receipt(2, 20)).expect("older"),
                "an older receipt never replaces a newer one"
            );
            store.mark_settled([1; 32], 10).expect("settled");
            // (kill -9 after `save` returned is the end-to-end test's job;
            // here the database is simply reopened.)
            drop((store, db));
        }
        // Reopened at once, as a client runtime started again is.
        let db = open_db(&dir).expect("reopen");
        let store = ReceiptStore::open(&db).expect("store");
        let kept = store.get([1; 32]).expect("read").expect("kept");
        assert_eq!(kept.receipt, receipt(3, 30));
        assert_eq!(kept.settled, 10);
        assert_eq!(store.all().expect("all").len(), 1);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lock_being_let_go_is_waited_for_and_one_kept_is_an_error() {
        let dir = std::env::temp_dir().join(format!("hopwire-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // The lock sled takes (flock on `db`), held as a just-dropped
        // database's threads hold it, then let go after 150 ms.
        let holder = std::fs::File::create(dir.join("db")).expect("db file");
        holder.lock().expect("lock");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            drop(holder);
        });
        let db = open_db(&dir).expect("opened once the lock was let go");
        release.join().expect("released");
        // Now this process holds it for good: a second open waits and fails.
        let started = Instant::now();
        let e = ReceiptStore::open_dir(&dir).expect_err("held by the first open");
        assert!(matches!(e, StoreError::InUse(ref d) if d == &dir), "{e}");
        assert!(started.elapsed() >= LOCK_RELEASE_WAIT / 2, "waited before giving up");
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
