//! Record types shared by stages.

use crate::hash::sha256_hex;

/// The stable key of a record: 16 lowercase hex chars, the first 64 bits
/// of sha256 of its source identifier (`file:<relative path>` for ingest,
/// the URL for fetch). Stable across reruns and machines; joins across
/// stages use it.
pub fn record_key(source_id: &str) -> String {
    sha256_hex(source_id.as_bytes())[..16].to_string()
}

/// Outcome of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// How `bytes` of an image record relate to its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Original,
    Reencoded,
}

impl Stored {
    pub fn as_str(self) -> &'static str {
        match self {
            Stored::Original => "original",
            Stored::Reencoded => "reencoded",
        }
    }
}

/// One row of the `images` table (schemas/images.json).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub key: String,
    pub source: String,
    pub status: Status,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub format: Option<String>,
    pub mode: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub orientation: Option<u8>,
    pub file_size: u64,
    pub sha256: Option<String>,
    pub stored: Option<Stored>,
    pub stored_format: Option<String>,
    pub bytes: Option<Vec<u8>>,
    /// Download facts (fetch only).
    pub download: Option<DownloadFacts>,
}

/// What `fetch` knows about a download.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DownloadFacts {
    pub url: String,
    pub page_url: Option<String>,
    pub http_status: Option<u16>,
    pub attempts: u8,
    pub fetch_ms: u32,
}

impl ImageRecord {
    /// A failed record: no image data, the reason and message kept.
    pub fn failed(
        key: String,
        source: String,
        reason: &str,
        error: String,
        file_size: u64,
    ) -> Self {
        ImageRecord {
            key,
            source,
            status: Status::Error,
            reason: Some(reason.to_string()),
            error: Some(error),
            format: None,
            mode: None,
            width: None,
            height: None,
            orientation: None,
            file_size,
            sha256: None,
            stored: None,
            stored_format: None,
            bytes: None,
            download: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_short() {
        let k = record_key("file:photos/a.jpg");
        assert_eq!(k.len(), 16);
        assert_eq!(k, record_key("file:photos/a.jpg"));
        assert_ne!(k, record_key("file:photos/b.jpg"));
        assert!(k
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
