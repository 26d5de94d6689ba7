//! `curate dedup EMB -o OUT`: near-duplicate removal by iterative
//! partitioned DBSCAN (oboro §IV-A2), exact within each partition.
//!
//! The work is split in steps that share files under `OUT/state/`:
//! `plan` (embeddings → `vectors.f32`, `keys.json`, round 1's partitions),
//! `partition --round R` (one checkpoint file per partition; Slurm array
//! tasks each take the parts p ≡ I mod N and read only their vectors),
//! `merge --round R` (survivors; the next round's plan, or the final
//! tables). Plain `curate dedup` runs them all here, skipping every file
//! already written, so a killed run resumes where it stopped.
//!
//! Outputs: `part-00000.parquet` (table `dedup_clusters`, one row per
//! embedded image), `keep.parquet` (`dedup_keep`), `summary.json`.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use curate_core::split::ShardSplit;
use curate_core::stage::{Opened, ShardState, StageDir, StageSpec};
use curate_dedup::driver::{
    self, ClusterRow, Outcome, PartResult, Plan, Points, RoundSummary, Settings, State,
};
use curate_dedup::kernel::Matrix;

use super::shared::{TableShard, Upstream};
use super::StageSummary;
use crate::cli::{DedupArgs, DedupSettingsArgs, DedupStep};
use crate::progress::{peak_rss_bytes, Progress};

const KEEP_FILE: &str = "keep.parquet";
const SUMMARY_FILE: &str = "summary.json";

pub fn run(args: &DedupArgs) -> anyhow::Result<StageSummary> {
    match &args.step {
        None => {
            let input = args.input.as_ref().expect("clap requires the input");
            let output = args.output.as_ref().expect("clap requires --output");
            let split = ShardSplit::from_env(args.shards.shard_index, args.shards.num_shards)?;
            with_threads(args.threads, || {
                run_local(input, output, &args.settings, args.overwrite, &split)
            })
        }
        Some(DedupStep::Plan {
            input,
            output,
            settings,
            overwrite,
        }) => {
            let (stage, _) = open_stage(input, output, settings, *overwrite)?;
            prepare(&stage, input, settings)?;
            let state = State::new(&stage.dir().join("state"))?;
            let plan: Plan = state
                .read(&state.plan_path(1))?
                .expect("prepare plans round 1");
            println!(
                "round 1: {} partitions; run `curate dedup partition {} --round 1` for each",
                plan.parts.len(),
                output.display()
            );
            Ok(StageSummary::default())
        }
        Some(DedupStep::Partition {
            dir,
            round,
            part,
            threads,
            shards,
        }) => with_threads(*threads, || {
            let split = ShardSplit::from_env(shards.shard_index, shards.num_shards)?;
            partition_step(dir, *round, *part, &split)
        }),
        Some(DedupStep::Merge { dir, round }) => merge_step(dir, *round),
    }
}

fn with_threads<T: Send>(
    threads: usize,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("kernel thread pool")?
        .install(f)
}

fn settings_of(a: &DedupSettingsArgs) -> anyhow::Result<Settings> {
    if !(-1.0..=1.0).contains(&a.eps) {
        bail!("--eps {} is not a cosine similarity in [-1, 1]", a.eps);
    }
    if a.min_samples == 0 {
        bail!("--min-samples must be at least 1 (it counts the image itself)");
    }
    if a.partition_size < 2 {
        bail!("--partition-size must be at least 2");
    }
    if a.keep == driver::Keep::BestScore && a.scores.is_none() {
        bail!("--keep best-score needs --scores (a `curate score` stage directory)");
    }
    Ok(Settings {
        eps: a.eps,
        min_samples: a.min_samples,
        keep: a.keep,
        seed: a.seed,
        partition: a.partition,
        partition_size: a.partition_size,
        max_rounds: a.max_rounds.max(1),
        block: curate_dedup::kernel::DEFAULT_BLOCK,
    })
}

