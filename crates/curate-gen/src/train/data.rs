//! Batches from latent shards (schemas/latents.json), streaming and
//! deterministic: every row group of a shard holds one bucket, so an epoch
//! visits the row groups in an order shuffled from (seed, epoch), shuffles the
//! `ok` rows inside each, and fills one buffer per bucket, emitting a batch
//! whenever a buffer holds `batch_size` rows (leftovers close the epoch). Only
//! the row groups that pending batches still need are held in memory. The
//! plan depends only on the footers and status columns, so a checkpoint's
//! (epoch, batch index) cursor restores the data order exactly.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use curate_io::latents;
pub use curate_io::latents::{LatentDtype, LatentRow};
use curate_stage::Upstream;

use super::text::{Hidden, TextStore};
use crate::rng::Rng;
use crate::{GenError, Result};

/// One row group of one shard: its bucket (latent H, W) and its ok rows.
#[derive(Debug, Clone)]
pub struct Group {
    pub shard: PathBuf,
    pub row_group: usize,
    /// Latent height and width (bucket / 8).
    pub hw: (usize, usize),
    pub ok_rows: Vec<usize>,
    /// Position of the row group's first row in its shard.
    pub first_row: u64,
    /// Rows of the row group (ok or not).
    pub rows: usize,
}

/// A batch: rows as (group index, row inside the row group).
pub type BatchPlan = Vec<(usize, usize)>;

/// The row groups of a set of latent shards.
#[derive(Debug, Clone)]
pub struct LatentIndex {
    pub groups: Vec<Group>,
}

impl LatentIndex {
    /// The complete shards of the latent stages `dirs`, read together.
    pub fn from_stages(dirs: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        for dir in dirs {
            shards.extend(Upstream::open(dir, &["latents"])?.files());
        }
        Self::open(&shards)
    }

    /// Reads the footers and the status / latent_shape columns of `shards`.
    pub fn open(shards: &[PathBuf]) -> Result<Self> {
        let mut groups = Vec::new();
        for path in shards {
            let mut first_row = 0u64;
            for rg in 0..latents::row_groups(path)? {
                let mut ok_rows = Vec::new();
                let mut hw: Option<(usize, usize)> = None;
                let shapes = latents::ok_shapes(path, rg)?;
                let rows = shapes.len();
                for (row, shape) in shapes.into_iter().enumerate() {
                    let Some(s) = shape else { continue };
                    let this = (s[1], s[2]);
                    match hw {
                        None => hw = Some(this),
                        Some(h) if h != this => {
                            return Err(GenError::Config(format!(
                                "{} row group {rg}: latents of shapes {h:?} and {this:?} in one row group \
                                 (each row group must hold one bucket)",
                                path.display()
                            )))
                        }
                        _ => {}
                    }
                    ok_rows.push(row);
                }
                if let Some(hw) = hw {
                    groups.push(Group {
                        shard: path.clone(),
                        row_group: rg,
                        hw,
                        ok_rows,
                        first_row,
                        rows,
                    });
                }
                first_row += rows as u64;
            }
        }
        if groups.is_empty() {
            return Err(GenError::Config("the latent shards hold no ok rows".into()));
        }
        Ok(LatentIndex { groups })
    }

    pub fn rows(&self) -> usize {
        self.groups.iter().map(|g| g.ok_rows.len()).sum()
    }

    /// The batches of `epoch`, a function of (seed, epoch) and the index only.
    pub fn plan(&self, seed: u64, epoch: u64, batch_size: usize) -> EpochPlan {
        let mut rng = Rng::derive(seed, epoch);
        let mut order: Vec<usize> = (0..self.groups.len()).collect();
        rng.shuffle(&mut order);
        let mut buffers: BTreeMap<(usize, usize), BatchPlan> = BTreeMap::new();
        let mut out = Vec::new();
        for g in order {
            let mut rows = self.groups[g].ok_rows.clone();
            rng.shuffle(&mut rows);
            let buf = buffers.entry(self.groups[g].hw).or_default();
            for r in rows {
                buf.push((g, r));
                if buf.len() == batch_size {
                    out.push(std::mem::take(buf));
                }
            }
        }
        out.extend(buffers.into_values().filter(|b| !b.is_empty()));
        EpochPlan::new(out, self.groups.len())
    }
}

