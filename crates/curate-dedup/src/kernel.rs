//! The exact ε-neighbourhood graph of unit vectors under cosine similarity.
//!
//! The vectors are cut into blocks of `block` rows; for every pair of
//! blocks (I, J ≥ I) one matrix product `X_I · X_Jᵀ` (the `gemm` crate,
//! single-threaded per product, blocks spread over the rayon pool) gives
//! all similarities, and those ≥ eps become edges. Only the upper triangle
//! is computed. Memory is one `block × block` scratch per thread plus the
//! edges found, never N².
//!
//! Similarities are computed in f32 from the stored (normalised) vectors,
//! so a pair within ~1e-6 of eps may be decided differently by a float64
//! implementation; the test fixtures keep every pair ≥ 2e-4 from eps.

use rayon::prelude::*;

use crate::DedupError;

/// Row-major `rows × dim` f32 vectors.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn new(rows: usize, dim: usize, data: Vec<f32>) -> Result<Matrix, DedupError> {
        if data.len() != rows * dim {
            return Err(DedupError::Shape {
                rows,
                dim,
                expected: rows * dim,
                found: data.len(),
            });
        }
        Ok(Matrix { rows, dim, data })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows `idx`, in that order.
    pub fn gather(&self, idx: &[u32]) -> Matrix {
        let mut data = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            data.extend_from_slice(self.row(i as usize));
        }
        Matrix {
            rows: idx.len(),
            dim: self.dim,
            data,
        }
    }

    /// Scales every non-zero row to unit length.
    pub fn normalise(&mut self) {
        let d = self.dim;
        self.data.par_chunks_mut(d.max(1)).for_each(|r| {
            let n = r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            if n > 0.0 {
                r.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
            }
        });
    }
}

/// Cosine (dot product of unit vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The ε-graph: symmetric adjacency lists (CSR), with similarities, and
/// each point's most similar other point.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub n: usize,
    /// `offsets[i]..offsets[i+1]` indexes `neighbours` and `sims` for point i.
    pub offsets: Vec<usize>,
    pub neighbours: Vec<u32>,
    pub sims: Vec<f32>,
    /// Most similar other point and its similarity (`None` when n = 1).
    pub nearest: Vec<Option<(u32, f32)>>,
    /// Multiply-adds done (n·(n+1)/2·dim, rounded to whole blocks), for GFLOP/s.
    pub flops: f64,
}

impl Graph {
    pub fn neighbours_of(&self, i: usize) -> &[u32] {
        &self.neighbours[self.offsets[i]..self.offsets[i + 1]]
    }
    pub fn sims_of(&self, i: usize) -> &[f32] {
        &self.sims[self.offsets[i]..self.offsets[i + 1]]
    }
    /// Number of unordered neighbour pairs.
    pub fn pairs(&self) -> usize {
        self.neighbours.len() / 2
    }
}

/// The largest value of `v` and its first index, in 8 independent lanes
/// (vectorised), ties going to the lowest index.
fn row_argmax(v: &[f32]) -> (f32, usize) {
    const L: usize = 8;
    let mut lane_max = [f32::NEG_INFINITY; L];
    let mut lane_idx = [0u32; L];
    let chunks = v.len() / L;
    for ch in 0..chunks {
        let x = &v[ch * L..ch * L + L];
        for l in 0..L {
            let better = x[l] > lane_max[l];
            lane_max[l] = if better { x[l] } else { lane_max[l] };
            lane_idx[l] = if better {
                (ch * L + l) as u32
            } else {
                lane_idx[l]
            };
        }
    }
    let mut best = (f32::NEG_INFINITY, usize::MAX);
    for l in 0..L {
        if lane_max[l] > best.0 || (lane_max[l] == best.0 && (lane_idx[l] as usize) < best.1) {
            best = (lane_max[l], lane_idx[l] as usize);
        }
    }
    for (i, &x) in v.iter().enumerate().skip(chunks * L) {
        if x > best.0 {
            best = (x, i);
        }
    }
    if best.1 == usize::MAX {
        best.1 = 0;
    }
    best
}

/// Rows per block: a 1024×1024 f32 product tile is 4 MiB of scratch.
pub const DEFAULT_BLOCK: usize = 1024;