fn open_stage(
    input: &Path,
    output: &Path,
    settings: &DedupSettingsArgs,
    overwrite: bool,
) -> anyhow::Result<(StageDir, Upstream)> {
    let s = settings_of(settings)?;
    let upstream = Upstream::open(input, &["embeddings"])?;
    let spec = StageSpec {
        stage: "dedup".into(),
        schema: "dedup_clusters".into(),
        config: serde_json::json!({
            "eps": s.eps,
            "min_samples": s.min_samples,
            "keep": s.keep.as_str(),
            "scores": settings.scores.as_ref().map(|p| p.display().to_string()),
            "seed": s.seed,
            "partition": s.partition,
            "partition_size": s.partition_size,
            "max_rounds": s.max_rounds,
        }),
        inputs: upstream.inputs(),
        num_shards: 1,
    };
    let (stage, opened) = StageDir::open(output, &spec, overwrite)?;
    // Only an overwrite discards the shared state. A fresh manifest does not:
    // with several Slurm tasks, the one that created the manifest may get
    // here after another task (which found it, "resumed") started writing
    // state/, and removing it then loses that task's files. A state left by
    // other settings is rewritten by `prepare` (it compares info.json).
    let state = output.join("state");
    if opened == Opened::Overwritten && state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    Ok((stage, upstream))
}

/// What `plan` writes besides the round plans.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct StateInfo {
    settings: Settings,
    rows: usize,
    dim: usize,
    model: Option<String>,
    seconds_to_load: f64,
}

fn verify_clusters(path: &Path, rec: &curate_core::stage::ShardRecord) -> Result<(), String> {
    curate_io::verify_shard(path, clusters_table(), Some(rec.records))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn clusters_table() -> &'static curate_core::schema::TableSchema {
    curate_core::schema::get("dedup_clusters").expect("built-in schema")
}

/// Loads the embeddings into `state/` (once) and plans round 1.
fn prepare(stage: &StageDir, input: &Path, args: &DedupSettingsArgs) -> anyhow::Result<Points> {
    let settings = settings_of(args)?;
    let state = State::new(&stage.dir().join("state"))?;
    let info_path = state.dir.join("info.json");
    let existing: Option<StateInfo> = state.read(&info_path)?;
    let points = match existing {
        Some(info) if info.settings == settings => load_points(&state, true)?,
        _ => {
            let t = Instant::now();
            let upstream = Upstream::open(input, &["embeddings"])?;
            let (keys, x, model) = read_embeddings(&upstream)?;
            let scores = match &args.scores {
                Some(dir) => Some(read_scores(dir, &keys)?),
                None => None,
            };
            write_vectors(&state.dir.join("vectors.f32"), &x)?;
            state.write(&state.dir.join("keys.json"), &keys)?;
            if let Some(s) = &scores {
                state.write(&state.dir.join("scores.json"), s)?;
            }
            state.write(
                &info_path,
                &StateInfo {
                    settings: settings.clone(),
                    rows: x.rows,
                    dim: x.dim,
                    model,
                    seconds_to_load: t.elapsed().as_secs_f64(),
                },
            )?;
            tracing::info!(
                "dedup: {} embeddings of dimension {} loaded in {:.1} s",
                x.rows,
                x.dim,
                t.elapsed().as_secs_f64()
            );
            Points { keys, x, scores }
        }
    };
    if state.read::<Plan>(&state.plan_path(1))?.is_none() {
        let all: Vec<u32> = (0..points.keys.len() as u32).collect();
        let plan = driver::plan_round(&points, &settings, 1, &all);
        state.write(&state.plan_path(1), &plan)?;
    }
    Ok(points)
}

