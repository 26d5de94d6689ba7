#![allow(dead_code)]
//! Shared by the parity tests: our preprocessing against Hugging Face's slow (PIL) image processors,
//! on every fixture photo. The references are the processors' `uint8`
//! pictures after resize and crop (`fixtures/models/*/reference/pixels`,
//! exact: the float tensors are a per-channel affine map of them), made by
//! `fixtures/models/make_clip_tiny.py` and `make_aesthetic_tiny.py`.

use std::path::PathBuf;

use curate_vision::preprocess::{load_rgb, DecodeScale, PixelSpec};
use curate_vision::Limits;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub struct Stats {
    pub max_levels: u8,
    pub mean_levels: f64,
    pub max_norm: f32,
    pub mean_norm: f64,
}

/// Compares our picture with the reference PNG, in 8-bit levels and in normalised units.
pub fn compare(spec: &PixelSpec, photo: &str, png: &str) -> Stats {
    let bytes = std::fs::read(fixtures().join("images").join(photo)).unwrap();
    let loaded = load_rgb(&bytes, &Limits::default(), spec, DecodeScale::Full).unwrap();
    let ours = spec.resize_crop(&loaded.rgb);
    let reference = image::open(png).unwrap().to_rgb8();
    assert_eq!(ours.dimensions(), reference.dimensions(), "{photo}: size");
    let tables = spec.tables();
    let (w, h) = ours.dimensions();
    let mut a = vec![0f32; (3 * w * h) as usize];
    let mut b = a.clone();
    PixelSpec::to_chw(&ours, &tables, &mut a);
    PixelSpec::to_chw(&reference, &tables, &mut b);
    let levels: Vec<u8> = ours
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    let norm: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
    Stats {
        max_levels: *levels.iter().max().unwrap(),
        mean_levels: levels.iter().map(|&v| v as f64).sum::<f64>() / levels.len() as f64,
        max_norm: norm.iter().cloned().fold(0.0, f32::max),
        mean_norm: norm.iter().map(|&v| v as f64).sum::<f64>() / norm.len() as f64,
    }
}

pub fn run(model: &str, reference: &str, defaults: PixelSpec) -> Vec<(String, Stats)> {
    let dir = fixtures().join("models").join(model);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    let spec = PixelSpec::from_hf_json(&config, defaults).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(reference)).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in r["photos"].as_array().unwrap() {
        let Some(png) = p["pixels_png"].as_str() else {
            continue;
        };
        let photo = p["path"].as_str().unwrap();
        let png = if reference.contains('/') {
            dir.join("reference")
                .join(png.trim_start_matches("reference/"))
        } else {
            dir.join(png)
        };
        let s = compare(&spec, photo, png.to_str().unwrap());
        eprintln!(
            "{model} {photo}: max {} levels ({:.5} normalised), mean {:.4} levels ({:.6})",
            s.max_levels, s.max_norm, s.mean_levels, s.mean_norm
        );
        out.push((photo.to_string(), s));
    }
    assert!(!out.is_empty(), "no reference pictures found for {model}");
    out
}

/// The resize, crop and normalisation add no error: non-JPEG sources (the
/// same decoded pixels as Pillow's) match bit for bit, and so do JPEGs when
/// libjpeg-turbo (Pillow's decoder) is installed. Without it, JPEGs differ
/// only through jpeg-decoder's IDCT and chroma upsampling rounding: at most
/// 4 levels at edges, under 0.2 on average (`hf_parity_fallback.rs`).
pub fn check(results: &[(String, Stats)]) {
    let turbo = curate_vision::turbo::available();
    if std::env::var_os("CURATE_REQUIRE_TURBOJPEG").is_some()
        && std::env::var("CURATE_TURBOJPEG").as_deref() != Ok("off")
    {
        assert!(
            turbo,
            "CURATE_REQUIRE_TURBOJPEG is set but libturbojpeg was not found"
        );
    }
    for (photo, s) in results {
        if photo.ends_with(".jpg") && !turbo {
            assert!(
                s.max_levels <= JPEG_MAX_LEVELS,
                "{photo}: max {} levels",
                s.max_levels
            );
            assert!(
                s.mean_levels <= JPEG_MEAN_LEVELS,
                "{photo}: mean {} levels",
                s.mean_levels
            );
        } else {
            assert_eq!(
                s.max_levels, 0,
                "{photo}: a non-JPEG source must match exactly"
            );
        }
    }
    let max = results.iter().map(|r| r.1.max_norm).fold(0.0, f32::max);
    let mean = results.iter().map(|r| r.1.mean_norm).sum::<f64>() / results.len() as f64;
    eprintln!("overall: max abs diff {max:.5}, mean abs diff {mean:.6} (normalised units)");
}

pub const JPEG_MAX_LEVELS: u8 = 4;
pub const JPEG_MEAN_LEVELS: f64 = 0.2;
