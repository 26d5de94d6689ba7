//! `curate embed`: CLIP embeddings against the transformers reference
//! (`fixtures/models/clip-tiny`, made by `fixtures/models/make_clip_tiny.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type};
use arrow_array::Array;

use crate::common::{curate, ingest, read_images, repo, run, Run};

fn clip() -> PathBuf {
    repo().join("fixtures/models/clip-tiny")
}

/// Reference embeddings by fixture path (`photos/...`), L2-normalised.
fn reference() -> BTreeMap<String, Vec<f32>> {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(clip().join("reference/reference.json")).unwrap(),
    )
    .unwrap();
    r["photos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let v: Vec<f32> = p["image_embeds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            (
                p["path"].as_str().unwrap().to_string(),
                v.iter().map(|x| x / n).collect(),
            )
        })
        .collect()
}

pub struct EmbRow {
    pub key: String,
    pub status: String,
    pub reason: Option<String>,
    pub embedding: Option<Vec<f32>>,
}

/// Every row of every shard of an embeddings stage, in shard order.
pub fn read_embeddings(stage: &Path) -> Vec<EmbRow> {
    let table = curate_core::schema::get("embeddings").unwrap();
    let files = crate::common::shard_files(stage);
    let mut out = Vec::new();
    for f in files {
        for b in curate_io::read_shard(&f, table).unwrap() {
            let keys = b.column(0).as_string::<i32>();
            let status = b.column(1).as_string::<i32>();
            let reason = b.column(2).as_string::<i32>();
            let emb = b.column(5).as_fixed_size_list();
            for i in 0..b.num_rows() {
                let embedding = emb.is_valid(i).then(|| {
                    let v = emb.value(i);
                    match v.data_type() {
                        arrow_schema::DataType::Float32 => {
                            v.as_primitive::<Float32Type>().values().to_vec()
                        }
                        _ => v
                            .as_primitive::<Float16Type>()
                            .values()
                            .iter()
                            .map(|h| h.to_f32())
                            .collect(),
                    }
                });
                out.push(EmbRow {
                    key: keys.value(i).to_string(),
                    status: status.value(i).to_string(),
                    reason: reason.is_valid(i).then(|| reason.value(i).to_string()),
                    embedding,
                });
            }
        }
    }
    out
}

pub fn embed(input: &Path, out: &Path, args: &[&str]) -> Run {
    run(curate()
        .arg("embed")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--model")
        .arg(clip())
        .args(args))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Embeddings of the photos by fixture path.
fn by_path(images: &Path, emb: &Path) -> BTreeMap<String, Vec<f32>> {
    let sources: BTreeMap<String, String> = read_images(images)
        .into_iter()
        .map(|r| (r.key, format!("photos/{}", r.source)))
        .collect();
    read_embeddings(emb)
        .into_iter()
        .map(|r| {
            assert_eq!(r.status, "ok", "{}: {:?}", r.key, r.reason);
            (sources[&r.key].clone(), r.embedding.unwrap())
        })
        .collect()
}

#[test]
fn embeddings_match_transformers_on_every_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(
        &repo().join("fixtures/images/photos"),
        &images,
        &["--shard-size", "8"],
    );
    let emb = tmp.path().join("emb");
    // Batches of 5 over shards of 8: full and partial batches both run.
    // No --decode-scale: the default is the exact decode.
    let r = embed(&images, &emb, &["--dtype", "f32", "--batch-size", "5"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(emb.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["config"]["decode_scale"], "full", "{manifest}");
    // The stage's first line names the decoder and the decode scale.
    let first = r.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("embed: JPEG decoding: ") && first.ends_with("--decode-scale full"),
        "{first}"
    );
    if std::env::var_os("CURATE_REQUIRE_TURBOJPEG").is_some() {
        assert!(first.contains("JPEG decoding: libjpeg-turbo ("), "{first}");
    }
    let ours = by_path(&images, &emb);
    let reference = reference();
    assert_eq!(ours.len(), reference.len());
    let mut worst = 1.0f32;
    for (path, want) in &reference {
        let got = &ours[path];
        let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "{path}: stored embedding has norm {norm}"
        );
        let c = cosine(got, want);
        worst = worst.min(c);
        assert!(
            c >= 0.999,
            "{path}: cosine {c} to the transformers embedding"
        );
    }
    eprintln!("lowest cosine to the transformers reference: {worst:.6}");
    // The shards are aligned 1:1 with the image shards.
    let keys_in: Vec<String> = read_images(&images).into_iter().map(|r| r.key).collect();
    let keys_out: Vec<String> = read_embeddings(&emb).into_iter().map(|r| r.key).collect();
    assert_eq!(keys_in, keys_out);
}

#[test]
fn open_clip_style_export_with_its_tensor_names_gives_the_same_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos/more"), &images, &[]);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let r = embed(&images, &a, &["--dtype", "f32"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(curate()
        .arg("embed")
        .arg(&images)
        .arg("-o")
        .arg(&b)
        .arg("--model")
        .arg(clip().join("openclip/visual.onnx"))
        .args([
            "--input-name",
            "image",
            "--output-name",
            "embedding",
            "--dtype",
            "f32",
        ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (a, b) = (read_embeddings(&a), read_embeddings(&b));
    assert_eq!(a.len(), 7);
    for (x, y) in a.iter().zip(&b) {
        let (x, y) = (x.embedding.as_ref().unwrap(), y.embedding.as_ref().unwrap());
        assert!(x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-5));
    }
}

