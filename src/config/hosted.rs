//! `[[hosted]]`: repositories archway stores itself, that clients push to. A hosted registry
//! is routed like an upstream (its name as the first path component, or `?ns=` for one of its
//! hosts) and may be named by fallback rules.

use std::collections::HashMap;

use serde::Deserialize;

use super::upstream::{claim_routing_keys, valid_name};
use super::values::Errors;
use super::AuthConfig;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHosted {
    name: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    writers: Option<Vec<String>>,
    #[serde(default)]
    delete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedConfig {
    /// One lower-case name component: clients use `/v2/<name>/<repository>/...`.
    pub name: String,
    /// Registry host names it answers for (`?ns=` and path prefix), as for upstreams.
    pub hosts: Vec<String>,
    /// `[auth]` users who may push and delete; `["*"]`: every authenticated user.
    pub writers: Vec<String>,
    /// Whether DELETE of manifests, tags and blobs is allowed (else 405 UNSUPPORTED).
    pub delete: bool,
}

impl HostedConfig {
    /// Whether `user` (authenticated) may write here.
    pub fn may_write(&self, user: &str) -> bool {
        self.writers.iter().any(|w| w == "*" || w == user)
    }
}

pub(super) fn validate(
    raw: Vec<RawHosted>,
    auth: Option<&AuthConfig>,
    errs: &mut Errors,
    seen: &mut HashMap<String, String>,
) -> Vec<HostedConfig> {
    let mut out = Vec::new();
    for (i, h) in raw.into_iter().enumerate() {
        let k = |f: &str| format!("hosted[{i}].{f}");
        let name = h.name.clone().unwrap_or_default();
        if name.is_empty() {
            errs.push(k("name"), "missing");
        } else if !valid_name(&name) {
            errs.push(
                k("name"),
                format!("{name:?} must be one lower-case name component (e.g. \"local\")"),
            );
        }
        claim_routing_keys(
            errs,
            seen,
            &format!("hosted[{i}]"),
            &format!("hosted {name:?}"),
            &h.hosts,
            &name,
        );
        let writers = match h.writers {
            None => {
                errs.push(
                    k("writers"),
                    "missing: name the [auth] users who may push (or [\"*\"] for every authenticated user)",
                );
                Vec::new()
            }
            Some(w) if w.is_empty() => {
                errs.push(k("writers"), "empty: nobody could push");
                w
            }
            Some(w) => w,
        };
        match auth {
            None => errs.push(
                format!("hosted[{i}]"),
                "pushing needs [auth]: configure an htpasswd file for the writers",
            ),
            Some(a) => {
                for (j, w) in writers.iter().enumerate() {
                    if w != "*" && !a.users.contains_key(w) {
                        errs.push(
                            k(&format!("writers[{j}]")),
                            format!("{w:?} is not a user of auth.htpasswd"),
                        );
                    }
                }
            }
        }
        out.push(HostedConfig {
            name,
            hosts: h.hosts,
            writers,
            delete: h.delete,
        });
    }
    out
}
