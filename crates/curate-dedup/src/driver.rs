//! The iterative driver: plan a round (partition the survivors), cluster
//! each partition (a checkpoint file each), merge the round (survivors =
//! one representative per cluster + every noise point), repeat until a
//! round removes nothing or `max_rounds`; then the final tables.
//!
//! Every step reads and writes files under a state folder, so the steps
//! run as separate processes (Slurm array tasks for the partitions) or in
//! one; a finished step's file is never recomputed. Files are written to a
//! temporary name and renamed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::dbscan::{dbscan, Role};
use crate::kernel::{dot, eps_graph, Matrix};
use crate::partition::{self, Rule};
use crate::rng::hash_str;
use crate::DedupError;

/// Which member of a cluster is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Keep {
    /// Seeded random (the report's rule): the member with the lowest hash of (seed, key),
    /// so the choice does not depend on partitions or input order.
    Random,
    /// The member that comes first in the input.
    First,
    /// The member with the highest aesthetic score (ties and missing scores: first in input).
    BestScore,
}

impl std::str::FromStr for Keep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Keep::Random),
            "first" => Ok(Keep::First),
            "best-score" => Ok(Keep::BestScore),
            _ => Err(format!("`{s}`: expected random, first or best-score")),
        }
    }
}

impl Keep {
    pub fn as_str(self) -> &'static str {
        match self {
            Keep::Random => "random",
            Keep::First => "first",
            Keep::BestScore => "best-score",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// Neighbours when cos ≥ eps.
    pub eps: f32,
    /// Counting the point itself.
    pub min_samples: usize,
    pub keep: Keep,
    pub seed: u64,
    pub partition: Rule,
    pub partition_size: usize,
    pub max_rounds: u32,
    /// Rows per kernel block.
    pub block: usize,
}

/// The points being deduplicated: keys, unit vectors, optional scores (global index order).
pub struct Points {
    pub keys: Vec<String>,
    pub x: Matrix,
    pub scores: Option<Vec<f32>>,
}

/// A round's partitions (global indices, each sorted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub round: u32,
    pub parts: Vec<Vec<u32>>,
}

/// One partition's clustering.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartResult {
    pub round: u32,
    pub part: u32,
    pub members: Vec<u32>,
    /// Per member: cluster label within the partition, −1 noise.
    pub labels: Vec<i64>,
    /// Per member: 0 core, 1 border, 2 noise.
    pub roles: Vec<u8>,
    /// Per member: the global index of the representative it merges into, −1 when kept.
    pub merged_into: Vec<i64>,
    /// Per member: the most similar other member (global index, −1 none) and its cosine.
    pub nearest: Vec<i64>,
    pub nearest_cos: Vec<f32>,
    pub clusters: usize,
    pub pairs: usize,
    pub seconds: f64,
    pub gflops: f64,
}

/// A merged round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundSummary {
    pub round: u32,
    pub parts: usize,
    pub images_in: usize,
    pub images_out: usize,
    pub removed: usize,
    pub clusters: usize,
    pub noise: usize,
    pub neighbour_pairs: usize,
    /// Largest partition.
    pub max_part: usize,
    /// Sum of the partitions' kernel + DBSCAN time (the work, not the wall time of a parallel run).
    pub part_seconds: f64,
    pub kernel_gflops: f64,
}

/// Clusters one partition.
pub fn run_part(
    points: &Points,
    settings: &Settings,
    round: u32,
    part: u32,
    members: &[u32],
) -> PartResult {
    run_part_rows(
        &points.x.gather(members),
        points,
        settings,
        round,
        part,
        members,
    )
}

