//! `curate bench STAGE`: throughput (images/s) and peak memory of a stage
//! on generated, Flickr-sized photos (or a folder you give), so a run can be
//! sized before it is submitted. Stages add themselves as they land.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use rayon::prelude::*;

use crate::cli::{BenchArgs, BenchStage, ImageArgs, IngestArgs, ShardArgs, StorePolicy, Verify};
use curate_stage::progress::peak_rss_bytes;

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.stage == BenchStage::Scale {
        return super::bench_scale::run(args);
    }
    let scratch = tempdir()?;
    let input = match &args.dir {
        Some(d) => d.clone(),
        None if args.stage == BenchStage::Dedup => scratch.clone(),
        None => {
            let dir = args.keep.clone().unwrap_or_else(|| scratch.join("photos"));
            let t = Instant::now();
            let bytes = generate(&dir, args.images, args.width, args.height)?;
            println!(
                "generated {} photo-like JPEGs of {}×{} ({:.1} MB) in {:.1} s",
                args.images,
                args.width,
                args.height,
                bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            dir
        }
    };
    let result = match args.stage {
        BenchStage::Ingest => bench_ingest(args, &input, &scratch),
        BenchStage::Fetch => bench_fetch(args, &input, &scratch),
        BenchStage::Embed => bench_embed(args, &input, &scratch),
        BenchStage::Dedup => bench_dedup(args, &scratch),
        BenchStage::Caption => bench_caption(args, &input),
        BenchStage::Latents => bench_latents(args, &input),
        BenchStage::Scale => unreachable!("dispatched above"),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Where the time goes: each step alone over the same (cached) files.
fn breakdown(input: &Path) -> anyhow::Result<(usize, u64)> {
    let files: Vec<PathBuf> = walkdir::WalkDir::new(input)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    let blobs: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let total_bytes: u64 = blobs.iter().map(|b| b.len() as u64).sum();
    let n = blobs.len() as f64;
    let limits = curate_vision::Limits::default();
    let threads = rayon::current_num_threads();
    let time = |f: &(dyn Fn(&[u8]) + Sync)| {
        let t = Instant::now();
        blobs.iter().for_each(|b| f(b));
        let one = t.elapsed().as_secs_f64();
        let t = Instant::now();
        blobs.par_iter().for_each(|b| f(b));
        (n / one, n / t.elapsed().as_secs_f64())
    };
    let report = |what: &str, (one, all): (f64, f64)| {
        println!("  {what:<42} {one:>8.1} images/s on one core, {all:>8.1} on {threads} threads");
    };
    println!(
        "where the time goes ({} files, {:.1} MB, each step alone):",
        blobs.len(),
        total_bytes as f64 / 1e6
    );
    report(
        "sha256",
        time(&|b| {
            curate_core::hash::sha256_hex(b);
        }),
    );
    report(
        "headers + structure (--verify header)",
        time(&|b| {
            let _ = curate_vision::inspect(b, &limits);
        }),
    );
    report(
        "JPEG scans at 1/8 scale (--verify full)",
        time(&|b| {
            let _ = curate_vision::verify_jpeg_scaled(b, &limits);
        }),
    );
    report(
        "full decode (needed to re-encode)",
        time(&|b| {
            let _ = curate_vision::decode(b, &limits);
        }),
    );
    // Parquet: the bytes through the images table writer, one shard.
    let records: Vec<curate_core::record::ImageRecord> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut r = curate_core::record::ImageRecord::failed(
                format!("{i:016x}"),
                String::new(),
                "",
                String::new(),
                b.len() as u64,
            );
            r.reason = None;
            r.error = None;
            r.bytes = Some(b.clone());
            r
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("curate-bench-parquet-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    let mut w = curate_io::ShardWriter::create(
        curate_io::images::table(),
        curate_io::images::arrow_schema(),
        &dir.join(".x.tmp"),
        &dir.join("x.parquet"),
        &curate_io::ShardOptions {
            row_group_rows: 64,
            ..Default::default()
        },
    )?;
    for chunk in records.chunks(64) {
        w.write(&curate_io::images::to_batch(chunk)?)?;
        w.flush()?;
    }
    w.finish()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "  {:<42} {:>8.1} images/s on one core ({:.0} MB/s)",
        "parquet write (snappy, fsync)",
        n / secs,
        total_bytes as f64 / 1e6 / secs
    );
    Ok((blobs.len(), total_bytes))
}

fn bench_ingest(args: &BenchArgs, input: &Path, scratch: &Path) -> anyhow::Result<()> {
    let total_bytes: u64 = walkdir::WalkDir::new(input)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let limits = curate_vision::Limits::default();

    let out = scratch.join("ingest");
    let t = Instant::now();
    let summary = super::ingest::run(&IngestArgs {
        input: input.to_path_buf(),
        output: out.clone(),
        shard_size: 1000,
        image: ImageArgs {
            store: StorePolicy::Auto,
            max_pixels: limits.max_pixels,
            jpeg_quality: 95,
            verify: args.verify,
            threads: 0,
        },
        overwrite: false,
        shards: ShardArgs {
            task_index: Some(0),
            num_tasks: Some(1),
        },
    })?;
    let secs = t.elapsed().as_secs_f64();
    let written: u64 = std::fs::read_dir(&out)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "ingest end to end: {} images in {secs:.2} s = {:.1} images/s, {:.1} MB/s in, {:.1} MB of parquet out, peak RSS {:.0} MiB",
        summary.records,
        summary.records as f64 / secs,
        total_bytes as f64 / 1e6 / secs,
        written as f64 / 1e6,
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
    breakdown(input)?;
    Ok(())
}

/// Serves the photos from a local server as `--urls` distinct URLs and
/// runs the full fetch (download, decode check, parquet write).
fn bench_fetch(args: &BenchArgs, input: &Path, scratch: &Path) -> anyhow::Result<()> {
    let names: Vec<String> = walkdir::WalkDir::new(input)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            e.path()
                .strip_prefix(input)
                .expect("under input")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    anyhow::ensure!(!names.is_empty(), "no files under {}", input.display());
    let server = curate_fetch::testing::TestServer::start(input)?;
    let list = scratch.join("urls.txt");
    let urls: Vec<String> = (0..args.urls)
        .map(|i| format!("files/{}?copy={i}", names[i % names.len()]))
        .collect();
    std::fs::write(&list, urls.join("\n"))?;
    let out = scratch.join("fetch");
    let argv = [
        "curate".to_string(),
        "fetch".into(),
        list.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--base-url".into(),
        server.base_url(),
        "--concurrency".into(),
        args.concurrency.to_string(),
        "--verify".into(),
        format!("{:?}", args.verify).to_lowercase(),
        "--shard-index".into(),
        "0".into(),
        "--num-shards".into(),
        "1".into(),
    ];
    let cli = crate::cli::Cli::try_parse_from(argv)?;
    let crate::cli::Command::Fetch(fetch_args) = cli.command else {
        unreachable!("parsed a fetch command")
    };
    let t = Instant::now();
    let summary = super::fetch::run(&fetch_args)?;
    let secs = t.elapsed().as_secs_f64();
    let served = server.total_requests();
    println!(
        "fetch end to end (--verify {}): {} URLs in {secs:.2} s = {:.1} images/s ({} failed, {served} requests, {:.1} MB/s), peak RSS {:.0} MiB",
        format!("{:?}", args.verify).to_lowercase(),
        summary.records,
        summary.records as f64 / secs,
        summary.failures,
        fetch_bytes(&out)? as f64 / 1e6 / secs,
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
    breakdown(input)?;
    Ok(())
}

/// The files under `input` that decode as images, sorted by path, with
/// their bytes. Others (a README, a corrupt JPEG, `placements-*.json` a
/// previous run wrote) are named once and left out: a bench times the
/// model's work, and the stages' own handling of bad files is theirs.
fn photos(
    input: &Path,
    limits: &curate_vision::Limits,
) -> anyhow::Result<(Vec<PathBuf>, Vec<Vec<u8>>)> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(input)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    files.sort();
    let mut kept = (Vec::new(), Vec::new());
    let mut skipped = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        match curate_vision::decode(&bytes, limits) {
            Ok(_) => {
                kept.0.push(f);
                kept.1.push(bytes);
            }
            Err(e) => skipped.push(format!("{} ({e})", f.display())),
        }
    }
    if !skipped.is_empty() {
        let shown: Vec<&str> = skipped.iter().take(3).map(String::as_str).collect();
        println!(
            "skipped {} file(s) that are not decodable images: {}{}",
            skipped.len(),
            shown.join(", "),
            if skipped.len() > 3 { ", …" } else { "" }
        );
    }
    anyhow::ensure!(
        !kept.0.is_empty(),
        "no decodable images under {} ({} other files)",
        input.display(),
        skipped.len()
    );
    Ok(kept)
}

