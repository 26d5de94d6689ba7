//! AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization";
//! the update of `torch.optim.AdamW`, which decays every parameter; the
//! parameters named by `no_decay` form a second group with weight decay 0,
//! as torch's parameter groups do), linear warmup then a schedule,
//! global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`) and an
//! optional EMA of the weights. Written here rather than taken from
//! candle-nn so that the moments are visible for checkpoints.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{GenError, Result};

/// Learning-rate schedule after the warmup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Schedule {
    /// `lr` throughout.
    Constant,
    /// Linear from `lr` at the end of warmup to `final_lr` at `total_steps`.
    Linear { final_lr: f64 },
    /// Half-cosine from `lr` to `final_lr` at `total_steps`.
    Cosine { final_lr: f64 },
}

/// AdamW hyper-parameters and the learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "adam_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Parameters whose name contains one of these are not decayed (e.g.
    /// `["bias", "norm"]`); every other parameter is, as in torch.
    #[serde(default)]
    pub no_decay: Vec<String>,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "constant")]
    pub schedule: Schedule,
    /// Global gradient-norm cap (0 = no clipping).
    #[serde(default)]
    pub grad_clip: f64,
    /// EMA decay of the weights (None = no EMA).
    #[serde(default)]
    pub ema_decay: Option<f64>,
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn adam_eps() -> f64 {
    1e-8
}
fn constant() -> Schedule {
    Schedule::Constant
}

impl OptimConfig {
    /// The learning rate of (0-based) `step` out of `total_steps`: linear
    /// warmup lr·(step+1)/warmup, then the schedule.
    pub fn lr_at(&self, step: u64, total_steps: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let frac = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear { final_lr } => self.lr + (final_lr - self.lr) * frac,
            Schedule::Cosine { final_lr } => {
                final_lr + (self.lr - final_lr) * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}

/// AdamW over named variables (sorted by name), with its moments and EMA.
pub struct AdamW {
    pub cfg: OptimConfig,
    pub params: Vec<(String, Var)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub ema: Option<Vec<Tensor>>,
    /// Updates applied so far (bias correction uses step + 1).
    pub step: u64,
}

impl AdamW {
    pub fn new(cfg: OptimConfig, params: BTreeMap<String, Var>) -> Result<Self> {
        let params: Vec<(String, Var)> = params.into_iter().collect();
        let m = params
            .iter()
            .map(|(_, p)| p.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        let ema = match cfg.ema_decay {
            Some(_) => Some(
                params
                    .iter()
                    .map(|(_, p)| p.as_tensor().copy())
                    .collect::<candle_core::Result<Vec<_>>>()?,
            ),
            None => None,
        };
        Ok(AdamW {
            cfg,
            params,
            m,
            v,
            ema,
            step: 0,
        })
    }

    /// Whether weight decay applies to parameter `name`.
    pub fn decays(&self, name: &str) -> bool {
        !self.cfg.no_decay.iter().any(|n| name.contains(n.as_str()))
    }

    /// Global L2 norm of the gradients (missing gradients count as zero).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for (_, p) in &self.params {
            if let Some(g) = grads.get(p.as_tensor()) {
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
    }

    /// Clips to `grad_clip`, applies one AdamW update at learning rate `lr`,
    /// updates the EMA. Returns the gradient norm before clipping.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<f64> {
        let norm = self.grad_norm(grads)?;
        if !norm.is_finite() {
            return Err(GenError::Config(format!(
                "non-finite gradient norm {norm} at step {}",
                self.step
            )));
        }
        let clip = if self.cfg.grad_clip > 0.0 && norm > self.cfg.grad_clip {
            self.cfg.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        let t = (self.step + 1) as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for (i, (name, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            let g = if clip != 1.0 { (g * clip)? } else { g.clone() };
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mut w = p.as_tensor().clone();
            if self.cfg.weight_decay > 0.0 && self.decays(name) {
                w = (w * (1.0 - lr * self.cfg.weight_decay))?;
            }
            let denom = ((&v / bc2)?.sqrt()? + self.cfg.eps)?;
            let upd = ((&m / bc1)? / denom)?;
            let w = (w - (upd * lr)?)?;
            p.set(&w)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        if let (Some(ema), Some(d)) = (self.ema.as_mut(), self.cfg.ema_decay) {
            for (i, (_, p)) in self.params.iter().enumerate() {
                ema[i] = ((&ema[i] * d)? + (p.as_tensor() * (1.0 - d))?)?;
            }
        }
        self.step += 1;
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cfg() -> OptimConfig {
        serde_json::from_str(r#"{"lr": 0.1, "weight_decay": 0.01}"#).unwrap()
    }

    #[test]
    fn matches_hand_computed_adamw() {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.01) with p=[1,-2], grad=[0.5,0.25]:
        // step 1: p·(1−0.001) − 0.1·sign(g) = [0.899, −2.098] (|m̂/√v̂| = 1).
        let p = Var::new(&[[1f32, -2.0]], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(cfg(), [("p".to_string(), p.clone())].into()).unwrap();
        let loss = (p.as_tensor() * &Tensor::new(&[[0.5f32, 0.25]], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        opt.step(&g, 0.1).unwrap();
        let got: Vec<f32> = p.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            (got[0] - 0.899).abs() < 1e-5 && (got[1] + 2.098).abs() < 1e-5,
            "{got:?}"
        );
    }

    #[test]
    fn warmup_then_linear() {
        let c = OptimConfig {
            warmup_steps: 10,
            schedule: Schedule::Linear { final_lr: 0.0 },
            ..cfg()
        };
        assert!((c.lr_at(0, 110) - 0.01).abs() < 1e-12);
        assert!((c.lr_at(9, 110) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(60, 110) - 0.05).abs() < 1e-12);
        assert!((c.lr_at(110, 110)).abs() < 1e-12);
    }
}