/// The batches of one epoch and, per row group, the last batch that uses
/// it, so the loader drops a group after its last use in O(batch) per step
/// (planning is O(rows) once per epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPlan {
    batches: Vec<BatchPlan>,
    last_use: Vec<usize>,
}

impl EpochPlan {
    fn new(batches: Vec<BatchPlan>, groups: usize) -> Self {
        let mut last_use = vec![usize::MAX; groups];
        for (k, b) in batches.iter().enumerate() {
            for &(g, _) in b {
                last_use[g] = k;
            }
        }
        EpochPlan { batches, last_use }
    }
}

impl EpochPlan {
    /// Task `task`'s share of `tasks` data-parallel tasks: batches `k` with
    /// `k mod tasks = task`, in order. The shares of any split are the
    /// epoch's batches, each exactly once; each task holds only its own
    /// batches' row groups.
    pub fn for_task(&self, task: usize, tasks: usize) -> EpochPlan {
        let tasks = tasks.max(1);
        let batches: Vec<BatchPlan> = self
            .batches
            .iter()
            .skip(task)
            .step_by(tasks)
            .cloned()
            .collect();
        EpochPlan::new(batches, self.last_use.len())
    }
}

impl std::ops::Deref for EpochPlan {
    type Target = [BatchPlan];

    fn deref(&self) -> &[BatchPlan] {
        &self.batches
    }
}

/// A loaded batch: latents [B, C, H, W] (f32), captions and, when the
/// loader reads `encode-text` stages, each row's stored text.
pub struct Batch {
    pub latents: Tensor,
    pub captions: Vec<String>,
    pub keys: Vec<String>,
    pub texts: Option<Vec<Arc<Hidden>>>,
}

/// Loads planned batches, holding only the row groups still needed.
pub struct Loader {
    index: LatentIndex,
    channels: usize,
    device: Device,
    cache: HashMap<usize, GroupData>,
    text: Option<TextStore>,
}

struct GroupData {
    latents: HashMap<usize, Vec<f32>>,
    captions: HashMap<usize, String>,
    keys: HashMap<usize, String>,
    texts: HashMap<usize, Arc<Hidden>>,
}

impl Loader {
    pub fn new(index: LatentIndex, channels: usize, device: &Device) -> Self {
        Loader {
            index,
            channels,
            device: device.clone(),
            cache: HashMap::new(),
            text: None,
        }
    }

    /// Reads each row's text from `store` (the `encode-text` stages of the
    /// index's latents) with its latents.
    pub fn with_text(mut self, store: TextStore) -> Self {
        self.text = Some(store);
        self
    }

    /// The text store, when the loader reads one.
    pub fn text(&self) -> Option<&TextStore> {
        self.text.as_ref()
    }

    pub fn index(&self) -> &LatentIndex {
        &self.index
    }

    /// Loads batch `k` of `plan`, then drops the row groups no later batch uses.
    pub fn load(&mut self, plan: &EpochPlan, k: usize) -> Result<Batch> {
        let batch = &plan[k];
        for &(g, _) in batch {
            if !self.cache.contains_key(&g) {
                let data = self.read(g)?;
                self.cache.insert(g, data);
            }
        }
        let (h, w) = self.index.groups[batch[0].0].hw;
        let mut flat = Vec::with_capacity(batch.len() * self.channels * h * w);
        let mut captions = Vec::new();
        let mut keys = Vec::new();
        let mut texts = self.text.as_ref().map(|_| Vec::with_capacity(batch.len()));
        for &(g, r) in batch {
            let d = &self.cache[&g];
            flat.extend_from_slice(&d.latents[&r]);
            captions.push(d.captions.get(&r).cloned().unwrap_or_default());
            keys.push(d.keys.get(&r).cloned().unwrap_or_default());
            if let Some(t) = texts.as_mut() {
                t.push(d.texts[&r].clone());
            }
        }
        let latents = Tensor::from_vec(flat, (batch.len(), self.channels, h, w), &self.device)?;
        for &(g, _) in batch {
            if plan.last_use[g] <= k {
                self.cache.remove(&g);
            }
        }
        Ok(Batch {
            latents,
            captions,
            keys,
            texts,
        })
    }

