//! How the surviving points of a round are split into subsets.
//!
//! - `random` (the report's): a seeded shuffle cut into equal parts.
//! - `kmeans`: spherical k-means (cosine; centroids re-normalised) so that
//!   near-duplicates, which are close in angle, tend to share a subset:
//!   fewer rounds to converge and fewer duplicate pairs split across
//!   subsets. Clusters larger than the partition size are cut into chunks.

use rayon::prelude::*;

use crate::kernel::Matrix;
use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Random,
    Kmeans,
}

impl std::str::FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Rule::Random),
            "kmeans" => Ok(Rule::Kmeans),
            _ => Err(format!("`{s}`: expected random or kmeans")),
        }
    }
}

/// Splits `ids` (indices into `x`) into parts of at most `size`, each part sorted.
pub fn split(rule: Rule, x: &Matrix, ids: &[u32], size: usize, seed: u64) -> Vec<Vec<u32>> {
    let size = size.max(1);
    if ids.len() <= size {
        return vec![ids.to_vec()];
    }
    let mut parts = match rule {
        Rule::Random => random(ids, size, seed),
        Rule::Kmeans => kmeans(x, ids, size, seed, 8),
    };
    for p in &mut parts {
        p.sort_unstable();
    }
    parts.retain(|p| !p.is_empty());
    parts
}

fn random(ids: &[u32], size: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut v = ids.to_vec();
    SplitMix64::new(seed).shuffle(&mut v);
    let k = v.len().div_ceil(size);
    // k near-equal parts rather than k−1 full ones and a remainder.
    let base = v.len() / k;
    let extra = v.len() % k;
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for i in 0..k {
        let len = base + usize::from(i < extra);
        out.push(v[start..start + len].to_vec());
        start += len;
    }
    out
}

/// Spherical k-means with k = ⌈n / size⌉, `iters` Lloyd steps from a seeded sample.
fn kmeans(x: &Matrix, ids: &[u32], size: usize, seed: u64, iters: usize) -> Vec<Vec<u32>> {
    let n = ids.len();
    let d = x.dim;
    let k = n.div_ceil(size);
    let mut order = ids.to_vec();
    SplitMix64::new(seed).shuffle(&mut order);
    let mut centroids = x.gather(&order[..k]);
    let mut assign = vec![0u32; n];
    for it in 0..=iters {
        // Assignment: argmax of cosine, by blocks of points.
        let block = 4096;
        assign
            .par_chunks_mut(block)
            .zip(ids.par_chunks(block))
            .for_each(|(out, chunk)| {
                let pts = x.gather(chunk);
                let mut sims = vec![0f32; chunk.len() * k];
                // SAFETY: pointers cover chunk×d, k×d and chunk×k elements with the strides given.
                unsafe {
                    gemm::gemm(
                        chunk.len(),
                        k,
                        d,
                        sims.as_mut_ptr(),
                        1,
                        k as isize,
                        false,
                        pts.data.as_ptr(),
                        1,
                        d as isize,
                        centroids.data.as_ptr(),
                        d as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for (o, row) in out.iter_mut().zip(sims.chunks_exact(k)) {
                    let mut best = 0;
                    for (c, &s) in row.iter().enumerate() {
                        if s > row[best] {
                            best = c;
                        }
                    }
                    *o = best as u32;
                }
            });
        if it == iters {
            break;
        }
        // Update: normalised mean of the members; an empty cluster keeps its centroid.
        let mut sums = vec![0f64; k * d];
        let mut counts = vec![0usize; k];
        for (&id, &c) in ids.iter().zip(&assign) {
            counts[c as usize] += 1;
            let row = x.row(id as usize);
            for (s, v) in sums[c as usize * d..(c as usize + 1) * d]
                .iter_mut()
                .zip(row)
            {
                *s += *v as f64;
            }
        }
        for c in 0..k {
            if counts[c] == 0 {
                continue;
            }
            let s = &sums[c * d..(c + 1) * d];
            let norm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                for (dst, v) in centroids.data[c * d..(c + 1) * d].iter_mut().zip(s) {
                    *dst = (v / norm) as f32;
                }
            }
        }
    }
    let mut groups: Vec<Vec<u32>> = vec![Vec::new(); k];
    for (&id, &c) in ids.iter().zip(&assign) {
        groups[c as usize].push(id);
    }
    // Oversized clusters are cut into chunks (in index order); small ones stay small.
    let mut out = Vec::new();
    for g in groups {
        if g.len() <= size {
            out.push(g);
        } else {
            let pieces = g.len().div_ceil(size);
            let base = g.len() / pieces;
            let extra = g.len() % pieces;
            let mut start = 0;
            for i in 0..pieces {
                let len = base + usize::from(i < extra);
                out.push(g[start..start + len].to_vec());
                start += len;
            }
        }
    }
    out
}
