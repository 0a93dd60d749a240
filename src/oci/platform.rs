//! Platforms (`os/architecture/variant`), normalized and matched the way containerd does
//! (containerd/platforms `database.go` and `compare.go`), so archway picks the same manifest
//! from an index that the node's runtime would.

use std::fmt;
use std::str::FromStr;

/// A platform as the image spec's index `platform` object describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Platform {
    /// `linux`, `windows`, ...; normalizing lower-cases it and makes `macos` `darwin`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, ...; normalizing maps aliases such as `x86_64` to these.
    pub architecture: String,
    /// Empty when none (or when it is the architecture's default, such as arm64's v8).
    pub variant: String,
    /// The image spec's `os.version` (a Windows build); only compared on Windows.
    pub os_version: Option<String>,
    /// The image spec's `os.features`; a candidate's must all be among ours to match.
    pub os_features: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "platform {0:?} is not of the form os/architecture[/variant] (e.g. linux/arm64, linux/arm/v7)"
)]
pub struct PlatformError(pub String);

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".into(),
        _ => os,
    }
}

/// containerd's `normalizeArch`.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    match arch.as_str() {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => {
            let v = if variant == "v1" {
                String::new()
            } else {
                variant
            };
            ("amd64".into(), v)
        }
        "aarch64" | "arm64" => {
            let v = match variant.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                "9" | "9.0" | "v9.0" => "v9".into(),
                _ => variant,
            };
            ("arm64".into(), v)
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let v = match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), v)
        }
        _ => (arch, variant),
    }
}

