//! Thumbnails: small JPEGs made once per key and reused by later runs.
//!
//! `thumbs/<images stage>-<config hash>-<size>/<key>.jpg` under the report
//! folder. Only missing ones are made: the image stage's shards are read
//! with curate-io's streaming reader (`key` first, then `key` + `bytes` of
//! the shards holding a wanted key, a few rows at a time), decoded with
//! curate-vision (reduced-DCT JPEG decode where it still covers the
//! thumbnail, Pillow's bicubic resize), written under a temporary name and
//! renamed, so a killed run never leaves half a thumbnail to be reused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use curate_vision::preprocess::{load_rgb, DecodeScale, PixelSpec, Resample, Resize};
use curate_vision::Limits;
use rayon::prelude::*;

use crate::error::ReportError;
use crate::stage::Stage;

/// JPEG quality of thumbnails.
const QUALITY: u8 = 80;

/// A thumbnail as a page shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Thumb {
    /// Path relative to the report folder, and its size.
    Ready {
        href: String,
        width: u32,
        height: u32,
    },
    /// Why there is none (not in the image stage, undecodable).
    Missing(String),
}

/// Thumbnail maker for one report.
pub struct Thumbs {
    root: PathBuf,
    size: u32,
    pub made: AtomicU64,
    pub reused: AtomicU64,
    pub failed: AtomicU64,
    /// Every thumbnail file referenced by this report (relative paths).
    pub referenced: std::sync::Mutex<BTreeSet<String>>,
}

impl Thumbs {
    pub fn new(root: &Path, size: u32) -> Thumbs {
        Thumbs {
            root: root.to_path_buf(),
            size,
            made: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            referenced: Default::default(),
        }
    }

    fn folder(&self, images: &Stage) -> String {
        let hash: String = images.manifest.config_hash.chars().take(8).collect();
        let name: String = images
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("thumbs/{name}-{hash}-{}", self.size)
    }

    /// Thumbnails of `keys` from the `images` stage, making the missing ones.
    pub fn ensure(
        &self,
        images: &Stage,
        keys: &BTreeSet<String>,
    ) -> Result<HashMap<String, Thumb>, ReportError> {
        let folder = self.folder(images);
        let dir = self.root.join(&folder);
        std::fs::create_dir_all(&dir).map_err(|e| ReportError::io(&dir, e))?;
        let mut out = HashMap::with_capacity(keys.len());
        let mut wanted: BTreeSet<&str> = BTreeSet::new();
        for key in keys {
            if !safe_key(key) {
                out.insert(key.clone(), Thumb::Missing("key is not a file name".into()));
                continue;
            }
            let rel = format!("{folder}/{key}.jpg");
            match dimensions(&self.root.join(&rel)) {
                Some((width, height)) => {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                    self.referenced
                        .lock()
                        .expect("no panics")
                        .insert(rel.clone());
                    out.insert(
                        key.clone(),
                        Thumb::Ready {
                            href: rel,
                            width,
                            height,
                        },
                    );
                }
                None => {
                    wanted.insert(key.as_str());
                }
            }
        }
        if !wanted.is_empty() {
            tracing::info!(
                "report: making {} thumbnails from {} ({} reused)",
                wanted.len(),
                images.dir.display(),
                keys.len() - wanted.len()
            );
            self.make(images, &folder, &wanted, &mut out)?;
        }
        for key in wanted {
            if !out.contains_key(key) {
                self.failed.fetch_add(1, Ordering::Relaxed);
                out.insert(
                    key.to_string(),
                    Thumb::Missing(format!("not in the complete shards of {}", images.name)),
                );
            }
        }
        Ok(out)
    }

    fn make(
        &self,
        images: &Stage,
        folder: &str,
        wanted: &BTreeSet<&str>,
        out: &mut HashMap<String, Thumb>,
    ) -> Result<(), ReportError> {
        let table = curate_io::images::table();
        for file in &images.files {
            // Which wanted keys this shard holds: the key column only.
            let mut here: BTreeSet<String> = BTreeSet::new();
            for batch in curate_io::stream_columns(file, table, &["key"], 65_536)? {
                let batch = batch?;
                let keys = batch.column(0).as_string::<i32>();
                for i in 0..keys.len() {
                    if keys.is_valid(i)
                        && wanted.contains(keys.value(i))
                        && !out.contains_key(keys.value(i))
                    {
                        here.insert(keys.value(i).to_string());
                    }
                }
            }
            if here.is_empty() {
                continue;
            }
            for batch in curate_io::stream_columns(file, table, &["key", "bytes"], 64)? {
                let batch = batch?;
                let rows = rows_of(&batch, &here);
                let made: Vec<(String, Thumb)> = rows
                    .par_iter()
                    .map(|(key, bytes)| (key.clone(), self.make_one(folder, key, bytes.as_deref())))
                    .collect();
                for (key, thumb) in made {
                    here.remove(&key);
                    out.insert(key, thumb);
                }
                if here.is_empty() {
                    break;
                }
            }
        }
        Ok(())
    }

