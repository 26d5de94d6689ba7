//! The I-CFM trainer of the oboro DiT: batches from latent shards
//! ([`data`]), captions through the frozen T5 encoder (cached per caption),
//! caption dropout for classifier-free guidance, AdamW with warmup,
//! clipping and optional EMA, metrics JSONL and resumable checkpoints.
//!
//! Every random number comes from one checkpointed [`Rng`] (caption dropout,
//! t, x0, ε in that order per step) or from (seed, epoch) (data order), and a
//! checkpoint holds the weights, both AdamW moments, the EMA, the step, the
//! RNG state and the data cursor: `--resume` on the CPU reproduces the
//! uninterrupted run's losses bit for bit.

pub mod data;
pub mod text;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::cfm::{mse, FlowMatcher};
use crate::dit::{Dit, DitConfig};
use crate::optim::{AdamW, OptimConfig};
use crate::rng::Rng;
use crate::t5::TextCache;
use crate::{GenError, Result};
use data::{EpochPlan, LatentIndex, Loader};
use text::TextSource;

/// The training recipe (the `train` table of pipelines/configs/dit-*.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub batch_size: usize,
    /// I-CFM σ (torchcfm's default 0.0).
    #[serde(default)]
    pub sigma: f64,
    /// Probability of replacing a caption by "" (classifier-free guidance).
    #[serde(default)]
    pub caption_dropout: f64,
    pub optim: OptimConfig,
}

/// A whole config file: `{"model": {...}, "train": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: DitConfig,
    pub train: TrainConfig,
}

impl RunConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| GenError::Io {
            path: path.into(),
            source,
        })?;
        let cfg: RunConfig = serde_json::from_str(&text)
            .map_err(|e| GenError::Config(format!("{}: {e}", path.display())))?;
        cfg.model
            .validate()
            .map_err(|e| GenError::Config(format!("{}: {e}", path.display())))?;
        if cfg.train.batch_size == 0 {
            return Err(GenError::Config(format!(
                "{}: train.batch_size must be > 0",
                path.display()
            )));
        }
        Ok(cfg)
    }
}

/// How to run.
pub struct TrainOptions {
    pub out_dir: PathBuf,
    /// Total optimiser steps of the run.
    pub steps: u64,
    pub seed: u64,
    pub checkpoint_every: u64,
    /// Checkpoints kept (oldest deleted first; at least 1).
    pub keep_checkpoints: usize,
    pub resume: bool,
    /// Stop after this step (its checkpoint written) although `steps` is the
    /// run's length (the schedule's horizon): a time-limited job's slice.
    pub stop_after: Option<u64>,
    pub device: Device,
    /// Most bytes of T5 hidden states kept between steps (oldest captions evicted first).
    pub text_cache_bytes: usize,
    /// A fresh run starts from this checkpoint's model weights (its `model.*`,
    /// not the EMA) with new optimiser state and schedule: stage 512 after
    /// stage 256. Ignored when the run resumes its own checkpoint.
    pub init_from: Option<PathBuf>,
}

/// One metrics JSONL line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub epoch: u64,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub steps_per_s: f64,
    pub batch_size: usize,
    pub latent_hw: (usize, usize),
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub start_step: u64,
    pub end_step: u64,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub last_checkpoint: Option<PathBuf>,
    pub params: usize,
}

const FORMAT: &str = "curate-dit-checkpoint/1";

/// The trainable model: its variables by name and the built [`Dit`].
pub struct Trainable {
    pub model: Dit,
    pub vars: BTreeMap<String, Var>,
}

impl Trainable {
    /// Builds the model with fresh variables, initialised from `seed`
    /// (Xavier-uniform linears, N(0, 0.02) for the time MLP and BOS, ones
    /// for norms, zeros for biases, modulations and the final linear).
    pub fn new(cfg: &DitConfig, seed: u64, dev: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let model = Dit::new(cfg, vb)?;
        let vars: BTreeMap<String, Var> = varmap
            .data()
            .lock()
            .expect("varmap")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut rng = Rng::derive(seed, 0x1417);
        for (name, var) in &vars {
            var.set(&init_value(name, var.dims(), &mut rng, dev)?)?;
        }
        Ok(Trainable { model, vars })
    }

    pub fn num_params(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}

fn init_value(name: &str, dims: &[usize], rng: &mut Rng, dev: &Device) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let zeros =
        name.contains("adaln") || name.starts_with("final_linear") || name.ends_with(".bias");
    let v: Vec<f32> = if zeros {
        vec![0.0; n]
    } else if name.contains("norm") {
        vec![1.0; n]
    } else if name == "bos" || name.starts_with("t_embed") {
        rng.normals_f32(n).into_iter().map(|x| x * 0.02).collect()
    } else if dims.len() == 2 {
        let a = (6.0 / (dims[0] + dims[1]) as f64).sqrt();
        (0..n)
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * a) as f32)
            .collect()
    } else {
        rng.normals_f32(n).into_iter().map(|x| x * 0.02).collect()
    };
    Ok(Tensor::from_vec(v, dims, dev)?)
}