impl Platform {
    /// A normalized platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: &str) -> Platform {
        let (architecture, variant) = normalize_arch(architecture, variant);
        Platform {
            os: normalize_os(os),
            architecture,
            variant,
            os_version: None,
            os_features: Vec::new(),
        }
    }

    /// The same platform, normalized (os.features sorted and de-duplicated too).
    pub fn normalized(&self) -> Platform {
        let mut p = Platform::new(&self.os, &self.architecture, &self.variant);
        p.os_version = self.os_version.clone().filter(|v| !v.is_empty());
        p.os_features = self.os_features.clone();
        p.os_features.sort();
        p.os_features.dedup();
        p
    }

    /// Strict match: os, architecture and variant equal after normalization, and the
    /// candidate's os.features a subset of ours. os.version only matters on Windows, where
    /// containerd compares build numbers; archway requires equality there.
    pub fn matches(&self, candidate: &Platform) -> bool {
        let (a, b) = (self.normalized(), candidate.normalized());
        a.os == b.os
            && a.architecture == b.architecture
            && a.variant == b.variant
            && (a.os != "windows" || b.os_version.is_none() || a.os_version == b.os_version)
            && b.os_features.iter().all(|f| a.os_features.contains(f))
    }

    /// The platforms this one can run, best first: containerd's `platforms.Only`.
    pub fn compatible(&self) -> Vec<Platform> {
        let p = self.normalized();
        let with = |arch: &str, variant: &str| Platform {
            architecture: arch.into(),
            variant: variant.into(),
            ..p.clone()
        };
        let mut out = vec![p.clone()];
        let level = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
        match p.architecture.as_str() {
            "amd64" => {
                if let Some(n) = level(&p.variant) {
                    for k in (1..n).rev() {
                        let v = if k == 1 {
                            String::new()
                        } else {
                            format!("v{k}")
                        };
                        out.push(with("amd64", &v));
                    }
                }
                // Every 64-bit x86 CPU runs 32-bit code.
                out.push(with("386", ""));
            }
            "arm" => {
                if let Some(n) = level(&p.variant) {
                    for k in (5..n).rev() {
                        out.push(with("arm", &format!("v{k}")));
                    }
                }
            }
            "arm64" => {
                // v8.x → v8.(x-1) … v8; v9.x → v9.(x-1) … v9, then v8.(x+5) … v8.
                let (major, minor) = match p.variant.strip_prefix('v') {
                    None => (8, 0),
                    Some(v) => {
                        let mut it = v.split('.');
                        let major = it.next().and_then(|m| m.parse().ok()).unwrap_or(8);
                        let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
                        (major, minor)
                    }
                };
                let name = |maj: u32, min: u32| match (maj, min) {
                    (8, 0) => String::new(),
                    (m, 0) => format!("v{m}"),
                    (m, n) => format!("v{m}.{n}"),
                };
                let mut push = |v: String| {
                    let cand = with("arm64", &v);
                    if !out.contains(&cand) {
                        out.push(cand);
                    }
                };
                for k in (0..minor).rev() {
                    push(name(major, k));
                }
                if major == 9 {
                    for k in (0..=(minor + 5)).rev() {
                        push(name(8, k));
                    }
                }
                // 32-bit compatibility, as a last resort.
                for v in ["v8", "v7", "v6", "v5"] {
                    out.push(with("arm", v));
                }
            }
            _ => {}
        }
        out
    }

    /// Of `candidates`, the index of the best one this platform runs (containerd's
    /// `Only(p)` ordering), or `None`.
    pub fn best_match<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a Platform>,
    ) -> Option<usize> {
        let candidates: Vec<&Platform> = candidates.into_iter().collect();
        for want in self.compatible() {
            if let Some(i) = candidates.iter().position(|c| want.matches(c)) {
                return Some(i);
            }
        }
        None
    }

    /// Reads the `os/arch[/variant]` tokens of a Docker-style `User-Agent`
    /// (`docker/20.10 go/go1.19 … os/linux arch/arm64 …`).
    pub fn from_user_agent(ua: &str) -> Option<Platform> {
        let mut os = None;
        let mut arch = None;
        let mut variant = "";
        for token in ua.split_whitespace() {
            if let Some(v) = token.strip_prefix("os/") {
                os = Some(v);
            } else if let Some(v) = token.strip_prefix("arch/") {
                arch = Some(v);
            } else if let Some(v) = token.strip_prefix("variant/") {
                variant = v;
            }
        }
        Some(Platform::new(os?, arch?, variant))
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform::new(os, arch, "")),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => {
                Ok(Platform::new(os, arch, variant))
            }
            _ => Err(PlatformError(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn normalization_table() {
        for (input, want) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/arm64/v8.0", "linux/arm64"),
            ("linux/arm64/9", "linux/arm64/v9"),
            ("linux/arm64/v8.2", "linux/arm64/v8.2"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/arm/5", "linux/arm/v5"),
            ("linux/arm/8", "linux/arm/v8"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/i386", "linux/386"),
            ("linux/s390x", "linux/s390x"),
            ("linux/ppc64le", "linux/ppc64le"),
            ("linux/riscv64", "linux/riscv64"),
            ("macos/arm64", "darwin/arm64"),
            ("windows/amd64", "windows/amd64"),
        ] {
            assert_eq!(p(input).to_string(), want, "{input}");
        }
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v3/x",
            "linux/am d64",
        ] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn strict_matching() {
        assert!(p("linux/arm64").matches(&p("linux/aarch64/v8")));
        assert!(p("linux/arm/v7").matches(&p("linux/armhf")));
        assert!(!p("linux/arm/v7").matches(&p("linux/arm/v6")));
        assert!(!p("linux/amd64").matches(&p("linux/386")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
        assert!(!p("linux/arm64").matches(&p("linux/arm64/v9")));
        let mut win = p("windows/amd64");
        win.os_version = Some("10.0.17763.1".into());
        let mut other = win.clone();
        other.os_version = Some("10.0.20348.1".into());
        assert!(!win.matches(&other));
        assert!(win.matches(&p("windows/amd64")));
        let mut feat = p("windows/amd64");
        feat.os_features = vec!["win32k".into()];
        assert!(
            !p("windows/amd64").matches(&feat),
            "candidate needs a feature we lack"
        );
        assert!(feat.matches(&p("windows/amd64")));
    }

    fn names(ps: Vec<Platform>) -> Vec<String> {
        ps.into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn compatibility_order() {
        assert_eq!(
            names(p("linux/amd64").compatible()),
            ["linux/amd64", "linux/386"]
        );
        assert_eq!(
            names(p("linux/amd64/v3").compatible()),
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        assert_eq!(
            names(p("linux/arm/v7").compatible()),
            ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
        );
        assert_eq!(names(p("linux/arm/v5").compatible()), ["linux/arm/v5"]);
        assert_eq!(
            names(p("linux/arm64").compatible()),
            [
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        assert_eq!(
            names(p("linux/arm64/v8.2").compatible())[..3],
            ["linux/arm64/v8.2", "linux/arm64/v8.1", "linux/arm64"]
        );
        let v9 = names(p("linux/arm64/v9").compatible());
        assert_eq!(
            v9[..3],
            ["linux/arm64/v9", "linux/arm64/v8.5", "linux/arm64/v8.4"]
        );
        assert!(v9.contains(&"linux/arm64".to_string()));
        assert_eq!(names(p("linux/s390x").compatible()), ["linux/s390x"]);
        assert_eq!(names(p("linux/ppc64le").compatible()), ["linux/ppc64le"]);
    }

    #[test]
    fn best_match_prefers_exact_then_fallbacks() {
        let index = [
            p("linux/386"),
            p("linux/arm/v6"),
            p("linux/amd64"),
            p("linux/arm/v7"),
        ];
        assert_eq!(p("linux/amd64").best_match(&index), Some(2));
        assert_eq!(p("linux/arm/v7").best_match(&index), Some(3));
        assert_eq!(p("linux/arm/v6").best_match(&index), Some(1));
        assert_eq!(
            p("linux/arm64").best_match(&index),
            Some(3),
            "32-bit arm as last resort"
        );
        assert_eq!(p("linux/s390x").best_match(&index), None);
        assert_eq!(p("linux/amd64").best_match(&[p("linux/386")]), Some(0));
    }

    #[test]
    fn user_agents() {
        let docker = "docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1 os/linux arch/arm64 UpstreamClient(Docker-Client/20.10.24+dfsg1 \\(linux\\))";
        assert_eq!(Platform::from_user_agent(docker), Some(p("linux/arm64")));
        assert_eq!(
            Platform::from_user_agent("docker/1 os/linux arch/arm variant/v6"),
            Some(p("linux/arm/v6"))
        );
        assert_eq!(Platform::from_user_agent("skopeo/1.9.3"), None);
        assert_eq!(Platform::from_user_agent("containerd/1.6.20~ds1"), None);
    }
}
