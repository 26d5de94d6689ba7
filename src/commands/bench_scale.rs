//! `curate bench scale --rows N`: every table synthesised at N rows in the
//! real schemas (small real JPEGs, 768-d f16 embeddings with planted
//! near-copies, three caption tasks, scores, tiny latents, T5 outputs of a
//! tiny width), each a complete
//! stage folder, then the machinery that is not a model run over them at
//! that size, each part in a child process of this binary: `curate dedup`
//! (k-means partitions to convergence, killed after round 1 and resumed),
//! the encode-latents selection, the train loader's epoch plan and 1,000
//! batches, `curate report`, `curate status`. Prints time and peak RSS per
//! part; `--results FILE` collects runs at several N and prints each part's
//! time against linear from the smallest N.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

mod synth;

use crate::cli::BenchArgs;
use curate_stage::progress::peak_rss_bytes;
use synth::{key, synthesise};

/// Shapes of the synthesised tables.
const CAPTION_TASKS: [&str; 3] = ["caption", "detailed", "more-detailed"];
const LATENT_SHAPE: [usize; 3] = [16, 4, 4];
const BATCH: usize = 64;
const STEPS: usize = 1000;
const T5_WIDTH: usize = 8;

/// One measured part.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Figure {
    part: String,
    rows: usize,
    shards: usize,
    seconds: f64,
    peak_rss: u64,
    /// What else the part measured (recall, rounds, resume latency, …).
    #[serde(default)]
    extra: serde_json::Map<String, serde_json::Value>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(part) = &args.part {
        return child(args, part);
    }
    let n = args.rows;
    let shards = args.shards.unwrap_or((n / 1000).max(1)).clamp(1, n.max(1));
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("curate-scale-{n}")));
    let logs = work.with_extension("logs");
    std::fs::create_dir_all(&logs)?;
    let mut figures = Vec::new();

    let t = Instant::now();
    // A complete earlier synthesis at this size is reused (its last file is the planted pairs).
    let pairs_file = work.join(format!("planted-{n}-{shards}-{}.json", args.dim));
    let planted: Vec<(u32, u32)> = match std::fs::read(&pairs_file) {
        Ok(b) => serde_json::from_slice(&b)?,
        Err(_) => {
            let p = synthesise(&work, n, shards, args.dim)?;
            std::fs::write(&pairs_file, serde_json::to_vec(&p)?)?;
            p
        }
    };
    let synth = t.elapsed().as_secs_f64();
    println!(
        "synthesised {n} rows in {shards} shards under {} in {synth:.1} s ({} planted near-copy pairs)",
        work.display(),
        planted.len()
    );
    figures.push(Figure {
        part: "synthesise".into(),
        rows: n,
        shards,
        seconds: synth,
        peak_rss: peak_rss_bytes().unwrap_or(0),
        extra: Default::default(),
    });

    let partition_size = if args.partition_size >= n {
        50_000
    } else {
        args.partition_size
    };
    let dedup_dir = work.join("dedup");
    if dedup_dir.exists() {
        std::fs::remove_dir_all(&dedup_dir)?;
    }
    let dedup_args: Vec<String> = vec![
        "dedup".into(),
        work.join("embed").display().to_string(),
        "-o".into(),
        dedup_dir.display().to_string(),
        "--partition".into(),
        "kmeans".into(),
        "--partition-size".into(),
        partition_size.to_string(),
        "--max-rounds".into(),
        args.max_rounds.to_string(),
    ];
    // First run: killed as soon as round 1 is merged.
    let first = spawn_part(
        &exec_args(&dedup_args),
        &logs.join("dedup-1.log"),
        Some("round 1 complete"),
    )?;
    // Resumed run: to convergence (or --max-rounds).
    let second = spawn_part(&exec_args(&dedup_args), &logs.join("dedup-2.log"), None)?;
    if !second.ok {
        bail!("dedup failed; see {}", logs.join("dedup-2.log").display());
    }
    let resume_s = second
        .lines
        .iter()
        .find(|(_, l)| l.contains("already done") || l.contains("round 2"))
        .map(|(t, _)| *t);
    let mut round_at: HashMap<u32, f64> = HashMap::new();
    for (off, run) in [(0.0, &first), (first.seconds, &second)] {
        for (t, l) in &run.lines {
            if let Some(r) = round_complete(l) {
                round_at.entry(r).or_insert(off + t);
            }
        }
    }
    let recall = recall_by_round(&work, &dedup_dir, &planted)?;
    let mut extra = serde_json::Map::new();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dedup_dir.join("summary.json"))?)?;
    extra.insert("converged".into(), summary["converged"].clone());
    extra.insert("rounds".into(), (recall.len() as u64).into());
    extra.insert("partition_size".into(), (partition_size as u64).into());
    extra.insert("resume_first_progress_s".into(), resume_s.into());
    extra.insert("killed_after_round1_s".into(), first.seconds.into());
    let final_recall = recall.last().map(|r| r.1).unwrap_or(0.0);
    extra.insert("recall".into(), final_recall.into());
    let same = recall.last().map(|r| r.2).unwrap_or(0.0);
    extra.insert("same_cluster".into(), same.into());
    let at99 = recall
        .iter()
        .find(|(_, r, _)| *r >= 0.99)
        .map(|(round, _, _)| (*round, round_at.get(round).copied()));
    extra.insert("round_reaching_99".into(), at99.map(|a| a.0).into());
    extra.insert("seconds_to_99".into(), at99.and_then(|a| a.1).into());
    for (round, r, same) in &recall {
        println!(
            "  dedup round {round}: planted pairs found (same cluster or not both kept) {:.3}%, in the same cluster {:.3}%, after {:.1} s",
            100.0 * r,
            100.0 * same,
            round_at.get(round).copied().unwrap_or(f64::NAN)
        );
    }
    figures.push(Figure {
        part: "dedup".into(),
        rows: n,
        shards,
        seconds: first.seconds + second.seconds,
        peak_rss: first.peak_rss.max(second.peak_rss),
        extra,
    });

    let self_args = |part: &str| -> Vec<String> {
        vec![
            "--progress".into(),
            "log".into(),
            "bench".into(),
            "scale".into(),
            "--part".into(),
            part.into(),
            "--work".into(),
            work.display().to_string(),
        ]
    };
    let report: Vec<String> = vec!["report".into(), work.display().to_string()];
    let status: Vec<String> = vec!["status".into(), work.display().to_string()];
    let parts = [
        ("select", self_args("select")),
        ("loader", self_args("loader")),
        ("report", exec_args(&report)),
        ("status", exec_args(&status)),
    ];
    for (part, a) in parts {
        let r = spawn_part(&a, &logs.join(format!("{part}.log")), None)?;
        if !r.ok {
            bail!(
                "{part} failed; see {}",
                logs.join(format!("{part}.log")).display()
            );
        }
        figures.push(Figure {
            part: part.into(),
            rows: n,
            shards,
            seconds: r.seconds,
            peak_rss: r.peak_rss,
            extra: r.result.unwrap_or_default(),
        });
    }
    print_table(&figures);
    if let Some(file) = &args.results {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .with_context(|| file.display().to_string())?;
        for fig in &figures {
            writeln!(f, "{}", serde_json::to_string(fig)?)?;
        }
        drop(f);
        let all: Vec<Figure> = std::fs::read_to_string(file)?
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        print_linearity(&all);
    }
    println!("logs of each part in {}", logs.display());
    Ok(())
}

