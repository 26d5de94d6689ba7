//! Bytes → image record: the validation `ingest` and `fetch` share.

use curate_core::hash::sha256_hex;
use curate_core::record::{ImageRecord, Status, Stored};
use curate_vision::image::imageops::FilterType;
use curate_vision::{Format, Limits};
use serde::{Deserialize, Serialize};

/// What the `bytes` column holds (`--store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorePolicy {
    /// Source bytes for plain JPEG/PNG/WebP (8-bit RGB or grey, upright); the rest re-encoded.
    Auto,
    /// Always the source bytes.
    Original,
    /// Always upright 8-bit RGB, re-encoded (JPEG sources as JPEG, others as PNG).
    Reencoded,
}

/// How images are checked (`--verify`): `Full` decodes every pixel;
/// `Header` checks headers and structure and decodes only what must be re-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    Full,
    Header,
}

/// How images are checked and stored (the image flags of ingest and fetch).
#[derive(Debug, Clone)]
pub struct ImageSettings {
    pub store: StorePolicy,
    /// Largest width × height decoded; larger images are `too_large`.
    pub max_pixels: u64,
    /// JPEG quality when re-encoding a JPEG source.
    pub jpeg_quality: u8,
    pub verify: Verify,
    /// Decoding threads (0 = all cores).
    pub threads: usize,
}

/// How image bytes are checked and stored.
#[derive(Debug, Clone)]
pub struct Validation {
    pub store: StorePolicy,
    pub verify: Verify,
    pub limits: Limits,
    pub jpeg_quality: u8,
    /// Images whose shorter side is below this are `too_small`.
    pub min_side: u32,
    /// Larger images are downscaled (Lanczos) to this long side and re-encoded.
    pub max_side: Option<u32>,
}

impl Validation {
    pub fn new(image: &ImageSettings, min_side: u32, max_side: Option<u32>) -> Self {
        Validation {
            store: image.store,
            verify: image.verify,
            limits: Limits {
                max_pixels: image.max_pixels,
                ..Limits::default()
            },
            jpeg_quality: image.jpeg_quality,
            min_side,
            max_side,
        }
    }
}

/// Runs `make`, turning a panic (a decoder bug on hostile bytes) into a
/// recorded failure of that one record instead of the end of the run.
pub fn guarded(
    key: &str,
    source: &str,
    file_size: u64,
    make: impl FnOnce() -> ImageRecord,
) -> ImageRecord {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        ImageRecord::failed(
            key.to_string(),
            source.to_string(),
            "undecodable",
            format!("decoder panicked: {what}"),
            file_size,
        )
    })
}

