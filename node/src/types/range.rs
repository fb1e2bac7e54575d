//! Byte ranges: the `Range` request header of a blob `GET` and the
//! `Content-Range` header of a chunked upload `PATCH`.
//!
//! Owns two grammars. `Range` (RFC 9110 §14.2), restricted to one range of the
//! `bytes` unit:
//!
//! ```text
//! range       := OWS "bytes" OWS "=" OWS range-spec OWS     ; unit case-insensitive
//! range-spec  := first "-" [ last ] | "-" suffix-length     ; OWS allowed around "-"
//! ```
//!
//! where empty list elements (`bytes=0-1,`) are ignored as RFC 9110 §5.6.1
//! requires, more than one range is [`TypesError::MultipleRanges`] (the caller
//! may ignore the header and serve the whole blob), and `first > last` is
//! invalid. `Content-Range` of an upload chunk, in the distribution-spec form
//! `<start>-<end>` and also the forms some clients send instead:
//!
//! ```text
//! content-range := OWS [ "bytes" ( 1*WS | OWS "=" OWS ) ] start OWS "-" OWS end
//!                  [ OWS "/" OWS ( complete-length | "*" ) ] OWS
//! ```
//!
//! with `start <= end` and, when given, `complete-length > end`.
//!
//! Invariants: numbers are `1*DIGIT` fitting in `u64` (no sign, no overflow);
//! every parsed range has `start <= end_inclusive`; a [`ByteRange`] returned by
//! [`ByteRangeSpec::resolve`] lies inside the blob. Nothing here panics.

use super::TypesError;

/// A parsed single-range `Range` header, before the blob size is known.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ByteRangeSpec {
    /// `bytes=a-b`: bytes `a` to `b` inclusive (`a <= b`).
    FromTo(u64, u64),
    /// `bytes=a-`: from byte `a` to the end.
    From(u64),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRangeSpec {
    /// Parses a `Range` header value; same as [`ByteRange::parse`].
    pub fn parse(header: &str) -> Result<ByteRangeSpec, TypesError> {
        ByteRange::parse(header)
    }

    /// The concrete range of a blob of `size` bytes, or `None` when the range
    /// is unsatisfiable (start at or past the end, a zero-length suffix, or an
    /// empty blob). A last position past the end is clamped to the last byte;
    /// a suffix longer than the blob selects the whole blob.
    pub fn resolve(&self, size: u64) -> Option<ByteRange> {
        let last = size.checked_sub(1)?;
        let (start, end_inclusive) = match *self {
            ByteRangeSpec::FromTo(a, b) if a < size => (a, b.min(last)),
            ByteRangeSpec::From(a) if a < size => (a, last),
            ByteRangeSpec::Suffix(n) if n > 0 => (size - n.min(size), last),
            _ => return None,
        };
        Some(ByteRange {
            start,
            end_inclusive,
        })
    }
}

/// Formats as a `Range` header value, e.g. `bytes=0-99`.
impl std::fmt::Display for ByteRangeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ByteRangeSpec::FromTo(a, b) => write!(f, "bytes={a}-{b}"),
            ByteRangeSpec::From(a) => write!(f, "bytes={a}-"),
            ByteRangeSpec::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

impl std::str::FromStr for ByteRangeSpec {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<ByteRangeSpec, TypesError> {
        ByteRange::parse(s)
    }
}

/// A satisfiable range of a blob of known size: bytes `start..=end_inclusive`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ByteRange {
    /// First byte served.
    pub start: u64,
    /// Last byte served.
    pub end_inclusive: u64,
}

impl ByteRange {
    /// Parses a `Range` request header value (see the module docs for the grammar).
    /// More than one range is [`TypesError::MultipleRanges`]; anything else wrong
    /// is [`TypesError::InvalidRange`].
    pub fn parse(header: &str) -> Result<ByteRangeSpec, TypesError> {
        let invalid = || TypesError::InvalidRange(header.to_owned());
        let (unit, set) = header.split_once('=').ok_or_else(invalid)?;
        if !trim_ows(unit).eq_ignore_ascii_case("bytes") {
            return Err(invalid());
        }
        let mut first = None;
        let mut count = 0usize;
        for element in set.split(',').map(trim_ows).filter(|e| !e.is_empty()) {
            let spec = parse_range_spec(element).ok_or_else(invalid)?;
            first.get_or_insert(spec);
            count += 1;
        }
        match (first, count) {
            (Some(spec), 1) => Ok(spec),
            (Some(_), _) => Err(TypesError::MultipleRanges(header.to_owned())),
            (None, _) => Err(invalid()),
        }
    }