/// [`run_part`] with the members' rows given (`sub`, in `members` order): a
/// process that read only its partition's vectors passes `points` with an
/// empty matrix; only keys and scores are read from it.
pub fn run_part_rows(
    sub: &Matrix,
    points: &Points,
    settings: &Settings,
    round: u32,
    part: u32,
    members: &[u32],
) -> PartResult {
    let t = Instant::now();
    let g = eps_graph(sub, settings.eps, settings.block);
    let c = dbscan(&g, settings.min_samples);
    // Representative per label.
    let mut best: Vec<Option<usize>> = vec![None; c.clusters];
    for (local, &label) in c.labels.iter().enumerate() {
        if label < 0 {
            continue;
        }
        let slot = &mut best[label as usize];
        let better = match *slot {
            None => true,
            Some(cur) => prefer(points, settings, members[local], members[cur]),
        };
        if better {
            *slot = Some(local);
        }
    }
    let merged_into = c
        .labels
        .iter()
        .enumerate()
        .map(|(local, &label)| {
            if label < 0 {
                return -1;
            }
            let rep = best[label as usize].expect("every label has a member");
            if rep == local {
                -1
            } else {
                members[rep] as i64
            }
        })
        .collect();
    let seconds = t.elapsed().as_secs_f64();
    PartResult {
        round,
        part,
        members: members.to_vec(),
        labels: c.labels.clone(),
        roles: c
            .roles
            .iter()
            .map(|r| match r {
                Role::Core => 0,
                Role::Border => 1,
                Role::Noise => 2,
            })
            .collect(),
        merged_into,
        nearest: g
            .nearest
            .iter()
            .map(|n| n.map_or(-1, |(j, _)| members[j as usize] as i64))
            .collect(),
        nearest_cos: g
            .nearest
            .iter()
            .map(|n| n.map_or(f32::NAN, |(_, s)| s))
            .collect(),
        clusters: c.clusters,
        pairs: g.pairs(),
        seconds,
        gflops: g.flops / 1e9 / seconds.max(1e-9),
    }
}

/// True when global point `a` should represent its cluster rather than `b`.
fn prefer(points: &Points, settings: &Settings, a: u32, b: u32) -> bool {
    match settings.keep {
        Keep::First => a < b,
        Keep::Random => {
            let (ha, hb) = (
                hash_str(settings.seed, &points.keys[a as usize]),
                hash_str(settings.seed, &points.keys[b as usize]),
            );
            ha < hb || (ha == hb && a < b)
        }
        Keep::BestScore => {
            let s = |i: u32| {
                points
                    .scores
                    .as_ref()
                    .map(|v| v[i as usize])
                    .filter(|x| !x.is_nan())
                    .unwrap_or(f32::NEG_INFINITY)
            };
            s(a) > s(b) || (s(a) == s(b) && a < b)
        }
    }
}

/// Partitions the survivors of the previous round.
pub fn plan_round(points: &Points, settings: &Settings, round: u32, alive: &[u32]) -> Plan {
    let seed = settings.seed ^ (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Plan {
        round,
        parts: partition::split(
            settings.partition,
            &points.x,
            alive,
            settings.partition_size,
            seed,
        ),
    }
}

/// Survivors of a round, in index order, and its summary.
pub fn merge_round(plan: &Plan, results: &[PartResult]) -> (Vec<u32>, RoundSummary) {
    let mut survivors = Vec::new();
    let mut s = RoundSummary {
        round: plan.round,
        parts: plan.parts.len(),
        images_in: plan.parts.iter().map(Vec::len).sum(),
        images_out: 0,
        removed: 0,
        clusters: 0,
        noise: 0,
        neighbour_pairs: 0,
        max_part: plan.parts.iter().map(Vec::len).max().unwrap_or(0),
        part_seconds: 0.0,
        kernel_gflops: 0.0,
    };
    let mut flops = 0.0;
    for r in results {
        s.clusters += r.clusters;
        s.noise += r.labels.iter().filter(|&&l| l < 0).count();
        s.neighbour_pairs += r.pairs;
        s.part_seconds += r.seconds;
        flops += r.gflops * r.seconds;
        for (&m, &into) in r.members.iter().zip(&r.merged_into) {
            if into < 0 {
                survivors.push(m);
            }
        }
    }
    survivors.sort_unstable();
    s.images_out = survivors.len();
    s.removed = s.images_in - s.images_out;
    s.kernel_gflops = flops / s.part_seconds.max(1e-9);
    (survivors, s)
}

/// One row of the final clusters table.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRow {
    pub index: u32,
    pub cluster_id: Option<i64>,
    pub round: u32,
    pub partition: u32,
    pub role: Role,
    pub merged_into: Option<u32>,
    pub representative: u32,
    pub cosine_to_representative: f32,
    pub nearest: Option<(u32, f32)>,
    pub cluster_size: u32,
    pub cluster_min_cosine: f32,
    pub kept: bool,
}

