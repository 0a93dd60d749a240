//! Single byte-range requests (RFC 9110 §14), resolved against a blob's size.
//!
//! Only one range is honoured: a multi-range or malformed header is ignored and the whole
//! blob is sent, which the RFC allows and which every registry client handles.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b` (inclusive `b`)
    FromTo(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last `n` bytes
    Suffix(u64),
}

/// Parses a `Range` header value; `None` means "ignore it".
pub fn parse(value: &str) -> Option<RangeSpec> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (a.is_empty(), b.is_empty()) {
        (true, false) => Some(RangeSpec::Suffix(num(b)?)),
        (false, true) => Some(RangeSpec::From(num(a)?)),
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some(RangeSpec::FromTo(a, b))
        }
        (true, true) => None,
    }
}

impl RangeSpec {
    /// The byte range to send, or `None` when it is unsatisfiable for a blob of `size` bytes.
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        match self {
            RangeSpec::FromTo(a, b) if a < size => Some(a..(b.saturating_add(1)).min(size)),
            RangeSpec::From(a) if a < size => Some(a..size),
            RangeSpec::Suffix(n) if n > 0 && size > 0 => Some(size.saturating_sub(n)..size),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(parse("bytes=0-9"), Some(RangeSpec::FromTo(0, 9)));
        assert_eq!(parse("bytes=5-"), Some(RangeSpec::From(5)));
        assert_eq!(parse("bytes=-5"), Some(RangeSpec::Suffix(5)));
        assert_eq!(parse(" bytes= 1 - 2 "), Some(RangeSpec::FromTo(1, 2)));
        for ignored in [
            "",
            "bytes=",
            "bytes=-",
            "bytes=9-1",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=a-b",
            "bytes=+1-2",
        ] {
            assert_eq!(parse(ignored), None, "{ignored:?}");
        }
    }

    #[test]
    fn resolving() {
        assert_eq!(RangeSpec::FromTo(0, 9).resolve(100), Some(0..10));
        assert_eq!(RangeSpec::FromTo(90, 200).resolve(100), Some(90..100));
        assert_eq!(RangeSpec::From(99).resolve(100), Some(99..100));
        assert_eq!(RangeSpec::Suffix(10).resolve(100), Some(90..100));
        assert_eq!(RangeSpec::Suffix(1000).resolve(100), Some(0..100));
        assert_eq!(RangeSpec::From(100).resolve(100), None);
        assert_eq!(RangeSpec::FromTo(100, 101).resolve(100), None);
        assert_eq!(RangeSpec::Suffix(0).resolve(100), None);
        assert_eq!(RangeSpec::Suffix(5).resolve(0), None);
    }
}