#[test]
fn f16_storage_stays_within_half_precision_of_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos/more"), &images, &[]);
    let (a, b) = (tmp.path().join("f32"), tmp.path().join("f16"));
    assert_eq!(embed(&images, &a, &["--dtype", "f32"]).code, 0);
    let r = embed(&images, &b, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (x, y) in read_embeddings(&a).iter().zip(&read_embeddings(&b)) {
        let (x, y) = (x.embedding.as_ref().unwrap(), y.embedding.as_ref().unwrap());
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() <= 1e-3, "{p} vs {q}");
            assert_ne!(*p, 0.0);
        }
    }
}

#[test]
fn failed_images_are_rows_with_reasons_and_the_rest_is_embedded() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(
        &repo().join("fixtures/images"),
        &images,
        &["--shard-size", "6"],
    );
    let emb = tmp.path().join("emb");
    let r = embed(&images, &emb, &["--batch-size", "4"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let inputs = read_images(&images);
    let rows = read_embeddings(&emb);
    assert_eq!(inputs.len(), rows.len());
    let mut failed = 0;
    for (i, o) in inputs.iter().zip(&rows) {
        assert_eq!(i.key, o.key);
        if i.status == curate_core::record::Status::Ok {
            assert_eq!(o.status, "ok", "{}: {:?}", i.source, o.reason);
            assert!(o.embedding.is_some());
        } else {
            failed += 1;
            assert_eq!(o.status, "error");
            assert_eq!(o.reason.as_deref(), Some("source_error"));
            assert!(o.embedding.is_none());
        }
    }
    assert!(failed >= 5, "the odd fixtures include failures ({failed})");
}

#[test]
fn wrong_tensor_names_list_what_the_model_has() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos/more"), &images, &[]);
    let r = embed(
        &images,
        &tmp.path().join("e"),
        &["--output-name", "pooler_output"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("expected output `pooler_output`")
            && r.stderr.contains("`image_embeds` Tensor<f32>"),
        "{}",
        r.stderr
    );
    let r = embed(&images, &tmp.path().join("e"), &["--input-name", "image"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("expected input `image`") && r.stderr.contains("`pixel_values`"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_model_folder_without_the_model_names_what_it_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos/more"), &images, &[]);
    let empty = tmp.path().join("model");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("config.json"), "{}").unwrap();
    let r = run(curate()
        .arg("embed")
        .arg(&images)
        .arg("-o")
        .arg(tmp.path().join("e"))
        .arg("--model")
        .arg(&empty));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("expected onnx/vision_model.onnx or")
            && r.stderr.contains("found config.json"),
        "{}",
        r.stderr
    );
}

#[test]
fn cuda_without_a_cuda_runtime_fails_instead_of_falling_back() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos/more"), &images, &[]);
    let r = embed(&images, &tmp.path().join("e"), &["--device", "cuda:0"]);
    if r.code == 0 {
        // A machine with the GPU wheel and a GPU: then it must have run on CUDA.
        assert!(!r.stderr.contains("CPUExecutionProvider"), "{}", r.stderr);
        return;
    }
    assert!(r.stderr.contains("CUDAExecutionProvider"), "{}", r.stderr);
    assert!(!tmp.path().join("e").join("part-00000.parquet").exists());
}

#[test]
fn killed_embed_resumes_and_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(
        &repo().join("fixtures/images/photos"),
        &images,
        &["--shard-size", "4"],
    );
    let whole = tmp.path().join("whole");
    assert_eq!(embed(&images, &whole, &["--dtype", "f32"]).code, 0);

    let out = tmp.path().join("killed");
    let mut child = curate()
        .arg("embed")
        .arg(&images)
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(clip())
        .args(["--dtype", "f32", "--batch-size", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crate::resume::wait_for_line(&mut child, "shard 2 complete");
    child.kill().unwrap();
    child.wait().unwrap();
    let r = embed(&images, &out, &["--dtype", "f32", "--batch-size", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("skipped"), "{}", r.stderr);
    let (a, b) = (read_embeddings(&whole), read_embeddings(&out));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.key, y.key);
        let (x, y) = (x.embedding.as_ref().unwrap(), y.embedding.as_ref().unwrap());
        assert!(x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-5));
    }
}

#[test]
fn a_float16_export_is_accepted_and_stays_close_to_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos"), &images, &[]);
    let out = tmp.path().join("fp16");
    let r = run(curate()
        .arg("embed")
        .arg(&images)
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(clip().join("onnx/vision_model_fp16.onnx"))
        .args(["--dtype", "f32", "--decode-scale", "full"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ours = by_path(&images, &out);
    let mut worst = 1f32;
    for (path, want) in reference() {
        worst = worst.min(cosine(&ours[&path], &want));
    }
    eprintln!("float16 export: lowest cosine to the float32 transformers reference {worst:.6}");
    assert!(worst >= 0.999, "{worst}");
}