    /// Number of bytes in the range (0 only if a caller built it with `start > end_inclusive`).
    pub fn len(&self) -> u64 {
        inclusive_len(self.start, self.end_inclusive)
    }

    /// Whether the range selects no bytes (never, for a resolved range).
    pub fn is_empty(&self) -> bool {
        self.start > self.end_inclusive
    }

    /// The `Content-Range` response header value, `bytes a-b/size`.
    pub fn content_range_header(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end_inclusive, size)
    }

    /// The `Content-Range` value of a 416 response for a blob of `size` bytes, `bytes */size`.
    pub fn unsatisfied_content_range_header(size: u64) -> String {
        format!("bytes */{size}")
    }
}

/// `first OWS "-" OWS [last]` or `"-" OWS suffix`, already trimmed.
fn parse_range_spec(element: &str) -> Option<ByteRangeSpec> {
    let (first, last) = element.split_once('-')?;
    let (first, last) = (trim_ows(first), trim_ows(last));
    match (first.is_empty(), last.is_empty()) {
        (true, true) => None,
        (true, false) => Some(ByteRangeSpec::Suffix(parse_u64(last)?)),
        (false, true) => Some(ByteRangeSpec::From(parse_u64(first)?)),
        (false, false) => {
            let (a, b) = (parse_u64(first)?, parse_u64(last)?);
            (a <= b).then_some(ByteRangeSpec::FromTo(a, b))
        }
    }
}

/// The byte range of one upload chunk, from its `Content-Range` header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ContentRange {
    /// Offset of the chunk's first byte in the blob.
    pub start: u64,
    /// Offset of the chunk's last byte in the blob.
    pub end_inclusive: u64,
}

impl ContentRange {
    /// Parses a `Content-Range` header value: `a-b`, `bytes a-b/total`,
    /// `bytes a-b/*` or `bytes=a-b` (see the module docs). `0-0` is accepted
    /// as written; whether it means an empty chunk is the caller's call.
    pub fn parse(header: &str) -> Result<ContentRange, TypesError> {
        parse_content_range(header).ok_or_else(|| TypesError::InvalidRange(header.to_owned()))
    }

    /// Number of bytes the header claims (`end - start + 1`).
    pub fn len(&self) -> u64 {
        inclusive_len(self.start, self.end_inclusive)
    }

    /// Whether the range claims no bytes (never, for a parsed one).
    pub fn is_empty(&self) -> bool {
        self.start > self.end_inclusive
    }
}

/// Formats in the distribution-spec form, `start-end`.
impl std::fmt::Display for ContentRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end_inclusive)
    }
}

impl std::str::FromStr for ContentRange {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<ContentRange, TypesError> {
        ContentRange::parse(s)
    }
}

fn parse_content_range(header: &str) -> Option<ContentRange> {
    let mut rest = trim_ows(header);
    if let Some(unit) = rest.get(..5)
        && unit.eq_ignore_ascii_case("bytes")
    {
        let after_unit = &rest[5..];
        let after_ws = trim_ows(after_unit);
        rest = match after_ws.strip_prefix('=') {
            Some(after_eq) => trim_ows(after_eq),
            None if after_ws.len() < after_unit.len() => after_ws,
            None => return None,
        };
    }
    let (range, total) = match rest.split_once('/') {
        Some((range, total)) => (range, Some(trim_ows(total))),
        None => (rest, None),
    };
    let (start, end) = range.split_once('-')?;
    let start = parse_u64(trim_ows(start))?;
    let end = parse_u64(trim_ows(end))?;
    if start > end {
        return None;
    }
    match total {
        None | Some("*") => {}
        Some(total) => {
            if parse_u64(total)? <= end {
                return None;
            }
        }
    }
    Some(ContentRange {
        start,
        end_inclusive: end,
    })
}

