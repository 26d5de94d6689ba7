//! `dedup`: near-duplicate removal by iterative partitioned DBSCAN (oboro
//! §IV-A2), exact within each partition.
//!
//! The work is split in steps that share files under `OUT/state/`:
//! [`plan`] (embeddings → `vectors.f32`, `keys.json`, round 1's partitions),
//! [`partition`] (one checkpoint file per partition; Slurm array tasks each
//! take the parts p ≡ I mod N and read only their vectors), [`merge`]
//! (survivors; the next round's plan, or the final tables). [`run`] does
//! them all in one process (or as one of several cooperating tasks),
//! skipping every file already written, so a killed run resumes where it
//! stopped.
//!
//! Dedup is not a shard-for-shard stage (every task works on every round,
//! and the one output shard needs all of them), so it does not implement
//! [`curate_stage::Stage`]; it uses the runtime's pieces: [`Upstream`],
//! [`TableShard`], [`StageSummary`], progress and the stall hook.
//!
//! Outputs: `part-00000.parquet` (table `dedup_clusters`, one row per
//! embedded image), [`dedup_keep::FILE`] (`dedup_keep`) and
//! [`dedup_clusters::SUMMARY_FILE`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use curate_core::split::ShardSplit;
use curate_core::stage::{Opened, ShardRecord, ShardState, StageDir, StageSpec};
use curate_dedup::driver::{
    self, ClusterRow, Keep, Outcome, PartResult, Plan, Points, RoundSummary, Settings, State,
};
use curate_dedup::kernel::Matrix;
use curate_dedup::partition::Rule;
use curate_dedup::DedupError;
use curate_io::dedup_clusters::{self, ClustersMeta, SUMMARY_FILE};
use curate_io::dedup_keep::{self, KeepRow};
use curate_io::{embeddings, scores};
use curate_stage::progress::{peak_rss_bytes, Progress};
use curate_stage::{bail, stall, Context, Result, StageError, StageSummary, TableShard, Upstream};

/// The folder of the shared state inside the stage folder.
const STATE_DIR: &str = "state";

/// What `curate dedup` is asked to do (its settings flags).
#[derive(Debug, Clone)]
pub struct DedupSettings {
    /// Neighbours when cos ≥ eps.
    pub eps: f32,
    /// DBSCAN's min_samples, counting the image itself.
    pub min_samples: usize,
    pub keep: Keep,
    /// A scores stage, for `Keep::BestScore`.
    pub scores: Option<PathBuf>,
    pub seed: u64,
    pub partition: Rule,
    pub partition_size: usize,
    pub max_rounds: u32,
}

impl DedupSettings {
    /// The driver's settings, checked.
    pub fn driver(&self) -> Result<Settings> {
        if !(-1.0..=1.0).contains(&self.eps) {
            bail!("--eps {} is not a cosine similarity in [-1, 1]", self.eps);
        }
        if self.min_samples == 0 {
            bail!("--min-samples must be at least 1 (it counts the image itself)");
        }
        if self.partition_size < 2 {
            bail!("--partition-size must be at least 2");
        }
        if self.keep == Keep::BestScore && self.scores.is_none() {
            bail!("--keep best-score needs --scores (a `curate score` stage directory)");
        }
        Ok(Settings {
            eps: self.eps,
            min_samples: self.min_samples,
            keep: self.keep,
            seed: self.seed,
            partition: self.partition,
            partition_size: self.partition_size,
            max_rounds: self.max_rounds.max(1),
            block: curate_dedup::kernel::DEFAULT_BLOCK,
        })
    }
}

/// A whole dedup run in this process (`curate dedup IN -o OUT`).
#[derive(Debug, Clone)]
pub struct DedupRun {
    pub input: PathBuf,
    pub output: PathBuf,
    pub settings: DedupSettings,
    /// Discard a previous output made with other settings.
    pub overwrite: bool,
    /// This task among the cooperating ones: each computes the partitions
    /// p with p mod N = I of every round; task 0 writes the tables.
    pub split: ShardSplit,
    /// Threads of the similarity kernel (0 = all cores).
    pub threads: usize,
}

/// What a step of a distributed run did, and the command to run next.
#[derive(Debug, Default)]
pub struct Step {
    pub summary: StageSummary,
    /// For the user: what to run next (none once the tables are written).
    pub next: Option<String>,
}

fn dd(e: DedupError) -> StageError {
    StageError::other(e)
}

fn json(e: serde_json::Error) -> StageError {
    StageError::other(e)
}

/// Runs `f` on a pool of `threads` threads (0 = all cores).
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("kernel thread pool")?
        .install(f)
}

