//! Reading wrapped data keys, and the fingerprints of the managed root
//! versions a store was written under.

use std::collections::BTreeMap;
use std::path::Path;

use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use super::schema::{CF_DEKS, CF_PROJECTIONS, decode};
use super::{Store, StoreError, keys};
use crate::proto::store::WrappedDataKey;

impl Store {
    /// A wrapped data key by id.
    pub fn wrapped_data_key(&self, id: &[u8]) -> Result<Option<WrappedDataKey>, StoreError> {
        self.db.get_cf(self.cf(CF_DEKS), id)?.map(|v| decode(CF_DEKS, "wrapped data key", &v)).transpose()
    }

    /// The greatest data key id starting with `prefix` (the latest
    /// generation of a bucket), if any.
    pub fn last_data_key_with_prefix(&self, prefix: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        let mut upper = prefix.clone();
        upper.extend_from_slice(&[0xff; 8]);
        match self
            .db
            .iterator_cf(self.cf(CF_DEKS), IteratorMode::From(&upper, Direction::Reverse))
            .next()
            .transpose()?
        {
            Some((id, _)) if id.starts_with(&prefix) => Ok(Some(id.into_vec())),
            _ => Ok(None),
        }
    }

    /// Every data key of `tenant` (all layers), as (id bytes, wrapped key).
    pub fn data_keys_of(&self, tenant: &str) -> Result<Vec<(Vec<u8>, WrappedDataKey)>, StoreError> {
        let prefix = keys::tenant_prefix(tenant);
        let mut found = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_DEKS), IteratorMode::From(&prefix, Direction::Forward)) {
            let (id, value) = item?;
            if !id.starts_with(&prefix) {
                break;
            }
            found.push((id.into_vec(), decode(CF_DEKS, "wrapped data key", &value)?));
        }
        Ok(found)
    }

    /// The fingerprint recorded for each managed root version (hex), so a
    /// worker never starts on a store with a root it lacks.
    pub fn managed_root_fingerprints(&self) -> Result<BTreeMap<u32, String>, StoreError> {
        fingerprints_in(&self.db)
    }

    /// Records the fingerprints of the managed root versions in use (synced).
    pub fn record_managed_root_fingerprints(&self, fingerprints: &BTreeMap<u32, String>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (version, fingerprint) in fingerprints {
            batch.put_cf(self.cf(CF_PROJECTIONS), keys::managed_root_key(*version), fingerprint.as_bytes());
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Whether the store holds any data key.
    pub fn holds_data_keys(&self) -> Result<bool, StoreError> {
        holds_data_keys_in(&self.db)
    }
}

/// What a store records of the managed root it was written under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRecord {
    /// The fingerprint recorded for each managed root version.
    pub fingerprints: BTreeMap<u32, String>,
    /// Whether the store holds any data key.
    pub holds_data_keys: bool,
}

/// What the store in `dir` records of its managed root, read without
/// opening it for writing: another worker may own it. `None` when `dir`
/// holds no store. Lets a worker check, before it creates a managed root,
/// that no store on its data dir expects another one.
pub fn read_root_record(dir: &Path) -> Result<Option<RootRecord>, StoreError> {
    if !dir.join("CURRENT").exists() {
        return Ok(None);
    }
    let options = Options::default();
    let families = DB::list_cf(&options, dir)?;
    let db = DB::open_cf_for_read_only(&options, dir, families, false)?;
    Ok(Some(RootRecord { fingerprints: fingerprints_in(&db)?, holds_data_keys: holds_data_keys_in(&db)? }))
}

fn fingerprints_in(db: &DB) -> Result<BTreeMap<u32, String>, StoreError> {
    let mut found = BTreeMap::new();
    let Some(cf) = db.cf_handle(CF_PROJECTIONS) else { return Ok(found) };
    let prefix = keys::MANAGED_ROOT_PREFIX;
    for item in db.iterator_cf(cf, IteratorMode::From(prefix, Direction::Forward)) {
        let (key, value) = item?;
        let Some(version) = key.strip_prefix(prefix) else {
            break;
        };
        let corrupt = |reason: &str| StoreError::Corrupt {
            cf: CF_PROJECTIONS,
            what: "managed root fingerprint",
            reason: reason.to_owned(),
        };
        let version = u32::from_be_bytes(version.try_into().map_err(|_| corrupt("version is not 4 bytes"))?);
        let fingerprint = String::from_utf8(value.into_vec()).map_err(|_| corrupt("not UTF-8"))?;
        found.insert(version, fingerprint);
    }
    Ok(found)
}

fn holds_data_keys_in(db: &DB) -> Result<bool, StoreError> {
    let Some(cf) = db.cf_handle(CF_DEKS) else { return Ok(false) };
    Ok(db.iterator_cf(cf, IteratorMode::Start).next().transpose()?.is_some())
}