/// All pairs with cosine ≥ `eps`.
pub fn eps_graph(x: &Matrix, eps: f32, block: usize) -> Graph {
    let n = x.rows;
    let d = x.dim;
    let block = block.max(1);
    let nb = n.div_ceil(block);
    let tiles: Vec<(usize, usize)> = (0..nb).flat_map(|i| (i..nb).map(move |j| (i, j))).collect();
    struct Tile {
        edges: Vec<(u32, u32, f32)>,
        row_best: Vec<(f32, u32)>,
        col_best: Vec<(f32, u32)>,
        i0: usize,
        j0: usize,
    }
    let results: Vec<Tile> = tiles
        .par_iter()
        .map_init(Vec::new, |scratch: &mut Vec<f32>, &(bi, bj)| {
            let i0 = bi * block;
            let i1 = (i0 + block).min(n);
            let j0 = bj * block;
            let j1 = (j0 + block).min(n);
            let (m, k) = (i1 - i0, j1 - j0);
            scratch.resize(m * k, 0.0);
            // SAFETY: the pointers cover m×d, k×d and m×k elements with the strides given.
            unsafe {
                gemm::gemm(
                    m,
                    k,
                    d,
                    scratch.as_mut_ptr(),
                    1,
                    k as isize,
                    false,
                    x.data.as_ptr().add(i0 * d),
                    1,
                    d as isize,
                    x.data.as_ptr().add(j0 * d),
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
            let mut tile = Tile {
                edges: Vec::new(),
                row_best: vec![(f32::NEG_INFINITY, u32::MAX); m],
                col_best: vec![(f32::NEG_INFINITY, u32::MAX); k],
                i0,
                j0,
            };
            let mut col_max = vec![f32::NEG_INFINITY; k];
            let mut col_idx = vec![u32::MAX; k];
            for r in 0..m {
                let row = &scratch[r * k..(r + 1) * k];
                let gi = (i0 + r) as u32;
                let start = if bi == bj { r + 1 } else { 0 };
                if start >= k {
                    continue;
                }
                let (mx, at) = row_argmax(&row[start..]);
                tile.row_best[r] = (mx, (j0 + start + at) as u32);
                // Column maxima, branch-free so the loop vectorises; rows come
                // in increasing order, so the first (lowest) row wins ties.
                for ((&v, cm), ci) in row[start..]
                    .iter()
                    .zip(&mut col_max[start..])
                    .zip(&mut col_idx[start..])
                {
                    let better = v > *cm;
                    *cm = if better { v } else { *cm };
                    *ci = if better { gi } else { *ci };
                }
                // Most rows have no neighbour in most tiles: scan only when one exists.
                if mx >= eps {
                    for (c, &v) in row.iter().enumerate().skip(start) {
                        if v >= eps {
                            tile.edges.push((gi, (j0 + c) as u32, v));
                        }
                    }
                }
            }
            for (c, slot) in tile.col_best.iter_mut().enumerate() {
                *slot = (col_max[c], col_idx[c]);
            }
            tile
        })
        .collect();

    let mut best = vec![(f32::NEG_INFINITY, u32::MAX); n];
    let mut degree = vec![0usize; n];
    for t in &results {
        for (r, b) in t.row_best.iter().enumerate() {
            let slot = &mut best[t.i0 + r];
            if b.0 > slot.0 || (b.0 == slot.0 && b.1 < slot.1) {
                *slot = *b;
            }
        }
        for (c, b) in t.col_best.iter().enumerate() {
            let slot = &mut best[t.j0 + c];
            if b.0 > slot.0 || (b.0 == slot.0 && b.1 < slot.1) {
                *slot = *b;
            }
        }
        for &(a, b, _) in &t.edges {
            degree[a as usize] += 1;
            degree[b as usize] += 1;
        }
    }
    let mut offsets = vec![0usize; n + 1];
    for i in 0..n {
        offsets[i + 1] = offsets[i] + degree[i];
    }
    let total = offsets[n];
    let mut neighbours = vec![0u32; total];
    let mut sims = vec![0f32; total];
    let mut fill = offsets[..n].to_vec();
    for t in &results {
        for &(a, b, s) in &t.edges {
            let (a, b) = (a as usize, b as usize);
            neighbours[fill[a]] = b as u32;
            sims[fill[a]] = s;
            fill[a] += 1;
            neighbours[fill[b]] = a as u32;
            sims[fill[b]] = s;
            fill[b] += 1;
        }
    }
    // Neighbour lists in index order: DBSCAN's expansion order, hence its
    // labels, then matches an implementation that scans rows in order.
    for i in 0..n {
        let (s, e) = (offsets[i], offsets[i + 1]);
        if e - s > 1 {
            let mut pairs: Vec<(u32, f32)> = neighbours[s..e]
                .iter()
                .copied()
                .zip(sims[s..e].iter().copied())
                .collect();
            pairs.sort_unstable_by_key(|p| p.0);
            for (k, (nb, sm)) in pairs.into_iter().enumerate() {
                neighbours[s + k] = nb;
                sims[s + k] = sm;
            }
        }
    }
    let flops: f64 = tiles
        .iter()
        .map(|&(bi, bj)| {
            let m = ((bi + 1) * block).min(n) - bi * block;
            let k = ((bj + 1) * block).min(n) - bj * block;
            2.0 * (m * k * d) as f64
        })
        .sum();
    Graph {
        n,
        offsets,
        neighbours,
        sims,
        nearest: best
            .into_iter()
            .map(|(s, j)| (j != u32::MAX).then_some((j, s)))
            .collect(),
        flops,
    }
}