/// `… dedup: round 3 complete: …` → 3.
fn round_complete(line: &str) -> Option<u32> {
    let rest = line.split("dedup: round ").nth(1)?;
    let (num, rest) = rest.split_once(' ')?;
    rest.starts_with("complete")
        .then(|| num.parse().ok())
        .flatten()
}

/// `curate bench scale --part exec -- ARGS`: ARGS run as `curate ARGS` in the child.
fn exec_args(cmd: &[String]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--progress",
        "log",
        "bench",
        "scale",
        "--part",
        "exec",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(cmd.iter().cloned());
    v
}

struct PartRun {
    ok: bool,
    seconds: f64,
    peak_rss: u64,
    /// stderr lines with the seconds since the start.
    lines: Vec<(f64, String)>,
    result: Option<serde_json::Map<String, serde_json::Value>>,
}

/// VmHWM of a running process (its peak RSS so far).
fn hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Runs this binary with `args`, logging stderr to `log`; kills it when a
/// stderr line contains `kill_on`. Peak RSS: what the child reports at its
/// end, else (killed) its VmHWM polled every 50 ms.
fn spawn_part(args: &[String], log: &Path, kill_on: Option<&str>) -> anyhow::Result<PartRun> {
    let exe = std::env::current_exe()?;
    let t = Instant::now();
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let lines = Arc::new(Mutex::new(Vec::<(f64, String)>::new()));
    let kill = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut logf = std::fs::File::create(log)?;
    let err = child.stderr.take().expect("piped");
    let reader = {
        let (lines, kill, kill_on) = (lines.clone(), kill.clone(), kill_on.map(str::to_string));
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let s = t.elapsed().as_secs_f64();
                let _ = writeln!(logf, "[{s:8.2}] {line}");
                if kill_on.as_ref().is_some_and(|k| line.contains(k.as_str())) {
                    kill.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                lines.lock().unwrap().push((s, line));
            }
        })
    };
    let out = child.stdout.take().expect("piped");
    let stdout = std::thread::spawn(move || {
        let mut v = Vec::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            v.push(line);
        }
        v
    });
    let mut polled = 0u64;
    let mut killed = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        polled = polled.max(hwm(pid).unwrap_or(0));
        if !killed && kill.load(std::sync::atomic::Ordering::SeqCst) {
            child.kill()?;
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let seconds = t.elapsed().as_secs_f64();
    let _ = reader.join();
    let out = stdout.join().unwrap_or_default();
    let mut peak = polled;
    let mut result = None;
    for l in &out {
        if let Some(v) = l.strip_prefix("SCALE_PEAK_RSS ") {
            peak = peak.max(v.trim().parse().unwrap_or(0));
        } else if let Some(v) = l.strip_prefix("SCALE_RESULT ") {
            result = serde_json::from_str(v).ok();
        }
    }
    let lines = std::mem::take(&mut *lines.lock().unwrap());
    Ok(PartRun {
        ok: status.success() || killed,
        seconds,
        peak_rss: peak,
        lines,
        result,
    })
}