/// Every ok embedding of the stage, normalised, with its key.
fn read_embeddings(upstream: &Upstream) -> anyhow::Result<(Vec<String>, Matrix, Option<String>)> {
    let table = curate_core::schema::get("embeddings")?;
    let mut keys = Vec::new();
    let mut data = Vec::new();
    let mut dim = 0usize;
    let mut model = None;
    for rec in &upstream.shards {
        let path = upstream.shard_path(rec);
        for batch in
            curate_io::stream_columns(&path, table, &["key", "status", "model", "embedding"], 8192)?
        {
            let batch = batch?;
            let k = batch.column(0).as_string::<i32>();
            let st = batch.column(1).as_string::<i32>();
            let m = batch.column(2).as_string::<i32>();
            let e = batch.column(3).as_fixed_size_list();
            let d = e.value_length() as usize;
            if dim == 0 {
                dim = d;
            } else if d != dim {
                bail!(
                    "{}: embeddings of dimension {d}, earlier shards had {dim}",
                    path.display()
                );
            }
            for i in 0..batch.num_rows() {
                if st.value(i) != "ok" || e.is_null(i) {
                    continue;
                }
                if model.is_none() {
                    model = Some(m.value(i).to_string());
                }
                keys.push(k.value(i).to_string());
                let v = e.value(i);
                match v.data_type() {
                    arrow_schema::DataType::Float16 => data.extend(
                        v.as_primitive::<Float16Type>()
                            .values()
                            .iter()
                            .map(|h| h.to_f32()),
                    ),
                    _ => data.extend_from_slice(v.as_primitive::<Float32Type>().values()),
                }
            }
        }
    }
    if keys.is_empty() {
        bail!(
            "{}: no embedded images (status ok) to deduplicate",
            upstream.dir.display()
        );
    }
    let mut x = Matrix::new(keys.len(), dim, data)?;
    // f16 storage leaves norms a little off 1.
    x.normalise();
    Ok((keys, x, model))
}

fn read_scores(dir: &Path, keys: &[String]) -> anyhow::Result<Vec<f32>> {
    let upstream = Upstream::open(dir, &["scores"])?;
    let table = curate_core::schema::get("scores")?;
    let mut by_key: HashMap<String, f32> = HashMap::new();
    for rec in &upstream.shards {
        for batch in
            curate_io::stream_columns(&upstream.shard_path(rec), table, &["key", "score"], 8192)?
        {
            let batch = batch?;
            let k = batch.column(0).as_string::<i32>();
            let s = batch.column(1).as_primitive::<Float32Type>();
            for i in 0..batch.num_rows() {
                if s.is_valid(i) {
                    by_key.insert(k.value(i).to_string(), s.value(i));
                }
            }
        }
    }
    Ok(keys
        .iter()
        .map(|k| by_key.get(k).copied().unwrap_or(f32::NAN))
        .collect())
}

