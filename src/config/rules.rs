//! Repository rules of an upstream (`allow`, `deny`): glob patterns over repository names as
//! the upstream names them. `*` matches within one path component, `**` across components
//! (`myorg/**` is every repository below `myorg`).

use std::fmt;

/// One `allow` or `deny` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPattern(String);

impl RepoPattern {
    /// A pattern, if it is one: the characters of repository names, `/` and `*`.
    pub fn parse(s: &str) -> Result<RepoPattern, String> {
        if s.is_empty() {
            return Err("empty pattern".into());
        }
        let ok = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*".contains(&b));
        if !ok {
            return Err(format!(
                "{s:?}: a pattern has lower-case repository characters, '/' and '*' only"
            ));
        }
        if s.contains("***") {
            return Err(format!("{s:?}: '***' means nothing; use '*' or '**'"));
        }
        Ok(RepoPattern(s.to_string()))
    }

    pub fn matches(&self, repo: &str) -> bool {
        glob(self.0.as_bytes(), repo.as_bytes())
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => {
            // `**/` also matches nothing at all: `a/**/b` covers `a/b`.
            let rest_slash = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=s.len()).any(|i| glob(rest, &s[i..]) || glob(rest_slash, &s[i..]))
        }
        [b'*', rest @ ..] => {
            let end = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
            (0..=end).any(|i| glob(rest, &s[i..]))
        }
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// An upstream's rules: what may be served from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoRules {
    /// When not empty, only repositories matching one of these.
    pub allow: Vec<RepoPattern>,
    /// Never repositories matching one of these (deny wins over allow).
    pub deny: Vec<RepoPattern>,
}

impl RepoRules {
    /// Why `repo` may not be served, naming the rule; `None` when it may.
    pub fn refusal(&self, repo: &str) -> Option<String> {
        if let Some(d) = self.deny.iter().find(|d| d.matches(repo)) {
            return Some(format!("denied by the rule deny {:?}", d.0));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|a| a.matches(repo)) {
            let list: Vec<&str> = self.allow.iter().map(|a| a.0.as_str()).collect();
            return Some(format!(
                "not allowed: it matches no allow rule ({})",
                list.join(", ")
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        RepoPattern::parse(p).unwrap().matches(s)
    }

    #[test]
    fn globs() {
        assert!(m("library/*", "library/alpine"));
        assert!(!m("library/*", "library/a/b"));
        assert!(m("myorg/**", "myorg/a/b/c"));
        assert!(m("myorg/**", "myorg/a"));
        assert!(!m("myorg/**", "other/a"));
        assert!(m("a/**/z", "a/z") && m("a/**/z", "a/b/c/z"));
        assert!(m("*/app", "team/app") && !m("*/app", "a/b/app"));
        assert!(m("exact/name", "exact/name") && !m("exact/name", "exact/names"));
        assert!(RepoPattern::parse("Bad").is_err());
        assert!(RepoPattern::parse("").is_err());
        assert!(RepoPattern::parse("a/***").is_err());
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let rules = RepoRules {
            allow: vec![
                RepoPattern::parse("library/*").unwrap(),
                RepoPattern::parse("myorg/**").unwrap(),
            ],
            deny: vec![RepoPattern::parse("myorg/secret/**").unwrap()],
        };
        assert_eq!(rules.refusal("library/alpine"), None);
        assert_eq!(rules.refusal("myorg/team/app"), None);
        assert!(rules
            .refusal("myorg/secret/x")
            .unwrap()
            .contains("deny \"myorg/secret/**\""));
        assert!(rules
            .refusal("randomuser/app")
            .unwrap()
            .contains("matches no allow rule"));
        assert_eq!(RepoRules::default().refusal("anything"), None);
    }

    #[test]
    fn bad_patterns_name_their_key() {
        let toml = "[[upstream]]\nname = \"hub\"\nurl = \"https://r.example\"\ndefault = true\nallow = [\"library/*\", \"Library/*\"]\ndeny = [\"\"]\nmin_remaining = 20\n";
        let e = crate::config::Config::from_toml(toml, "t.toml", None)
            .unwrap_err()
            .errors;
        let got: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            got,
            ["upstream[0].allow[1]", "upstream[0].deny[0]"],
            "{e:?}"
        );
        let ok = toml
            .replace("\"Library/*\"", "\"myorg/**\"")
            .replace("[\"\"]", "[]");
        let c = crate::config::Config::from_toml(&ok, "t.toml", None).unwrap();
        assert_eq!(c.upstreams[0].min_remaining, 20);
        assert!(c.upstreams[0].rules.refusal("other/x").is_some());
    }
}