/// The hidden child modes: `exec` (a curate command), `select`, `loader`.
fn child(args: &BenchArgs, part: &str) -> anyhow::Result<()> {
    let mut result = serde_json::Map::new();
    let work = || args.work.clone().context("--work is needed");
    match part {
        "exec" => {
            let cli = crate::cli::Cli::try_parse_from(
                std::iter::once("curate".to_string()).chain(args.exec.iter().cloned()),
            )?;
            super::dispatch(cli)?;
        }
        "select" => {
            let w = work()?;
            use curate_stages::encode_latents::select::{select, SelectSettings};
            let s = select(&SelectSettings {
                keep: Some(w.join("dedup")),
                scores: Some(w.join("score")),
                captions: vec![w.join("caption")],
                caption_mix: "caption=1,detailed=1,more-detailed=1".into(),
                no_tag: false,
                require_caption: true,
                seed: 0,
            })?;
            let selected = s.keys.as_ref().map_or(0, |k| k.len());
            eprintln!("selection: {}", s.summary);
            result.insert("selected".into(), (selected as u64).into());
        }
        "loader" => {
            let w = work()?;
            use curate_gen::train::data::{LatentIndex, Loader};
            let before = current_rss();
            let t = Instant::now();
            let index = LatentIndex::from_stages(&[w.join("encode-latents")])?;
            let plan = index.plan(0, 0, BATCH);
            let plan_s = t.elapsed().as_secs_f64();
            let rows = index.rows();
            let grown = current_rss().saturating_sub(before);
            let mut loader = Loader::new(index, LATENT_SHAPE[0], &candle_core::Device::Cpu);
            let t = Instant::now();
            let steps = STEPS.min(plan.len());
            let mut seen = 0usize;
            for k in 0..steps {
                seen += loader.load(&plan, k)?.keys.len();
            }
            let load_s = t.elapsed().as_secs_f64();
            eprintln!(
                "loader: {rows} rows, {} batches planned in {plan_s:.2} s (+{} bytes RSS, {:.0} bytes/row); {steps} batches ({seen} rows) loaded in {load_s:.2} s",
                plan.len(),
                grown,
                grown as f64 / rows.max(1) as f64
            );
            result.insert("plan_s".into(), plan_s.into());
            result.insert(
                "plan_bytes_per_row".into(),
                (grown as f64 / rows.max(1) as f64).into(),
            );
            result.insert("steps".into(), (steps as u64).into());
            result.insert("load_s".into(), load_s.into());
        }
        other => bail!("bench scale --part {other}: expected exec, select or loader"),
    }
    println!("SCALE_RESULT {}", serde_json::Value::Object(result));
    println!("SCALE_PEAK_RSS {}", peak_rss_bytes().unwrap_or(0));
    Ok(())
}

/// VmRSS now.
fn current_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .unwrap_or(0)
        * 1024
}

