//! `curate encode-latents` / `decode-latents`: selection, placement,
//! row groups by bucket, resume after SIGKILL, shard splits, bad records
//! and bad configurations; the stored latents end to end against Pillow +
//! diffusers (`latents_equal_pillow_and_diffusers_…`). The VAE alone against
//! diffusers is curate-gen's `vae_reference` test; the demo run's latents (selection
//! joined with keep list, scores and captions) in `check_demo_latents`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::{Array, RecordBatch};
use curate_vision::buckets::{self, Resolution};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::common::{curate, fixtures_images, ingest, read_images, repo, run, shard_files};
use crate::resume::wait_for_line;

pub fn vae() -> PathBuf {
    repo().join("fixtures/models/flux-vae-tiny/ae.safetensors")
}

/// One latents row, everything but the bytes' meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentRow {
    pub key: String,
    pub status: String,
    pub reason: Option<String>,
    pub bucket: Option<(u32, u32)>,
    pub latent: Option<Vec<u8>>,
    pub shape: Option<[u32; 3]>,
    pub caption: Option<String>,
    pub caption_task: Option<String>,
    pub score: Option<f32>,
    pub tag: Option<String>,
    pub orig: Option<(u32, u32)>,
    pub resized: Option<(u32, u32)>,
    pub crop: Option<(u32, u32)>,
}

fn rows_of(b: &RecordBatch) -> Vec<LatentRow> {
    let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
    let u = |n: &str| {
        b.column_by_name(n)
            .unwrap()
            .as_primitive::<UInt32Type>()
            .clone()
    };
    let (key, status, reason, caption, task, tag) = (
        s("key"),
        s("status"),
        s("reason"),
        s("caption"),
        s("caption_task"),
        s("tag"),
    );
    let (bh, bw, ow, oh, rw, rh, cl, ct) = (
        u("bucket_h"),
        u("bucket_w"),
        u("orig_width"),
        u("orig_height"),
        u("resized_width"),
        u("resized_height"),
        u("crop_left"),
        u("crop_top"),
    );
    let latent = b
        .column_by_name("latent")
        .unwrap()
        .as_binary::<i32>()
        .clone();
    let shape = b
        .column_by_name("latent_shape")
        .unwrap()
        .as_fixed_size_list()
        .clone();
    let score = b
        .column_by_name("score")
        .unwrap()
        .as_primitive::<Float32Type>()
        .clone();
    let opt =
        |a: &arrow_array::StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    let pair = |a: &arrow_array::UInt32Array, c: &arrow_array::UInt32Array, i: usize| {
        (a.is_valid(i) && c.is_valid(i)).then(|| (a.value(i), c.value(i)))
    };
    (0..b.num_rows())
        .map(|i| LatentRow {
            key: key.value(i).into(),
            status: status.value(i).into(),
            reason: opt(&reason, i),
            bucket: pair(&bh, &bw, i),
            latent: latent.is_valid(i).then(|| latent.value(i).to_vec()),
            shape: shape.is_valid(i).then(|| {
                let v = shape.value(i);
                let v = v.as_primitive::<UInt32Type>();
                [v.value(0), v.value(1), v.value(2)]
            }),
            caption: opt(&caption, i),
            caption_task: opt(&task, i),
            score: score.is_valid(i).then(|| score.value(i)),
            tag: opt(&tag, i),
            orig: pair(&ow, &oh, i),
            resized: pair(&rw, &rh, i),
            crop: pair(&cl, &ct, i),
        })
        .collect()
}

/// Every row of a latents stage, per shard file and row group.
pub fn read_latent_groups(stage: &Path) -> Vec<Vec<LatentRow>> {
    let mut groups = Vec::new();
    for f in shard_files(stage) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap()).unwrap();
        let n = builder.metadata().num_row_groups();
        for g in 0..n {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
                .unwrap()
                .with_row_groups(vec![g])
                .build()
                .unwrap();
            let mut rows = Vec::new();
            for b in reader {
                rows.extend(rows_of(&b.unwrap()));
            }
            groups.push(rows);
        }
    }
    groups
}