/// Decodes and checks `bytes`, and decides what to store. Never fails:
/// every problem becomes a reason on the record.
pub fn image_record(key: String, source: String, bytes: Vec<u8>, v: &Validation) -> ImageRecord {
    let sha = sha256_hex(&bytes);
    let file_size = bytes.len() as u64;
    let fail = |reason: &str, message: String, format: Option<&str>| {
        let mut r = ImageRecord::failed(key.clone(), source.clone(), reason, message, file_size);
        r.format = format.map(str::to_string);
        r.sha256 = Some(sha.clone());
        r
    };
    // Images kept as their source bytes only need verifying, not pixels:
    // `header` checks headers and structure; `full` also decodes every JPEG
    // scan at 1/8 DCT scale. Anything else, or any doubt, takes the full
    // decode below, which also words the error.
    let header_only = v.verify == Verify::Header;
    if header_only || curate_vision::detect_format(&bytes).ok() == Some(Format::Jpeg) {
        match curate_vision::inspect(&bytes, &v.limits) {
            Err(e) if header_only => {
                let format = curate_vision::detect_format(&bytes).ok();
                return fail(e.reason(), e.to_string(), format.map(Format::as_str));
            }
            Err(_) => {}
            Ok(info) => {
                let (w, h) = (info.width, info.height);
                if w.min(h) < v.min_side {
                    return fail(
                        "too_small",
                        format!("{w}×{h}: shorter side below --min-side {}", v.min_side),
                        Some(info.format.as_str()),
                    );
                }
                let keep = v.max_side.is_none_or(|m| w.max(h) <= m)
                    && match v.store {
                        StorePolicy::Original => true,
                        StorePolicy::Auto => info.is_plain(),
                        StorePolicy::Reencoded => false,
                    };
                // (In `full` mode only JPEGs get here.) A scan that does not
                // decode is a failure: zune's lenient full decode would
                // paper over it with grey.
                if keep && !header_only {
                    if let Err(e) = curate_vision::verify_jpeg_scaled(&bytes, &v.limits) {
                        return fail(e.reason(), e.to_string(), Some(info.format.as_str()));
                    }
                }
                if keep {
                    return ImageRecord {
                        key,
                        source,
                        status: Status::Ok,
                        reason: None,
                        error: None,
                        format: Some(info.format.as_str().to_string()),
                        mode: Some(info.mode.to_string()),
                        width: Some(w),
                        height: Some(h),
                        orientation: Some(info.orientation),
                        file_size,
                        sha256: Some(sha),
                        stored: Some(Stored::Original),
                        stored_format: Some(info.format.as_str().to_string()),
                        bytes: Some(bytes),
                        download: None,
                    };
                }
            }
        }
    }
    let decoded = match curate_vision::decode(&bytes, &v.limits) {
        Ok(d) => d,
        Err(e) => {
            let format = curate_vision::detect_format(&bytes).ok();
            return fail(e.reason(), e.to_string(), format.map(Format::as_str));
        }
    };
    let fmt = Some(decoded.format.as_str());
    let (w, h) = (decoded.width(), decoded.height());
    if w.min(h) < v.min_side {
        return fail(
            "too_small",
            format!("{w}×{h}: shorter side below --min-side {}", v.min_side),
            fmt,
        );
    }
    let resize_to = v.max_side.filter(|&m| w.max(h) > m);
    let keep_original = resize_to.is_none()
        && match v.store {
            StorePolicy::Original => true,
            StorePolicy::Auto => decoded.is_plain(),
            StorePolicy::Reencoded => false,
        };
    let (stored, stored_format, out, (w, h)) = if keep_original {
        (Stored::Original, decoded.format, bytes, (w, h))
    } else {
        let mut rgb = curate_vision::to_rgb8(&decoded.image);
        if let Some(m) = resize_to {
            let scale = m as f64 / w.max(h) as f64;
            let nw = ((w as f64 * scale).round() as u32).max(1);
            let nh = ((h as f64 * scale).round() as u32).max(1);
            rgb = curate_vision::image::imageops::resize(&rgb, nw, nh, FilterType::Lanczos3);
        }
        let dims = rgb.dimensions();
        let encoded = if decoded.format == Format::Jpeg {
            curate_vision::encode_jpeg(&rgb, v.jpeg_quality).map(|b| (Format::Jpeg, b))
        } else {
            curate_vision::encode_png(&rgb).map(|b| (Format::Png, b))
        };
        match encoded {
            Ok((f, b)) => (Stored::Reencoded, f, b, dims),
            Err(e) => return fail("undecodable", format!("re-encoding failed: {e}"), fmt),
        }
    };
    ImageRecord {
        key,
        source,
        status: Status::Ok,
        reason: None,
        error: None,
        format: fmt.map(str::to_string),
        mode: Some(decoded.mode.to_string()),
        width: Some(w),
        height: Some(h),
        orientation: Some(decoded.orientation),
        file_size,
        sha256: Some(sha),
        stored: Some(stored),
        stored_format: Some(stored_format.as_str().to_string()),
        bytes: Some(out),
        download: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enums_serialise_as_the_manifest_always_had_them() {
        let j = serde_json::json!({
            "store": [StorePolicy::Auto, StorePolicy::Original, StorePolicy::Reencoded],
            "verify": [Verify::Full, Verify::Header],
        });
        assert_eq!(
            j.to_string(),
            r#"{"store":["auto","original","reencoded"],"verify":["full","header"]}"#
        );
    }
}