/// Per round, the fraction of planted pairs found (same cluster, or one of
/// them removed) and of those whose members share a representative, after
/// it (merges followed through the state's partition results); the last
/// same-cluster share is checked against the final clusters table.
fn recall_by_round(
    _work: &Path,
    dedup: &Path,
    planted: &[(u32, u32)],
) -> anyhow::Result<Vec<(u32, f64, f64)>> {
    use curate_dedup::driver::{PartResult, Plan, State};
    // The state's indices are the order of ok embeddings, which is row order here.
    let state = State::new(&dedup.join("state"))?;
    let keys: Vec<String> = state.read(&state.keys_path())?.context("state/keys.json")?;
    let mut parent: Vec<u32> = (0..keys.len() as u32).collect();
    fn find(p: &mut [u32], mut i: u32) -> u32 {
        while p[i as usize] != i {
            p[i as usize] = p[p[i as usize] as usize];
            i = p[i as usize];
        }
        i
    }
    let mut out = Vec::new();
    for round in 1.. {
        let Some(plan) = state.read::<Plan>(&state.plan_path(round))? else {
            break;
        };
        if !state.merged_path(round).is_file() {
            break;
        }
        for p in 0..plan.parts.len() as u32 {
            let r: PartResult = state
                .read(&state.part_path(round, p))?
                .context("part result")?;
            for (&m, &into) in r.members.iter().zip(&r.merged_into) {
                if into >= 0 {
                    let (a, b) = (find(&mut parent, m), find(&mut parent, into as u32));
                    parent[a as usize] = b;
                }
            }
        }
        // Found: same cluster, or not both kept (issue #23's measure);
        // and the stricter same-cluster share.
        let (mut found, mut same) = (0usize, 0usize);
        for &(a, b) in planted {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            same += (ra == rb) as usize;
            found += (ra == rb || ra != a || rb != b) as usize;
        }
        let m = planted.len().max(1) as f64;
        out.push((round, found as f64 / m, same as f64 / m));
    }
    // Cross-check with the written table.
    let rows = curate_io::dedup_clusters::read(&dedup.join("part-00000.parquet"))?;
    let rep: HashMap<&str, &str> = rows
        .iter()
        .map(|r| {
            (
                r.key.as_str(),
                r.representative.as_deref().unwrap_or(r.key.as_str()),
            )
        })
        .collect();
    let found = planted
        .iter()
        .filter(|&&(a, b)| rep.get(key(a as usize).as_str()) == rep.get(key(b as usize).as_str()))
        .count();
    let table = found as f64 / planted.len().max(1) as f64;
    if let Some(last) = out.last() {
        if (last.2 - table).abs() > 1e-9 {
            eprintln!(
                "warning: same-cluster share from the state {:.5} ≠ from the table {table:.5}",
                last.2
            );
        }
    }
    Ok(out)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn print_table(figs: &[Figure]) {
    println!(
        "{:<11} {:>9} {:>7} {:>9} {:>10} {:>10} {:>12}  extra",
        "part", "N", "shards", "seconds", "peak MiB", "µs/row", "peak B/row"
    );
    for f in figs {
        println!(
            "{:<11} {:>9} {:>7} {:>9.2} {:>10.0} {:>10.2} {:>12.0}  {}",
            f.part,
            f.rows,
            f.shards,
            f.seconds,
            mib(f.peak_rss),
            f.seconds * 1e6 / f.rows.max(1) as f64,
            f.peak_rss as f64 / f.rows.max(1) as f64,
            serde_json::Value::Object(f.extra.clone())
        );
    }
}

/// Each part's time at every N against linear from the smallest N.
fn print_linearity(all: &[Figure]) {
    let mut parts: Vec<&str> = all.iter().map(|f| f.part.as_str()).collect();
    parts.dedup();
    let mut seen = std::collections::BTreeSet::new();
    parts.retain(|p| seen.insert(*p));
    println!("time / linear from the smallest N (target ≤ 1.3):");
    for p in parts {
        // The latest run at each N.
        let mut by_n: std::collections::BTreeMap<usize, &Figure> = Default::default();
        for f in all.iter().filter(|f| f.part == p) {
            by_n.insert(f.rows, f);
        }
        let Some((&n0, base)) = by_n.iter().next() else {
            continue;
        };
        let cells: Vec<String> = by_n
            .iter()
            .map(|(&n, f)| {
                let linear = base.seconds * n as f64 / n0 as f64;
                format!(
                    "N={n}: {:.1} s ({:.2}×)",
                    f.seconds,
                    f.seconds / linear.max(1e-9)
                )
            })
            .collect();
        println!("  {p:<11} {}", cells.join(", "));
    }
}
