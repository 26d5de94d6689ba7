//! `curate ingest` on the fixture folder: every odd image gets the outcome
//! the Pillow reference (fixtures/images/expected.json) says, the run exits 0.

use std::collections::HashMap;

use curate_core::record::{record_key, Status, Stored};
use serde_json::Value;

use crate::common::*;

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixtures_images().join("expected.json")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

fn mean_rgb(img: &image::RgbImage, quarter: bool) -> [f64; 3] {
    let (w, h) = img.dimensions();
    let (w, h) = if quarter { (w / 2, h / 2) } else { (w, h) };
    let mut s = [0f64; 3];
    for y in 0..h {
        for x in 0..w {
            let p = img.get_pixel(x, y);
            for c in 0..3 {
                s[c] += p[c] as f64;
            }
        }
    }
    s.map(|v| v / (w * h) as f64)
}

#[test]
fn every_fixture_gets_the_reference_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("images");
    let r = ingest(&fixtures_images(), &out, &["--shard-size", "7"]);
    let records = read_images(&out);
    let by_source: HashMap<&str, _> = records.iter().map(|r| (r.source.as_str(), r)).collect();
    assert_eq!(by_source.len(), records.len(), "a source appears twice");

    let expected = expected();
    let mut checked_ok = 0;
    let mut checked_err = 0;
    for (path, exp) in &expected {
        let status = exp["status"].as_str().unwrap();
        if status == "ignored" {
            assert!(
                !by_source.contains_key(path.as_str()),
                "{path} should be ignored"
            );
            continue;
        }
        let rec = by_source
            .get(path.as_str())
            .unwrap_or_else(|| panic!("{path} missing from the shards"));
        assert_eq!(rec.key, record_key(&format!("file:{path}")));
        assert_eq!(
            rec.sha256.as_deref(),
            exp["sha256"].as_str(),
            "{path}: sha256"
        );
        assert_eq!(
            rec.file_size,
            std::fs::metadata(fixtures_images().join(path))
                .unwrap()
                .len()
        );
        assert_eq!(
            rec.format.as_deref(),
            exp["format"].as_str(),
            "{path}: format"
        );
        if status == "error" {
            checked_err += 1;
            assert_eq!(rec.status, Status::Error, "{path}: {rec:?}");
            assert_eq!(
                rec.reason.as_deref(),
                exp["reason"].as_str(),
                "{path}: reason ({:?})",
                rec.error
            );
            assert!(
                rec.error.as_ref().is_some_and(|e| !e.is_empty()),
                "{path}: no message"
            );
            assert!(rec.bytes.is_none());
            continue;
        }
        checked_ok += 1;
        assert_eq!(rec.status, Status::Ok, "{path}: {:?}", rec.error);
        assert_eq!(rec.mode.as_deref(), exp["mode"].as_str(), "{path}: mode");
        assert_eq!(
            rec.width,
            exp["width"].as_u64().map(|v| v as u32),
            "{path}: width"
        );
        assert_eq!(
            rec.height,
            exp["height"].as_u64().map(|v| v as u32),
            "{path}: height"
        );
        assert_eq!(
            rec.orientation,
            exp["orientation"].as_u64().map(|v| v as u8),
            "{path}: orientation"
        );

        // The stored bytes decode to the upright image Pillow sees.
        let bytes = rec.bytes.as_ref().unwrap();
        let decoded = curate_vision::decode(bytes, &curate_vision::Limits::default()).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (rec.width.unwrap(), rec.height.unwrap()),
            "{path}"
        );
        let rgb = curate_vision::to_rgb8(&decoded.image);
        for (key, quarter, tol) in [("mean_rgb", false, 1.0), ("mean_rgb_top_left", true, 1.5)] {
            let want: Vec<f64> = exp[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = mean_rgb(&rgb, quarter);
            for c in 0..3 {
                assert!(
                    (got[c] - want[c]).abs() <= tol,
                    "{path}: {key} {got:?} vs Pillow {want:?}"
                );
            }
        }
        // Plain sources keep their bytes; the rest are made upright 8-bit RGB.
        let plain = matches!(rec.mode.as_deref(), Some("rgb8" | "l8"))
            && rec.orientation == Some(1)
            && rec.format.as_deref() != Some("gif");
        if plain {
            assert_eq!(rec.stored, Some(Stored::Original), "{path}");
            assert_eq!(bytes, &std::fs::read(fixtures_images().join(path)).unwrap());
        } else {
            assert_eq!(rec.stored, Some(Stored::Reencoded), "{path}");
            assert_eq!(
                decoded.orientation, 1,
                "{path}: re-encoded bytes must be upright"
            );
            assert!(
                matches!(decoded.mode, "rgb8"),
                "{path}: stored as {}",
                decoded.mode
            );
        }
    }
    assert!(
        checked_ok >= 30 && checked_err >= 6,
        "ok {checked_ok}, errors {checked_err}"
    );

    // Exact duplicates: the later copy points at the first in input order.
    let dups = read_duplicates(&out);
    let want: HashMap<String, String> = expected
        .iter()
        .filter_map(|(p, e)| {
            Some((
                record_key(&format!("file:{p}")),
                record_key(&format!("file:{}", e["duplicate_of"].as_str()?)),
            ))
        })
        .collect();
    assert!(!want.is_empty(), "the fixtures hold a duplicate");
    assert_eq!(dups.len(), want.len(), "{dups:?}");
    for (k, d) in &want {
        assert_eq!(dups.get(k), Some(d));
    }
    // The log names the failure reasons and the throughput.
    assert!(
        r.stderr.contains("images/s") && r.stderr.contains("truncated 2"),
        "{}",
        r.stderr
    );
}

#[test]
fn store_original_keeps_every_source_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("images");
    ingest(&fixtures_images(), &out, &["--store", "original"]);
    for rec in read_images(&out).iter().filter(|r| r.status == Status::Ok) {
        assert_eq!(rec.stored, Some(Stored::Original));
        let src = std::fs::read(fixtures_images().join(&rec.source)).unwrap();
        assert_eq!(rec.bytes.as_ref().unwrap(), &src, "{}", rec.source);
    }
}

#[test]
fn max_pixels_is_the_bomb_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("images");
    ingest(&fixtures_images(), &out, &["--max-pixels", "20000"]);
    for rec in read_images(&out) {
        if let (Some(w), Some(h)) = (rec.width, rec.height) {
            assert!(
                w as u64 * h as u64 <= 20000,
                "{}: {w}×{h} passed a 20000-pixel limit",
                rec.source
            );
        }
        if rec.reason.as_deref() == Some("too_large") && rec.source != "odd/bomb.png" {
            assert!(
                rec.error
                    .as_ref()
                    .unwrap()
                    .contains("exceeds the limit of 20000"),
                "{:?}",
                rec.error
            );
        }
    }
}

#[test]
fn verify_header_gives_the_same_records_as_a_full_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let header = tmp.path().join("header");
    ingest(&fixtures_images(), &full, &["--verify", "full"]);
    ingest(&fixtures_images(), &header, &["--verify", "header"]);
    let (a, b) = (read_images(&full), read_images(&header));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        // Same outcome and data; the wording of an error may differ.
        assert_eq!(x.error.is_some(), y.error.is_some(), "{}", x.source);
        let (mut x, mut y) = (x.clone(), y.clone());
        x.error = None;
        y.error = None;
        assert_eq!(x, y, "{}", x.source);
    }
}