/// A checkpoint's contents.
pub struct Checkpoint {
    pub config: RunConfig,
    pub step: u64,
    pub epoch: u64,
    pub cursor: u64,
    pub rng_state: u64,
    pub seed: u64,
    /// The run's `--steps` (the schedule's horizon); older checkpoints lack it.
    pub total_steps: Option<u64>,
    pub tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    pub fn load(path: &Path, dev: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| GenError::Io {
            path: path.into(),
            source,
        })?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| GenError::Safetensors {
                path: path.into(),
                why: e.to_string(),
            })?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| -> Result<String> {
            meta.get(k).cloned().ok_or_else(|| {
                GenError::Config(format!(
                    "{}: not a curate DiT checkpoint (no `{k}` in its metadata)",
                    path.display()
                ))
            })
        };
        if get("format")? != FORMAT {
            return Err(GenError::Config(format!(
                "{}: checkpoint format {:?}, expected {FORMAT}",
                path.display(),
                get("format")?
            )));
        }
        let num = |k: &str| -> Result<u64> {
            get(k)?
                .parse()
                .map_err(|_| GenError::Config(format!("{}: bad `{k}` in metadata", path.display())))
        };
        let config: RunConfig = serde_json::from_str(&get("config")?)
            .map_err(|e| GenError::Config(format!("{}: config: {e}", path.display())))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, dev)?;
        Ok(Checkpoint {
            config,
            step: num("step")?,
            epoch: num("epoch")?,
            cursor: num("cursor")?,
            rng_state: num("rng_state")?,
            seed: num("seed")?,
            total_steps: meta.get("total_steps").and_then(|v| v.parse().ok()),
            tensors,
        })
    }

    /// The model weights (`ema.*` when present and `prefer_ema`, else `model.*`).
    pub fn model_weights(&self, prefer_ema: bool) -> HashMap<String, Tensor> {
        let has_ema = self.tensors.keys().any(|k| k.starts_with("ema."));
        let prefix = if prefer_ema && has_ema {
            "ema."
        } else {
            "model."
        };
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
            .collect()
    }

    /// Builds the DiT from the checkpoint's weights.
    pub fn build_model(&self, prefer_ema: bool, dev: &Device) -> Result<Dit> {
        let vb = VarBuilder::from_tensors(self.model_weights(prefer_ema), DType::F32, dev);
        Dit::new(&self.config.model, vb)
    }
}

/// A checkpoint file, or a training output folder's newest checkpoint.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    list_checkpoints(path)
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| {
            GenError::Config(format!(
                "{}: expected a checkpoint file or a training folder, found no checkpoints/step-*.safetensors",
                path.display()
            ))
        })
}

