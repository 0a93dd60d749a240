//! `[[fallback]]`: the per-architecture images that fill platforms an upstream index lacks.

use serde::Deserialize;

use super::values::Errors;
use crate::oci::reference::split_reference;
use crate::oci::{Platform, RepoName, Tag};

/// The placeholders a fallback template may use.
pub const TEMPLATE_PLACEHOLDERS: [&str; 3] = ["{repo}", "{name}", "{tag}"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFallback {
    repository: Option<String>,
    /// Platform → reference template, in the order written (toml's `preserve_order`).
    #[serde(default)]
    platforms: toml::Table,
}

/// Per-architecture images that fill platforms an upstream index lacks.
#[derive(Debug, Clone)]
pub struct FallbackConfig {
    /// As written: `docker.io/library/*`.
    pub repository: String,
    /// The registry host or upstream name it starts with.
    pub registry: String,
    /// The repository path after it (`library` for `library/*`, `thinklab/app`).
    pub path: String,
    /// Whether `path` ends in `/*` (then every repository below `path` matches).
    pub wildcard: bool,
    /// In config order: the platform and its reference template.
    pub platforms: Vec<(Platform, String)>,
}

/// Expands a fallback template for a requested repository path and tag.
pub fn expand_template(template: &str, repo: &str, tag: &str) -> String {
    let name = repo.rsplit('/').next().unwrap_or(repo);
    template
        .replace("{repo}", repo)
        .replace("{name}", name)
        .replace("{tag}", tag)
}

/// `registries`: what a reference may start with, an upstream's or hosted registry's name
/// or one of its hosts.
pub(super) fn validate(
    raw: Vec<RawFallback>,
    registries: &[&str],
    errs: &mut Errors,
) -> Vec<FallbackConfig> {
    let mut fallbacks = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let key = format!("fallback[{i}].repository");
        let Some(repository) = f.repository else {
            errs.push(key, "missing");
            continue;
        };
        let (registry, path, wildcard) = match repository.split_once('/') {
            Some((reg, path)) => match path.strip_suffix("/*") {
                Some(p) => (reg.to_string(), p.to_string(), true),
                None => (reg.to_string(), path.to_string(), false),
            },
            None => (repository.clone(), String::new(), false),
        };
        if !registries.contains(&registry.as_str()) || path.parse::<RepoName>().is_err() {
            errs.push(
                key,
                format!(
                    "{repository:?} must be a configured registry host, upstream or hosted name, then a repository (a trailing /* matches every repository below it)"
                ),
            );
            continue;
        }
        let mut platforms: Vec<(Platform, String)> = Vec::new();
        for (pk, v) in f.platforms {
            let key = format!("fallback[{i}].platforms.\"{pk}\"");
            match platform_entry(&pk, &v, registries) {
                Ok((platform, _)) if platforms.iter().any(|(p, _)| *p == platform) => {
                    errs.push(&key, format!("platform {platform} is listed twice"))
                }
                Ok(entry) => platforms.push(entry),
                Err(reason) => errs.push(&key, reason),
            }
        }
        fallbacks.push(FallbackConfig {
            repository,
            registry,
            path,
            wildcard,
            platforms,
        });
    }
    fallbacks
}

/// One `"os/arch" = "registry/repo:tag"` line of a rule: the platform and its template.
fn platform_entry(
    key: &str,
    value: &toml::Value,
    registries: &[&str],
) -> Result<(Platform, String), String> {
    let platform = key.parse::<Platform>().map_err(|e| e.to_string())?;
    let template = value
        .as_str()
        .ok_or("must be a reference template string")?
        .to_string();
    let mut rest = template.clone();
    for ph in TEMPLATE_PLACEHOLDERS {
        rest = rest.replace(ph, "");
    }
    if rest.contains('{') || rest.contains('}') {
        return Err(format!(
            "{template:?}: unknown placeholder (use {{repo}}, {{name}}, {{tag}})"
        ));
    }
    // A sample expansion shows whether every expansion will be a reference archway can route.
    let sample = expand_template(&template, "library/alpine", "latest");
    match split_reference(&sample) {
        Some((host, path, tag))
            if path.parse::<RepoName>().is_ok() && tag.parse::<Tag>().is_ok() =>
        {
            if !registries.contains(&host) {
                return Err(format!(
                    "{template:?} names {host:?}, which is no configured upstream or hosted registry"
                ));
            }
        }
        _ => {
            return Err(format!(
                "{template:?} is not of the form registry/repository:tag"
            ))
        }
    }
    Ok((platform, template))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(
            expand_template("docker.io/arm32v7/{name}:{tag}", "library/alpine", "3.20"),
            "docker.io/arm32v7/alpine:3.20"
        );
        assert_eq!(
            expand_template("quay.io/{repo}:{tag}-ppc64le", "org/app", "v1"),
            "quay.io/org/app:v1-ppc64le"
        );
    }
}