    fn read(&self, g: usize) -> Result<GroupData> {
        let grp = &self.index.groups[g];
        let path = &grp.shard;
        let want: std::collections::HashSet<usize> = grp.ok_rows.iter().copied().collect();
        let mut out = GroupData {
            latents: HashMap::new(),
            captions: HashMap::new(),
            keys: HashMap::new(),
            texts: HashMap::new(),
        };
        let mut cols = latents::COLUMNS.to_vec();
        cols.push("caption");
        let mut row = 0;
        for b in latents::read_row_group(path, grp.row_group, &cols)? {
            for r in latents::rows(&b)? {
                if want.contains(&row) {
                    let [c, h, w] = r.shape.ok_or_else(|| {
                        GenError::Config(format!(
                            "{}: ok row without a latent_shape",
                            path.display()
                        ))
                    })?;
                    if c < self.channels {
                        return Err(GenError::Config(format!(
                            "{}: latent with {c} channels, the model needs {}",
                            path.display(),
                            self.channels
                        )));
                    }
                    let v = r
                        .to_f32()
                        .map_err(|e| GenError::Config(format!("{}: {e}", path.display())))?;
                    out.latents.insert(row, v[..self.channels * h * w].to_vec());
                    if let Some(caption) = r.caption {
                        out.captions.insert(row, caption);
                    }
                    out.keys.insert(row, r.key);
                }
                row += 1;
            }
        }
        if let Some(store) = &self.text {
            let mut keys: Vec<(usize, String)> =
                out.keys.iter().map(|(r, k)| (*r, k.clone())).collect();
            keys.sort();
            out.texts = store.read(path, grp.first_row, &keys, grp.rows)?;
        }
        Ok(out)
    }
}

