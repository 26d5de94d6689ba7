//! The multi-stage resize of the oboro report (§IV-A6): where each training
//! image is resized and cropped before the VAE sees it.
//!
//! - **Stage 256**: the short edge becomes 256 (antialiased bicubic, as
//!   Pillow), then a 256×256 crop at a position drawn from the key.
//! - **Stage 512**: the image goes to the bucket (h, w) of [`BUCKETS_512`]
//!   whose aspect ratio is closest to its own: every side a multiple of 64,
//!   area within ±15 % of 512² = 262144 px, long/short ≤ 1.3. The image is
//!   resized, keeping its aspect ratio, just enough to cover the bucket
//!   (area ≈ 262144), and the excess of the long side (more than 1.3:1, or
//!   the rounding to 64) is cropped away at a position drawn from the key.
//!
//! Crop positions are a pure function of (seed, resolution, key), so reruns,
//! shard splits and resumes crop every image the same way.

use curate_core::rng::{fnv1a, SplitMix64, FNV_OFFSET};

use crate::pillow::{self, Filter};

/// Target area of stage 512 (512²).
pub const AREA_512: u32 = 262_144;
/// Largest long/short ratio of a stage-512 bucket.
pub const MAX_RATIO_512: f64 = 1.3;
/// Allowed relative deviation of a bucket's area from [`AREA_512`].
pub const AREA_TOLERANCE: f64 = 0.15;

/// The stage-512 buckets as (height, width): multiples of 64, area within
/// ±15 % of 262144, ratio ≤ 1.3 (see [`bucket_table`], which derives them).
pub const BUCKETS_512: [(u32, u32); 7] = [
    (448, 512),
    (448, 576),
    (512, 448),
    (512, 512),
    (512, 576),
    (576, 448),
    (576, 512),
];

/// Every (height, width) with sides multiples of `multiple`, area within
/// `tolerance` of `area` and long/short ≤ `max_ratio`, sorted.
pub fn bucket_table(area: u32, tolerance: f64, max_ratio: f64, multiple: u32) -> Vec<(u32, u32)> {
    let (lo, hi) = (
        area as f64 * (1.0 - tolerance),
        area as f64 * (1.0 + tolerance),
    );
    let max_side = ((hi * max_ratio).sqrt() as u32 / multiple + 1) * multiple;
    let mut out = Vec::new();
    for h in (multiple..=max_side).step_by(multiple as usize) {
        for w in (multiple..=max_side).step_by(multiple as usize) {
            let a = (h * w) as f64;
            let ratio = h.max(w) as f64 / h.min(w) as f64;
            if a >= lo && a <= hi && ratio <= max_ratio + 1e-12 {
                out.push((h, w));
            }
        }
    }
    out
}

/// A resolution stage of the training set (256 or 512).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    S256,
    S512,
}

impl Resolution {
    pub fn number(self) -> u16 {
        match self {
            Resolution::S256 => 256,
            Resolution::S512 => 512,
        }
    }

    pub fn from_number(n: u32) -> Option<Resolution> {
        match n {
            256 => Some(Resolution::S256),
            512 => Some(Resolution::S512),
            _ => None,
        }
    }

    /// The buckets (height, width) this stage can produce.
    pub fn buckets(self) -> Vec<(u32, u32)> {
        match self {
            Resolution::S256 => vec![(256, 256)],
            Resolution::S512 => BUCKETS_512.to_vec(),
        }
    }
}

/// Where an image of a given size goes: the resize, then the crop box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub resized_width: u32,
    pub resized_height: u32,
    pub crop_left: u32,
    pub crop_top: u32,
    /// The bucket: crop height and width.
    pub bucket_h: u32,
    pub bucket_w: u32,
    /// Resized size / source size (> 1 is an upscale).
    pub scale: f64,
}