fn write_vectors(path: &Path, x: &Matrix) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| tmp.display().to_string())?,
        );
        for v in &x.data {
            f.write_all(&v.to_le_bytes())?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Keys and scores always; the vectors when `full` (else an empty matrix).
fn load_points(state: &State, full: bool) -> anyhow::Result<Points> {
    let info: StateInfo = state.read(&state.dir.join("info.json"))?.with_context(|| {
        format!(
            "{}: no info.json; run `curate dedup plan` first",
            state.dir.display()
        )
    })?;
    let keys: Vec<String> = state
        .read(&state.dir.join("keys.json"))?
        .context("state/keys.json missing")?;
    let scores: Option<Vec<f32>> = state.read(&state.dir.join("scores.json"))?;
    let x = if full {
        let bytes = std::fs::read(state.dir.join("vectors.f32")).context("state/vectors.f32")?;
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        Matrix::new(info.rows, info.dim, data)?
    } else {
        Matrix::new(0, info.dim, Vec::new())?
    };
    Ok(Points { keys, x, scores })
}

/// The rows `members` of `state/vectors.f32`, read one by one.
fn read_rows(state: &State, dim: usize, members: &[u32]) -> anyhow::Result<Matrix> {
    let path = state.dir.join("vectors.f32");
    let f = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
    let mut buf = vec![0u8; dim * 4];
    let mut data = Vec::with_capacity(members.len() * dim);
    for &m in members {
        f.read_exact_at(&mut buf, m as u64 * dim as u64 * 4)
            .with_context(|| format!("{}: row {m}", path.display()))?;
        data.extend(
            buf.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
        );
    }
    Ok(Matrix::new(members.len(), dim, data)?)
}

struct Reporter {
    progress: Progress,
}

impl driver::Observer for Reporter {
    fn part_start(&mut self, round: u32, part: u32) {
        // Test hook: CURATE_TEST_DEDUP_STALL=R:P blocks before round R's partition P.
        if std::env::var("CURATE_TEST_DEDUP_STALL").ok() == Some(format!("{round}:{part}")) {
            self.progress.event(&format!(
                "dedup: stalling before round {round} partition {part} (CURATE_TEST_DEDUP_STALL)"
            ));
            super::shared::stall(0);
        }
    }
    fn part_done(&mut self, round: u32, part: u32, parts: usize, reused: bool) {
        if reused {
            self.progress.event(&format!(
                "dedup: round {round} partition {part}/{parts} already done"
            ));
        }
        self.progress.inc(1);
    }
    fn round_done(&mut self, s: &RoundSummary) {
        self.progress.event(&round_line(s));
    }
    fn waiting(&mut self, round: u32, missing: &[u32], waited: std::time::Duration) {
        if waited.as_secs() % 60 == 0 {
            let list: Vec<String> = missing.iter().take(10).map(u32::to_string).collect();
            self.progress.event(&format!(
                "dedup: round {round}: waiting for partitions {} of the other tasks ({} s)",
                list.join(", "),
                waited.as_secs()
            ));
        }
    }
}

fn round_line(s: &RoundSummary) -> String {
    format!(
        "dedup: round {} complete: {} partitions (largest {}), {} → {} images ({} removed, {:.2}%), {} clusters, {} noise, {} neighbour pairs, kernel {:.1} GFLOP/s",
        s.round,
        s.parts,
        s.max_part,
        s.images_in,
        s.images_out,
        s.removed,
        100.0 * s.removed as f64 / s.images_in.max(1) as f64,
        s.clusters,
        s.noise,
        s.neighbour_pairs,
        s.kernel_gflops
    )
}

fn run_local(
    input: &Path,
    output: &Path,
    args: &DedupSettingsArgs,
    overwrite: bool,
    split: &ShardSplit,
) -> anyhow::Result<StageSummary> {
    let t = Instant::now();
    let (mut stage, _) = open_stage(input, output, args, overwrite)?;
    if let ShardState::Complete(rec) = stage.shard_state(0, verify_clusters)? {
        tracing::info!("dedup: {} is complete; nothing to do", output.display());
        let mut summary = StageSummary {
            shards_total: 1,
            ..Default::default()
        };
        summary.add(&rec, false);
        return Ok(summary);
    }
    let settings = settings_of(args)?;
    let state = State::new(&stage.dir().join("state"))?;
    let shared = |e: anyhow::Error| {
        // Tell the other tasks (they would otherwise wait for this one's
        // partitions until the job's time limit).
        if split.count > 1
            && e.downcast_ref::<curate_dedup::DedupError>()
                .is_none_or(|d| !matches!(d, curate_dedup::DedupError::PeerFailed { .. }))
        {
            state.mark_failed(split.index, &format!("{e:#}"));
        }
        e
    };
    let points = prepare(&stage, input, args).map_err(shared)?;
    let mut reporter = Reporter {
        progress: Progress::new("dedup partitions", 0),
    };
    let share = driver::Share {
        index: split.index,
        count: split.count,
        poll: std::time::Duration::from_secs(2),
    };
    let (outcome, history) = driver::run_shared(&points, &settings, &state, &mut reporter, share)
        .map_err(|e| shared(e.into()))?;
    reporter.progress.finish();
    if split.index != 0 {
        tracing::info!(
            "dedup: task {} of {} done; task 0 writes the tables",
            split.index,
            split.count
        );
        return Ok(StageSummary::default());
    }
    finalize(&mut stage, &points, &settings, &outcome, &history, t)
}

fn partition_step(
    dir: &Path,
    round: u32,
    only: Option<u32>,
    split: &ShardSplit,
) -> anyhow::Result<StageSummary> {
    let state = State::new(&dir.join("state"))?;
    let info: StateInfo = state.read(&state.dir.join("info.json"))?.with_context(|| {
        format!(
            "{}: not planned; run `curate dedup plan` first",
            dir.display()
        )
    })?;
    let plan: Plan = state.read(&state.plan_path(round))?.with_context(|| {
        format!(
            "{}: round {round} is not planned yet (merge round {} first)",
            dir.display(),
            round.saturating_sub(1)
        )
    })?;
    let points = load_points(&state, false)?;
    let parts: Vec<u32> = match only {
        Some(p) if (p as usize) < plan.parts.len() => vec![p],
        Some(p) => bail!(
            "round {round} has {} partitions, no part {p}",
            plan.parts.len()
        ),
        None => split.owned(plan.parts.len() as u32).collect(),
    };
    for p in parts {
        let path = state.part_path(round, p);
        let members = &plan.parts[p as usize];
        if let Some(r) = state.read::<PartResult>(&path)? {
            if r.members == *members {
                tracing::info!("dedup: round {round} partition {p} already done");
                continue;
            }
        }
        let rows = read_rows(&state, info.dim, members)?;
        let r = driver::run_part_rows(&rows, &points, &info.settings, round, p, members);
        state.write(&path, &r)?;
        tracing::info!(
            "dedup: round {round} partition {p}: {} images, {} clusters, {} pairs in {:.2} s ({:.1} GFLOP/s)",
            members.len(),
            r.clusters,
            r.pairs,
            r.seconds,
            r.gflops
        );
    }
    Ok(StageSummary::default())
}

fn merge_step(dir: &Path, round: u32) -> anyhow::Result<StageSummary> {
    let t = Instant::now();
    let state = State::new(&dir.join("state"))?;
    let info: StateInfo = state.read(&state.dir.join("info.json"))?.with_context(|| {
        format!(
            "{}: not planned; run `curate dedup plan` first",
            dir.display()
        )
    })?;
    let settings = info.settings.clone();
    let mut outcome = Outcome {
        rounds: Vec::new(),
        converged: false,
    };
    let mut history = Vec::new();
    let mut survivors = Vec::new();
    for r in 1..=round {
        let plan: Plan = state
            .read(&state.plan_path(r))?
            .with_context(|| format!("round {r} was never planned"))?;
        let mut results = Vec::new();
        let mut missing = Vec::new();
        for p in 0..plan.parts.len() as u32 {
            match state.read::<PartResult>(&state.part_path(r, p))? {
                Some(res) => results.push(res),
                None => missing.push(p.to_string()),
            }
        }
        if !missing.is_empty() {
            bail!(
                "round {r}: partitions {} of {} not done; run `curate dedup partition {} --round {r}` for them",
                missing.join(", "),
                plan.parts.len(),
                dir.display()
            );
        }
        let (s, sum) = driver::merge_round(&plan, &results);
        if r == round {
            state.write(&state.merged_path(r), &sum)?;
            tracing::info!("{}", round_line(&sum));
        }
        survivors = s;
        outcome.converged = sum.removed == 0;
        outcome.rounds.push(sum);
        history.push(results);
    }
    let points = load_points(&state, true)?;
    if outcome.converged || round >= settings.max_rounds {
        let manifest_spec = StageDir::inspect(dir)?
            .with_context(|| format!("{}: no manifest", dir.display()))?
            .0;
        let spec = StageSpec {
            stage: manifest_spec.stage.clone(),
            schema: manifest_spec.schema.name.clone(),
            config: manifest_spec.config.clone(),
            inputs: manifest_spec.inputs.clone(),
            num_shards: manifest_spec.num_shards,
        };
        let (mut stage, _) = StageDir::open(dir, &spec, false)?;
        finalize(&mut stage, &points, &settings, &outcome, &history, t)
    } else {
        let next = driver::plan_round(&points, &settings, round + 1, &survivors);
        println!(
            "round {}: {} partitions; run `curate dedup partition {} --round {}`",
            round + 1,
            next.parts.len(),
            dir.display(),
            round + 1
        );
        state.write(&state.plan_path(round + 1), &next)?;
        Ok(StageSummary::default())
    }
}

/// The clusters table (the stage's one shard), the keep list and the summary.
fn finalize(
    stage: &mut StageDir,
    points: &Points,
    settings: &Settings,
    outcome: &Outcome,
    history: &[Vec<PartResult>],
    started: Instant,
) -> anyhow::Result<StageSummary> {
    let rows = driver::finish(points, history);
    let meta = [
        ("eps", settings.eps.to_string()),
        ("min_samples", settings.min_samples.to_string()),
        ("keep", settings.keep.as_str().to_string()),
        ("seed", settings.seed.to_string()),
        (
            "partition",
            format!("{:?}", settings.partition).to_lowercase(),
        ),
        ("partition_size", settings.partition_size.to_string()),
        ("rounds", outcome.rounds.len().to_string()),
        ("converged", outcome.converged.to_string()),
    ];
    let schema = {
        let s = clusters_table().arrow_schema()?;
        let mut m = s.metadata().clone();
        for (k, v) in &meta {
            m.insert(k.to_string(), v.clone());
        }
        Arc::new(s.with_metadata(m))
    };
    let batch = clusters_batch(&rows, points, schema.clone())?;
    let mut shard = TableShard::begin(stage, 0, clusters_table(), schema, 65_536)?;
    shard.write(&batch, std::iter::empty())?;
    let keep_table = curate_core::schema::get("dedup_keep")?;
    let kept: Vec<&ClusterRow> = rows.iter().filter(|r| r.kept).collect();
    let keep_batch = RecordBatch::try_new(
        curate_io::default_schema(keep_table)?,
        vec![
            Arc::new(StringArray::from_iter_values(
                kept.iter().map(|r| points.keys[r.index as usize].as_str()),
            )) as ArrayRef,
            Arc::new(kept.iter().map(|r| r.cluster_id).collect::<Int64Array>()),
            Arc::new(kept.iter().map(|r| r.cluster_size).collect::<UInt32Array>()),
        ],
    )?;
    curate_io::write_table(
        keep_table,
        &stage.dir().join(KEEP_FILE),
        &[keep_batch],
        curate_io::default_schema(keep_table)?,
    )?;
    let clusters = rows
        .iter()
        .filter(|r| r.kept && r.cluster_id.is_some())
        .count();
    let chained = rows
        .iter()
        .filter(|r| r.kept && r.cluster_id.is_some() && r.cluster_min_cosine < settings.eps)
        .count();
    let summary = serde_json::json!({
        "settings": settings,
        "images_in": rows.len(),
        "images_kept": kept.len(),
        "removed": rows.len() - kept.len(),
        "removal_rate": (rows.len() - kept.len()) as f64 / rows.len().max(1) as f64,
        "clusters": clusters,
        "chained_clusters": chained,
        "largest_cluster": rows.iter().map(|r| r.cluster_size).max().unwrap_or(0),
        "converged": outcome.converged,
        "rounds": outcome.rounds,
        "seconds": started.elapsed().as_secs_f64(),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    curate_core::stage::write_atomic(
        &stage.dir().join(SUMMARY_FILE),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    let rec = shard.commit(vec!["state".into()], 0.0)?;
    stage.consolidate(&[KEEP_FILE.to_string(), SUMMARY_FILE.to_string()])?;
    tracing::info!(
        "dedup: {} → {} images ({} removed, {:.2}%) in {} rounds{}; {clusters} clusters, {chained} chained below eps; {:.1} s, peak RSS {:.0} MiB",
        rows.len(),
        kept.len(),
        rows.len() - kept.len(),
        100.0 * (rows.len() - kept.len()) as f64 / rows.len().max(1) as f64,
        outcome.rounds.len(),
        if outcome.converged { " (converged)" } else { " (NOT converged: --max-rounds reached)" },
        started.elapsed().as_secs_f64(),
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
    let mut out = StageSummary {
        shards_total: 1,
        ..Default::default()
    };
    out.add(&rec, true);
    Ok(out)
}

fn clusters_batch(
    rows: &[ClusterRow],
    points: &Points,
    schema: arrow_schema::SchemaRef,
) -> anyhow::Result<RecordBatch> {
    let key = |i: u32| points.keys[i as usize].as_str();
    let single = |r: &ClusterRow| r.cluster_size == 1;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| key(r.index)),
        )),
        Arc::new(rows.iter().map(|r| r.cluster_id).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| r.round).collect::<UInt32Array>()),
        Arc::new(rows.iter().map(|r| r.partition).collect::<UInt32Array>()),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.role.as_str()),
        )),
        Arc::new(
            rows.iter()
                .map(|r| r.merged_into.map(key))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| (!single(r)).then(|| key(r.representative)))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| (!single(r)).then_some(r.cosine_to_representative))
                .collect::<Float32Array>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| r.nearest.map(|(j, _)| key(j)))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| r.nearest.map(|(_, s)| s))
                .collect::<Float32Array>(),
        ),
        Arc::new(rows.iter().map(|r| r.cluster_size).collect::<UInt32Array>()),
        Arc::new(
            rows.iter()
                .map(|r| (!single(r)).then_some(r.cluster_min_cosine))
                .collect::<Float32Array>(),
        ),
        Arc::new(rows.iter().map(|r| Some(r.kept)).collect::<BooleanArray>()),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
