//! Training metrics (`curate train`'s JSONL, schemas/train_metrics.json):
//! finding the files, reading them tolerantly, the loss-curve page.
//!
//! Found: `metrics.jsonl` (else any `*.jsonl`) in a stage folder whose
//! manifest says `train`, and any `*.jsonl` directly in the work directory
//! or one of its folders whose first record has `step` and `loss`. Reading
//! skips blank and unparsable lines (a run killed mid-line) and records
//! without a numeric `step` and `loss`; a step logged twice (a resumed run
//! logging again) keeps its last record.

use std::fmt::Write;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::error::ReportError;
use crate::html::{self, esc, num};
use crate::stage::Stage;
use crate::svg::{self, Line};

/// A training metrics file (JSONL, schemas/train_metrics.json).
#[derive(Debug, Clone)]
pub struct MetricsFile {
    /// The folder's name (or the file's stem, for a file directly in the run).
    pub name: String,
    pub path: PathBuf,
}

/// One logged optimiser step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    pub step: u64,
    pub time_ms: Option<f64>,
    pub loss: f64,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub clipped: Option<bool>,
    pub samples_per_s: Option<f64>,
    pub steps_per_s: Option<f64>,
    pub batch_size: Option<u64>,
    pub stage: Option<u64>,
    pub epoch: Option<u64>,
}

/// A metrics file's steps, in step order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    pub steps: Vec<Step>,
    /// Lines that were not a usable record.
    pub skipped: usize,
}

fn is_metrics_record(v: &serde_json::Value) -> bool {
    v.get("step").is_some_and(|s| s.as_f64().is_some())
        && v.get("loss").is_some_and(|s| s.as_f64().is_some())
}

/// Whether the first non-blank line of `path` is a metrics record.
fn looks_like_metrics(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    for line in std::io::BufReader::new(f).lines().take(20) {
        let Ok(line) = line else { return false };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        return serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|v| is_metrics_record(&v));
    }
    false
}

fn jsonl_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    out.sort();
    out
}

/// The metrics files of a work directory (see the module docs).
pub fn find_metrics(dir: &Path, stages: &[Stage]) -> Result<Vec<MetricsFile>, ReportError> {
    let mut out: Vec<MetricsFile> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut push = |name: String, path: PathBuf, out: &mut Vec<MetricsFile>| {
        if seen.insert(path.clone()) {
            out.push(MetricsFile { name, path });
        }
    };
    for s in stages.iter().filter(|s| !s.external && is_train(s)) {
        let main = s.dir.join(curate_io::train_metrics::FILE);
        if main.is_file() {
            push(s.name.clone(), main, &mut out);
        } else if let Some(p) = jsonl_files(&s.dir).into_iter().next() {
            push(s.name.clone(), p, &mut out);
        }
    }
    let mut folders = vec![dir.to_path_buf()];
    if !dir.join(curate_core::stage::MANIFEST).is_file() {
        let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| ReportError::io(dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        folders.extend(subs);
    }
    for folder in folders {
        let files: Vec<PathBuf> = jsonl_files(&folder)
            .into_iter()
            .filter(|p| looks_like_metrics(p))
            .collect();
        let folder_name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "train".into());
        for p in &files {
            let stem = p
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = if folder == dir {
                stem
            } else if files.len() == 1 {
                folder_name.clone()
            } else {
                format!("{folder_name}-{stem}")
            };
            push(name, p.clone(), &mut out);
        }
    }
    Ok(out)
}

/// Whether a stage folder holds a training run.
pub fn is_train(s: &Stage) -> bool {
    s.manifest.stage == "train" || s.schema() == "train_metrics"
}

/// Reads a metrics file.
pub fn read_metrics(path: &Path) -> Result<Metrics, ReportError> {
    let f = std::fs::File::open(path).map_err(|e| ReportError::io(path, e))?;
    let mut by_step: std::collections::BTreeMap<u64, Step> = Default::default();
    let mut skipped = 0;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| ReportError::io(path, e))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            skipped += 1;
            continue;
        };
        if !is_metrics_record(&v) {
            skipped += 1;
            continue;
        }
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
        let u = |k: &str| v.get(k).and_then(|x| x.as_u64());
        let step = Step {
            step: f("step").unwrap_or(0.0).max(0.0) as u64,
            time_ms: f("time"),
            loss: f("loss").unwrap_or(f64::NAN),
            lr: f("lr"),
            grad_norm: f("grad_norm"),
            clipped: v.get("clipped").and_then(|x| x.as_bool()),
            // Older writers log steps/s and the batch size only.
            samples_per_s: f("samples_per_s")
                .or_else(|| Some(f("steps_per_s")? * u("batch_size")? as f64)),
            steps_per_s: f("steps_per_s"),
            batch_size: u("batch_size"),
            stage: u("stage"),
            epoch: u("epoch"),
        };
        by_step.insert(step.step, step);
    }
    Ok(Metrics {
        steps: by_step.into_values().collect(),
        skipped,
    })
}

