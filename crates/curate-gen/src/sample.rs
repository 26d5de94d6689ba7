//! The sampler: Euler integration of the learned velocity field from noise
//! (t = 0) to data (t = 1), in the I-CFM convention (not FLUX's reversed
//! one), with classifier-free guidance v = v_u + s·(v_c − v_u).
//!
//! The steps are diffusers' `FlowMatchEulerDiscreteScheduler(shift=α)`
//! (SD3, FLUX) on the noise level σ = 1 − t: σ from 1 down to its smallest
//! training level, spaced evenly in its 1,000 training timesteps, shifted
//! σ' = α·σ / (1 + (α − 1)·σ), then 0. So `--shift` means what it means
//! there: α > 1 spends more of the steps near the noise end (SD3 samples
//! with 3.0), α < 1 near the data end.

use candle_core::{Device, Tensor};

use crate::dit::Dit;
use crate::rng::Rng;
use crate::Result;

/// How to sample.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub steps: usize,
    pub cfg_scale: f64,
    /// α of the timestep shift (1.0 = none).
    pub shift: f64,
    pub seed: u64,
    /// Latent height and width (image size / 8).
    pub latent_hw: (usize, usize),
}

/// σ' = α·σ / (1 + (α − 1)·σ): the identity for α = 1, fixing 0 and 1.
pub fn shift(sigma: f64, alpha: f64) -> f64 {
    alpha * sigma / (1.0 + (alpha - 1.0) * sigma)
}

/// diffusers' `FlowMatchEulerDiscreteScheduler` training timesteps.
const TRAIN_TIMESTEPS: u32 = 1000;

/// The noise levels of `FlowMatchEulerDiscreteScheduler(shift=α)
/// .set_timesteps(steps)`, its `sigmas`: `steps` levels from 1 down, then 0.
/// Computed as diffusers does, with its float32 roundings (its smallest
/// level is shifted once in f32 at construction, the evenly spaced levels
/// once more in f64), so the values are equal.
pub fn sigmas(steps: usize, alpha: f64) -> Vec<f64> {
    let n = TRAIN_TIMESTEPS as f32;
    let a = alpha as f32;
    let s = 1.0f32 / n;
    let sigma_min = (a * s / (1.0 + (a - 1.0) * s)) as f64;
    let sigma_max = (a * 1.0 / (1.0 + (a - 1.0) * 1.0)) as f64;
    let (start, stop) = (sigma_max * n as f64, sigma_min * n as f64);
    let mut out: Vec<f64> = (0..steps)
        .map(|i| {
            // numpy.linspace: start + i·step, the last one exactly `stop`.
            let t = if steps == 1 {
                start
            } else if i == steps - 1 {
                stop
            } else {
                start + i as f64 * ((stop - start) / (steps - 1) as f64)
            };
            shift(t / n as f64, alpha) as f32 as f64
        })
        .collect();
    out.push(0.0);
    out
}

/// The timesteps t_0 = 0 < … < t_N = 1 of this convention (t = 1 − σ).
pub fn timesteps(steps: usize, alpha: f64) -> Vec<f64> {
    sigmas(steps, alpha).into_iter().map(|s| 1.0 - s).collect()
}

/// Initial noise [1, C, H, W] from `seed`.
pub fn noise(channels: usize, hw: (usize, usize), seed: u64, dev: &Device) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let n = channels * hw.0 * hw.1;
    Ok(Tensor::from_vec(
        rng.normals_f32(n),
        (1, channels, hw.0, hw.1),
        dev,
    )?)
}

/// Text conditioning: hidden states [1, L, D] and mask [1, L].
pub type TextCond = (Tensor, Tensor);

/// Samples one latent [1, C, H, W] with guidance between `cond` and `uncond`
/// (with scale 1.0 only the conditional model runs).
pub fn sample(
    model: &Dit,
    cond: &TextCond,
    uncond: &TextCond,
    opts: &SampleOptions,
) -> Result<Tensor> {
    let dev = cond.0.device();
    let mut x = noise(model.cfg.latent_channels, opts.latent_hw, opts.seed, dev)?;
    let ts = timesteps(opts.steps.max(1), opts.shift);
    for w in ts.windows(2) {
        let t = Tensor::new(&[w[0] as f32], dev)?;
        let vc = model.forward(&x, &t, &cond.0, &cond.1)?;
        let v = if (opts.cfg_scale - 1.0).abs() > 1e-12 {
            let vu = model.forward(&x, &t, &uncond.0, &uncond.1)?;
            (&vu + ((vc - &vu)? * opts.cfg_scale)?)?
        } else {
            vc
        };
        x = (x + (v * (w[1] - w[0]))?)?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_fixes_the_ends_and_moves_steps_towards_the_noise() {
        for a in [0.5, 1.0, 3.0] {
            assert_eq!(shift(0.0, a), 0.0);
            assert!((shift(1.0, a) - 1.0).abs() < 1e-12);
        }
        assert!((shift(0.5, 3.0) - 0.75).abs() < 1e-12);
        let ts = timesteps(4, 1.0);
        assert_eq!((ts[0], ts[4]), (0.0, 1.0));
        // α = 3 keeps the middle step nearer the noise end (t = 0) than α = 1.
        assert!(timesteps(4, 3.0)[2] < ts[2]);
    }
}
