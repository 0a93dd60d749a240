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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const UP: &str = "[[upstream]]\nname = \"hub\"\nurl = \"https://r.example\"\nhosts = [\"docker.io\"]\ndefault = true\n";

    fn load(rest: &str) -> Result<Config, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(dir.path().join("htpasswd"), format!("ci:{hash}\n")).unwrap();
        let toml = format!("{UP}{rest}");
        Config::from_toml(&toml, "t.toml", Some(dir.path())).map_err(|e| {
            e.errors
                .iter()
                .map(|e| format!("{}: {}", e.key, e.reason))
                .collect()
        })
    }

    const AUTH: &str = "[auth]\nhtpasswd = \"htpasswd\"\n";

    #[test]
    fn a_hosted_registry_needs_auth_known_writers_and_its_own_names() {
        let c = load(&format!(
            "{AUTH}[[hosted]]\nname = \"local\"\nhosts = [\"registry.example.com\"]\nwriters = [\"ci\"]\ndelete = true\n"
        ))
        .unwrap();
        assert_eq!(c.hosted[0].name, "local");
        assert!(c.hosted[0].may_write("ci") && !c.hosted[0].may_write("bob"));
        let star = load(&format!(
            "{AUTH}[[hosted]]\nname = \"local\"\nwriters = [\"*\"]\n"
        ))
        .unwrap();
        assert!(star.hosted[0].may_write("anyone") && !star.hosted[0].delete);

        for (rest, want) in [
            ("[[hosted]]\nname = \"local\"\nwriters = [\"ci\"]\n", "hosted[0]: pushing needs [auth]"),
            (&format!("{AUTH}[[hosted]]\nname = \"local\"\n") as &str, "hosted[0].writers: missing"),
            (&format!("{AUTH}[[hosted]]\nname = \"local\"\nwriters = []\n"), "hosted[0].writers: empty"),
            (&format!("{AUTH}[[hosted]]\nname = \"local\"\nwriters = [\"bob\"]\n"), "hosted[0].writers[0]: \"bob\" is not a user"),
            (&format!("{AUTH}[[hosted]]\nname = \"hub\"\nwriters = [\"ci\"]\n"), "hosted[0].name: \"hub\" already routes to upstream \"hub\""),
            (&format!("{AUTH}[[hosted]]\nname = \"local\"\nhosts = [\"docker.io\"]\nwriters = [\"ci\"]\n"), "hosted[0].hosts[0]: \"docker.io\" already routes to upstream"),
            (&format!("{AUTH}[[hosted]]\nname = \"Lo/cal\"\nwriters = [\"ci\"]\n"), "hosted[0].name:"),
            (
                &format!("{AUTH}[[hosted]]\nname = \"local\"\nwriters = [\"ci\"]\n[[fallback]]\nrepository = \"local/app\"\n[fallback.platforms]\n\"linux/s390x\" = \"hub/app:s390x-{{tag}}\"\n"),
                "fallback[0].repository: \"local/app\" is a hosted repository",
            ),
        ] {
            let e = load(rest).unwrap_err();
            assert!(e.iter().any(|e| e.starts_with(want)), "{rest}\n{e:?}");
        }
        // A fallback may take a platform from a hosted repository.
        load(&format!(
            "{AUTH}[[hosted]]\nname = \"local\"\nwriters = [\"ci\"]\n[[fallback]]\nrepository = \"docker.io/team/app\"\n[fallback.platforms]\n\"linux/s390x\" = \"local/team/app:s390x-{{tag}}\"\n"
        ))
        .unwrap();
    }
}
