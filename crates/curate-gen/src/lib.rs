//! candle models for curate: the FLUX VAE (issue #9), the T5 text encoder,
//! the oboro DiT, its I-CFM trainer and sampler (issue #10), and the candle
//! devices this build can use.

mod error;
pub use error::{GenError, Result};

pub mod cfm;
pub mod dit;
pub mod optim;
pub mod rng;
pub mod sample;
pub mod t5;
pub mod train;
pub mod vae;

/// A candle device this build can use.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub name: String,
    pub detail: String,
}

/// Lists candle devices: the CPU (with its SIMD support) and, in a build
/// with the `cuda` feature, every CUDA device that opens.
pub fn devices() -> Vec<DeviceInfo> {
    let mut out = vec![DeviceInfo {
        name: "cpu".into(),
        detail: format!(
            "{} threads, avx: {}, f16c: {}",
            candle_core::utils::get_num_threads(),
            candle_core::utils::with_avx(),
            candle_core::utils::with_f16c()
        ),
    }];
    if candle_core::utils::cuda_is_available() {
        for i in 0..16 {
            match candle_core::Device::new_cuda(i) {
                Ok(_) => out.push(DeviceInfo {
                    name: format!("cuda:{i}"),
                    detail: "opened".into(),
                }),
                Err(_) => break,
            }
        }
    }
    out
}

/// The candle device named `cpu`, `cuda` or `cuda:N`; CUDA in a build
/// without the `cuda` feature is an error, never a silent CPU fallback.
pub fn device(name: &str) -> Result<candle_core::Device> {
    let cuda = match name {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => Some(0),
        _ => name
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok()),
    };
    let Some(ordinal) = cuda else {
        return Err(GenError::Config(format!(
            "device `{name}`: expected cpu, cuda or cuda:N"
        )));
    };
    if !cuda_compiled() {
        return Err(GenError::Config(format!(
            "device `{name}`: this curate was built without CUDA for candle (rebuild with `--features cuda`)"
        )));
    }
    Ok(candle_core::Device::new_cuda(ordinal)?)
}

/// Whether this build was compiled with CUDA support for candle.
pub fn cuda_compiled() -> bool {
    candle_core::utils::cuda_is_available()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_is_always_listed() {
        let d = super::devices();
        assert_eq!(d[0].name, "cpu");
        assert!(d[0].detail.contains("threads"));
    }
}
