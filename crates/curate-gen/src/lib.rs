//! candle models for curate: the FLUX VAE, the T5 text encoder, the oboro
//! DiT, its I-CFM trainer and sampler (issues 9 and 10). Today: the candle
//! devices this build can use, for `curate doctor`.

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
