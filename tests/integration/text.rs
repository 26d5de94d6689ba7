//! `curate encode-text` (issue #23): the demo's training texts encoded once
//! by T5 train exactly as the captions encoded on the fly; bad inputs stop
//! with one message naming what was expected and what was found.

use std::path::{Path, PathBuf};

use curate_gen::train::data::{write_latent_stage, LatentDtype, LatentRow};
use curate_io::text_embeddings::{self, TextRow, UNCONDITIONAL_FILE};

use crate::common::*;

fn t5() -> PathBuf {
    repo().join("fixtures/gen/t5-tiny")
}

fn encode_text(input: &Path, out: &Path, extra: &[&str]) -> Run {
    run(curate()
        .arg("encode-text")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--text-encoder")
        .arg(t5())
        .args(["--max-length", "16"])
        .args(extra))
}

fn train(latents: &Path, out: &Path, text: &[&str]) -> Run {
    run(curate()
        .arg("train")
        .arg(latents)
        .arg("-o")
        .arg(out)
        .arg("--config")
        .arg(repo().join("pipelines/configs/dit-tiny.json"))
        .args(["--steps", "10", "--seed", "9", "--batch-size", "4"])
        .args(text))
}

fn losses(out: &Path) -> Vec<f32> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["loss"].as_f64().unwrap() as f32
        })
        .collect()
}

fn text_rows(stage: &Path) -> Vec<TextRow> {
    shard_files(stage)
        .iter()
        .flat_map(|p| text_embeddings::read_all(p).unwrap())
        .collect()
}

