//! Records written under preconditions: create-only, and replace-if-unchanged. The object
//! store's conditional writes are how replicas agree on something (who fills a blob) without
//! a coordination service of their own.

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Store;
use crate::error::{Error, Result};

/// A record as read, with what identifies this version of it for a conditional replace.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The record's content.
    pub value: T,
    version: UpdateVersion,
}

/// How a create-only write went.
#[derive(Debug, Clone)]
pub enum Created<T> {
    /// This write created the record, now at this version.
    Created(Versioned<T>),
    /// A record was there already; it stands.
    Exists,
    /// The backend cannot write create-only.
    Unsupported,
}

impl Store {
    /// Writes `value` at `key` unless a record is there.
    pub async fn create_record<T: Serialize + Clone>(
        &self,
        key: &Path,
        value: &T,
    ) -> Result<Created<T>> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.os.put_opts(key, encode(value)?.into(), opts).await {
            Ok(r) => Ok(Created::Created(Versioned {
                value: value.clone(),
                version: UpdateVersion {
                    e_tag: r.e_tag,
                    version: r.version,
                },
            })),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Created::Exists),
            Err(object_store::Error::NotImplemented { .. }) => Ok(Created::Unsupported),
            Err(e) => Err(e.into()),
        }
    }

    /// The record at `key` and its version, if there is one.
    pub async fn get_versioned<T: DeserializeOwned>(
        &self,
        key: &Path,
    ) -> Result<Option<Versioned<T>>> {
        let got = match self.os.get(key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got.bytes().await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::CorruptRecord {
            key: key.to_string(),
            source: std::sync::Arc::new(e),
        })?;
        Ok(Some(Versioned { value, version }))
    }

    /// Replaces the record at `key` with `value` if it is still the version `seen`. `None`:
    /// it changed (or went) meanwhile, and stays as someone else left it. Otherwise the new
    /// version, for the next replace.
    pub async fn replace_record<T: Serialize + Clone, U>(
        &self,
        key: &Path,
        value: &T,
        seen: &Versioned<U>,
    ) -> Result<Option<Versioned<T>>> {
        let opts = PutOptions {
            mode: PutMode::Update(seen.version.clone()),
            ..Default::default()
        };
        match self.os.put_opts(key, encode(value)?.into(), opts).await {
            Ok(r) => Ok(Some(Versioned {
                value: value.clone(),
                version: UpdateVersion {
                    e_tag: r.e_tag,
                    version: r.version,
                },
            })),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("cannot encode a record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_create_wins_and_a_replace_needs_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::from_object_store(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            dir.path().to_path_buf(),
        );
        let key = Path::from("fills/sha256/ab");
        assert!(matches!(
            store.create_record(&key, &1u32).await.unwrap(),
            Created::Created(v) if v.value == 1
        ));
        assert!(matches!(
            store.create_record(&key, &2u32).await.unwrap(),
            Created::Exists
        ));
        let seen = store.get_versioned::<u32>(&key).await.unwrap().unwrap();
        assert_eq!(seen.value, 1);
        let next = store.replace_record(&key, &3u32, &seen).await.unwrap();
        assert!(next.is_some(), "the version read is current");
        assert!(
            store
                .replace_record(&key, &4u32, &seen)
                .await
                .unwrap()
                .is_none(),
            "a stale version loses"
        );
        let now = store.get_versioned::<u32>(&key).await.unwrap().unwrap();
        assert_eq!(now.value, 3);
        assert!(store
            .replace_record(&key, &5u32, &next.unwrap())
            .await
            .unwrap()
            .is_some());
    }
}
