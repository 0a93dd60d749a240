//! `[multiarch]`: the platform served to clients that cannot read an index, and the
//! platforms this cluster runs, which archway prewarms.

use serde::Deserialize;

use super::values::Errors;
use crate::oci::Platform;

const DEFAULT_PREWARM_CONCURRENCY: usize = 4;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMultiarch {
    default_platform: Option<String>,
    #[serde(default)]
    cluster_platforms: Vec<String>,
    #[serde(default)]
    prewarm: bool,
    prewarm_concurrency: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct MultiarchConfig {
    /// The platform served to clients that cannot read an index and do not say theirs.
    pub default_platform: Platform,
    /// The platforms this cluster runs: what prewarming fetches, and nothing else.
    pub cluster_platforms: Vec<Platform>,
    /// When a client pulls one platform of an index, fetch the other cluster platforms in
    /// the background.
    pub prewarm: bool,
    /// Blobs prewarmed at the same time, at most.
    pub prewarm_concurrency: usize,
}

pub(super) fn validate(raw: RawMultiarch, errs: &mut Errors) -> MultiarchConfig {
    let amd64 = || Platform::new("linux", "amd64", "");
    let default_platform = match raw.default_platform.as_deref() {
        None => amd64(),
        Some(s) => s.parse().unwrap_or_else(|e| {
            errs.push("multiarch.default_platform", format!("{e}"));
            amd64()
        }),
    };
    let mut cluster_platforms: Vec<Platform> = Vec::new();
    for (i, p) in raw.cluster_platforms.iter().enumerate() {
        let key = format!("multiarch.cluster_platforms[{i}]");
        match p.parse::<Platform>() {
            Ok(p) if cluster_platforms.contains(&p) => {
                errs.push(key, format!("{p} is listed twice"))
            }
            Ok(p) => cluster_platforms.push(p),
            Err(e) => errs.push(key, e.to_string()),
        }
    }
    if raw.prewarm && cluster_platforms.is_empty() {
        errs.push(
            "multiarch.prewarm",
            "needs multiarch.cluster_platforms: the platforms to prewarm",
        );
    }
    let prewarm_concurrency = raw
        .prewarm_concurrency
        .unwrap_or(DEFAULT_PREWARM_CONCURRENCY);
    if prewarm_concurrency == 0 {
        errs.push("multiarch.prewarm_concurrency", "must be at least 1");
    }
    MultiarchConfig {
        default_platform,
        cluster_platforms,
        prewarm: raw.prewarm,
        prewarm_concurrency: prewarm_concurrency.max(1),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use crate::oci::Platform;

    const UP: &str = "[[upstream]]\nname = \"hub\"\nurl = \"https://r.example\"\ndefault = true\n";

    fn load(multiarch: &str) -> Result<Config, Vec<ConfigError>> {
        Config::from_toml(&format!("{UP}[multiarch]\n{multiarch}\n"), "t.toml", None)
            .map_err(|e| e.errors)
    }

    fn keys(multiarch: &str) -> Vec<(String, String)> {
        load(multiarch)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.key, e.reason))
            .collect()
    }

    #[test]
    fn prewarm_of_the_cluster_platforms() {
        let c = load("cluster_platforms = [\"linux/amd64\", \"linux/arm64\"]\nprewarm = true\n")
            .unwrap();
        let m = &c.multiarch;
        assert!(m.prewarm);
        assert_eq!(
            m.cluster_platforms,
            [
                Platform::new("linux", "amd64", ""),
                Platform::new("linux", "arm64", "")
            ]
        );
        assert_eq!(m.prewarm_concurrency, 4, "the default");
        let off = load("").unwrap();
        assert!(!off.multiarch.prewarm && off.multiarch.cluster_platforms.is_empty());
    }

    #[test]
    fn bad_prewarm_settings_name_their_key() {
        let e = keys("prewarm = true\n");
        assert_eq!(e[0].0, "multiarch.prewarm");
        assert!(e[0].1.contains("cluster_platforms"), "{e:?}");
        let e = keys(
            "cluster_platforms = [\"linux/amd64\", \"linux\", \"linux/amd64\"]\nprewarm_concurrency = 0\n",
        );
        let got: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            got,
            [
                "multiarch.cluster_platforms[1]",
                "multiarch.cluster_platforms[2]",
                "multiarch.prewarm_concurrency"
            ],
            "{e:?}"
        );
        assert!(e[1].1.contains("listed twice"), "{e:?}");
    }
}
