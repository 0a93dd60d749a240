//! Where an answer came from, reported with it: the access log's `cache=` field and the
//! `source` label of the served-bytes metric both read it.

/// Where an answer came from. Ordered from the least to the most telling: when an answer is
/// made of several parts, the most telling part names it (an index built from a stale tag
/// was served stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Provenance {
    /// From the cache, memory or store, without asking the upstream.
    Cache,
    /// Another request was already fetching it; this one waited for that fetch, or streams
    /// from it.
    Joined,
    /// Fetched from the upstream for this request.
    Upstream,
    /// Built here: an index that fills missing platforms from fallback images.
    Synthesized,
    /// The upstream failed, and the last known answer was served instead.
    Stale,
    /// From a hosted repository: what a client pushed.
    Hosted,
}

impl Provenance {
    pub fn as_str(self) -> &'static str {
        match self {
            Provenance::Cache => "cache",
            Provenance::Joined => "joined",
            Provenance::Upstream => "upstream",
            Provenance::Synthesized => "synthesized",
            Provenance::Stale => "stale",
            Provenance::Hosted => "hosted",
        }
    }

    /// The provenance of an answer made of `self` and `other`.
    pub fn and(self, other: Provenance) -> Provenance {
        self.max(other)
    }
}

/// A value and where it came from.
#[derive(Debug, Clone)]
pub struct Served<T> {
    /// The answer itself: a manifest, a resolved tag, ...
    pub value: T,
    /// Where it came from, for the access log's `cache=` field.
    pub provenance: Provenance,
}

impl<T> Served<T> {
    pub fn new(value: T, provenance: Provenance) -> Served<T> {
        Served { value, provenance }
    }

    /// As seen by a request that joined the one that produced it: `Joined`, whatever the
    /// producer's was (its own log line tells that).
    pub fn joined(self) -> Served<T> {
        Served {
            provenance: Provenance::Joined,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_telling_part_names_the_answer() {
        use Provenance::*;
        assert_eq!(Cache.and(Upstream), Upstream);
        assert_eq!(Stale.and(Synthesized), Stale);
        assert_eq!(Synthesized.and(Cache), Synthesized);
        assert_eq!(Served::new((), Upstream).joined().provenance, Joined);
        assert_eq!(Served::new((), Stale).joined().provenance, Joined);
    }
}
