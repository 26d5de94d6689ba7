//! dedup's seeded generator: curate-core's SplitMix64 (partitions and
//! representative choices must be reproducible everywhere), drawing indices
//! with the 32-bit multiply-shift its recorded partitions were made with.

pub use curate_core::rng::{hash_str, mix};

/// curate-core's [`SplitMix64`](curate_core::rng::SplitMix64) whose
/// [`below`](Self::below) and [`shuffle`](Self::shuffle) are its 32-bit
/// variants.
#[derive(Debug, Clone)]
pub struct SplitMix64(curate_core::rng::SplitMix64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(curate_core::rng::SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift (bias < 2⁻³² for n < 2³²).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below32(n as u64) as usize
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        self.0.shuffle32(v)
    }
}