/// Exponential moving average (the smoothed loss line).
fn ema(values: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(values.len());
    let mut acc: Option<f64> = None;
    for &(x, y) in values {
        let a = match acc {
            None => y,
            Some(p) => p + alpha * (y - p),
        };
        acc = Some(a);
        out.push((x, a));
    }
    out
}

/// The body of a training page.
pub fn body(file: &MetricsFile, m: &Metrics, chart_id: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<p class="note">From <code>{}</code>: {} logged steps{}.</p>"#,
        esc(&file.path.display().to_string()),
        html::thousands(m.steps.len() as u64),
        if m.skipped > 0 {
            format!(", {} lines skipped (not a metrics record)", m.skipped)
        } else {
            String::new()
        }
    );
    if m.steps.is_empty() {
        out.push_str("<p>No steps logged yet.</p>");
        return out;
    }
    let loss: Vec<(f64, f64)> = m
        .steps
        .iter()
        .filter(|s| s.loss.is_finite())
        .map(|s| (s.step as f64, s.loss))
        .collect();
    let first = m.steps.first().expect("non-empty");
    let last = m.steps.last().expect("non-empty");
    let min = m
        .steps
        .iter()
        .filter(|s| s.loss.is_finite())
        .min_by(|a, b| a.loss.total_cmp(&b.loss));
    let span = match (first.time_ms, last.time_ms) {
        (Some(a), Some(b)) if b >= a => html::duration((b - a) / 1000.0),
        _ => "–".into(),
    };
    let samples: u64 = m.steps.iter().filter_map(|s| s.batch_size).sum();
    out.push_str(&html::facts(&[
        ("steps", html::thousands(last.step)),
        ("last loss", num(last.loss)),
        (
            "lowest loss",
            min.map(|s| format!("{} (step {})", num(s.loss), s.step))
                .unwrap_or_else(|| "–".into()),
        ),
        ("first loss", num(first.loss)),
        ("samples seen (logged steps)", html::thousands(samples)),
        ("time", span),
    ]));
    let smooth_alpha = (10.0 / loss.len().max(10) as f64).clamp(0.01, 0.3);
    let mut lines = vec![Line {
        name: "loss".into(),
        class: "s0",
        points: loss.clone(),
    }];
    if loss.len() >= 10 {
        lines.push(Line {
            name: "smoothed (EMA)".into(),
            class: "s1",
            points: ema(&loss, smooth_alpha),
        });
    }
    // A marker where the latent stage changes (256 → 512).
    let mut marks = Vec::new();
    for w in m.steps.windows(2) {
        if w[0].stage.is_some() && w[1].stage.is_some() && w[0].stage != w[1].stage {
            marks.push(svg::Marker {
                x: w[1].step as f64,
                label: format!("stage {}", w[1].stage.unwrap_or(0)),
            });
        }
    }
    let table_rows = sample_rows(m, 40);
    let numbers = html::table(
        "metrics",
        &[
            "step",
            "loss",
            "lr",
            "grad norm",
            "samples/s",
            "stage",
            "epoch",
        ],
        &table_rows,
    );
    out.push_str("<h2>Loss</h2>");
    out.push_str(&html::figure(
        &svg::lines(
            &format!("{chart_id}-loss"),
            "Training loss (I-CFM MSE)",
            "step",
            "loss",
            &lines,
            &marks,
        ),
        "Loss of each logged step's batch, and its exponential moving average.",
        &numbers,
    ));
    let lr: Vec<(f64, f64)> = m
        .steps
        .iter()
        .filter_map(|s| s.lr.map(|v| (s.step as f64, v)))
        .collect();
    if !lr.is_empty() {
        out.push_str(&html::figure(
            &svg::lines(
                &format!("{chart_id}-lr"),
                "Learning rate",
                "step",
                "learning rate",
                &[Line {
                    name: "lr".into(),
                    class: "s2",
                    points: lr,
                }],
                &[],
            ),
            "Learning rate after warmup and schedule.",
            "<p>In the loss table.</p>",
        ));
    }
    let tput: Vec<(f64, f64)> = m
        .steps
        .iter()
        .filter_map(|s| s.samples_per_s.map(|v| (s.step as f64, v)))
        .collect();
    if !tput.is_empty() {
        out.push_str(&html::figure(
            &svg::lines(
                &format!("{chart_id}-tput"),
                "Throughput",
                "step",
                "samples/s",
                &[Line {
                    name: "samples/s".into(),
                    class: "s0",
                    points: tput,
                }],
                &[],
            ),
            "Training samples per second, averaged between logged rows.",
            "<p>In the loss table.</p>",
        ));
    }
    out
}

