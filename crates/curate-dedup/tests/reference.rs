//! Our kernel + DBSCAN against scikit-learn (labels recorded in
//! `fixtures/dedup/cases.json` by `fixtures/dedup/make_dbscan_fixtures.py`)
//! and against linfa-clustering's DBSCAN (L2 tolerance √(2−2·eps) on the
//! normalised vectors), on planted near-duplicates, chains, exact ties and
//! border points; then the iterative driver's invariants.

use std::collections::HashMap;
use std::path::PathBuf;

use curate_dedup::dbscan::{dbscan, Role};
use curate_dedup::driver::{self, Keep, Points, Settings, State};
use curate_dedup::kernel::{eps_graph, Matrix};
use curate_dedup::partition::Rule;
use curate_dedup::rng::SplitMix64;
use linfa::traits::Transformer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/dedup")
}

struct Case {
    name: String,
    x: Matrix,
    eps: f32,
    min_samples: usize,
    labels: Vec<i64>,
    ambiguous: Vec<usize>,
    pairs: usize,
}

fn cases() -> Vec<Case> {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    j["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = c["n"].as_u64().unwrap() as usize;
            let d = c["d"].as_u64().unwrap() as usize;
            let bytes = std::fs::read(fixtures().join(c["file"].as_str().unwrap())).unwrap();
            let data: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            Case {
                name: c["name"].as_str().unwrap().into(),
                x: Matrix::new(n, d, data).unwrap(),
                eps: c["eps"].as_f64().unwrap() as f32,
                min_samples: c["min_samples"].as_u64().unwrap() as usize,
                labels: c["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect(),
                ambiguous: c["ambiguous_border"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect(),
                pairs: c["neighbour_pairs"].as_u64().unwrap() as usize,
            }
        })
        .collect()
}

/// Same partition of points and same noise set, up to renumbering,
/// ignoring the cluster of the given (order-dependent) border points.
fn same_partition(a: &[i64], b: &[i64], ignore: &[usize]) -> Result<(), String> {
    assert_eq!(a.len(), b.len());
    let mut ab: HashMap<i64, i64> = HashMap::new();
    let mut ba: HashMap<i64, i64> = HashMap::new();
    for i in 0..a.len() {
        if (a[i] < 0) != (b[i] < 0) {
            return Err(format!(
                "point {i}: noise in one, not the other ({} vs {})",
                a[i], b[i]
            ));
        }
        if a[i] < 0 || ignore.contains(&i) {
            continue;
        }
        if *ab.entry(a[i]).or_insert(b[i]) != b[i] || *ba.entry(b[i]).or_insert(a[i]) != a[i] {
            return Err(format!(
                "point {i}: cluster {} vs {}: partitions differ",
                a[i], b[i]
            ));
        }
    }
    Ok(())
}

fn linfa_labels(x: &Matrix, eps: f32, min_samples: usize) -> Vec<i64> {
    let arr = ndarray::Array2::from_shape_vec(
        (x.rows, x.dim),
        x.data.iter().map(|&v| v as f64).collect(),
    )
    .unwrap();
    let tol = (2.0 - 2.0 * eps as f64).sqrt();
    let labels = linfa_clustering::Dbscan::params_with(
        min_samples,
        linfa_nn::distance::L2Dist,
        linfa_nn::CommonNearestNeighbour::LinearSearch,
    )
    .tolerance(tol)
    .transform(&arr)
    .unwrap();
    labels.iter().map(|l| l.map_or(-1, |v| v as i64)).collect()
}

#[test]
fn clusters_equal_scikit_learn_labels_exactly() {
    for c in cases() {
        let g = eps_graph(&c.x, c.eps, 64);
        assert_eq!(g.pairs(), c.pairs, "{}: neighbour pairs", c.name);
        let ours = dbscan(&g, c.min_samples);
        // Same numbering too: clusters in order of their first core point,
        // border points to the first cluster reaching them, as sklearn does.
        assert_eq!(ours.labels, c.labels, "{}", c.name);
        same_partition(&ours.labels, &c.labels, &[]).unwrap();
    }
}

#[test]
fn clusters_equal_linfa_clustering() {
    for c in cases() {
        let ours = dbscan(&eps_graph(&c.x, c.eps, 1024), c.min_samples);
        let theirs = linfa_labels(&c.x, c.eps, c.min_samples);
        same_partition(&ours.labels, &theirs, &c.ambiguous)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    }
}

#[test]
fn block_size_does_not_change_the_graph() {
    let c = cases()
        .into_iter()
        .find(|c| c.name.starts_with("chains"))
        .unwrap();
    let a = eps_graph(&c.x, c.eps, 7);
    let b = eps_graph(&c.x, c.eps, 4096);
    assert_eq!(a.offsets, b.offsets);
    assert_eq!(a.neighbours, b.neighbours);
    assert!(a.pairs() > 0);
    // Products of different shapes sum in different orders: equal to rounding.
    for (p, q) in a.nearest.iter().zip(&b.nearest) {
        let ((i, s), (j, t)) = (p.unwrap(), q.unwrap());
        assert_eq!(i, j);
        assert!((s - t).abs() < 1e-5);
    }
}

/// Random unit vectors with planted near-duplicate groups and chains.
fn planted(n: usize, d: usize, seed: u64) -> (Matrix, Vec<(u32, u32)>) {
    let mut rng = SplitMix64::new(seed);
    let mut gauss = move || {
        // Box–Muller.
        let u1 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 + 1e-12;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    };
    let mut data = Vec::with_capacity(n * d);
    let mut planted = Vec::new();
    let mut i = 0;
    while i < n {
        let base: Vec<f32> = (0..d).map(|_| gauss()).collect();
        data.extend_from_slice(&base);
        let copies = if i % 3 == 0 { (i / 3) % 4 } else { 0 };
        let mut prev = base.clone();
        for _ in 0..copies.min(n - i - 1) {
            // A chain: each copy is close to the previous one.
            let next: Vec<f32> = prev.iter().map(|v| v + 0.12 * gauss()).collect();
            data.extend_from_slice(&next);
            i += 1;
            planted.push(((i - 1) as u32, i as u32));
            prev = next;
        }
        i += 1;
    }
    let mut m = Matrix::new(n, d, data).unwrap();
    m.normalise();
    (m, planted)
}

#[test]
fn random_planted_sets_equal_linfa_for_several_settings() {
    for (seed, eps, min_samples) in [(1, 0.9, 2), (2, 0.95, 2), (3, 0.9, 3), (4, 0.85, 4)] {
        let (x, _) = planted(400, 48, seed);
        let ours = dbscan(&eps_graph(&x, eps, 128), min_samples);
        let theirs = linfa_labels(&x, eps, min_samples);
        // Border points next to two clusters may go either way in linfa (BFS order).
        let g = eps_graph(&x, eps, 128);
        let ambiguous: Vec<usize> = (0..x.rows)
            .filter(|&i| ours.roles[i] == Role::Border)
            .filter(|&i| {
                let mut labels: Vec<i64> = g
                    .neighbours_of(i)
                    .iter()
                    .filter(|&&j| ours.roles[j as usize] == Role::Core)
                    .map(|&j| ours.labels[j as usize])
                    .collect();
                labels.sort();
                labels.dedup();
                labels.len() > 1
            })
            .collect();
        same_partition(&ours.labels, &theirs, &ambiguous)
            .unwrap_or_else(|e| panic!("seed {seed}, eps {eps}, min_samples {min_samples}: {e}"));
        assert!(
            ours.clusters > 10,
            "the planted set has clusters ({})",
            ours.clusters
        );
    }
}

fn settings(partition: Rule, size: usize) -> Settings {
    Settings {
        eps: 0.9,
        min_samples: 2,
        keep: Keep::Random,
        seed: 7,
        partition,
        partition_size: size,
        max_rounds: 20,
        block: 256,
    }
}

fn points(x: Matrix) -> Points {
    Points {
        keys: (0..x.rows).map(|i| format!("{i:016x}")).collect(),
        x,
        scores: None,
    }
}

#[test]
fn one_partition_equals_plain_dbscan_and_converges() {
    let (x, _) = planted(300, 32, 9);
    let p = points(x.clone());
    let tmp = std::env::temp_dir().join(format!("dedup-one-{}", std::process::id()));
    let state = State::new(&tmp).unwrap();
    let (outcome, history) =
        driver::run_all(&p, &settings(Rule::Random, 10_000), &state, &mut ()).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(outcome.converged);
    let direct = dbscan(&eps_graph(&x, 0.9, 256), 2);
    // Round 1 is plain DBSCAN on everything.
    assert_eq!(history[0][0].labels, direct.labels);
    let expected_out = direct.labels.iter().filter(|&&l| l < 0).count() + direct.clusters;
    assert_eq!(outcome.rounds[0].images_out, expected_out);
    // min_samples 2: survivors are never neighbours, so round 2 removes nothing.
    assert_eq!(outcome.rounds.len(), 2);
    assert_eq!(outcome.rounds[1].removed, 0);
}

#[test]
fn partitioned_rounds_converge_to_a_set_without_neighbours() {
    for rule in [Rule::Random, Rule::Kmeans] {
        let (x, planted_pairs) = planted(1200, 32, 11);
        let p = points(x.clone());
        let tmp =
            std::env::temp_dir().join(format!("dedup-part-{:?}-{}", rule, std::process::id()));
        let state = State::new(&tmp).unwrap();
        let s = settings(rule, 200);
        let (outcome, history) = driver::run_all(&p, &s, &state, &mut ()).unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
        assert!(outcome.converged, "{rule:?}");
        let rows = driver::finish(&p, &history);
        assert_eq!(rows.len(), 1200);
        let kept: Vec<u32> = rows.iter().filter(|r| r.kept).map(|r| r.index).collect();
        // Converged: no two kept images are neighbours.
        let g = eps_graph(&x.gather(&kept), 0.9, 256);
        assert_eq!(g.pairs(), 0, "{rule:?}: kept images still have neighbours");
        // Every image maps to a kept representative, sizes add up.
        let total: u32 = rows.iter().filter(|r| r.kept).map(|r| r.cluster_size).sum();
        assert_eq!(total, 1200);
        for r in &rows {
            assert!(rows[r.representative as usize].kept);
            assert!(r.cluster_min_cosine <= r.cosine_to_representative + 1e-6);
        }
        // Planted pairs end in one cluster.
        let together = planted_pairs
            .iter()
            .filter(|(a, b)| rows[*a as usize].representative == rows[*b as usize].representative)
            .count();
        eprintln!(
            "{rule:?}: {} rounds, {} → {} images, {together}/{} planted pairs together",
            outcome.rounds.len(),
            1200,
            kept.len(),
            planted_pairs.len()
        );
        // Each planted copy is a step of cos ≈ 0.99 from the last, inside
        // eps: the partitioned rounds must put every pair in one cluster.
        assert!(planted_pairs.len() > 500);
        assert_eq!(
            together,
            planted_pairs.len(),
            "{rule:?}: planted pairs split"
        );
    }
}

#[test]
fn representatives_do_not_depend_on_partitioning_and_first_is_lowest() {
    let (x, _) = planted(200, 16, 5);
    let p = points(x);
    for keep in [Keep::First, Keep::Random] {
        let mut s = settings(Rule::Random, 10_000);
        s.keep = keep;
        let tmp = std::env::temp_dir().join(format!(
            "dedup-keep-{}-{}",
            keep.as_str(),
            std::process::id()
        ));
        let state = State::new(&tmp).unwrap();
        let (_, history) = driver::run_all(&p, &s, &state, &mut ()).unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
        let rows = driver::finish(&p, &history);
        if keep == Keep::First {
            for r in &rows {
                assert!(r.representative <= r.index);
            }
        }
        assert!(rows.iter().any(|r| !r.kept));
    }
}

/// Cooperating tasks: one that failed leaves a marker, and a task waiting for
/// its partitions stops with an error naming it instead of waiting forever;
/// once the failed task is rerun (it clears its marker), both finish alike.
#[test]
fn a_waiting_task_stops_when_another_task_failed() {
    let (x, _) = planted(400, 32, 11);
    let p = points(x);
    let s = settings(Rule::Random, 100);
    let tmp = std::env::temp_dir().join(format!("dedup-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let state = State::new(&tmp).unwrap();
    let share = |index| driver::Share {
        index,
        count: 2,
        poll: std::time::Duration::from_millis(1),
    };
    state.mark_failed(1, "error: disk full");
    let err = driver::run_shared(&p, &s, &state, &mut (), share(0)).unwrap_err();
    match &err {
        curate_dedup::DedupError::PeerFailed { task, message, .. } => {
            assert_eq!((*task, message.as_str()), (1, "error: disk full"));
        }
        other => panic!("{other}"),
    }
    // Task 1 reruns: it clears its marker and writes its partitions; then
    // task 0 (rerun) finds them, and both reach the same result.
    let (started, running) = std::sync::mpsc::channel();
    let t1 = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let mut signal = Signal(Some(started));
            driver::run_shared(&p, &s, &state, &mut signal, share(1)).unwrap_or_else(|e| {
                // As `curate dedup` does: task 0 then stops instead of waiting.
                state.mark_failed(1, &e.to_string());
                panic!("task 1: {e}")
            })
        });
        // Task 0 starts once task 1 has done a partition (so it cleared its marker).
        running.recv().unwrap();
        let t0 = driver::run_shared(&p, &s, &state, &mut (), share(0)).unwrap();
        let t1 = h.join().unwrap();
        assert_eq!(t0.0.rounds.len(), t1.0.rounds.len());
        t1
    });
    assert!(!state.failed_path(1).exists());
    let alone = tempfile_dir("dedup-peer-alone");
    let single = driver::run_all(&p, &s, &State::new(&alone).unwrap(), &mut ()).unwrap();
    assert_eq!(
        driver::finish(&p, &t1.1)
            .iter()
            .map(|r| r.representative)
            .collect::<Vec<_>>(),
        driver::finish(&p, &single.1)
            .iter()
            .map(|r| r.representative)
            .collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::remove_dir_all(&alone).unwrap();
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Sends once, after the first partition is done.
struct Signal(Option<std::sync::mpsc::Sender<()>>);

impl driver::Observer for Signal {
    fn part_done(&mut self, _round: u32, _part: u32, _parts: usize, _reused: bool) {
        if let Some(tx) = self.0.take() {
            tx.send(()).unwrap();
        }
    }
}
