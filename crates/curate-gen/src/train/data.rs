//! Batches from latent shards (schemas/latents.json), streaming and
//! deterministic: every row group of a shard holds one bucket, so an epoch
//! visits the row groups in an order shuffled from (seed, epoch), shuffles the
//! `ok` rows inside each, and fills one buffer per bucket, emitting a batch
//! whenever a buffer holds `batch_size` rows (leftovers close the epoch). Only
//! the row groups that pending batches still need are held in memory. The
//! plan depends only on the footers and status columns, so a checkpoint's
//! (epoch, batch index) cursor restores the data order exactly.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use candle_core::{Device, Tensor};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

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
}

/// A batch: rows as (group index, row inside the row group).
pub type BatchPlan = Vec<(usize, usize)>;

/// The row groups of a set of latent shards.
#[derive(Debug, Clone)]
pub struct LatentIndex {
    pub groups: Vec<Group>,
}

fn pq_err(path: &Path, e: impl std::fmt::Display) -> GenError {
    GenError::Config(format!("{}: {e}", path.display()))
}

fn read_group(path: &Path, rg: usize, cols: &[&str]) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(|source| GenError::Io {
        path: path.into(),
        source,
    })?;
    let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err(path, e))?;
    let mut idx = Vec::new();
    for c in cols {
        idx.push(b.schema().index_of(c).map_err(|_| {
            GenError::Config(format!(
                "{}: no column `{c}` (not a latents shard?)",
                path.display()
            ))
        })?);
    }
    let mask = ProjectionMask::roots(b.parquet_schema(), idx);
    let reader = b
        .with_row_groups(vec![rg])
        .with_projection(mask)
        .build()
        .map_err(|e| pq_err(path, e))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pq_err(path, e))
}

fn col<'a>(b: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a dyn Array> {
    b.column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| GenError::Config(format!("{}: no column `{name}`", path.display())))
}

