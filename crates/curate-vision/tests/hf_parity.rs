//! Our preprocessing against Hugging Face's slow (PIL) image processors on
//! every fixture photo (see `common/mod.rs` for how).

mod common;

use common::{check, run};
use curate_vision::preprocess::{load_rgb, DecodeScale, PixelSpec};
use curate_vision::Limits;

#[test]
fn clip_preprocessing_matches_clip_image_processor() {
    check(&run(
        "clip-tiny",
        "reference/reference.json",
        PixelSpec::clip(),
    ));
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
    let err = PixelSpec::from_hf_json(&bad, PixelSpec::clip())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`size`") && err.contains("shortest_edge"),
        "{err}"
    );
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
