//! Store keys: a path of segments, each free text.
//!
//! Segments are escaped when a key is built, so a CIDR ("10.0.0.0/24") or an IPv6 address is a
//! single segment and a key can never climb out of its prefix ("..").

use std::fmt;

/// A key in the state store, e.g. `ipam/pools/10.1.0.0%2F24/leases/10.1.0.5`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// A key made of these segments, each escaped.
    pub fn new<I, S>(segments: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut k = Key(String::new());
        for s in segments {
            k = k.join(s.as_ref());
        }
        k
    }

    /// This key with one more segment.
    pub fn join(&self, segment: &str) -> Self {
        let mut out = self.0.clone();
        if !out.is_empty() {
            out.push('/');
        }
        escape_into(segment, &mut out);
        Key(out)
    }

    /// The escaped path, '/'-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds a key from its escaped form, checking every segment.
    pub fn from_escaped(s: &str) -> Option<Self> {
        if s.is_empty() {
            return Some(Key(String::new()));
        }
        for seg in s.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." || !seg.bytes().all(is_plain_or_escape) {
                return None;
            }
        }
        Some(Key(s.to_string()))
    }

    /// The unescaped segments.
    pub fn segments(&self) -> Vec<String> {
        if self.0.is_empty() {
            return Vec::new();
        }
        self.0.split('/').map(unescape).collect()
    }

    /// The last segment, unescaped.
    pub fn last(&self) -> Option<String> {
        self.0
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .map(unescape)
    }

    /// Whether `self` is `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &Key) -> bool {
        prefix.0.is_empty()
            || self.0 == prefix.0
            || (self.0.starts_with(&prefix.0)
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'+' | b'=')
}

fn is_plain_or_escape(b: u8) -> bool {
    is_plain(b) || b == b'%'
}

fn escape_into(segment: &str, out: &mut String) {
    // "." and ".." would be path navigation in a file store: escape their dots.
    let dots_only = !segment.is_empty() && segment.bytes().all(|b| b == b'.');
    // An empty segment is a lone "%": escaping always writes "%XX", so no other segment is "%"
    // ("%00" would collide with a segment holding one NUL byte).
    if segment.is_empty() {
        out.push('%');
        return;
    }
    for b in segment.bytes() {
        if is_plain(b) && !(dots_only && b == b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn unescape(seg: &str) -> String {
    if seg == "%" {
        return String::new();
    }
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&seg[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cidr_is_one_segment() {
        let k = Key::new(["ipam", "pools", "10.1.0.0/24"]);
        assert_eq!(k.as_str(), "ipam/pools/10.1.0.0%2F24");
        assert_eq!(k.segments(), vec!["ipam", "pools", "10.1.0.0/24"]);
        assert_eq!(k.last().as_deref(), Some("10.1.0.0/24"));
    }

    #[test]
    fn dots_cannot_escape() {
        let k = Key::new(["a", "..", "."]);
        assert!(!k.as_str().split('/').any(|s| s == ".." || s == "."));
        assert_eq!(k.segments(), vec!["a", "..", "."]);
        assert!(Key::from_escaped("a/../b").is_none());
        assert!(Key::from_escaped("a//b").is_none());
    }

    #[test]
    fn empty_and_nul_segments_differ() {
        let empty = Key::new(["a", ""]);
        let nul = Key::new(["a", "\0"]);
        assert_ne!(empty, nul);
        assert_eq!(empty.segments(), vec!["a", ""]);
        assert_eq!(nul.segments(), vec!["a", "\0"]);
    }

    #[test]
    fn prefix_is_segment_aligned() {
        let net = Key::new(["networks", "web"]);
        assert!(Key::new(["networks", "web", "x"]).starts_with(&net));
        assert!(!Key::new(["networks", "web2"]).starts_with(&net));
        assert!(net.starts_with(&Key::new(Vec::<String>::new())));
    }

    proptest! {
        #[test]
        fn segments_round_trip(segs in proptest::collection::vec(".{0,12}", 1..5)) {
            let k = Key::new(&segs);
            prop_assert_eq!(k.segments(), segs);
            prop_assert!(Key::from_escaped(k.as_str()).is_some());
        }
    }
}