/// `curate dedup IN -o OUT`: every step, resuming from the state folder.
pub fn run(r: &DedupRun) -> Result<StageSummary> {
    with_threads(r.threads, || run_local(r))
}

/// `curate dedup plan`: reads the embeddings into the state and plans round 1.
pub fn plan(
    input: &Path,
    output: &Path,
    settings: &DedupSettings,
    overwrite: bool,
) -> Result<Step> {
    let (stage, _) = open_stage(input, output, settings, overwrite)?;
    prepare(&stage, input, settings)?;
    let state = State::new(&stage.dir().join(STATE_DIR)).map_err(dd)?;
    let plan: Plan = state
        .read(&state.plan_path(1))
        .map_err(dd)?
        .expect("prepare plans round 1");
    Ok(Step {
        summary: StageSummary::default(),
        next: Some(format!(
            "round 1: {} partitions; run `curate dedup partition {} --round 1` for each",
            plan.parts.len(),
            output.display()
        )),
    })
}

/// Opens (or creates) the stage folder, its manifest recording `settings`;
/// the input must be a complete embeddings stage.
fn open_stage(
    input: &Path,
    output: &Path,
    settings: &DedupSettings,
    overwrite: bool,
) -> Result<(StageDir, Upstream)> {
    let s = settings.driver()?;
    let upstream = Upstream::open(input, &[embeddings::table().name.as_str()])?;
    let spec = StageSpec {
        stage: "dedup".into(),
        schema: dedup_clusters::table().name.clone(),
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
    let state = output.join(STATE_DIR);
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

fn verify_clusters(path: &Path, rec: &ShardRecord) -> std::result::Result<(), String> {
    curate_io::verify_shard(path, dedup_clusters::table(), Some(rec.records))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Loads the embeddings into `state/` (once) and plans round 1.
fn prepare(stage: &StageDir, input: &Path, args: &DedupSettings) -> Result<Points> {
    let settings = args.driver()?;
    let state = State::new(&stage.dir().join(STATE_DIR)).map_err(dd)?;
    let existing: Option<StateInfo> = state.read(&state.info_path()).map_err(dd)?;
    let points = match existing {
        Some(info) if info.settings == settings => load_points(&state, true)?,
        _ => {
            let t = Instant::now();
            let upstream = Upstream::open(input, &[embeddings::table().name.as_str()])?;
            let (keys, x, model) = read_embeddings(&upstream)?;
            let scores = match &args.scores {
                Some(dir) => Some(read_scores(dir, &keys)?),
                None => None,
            };
            state.write_vectors(&x).map_err(dd)?;
            state.write(&state.keys_path(), &keys).map_err(dd)?;
            if let Some(s) = &scores {
                state.write(&state.scores_path(), s).map_err(dd)?;
            }
            state
                .write(
                    &state.info_path(),
                    &StateInfo {
                        settings: settings.clone(),
                        rows: x.rows,
                        dim: x.dim,
                        model,
                        seconds_to_load: t.elapsed().as_secs_f64(),
                    },
                )
                .map_err(dd)?;
            tracing::info!(
                "dedup: {} embeddings of dimension {} loaded in {:.1} s",
                x.rows,
                x.dim,
                t.elapsed().as_secs_f64()
            );
            Points { keys, x, scores }
        }
    };
    if state
        .read::<Plan>(&state.plan_path(1))
        .map_err(dd)?
        .is_none()
    {
        let all: Vec<u32> = (0..points.keys.len() as u32).collect();
        let plan = driver::plan_round(&points, &settings, 1, &all);
        state.write(&state.plan_path(1), &plan).map_err(dd)?;
    }
    Ok(points)
}

/// Every ok embedding of the stage, normalised, with its key; the model.
fn read_embeddings(upstream: &Upstream) -> Result<(Vec<String>, Matrix, Option<String>)> {
    let mut keys = Vec::new();
    let mut data = Vec::new();
    let mut dim = 0usize;
    let mut model = None;
    for path in upstream.files() {
        for batch in embeddings::read(&path, 8192)? {
            let batch = batch?;
            if dim == 0 {
                dim = batch.dim;
                // Every row at most: growing by doubling held up to twice the vectors.
                data.reserve_exact(upstream.rows() as usize * dim);
            } else if batch.dim != dim {
                bail!(
                    "{}: embeddings of dimension {}, earlier shards had {dim}",
                    path.display(),
                    batch.dim
                );
            }
            for row in batch.rows {
                let Some(v) = row.ok() else {
                    continue;
                };
                data.extend_from_slice(v);
                if model.is_none() {
                    model = Some(row.model);
                }
                keys.push(row.key);
            }
        }
    }
    if keys.is_empty() {
        bail!(
            "{}: no embedded images (status ok) to deduplicate",
            upstream.dir.display()
        );
    }
    let mut x = Matrix::new(keys.len(), dim, data).map_err(dd)?;
    // f16 storage leaves norms a little off 1.
    x.normalise();
    Ok((keys, x, model))
}

/// Each key's score in the scores stage `dir` (NaN when it has none).
fn read_scores(dir: &Path, keys: &[String]) -> Result<Vec<f32>> {
    let upstream = Upstream::open(dir, &[scores::table().name.as_str()])?;
    let mut by_key: HashMap<String, f32> = HashMap::new();
    for path in upstream.files() {
        for batch in scores::read(&path, 8192)? {
            for s in batch? {
                if let Some(v) = s.score {
                    by_key.insert(s.key, v);
                }
            }
        }
    }
    Ok(keys
        .iter()
        .map(|k| by_key.get(k).copied().unwrap_or(f32::NAN))
        .collect())
}

fn read_info(state: &State, missing: impl FnOnce() -> String) -> Result<StateInfo> {
    state
        .read(&state.info_path())
        .map_err(dd)?
        .with_context(missing)
}

/// Keys and scores always; the vectors when `full` (else an empty matrix).
fn load_points(state: &State, full: bool) -> Result<Points> {
    let info = read_info(state, || {
        format!(
            "{}: no info.json; run `curate dedup plan` first",
            state.dir.display()
        )
    })?;
    let keys: Vec<String> = state
        .read(&state.keys_path())
        .map_err(dd)?
        .context("state/keys.json missing")?;
    let scores: Option<Vec<f32>> = state.read(&state.scores_path()).map_err(dd)?;
    let x = if full {
        state.read_vectors(info.rows, info.dim)
    } else {
        Matrix::new(0, info.dim, Vec::new())
    }
    .map_err(dd)?;
    Ok(Points { keys, x, scores })
}

/// The driver's events as progress lines; the dedup test hook.
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
            stall(0);
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
    fn waiting(&mut self, round: u32, missing: &[u32], waited: Duration) {
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

/// `e` and its causes, `: `-separated (what the failure marker records).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

fn run_local(r: &DedupRun) -> Result<StageSummary> {
    let t = Instant::now();
    let (mut stage, _) = open_stage(&r.input, &r.output, &r.settings, r.overwrite)?;
    if let ShardState::Complete(rec) = stage.shard_state(0, verify_clusters)? {
        tracing::info!("dedup: {} is complete; nothing to do", r.output.display());
        let mut summary = StageSummary {
            shards_total: 1,
            ..Default::default()
        };
        summary.add(&rec, false);
        return Ok(summary);
    }
    let settings = r.settings.driver()?;
    let split = &r.split;
    let state = State::new(&stage.dir().join(STATE_DIR)).map_err(dd)?;
    // Tell the other tasks (they would otherwise wait for this one's
    // partitions until the job's time limit).
    let shared = |e: StageError| {
        if split.count > 1 {
            state.mark_failed(split.index, &chain(&e));
        }
        e
    };
    let points = prepare(&stage, &r.input, &r.settings).map_err(shared)?;
    let mut reporter = Reporter {
        progress: Progress::new("dedup partitions", 0),
    };
    let share = driver::Share {
        index: split.index,
        count: split.count,
        poll: Duration::from_secs(2),
    };
    let (outcome, history) = driver::run_shared(&points, &settings, &state, &mut reporter, share)
        .map_err(|e| match e {
        DedupError::PeerFailed { .. } => dd(e),
        e => shared(dd(e)),
    })?;
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

/// `curate dedup partition DIR --round R`: the round's partitions this
/// task owns (or only `only`), reading only their vectors.
pub fn partition(
    dir: &Path,
    round: u32,
    only: Option<u32>,
    split: &ShardSplit,
    threads: usize,
) -> Result<StageSummary> {
    with_threads(threads, || partition_step(dir, round, only, split))
}

fn partition_step(
    dir: &Path,
    round: u32,
    only: Option<u32>,
    split: &ShardSplit,
) -> Result<StageSummary> {
    let state = State::new(&dir.join(STATE_DIR)).map_err(dd)?;
    let info = read_info(&state, || {
        format!(
            "{}: not planned; run `curate dedup plan` first",
            dir.display()
        )
    })?;
    let plan: Plan = state
        .read(&state.plan_path(round))
        .map_err(dd)?
        .with_context(|| {
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
        if let Some(r) = state.read::<PartResult>(&path).map_err(dd)? {
            if r.members == *members {
                tracing::info!("dedup: round {round} partition {p} already done");
                continue;
            }
        }
        let rows = state.read_rows(info.dim, members).map_err(dd)?;
        let r = driver::run_part_rows(&rows, &points, &info.settings, round, p, members);
        state.write(&path, &r).map_err(dd)?;
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

/// `curate dedup merge DIR --round R`: the round's survivors; then the next
/// round's plan, or the final tables when the round removed nothing or was
/// the last.
pub fn merge(dir: &Path, round: u32) -> Result<Step> {
    let t = Instant::now();
    let state = State::new(&dir.join(STATE_DIR)).map_err(dd)?;
    let info = read_info(&state, || {
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
            .read(&state.plan_path(r))
            .map_err(dd)?
            .with_context(|| format!("round {r} was never planned"))?;
        let mut results = Vec::new();
        let mut missing = Vec::new();
        for p in 0..plan.parts.len() as u32 {
            match state
                .read::<PartResult>(&state.part_path(r, p))
                .map_err(dd)?
            {
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
            state.write(&state.merged_path(r), &sum).map_err(dd)?;
            tracing::info!("{}", round_line(&sum));
        }
        survivors = s;
        outcome.converged = sum.removed == 0;
        outcome.rounds.push(sum);
        history.push(results);
    }
    let points = load_points(&state, true)?;
    if outcome.converged || round >= settings.max_rounds {
        let manifest = StageDir::inspect(dir)?
            .with_context(|| format!("{}: no manifest", dir.display()))?
            .0;
        let spec = StageSpec {
            stage: manifest.stage.clone(),
            schema: manifest.schema.name.clone(),
            config: manifest.config.clone(),
            inputs: manifest.inputs.clone(),
            num_shards: manifest.num_shards,
        };
        let (mut stage, _) = StageDir::open(dir, &spec, false)?;
        let summary = finalize(&mut stage, &points, &settings, &outcome, &history, t)?;
        Ok(Step {
            summary,
            next: None,
        })
    } else {
        let next = driver::plan_round(&points, &settings, round + 1, &survivors);
        state
            .write(&state.plan_path(round + 1), &next)
            .map_err(dd)?;
        Ok(Step {
            summary: StageSummary::default(),
            next: Some(format!(
                "round {}: {} partitions; run `curate dedup partition {} --round {}`",
                round + 1,
                next.parts.len(),
                dir.display(),
                round + 1
            )),
        })
    }
}

/// A row of the clusters table, keys borrowed from `points`.
fn table_row<'a>(r: &ClusterRow, points: &'a Points) -> dedup_clusters::ClusterRow<&'a str> {
    let key = |i: u32| points.keys[i as usize].as_str();
    let single = r.cluster_size == 1;
    dedup_clusters::ClusterRow {
        key: key(r.index),
        cluster_id: r.cluster_id,
        round: r.round,
        partition: r.partition,
        role: r.role.as_str(),
        merged_into: r.merged_into.map(key),
        representative: (!single).then(|| key(r.representative)),
        cosine_to_representative: (!single).then_some(r.cosine_to_representative),
        nearest_key: r.nearest.map(|(j, _)| key(j)),
        nearest_cosine: r.nearest.map(|(_, s)| s),
        cluster_size: r.cluster_size,
        cluster_min_cosine: (!single).then_some(r.cluster_min_cosine),
        kept: r.kept,
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
) -> Result<StageSummary> {
    let rows = driver::finish(points, history);
    let schema = dedup_clusters::arrow_schema(&ClustersMeta {
        eps: settings.eps,
        min_samples: settings.min_samples,
        keep: settings.keep.as_str().to_string(),
        seed: settings.seed,
        partition: format!("{:?}", settings.partition).to_lowercase(),
        partition_size: settings.partition_size,
        rounds: outcome.rounds.len(),
        converged: outcome.converged,
    })?;
    let table: Vec<_> = rows.iter().map(|r| table_row(r, points)).collect();
    let batch = dedup_clusters::to_batch(&schema, &table)?;
    drop(table);
    let mut shard = TableShard::begin(stage, 0, dedup_clusters::table(), schema, 65_536)?;
    shard.write(&batch, std::iter::empty())?;
    let kept: Vec<KeepRow> = rows
        .iter()
        .filter(|r| r.kept)
        .map(|r| KeepRow {
            key: points.keys[r.index as usize].clone(),
            cluster_id: r.cluster_id,
            cluster_size: r.cluster_size,
        })
        .collect();
    dedup_keep::write(&stage.dir().join(dedup_keep::FILE), &kept)?;
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
        serde_json::to_string_pretty(&summary)
            .map_err(json)?
            .as_bytes(),
    )?;
    let rec = shard.commit(vec![STATE_DIR.into()], 0.0)?;
    stage.consolidate(&[dedup_keep::FILE.to_string(), SUMMARY_FILE.to_string()])?;
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