pub fn read_latents(stage: &Path) -> Vec<LatentRow> {
    read_latent_groups(stage).into_iter().flatten().collect()
}

fn by_key(rows: Vec<LatentRow>) -> BTreeMap<String, LatentRow> {
    let n = rows.len();
    let m: BTreeMap<String, LatentRow> = rows.into_iter().map(|r| (r.key.clone(), r)).collect();
    assert_eq!(m.len(), n, "every key once");
    m
}

fn encode(input: &Path, out: &Path, stage: &str, extra: &[&str]) -> std::process::Command {
    let mut c = curate();
    c.arg("encode-latents")
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(["--stage", stage, "--vae"])
        .arg(vae())
        .args([
            "--max-upscale",
            "4",
            "--batch-size",
            "2",
            "--rows-per-group",
            "3",
        ])
        .args(extra);
    c
}

/// The shape and row-group invariants of any latents stage.
fn check_layout(stage_dir: &Path, stage: Resolution) -> Vec<LatentRow> {
    let groups = read_latent_groups(stage_dir);
    assert!(!groups.is_empty());
    for g in &groups {
        let buckets: HashSet<Option<(u32, u32)>> = g.iter().map(|r| r.bucket).collect();
        assert_eq!(buckets.len(), 1, "one bucket per row group: {buckets:?}");
        let ok: HashSet<bool> = g.iter().map(|r| r.status == "ok").collect();
        assert_eq!(
            ok.len(),
            1,
            "ok rows and errors are in row groups of their own"
        );
    }
    let rows: Vec<LatentRow> = groups.into_iter().flatten().collect();
    for r in rows.iter().filter(|r| r.status == "ok") {
        let (bh, bw) = r.bucket.unwrap();
        assert!(stage.buckets().contains(&(bh, bw)), "{r:?}");
        assert_eq!(r.shape.unwrap(), [16, bh / 8, bw / 8]);
        assert_eq!(
            r.latent.as_ref().unwrap().len(),
            (16 * bh / 8 * bw / 8 * 2) as usize
        );
        let (rw, rh) = r.resized.unwrap();
        let (cl, ct) = r.crop.unwrap();
        assert!(cl + bw <= rw && ct + bh <= rh, "{r:?}");
        let (ow, oh) = r.orig.unwrap();
        // The crop box is the one the placement rule gives this key.
        let p = buckets::place(stage, ow, oh, &r.key, 0);
        assert_eq!(
            (
                (p.bucket_h, p.bucket_w),
                (p.resized_width, p.resized_height),
                (p.crop_left, p.crop_top)
            ),
            ((bh, bw), (rw, rh), (cl, ct))
        );
        // bf16 values are finite and not all equal.
        let vals: Vec<f32> = r
            .latent
            .as_ref()
            .unwrap()
            .chunks(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert!(vals.iter().all(|v| v.is_finite()));
        assert!(vals.iter().any(|v| *v != vals[0]));
    }
    rows
}

#[test]
fn encode_latents_records_bad_images_splits_and_resumes_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&fixtures_images(), &images, &["--shard-size", "8"]);
    let sources: HashMap<String, (String, Option<(u32, u32)>)> = read_images(&images)
        .into_iter()
        .map(|r| {
            let size = r.width.zip(r.height);
            (r.key, (r.source, size))
        })
        .collect();

    let reference = tmp.path().join("reference");
    let r = run(&mut encode(&images, &reference, "256", &[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = check_layout(&reference, Resolution::S256);
    // Every image once; errors upstream and images too small are rows with their reason.
    assert_eq!(rows.len(), sources.len());
    let reasons: BTreeMap<String, Option<String>> = rows
        .iter()
        .map(|r| (sources[&r.key].0.clone(), r.reason.clone()))
        .collect();
    assert_eq!(
        reasons["odd/truncated.jpg"].as_deref(),
        Some("source_error")
    );
    assert_eq!(
        reasons["odd/zero-byte.jpg"].as_deref(),
        Some("source_error")
    );
    // 200×51 needs a 5× upscale for a 256 crop (--max-upscale 4).
    assert_eq!(
        reasons["photos/more/rocket-pad.png"].as_deref(),
        Some("too_small")
    );
    assert_eq!(reasons["photos/chelsea-full.jpg"], None);
    for r in rows.iter().filter(|r| r.status == "ok") {
        assert_eq!(
            Some(r.orig.unwrap()),
            sources[&r.key].1,
            "{}",
            sources[&r.key].0
        );
    }
    assert!(rows.iter().filter(|r| r.status == "ok").count() >= 25);
    assert!(
        r.stderr.contains("images/s") && r.stderr.contains("peak RSS"),
        "{}",
        r.stderr
    );

    // Two Slurm-style tasks write the same rows.
    let split = tmp.path().join("split");
    for i in ["0", "1"] {
        let r = run(&mut encode(
            &images,
            &split,
            "256",
            // The old spellings of --task-index/--num-tasks stay accepted (hidden).
            &["--shard-index", i, "--num-shards", "2"],
        ));
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    assert_eq!(by_key(read_latents(&split)), by_key(rows.clone()));

    // SIGKILL with shard 1 half written, then rerun: the same table.
    let killed = tmp.path().join("killed");
    let mut child = encode(&images, &killed, "256", &[])
        .env("CURATE_TEST_STALL_AFTER_ROWS", "10")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = wait_for_line(&mut child, "stalled after");
    assert!(killed.join("part-00000.parquet").exists(), "{seen:?}");
    assert!(!killed.join("part-00001.parquet").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    let r = run(&mut encode(&images, &killed, "256", &[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("1 skipped"), "{}", r.stderr);
    assert_eq!(read_latents(&killed), read_latents(&reference));

    // Stage 512 on the same images: valid buckets, crops as the rule says.
    let s512 = tmp.path().join("s512");
    let r = run(&mut encode(&images, &s512, "512", &["--dtype", "bf16"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows512 = check_layout(&s512, Resolution::S512);
    let buckets: HashSet<(u32, u32)> = rows512.iter().filter_map(|r| r.bucket).collect();
    assert!(
        buckets.len() >= 3,
        "the fixtures' aspect ratios use several buckets: {buckets:?}"
    );

    // decode-latents: PNGs of the bucket's size.
    let pngs = tmp.path().join("pngs");
    let r = run(curate()
        .arg("decode-latents")
        .arg(&s512)
        .arg("-o")
        .arg(&pngs)
        .arg("--vae")
        .arg(vae())
        .args(["--limit", "2"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut decoded: Vec<_> = std::fs::read_dir(&pngs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    decoded.sort();
    assert_eq!(decoded.len(), 2);
    let ok512 = by_key(rows512);
    for p in decoded {
        let key = p.file_stem().unwrap().to_string_lossy().into_owned();
        let (bh, bw) = ok512[&key].bucket.unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.height(), img.width()), (bh, bw));
    }
}

#[test]
fn encode_latents_bad_configuration_stops_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos/more"), &images, &[]);
    let missing = tmp.path().join("nowhere/ae.safetensors");
    let r = run(curate()
        .arg("encode-latents")
        .arg(&images)
        .arg("-o")
        .arg(tmp.path().join("out"))
        .args(["--stage", "256", "--vae"])
        .arg(&missing));
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("nowhere") && r.stderr.contains("ae.safetensors"),
        "{}",
        r.stderr
    );

    // A safetensors file that is not a FLUX VAE: the error names what was expected and found.
    let other = repo().join("fixtures/models/aesthetic-head-tiny");
    let file = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .expect("a safetensors fixture");
    let r = run(curate()
        .arg("encode-latents")
        .arg(&images)
        .arg("-o")
        .arg(tmp.path().join("out2"))
        .args(["--stage", "512", "--vae"])
        .arg(&file));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("encoder.conv_in.weight"), "{}", r.stderr);
    assert!(!tmp.path().join("out2/part-00000.parquet").exists());

    // The input must be an image stage.
    let r = run(&mut encode(
        &tmp.path().join("nothing"),
        &tmp.path().join("out3"),
        "256",
        &[],
    ));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not a stage directory"), "{}", r.stderr);
}

/// The demo run's latents: keep ∩ not dropped, joined with captions and tags.
pub fn check_demo_latents(work: &Path) {
    let keep: HashSet<String> = {
        let t = curate_core::schema::get("dedup_keep").unwrap();
        curate_io::read_columns(&work.join("dedup/keep.parquet"), t, Some(&["key"]))
            .unwrap()
            .iter()
            .flat_map(|b| {
                let k = b.column(0).as_string::<i32>();
                (0..b.num_rows())
                    .map(|i| k.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let scores: HashMap<String, crate::score::ScoreRow> =
        crate::score::read_scores(&work.join("score"))
            .into_iter()
            .map(|r| (r.key.clone(), r))
            .collect();
    let captions: HashMap<(String, String), String> =
        crate::caption::read_captions(&work.join("caption"))
            .into_iter()
            .filter_map(|c| Some(((c.key, c.task), c.caption?)))
            .collect();
    let expected: HashSet<String> = keep
        .iter()
        .filter(|k| {
            scores
                .get(*k)
                .is_some_and(|s| s.score.is_some() && !s.is_dropped())
        })
        .cloned()
        .collect();
    assert!(!expected.is_empty(), "the demo keeps some images");
    for (dir, stage) in [
        ("latents-256", Resolution::S256),
        ("latents-512", Resolution::S512),
    ] {
        let rows = check_layout(&work.join(dir), stage);
        let got: HashSet<String> = rows.iter().map(|r| r.key.clone()).collect();
        assert_eq!(got, expected, "{dir}: keep list ∩ not dropped by score");
        for r in &rows {
            let s = &scores[&r.key];
            assert_eq!(r.score, s.score);
            assert_eq!(r.tag, s.tag_of());
            let task = r
                .caption_task
                .clone()
                .expect("every kept image was captioned");
            let base = &captions[&(r.key.clone(), task)];
            let want = match &r.tag {
                Some(t) => format!("{base}, {t}"),
                None => base.clone(),
            };
            assert_eq!(r.caption.as_deref(), Some(want.as_str()));
        }
        let tasks: HashSet<&str> = rows
            .iter()
            .filter_map(|r| r.caption_task.as_deref())
            .collect();
        assert!(
            tasks.len() >= 2,
            "{dir}: the mix picks several tasks: {tasks:?}"
        );
    }
}

/// One row of `fixtures/gen/latents_reference.parquet`: what Pillow and
/// diffusers make of a photo at the placement the stage chose.
struct Reference {
    stage: u16,
    source: String,
    sha256: String,
    key: String,
    orig: (u32, u32),
    resized: (u32, u32),
    crop: (u32, u32),
    bucket: (u32, u32),
    latent: Vec<f32>,
}

fn latents_reference() -> (Vec<Reference>, BTreeMap<String, PathBuf>) {
    let path = repo().join("fixtures/gen/latents_reference.parquet");
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
    let meta = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap();
    let origins = &meta.iter().find(|kv| kv.key == "origins").unwrap().value;
    let origins: BTreeMap<String, String> =
        serde_json::from_str(origins.as_ref().unwrap()).unwrap();
    let origins = origins
        .into_iter()
        .map(|(name, p)| {
            let p = PathBuf::from(p);
            (name, if p.is_absolute() { p } else { repo().join(p) })
        })
        .collect();
    let mut out = Vec::new();
    for b in builder.build().unwrap() {
        let b = b.unwrap();
        let u32s = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_primitive::<UInt32Type>()
                .clone()
        };
        let strs = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
        let stage = b
            .column_by_name("stage")
            .unwrap()
            .as_primitive::<arrow_array::types::UInt16Type>()
            .clone();
        let (source, sha, key) = (strs("source"), strs("sha256"), strs("key"));
        let (ow, oh, rw, rh) = (
            u32s("orig_width"),
            u32s("orig_height"),
            u32s("resized_width"),
            u32s("resized_height"),
        );
        let (cl, ct, bw, bh) = (
            u32s("crop_left"),
            u32s("crop_top"),
            u32s("bucket_w"),
            u32s("bucket_h"),
        );
        let lat = b
            .column_by_name("latent_f16")
            .unwrap()
            .as_binary::<i32>()
            .clone();
        for i in 0..b.num_rows() {
            out.push(Reference {
                stage: stage.value(i),
                source: source.value(i).to_string(),
                sha256: sha.value(i).to_string(),
                key: key.value(i).to_string(),
                orig: (ow.value(i), oh.value(i)),
                resized: (rw.value(i), rh.value(i)),
                crop: (cl.value(i), ct.value(i)),
                bucket: (bh.value(i), bw.value(i)),
                latent: lat
                    .value(i)
                    .chunks(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            });
        }
    }
    (out, origins)
}

/// encode-latents end to end, with its defaults (exact decode, bf16
/// storage), against Pillow (EXIF transpose, RGB, bicubic resize, crop) and
/// diffusers' `AutoencoderKL.encode(...).latent_dist.mean` shifted and
/// scaled, on the tiny FLUX VAE: both stages, four stage-512 buckets, fixture
/// photos (grey, EXIF-rotated, upscaled) and real ones from Debian's
/// opencv-doc. Recorded by `fixtures/gen/make_latents_reference.py`.
#[test]
fn latents_equal_pillow_and_diffusers_for_both_stages_and_several_buckets() {
    let (reference, origins) = latents_reference();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for (name, from) in &origins {
        let bytes = std::fs::read(from).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; the opencv-doc photos come from Debian's opencv-doc (apt-get install opencv-doc, as .ci/run does)",
                from.display()
            )
        });
        let want = &reference.iter().find(|r| &r.source == name).unwrap().sha256;
        assert_eq!(
            &curate_core::hash::sha256_hex(&bytes),
            want,
            "{} is not the file the reference was recorded from",
            from.display()
        );
        let to = src.join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(&to, bytes).unwrap();
    }
    let images = tmp.path().join("images");
    // `--store original`: with `auto`, ingest re-encodes an EXIF-rotated
    // JPEG upright at q95 and the stage would encode that copy (its latents
    // are then up to 0.52 off the reference, against 4e-3 for the others).
    // The rotation itself is the decoder's here, as it is Pillow's.
    assert_eq!(ingest(&src, &images, &["--store", "original"]).code, 0);
    let mut compared = BTreeMap::new();
    for stage in ["256", "512"] {
        let out = tmp.path().join(format!("latents-{stage}"));
        let r = run(curate()
            .arg("encode-latents")
            .arg(&images)
            .arg("-o")
            .arg(&out)
            .args(["--stage", stage, "--vae"])
            .arg(vae())
            .args(["--max-upscale", "4"]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let rows = by_key(read_latents(&out));
        for want in reference.iter().filter(|w| w.stage.to_string() == stage) {
            let got = &rows[&want.key];
            let what = format!("stage {stage} {}", want.source);
            assert_eq!(got.status, "ok", "{what}: {got:?}");
            assert_eq!(
                (got.orig, got.resized, got.crop, got.bucket),
                (
                    Some(want.orig),
                    Some(want.resized),
                    Some(want.crop),
                    Some(want.bucket)
                ),
                "{what}: placement"
            );
            let vals: Vec<f32> = got
                .latent
                .as_ref()
                .unwrap()
                .chunks(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            assert_eq!(vals.len(), want.latent.len(), "{what}");
            // bf16 keeps 8 significant bits: rounding moves a value by at
            // most 2^-9 of itself; allow twice that plus the f32 compute
            // difference between candle and torch.
            let mut worst = 0f32;
            for (a, b) in vals.iter().zip(&want.latent) {
                let excess = (a - b).abs() - (2f32.powi(-8) * b.abs() + 2e-4);
                worst = worst.max((a - b).abs());
                assert!(excess <= 0.0, "{what}: {a} vs reference {b}");
            }
            eprintln!("{what}: max |Δ| {worst:.2e}");
            *compared.entry(stage).or_insert(0) += 1;
        }
    }
    assert_eq!(compared.values().sum::<usize>(), reference.len());
    assert!(compared["256"] >= 5 && compared["512"] >= 5, "{compared:?}");
    let buckets: HashSet<(u32, u32)> = reference
        .iter()
        .filter(|r| r.stage == 512)
        .map(|r| r.bucket)
        .collect();
    assert!(buckets.len() >= 4, "{buckets:?}");
}
