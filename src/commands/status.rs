//! `curate status DIR`: per-stage progress from the manifests and journals.
//! Reads only JSON (and, with --verify, parquet footers), so it is cheap on
//! a shared file system while array tasks are running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use curate_core::stage::{StageDir, MANIFEST};

use crate::cli::StatusArgs;

pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let dirs = stage_dirs(&args.dir)?;
    if dirs.is_empty() {
        bail!(
            "{} holds no stage directories (none with a {MANIFEST})",
            args.dir.display()
        );
    }
    let mut incomplete = 0;
    for dir in dirs {
        let (manifest, journal) = StageDir::inspect(&dir)?
            .with_context(|| format!("{}: manifest vanished", dir.display()))?;
        let done: std::collections::HashSet<u32> = journal.iter().map(|r| r.shard).collect();
        let records: u64 = journal.iter().map(|r| r.records).sum();
        let failures: u64 = journal.iter().map(|r| r.failures).sum();
        let secs: f64 = journal.iter().map(|r| r.duration_s).sum();
        let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &journal {
            for (k, v) in &r.reasons {
                *reasons.entry(k.as_str()).or_default() += v;
            }
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let state = if done.len() as u32 == manifest.num_shards {
            "complete".to_string()
        } else {
            incomplete += 1;
            "incomplete".to_string()
        };
        println!(
            "{name}: stage {} ({} v{}), {}/{} shards {state}, {records} records, {failures} failed{}, {secs:.1} s of work{}",
            manifest.stage,
            manifest.schema.name,
            manifest.schema.version,
            done.len(),
            manifest.num_shards,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    reasons.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
                )
            },
            if secs > 0.0 {
                format!(", {:.1} records/s", records as f64 / secs)
            } else {
                String::new()
            }
        );
        let missing: Vec<u32> = (0..manifest.num_shards)
            .filter(|s| !done.contains(s))
            .collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(20).map(u32::to_string).collect();
            println!(
                "  missing shards: {}{}",
                shown.join(", "),
                if missing.len() > 20 {
                    format!(" … ({} in all)", missing.len())
                } else {
                    String::new()
                }
            );
            if let Some(hint) = dir
                .parent()
                .and_then(|work| super::slurm::resubmit_hint(work, &name, &missing))
            {
                println!("  resubmit the tasks that own them: {hint}");
            }
        }
        if args.verify {
            let table = curate_core::schema::get(&manifest.schema.name)?;
            for r in &journal {
                if let Err(e) = curate_io::verify_shard(&dir.join(&r.file), table, Some(r.records))
                {
                    incomplete += 1;
                    println!("  damaged: {e}");
                }
            }
        }
    }
    if incomplete > 0 {
        tracing::debug!("{incomplete} stages incomplete or damaged");
    }
    Ok(())
}

/// `dir` itself when it is a stage directory, else its subdirectories that are.
fn stage_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.join(MANIFEST).is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.join(MANIFEST).is_file() {
            let created = StageDir::inspect(&path)?
                .map(|(m, _)| m.created_unix)
                .unwrap_or(0);
            out.push((created, path));
        }
    }
    // Pipeline order is creation order.
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}