/// The final table from every round's partition results, in round order.
pub fn finish(points: &Points, rounds: &[Vec<PartResult>]) -> Vec<ClusterRow> {
    let n = points.keys.len();
    struct Seen {
        round: u32,
        part: u32,
        role: u8,
        merged_into: i64,
        nearest: i64,
        nearest_cos: f32,
    }
    let mut last: Vec<Option<Seen>> = (0..n).map(|_| None).collect();
    for round in rounds {
        for r in round {
            for (i, &m) in r.members.iter().enumerate() {
                last[m as usize] = Some(Seen {
                    round: r.round,
                    part: r.part,
                    role: r.roles[i],
                    merged_into: r.merged_into[i],
                    nearest: r.nearest[i],
                    nearest_cos: r.nearest_cos[i],
                });
            }
        }
    }
    // Final representative: follow merged_into to a kept point.
    let mut rep: Vec<u32> = (0..n as u32).collect();
    for (i, slot) in rep.iter_mut().enumerate() {
        let mut j = i;
        let mut hops = 0;
        while let Some(s) = &last[j] {
            if s.merged_into < 0 || hops > rounds.len() + 1 {
                break;
            }
            j = s.merged_into as usize;
            hops += 1;
        }
        *slot = j as u32;
    }
    let mut size: HashMap<u32, u32> = HashMap::new();
    for &r in &rep {
        *size.entry(r).or_default() += 1;
    }
    let cos: Vec<f32> = (0..n)
        .map(|i| dot(points.x.row(i), points.x.row(rep[i] as usize)))
        .collect();
    let mut min_cos: HashMap<u32, f32> = HashMap::new();
    for i in 0..n {
        let e = min_cos.entry(rep[i]).or_insert(f32::INFINITY);
        *e = e.min(cos[i]);
    }
    // Cluster ids in order of the representative's index, for clusters of two or more.
    let mut reps: Vec<u32> = size
        .iter()
        .filter(|(_, &s)| s > 1)
        .map(|(&r, _)| r)
        .collect();
    reps.sort_unstable();
    let ids: HashMap<u32, i64> = reps
        .iter()
        .enumerate()
        .map(|(k, &r)| (r, k as i64))
        .collect();
    (0..n)
        .filter_map(|i| {
            let s = last[i].as_ref()?;
            let r = rep[i];
            Some(ClusterRow {
                index: i as u32,
                cluster_id: ids.get(&r).copied(),
                round: s.round,
                partition: s.part,
                role: match s.role {
                    0 => Role::Core,
                    1 => Role::Border,
                    _ => Role::Noise,
                },
                merged_into: (s.merged_into >= 0).then_some(s.merged_into as u32),
                representative: r,
                cosine_to_representative: cos[i],
                nearest: (s.nearest >= 0).then_some((s.nearest as u32, s.nearest_cos)),
                cluster_size: size[&r],
                cluster_min_cosine: min_cos[&r],
                kept: r == i as u32,
            })
        })
        .collect()
}

/// The state folder of a run: plans, partition results and round summaries.
pub struct State {
    pub dir: PathBuf,
}