/// Checkpoints of `dir/checkpoints`, oldest first.
pub fn list_checkpoints(out_dir: &Path) -> Vec<(u64, PathBuf)> {
    let dir = out_dir.join("checkpoints");
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name
                .strip_prefix("step-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

struct State<'a> {
    cfg: &'a RunConfig,
    opts: &'a TrainOptions,
    opt: AdamW,
    rng: Rng,
    epoch: u64,
    cursor: u64,
}

fn save_checkpoint(s: &State) -> Result<PathBuf> {
    let dir = s.opts.out_dir.join("checkpoints");
    std::fs::create_dir_all(&dir).map_err(|source| GenError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (i, (name, var)) in s.opt.params.iter().enumerate() {
        tensors.push((format!("model.{name}"), var.as_tensor().clone()));
        tensors.push((format!("adam_m.{name}"), s.opt.m[i].clone()));
        tensors.push((format!("adam_v.{name}"), s.opt.v[i].clone()));
        if let Some(ema) = &s.opt.ema {
            tensors.push((format!("ema.{name}"), ema[i].clone()));
        }
    }
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("step", s.opt.step.to_string()),
        ("epoch", s.epoch.to_string()),
        ("cursor", s.cursor.to_string()),
        ("rng_state", s.rng.state().to_string()),
        ("seed", s.opts.seed.to_string()),
        ("total_steps", s.opts.steps.to_string()),
        (
            "config",
            serde_json::to_string(s.cfg).expect("config serialises"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let dest = dir.join(format!("step-{:08}.safetensors", s.opt.step));
    let tmp = dir.join(format!(
        ".step-{:08}.safetensors.tmp-{}",
        s.opt.step,
        std::process::id()
    ));
    safetensors::serialize_to_file(tensors, Some(meta), &tmp).map_err(|e| {
        GenError::Safetensors {
            path: tmp.clone(),
            why: e.to_string(),
        }
    })?;
    let f = std::fs::File::open(&tmp).map_err(|source| GenError::Io {
        path: tmp.clone(),
        source,
    })?;
    f.sync_all().map_err(|source| GenError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &dest).map_err(|source| GenError::Io {
        path: dest.clone(),
        source,
    })?;
    let all = list_checkpoints(&s.opts.out_dir);
    let keep = s.opts.keep_checkpoints.max(1);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        let _ = std::fs::remove_file(old);
    }
    Ok(dest)
}

/// Keeps the metrics lines with step ≤ `upto` (those a checkpoint covers).
fn truncate_metrics(path: &Path, upto: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<StepMetrics>(l)
                .map(|m| m.step <= upto)
                .unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(|source| GenError::Io {
        path: path.into(),
        source,
    })
}

/// Trains. `on_step(step, checkpoint)` runs after every step's metrics
/// line, with the checkpoint's path when one was put in place at that step.
pub fn train(
    cfg: &RunConfig,
    opts: &TrainOptions,
    index: LatentIndex,
    text: TextSource<'_>,
    on_step: &mut dyn FnMut(u64, Option<&Path>),
) -> Result<TrainSummary> {
    if text.d_model() != cfg.model.text_dim {
        return Err(GenError::Config(format!(
            "the text encoder's d_model is {}, the DiT config's text_dim {}",
            text.d_model(),
            cfg.model.text_dim
        )));
    }
    if let TextSource::Stored(store) = &text {
        if store.meta.max_length != cfg.model.max_text_tokens {
            return Err(GenError::Config(format!(
                "the text shards were encoded with max_length {}, the DiT config's max_text_tokens is {} \
                 (rerun encode-text with --max-length {})",
                store.meta.max_length, cfg.model.max_text_tokens, cfg.model.max_text_tokens
            )));
        }
    }
    let dev = &opts.device;
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| GenError::Io {
        path: opts.out_dir.clone(),
        source,
    })?;
    let trainable = Trainable::new(&cfg.model, opts.seed, dev)?;
    let params = trainable.num_params();
    let mut state = State {
        cfg,
        opts,
        opt: AdamW::new(cfg.train.optim.clone(), trainable.vars.clone())?,
        rng: Rng::derive(opts.seed, 0x7241_494e),
        epoch: 0,
        cursor: 0,
    };
    let metrics_path = opts.out_dir.join(curate_io::train_metrics::FILE);
    let latest = list_checkpoints(&opts.out_dir).pop();
    match (&latest, opts.resume) {
        (Some((_, path)), true) => {
            let ck = Checkpoint::load(path, dev)?;
            if ck.config != *cfg {
                return Err(GenError::Config(format!(
                    "{}: the checkpoint was trained with a different configuration",
                    path.display()
                )));
            }
            if let Some(total) = ck.total_steps.filter(|t| *t != opts.steps) {
                return Err(GenError::Config(format!(
                    "{}: the run was started with --steps {total}, this resume asks for --steps {}; \
                     the learning-rate schedule depends on it, so resume with --steps {total} \
                     (or start a new run with --init-from)",
                    path.display(),
                    opts.steps
                )));
            }
            for (i, (name, var)) in state.opt.params.iter().enumerate() {
                let get = |p: &str| -> Result<Tensor> {
                    ck.tensors
                        .get(&format!("{p}.{name}"))
                        .cloned()
                        .ok_or_else(|| GenError::MissingTensor {
                            path: path.clone(),
                            name: format!("{p}.{name}"),
                            what: "resume".into(),
                            found: ck
                                .tensors
                                .keys()
                                .take(3)
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", "),
                        })
                };
                var.set(&get("model")?)?;
                state.opt.m[i] = get("adam_m")?;
                state.opt.v[i] = get("adam_v")?;
                if let Some(ema) = state.opt.ema.as_mut() {
                    ema[i] = get("ema")?;
                }
            }
            state.opt.step = ck.step;
            state.epoch = ck.epoch;
            state.cursor = ck.cursor;
            state.rng = Rng::from_state(ck.rng_state);
            truncate_metrics(&metrics_path, ck.step)?;
        }
        (Some((_, path)), false) => {
            return Err(GenError::Config(format!(
            "{} holds checkpoints (e.g. {}): pass --resume to continue, or use a new output folder",
            opts.out_dir.display(),
            path.display()
        )))
        }
        (None, _) => {
            let _ = std::fs::remove_file(&metrics_path);
            if let Some(init) = &opts.init_from {
                let path = resolve_checkpoint(init)?;
                let ck = Checkpoint::load(&path, dev)?;
                if ck.config.model != cfg.model {
                    return Err(GenError::Config(format!(
                        "--init-from {}: expected a checkpoint of this model config, found one of another \
                         ({:?} vs {:?})",
                        path.display(),
                        ck.config.model,
                        cfg.model
                    )));
                }
                let weights = ck.model_weights(false);
                for (name, var) in &state.opt.params {
                    let w = weights.get(name).ok_or_else(|| GenError::MissingTensor {
                        path: path.clone(),
                        name: format!("model.{name}"),
                        what: "--init-from".into(),
                        found: weights
                            .keys()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                    var.set(w)?;
                }
                if let Some(ema) = state.opt.ema.as_mut() {
                    for (i, (_, var)) in state.opt.params.iter().enumerate() {
                        ema[i] = var.as_tensor().copy()?;
                    }
                }
            }
        }
    }
    let start_step = state.opt.step;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|source| GenError::Io {
            path: metrics_path.clone(),
            source,
        })?;
    let fm = FlowMatcher::new(cfg.train.sigma);
    let mut loader = Loader::new(index, cfg.model.latent_channels, dev);
    let encoder = match text {
        TextSource::Encoder(enc) => Some(enc),
        TextSource::Stored(store) => {
            loader = loader.with_text(store);
            None
        }
    };
    let mut cache = TextCache::with_capacity(opts.text_cache_bytes);
    let mut plan: EpochPlan = loader
        .index()
        .plan(opts.seed, state.epoch, cfg.train.batch_size);
    let mut plan_epoch = state.epoch;
    let (mut first_loss, mut last_loss, mut last_ck) = (None, None, None);
    let mut t_prev = Instant::now();
    let stop = opts.stop_after.unwrap_or(opts.steps).min(opts.steps);
    while state.opt.step < stop {
        if plan_epoch != state.epoch {
            plan = loader
                .index()
                .plan(opts.seed, state.epoch, cfg.train.batch_size);
            plan_epoch = state.epoch;
        }
        if state.cursor as usize >= plan.len() {
            state.epoch += 1;
            state.cursor = 0;
            continue;
        }
        let batch = loader.load(&plan, state.cursor as usize)?;
        let dropped: Vec<bool> = batch
            .captions
            .iter()
            .map(|_| state.rng.uniform() < cfg.train.caption_dropout)
            .collect();
        let (txt, mask) = match (encoder, loader.text(), &batch.texts) {
            (Some(enc), _, _) => {
                let refs: Vec<&str> = batch
                    .captions
                    .iter()
                    .zip(&dropped)
                    .map(|(c, &d)| if d { "" } else { c.as_str() })
                    .collect();
                cache.batch(enc, &refs, cfg.model.max_text_tokens)?
            }
            (None, Some(store), Some(texts)) => {
                let rows: Vec<_> = texts
                    .iter()
                    .zip(&dropped)
                    .map(|(t, &d)| if d { store.unconditional() } else { t.clone() })
                    .collect();
                text::pad(&rows, store.meta.d_model, dev)?
            }
            _ => unreachable!("a stored text source loads texts with every batch"),
        };
        let x1 = batch.latents;
        let draws = fm.draw(&mut state.rng, &x1)?;
        let (xt, ut) = fm.location_and_flow(&x1, &draws)?;
        let v = trainable.model.forward(&xt, &draws.t, &txt, &mask)?;
        let loss = mse(&v, &ut)?;
        let loss_val = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !loss_val.is_finite() {
            return Err(GenError::Config(format!(
                "loss is {loss_val} at step {}",
                state.opt.step + 1
            )));
        }
        let grads = loss.backward()?;
        let lr = cfg.train.optim.lr_at(state.opt.step, opts.steps);
        let grad_norm = state.opt.step(&grads, lr)?;
        state.cursor += 1;
        let now = Instant::now();
        let dt = now.duration_since(t_prev).as_secs_f64();
        t_prev = now;
        let m = StepMetrics {
            step: state.opt.step,
            epoch: state.epoch,
            loss: loss_val,
            lr,
            grad_norm,
            steps_per_s: if dt > 0.0 { 1.0 / dt } else { 0.0 },
            batch_size: x1.dim(0)?,
            latent_hw: (x1.dim(2)?, x1.dim(3)?),
        };
        writeln!(
            metrics,
            "{}",
            serde_json::to_string(&m).expect("metrics serialise")
        )
        .and_then(|_| metrics.flush())
        .map_err(|source| GenError::Io {
            path: metrics_path.clone(),
            source,
        })?;
        first_loss.get_or_insert(loss_val);
        last_loss = Some(loss_val);
        if state.opt.step % opts.checkpoint_every.max(1) == 0 || state.opt.step == stop {
            let p = save_checkpoint(&state)?;
            on_step(state.opt.step, Some(&p));
            last_ck = Some(p);
        } else {
            on_step(state.opt.step, None);
        }
    }
    Ok(TrainSummary {
        start_step,
        end_step: state.opt.step,
        first_loss,
        last_loss,
        last_checkpoint: last_ck,
        params,
    })
}
