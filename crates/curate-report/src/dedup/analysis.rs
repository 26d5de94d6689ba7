//! The numbers behind the dedup overview that need no polars: the eps
//! sweep over nearest-neighbour links, cluster-size bins, bin widths.

use std::collections::HashMap;

/// One cluster (two or more images).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub id: i64,
    pub size: u64,
    /// Lowest cosine to the representative over the members.
    pub min_cos: f64,
}

/// One row of the eps sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRow {
    pub threshold: f32,
    /// Images whose stored nearest neighbour has cos ≥ threshold.
    pub with_neighbour: u64,
    /// Images in the groups those nearest-neighbour links form.
    pub linked: u64,
    /// `linked − groups`: each group keeps one image.
    pub removed: u64,
}

/// The eps sweep from nearest-neighbour links `(image, nearest, cos)`:
/// for each threshold (any order), the images with a link ≥ it and what
/// the groups of linked images would remove. Comparisons in f32, as dedup makes them.
pub fn sweep(links: &[(String, String, f32)], thresholds: &[f32]) -> Vec<SweepRow> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut edges: Vec<(usize, usize, f32)> = Vec::with_capacity(links.len());
    for (a, b, c) in links {
        let n = index.len();
        let i = *index.entry(a.as_str()).or_insert(n);
        let n = index.len();
        let j = *index.entry(b.as_str()).or_insert(n);
        edges.push((i, j, *c));
    }
    edges.sort_by(|x, y| y.2.total_cmp(&x.2));
    let mut parent: Vec<usize> = (0..index.len()).collect();
    let mut in_graph = vec![false; index.len()];
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut order: Vec<f32> = thresholds.to_vec();
    order.sort_by(|a, b| b.total_cmp(a));
    order.dedup();
    let (mut next, mut nodes, mut unions) = (0usize, 0u64, 0u64);
    let mut rows = Vec::new();
    for t in order {
        while next < edges.len() && edges[next].2 >= t {
            let (i, j, _) = edges[next];
            for k in [i, j] {
                if !in_graph[k] {
                    in_graph[k] = true;
                    nodes += 1;
                }
            }
            let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
            if ri != rj {
                parent[ri] = rj;
                unions += 1;
            }
            next += 1;
        }
        rows.push(SweepRow {
            threshold: t,
            with_neighbour: next as u64,
            linked: nodes,
            removed: unions,
        });
    }
    rows.sort_by(|a, b| a.threshold.total_cmp(&b.threshold));
    rows
}

/// A bin width giving at most `max_bins` bins over `[lo, hi]`.
pub fn bin_step(lo: f64, hi: f64, max_bins: usize) -> f64 {
    for s in [
        0.001, 0.002, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5,
    ] {
        if (hi - lo) / s <= max_bins as f64 {
            return s;
        }
    }
    1.0
}

pub fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Cluster counts by size: every size up to 12, then ranges. `(label, clusters, images)`.
pub fn size_bins(clusters: &[Cluster]) -> Vec<(String, u64, u64)> {
    let max = clusters.iter().map(|c| c.size).max().unwrap_or(0);
    let ranges: Vec<(u64, u64)> = if max <= 12 {
        (2..=max.max(2)).map(|s| (s, s)).collect()
    } else {
        let mut r: Vec<(u64, u64)> = (2..=5).map(|s| (s, s)).collect();
        for (a, b) in [
            (6, 10),
            (11, 20),
            (21, 50),
            (51, 100),
            (101, 1000),
            (1001, u64::MAX),
        ] {
            if a <= max {
                r.push((a, b));
            }
        }
        r
    };
    ranges
        .into_iter()
        .map(|(a, b)| {
            let (n, imgs) = clusters
                .iter()
                .filter(|c| c.size >= a && c.size <= b)
                .fold((0, 0), |(n, i), c| (n + 1, i + c.size));
            let label = if a == b {
                a.to_string()
            } else if b == u64::MAX {
                format!("> {}", a - 1)
            } else {
                format!("{a}–{b}")
            };
            (label, n, imgs)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(a: &str, b: &str, c: f32) -> (String, String, f32) {
        (a.into(), b.into(), c)
    }

    #[test]
    fn sweep_counts_images_with_a_neighbour_and_groups() {
        // a–b 0.99, b–a 0.99, c–b 0.95 (chain), d–e 0.97, e–d 0.97, f–a 0.85
        let links = vec![
            l("a", "b", 0.99),
            l("b", "a", 0.99),
            l("c", "b", 0.95),
            l("d", "e", 0.97),
            l("e", "d", 0.97),
            l("f", "a", 0.85),
        ];
        let rows = sweep(&links, &[0.9, 0.99, 0.8, 0.96, 0.99]);
        let got: Vec<(f32, u64, u64, u64)> = rows
            .iter()
            .map(|r| (r.threshold, r.with_neighbour, r.linked, r.removed))
            .collect();
        assert_eq!(
            got,
            vec![
                (0.8, 6, 6, 4),  // {a,b,c,f} and {d,e}: 6 images, 2 groups
                (0.9, 5, 5, 3),  // {a,b,c}, {d,e}
                (0.96, 4, 4, 2), // {a,b}, {d,e}
                (0.99, 2, 2, 1), // {a,b}
            ]
        );
        // f32 comparison: 0.99f32 is at the threshold 0.99f32.
        assert_eq!(sweep(&[l("x", "y", 0.99)], &[0.99])[0].with_neighbour, 1);
    }

    #[test]
    fn size_bins_cover_every_cluster() {
        let cs: Vec<Cluster> = [2, 2, 3, 7, 15, 40, 2000]
            .iter()
            .enumerate()
            .map(|(i, s)| Cluster {
                id: i as i64,
                size: *s,
                min_cos: 0.95,
            })
            .collect();
        let bins = size_bins(&cs);
        assert_eq!(bins.iter().map(|b| b.1).sum::<u64>(), 7);
        assert_eq!(bins.iter().map(|b| b.2).sum::<u64>(), 2069);
        assert_eq!(bins[0], ("2".into(), 2, 4));
        assert_eq!(bins.last().unwrap(), &("> 1000".to_string(), 1, 2000));
    }
}
