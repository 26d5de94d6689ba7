//! Stable hashes: record keys, configuration hashes, input fingerprints.

use sha2::{Digest, Sha256};

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Hash of a JSON value in canonical form (object keys sorted, no whitespace).
/// `serde_json` keeps object keys in a `BTreeMap`, so serialising is canonical.
pub fn json_hash(value: &serde_json::Value) -> String {
    sha256_hex(value.to_string().as_bytes())
}

/// An incremental fingerprint over a sequence of items (paths and sizes, URLs).
#[derive(Default)]
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds one item; items are length-prefixed so `("ab","c")` ≠ `("a","bc")`.
    pub fn add(&mut self, item: &[u8]) {
        self.0.update((item.len() as u64).to_le_bytes());
        self.0.update(item);
    }
    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn json_hash_ignores_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":[1,2]}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{ "b":[1,2], "a":1 }"#).unwrap();
        let c: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":[2,1]}"#).unwrap();
        assert_eq!(json_hash(&a), json_hash(&b));
        assert_ne!(json_hash(&a), json_hash(&c));
    }

    #[test]
    fn fingerprint_is_length_prefixed() {
        let mut x = Fingerprint::new();
        x.add(b"ab");
        x.add(b"c");
        let mut y = Fingerprint::new();
        y.add(b"a");
        y.add(b"bc");
        assert_ne!(x.finish(), y.finish());
    }
}