    fn make_one(&self, folder: &str, key: &str, bytes: Option<&[u8]>) -> Thumb {
        let Some(bytes) = bytes else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return Thumb::Missing("no stored bytes (a failed image)".into());
        };
        let rel = format!("{folder}/{key}.jpg");
        match thumbnail(bytes, self.size) {
            Ok(jpeg) => {
                let (width, height) = (jpeg.0, jpeg.1);
                let path = self.root.join(&rel);
                if let Err(e) = crate::writer::write_file(&path, &jpeg.2) {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    return Thumb::Missing(e.to_string());
                }
                self.made.fetch_add(1, Ordering::Relaxed);
                self.referenced
                    .lock()
                    .expect("no panics")
                    .insert(rel.clone());
                Thumb::Ready {
                    href: rel,
                    width,
                    height,
                }
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                Thumb::Missing(e)
            }
        }
    }
}

/// The wanted rows of a `key`, `bytes` batch.
fn rows_of(batch: &RecordBatch, wanted: &BTreeSet<String>) -> Vec<(String, Option<Vec<u8>>)> {
    let keys = batch.column(0).as_string::<i32>();
    let bytes = batch.column(1);
    let mut rows = BTreeMap::new();
    for i in 0..batch.num_rows() {
        if !keys.is_valid(i) || !wanted.contains(keys.value(i)) {
            continue;
        }
        let b = if bytes.is_null(i) {
            None
        } else if let Some(a) = bytes.as_binary_opt::<i32>() {
            Some(a.value(i).to_vec())
        } else {
            bytes.as_binary_opt::<i64>().map(|a| a.value(i).to_vec())
        };
        rows.insert(keys.value(i).to_string(), b);
    }
    rows.into_iter().collect()
}

/// Keys are 16 hex characters; anything else is not used as a file name.
fn safe_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Width and height of an existing thumbnail, from its header.
fn dimensions(path: &Path) -> Option<(u32, u32)> {
    let bytes = std::fs::read(path).ok()?;
    let info = curate_vision::inspect(&bytes, &Limits::default()).ok()?;
    Some((info.width, info.height))
}

/// A JPEG thumbnail whose longer side is at most `size` (never enlarged):
/// `(width, height, bytes)`.
pub fn thumbnail(bytes: &[u8], size: u32) -> Result<(u32, u32, Vec<u8>), String> {
    let limits = Limits::default();
    let info = curate_vision::inspect(bytes, &limits).map_err(|e| e.to_string())?;
    let (w, h) = (info.width.max(1), info.height.max(1));
    let scale = (size as f64 / w.max(h) as f64).min(1.0);
    let tw = ((w as f64 * scale).round() as u32).max(1);
    let th = ((h as f64 * scale).round() as u32).max(1);
    let spec = PixelSpec {
        resize: Resize::Exact {
            height: th,
            width: tw,
        },
        resample: Resample::Bicubic,
        crop: None,
        rescale: None,
        normalize: None,
    };
    let loaded =
        load_rgb(bytes, &limits, &spec, DecodeScale::Reduced).map_err(|e| e.to_string())?;
    let small = spec.resize_crop(&loaded.rgb);
    let jpeg = curate_vision::encode_jpeg(&small, QUALITY).map_err(|e| e.to_string())?;
    Ok((small.width(), small.height(), jpeg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_fit_the_box_and_are_small() {
        let photo = curate_vision::synthetic_photo(1024, 683, 7);
        let jpeg = curate_vision::encode_jpeg(&photo, 90).unwrap();
        let (w, h, t) = thumbnail(&jpeg, 160).unwrap();
        assert_eq!((w, h), (160, 107));
        assert!(t.len() < 20_000, "{} bytes", t.len());
        let info = curate_vision::inspect(&t, &Limits::default()).unwrap();
        assert_eq!((info.width, info.height), (160, 107));
        // Smaller than the box: kept as is.
        let tiny = curate_vision::encode_png(&curate_vision::synthetic_photo(90, 60, 1)).unwrap();
        let (w, h, _) = thumbnail(&tiny, 160).unwrap();
        assert_eq!((w, h), (90, 60));
        assert!(thumbnail(b"not an image", 160).is_err());
    }
}