/// Writes `rows` as a one-shard `latents` stage in `dir` (manifest, journal,
/// part-00000.parquet), cutting a row group at every change of latent shape
/// and every `rows_per_group` rows. Rows are made with
/// [`LatentRow::from_values`] (bf16, like encode-latents' default) and
/// [`LatentRow::failed`]. For tests and benchmarks, before (or instead of)
/// `encode-latents` output.
pub fn write_latent_stage(dir: &Path, rows: &[LatentRow], rows_per_group: usize) -> Result<()> {
    let spec = curate_core::stage::StageSpec {
        stage: "encode-latents".into(),
        schema: "latents".into(),
        config: serde_json::json!({"test": true, "rows": rows.len()}),
        inputs: curate_core::stage::Inputs {
            kind: "test".into(),
            location: dir.display().to_string(),
            items: rows.len() as u64,
            fingerprint: "test".into(),
            shards: vec![],
        },
        num_shards: 1,
    };
    let (stage, _) = curate_core::stage::StageDir::open(dir, &spec, true)
        .map_err(curate_stage::StageError::from)?;
    let schema = latents::arrow_schema(None).map_err(curate_stage::StageError::from)?;
    let mut shard = curate_stage::TableShard::begin(
        &stage,
        0,
        latents::table(),
        schema.clone(),
        rows_per_group,
    )?;
    let mut start = 0;
    for i in 1..=rows.len() {
        if i == rows.len() || i - start == rows_per_group || rows[i].shape != rows[start].shape {
            let group = &rows[start..i];
            shard.write(
                &latents::to_batch(group, &schema)?,
                group.iter().filter_map(|r| r.reason.as_deref()),
            )?;
            start = i;
        }
    }
    shard.commit(vec![], 0.0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use curate_io::latents::LatentDtype;

    /// Every row group is held from its first use to its last and no longer;
    /// an epoch ends with nothing cached.
    #[test]
    fn the_loader_holds_a_row_group_only_until_its_last_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let rows: Vec<LatentRow> = (0..24)
            .map(|i| {
                let v = vec![i as f32; 4 * 2 * 2];
                LatentRow::from_values(&format!("k{i}"), None, &v, [4, 2, 2], LatentDtype::F32)
            })
            .collect();
        write_latent_stage(tmp.path(), &rows, 4).unwrap();
        let index = LatentIndex::from_stages(&[tmp.path().to_path_buf()]).unwrap();
        assert_eq!(index.groups.len(), 6);
        let plan = index.plan(7, 0, 3);
        let mut loader = Loader::new(index, 4, &Device::Cpu);
        let mut seen = std::collections::BTreeSet::new();
        for k in 0..plan.len() {
            let batch = loader.load(&plan, k).unwrap();
            seen.extend(batch.keys);
            for &g in loader.cache.keys() {
                let first = plan.iter().position(|b| b.iter().any(|&(h, _)| h == g));
                assert!(
                    first.unwrap() <= k && plan.last_use[g] > k,
                    "group {g} after batch {k}"
                );
            }
        }
        assert!(loader.cache.is_empty());
        assert_eq!(seen.len(), 24, "every row once");
    }

    /// Split across 1–5 data-parallel tasks, an epoch's loaded batches are
    /// the same multiset of batches (each a multiset of keys) as unsplit.
    #[test]
    fn an_epochs_batches_are_the_same_multiset_whatever_the_task_split() {
        let tmp = tempfile::tempdir().unwrap();
        let rows: Vec<LatentRow> = (0..53)
            .map(|i| {
                // two buckets, so batches are cut per bucket; every 7th row failed
                let hw = if i % 3 == 0 { 2 } else { 4 };
                let v = vec![i as f32; 4 * hw * hw];
                if i % 7 == 6 {
                    LatentRow::failed(&format!("k{i}"), None, "inference")
                } else {
                    LatentRow::from_values(
                        &format!("k{i}"),
                        None,
                        &v,
                        [4, hw, hw],
                        LatentDtype::F32,
                    )
                }
            })
            .collect();
        write_latent_stage(tmp.path(), &rows, 5).unwrap();
        let index = LatentIndex::from_stages(&[tmp.path().to_path_buf()]).unwrap();
        let load_all = |plan: &EpochPlan| -> Vec<Vec<String>> {
            let mut loader = Loader::new(index.clone(), 4, &Device::Cpu);
            (0..plan.len())
                .map(|k| {
                    let b = loader.load(plan, k).unwrap();
                    let first: Vec<f32> = b.latents.flatten_all().unwrap().to_vec1().unwrap();
                    let mut keys = b.keys;
                    // the latents are the rows' own
                    for (j, key) in keys.iter().enumerate() {
                        let i: f32 = key[1..].parse().unwrap();
                        let per = first.len() / keys.len();
                        assert!(first[j * per..(j + 1) * per].iter().all(|&x| x == i));
                    }
                    keys.sort();
                    keys
                })
                .collect()
        };
        for epoch in 0..2 {
            let plan = index.plan(3, epoch, 4);
            let mut whole = load_all(&plan);
            whole.sort();
            assert_eq!(whole.iter().map(Vec::len).sum::<usize>(), 53 - 7);
            for tasks in 1..=5 {
                let mut union: Vec<Vec<String>> = (0..tasks)
                    .flat_map(|t| load_all(&plan.for_task(t, tasks)))
                    .collect();
                union.sort();
                assert_eq!(union, whole, "{tasks} tasks, epoch {epoch}");
            }
        }
    }
}