/// The bucket of stage 512 for a `width`×`height` image: the closest aspect
/// ratio (in log space); ties go to the area closest to 262144.
pub fn bucket_512(width: u32, height: u32) -> (u32, u32) {
    let r = (width as f64 / height as f64).ln();
    *BUCKETS_512
        .iter()
        .min_by(|a, b| {
            let da = ((a.1 as f64 / a.0 as f64).ln() - r).abs();
            let db = ((b.1 as f64 / b.0 as f64).ln() - r).abs();
            let area = |x: &(u32, u32)| (x.0 as i64 * x.1 as i64 - AREA_512 as i64).abs();
            da.partial_cmp(&db)
                .unwrap()
                .then(area(a).cmp(&area(b)))
                .then(a.cmp(b))
        })
        .expect("the table is not empty")
}

/// Where the image `key` of `width`×`height` (upright) goes at `resolution`.
pub fn place(resolution: Resolution, width: u32, height: u32, key: &str, seed: u64) -> Placement {
    let (bh, bw) = match resolution {
        Resolution::S256 => (256, 256),
        Resolution::S512 => bucket_512(width, height),
    };
    // The smallest size keeping the aspect ratio that covers the bucket.
    let scale = (bw as f64 / width as f64).max(bh as f64 / height as f64);
    let rw = ((width as f64 * scale).round() as u32).max(bw);
    let rh = ((height as f64 * scale).round() as u32).max(bh);
    let mut rng = crop_rng(seed, resolution, key);
    let crop_left = rng.below((rw - bw + 1) as u64) as u32;
    let crop_top = rng.below((rh - bh + 1) as u64) as u32;
    Placement {
        resized_width: rw,
        resized_height: rh,
        crop_left,
        crop_top,
        bucket_h: bh,
        bucket_w: bw,
        scale,
    }
}

/// Resizes (Pillow's antialiased bicubic) and crops an RGB picture per
/// `placement`. `rgb` may be a reduced-scale decode of the source: the
/// resize goes from whatever size it has to the placement's resized size.
pub fn resize_crop(rgb: &[u8], width: u32, height: u32, p: &Placement) -> Vec<u8> {
    pillow::resize_region::<3>(
        rgb,
        width as usize,
        height as usize,
        p.resized_width as usize,
        p.resized_height as usize,
        (
            p.crop_left as usize,
            p.crop_top as usize,
            p.bucket_w as usize,
            p.bucket_h as usize,
        ),
        if (width, height) == (p.resized_width, p.resized_height) {
            Filter::Box
        } else {
            Filter::Bicubic
        },
    )
}

