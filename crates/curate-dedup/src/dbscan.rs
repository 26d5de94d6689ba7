//! DBSCAN (Ester et al., 1996) on a precomputed ε-graph.
//!
//! `min_samples` counts the point itself (scikit-learn's and the paper's
//! MinPts). Core points have at least `min_samples` points within eps;
//! border points are non-core points within eps of a core point; the rest
//! is noise. Labelling follows scikit-learn's `dbscan_inner`: points are
//! visited in index order, each unlabelled core point starts the next
//! cluster, which is expanded depth-first through core points; so clusters
//! are numbered by their lowest core point, and a border point reachable
//! from two clusters belongs to the one numbered first.

use crate::kernel::Graph;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Core,
    Border,
    Noise,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Core => "core",
            Role::Border => "border",
            Role::Noise => "noise",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Clustering {
    /// Cluster number per point, −1 for noise.
    pub labels: Vec<i64>,
    pub roles: Vec<Role>,
    pub clusters: usize,
}

pub fn dbscan(g: &Graph, min_samples: usize) -> Clustering {
    let n = g.n;
    let core: Vec<bool> = (0..n)
        .map(|i| 1 + g.neighbours_of(i).len() >= min_samples)
        .collect();
    let mut labels = vec![-1i64; n];
    let mut next = 0i64;
    let mut stack: Vec<usize> = Vec::new();
    for start in 0..n {
        if labels[start] != -1 || !core[start] {
            continue;
        }
        let mut i = start;
        loop {
            if labels[i] == -1 {
                labels[i] = next;
                if core[i] {
                    for &j in g.neighbours_of(i) {
                        if labels[j as usize] == -1 {
                            stack.push(j as usize);
                        }
                    }
                }
            }
            match stack.pop() {
                Some(j) => i = j,
                None => break,
            }
        }
        next += 1;
    }
    let roles = (0..n)
        .map(|i| {
            if core[i] {
                Role::Core
            } else if labels[i] >= 0 {
                Role::Border
            } else {
                Role::Noise
            }
        })
        .collect();
    Clustering {
        labels,
        roles,
        clusters: next as usize,
    }
}