impl LatentIndex {
    /// Reads the footers and the status / latent_shape columns of `shards`.
    pub fn open(shards: &[PathBuf]) -> Result<Self> {
        let mut groups = Vec::new();
        for path in shards {
            let file = File::open(path).map_err(|source| GenError::Io {
                path: path.clone(),
                source,
            })?;
            let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err(path, e))?;
            let n = b.metadata().num_row_groups();
            for rg in 0..n {
                let mut ok_rows = Vec::new();
                let mut hw: Option<(usize, usize)> = None;
                let mut row = 0;
                for batch in read_group(path, rg, &["status", "latent_shape"])? {
                    let status = col(&batch, "status", path)?.as_string::<i32>();
                    let shape = col(&batch, "latent_shape", path)?.as_fixed_size_list();
                    for r in 0..batch.num_rows() {
                        if status.value(r) == "ok" && shape.is_valid(r) {
                            let s = shape.value(r);
                            let s = s.as_primitive::<arrow_array::types::UInt32Type>();
                            let this = (s.value(1) as usize, s.value(2) as usize);
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
                        row += 1;
                    }
                }
                if let Some(hw) = hw {
                    groups.push(Group {
                        shard: path.clone(),
                        row_group: rg,
                        hw,
                        ok_rows,
                    });
                }
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
    pub fn plan(&self, seed: u64, epoch: u64, batch_size: usize) -> Vec<BatchPlan> {
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
        out
    }
}

/// A loaded batch: latents [B, C, H, W] (f32) and captions.
pub struct Batch {
    pub latents: Tensor,
    pub captions: Vec<String>,
    pub keys: Vec<String>,
}

/// Loads planned batches, holding only the row groups still needed.
pub struct Loader {
    index: LatentIndex,
    channels: usize,
    device: Device,
    cache: HashMap<usize, GroupData>,
}

struct GroupData {
    latents: HashMap<usize, Vec<f32>>,
    captions: HashMap<usize, String>,
    keys: HashMap<usize, String>,
}

impl Loader {
    pub fn new(index: LatentIndex, channels: usize, device: &Device) -> Self {
        Loader {
            index,
            channels,
            device: device.clone(),
            cache: HashMap::new(),
        }
    }

    pub fn index(&self) -> &LatentIndex {
        &self.index
    }

    /// Loads batch `k` of `plan`, then drops the row groups no later batch uses.
    pub fn load(&mut self, plan: &[BatchPlan], k: usize) -> Result<Batch> {
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
        for &(g, r) in batch {
            let d = &self.cache[&g];
            flat.extend_from_slice(&d.latents[&r]);
            captions.push(d.captions.get(&r).cloned().unwrap_or_default());
            keys.push(d.keys.get(&r).cloned().unwrap_or_default());
        }
        let latents = Tensor::from_vec(flat, (batch.len(), self.channels, h, w), &self.device)?;
        let later: std::collections::HashSet<usize> =
            plan[k + 1..].iter().flatten().map(|&(g, _)| g).collect();
        self.cache.retain(|g, _| later.contains(g));
        Ok(Batch {
            latents,
            captions,
            keys,
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
        };
        let mut row = 0;
        for b in read_group(
            path,
            grp.row_group,
            &["key", "latent", "latent_shape", "latent_dtype", "caption"],
        )? {
            let lat = col(&b, "latent", path)?;
            let shape = col(&b, "latent_shape", path)?.as_fixed_size_list();
            let dtype = col(&b, "latent_dtype", path)?.as_string::<i32>();
            let cap = col(&b, "caption", path)?.as_string::<i32>();
            let key = col(&b, "key", path)?.as_string::<i32>();
            for r in 0..b.num_rows() {
                if want.contains(&row) {
                    let bytes: &[u8] = match lat.as_binary_opt::<i32>() {
                        Some(a) => a.value(r),
                        None => lat.as_binary::<i64>().value(r),
                    };
                    let s = shape.value(r);
                    let s = s.as_primitive::<arrow_array::types::UInt32Type>();
                    let (c, h, w) = (
                        s.value(0) as usize,
                        s.value(1) as usize,
                        s.value(2) as usize,
                    );
                    if c < self.channels {
                        return Err(GenError::Config(format!(
                            "{}: latent with {c} channels, the model needs {}",
                            path.display(),
                            self.channels
                        )));
                    }
                    let v = decode(bytes, dtype.value(r), c * h * w, path)?;
                    out.latents.insert(row, v[..self.channels * h * w].to_vec());
                    if cap.is_valid(r) {
                        out.captions.insert(row, cap.value(r).to_string());
                    }
                    out.keys.insert(row, key.value(r).to_string());
                }
                row += 1;
            }
        }
        Ok(out)
    }
}

/// Little-endian latent bytes of `dtype` → f32.
pub fn decode(bytes: &[u8], dtype: &str, n: usize, path: &Path) -> Result<Vec<f32>> {
    let size = match dtype {
        "f32" => 4,
        "bf16" | "f16" => 2,
        other => {
            return Err(GenError::Config(format!(
                "{}: latent_dtype `{other}` (expected bf16, f16 or f32)",
                path.display()
            )))
        }
    };
    if bytes.len() != n * size {
        return Err(GenError::Config(format!(
            "{}: latent of {} bytes, expected {} ({n} × {dtype})",
            path.display(),
            bytes.len(),
            n * size
        )));
    }
    Ok(match dtype {
        "f32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "bf16" => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    })
}

/// One row of a latent shard written by [`write_latent_stage`] (tests, benchmarks).
#[derive(Debug, Clone)]
pub struct LatentRow {
    pub key: String,
    pub caption: Option<String>,
    /// [C, H, W] values; `None` writes an error row.
    pub latent: Option<(Vec<f32>, [usize; 3])>,
}

/// Writes `rows` as a one-shard `latents` stage in `dir` (manifest, journal,
/// part-00000.parquet; bf16 like encode-latents' default), cutting a row
/// group at every change of latent shape and every `rows_per_group` rows.
/// For tests and benchmarks, before (or instead of) `encode-latents` output.
pub fn write_latent_stage(dir: &Path, rows: &[LatentRow], rows_per_group: usize) -> Result<()> {
    use arrow_array::builder::{
        BinaryBuilder, FixedSizeListBuilder, StringBuilder, UInt16Builder, UInt32Builder,
    };
    use arrow_array::ArrayRef;
    use std::sync::Arc;
    let cfg = |e: &dyn std::fmt::Display| GenError::Config(format!("{}: {e}", dir.display()));
    let table = curate_core::schema::get("latents").map_err(|e| cfg(&e))?;
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
    let (stage, _) = curate_core::stage::StageDir::open(dir, &spec, true).map_err(|e| cfg(&e))?;
    let schema = curate_io::default_schema(table).map_err(|e| cfg(&e))?;
    let dest = stage.shard_path(0);
    let tmp = stage.tmp_path(0);
    let mut w =
        curate_io::ShardWriter::create(table, schema.clone(), &tmp, &dest, &Default::default())
            .map_err(|e| cfg(&e))?;
    let mut groups: Vec<&[LatentRow]> = Vec::new();
    let mut start = 0;
    for i in 1..=rows.len() {
        let cut = i == rows.len()
            || i - start == rows_per_group
            || rows[i].latent.as_ref().map(|l| l.1) != rows[start].latent.as_ref().map(|l| l.1);
        if cut {
            groups.push(&rows[start..i]);
            start = i;
        }
    }
    let mut failures = 0;
    for g in groups {
        let n = g.len();
        let mut cols: Vec<ArrayRef> = Vec::new();
        for f in schema.fields() {
            let arr: ArrayRef = match f.name().as_str() {
                "key" => Arc::new(
                    g.iter()
                        .map(|r| Some(r.key.clone()))
                        .collect::<arrow_array::StringArray>(),
                ),
                "status" => Arc::new(
                    g.iter()
                        .map(|r| Some(if r.latent.is_some() { "ok" } else { "error" }))
                        .collect::<arrow_array::StringArray>(),
                ),
                "reason" | "error" => {
                    let mut b = StringBuilder::new();
                    for r in g {
                        b.append_option(r.latent.is_none().then_some("inference"));
                    }
                    Arc::new(b.finish())
                }
                "stage" => {
                    let mut b = UInt16Builder::new();
                    (0..n).for_each(|_| b.append_value(256));
                    Arc::new(b.finish())
                }
                "bucket_h" | "bucket_w" => {
                    let mut b = UInt32Builder::new();
                    for r in g {
                        let i = if f.name() == "bucket_h" { 1 } else { 2 };
                        b.append_option(r.latent.as_ref().map(|l| (l.1[i] * 8) as u32));
                    }
                    Arc::new(b.finish())
                }
                "latent" => {
                    let mut b = BinaryBuilder::new();
                    for r in g {
                        b.append_option(r.latent.as_ref().map(|l| {
                            l.0.iter()
                                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                                .collect::<Vec<u8>>()
                        }));
                    }
                    Arc::new(b.finish())
                }
                "latent_shape" => {
                    let child = match f.data_type() {
                        arrow_schema_dt::FixedSizeList(c, _) => c.clone(),
                        other => return Err(cfg(&format!("latent_shape is {other}"))),
                    };
                    let mut b =
                        FixedSizeListBuilder::new(UInt32Builder::new(), 3).with_field(child);
                    for r in g {
                        match &r.latent {
                            Some(l) => {
                                l.1.iter().for_each(|&d| b.values().append_value(d as u32));
                                b.append(true);
                            }
                            None => {
                                (0..3).for_each(|_| b.values().append_null());
                                b.append(false);
                            }
                        }
                    }
                    Arc::new(b.finish())
                }
                "latent_dtype" => Arc::new(
                    g.iter()
                        .map(|r| r.latent.as_ref().map(|_| "bf16"))
                        .collect::<arrow_array::StringArray>(),
                ),
                "caption" => Arc::new(
                    g.iter()
                        .map(|r| r.caption.clone())
                        .collect::<arrow_array::StringArray>(),
                ),
                _ => arrow_array::new_null_array(f.data_type(), n),
            };
            cols.push(arr);
        }
        failures += g.iter().filter(|r| r.latent.is_none()).count() as u64;
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| cfg(&e))?;
        w.write(&batch).map_err(|e| cfg(&e))?;
        w.flush().map_err(|e| cfg(&e))?;
    }
    let (records, bytes) = w.finish().map_err(|e| cfg(&e))?;
    stage
        .commit_shard(curate_core::stage::ShardRecord {
            shard: 0,
            file: curate_core::stage::StageDir::shard_name(0),
            records,
            failures,
            reasons: if failures > 0 {
                [("inference".to_string(), failures)].into()
            } else {
                Default::default()
            },
            bytes,
            duration_s: 0.0,
            inputs: vec![],
            completed_unix: 0,
            host: None,
            slurm_job: None,
        })
        .map_err(|e| cfg(&e))?;
    Ok(())
}

use arrow_schema::DataType as arrow_schema_dt;
