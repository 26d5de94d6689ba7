//! The one seeded generator of curate: SplitMix64 (Steele, Lea & Flood,
//! "Fast splittable pseudorandom number generators", OOPSLA 2014).
//!
//! Crop positions, caption choices, dedup partitions, initial weights, the
//! training data order and every draw of the trainer must be reproducible
//! everywhere, so no platform- or version-dependent randomness. The whole
//! state is one `u64` ([`SplitMix64::state`] / [`SplitMix64::from_state`]),
//! so a training checkpoint stores it exactly and `--resume` continues the
//! same stream. Normals come from Box–Muller, one value per two uniforms:
//! no hidden state besides the `u64`.
//!
//! Index draws come in two flavours, both kept bit for bit because recorded
//! outputs depend on them: [`below`](SplitMix64::below) (64-bit
//! multiply-shift; crops, the trainer) and [`below32`](SplitMix64::below32)
//! (32-bit multiply-shift; dedup's partitions).

/// SplitMix64's increment (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a's 64-bit offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a's 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

/// SplitMix64: a seeded stream whose whole state is one `u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A stream derived from `seed` and a label (e.g. an epoch), independent of `new(seed)`.
    pub fn derive(seed: u64, label: u64) -> Self {
        let mut r = SplitMix64::new(seed ^ 0xA076_1D64_78BD_642F);
        let a = r.next_u64();
        SplitMix64::new(a ^ label.wrapping_mul(GAMMA))
    }

    /// The whole state (what a checkpoint stores).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The stream continued from a stored [`state`](Self::state).
    pub fn from_state(state: u64) -> Self {
        SplitMix64 { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` by the 64-bit multiply-shift (Lemire; bias < n / 2⁶⁴).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `0..n` (n < 2³²) by the 32-bit multiply-shift of the
    /// high half (bias < 2⁻³²): dedup's partitions were recorded with it.
    pub fn below32(&mut self, n: u64) -> u64 {
        (self.next_u64() >> 32).wrapping_mul(n) >> 32
    }

    /// Standard normal (Box–Muller, one value per two uniforms: no hidden state).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `n` standard normals as f32.
    pub fn normals_f32(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }

    /// Fisher–Yates with [`below`](Self::below).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// Fisher–Yates with [`below32`](Self::below32).
    pub fn shuffle32<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below32(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// SplitMix64's finaliser: a good 64-bit hash of a 64-bit value.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of `bytes` from the offset `basis` (plain FNV-1a: [`FNV_OFFSET`]).
pub fn fnv1a(basis: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(basis, |h, &b| (h ^ b as u64).wrapping_mul(FNV_PRIME))
}

/// A stable hash of a string under a seed (FNV-1a, then mixed).
pub fn hash_str(seed: u64, s: &str) -> u64 {
    mix(fnv1a(FNV_OFFSET ^ mix(seed), s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_roundtrip_continues_the_stream() {
        let mut a = SplitMix64::new(7);
        for _ in 0..5 {
            a.next_u64();
        }
        let mut b = SplitMix64::from_state(a.state());
        assert_eq!(a.next_u64(), b.next_u64());
        assert_eq!(a.normal().to_bits(), b.normal().to_bits());
    }

    #[test]
    fn the_stream_is_splitmix64() {
        // Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn normals_have_unit_variance() {
        let mut r = SplitMix64::new(1);
        let v = r.normals_f32(20000);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn draws_stay_in_range() {
        let mut r = SplitMix64::new(3);
        for n in [1u64, 2, 7, 1000] {
            for _ in 0..100 {
                assert!(r.below(n) < n && r.below32(n) < n);
            }
        }
    }
}