/// Image bytes stored by a fetch stage directory.
fn fetch_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        {
            for b in curate_io::read_columns(&p, curate_io::images::table(), Some(&["file_size"]))?
            {
                let c = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow_array::UInt64Array>()
                    .expect("file_size is u64");
                total += c.values().iter().sum::<u64>();
            }
        }
    }
    Ok(total)
}

/// Photo-like JPEGs: smooth colour fields plus fine noise, so they compress
/// like photographs (Flickr `_b` size: 1024 px long side, ~150–300 kB).
fn generate(dir: &Path, count: usize, width: u32, height: u32) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let sizes: Vec<u64> = (0..count)
        .into_par_iter()
        .map(|i| -> anyhow::Result<u64> {
            // Flickr sizes: every other photo at 500 px long side, every third portrait.
            let (w, h) = if i % 2 == 1 {
                (500, (500 * height / width.max(1)).max(1))
            } else {
                (width, height)
            };
            let (w, h) = if i % 3 == 0 { (h, w) } else { (w, h) };
            let img = curate_vision::synthetic_photo(w, h, i as u64);
            let bytes = curate_vision::encode_jpeg(&img, 90)?;
            let path = dir.join(format!("{i:06}.jpg"));
            std::fs::write(&path, &bytes).with_context(|| path.display().to_string())?;
            Ok(bytes.len() as u64)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(sizes.iter().sum())
}

/// The preprocessing of a model (decode, resize, crop, normalise to CHW
/// floats) timed alone, then `curate embed` end to end on the same photos.
fn bench_embed(args: &BenchArgs, input: &Path, scratch: &Path) -> anyhow::Result<()> {
    use curate_vision::preprocess::{load_rgb, DecodeScale, PixelSpec};
    let model = args.model.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/clip-tiny")
    });
    let files = curate_onnx::vision::ModelFiles::resolve(&model, super::embed::CLIP_CANDIDATES)?;
    let spec = files.pixel_spec(PixelSpec::clip())?;
    let limits = curate_vision::Limits::default();
    let (_, blobs) = photos(input, &limits)?;
    let n = blobs.len() as f64;
    let tables = spec.tables();
    let (h, w) = spec
        .fixed_hw()
        .context("the model's preprocessing has no fixed size")?;
    let prepare = |b: &[u8], scale: DecodeScale| -> Vec<f32> {
        let loaded = load_rgb(b, &limits, &spec, scale).expect("generated photos decode");
        let pic = spec.resize_crop(&loaded.rgb);
        let mut out = vec![0f32; (3 * h * w) as usize];
        PixelSpec::to_chw(&pic, &tables, &mut out);
        out
    };
    let threads = rayon::current_num_threads();
    println!(
        "preprocessing ({} photos, {:?} → {h}×{w}, decode + resize + crop + normalise):",
        blobs.len(),
        spec.resize
    );
    for scale in [DecodeScale::Full, DecodeScale::Reduced] {
        let t = Instant::now();
        blobs.iter().for_each(|b| {
            std::hint::black_box(prepare(b, scale));
        });
        let one = n / t.elapsed().as_secs_f64();
        let t = Instant::now();
        blobs.par_iter().for_each(|b| {
            std::hint::black_box(prepare(b, scale));
        });
        let all = n / t.elapsed().as_secs_f64();
        println!("  --decode-scale {scale:<8?} {one:>8.1} images/s on one core, {all:>8.1} on {threads} threads");
    }
    // Where the time goes, one core.
    let decoded: Vec<_> = blobs
        .iter()
        .map(|b| load_rgb(b, &limits, &spec, DecodeScale::Full).expect("decodes"))
        .collect();
    let step = |what: &str, f: &dyn Fn()| {
        // (the JPEG decoder named below is the one in use)
        let t = Instant::now();
        f();
        println!(
            "    {what:<40} {:>8.1} images/s on one core",
            n / t.elapsed().as_secs_f64()
        );
    };
    let jpeg = if curate_vision::turbo::available() {
        "libjpeg-turbo"
    } else {
        "jpeg-decoder"
    };
    step(&format!("decode only, full ({jpeg})"), &|| {
        blobs.iter().for_each(|b| {
            std::hint::black_box(load_rgb(b, &limits, &spec, DecodeScale::Full).ok());
        })
    });
    step(&format!("decode only, reduced DCT ({jpeg})"), &|| {
        blobs.iter().for_each(|b| {
            std::hint::black_box(load_rgb(b, &limits, &spec, DecodeScale::Reduced).ok());
        })
    });
    step("decode only, full (zune-jpeg)", &|| {
        blobs.iter().for_each(|b| {
            std::hint::black_box(curate_vision::decode(b, &limits).ok());
        })
    });
    step("resize + crop + normalise (from full)", &|| {
        decoded.iter().for_each(|d| {
            let pic = spec.resize_crop(&d.rgb);
            let mut out = vec![0f32; (3 * h * w) as usize];
            PixelSpec::to_chw(&pic, &tables, &mut out);
            std::hint::black_box(out);
        })
    });
    let (mut max, mut sum, mut count) = (0f32, 0f64, 0usize);
    for b in &blobs {
        let (a, r) = (
            prepare(b, DecodeScale::Full),
            prepare(b, DecodeScale::Reduced),
        );
        for (x, y) in a.iter().zip(&r) {
            let d = (x - y).abs();
            max = max.max(d);
            sum += d as f64;
            count += 1;
        }
    }
    println!(
        "  reduced vs full decode: max abs diff {max:.4}, mean {:.5} (normalised units)",
        sum / count.max(1) as f64
    );

    let images = scratch.join("images");
    super::ingest::run(&IngestArgs {
        input: input.to_path_buf(),
        output: images.clone(),
        shard_size: 1000,
        image: ImageArgs {
            store: StorePolicy::Original,
            max_pixels: limits.max_pixels,
            jpeg_quality: 95,
            verify: Verify::Header,
            threads: 0,
        },
        overwrite: false,
        shards: ShardArgs {
            task_index: Some(0),
            num_tasks: Some(1),
        },
    })?;
    for scale in ["full", "reduced"] {
        let out = scratch.join(format!("embed-{scale}"));
        let argv = [
            "curate",
            "embed",
            &images.display().to_string(),
            "--output",
            &out.display().to_string(),
            "--model",
            &model.display().to_string(),
            "--decode-scale",
            scale,
            "--shard-index",
            "0",
            "--num-shards",
            "1",
        ];
        let cli = crate::cli::Cli::try_parse_from(argv)?;
        let crate::cli::Command::Embed(embed_args) = cli.command else {
            unreachable!("parsed an embed command")
        };
        let t = Instant::now();
        let summary = super::embed::run(&embed_args)?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "embed end to end (--decode-scale {scale}, model {}): {} images in {secs:.2} s = {:.1} images/s, peak RSS {:.0} MiB",
            files.id,
            summary.records,
            summary.records as f64 / secs,
            peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// Unit vectors: groups of 1 + k near-copies (k = 0..3, cos ≈ 0.93–0.99 to
/// their base) of random gaussian directions; returns the planted pairs.
pub(super) fn planted_embeddings(
    n: usize,
    d: usize,
) -> (curate_dedup::kernel::Matrix, Vec<(u32, u32)>) {
    use curate_dedup::rng::SplitMix64;
    // Group g: a base at index start(g), then g % 4 copies.
    let mut starts = Vec::new();
    let mut i = 0usize;
    let mut g = 0usize;
    while i < n {
        starts.push((i, (g % 4).min(n - i - 1)));
        i += 1 + g % 4;
        g += 1;
    }
    let mut data = vec![0f32; n * d];
    let groups: Vec<(usize, usize)> = starts.clone();
    let chunks: Vec<(usize, usize, &mut [f32])> = {
        let mut rest: &mut [f32] = &mut data;
        let mut out = Vec::with_capacity(groups.len());
        for &(start, copies) in &groups {
            let (head, tail) = rest.split_at_mut((1 + copies) * d);
            out.push((start, copies, head));
            rest = tail;
        }
        out
    };
    chunks.into_par_iter().for_each(|(start, copies, buf)| {
        let mut rng = SplitMix64::new(start as u64);
        let mut scales = SplitMix64::new(!(start as u64));
        let mut gauss = || {
            let u1 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 + 1e-12;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        };
        let (base, copies_buf) = buf.split_at_mut(d);
        base.iter_mut().for_each(|x| *x = gauss());
        let norm = base.iter().map(|x| x * x).sum::<f32>().sqrt();
        base.iter_mut().for_each(|x| *x /= norm);
        for c in 0..copies {
            // noise of norm s gives cos ≈ 1/√(1+s²): s in 0.14..0.39 → cos 0.93..0.99.
            let s = 0.14 + 0.25 * ((scales.next_u64() >> 11) as f64 / (1u64 << 53) as f64) as f32;
            let row = &mut copies_buf[c * d..(c + 1) * d];
            for (x, b) in row.iter_mut().zip(base.iter()) {
                *x = b + s * gauss() / (d as f32).sqrt();
            }
        }
    });
    let mut x = curate_dedup::kernel::Matrix::new(n, d, data).expect("n·d floats");
    x.normalise();
    let pairs = starts
        .iter()
        .flat_map(|&(start, copies)| (1..=copies).map(move |c| (start as u32, (start + c) as u32)))
        .collect();
    (x, pairs)
}

fn bench_dedup(args: &BenchArgs, scratch: &Path) -> anyhow::Result<()> {
    use curate_dedup::driver::{self, Keep, Points, Settings, State};
    let t = Instant::now();
    let (x, planted) = planted_embeddings(args.rows, args.dim);
    println!(
        "{} synthetic unit vectors of dimension {} ({} planted near-duplicate pairs) in {:.1} s",
        x.rows,
        x.dim,
        planted.len(),
        t.elapsed().as_secs_f64()
    );
    let settings = Settings {
        eps: 0.9,
        min_samples: 2,
        keep: Keep::Random,
        seed: 0,
        partition: args.partition,
        partition_size: args.partition_size,
        max_rounds: args.max_rounds,
        block: curate_dedup::kernel::DEFAULT_BLOCK,
    };
    if args.partition_size >= args.rows {
        let t = Instant::now();
        let g = curate_dedup::kernel::eps_graph(&x, settings.eps, settings.block);
        let kernel = t.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let c = curate_dedup::dbscan::dbscan(&g, settings.min_samples);
        let db = t2.elapsed().as_secs_f64();
        println!(
            "exact, one partition: kernel {kernel:.2} s ({:.1} GFLOP/s on {} threads, {} pairs), DBSCAN {db:.3} s; total {:.2} s; {} clusters, {} noise; peak RSS {:.0} MiB",
            g.flops / 1e9 / kernel,
            rayon::current_num_threads(),
            g.pairs(),
            kernel + db,
            c.clusters,
            c.labels.iter().filter(|&&l| l < 0).count(),
            peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
        );
        if let Some(dir) = &args.write {
            std::fs::create_dir_all(dir)?;
            let v: Vec<u8> = x.data.iter().flat_map(|f| f.to_le_bytes()).collect();
            std::fs::write(dir.join("vectors.f32"), v)?;
            let l: Vec<u8> = c
                .labels
                .iter()
                .flat_map(|&l| (l as i32).to_le_bytes())
                .collect();
            std::fs::write(dir.join("labels.i32"), l)?;
            println!(
                "wrote {0}/vectors.f32 and {0}/labels.i32; compare: python fixtures/dedup/sklearn_bench.py --input {0}/vectors.f32 --dim {1} --eps 0.9 --min-samples 2 --compare {0}/labels.i32",
                dir.display(),
                x.dim
            );
        }
        return Ok(());
    }
    let points = Points {
        keys: (0..x.rows).map(|i| format!("{i:016x}")).collect(),
        x,
        scores: None,
    };
    let state = State::new(&scratch.join("dedup-state"))?;
    let t = Instant::now();
    let (outcome, history) = driver::run_all(&points, &settings, &state, &mut ())?;
    let rounds_s = t.elapsed().as_secs_f64();
    let rows = driver::finish(&points, &history);
    let found = planted
        .iter()
        .filter(|(a, b)| rows[*a as usize].representative == rows[*b as usize].representative)
        .count();
    for r in &outcome.rounds {
        println!(
            "  round {} done after {:.1} s of partition work",
            r.round, r.part_seconds
        );
        println!(
            "  round {}: {} partitions (largest {}), {} → {} ({} removed), kernel {:.1} GFLOP/s",
            r.round, r.parts, r.max_part, r.images_in, r.images_out, r.removed, r.kernel_gflops
        );
    }
    println!(
        "partitioned ({:?}, size {}): {:.1} s, {} rounds{}, {} → {} kept; planted pairs found {found}/{} ({:.2}%); peak RSS {:.0} MiB",
        settings.partition,
        settings.partition_size,
        rounds_s,
        outcome.rounds.len(),
        if outcome.converged { " (converged)" } else { " (max rounds)" },
        rows.len(),
        rows.iter().filter(|r| r.kept).count(),
        planted.len(),
        100.0 * found as f64 / planted.len().max(1) as f64,
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Florence-2 generation timed alone (pixels prepared beforehand).
fn bench_caption(args: &BenchArgs, input: &Path) -> anyhow::Result<()> {
    use curate_onnx::florence::{prompt_of, Florence};
    use curate_vision::preprocess::{load_rgb, DecodeScale, PixelSpec};
    let model_dir = args.model.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/florence2-tiny")
    });
    let rt = curate_onnx::init(&crate::paths::onnxruntime_dirs())?;
    let mut model = Florence::load(
        rt,
        &model_dir,
        "",
        &curate_onnx::session::ModelOptions::default(),
    )?;
    model.gen.max_new_tokens = 20;
    let (mut files, mut blobs) = photos(input, &curate_vision::Limits::default())?;
    files.truncate(32);
    blobs.truncate(32);
    let spec = model.spec.clone();
    let tables = spec.tables();
    let (h, w) = spec.fixed_hw().context("fixed size")?;
    let plane = (3 * h * w) as usize;
    let mut pixels = Vec::with_capacity(files.len() * plane);
    for bytes in &blobs {
        let loaded = load_rgb(
            bytes,
            &curate_vision::Limits::default(),
            &spec,
            DecodeScale::Reduced,
        )?;
        let mut buf = vec![0f32; plane];
        PixelSpec::to_chw(&spec.resize_crop(&loaded.rgb), &tables, &mut buf);
        pixels.extend(buf);
    }
    let n = files.len();
    let prompt = prompt_of("caption").expect("known task");
    println!(
        "Florence-2 generation ({}, {} images, <CAPTION>, {} beams, max 20 new tokens, {} threads):",
        model_dir.display(),
        n,
        model.gen.num_beams,
        rayon::current_num_threads()
    );
    for kv in [true, false] {
        model.gen.kv_cache = kv;
        for bs in [1usize, 8, 32] {
            let t = Instant::now();
            let mut tokens = 0usize;
            for start in (0..n).step_by(bs) {
                let m = bs.min(n - start);
                let seqs = model.generate(
                    &pixels[start * plane..(start + m) * plane],
                    &vec![prompt; m],
                )?;
                tokens += seqs
                    .iter()
                    .map(|s| {
                        s.iter()
                            .skip(2)
                            .take_while(|&&t| {
                                t != model.gen.eos_token_id && t != model.gen.pad_token_id
                            })
                            .count()
                    })
                    .sum::<usize>();
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "  KV cache {:<3} batch {bs:>2}: {:>7.2} captions/s, {:>8.1} tokens/s ({tokens} tokens in {secs:.2} s)",
                if kv { "on" } else { "off" },
                n as f64 / secs,
                tokens as f64 / secs
            );
        }
    }
    println!(
        "peak RSS {:.0} MiB",
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// encode-latents: preprocessing per core for both stages, then the VAE encoder.
/// Writes `placements-<stage>.json` (file → resize and crop) next to the photos,
/// so `pipelines/tools/bench_pillow_latents.py` times Pillow on the same work
/// and checks it produces the same pixels (the sha256 printed here).
fn bench_latents(args: &BenchArgs, input: &Path) -> anyhow::Result<()> {
    use curate_vision::buckets::{self, Resolution};
    use curate_vision::preprocess::{load_rgb_for, DecodeScale};
    use sha2::Digest;
    let limits = curate_vision::Limits::default();
    let (files, blobs) = photos(input, &limits)?;
    let n = blobs.len() as f64;
    for stage in [Resolution::S256, Resolution::S512] {
        let key_of = |i: usize| format!("{i:016x}");
        // Decode + resize + crop + to-float ([-1, 1], CHW), as encode-latents prepares a crop.
        let prepare = |i: usize, scale: DecodeScale| -> (Vec<u8>, candle_core::Tensor) {
            let key = key_of(i);
            let l = load_rgb_for(&blobs[i], &limits, scale, &|w, h| {
                let p = buckets::place(stage, w, h, &key, 0);
                (p.resized_width, p.resized_height)
            })
            .expect("generated photos decode");
            let p = buckets::place(stage, l.source_width, l.source_height, &key, 0);
            let crop = buckets::resize_crop(l.rgb.as_raw(), l.rgb.width(), l.rgb.height(), &p);
            // encode-latents' own conversion (this crate builds unoptimised in dev).
            let x = curate_gen::vae::from_rgb8(
                &[&crop],
                p.bucket_h as usize,
                p.bucket_w as usize,
                &candle_core::Device::Cpu,
            )
            .expect("crop sizes match");
            (crop, x)
        };
        println!(
            "stage {} preprocessing ({} photos, decode + resize + crop + to-float):",
            stage.number(),
            blobs.len()
        );
        for scale in [DecodeScale::Full, DecodeScale::Reduced] {
            let t = Instant::now();
            let mut hasher = sha2::Sha256::new();
            for i in 0..blobs.len() {
                let (crop, x) = prepare(i, scale);
                hasher.update(&crop);
                std::hint::black_box(x);
            }
            let one = n / t.elapsed().as_secs_f64();
            let digest = hasher.finalize();
            let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            println!("  --decode-scale {scale:<8?} {one:>8.1} images/s on one core; sha256 of the uint8 crops {hex}…");
        }
        // The placements, for the Pillow counterpart.
        let placements: Vec<serde_json::Value> = files
            .iter()
            .zip(&blobs)
            .enumerate()
            .map(|(i, (f, b))| {
                let info = curate_vision::inspect(b, &limits).expect("generated photos decode");
                let p = buckets::place(stage, info.width, info.height, &key_of(i), 0);
                serde_json::json!({
                    "file": f.strip_prefix(input).unwrap_or(f).display().to_string(),
                    "resize": [p.resized_width, p.resized_height],
                    "box": [p.crop_left, p.crop_top, p.crop_left + p.bucket_w, p.crop_top + p.bucket_h],
                })
            })
            .collect();
        let path = input.join(format!("placements-{}.json", stage.number()));
        std::fs::write(&path, serde_json::to_vec(&placements)?)?;
    }
    let vae_path = args.vae.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/models/flux-vae-tiny/ae.safetensors")
    });
    let vae = curate_gen::vae::Vae::load(&vae_path, &candle_core::Device::Cpu)?;
    println!(
        "VAE encoder ({}; {:?}), batch 1, f32, {} threads:",
        vae_path.display(),
        vae.config,
        candle_core::utils::get_num_threads()
    );
    for size in [256usize, 512] {
        let x =
            candle_core::Tensor::randn(0f32, 0.5, (1, 3, size, size), &candle_core::Device::Cpu)?;
        std::hint::black_box(vae.encode(&x)?.mean.sum_all()?.to_scalar::<f32>()?); // warm-up
        let t = Instant::now();
        for _ in 0..args.iters.max(1) {
            std::hint::black_box(vae.encode(&x)?.mean.sum_all()?.to_scalar::<f32>()?);
        }
        let s = t.elapsed().as_secs_f64() / args.iters.max(1) as f64;
        println!("  {size}²: {:.3} s/image, {:.2} images/s", s, 1.0 / s);
    }
    println!(
        "peak RSS {:.2} GiB",
        peak_rss_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64
    );
    Ok(())
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("curate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    Ok(dir)
}
