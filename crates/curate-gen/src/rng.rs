//! The generator of the trainer and sampler: curate-core's
//! [`SplitMix64`](curate_core::rng::SplitMix64). Its whole state is one
//! `u64`, so a training checkpoint stores it exactly and `--resume`
//! continues the same stream; normals by Box–Muller, one value per two
//! uniforms (no hidden state).

pub use curate_core::rng::SplitMix64 as Rng;