fn latent_keys(stage: &Path) -> Vec<(String, Option<String>, bool)> {
    shard_files(stage)
        .iter()
        .flat_map(|p| {
            curate_io::read_columns(
                p,
                curate_io::latents::table(),
                Some(&["key", "status", "caption"]),
            )
            .unwrap()
        })
        .flat_map(|b| {
            use arrow_array::cast::AsArray;
            use arrow_array::Array;
            let (k, s, c) = (
                b.column(0).as_string::<i32>().clone(),
                b.column(1).as_string::<i32>().clone(),
                b.column(2).as_string::<i32>().clone(),
            );
            (0..b.num_rows())
                .map(|i| {
                    (
                        k.value(i).to_string(),
                        c.is_valid(i).then(|| c.value(i).to_string()),
                        s.value(i) == "ok",
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn stored_texts_train_with_the_losses_of_t5_on_the_fly_on_the_demo() {
    let work = &demo().work;
    let latents = work.join("latents-256");
    let tmp = tempfile::tempdir().unwrap();

    // The demo's own text stage (bf16) mirrors its latents row for row.
    let demo_text = work.join("text-256");
    let rows = text_rows(&demo_text);
    let lat = latent_keys(&latents);
    assert!(lat.len() >= 8, "{} latents rows", lat.len());
    assert_eq!(rows.len(), lat.len());
    let mut encoded = 0;
    for (t, (key, caption, ok)) in rows.iter().zip(&lat) {
        assert_eq!(&t.key, key);
        match (ok, caption) {
            (true, Some(c)) => {
                assert!(t.is_ok(), "{t:?}");
                assert_eq!(t.caption.as_ref(), Some(c));
                let n = t.num_tokens.unwrap() as usize;
                assert!((1..=16).contains(&n));
                assert_eq!(t.hidden.as_ref().unwrap().len(), n * 32 * 2, "bf16 [n, 32]");
                assert!(t.to_f32(32).unwrap().iter().all(|v| v.is_finite()));
                encoded += 1;
            }
            (true, None) => assert_eq!(t.reason.as_deref(), Some("no_caption")),
            (false, _) => assert_eq!(t.reason.as_deref(), Some("source_error")),
        }
    }
    assert!(encoded >= 8, "{encoded} texts encoded");
    let uncond = text_embeddings::read_all(&demo_text.join(UNCONDITIONAL_FILE)).unwrap();
    assert_eq!(uncond.len(), 1);
    assert_eq!(
        (uncond[0].key.as_str(), uncond[0].num_tokens),
        ("", Some(1))
    );
    assert!(
        losses(&work.join("train")).len() >= 12,
        "the demo trained on its stored texts"
    );

    // Two array tasks writing their shares give the one-process stage's rows.
    let split = tmp.path().join("split");
    for task in ["0", "1"] {
        let r = encode_text(
            &latents,
            &split,
            &["--num-tasks", "2", "--task-index", task],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    assert_eq!(text_rows(&split), rows);
    assert!(split.join(UNCONDITIONAL_FILE).exists());

    // f32 storage: the same losses as T5 run on the fly, bit for bit (caption
    // dropout 0.1 exercises the stored empty text).
    let f32_text = tmp.path().join("text-f32");
    let r = encode_text(
        &latents,
        &f32_text,
        &["--dtype", "f32", "--batch-size", "3"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fly = tmp.path().join("fly");
    let r = train(&latents, &fly, &["--text-encoder", t5().to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let stored = tmp.path().join("stored");
    let r = train(&latents, &stored, &["--text", f32_text.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (want, got) = (losses(&fly), losses(&stored));
    assert_eq!(want.len(), 10);
    assert_eq!(
        got.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        "stored f32 texts: {got:?}, on the fly: {want:?}"
    );

    // bf16 storage (the default): the same losses within bf16 rounding of the text.
    let bf16 = tmp.path().join("bf16");
    let r = train(&latents, &bf16, &["--text", demo_text.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let worst = losses(&bf16)
        .iter()
        .zip(&want)
        .map(|(a, b)| ((a - b) / b).abs())
        .fold(0f32, f32::max);
    eprintln!("bf16 texts: losses within {worst:e} (relative) of on-the-fly T5");
    assert!(
        worst < 1e-4,
        "bf16 texts move the losses by {worst} (relative)"
    );
}

#[test]
fn encode_text_stops_on_bad_inputs_naming_what_was_expected_and_found() {
    let tmp = tempfile::tempdir().unwrap();
    let work = &demo().work;

    // A stage that is not latents.
    let r = encode_text(&work.join("images"), &tmp.path().join("a"), &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("expected a stage writing latents, found `fetch` writing images"),
        "{}",
        r.stderr
    );

    // Latents without captions (encode-latents run without --captions).
    let bare = tmp.path().join("bare");
    let rows: Vec<LatentRow> = (0..3)
        .map(|i| {
            LatentRow::from_values(
                &format!("k{i}"),
                None,
                &[0.0; 16 * 4],
                [16, 2, 2],
                LatentDtype::Bf16,
            )
        })
        .collect();
    write_latent_stage(&bare, &rows, 4).unwrap();
    let r = encode_text(&bare, &tmp.path().join("b"), &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("expected a latents stage with captions")
            && r.stderr.contains("caption_mix is empty"),
        "{}",
        r.stderr
    );

    // A T5 folder whose config says another hidden size than its weights.
    let wrong = tmp.path().join("t5-wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(t5().join(f), wrong.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(t5().join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    cfg["d_model"] = 48.into();
    std::fs::write(wrong.join("config.json"), cfg.to_string()).unwrap();
    let r = run(curate()
        .arg("encode-text")
        .arg(work.join("latents-256"))
        .arg("-o")
        .arg(tmp.path().join("c"))
        .arg("--text-encoder")
        .arg(&wrong));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("t5-wrong/model.safetensors")
            && r.stderr.contains("has shape [32], expected [48]"),
        "{}",
        r.stderr
    );

    // Text shards whose width is not the DiT's text_dim.
    let dit = tmp.path().join("dit-wide.json");
    let cfg = std::fs::read_to_string(repo().join("pipelines/configs/dit-tiny.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    cfg["model"]["text_dim"] = 64.into();
    std::fs::write(&dit, cfg.to_string()).unwrap();
    let r = run(curate()
        .arg("train")
        .arg(work.join("latents-256"))
        .arg("-o")
        .arg(tmp.path().join("d"))
        .arg("--config")
        .arg(&dit)
        .arg("--text")
        .arg(work.join("text-256"))
        .args(["--steps", "1"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("d_model is 32, the DiT config's text_dim 64"),
        "{}",
        r.stderr
    );

    // Latents whose keys have no text shard: the 512 latents with the 256 texts.
    let r = train(
        &work.join("latents-512"),
        &tmp.path().join("e"),
        &["--text", work.join("text-256").to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("latents-512")
            && r.stderr.contains("no text shards for its keys")
            && r.stderr
                .contains("expected an encode-text stage made from it")
            && r.stderr.contains("latents-256"),
        "{}",
        r.stderr
    );
}