/// `1*DIGIT` that fits in a `u64`; no sign, no whitespace.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Strips optional whitespace (SP / HTAB) from both ends.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn inclusive_len(start: u64, end_inclusive: u64) -> u64 {
    match end_inclusive.checked_sub(start) {
        Some(d) => d.saturating_add(1),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::ByteRangeSpec::{From, FromTo, Suffix};
    use super::*;
    use proptest::prelude::*;

    fn spec(s: &str) -> Result<ByteRangeSpec, TypesError> {
        ByteRange::parse(s)
    }

    #[test]
    fn range_header_forms() {
        assert_eq!(spec("bytes=0-99"), Ok(FromTo(0, 99)));
        assert_eq!(spec("bytes=5-5"), Ok(FromTo(5, 5)));
        assert_eq!(spec("bytes=100-"), Ok(From(100)));
        assert_eq!(spec("bytes=-500"), Ok(Suffix(500)));
        assert_eq!(spec("bytes=-0"), Ok(Suffix(0)));
        assert_eq!(spec("Bytes=0-1"), Ok(FromTo(0, 1)));
        assert_eq!(spec("BYTES=0-1"), Ok(FromTo(0, 1)));
        assert_eq!(spec(" bytes = 0 - 1 "), Ok(FromTo(0, 1)));
        assert_eq!(spec("bytes=\t7-\t"), Ok(From(7)));
        assert_eq!(spec("bytes=0-1,"), Ok(FromTo(0, 1)));
        assert_eq!(spec("bytes=, ,0-1"), Ok(FromTo(0, 1)));
        assert_eq!(spec("bytes=007-010"), Ok(FromTo(7, 10)));
        assert_eq!(
            spec("bytes=0-18446744073709551615"),
            Ok(FromTo(0, u64::MAX))
        );
        assert_eq!("bytes=1-2".parse::<ByteRangeSpec>(), Ok(FromTo(1, 2)));
        assert_eq!(ByteRangeSpec::parse("bytes=1-"), Ok(From(1)));
    }

    #[test]
    fn range_header_errors() {
        for s in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=5-4",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=-+2",
            "bytes=--2",
            "bytes=1--2",
            "bytes=1-2-3",
            "bytes=1 2-3",
            "bytes=0-18446744073709551616",
            "bytes=99999999999999999999999-",
            "items=0-1",
            "byte=0-1",
            "bytes 0-1",
            "0-1",
            "bytes=0-1,a",
            "bytes==0-1",
            "bytes=０-1",
        ] {
            assert_eq!(
                spec(s),
                Err(TypesError::InvalidRange(s.to_owned())),
                "{s:?}"
            );
        }
        for s in ["bytes=0-1,2-3", "bytes=0-1, -5", "bytes=0-,0-"] {
            assert_eq!(
                spec(s),
                Err(TypesError::MultipleRanges(s.to_owned())),
                "{s:?}"
            );
        }
    }

    #[test]
    fn resolve() {
        assert_eq!(
            FromTo(0, 99).resolve(1000),
            Some(ByteRange {
                start: 0,
                end_inclusive: 99
            })
        );
        assert_eq!(
            FromTo(10, 5000)
                .resolve(100)
                .map(|r| (r.start, r.end_inclusive)),
            Some((10, 99))
        );
        assert_eq!(FromTo(99, 99).resolve(100).map(|r| r.len()), Some(1));
        assert_eq!(FromTo(100, 200).resolve(100), None);
        assert_eq!(
            From(0).resolve(100).map(|r| (r.start, r.end_inclusive)),
            Some((0, 99))
        );
        assert_eq!(From(99).resolve(100).map(|r| r.len()), Some(1));
        assert_eq!(From(100).resolve(100), None);
        assert_eq!(
            Suffix(10).resolve(100).map(|r| (r.start, r.end_inclusive)),
            Some((90, 99))
        );
        assert_eq!(
            Suffix(100).resolve(100).map(|r| (r.start, r.end_inclusive)),
            Some((0, 99))
        );
        assert_eq!(
            Suffix(500).resolve(100).map(|r| (r.start, r.end_inclusive)),
            Some((0, 99))
        );
        assert_eq!(Suffix(0).resolve(100), None);
        for s in [FromTo(0, 0), From(0), Suffix(1)] {
            assert_eq!(s.resolve(0), None);
        }
        let whole = FromTo(0, u64::MAX).resolve(u64::MAX).unwrap();
        assert_eq!(whole.len(), u64::MAX);
    }

    #[test]
    fn headers_and_lengths() {
        let r = ByteRange {
            start: 0,
            end_inclusive: 99,
        };
        assert_eq!(r.len(), 100);
        assert!(!r.is_empty());
        assert_eq!(r.content_range_header(1000), "bytes 0-99/1000");
        assert_eq!(
            ByteRange::unsatisfied_content_range_header(1000),
            "bytes */1000"
        );
        let weird = ByteRange {
            start: 5,
            end_inclusive: 4,
        };
        assert_eq!(weird.len(), 0);
        assert!(weird.is_empty());
        let max = ByteRange {
            start: 0,
            end_inclusive: u64::MAX,
        };
        assert_eq!(max.len(), u64::MAX);
        assert_eq!(FromTo(1, 2).to_string(), "bytes=1-2");
        assert_eq!(From(1).to_string(), "bytes=1-");
        assert_eq!(Suffix(1).to_string(), "bytes=-1");
    }

    fn cr(start: u64, end_inclusive: u64) -> Result<ContentRange, TypesError> {
        Ok(ContentRange {
            start,
            end_inclusive,
        })
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(ContentRange::parse("0-99"), cr(0, 99));
        assert_eq!(ContentRange::parse("0-0"), cr(0, 0));
        assert_eq!(ContentRange::parse("100-199"), cr(100, 199));
        assert_eq!(ContentRange::parse(" 1 - 2 "), cr(1, 2));
        assert_eq!(ContentRange::parse("bytes 0-99/1000"), cr(0, 99));
        assert_eq!(ContentRange::parse("bytes 0-99/*"), cr(0, 99));
        assert_eq!(ContentRange::parse("bytes 0-99"), cr(0, 99));
        assert_eq!(ContentRange::parse("bytes=0-99"), cr(0, 99));
        assert_eq!(ContentRange::parse("bytes = 0-99"), cr(0, 99));
        assert_eq!(ContentRange::parse("BYTES\t5-9 / 10"), cr(5, 9));
        assert_eq!(ContentRange::parse("0-99/100"), cr(0, 99));
        assert_eq!("3-4".parse::<ContentRange>(), cr(3, 4));
        let c = ContentRange::parse("10-19").unwrap();
        assert_eq!(c.len(), 10);
        assert!(!c.is_empty());
        assert_eq!(c.to_string(), "10-19");
    }

    #[test]
    fn content_range_errors() {
        for s in [
            "",
            "-",
            "0-",
            "-5",
            "5-4",
            "a-b",
            "+0-1",
            "0-+1",
            "-0-1",
            "0-1-2",
            "0 1-2",
            "bytes0-1",
            "bytes",
            "bytes=",
            "bytes */100",
            "bytes 0-99/99",
            "bytes 0-99/50",
            "bytes 0-99/",
            "bytes 0-99/x",
            "bytes 0-99/*/*",
            "items 0-1",
            "0-18446744073709551616",
            "bytes=0-1,2-3",
            "é",
            "bytesé",
        ] {
            assert_eq!(
                ContentRange::parse(s),
                Err(TypesError::InvalidRange(s.to_owned())),
                "{s:?}"
            );
        }
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just(""), Just(" "), Just("\t"), Just("  ")]
    }

    fn num() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..20, any::<u64>()]
    }

    /// One `Range` list element and whether it is valid (`None` = empty element).
    fn range_element() -> impl Strategy<Value = (String, Option<Option<ByteRangeSpec>>)> {
        prop_oneof![
            (num(), num(), ws(), ws()).prop_map(|(a, b, w1, w2)| (
                format!("{a}{w1}-{w2}{b}"),
                Some((a <= b).then_some(FromTo(a, b)))
            )),
            (num(), ws()).prop_map(|(a, w)| (format!("{a}{w}-"), Some(Some(From(a))))),
            (num(), ws()).prop_map(|(n, w)| (format!("-{w}{n}"), Some(Some(Suffix(n))))),
            Just((String::new(), None)),
            prop_oneof![
                Just("-"),
                Just("a-b"),
                Just("1-2-3"),
                Just("+1-2"),
                Just("1--2"),
                Just("1 2-3"),
                Just("18446744073709551616-"),
                Just("=1-2"),
            ]
            .prop_map(|g| (g.to_owned(), Some(None))),
        ]
    }

    fn range_header() -> impl Strategy<Value = (String, Result<ByteRangeSpec, bool>)> {
        let unit = prop_oneof![
            Just(("bytes", true)),
            Just(("Bytes", true)),
            Just(("BYTES", true)),
            Just(("byte", false)),
            Just(("items", false)),
            Just(("", false)),
        ];
        (
            unit,
            ws(),
            ws(),
            proptest::collection::vec((ws(), range_element(), ws()), 1..4),
        )
            .prop_map(|((unit, unit_ok), w1, w2, elements)| {
                let body: Vec<String> = elements
                    .iter()
                    .map(|(a, (e, _), b)| format!("{a}{e}{b}"))
                    .collect();
                let header = format!("{w1}{unit}{w2}={}", body.join(","));
                let parsed: Vec<Option<ByteRangeSpec>> =
                    elements.iter().filter_map(|(_, (_, p), _)| *p).collect();
                // Err(true) = MultipleRanges, Err(false) = InvalidRange.
                let expected = if !unit_ok || parsed.iter().any(Option::is_none) {
                    Err(false)
                } else {
                    match parsed.as_slice() {
                        [Some(one)] => Ok(*one),
                        [] => Err(false),
                        _ => Err(true),
                    }
                };
                (header, expected)
            })
    }

    fn content_range_header() -> impl Strategy<Value = (String, Option<ContentRange>)> {
        let prefix = prop_oneof![
            Just(("", true)),
            Just(("bytes ", true)),
            Just(("bytes\t", true)),
            Just(("bytes=", true)),
            Just(("Bytes = ", true)),
            Just(("bytes", false)),
            Just(("byte ", false)),
            Just(("items=", false)),
            Just(("=", false)),
        ];
        let total = prop_oneof![
            Just((String::new(), None)),
            Just(("/*".to_owned(), None)),
            (num(), ws()).prop_map(|(t, w)| (format!("{w}/{w}{t}"), Some(Some(t)))),
            prop_oneof![Just("/"), Just("/x"), Just("/-1"), Just("/*/*"), Just("-1")]
                .prop_map(|g| (g.to_owned(), Some(None))),
        ];
        (prefix, num(), num(), ws(), ws(), total).prop_map(
            |((prefix, prefix_ok), a, b, w1, w2, (total, total_val))| {
                let header = format!("{w1}{prefix}{a}{w2}-{w2}{b}{total}{w1}");
                let total_ok = match total_val {
                    None => true,
                    Some(Some(t)) => t > b,
                    Some(None) => false,
                };
                let ok = prefix_ok && a <= b && total_ok;
                (
                    header,
                    ok.then_some(ContentRange {
                        start: a,
                        end_inclusive: b,
                    }),
                )
            },
        )
    }

    proptest! {
        #[test]
        fn range_round_trip(s in prop_oneof![
            (num(), num()).prop_map(|(a, b)| FromTo(a.min(b), a.max(b))),
            num().prop_map(From),
            num().prop_map(Suffix),
        ]) {
            prop_assert_eq!(ByteRange::parse(&s.to_string()), Ok(s));
        }

        #[test]
        fn content_range_round_trip(a in num(), b in num()) {
            let c = ContentRange { start: a.min(b), end_inclusive: a.max(b) };
            prop_assert_eq!(ContentRange::parse(&c.to_string()), Ok(c));
            let rfc = format!("bytes {}-{}/*", c.start, c.end_inclusive);
            prop_assert_eq!(ContentRange::parse(&rfc), Ok(c));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = ByteRange::parse(&s);
            let _ = ContentRange::parse(&s);
        }

        #[test]
        fn never_panics_near_grammar(s in "[bytes=0-9, */\t+-]{0,30}") {
            if let Ok(spec) = ByteRange::parse(&s) {
                for size in [0, 1, 5, u64::MAX] {
                    if let Some(r) = spec.resolve(size) {
                        prop_assert!(r.start <= r.end_inclusive && r.end_inclusive < size);
                    }
                }
            }
            if let Ok(c) = ContentRange::parse(&s) {
                prop_assert!(c.start <= c.end_inclusive);
            }
        }

        #[test]
        fn range_accepts_exactly_the_grammar((header, expected) in range_header()) {
            let got = ByteRange::parse(&header);
            match expected {
                Ok(spec) => prop_assert_eq!(got, Ok(spec)),
                Err(true) => prop_assert_eq!(got, Err(TypesError::MultipleRanges(header.clone()))),
                Err(false) => prop_assert_eq!(got, Err(TypesError::InvalidRange(header.clone()))),
            }
        }

        #[test]
        fn content_range_accepts_exactly_the_grammar((header, expected) in content_range_header()) {
            let got = ContentRange::parse(&header);
            prop_assert_eq!(got, expected.ok_or(TypesError::InvalidRange(header.clone())));
        }

        #[test]
        fn resolve_is_within_blob(s in prop_oneof![
            (num(), num()).prop_map(|(a, b)| FromTo(a.min(b), a.max(b))),
            num().prop_map(From),
            num().prop_map(Suffix),
        ], size in num()) {
            match s.resolve(size) {
                Some(r) => {
                    prop_assert!(r.start <= r.end_inclusive);
                    prop_assert!(r.end_inclusive < size);
                    match s {
                        FromTo(a, b) => prop_assert!(r.start == a && r.end_inclusive == b.min(size - 1)),
                        From(a) => prop_assert!(r.start == a && r.end_inclusive == size - 1),
                        Suffix(n) => prop_assert!(r.len() == n.min(size) && r.end_inclusive == size - 1),
                    }
                }
                None => {
                    let unsatisfiable = match s {
                        FromTo(a, _) | From(a) => a >= size,
                        Suffix(n) => n == 0 || size == 0,
                    };
                    prop_assert!(unsatisfiable);
                }
            }
        }
    }
}
