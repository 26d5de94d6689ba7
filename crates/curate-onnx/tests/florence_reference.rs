//! Florence-2 through ONNX Runtime against transformers' `generate` on the
//! same tiny random weights (`fixtures/models/florence2-tiny`, made by
//! `fixtures/models/make_florence2_tiny.py`): token ids equal, greedy and
//! beam search, single images and padded batches; texts equal
//! `batch_decode(skip_special_tokens=True)`.

use std::path::PathBuf;

use curate_onnx::florence::Florence;
use curate_onnx::session::ModelOptions;
use curate_vision::preprocess::{load_rgb, DecodeScale, PixelSpec};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn runtime() -> &'static curate_onnx::Runtime {
    let home = repo().join(".curate");
    curate_onnx::init(&[home.join("onnxruntime-gpu"), home.join("onnxruntime")])
        .expect("ONNX Runtime (run `cargo run -- setup` first)")
}

fn model_dir() -> PathBuf {
    repo().join("fixtures/models/florence2-tiny")
}

fn load(beams: usize, kv_cache: bool) -> Florence {
    let mut f = Florence::load(runtime(), &model_dir(), "", &ModelOptions::default()).unwrap();
    f.gen.max_new_tokens = 20;
    f.gen.num_beams = beams;
    f.gen.kv_cache = kv_cache;
    f
}

fn pixels(spec: &PixelSpec, photos: &[&str]) -> Vec<f32> {
    let tables = spec.tables();
    let (h, w) = spec.fixed_hw().unwrap();
    let mut out = Vec::new();
    for p in photos {
        let bytes = std::fs::read(repo().join("fixtures/images").join(p)).unwrap();
        let loaded = load_rgb(
            &bytes,
            &curate_vision::Limits::default(),
            spec,
            DecodeScale::Full,
        )
        .unwrap();
        let pic = spec.resize_crop(&loaded.rgb);
        let mut buf = vec![0f32; (3 * h * w) as usize];
        PixelSpec::to_chw(&pic, &tables, &mut buf);
        out.extend(buf);
    }
    out
}

fn cases() -> Vec<serde_json::Value> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("reference.json")).unwrap())
            .unwrap();
    r["cases"].as_array().unwrap().clone()
}

/// A JSON array of strings.
fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

/// JPEG pixels equal Pillow's only through libjpeg-turbo; a one-level
/// difference flips tokens of random weights, so without it JPEG cases are skipped.
fn usable(case: &serde_json::Value) -> bool {
    curate_vision::turbo::available()
        || case["photos"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p.as_str().unwrap().ends_with(".jpg"))
}

fn check(mode: &str) {
    let beams = if mode == "greedy" { 1 } else { 3 };
    let mut f = load(beams, true);
    let (mut checked, mut skipped) = (0, 0);
    for case in cases().iter().filter(|c| c["mode"] == mode) {
        if !usable(case) {
            skipped += 1;
            continue;
        }
        let (photos, prompts) = (strings(&case["photos"]), strings(&case["prompts"]));
        let (input_ids, mask) = f.tokenize(&prompts).unwrap();
        assert_eq!(
            input_ids,
            ids(&case["input_ids"]),
            "case {}: prompt tokens",
            case["id"]
        );
        assert_eq!(mask, ids(&case["attention_mask"]));
        let px = pixels(&f.spec, &photos);
        let got = f.generate(&px, &prompts).unwrap();
        assert_eq!(
            got,
            ids(&case["sequences"]),
            "case {} ({mode}, {photos:?})",
            case["id"]
        );
        for (seq, text) in got.iter().zip(case["texts"].as_array().unwrap()) {
            assert_eq!(
                f.decode(seq).unwrap(),
                text.as_str().unwrap(),
                "case {}",
                case["id"]
            );
        }
        checked += 1;
    }
    eprintln!("{mode}: {checked} cases token-exact, {skipped} skipped (no libjpeg-turbo)");
    if std::env::var_os("CURATE_REQUIRE_TURBOJPEG").is_some() {
        assert_eq!(skipped, 0);
    }
    assert!(checked >= 20, "{checked} cases checked");
}

#[test]
fn greedy_token_ids_equal_transformers() {
    check("greedy");
}

#[test]
fn beam_search_token_ids_equal_transformers() {
    check("beam");
}

#[test]
fn without_the_kv_cache_the_tokens_are_the_same() {
    for (mode, beams) in [("greedy", 1), ("beam", 3)] {
        let mut on = load(beams, true);
        let mut off = load(beams, false);
        let case = cases()
            .into_iter()
            .find(|c| c["mode"] == mode && c["kind"] == "batch" && usable(c))
            .unwrap();
        let (photos, prompts) = (strings(&case["photos"]), strings(&case["prompts"]));
        let px = pixels(&on.spec, &photos);
        let a = on.generate(&px, &prompts).unwrap();
        let b = off.generate(&px, &prompts).unwrap();
        assert_eq!(a, b, "{mode}");
        assert_eq!(a, ids(&case["sequences"]));
    }
}

#[test]
fn a_missing_file_or_a_wrong_model_names_what_was_expected() {
    let tmp = std::env::temp_dir().join(format!("florence-broken-{}", std::process::id()));
    let onnx = tmp.join("onnx");
    std::fs::create_dir_all(&onnx).unwrap();
    for f in [
        "tokenizer.json",
        "preprocessor_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(model_dir().join(f), tmp.join(f)).unwrap();
    }
    for f in [
        "vision_encoder.onnx",
        "embed_tokens.onnx",
        "encoder_model.onnx",
    ] {
        std::fs::copy(model_dir().join("onnx").join(f), onnx.join(f)).unwrap();
    }
    let err = Florence::load(runtime(), &tmp, "", &ModelOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("expected onnx/decoder_model_merged.onnx"),
        "{err}"
    );
    assert!(
        err.contains("onnx/encoder_model.onnx"),
        "lists what is there: {err}"
    );
    // A decoder that is not one: its tensors are named.
    std::fs::copy(
        onnx.join("encoder_model.onnx"),
        onnx.join("decoder_model_merged.onnx"),
    )
    .unwrap();
    let err = Florence::load(runtime(), &tmp, "", &ModelOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("expected input `encoder_attention_mask`") && err.contains("`attention_mask`"),
        "{err}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
