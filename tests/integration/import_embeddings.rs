//! `curate import-embeddings`: clip-retrieval folders (img_emb/*.npy +
//! metadata/*.parquet, written here by hand) and plain key + vector
//! parquet files turned into an embeddings stage that `curate dedup` reads.

use std::path::Path;
use std::sync::Arc;

use arrow_array::types::{Float16Type, Float64Type};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, LargeListArray, ListArray, RecordBatch,
    StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use half::f16;

use crate::common::{curate, run, shard_files, Run};
use crate::embed::{read_embeddings, EmbRow};

fn import(input: &Path, out: &Path, args: &[&str]) -> Run {
    run(curate()
        .arg("import-embeddings")
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(args))
}

/// A 2-D little-endian array in numpy's `.npy` format (version 1, C order).
fn npy(f16_values: bool, rows: &[Vec<f32>]) -> Vec<u8> {
    let descr = if f16_values { "<f2" } else { "<f4" };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}",
        rows.len(),
        rows[0].len()
    );
    // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    header.push_str(&" ".repeat(63 - (10 + header.len()) % 64));
    header.push('\n');
    assert_eq!((10 + header.len()) % 64, 0);
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in rows.iter().flatten() {
        if f16_values {
            out.extend_from_slice(&f16::from_f32(*x).to_le_bytes());
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch =
        RecordBatch::try_new(schema.clone(), columns.into_iter().map(|c| c.1).collect()).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn strings(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

/// clip-retrieval's metadata_N.parquet: image_path, url, caption.
fn write_metadata(path: &Path, paths: &[&str]) {
    let urls: Vec<String> = paths.iter().map(|p| format!("https://x/{p}")).collect();
    let caps: Vec<String> = paths.iter().map(|p| format!("a photo of {p}")).collect();
    write_parquet(
        path,
        vec![
            ("image_path", strings(paths)),
            ("url", Arc::new(StringArray::from(urls))),
            ("caption", Arc::new(StringArray::from(caps))),
        ],
    );
}

fn fixed_size_list(rows: &[Option<Vec<f32>>], dim: usize) -> ArrayRef {
    let values: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.clone().unwrap_or_else(|| vec![0.0; dim]))
        .collect();
    let valid: Vec<bool> = rows.iter().map(Option::is_some).collect();
    Arc::new(
        FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Float32, true)),
            dim as i32,
            Arc::new(Float32Array::from(values)),
            Some(valid.into()),
        )
        .unwrap(),
    )
}

fn list_f64(rows: &[Option<Vec<f32>>]) -> ArrayRef {
    Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(
        rows.iter().map(|r| {
            r.as_ref()
                .map(|v| v.iter().map(|x| Some(*x as f64)).collect::<Vec<_>>())
        }),
    ))
}

fn large_list_f16(rows: &[Option<Vec<f32>>]) -> ArrayRef {
    Arc::new(LargeListArray::from_iter_primitive::<Float16Type, _, _>(
        rows.iter().map(|r| {
            r.as_ref().map(|v| {
                v.iter()
                    .map(|x| Some(f16::from_f32(*x)))
                    .collect::<Vec<_>>()
            })
        }),
    ))
}

/// Deterministic vectors with components in [-2, 2) and varied norms.
fn vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 / (1u64 << 53) as f64) as f32 * 4.0 - 2.0
    };
    (0..n)
        .map(|i| (0..dim).map(|_| next() * (1.0 + i as f32)).collect())
        .collect()
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|x| (*x as f64 / n) as f32).collect()
}

fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| f16::from_f32(*x).to_f32()).collect()
}

fn assert_close(key: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{key}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{key}[{i}]: stored {g}, expected {w}");
    }
    let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 2e-3, "{key}: norm {norm}");
}

fn by_key(rows: Vec<EmbRow>) -> std::collections::BTreeMap<String, EmbRow> {
    rows.into_iter().map(|r| (r.key.clone(), r)).collect()
}