/// The per-key random stream of crop positions (and caption choices):
/// curate-core's SplitMix64 seeded from FNV-1a of the key, mixed with the
/// seed and the resolution.
pub fn crop_rng(seed: u64, resolution: Resolution, key: &str) -> SplitMix64 {
    let h = fnv1a(FNV_OFFSET, key.as_bytes());
    let mut r = SplitMix64::new(h ^ seed.rotate_left(17) ^ (resolution.number() as u64) << 48);
    r.next_u64();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_table_is_derived_from_its_rules() {
        assert_eq!(
            bucket_table(AREA_512, AREA_TOLERANCE, MAX_RATIO_512, 64),
            BUCKETS_512.to_vec()
        );
    }

    /// Property test over random sizes (seeded, 20 000 draws, ratios up to 6:1).
    #[test]
    fn stage_512_places_every_size_in_a_valid_bucket() {
        let mut rng = crop_rng(7, Resolution::S512, "sizes");
        for i in 0..20_000 {
            let short = 16 + rng.below(3000) as u32;
            let ratio = 1.0 + (rng.below(5000) as f64 / 1000.0);
            let long = (short as f64 * ratio) as u32;
            let (w, h) = if rng.below(2) == 0 {
                (long, short)
            } else {
                (short, long)
            };
            let key = format!("{i:016x}");
            let p = place(Resolution::S512, w, h, &key, 1);
            let area = (p.bucket_h * p.bucket_w) as f64;
            assert!(
                (area / AREA_512 as f64 - 1.0).abs() <= AREA_TOLERANCE,
                "{w}x{h}: {p:?}"
            );
            assert_eq!(p.bucket_h % 64, 0);
            assert_eq!(p.bucket_w % 64, 0);
            assert!(p.bucket_h.max(p.bucket_w) as f64 / p.bucket_h.min(p.bucket_w) as f64 <= 1.3);
            // The resize keeps the aspect ratio (within rounding) and covers the bucket.
            assert!(p.resized_width >= p.bucket_w && p.resized_height >= p.bucket_h);
            let r_src = w as f64 / h as f64;
            let r_res = p.resized_width as f64 / p.resized_height as f64;
            assert!(
                (r_res / r_src - 1.0).abs() < 2.0 / p.bucket_h.min(p.bucket_w) as f64,
                "{w}x{h} → {p:?}"
            );
            // One side is exactly the bucket's (no more is cropped than needed).
            assert!(p.resized_width == p.bucket_w || p.resized_height == p.bucket_h);
            assert!(p.crop_left + p.bucket_w <= p.resized_width);
            assert!(p.crop_top + p.bucket_h <= p.resized_height);
            // Landscape images get landscape (or square) buckets, and vice versa.
            if w as f64 > 1.15 * h as f64 {
                assert!(p.bucket_w > p.bucket_h, "{w}x{h} → {p:?}");
            }
            if h as f64 > 1.15 * w as f64 {
                assert!(p.bucket_h > p.bucket_w, "{w}x{h} → {p:?}");
            }
            // The same key always gets the same crop.
            assert_eq!(place(Resolution::S512, w, h, &key, 1), p);
        }
    }

    #[test]
    fn stage_256_crops_256_squares_from_the_short_edge() {
        for (w, h) in [
            (1024, 768),
            (768, 1024),
            (300, 256),
            (256, 256),
            (5000, 300),
        ] {
            let p = place(Resolution::S256, w, h, "k", 0);
            assert_eq!((p.bucket_h, p.bucket_w), (256, 256));
            assert_eq!(p.resized_width.min(p.resized_height), 256, "{w}x{h}");
            assert!(p.crop_left + 256 <= p.resized_width);
            assert!(p.crop_top + 256 <= p.resized_height);
        }
        assert_eq!(
            place(Resolution::S256, 1024, 768, "k", 0).resized_width,
            341
        );
    }

    #[test]
    fn crops_depend_on_key_seed_and_stage_only() {
        let a = place(Resolution::S256, 2000, 300, "aaaa", 0);
        assert_eq!(a, place(Resolution::S256, 2000, 300, "aaaa", 0));
        let lefts: std::collections::HashSet<u32> = (0..64)
            .map(|i| place(Resolution::S256, 2000, 300, &format!("key{i}"), 0).crop_left)
            .collect();
        assert!(lefts.len() > 50, "positions spread over keys: {lefts:?}");
        let seeds: std::collections::HashSet<u32> = (0..64)
            .map(|s| place(Resolution::S256, 2000, 300, "aaaa", s).crop_left)
            .collect();
        assert!(seeds.len() > 50);
    }

    #[test]
    fn resize_crop_equals_resize_then_crop() {
        let src: Vec<u8> = (0..(97 * 61 * 3)).map(|i| (i * 7 % 251) as u8).collect();
        let p = Placement {
            resized_width: 70,
            resized_height: 44,
            crop_left: 5,
            crop_top: 3,
            bucket_h: 32,
            bucket_w: 48,
            scale: 0.0,
        };
        let full = pillow::resize::<3>(&src, 97, 61, 70, 44, Filter::Bicubic);
        let mut want = Vec::new();
        for y in 3..35 {
            want.extend_from_slice(&full[(y * 70 + 5) * 3..(y * 70 + 53) * 3]);
        }
        assert_eq!(resize_crop(&src, 97, 61, &p), want);
    }
}
