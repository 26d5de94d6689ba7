//! I-CFM, independent conditional flow matching (Tong et al., "Improving and
//! Generalizing Flow-Based Generative Models with minibatch optimal
//! transport", 2023; torchcfm's `ConditionalFlowMatcher`).
//!
//! t ~ U[0,1], x0 noise, x1 data: x_t = t·x1 + (1−t)·x0 + σ·ε, target
//! u_t = x1 − x0, loss = mean((v_θ(t, x_t) − u_t)²). t = 0 is noise and t = 1
//! data (torchcfm's convention, the reverse of FLUX's).

use candle_core::{Device, Tensor};

use crate::rng::Rng;
use crate::Result;

/// The draws of one I-CFM training sample batch.
#[derive(Debug)]
pub struct CfmDraws {
    /// [B] in [0, 1).
    pub t: Tensor,
    /// Noise x0, shaped like the data.
    pub x0: Tensor,
    /// ε, shaped like the data.
    pub eps: Tensor,
}

/// torchcfm's `ConditionalFlowMatcher(sigma)`.
#[derive(Debug, Clone, Copy)]
pub struct FlowMatcher {
    pub sigma: f64,
}

impl FlowMatcher {
    pub fn new(sigma: f64) -> Self {
        FlowMatcher { sigma }
    }

    /// Draws t, x0 and ε for data `x1` from `rng` (in that order). ε is drawn
    /// only when σ > 0, so σ = 0 runs consume fewer numbers.
    pub fn draw(&self, rng: &mut Rng, x1: &Tensor) -> Result<CfmDraws> {
        let dims = x1.dims().to_vec();
        let b = dims[0];
        let n = x1.elem_count();
        let dev = x1.device();
        let t: Vec<f32> = (0..b).map(|_| rng.uniform() as f32).collect();
        let t = Tensor::from_vec(t, b, dev)?;
        let x0 = Tensor::from_vec(rng.normals_f32(n), dims.as_slice(), dev)?;
        let eps = if self.sigma > 0.0 {
            Tensor::from_vec(rng.normals_f32(n), dims.as_slice(), dev)?
        } else {
            Tensor::zeros(dims.as_slice(), candle_core::DType::F32, dev)?
        };
        Ok(CfmDraws { t, x0, eps })
    }

    /// (x_t, u_t) for the draws: x_t = t·x1 + (1−t)·x0 + σ·ε, u_t = x1 − x0.
    pub fn location_and_flow(&self, x1: &Tensor, d: &CfmDraws) -> Result<(Tensor, Tensor)> {
        let t = pad_like(&d.t, x1)?;
        let mu = (t.broadcast_mul(x1)? + (1.0 - &t)?.broadcast_mul(&d.x0)?)?;
        let xt = if self.sigma != 0.0 {
            (mu + (&d.eps * self.sigma)?)?
        } else {
            mu
        };
        let ut = (x1 - &d.x0)?;
        Ok((xt, ut))
    }
}

/// [B] → [B, 1, 1, …] like `x` (torchcfm's `pad_t_like_x`).
fn pad_like(t: &Tensor, x: &Tensor) -> Result<Tensor> {
    let mut shape = vec![t.dim(0)?];
    shape.extend(std::iter::repeat_n(1, x.rank() - 1));
    Ok(t.reshape(shape)?)
}

/// Mean squared error over all elements.
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok((pred - target)?.sqr()?.mean_all()?)
}

/// A convenience for tests: a tensor of `v` shaped `shape` on the CPU.
pub fn cpu_tensor(v: &[f32], shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, shape, &Device::Cpu)?)
}
