//! An error together with its causes, as one line for people: `what failed: why: why`.
//!
//! Errors here keep their causes as `source()` instead of formatting them into their own
//! message, so that logs and API responses can show the whole chain without repeating it.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, separated by `": "`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        for cause in sources(self.0) {
            let text = cause.to_string();
            // Some errors (object_store's) print their source in their own message too.
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
        }
        Ok(())
    }
}

/// The sources of `e`, nearest first (not `e` itself).
pub fn sources<'a>(
    e: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(e.source(), |&c| c.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot fetch the manifest")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("write failed")]
    struct Outer2<E: std::error::Error + 'static>(#[source] E);

    #[test]
    fn chain_lists_every_cause_once() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            Chain(&e).to_string(),
            "cannot fetch the manifest: connection refused"
        );
        assert_eq!(sources(&e).count(), 1);
        #[derive(Debug, thiserror::Error)]
        #[error("wrapper: {0}")]
        struct Repeats(#[source] std::io::Error);
        let e = Outer2(Repeats(std::io::Error::other("disk full")));
        assert_eq!(Chain(&e).to_string(), "write failed: wrapper: disk full");
    }
}
