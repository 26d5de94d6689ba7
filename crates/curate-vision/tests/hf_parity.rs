//! Our preprocessing against Hugging Face's slow (PIL) image processors,
//! on every fixture photo. The references are the processors' `uint8`
//! pictures after resize and crop (`fixtures/models/*/reference/pixels`,
//! exact: the float tensors are a per-channel affine map of them), made by
//! `fixtures/models/make_clip_tiny.py` and `make_aesthetic_tiny.py`.

use std::path::PathBuf;

use curate_vision::preprocess::{load_rgb, DecodeScale, PixelSpec};
use curate_vision::Limits;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

struct Stats {
    max_levels: u8,
    mean_levels: f64,
    max_norm: f32,
    mean_norm: f64,
}

/// Compares our picture with the reference PNG, in 8-bit levels and in normalised units.
fn compare(spec: &PixelSpec, photo: &str, png: &str) -> Stats {
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

fn run(model: &str, reference: &str, defaults: PixelSpec) -> Vec<(String, Stats)> {
    let dir = fixtures().join("models").join(model);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("preprocessor_config.json")).unwrap())
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
            dir.join("reference").join(png.trim_start_matches("reference/"))
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
/// same decoded pixels as Pillow's) match bit for bit. JPEG sources differ
/// only through the decoder (jpeg-decoder vs libjpeg-turbo IDCT and chroma
/// upsampling rounding): at most 4 levels at edges, under 0.2 on average.
fn check(results: &[(String, Stats)]) {
    for (photo, s) in results {
        if photo.ends_with(".jpg") {
            assert!(s.max_levels <= JPEG_MAX_LEVELS, "{photo}: max {} levels", s.max_levels);
            assert!(s.mean_levels <= JPEG_MEAN_LEVELS, "{photo}: mean {} levels", s.mean_levels);
        } else {
            assert_eq!(s.max_levels, 0, "{photo}: a non-JPEG source must match exactly");
        }
    }
    let max = results.iter().map(|r| r.1.max_norm).fold(0.0, f32::max);
    let mean = results.iter().map(|r| r.1.mean_norm).sum::<f64>() / results.len() as f64;
    eprintln!("overall: max abs diff {max:.5}, mean abs diff {mean:.6} (normalised units)");
}

const JPEG_MAX_LEVELS: u8 = 4;
const JPEG_MEAN_LEVELS: f64 = 0.2;

#[test]
fn clip_preprocessing_matches_clip_image_processor() {
    check(&run("clip-tiny", "reference/reference.json", PixelSpec::clip()));
}

#[test]
fn siglip_preprocessing_matches_siglip_image_processor() {
    let defaults = PixelSpec::squash(384, [0.5; 3], [0.5; 3]);
    check(&run("aesthetic-tiny", "reference.json", defaults));
}

#[test]
fn config_overrides_defaults_and_bad_values_are_named() {
    let json = serde_json::json!({"size": {"height": 768, "width": 768}, "do_center_crop": false,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3});
    let spec = PixelSpec::from_hf_json(&json, PixelSpec::clip()).unwrap();
    assert_eq!(spec.fixed_hw(), Some((768, 768)));
    assert_eq!(spec.crop, None);
    let bad = serde_json::json!({"size": {"longest": 3}});
    let err = PixelSpec::from_hf_json(&bad, PixelSpec::clip()).unwrap_err().to_string();
    assert!(err.contains("`size`") && err.contains("shortest_edge"), "{err}");
}

#[test]
fn shortest_edge_sizes_follow_transformers() {
    let spec = PixelSpec::clip();
    // int(224 * long / short), the short side exactly 224.
    assert_eq!(spec.resized_size(1024, 768), (298, 224));
    assert_eq!(spec.resized_size(768, 1024), (224, 298));
    assert_eq!(spec.resized_size(300, 300), (224, 224));
    assert_eq!(spec.resized_size(97, 320), (224, 738));
}

#[test]
fn reduced_dct_decode_covers_the_target_and_stays_close() {
    // A Flickr-sized JPEG: 1/2 scale (512×384) still covers 298×224.
    let img = curate_vision::synthetic_photo(1024, 768, 7);
    let jpeg = curate_vision::encode_jpeg(&img, 90).unwrap();
    let spec = PixelSpec::clip();
    let full = load_rgb(&jpeg, &Limits::default(), &spec, DecodeScale::Full).unwrap();
    let reduced = load_rgb(&jpeg, &Limits::default(), &spec, DecodeScale::Reduced).unwrap();
    assert_eq!(full.reduction, 1);
    assert_eq!(reduced.reduction, 2);
    assert_eq!((reduced.rgb.width(), reduced.rgb.height()), (512, 384));
    assert_eq!((reduced.source_width, reduced.source_height), (1024, 768));
    let a = spec.resize_crop(&full.rgb);
    let b = spec.resize_crop(&reduced.rgb);
    let mean = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as f64)
        .sum::<f64>()
        / a.as_raw().len() as f64;
    eprintln!("reduced vs full decode: mean {mean:.3} levels");
    assert!(mean < 3.0, "mean difference {mean} levels");
}
