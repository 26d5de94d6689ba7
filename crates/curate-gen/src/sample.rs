//! The sampler: Euler integration of the learned velocity field from noise
//! (t = 0) to data (t = 1), in the I-CFM convention (not FLUX's reversed
//! one), with classifier-free guidance v = v_u + s·(v_c − v_u) and an
//! optional timestep shift t' = α·t / (1 + (α − 1)·t) (the SD3 / FLUX-dev
//! form, applied to this convention's t: α > 1 spends more of the steps
//! near the data end, α < 1 near the noise end).

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

/// t' = α·t / (1 + (α − 1)·t): the identity for α = 1, fixing 0 and 1.
pub fn shift(t: f64, alpha: f64) -> f64 {
    alpha * t / (1.0 + (alpha - 1.0) * t)
}

/// The timesteps t_0 = 0 < … < t_N = 1, shifted.
pub fn timesteps(steps: usize, alpha: f64) -> Vec<f64> {
    (0..=steps)
        .map(|i| shift(i as f64 / steps as f64, alpha))
        .collect()
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
    fn shift_fixes_the_ends() {
        for a in [0.5, 1.0, 3.0] {
            assert_eq!(shift(0.0, a), 0.0);
            assert!((shift(1.0, a) - 1.0).abs() < 1e-12);
        }
        assert!((shift(0.5, 3.0) - 0.75).abs() < 1e-12);
        let ts = timesteps(4, 1.0);
        assert_eq!(ts, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }
}