/// About `n` evenly spaced steps (first and last included) as table rows.
fn sample_rows(m: &Metrics, n: usize) -> Vec<Vec<String>> {
    let len = m.steps.len();
    let stride = len.div_ceil(n.max(1)).max(1);
    let mut idx: Vec<usize> = (0..len).step_by(stride).collect();
    if idx.last() != Some(&(len - 1)) {
        idx.push(len - 1);
    }
    idx.into_iter()
        .map(|i| {
            let s = &m.steps[i];
            vec![
                html::thousands(s.step),
                num(s.loss),
                html::opt(s.lr),
                html::opt(s.grad_norm),
                html::opt(s.samples_per_s),
                s.stage.map(|v| v.to_string()).unwrap_or_else(|| "–".into()),
                s.epoch.map(|v| v.to_string()).unwrap_or_else(|| "–".into()),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, loss: f64) -> String {
        serde_json::json!({
            "step": step, "time": 1_700_000_000_000u64 + step * 500, "loss": loss,
            "lr": 1e-4 * (step as f64 / 100.0).min(1.0), "grad_norm": 0.5, "clipped": false,
            "steps_per_s": 2.0, "samples_per_s": 64.0, "batch_size": 32,
            "stage": if step <= 60 { 256 } else { 512 }, "bucket_h": 256, "bucket_w": 256, "epoch": step / 50
        })
        .to_string()
    }

    #[test]
    fn reads_tolerantly_and_finds_files_by_manifest_or_by_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        // A train stage folder with a manifest and metrics.jsonl.
        let train = work.join("train");
        std::fs::create_dir_all(&train).unwrap();
        let spec = curate_core::stage::StageSpec {
            stage: "train".into(),
            schema: "train_metrics".into(),
            config: serde_json::json!({}),
            inputs: curate_core::stage::Inputs {
                kind: "stage".into(),
                location: work.join("latents").display().to_string(),
                items: 0,
                fingerprint: "x".into(),
                shards: vec![],
            },
            num_shards: 0,
        };
        curate_core::stage::StageDir::open(&train, &spec, false).unwrap();
        let mut text: String = (1..=100)
            .map(|s| record(s, 1.0 / s as f64) + "\n")
            .collect();
        text.push('\n');
        text.push_str("{\"step\": 50, \"loss\": 0.5}\n"); // logged again after a resume
        text.push_str("not json\n");
        text.push_str("{\"note\": \"no step\"}\n");
        text.push_str("{\"step\": 101, \"loss\""); // killed mid-line
        std::fs::write(train.join("metrics.jsonl"), &text).unwrap();
        // A loose metrics file in another folder, without a manifest, and a JSONL that is not metrics.
        let other = work.join("smoke");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(
            other.join("log.jsonl"),
            record(1, 2.0) + "\n" + &record(2, 1.5),
        )
        .unwrap();
        std::fs::write(other.join("events.jsonl"), "{\"event\": \"start\"}\n").unwrap();

        let stages: Vec<Stage> = vec![Stage::load(&train, false).unwrap().unwrap()];
        let found = find_metrics(work, &stages).unwrap();
        let names: Vec<(&str, &Path)> = found
            .iter()
            .map(|f| (f.name.as_str(), f.path.as_path()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("train", train.join("metrics.jsonl").as_path()),
                ("smoke", other.join("log.jsonl").as_path())
            ]
        );

        let m = read_metrics(&train.join("metrics.jsonl")).unwrap();
        assert_eq!(m.steps.len(), 100);
        assert_eq!(m.skipped, 3);
        assert_eq!(m.steps[49].loss, 0.5, "the later record of step 50 wins");
        assert_eq!(m.steps[49].lr, None);
        assert_eq!(m.steps[99].stage, Some(512));

        let page = body(&found[0], &m, "t");
        assert!(page.contains("Training loss"), "{page}");
        assert!(page.contains("stage 512"), "the stage change is marked");
        assert!(page.contains("smoothed (EMA)"));
        assert!(page.contains("3 lines skipped"));
        let svgs = page.matches("<svg").count();
        assert_eq!(svgs, 3, "loss, lr and throughput");
    }
}