impl State {
    pub fn new(dir: &Path) -> Result<State, DedupError> {
        std::fs::create_dir_all(dir).map_err(|source| DedupError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(State {
            dir: dir.to_path_buf(),
        })
    }

    fn round_dir(&self, round: u32) -> PathBuf {
        self.dir.join(format!("round-{round:03}"))
    }
    pub fn plan_path(&self, round: u32) -> PathBuf {
        self.round_dir(round).join("plan.json")
    }
    pub fn part_path(&self, round: u32, part: u32) -> PathBuf {
        self.round_dir(round).join(format!("part-{part:05}.json"))
    }
    pub fn merged_path(&self, round: u32) -> PathBuf {
        self.round_dir(round).join("merged.json")
    }
    /// The settings and shape of the points (written by `plan`).
    pub fn info_path(&self) -> PathBuf {
        self.dir.join("info.json")
    }
    /// The points' keys, in index order.
    pub fn keys_path(&self) -> PathBuf {
        self.dir.join("keys.json")
    }
    /// The points' scores, for `--keep best-score`.
    pub fn scores_path(&self) -> PathBuf {
        self.dir.join("scores.json")
    }
    /// The unit vectors, little-endian f32 rows.
    pub fn vectors_path(&self) -> PathBuf {
        self.dir.join("vectors.f32")
    }

    /// Writes the vectors file (temporary name, sync, rename).
    pub fn write_vectors(&self, x: &Matrix) -> Result<(), DedupError> {
        use std::io::Write;
        let path = self.vectors_path();
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| DedupError::Io { path: p, source }
        };
        let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut w = std::io::BufWriter::new(f);
        for v in &x.data {
            w.write_all(&v.to_le_bytes()).map_err(io(&tmp))?;
        }
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Every vector: `rows` × `dim`.
    pub fn read_vectors(&self, rows: usize, dim: usize) -> Result<Matrix, DedupError> {
        use std::io::Read;
        let path = self.vectors_path();
        let io = |source| DedupError::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len() as usize;
        if len != rows * dim * 4 {
            return Err(DedupError::Shape {
                rows,
                dim,
                expected: rows * dim,
                found: len / 4,
            });
        }
        // Straight into the matrix through a small buffer: reading the
        // whole file first held it twice (6 GB for 1M × 768) and took long.
        let mut data = Vec::with_capacity(rows * dim);
        let mut buf = vec![0u8; 1 << 22];
        let mut left = len;
        while left > 0 {
            let k = left.min(buf.len());
            f.read_exact(&mut buf[..k]).map_err(io)?;
            data.extend(
                buf[..k]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            );
            left -= k;
        }
        Matrix::new(rows, dim, data)
    }

    /// The vectors of `members` only, read one by one (a partition's task
    /// reads its own rows, not the whole file).
    pub fn read_rows(&self, dim: usize, members: &[u32]) -> Result<Matrix, DedupError> {
        use std::os::unix::fs::FileExt;
        let path = self.vectors_path();
        let f = std::fs::File::open(&path).map_err(|source| DedupError::Io {
            path: path.clone(),
            source,
        })?;
        let mut buf = vec![0u8; dim * 4];
        let mut data = Vec::with_capacity(members.len() * dim);
        for &m in members {
            f.read_exact_at(&mut buf, m as u64 * dim as u64 * 4)
                .map_err(|e| DedupError::Checkpoint {
                    path: path.clone(),
                    message: format!("row {m}: {e}"),
                })?;
            data.extend(
                buf.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            );
        }
        Matrix::new(members.len(), dim, data)
    }

    /// Written by a cooperating task that stopped with an error, so that the
    /// others stop waiting for its partitions; removed when it starts again.
    pub fn failed_path(&self, task: u32) -> PathBuf {
        self.dir.join(format!("failed-task-{task}.txt"))
    }

    /// Records that task `task` stopped with `message` (best effort: the
    /// task is already failing).
    pub fn mark_failed(&self, task: u32, message: &str) {
        let _ = std::fs::create_dir_all(&self.dir);
        let _ = std::fs::write(self.failed_path(task), message);
    }

    /// The first other task that recorded a failure, if any.
    fn failed_peer(&self, share: &Share) -> Option<DedupError> {
        (0..share.count.max(1))
            .filter(|&t| t != share.index)
            .find_map(|t| {
                let path = self.failed_path(t);
                let message = std::fs::read_to_string(&path).ok()?;
                Some(DedupError::PeerFailed {
                    task: t,
                    path,
                    message: message.trim().to_string(),
                })
            })
    }

    pub fn read<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<T>, DedupError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| DedupError::Checkpoint {
                    path: path.to_path_buf(),
                    message: format!("unreadable ({e}); delete it to recompute"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DedupError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes `value` to a temporary name, syncs, renames.
    pub fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), DedupError> {
        let io = |source| DedupError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // Unique per process and per call: cooperating tasks (or threads of
        // one process) may write the same plan at the same moment.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp-{}-{seq}", std::process::id()));
        let bytes = serde_json::to_vec(value).expect("plain data serialises");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// Round summaries and whether the run converged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub rounds: Vec<RoundSummary>,
    pub converged: bool,
}

/// What the driver reports as it goes.
pub trait Observer {
    /// Called before a partition is computed (not for reused ones).
    fn part_start(&mut self, _round: u32, _part: u32) {}
    fn part_done(&mut self, _round: u32, _part: u32, _parts: usize, _reused: bool) {}
    fn round_done(&mut self, _summary: &RoundSummary) {}
    /// Waiting for other processes' partitions.
    fn waiting(&mut self, _round: u32, _missing: &[u32], _waited: std::time::Duration) {}
}

impl Observer for () {}

/// Which partitions this process computes: `index` of `count` cooperating
/// processes (Slurm array tasks) takes the parts p with p mod count = index
/// and waits for the others' files. Plans and merges are deterministic, so
/// every process derives the same ones and no process coordinates.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    pub index: u32,
    pub count: u32,
    /// How often to look for the other processes' files.
    pub poll: std::time::Duration,
}

impl Share {
    pub fn alone() -> Share {
        Share {
            index: 0,
            count: 1,
            poll: std::time::Duration::from_secs(1),
        }
    }
}

/// Runs every round in this process, reusing every file already in `state`.
pub fn run_all(
    points: &Points,
    settings: &Settings,
    state: &State,
    observer: &mut dyn Observer,
) -> Result<(Outcome, Vec<Vec<PartResult>>), DedupError> {
    run_shared(points, settings, state, observer, Share::alone())
}

/// [`run_all`] as one of several cooperating processes.
pub fn run_shared(
    points: &Points,
    settings: &Settings,
    state: &State,
    observer: &mut dyn Observer,
    share: Share,
) -> Result<(Outcome, Vec<Vec<PartResult>>), DedupError> {
    let count = share.count.max(1);
    if count > 1 {
        // A resubmitted task clears the failure it recorded last time.
        let _ = std::fs::remove_file(state.failed_path(share.index));
    }
    let mut alive: Vec<u32> = (0..points.keys.len() as u32).collect();
    let mut outcome = Outcome {
        rounds: Vec::new(),
        converged: false,
    };
    let mut history = Vec::new();
    for round in 1..=settings.max_rounds.max(1) {
        let plan: Plan = match state.read(&state.plan_path(round))? {
            Some(p) => p,
            None => {
                let p = plan_round(points, settings, round, &alive);
                state.write(&state.plan_path(round), &p)?;
                p
            }
        };
        let mut results: Vec<Option<PartResult>> = vec![None; plan.parts.len()];
        for (i, members) in plan.parts.iter().enumerate() {
            if i as u32 % count != share.index {
                continue;
            }
            let path = state.part_path(round, i as u32);
            let (r, reused) = match state.read::<PartResult>(&path)? {
                Some(r) if r.members == *members => (r, true),
                _ => {
                    observer.part_start(round, i as u32);
                    let r = run_part(points, settings, round, i as u32, members);
                    state.write(&path, &r)?;
                    (r, false)
                }
            };
            observer.part_done(round, i as u32, plan.parts.len(), reused);
            results[i] = Some(r);
        }
        // The other processes' partitions.
        let mut waited = std::time::Duration::ZERO;
        loop {
            let mut missing = Vec::new();
            for (i, slot) in results.iter_mut().enumerate() {
                if slot.is_none() {
                    match state.read::<PartResult>(&state.part_path(round, i as u32)) {
                        Ok(Some(r)) if r.members == plan.parts[i] => *slot = Some(r),
                        _ => missing.push(i as u32),
                    }
                }
            }
            if missing.is_empty() {
                break;
            }
            if let Some(e) = state.failed_peer(&share) {
                return Err(e);
            }
            observer.waiting(round, &missing, waited);
            std::thread::sleep(share.poll);
            waited += share.poll;
        }
        let results: Vec<PartResult> = results
            .into_iter()
            .map(|r| r.expect("all present"))
            .collect();
        let (survivors, summary) = merge_round(&plan, &results);
        state.write(&state.merged_path(round), &summary)?;
        observer.round_done(&summary);
        let removed = summary.removed;
        outcome.rounds.push(summary);
        history.push(results);
        alive = survivors;
        if removed == 0 {
            outcome.converged = true;
            break;
        }
    }
    Ok((outcome, history))
}
