//! `[signing]`: the key archway signs the indexes it synthesizes (and the platform manifests
//! they list) with, so a cluster with a signature policy can use fallbacks.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::values::{self, Errors};
use crate::signing::SigningKey;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSigning {
    key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SigningConfig {
    /// `signing.key`: the PEM file, re-read on SIGHUP.
    pub key_path: PathBuf,
    /// The key itself, read at load time; never printed.
    pub key: SigningKey,
}

pub(super) fn validate(
    raw: Option<RawSigning>,
    base: Option<&Path>,
    errs: &mut Errors,
) -> Option<SigningConfig> {
    let raw = raw?;
    let Some(file) = raw.key else {
        errs.push("signing.key", "missing: [signing] needs a key file");
        return None;
    };
    let key_path = values::resolve(base, &file);
    match SigningKey::load(&key_path) {
        Ok(key) => Some(SigningConfig { key_path, key }),
        Err(e) => {
            errs.push("signing.key", crate::causes::Chain(&e).to_string());
            None
        }
    }
}