fn shard_metadata(stage: &Path) -> std::collections::HashMap<String, String> {
    let f = std::fs::File::open(&shard_files(stage)[0]).unwrap();
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    b.schema()
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn import_embeddings_clip_retrieval_folder_round_trips_into_dedup() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = tmp.path().join("clip");
    let dim = 16;
    let a = vectors(10, dim, 7);
    let mut b = vectors(8, dim, 99);
    // Planted near-duplicate: b[5] is a[3] rescaled with a little noise (cos > 0.999).
    let noise = vectors(1, dim, 5)[0].clone();
    b[5] = a[3]
        .iter()
        .zip(&noise)
        .map(|(x, e)| 2.5 * x + 0.002 * e)
        .collect();
    std::fs::create_dir_all(clip.join("img_emb")).unwrap();
    std::fs::write(clip.join("img_emb/img_emb_0.npy"), npy(true, &a)).unwrap();
    std::fs::write(clip.join("img_emb/img_emb_1.npy"), npy(false, &b)).unwrap();
    let keys_a: Vec<String> = (0..a.len()).map(|i| format!("shard0/{i:05}.jpg")).collect();
    let keys_b: Vec<String> = (0..b.len()).map(|i| format!("shard1/{i:05}.jpg")).collect();
    fn refs(k: &[String]) -> Vec<&str> {
        k.iter().map(String::as_str).collect()
    }
    write_metadata(&clip.join("metadata/metadata_0.parquet"), &refs(&keys_a));
    write_metadata(&clip.join("metadata/metadata_1.parquet"), &refs(&keys_b));

    let emb = tmp.path().join("emb");
    let r = import(&clip, &emb, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        shard_files(&emb).len(),
        2,
        "one shard per npy/metadata pair"
    );
    let meta = shard_metadata(&emb);
    assert_eq!(meta["model"], "imported:clip");
    assert_eq!(meta["dim"], "16");
    assert_eq!(meta["dtype"], "f16", "embed's default dtype");
    assert_eq!(meta["normalized"], "true");
    assert_eq!(meta["output"], "imported");
    let rows = by_key(read_embeddings(&emb));
    assert_eq!(rows.len(), 18);
    // Stored (f16) = the normalised input (itself f16 for img_emb_0).
    for (k, v) in keys_a.iter().zip(&a) {
        let row = &rows[k];
        assert_eq!(row.status, "ok");
        assert_close(
            k,
            row.embedding.as_ref().unwrap(),
            &unit(&f16_round(v)),
            1e-3,
        );
    }
    for (k, v) in keys_b.iter().zip(&b) {
        assert_close(k, rows[k].embedding.as_ref().unwrap(), &unit(v), 1e-3);
    }

    let dd = tmp.path().join("dedup");
    let r = run(curate()
        .arg("dedup")
        .arg(&emb)
        .arg("-o")
        .arg(&dd)
        .args(["--eps", "0.99", "--keep", "first"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = crate::dedup::read_clusters(&dd);
    assert_eq!(c.rows.len(), 18);
    let (x, y) = (&c.rows[&keys_a[3]], &c.rows[&keys_b[5]]);
    assert!(x.0.is_some() && x.0 == y.0, "{x:?} {y:?}");
    assert!(x.1 != y.1, "exactly one of the planted pair is kept");
    let clustered: Vec<&String> = c
        .rows
        .iter()
        .filter(|(_, r)| r.0.is_some())
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        clustered,
        vec![&keys_a[3], &keys_b[5]],
        "only the planted pair clusters"
    );
    assert_eq!(c.rows.values().filter(|r| !r.1).count(), 1);
}

#[test]
fn import_embeddings_parquet_list_columns_store_the_same_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let dim = 8;
    let v: Vec<Option<Vec<f32>>> = vectors(6, dim, 3).into_iter().map(Some).collect();
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5"];
    // The same vectors as fixed_size_list<f32>, list<f64> (custom column names) and large_list<f16>.
    write_parquet(
        &tmp.path().join("fsl/part.parquet"),
        vec![
            ("key", strings(&keys)),
            ("embedding", fixed_size_list(&v, dim)),
        ],
    );
    write_parquet(
        &tmp.path().join("list/part.parquet"),
        vec![("id", strings(&keys)), ("vec", list_f64(&v))],
    );
    let large = tmp.path().join("large.parquet");
    write_parquet(
        &large,
        vec![("key", strings(&keys)), ("embedding", large_list_f16(&v))],
    );
    let out = |n: &str| tmp.path().join(format!("out-{n}"));
    let r = import(&tmp.path().join("fsl"), &out("fsl"), &["--dtype", "f32"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = import(
        &tmp.path().join("list"),
        &out("list"),
        &[
            "--dtype",
            "f32",
            "--key-col",
            "id",
            "--embedding-col",
            "vec",
            "--model-id",
            "m/x",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = import(&large, &out("large"), &["--dtype", "f32", "--dim", "8"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(shard_metadata(&out("list"))["model"], "m/x");
    assert_eq!(shard_metadata(&out("large"))["model"], "imported:large");
    assert_eq!(shard_metadata(&out("fsl"))["dtype"], "f32");
    let (fsl, list, halfs) = (
        read_embeddings(&out("fsl")),
        read_embeddings(&out("list")),
        read_embeddings(&out("large")),
    );
    assert_eq!(fsl.len(), 6);
    for (i, k) in keys.iter().enumerate() {
        let want = unit(v[i].as_ref().unwrap());
        let e = |rows: &[EmbRow]| {
            assert_eq!((rows[i].key.as_str(), rows[i].status.as_str()), (*k, "ok"));
            rows[i].embedding.clone().unwrap()
        };
        assert_close(k, &e(&fsl), &want, 1e-6);
        assert_eq!(e(&fsl), e(&list), "{k}: list<f64> = fixed_size_list<f32>");
        assert_close(
            k,
            &e(&halfs),
            &unit(&f16_round(v[i].as_ref().unwrap())),
            1e-6,
        );
        assert_close(k, &e(&halfs), &want, 2e-3);
    }
    // --dim asserts the dimension.
    let r = import(&large, &out("dim"), &["--dim", "9"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("--dim 9") && r.stderr.contains("dimension 8"),
        "{}",
        r.stderr
    );
}

#[test]
fn import_embeddings_key_collision_names_both_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let v: Vec<Option<Vec<f32>>> = vectors(3, 4, 11).into_iter().map(Some).collect();
    write_parquet(
        &input.join("a.parquet"),
        vec![
            ("key", strings(&["p", "q", "r"])),
            ("embedding", fixed_size_list(&v, 4)),
        ],
    );
    write_parquet(
        &input.join("b.parquet"),
        vec![
            ("key", strings(&["s", "t", "q"])),
            ("embedding", fixed_size_list(&v, 4)),
        ],
    );
    let out = tmp.path().join("out");
    let r = import(&input, &out, &[]);
    assert_ne!(r.code, 0);
    let e = &r.stderr;
    assert!(e.contains("`q`"), "{e}");
    assert!(e.contains("row 1 of") && e.contains("a.parquet"), "{e}");
    assert!(e.contains("row 2 of") && e.contains("b.parquet"), "{e}");
    assert!(
        !out.exists() || shard_files(&out).is_empty(),
        "nothing is written before the keys are checked"
    );
}

#[test]
fn import_embeddings_bad_dimension_and_columns_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // A list row of another width names the row, its key and both dimensions.
    let rows = vec![
        Some(vec![1.0, 2.0, 3.0, 4.0]),
        Some(vec![1.0; 4]),
        Some(vec![1.0; 3]),
    ];
    let p = tmp.path().join("dims.parquet");
    write_parquet(
        &p,
        vec![
            ("key", strings(&["a", "b", "c"])),
            ("embedding", list_f64(&rows)),
        ],
    );
    let r = import(&p, &tmp.path().join("o1"), &[]);
    assert_ne!(r.code, 0);
    let e = &r.stderr;
    assert!(
        e.contains("row 2 (key `c`)") && e.contains("dimension 3"),
        "{e}"
    );
    assert!(
        e.contains("dimension 4") && e.contains("row 0 (key `a`)"),
        "{e}"
    );
    // Two npy files of different widths name both files.
    let clip = tmp.path().join("clip");
    std::fs::create_dir_all(clip.join("img_emb")).unwrap();
    std::fs::write(
        clip.join("img_emb/img_emb_0.npy"),
        npy(false, &vectors(2, 4, 1)),
    )
    .unwrap();
    std::fs::write(
        clip.join("img_emb/img_emb_1.npy"),
        npy(true, &vectors(2, 5, 2)),
    )
    .unwrap();
    write_metadata(&clip.join("metadata/metadata_0.parquet"), &["x0", "x1"]);
    write_metadata(&clip.join("metadata/metadata_1.parquet"), &["y0", "y1"]);
    let r = import(&clip, &tmp.path().join("o2"), &[]);
    assert_ne!(r.code, 0);
    let e = &r.stderr;
    assert!(
        e.contains("img_emb_0.npy") && e.contains("img_emb_1.npy"),
        "{e}"
    );
    assert!(
        e.contains("dimension 5") && e.contains("dimension 4"),
        "{e}"
    );
    // A missing key column names it and what the file has.
    let p = tmp.path().join("nokey.parquet");
    let v: Vec<Option<Vec<f32>>> = vectors(2, 4, 3).into_iter().map(Some).collect();
    write_parquet(
        &p,
        vec![
            ("id", strings(&["a", "b"])),
            ("embedding", fixed_size_list(&v, 4)),
        ],
    );
    let r = import(&p, &tmp.path().join("o3"), &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("no key column `key`") && r.stderr.contains("id"),
        "{}",
        r.stderr
    );
    // A wrong embedding column type says what was expected.
    let p = tmp.path().join("text.parquet");
    write_parquet(
        &p,
        vec![
            ("key", strings(&["a"])),
            ("embedding", strings(&["0.1,0.2"])),
        ],
    );
    let r = import(&p, &tmp.path().join("o4"), &[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("expected a list"), "{}", r.stderr);
    // A folder in neither layout lists what it holds.
    let odd = tmp.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::write(odd.join("vectors.csv"), "a,1,2").unwrap();
    let r = import(&odd, &tmp.path().join("o5"), &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("neither layout") && r.stderr.contains("vectors.csv"),
        "{}",
        r.stderr
    );
}

#[test]
fn import_embeddings_invalid_vectors_are_error_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = vec![
        Some(vec![1.0, 2.0, 2.0]),
        Some(vec![0.0, 0.0, 0.0]),
        None,
        Some(vec![1.0, f32::NAN, 0.0]),
        Some(vec![0.0, -3.0, 4.0]),
    ];
    let p = tmp.path().join("v.parquet");
    write_parquet(
        &p,
        vec![
            ("key", strings(&["a", "zero", "null", "nan", "e"])),
            ("embedding", fixed_size_list(&rows, 3)),
        ],
    );
    let out = tmp.path().join("out");
    let r = import(&p, &out, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = read_embeddings(&out);
    assert_eq!(got.len(), 5);
    for (row, want) in got.iter().zip(&rows) {
        let bad = want
            .as_ref()
            .is_none_or(|v| v.iter().all(|x| *x == 0.0) || v.iter().any(|x| x.is_nan()));
        if bad {
            assert_eq!(row.status, "error", "{}", row.key);
            assert_eq!(
                row.reason.as_deref(),
                Some("invalid_embedding"),
                "{}",
                row.key
            );
            assert!(row.embedding.is_none());
        } else {
            assert_eq!(row.status, "ok", "{}", row.key);
            assert_close(
                &row.key,
                row.embedding.as_ref().unwrap(),
                &unit(want.as_ref().unwrap()),
                1e-3,
            );
        }
    }
    let journal: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("journal/part-00000.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(journal["failures"], 3, "{journal}");
}

#[test]
fn import_embeddings_resumes_and_splits_over_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let v: Vec<Option<Vec<f32>>> = vectors(4, 6, i as u64 + 20).into_iter().map(Some).collect();
        let keys: Vec<String> = (0..4).map(|j| format!("{name}{j}")).collect();
        write_parquet(
            &input.join(format!("{name}.parquet")),
            vec![
                ("key", Arc::new(StringArray::from(keys))),
                ("embedding", fixed_size_list(&v, 6)),
            ],
        );
    }
    let out = tmp.path().join("out");
    // Task 1 of 2 writes shard 1 only.
    let r = import(&input, &out, &["--task-index", "1", "--num-tasks", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let names = |o: &Path| -> Vec<String> {
        shard_files(o)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(&out), vec!["part-00001.parquet"]);
    // Dedup refuses the incomplete stage.
    let r = run(curate()
        .arg("dedup")
        .arg(&out)
        .arg("-o")
        .arg(tmp.path().join("dd")));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("incomplete"), "{}", r.stderr);
    let r = import(&input, &out, &["--task-index", "0", "--num-tasks", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(names(&out).len(), 3);
    let mtimes = |o: &Path| -> Vec<std::time::SystemTime> {
        shard_files(o)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
            .collect()
    };
    let before = mtimes(&out);
    let r = import(&input, &out, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("already complete; nothing to do"),
        "{}",
        r.stderr
    );
    assert_eq!(mtimes(&out), before, "complete shards are not rewritten");
    assert_eq!(read_embeddings(&out).len(), 12);
    // Another configuration needs --overwrite.
    let r = import(&input, &out, &["--dtype", "f32"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    let r = import(&input, &out, &["--dtype", "f32", "--overwrite"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(shard_metadata(&out)["dtype"], "f32");
}
