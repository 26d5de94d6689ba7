//! The Slurm executor: each stage becomes an sbatch array job rendered from
//! `pipelines/slurm/stage.sbatch`, chained with `--dependency=afterok`.
//! Tasks pick their shards from the array variables, so a requeued or
//! resubmitted task continues where the last attempt stopped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

const TEMPLATE: &str = include_str!("../../pipelines/slurm/stage.sbatch");

/// Per-stage resources (`[stage.slurm]`, defaults from `[pipeline.slurm]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Array tasks.
    pub tasks: Option<u32>,
    pub cpus: Option<u32>,
    pub mem: Option<String>,
    pub time: Option<String>,
    pub gpus: Option<u32>,
    pub partition: Option<String>,
    /// More `#SBATCH` lines, verbatim.
    #[serde(default)]
    pub extra: Vec<String>,
}

impl Resources {
    /// `self` where set, else `defaults`.
    pub fn or(&self, defaults: &Resources) -> Resources {
        Resources {
            tasks: self.tasks.or(defaults.tasks),
            cpus: self.cpus.or(defaults.cpus),
            mem: self.mem.clone().or(defaults.mem.clone()),
            time: self.time.clone().or(defaults.time.clone()),
            gpus: self.gpus.or(defaults.gpus),
            partition: self.partition.clone().or(defaults.partition.clone()),
            extra: if self.extra.is_empty() {
                defaults.extra.clone()
            } else {
                self.extra.clone()
            },
        }
    }
}

/// What was submitted for a stage: `<work>/slurm/<name>.json`, read by `curate status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    pub job_id: String,
    pub tasks: u32,
    pub script: PathBuf,
}

pub fn slurm_dir(work: &Path) -> PathBuf {
    work.join("slurm")
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Renders the stage's script and submits it; returns the job id.
pub fn submit(
    name: &str,
    argv: &[String],
    res: &Resources,
    after: Option<&str>,
    work: &Path,
) -> anyhow::Result<Submission> {
    let dir = slurm_dir(work);
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let exe = std::env::current_exe().context("locating the curate binary")?;
    let tasks = res.tasks.unwrap_or(1).max(1);
    let mut command = vec![quote(&exe.display().to_string())];
    command.extend(argv[1..].iter().map(|a| quote(a)));
    // The split is explicit, so a resubmission of some task ids
    // (`sbatch --array=1,3`) still gives each its original share.
    command.push(format!(
        "--task-index \"$SLURM_ARRAY_TASK_ID\" --num-tasks {tasks}"
    ));
    let mut extra: Vec<String> = Vec::new();
    if let Some(g) = res.gpus.filter(|g| *g > 0) {
        extra.push(format!("#SBATCH --gres=gpu:{g}"));
    }
    if let Some(p) = &res.partition {
        extra.push(format!("#SBATCH --partition={p}"));
    }
    extra.extend(res.extra.iter().map(|l| format!("#SBATCH {l}")));
    let script = TEMPLATE
        .replace("{{job_name}}", &format!("curate-{name}"))
        .replace("{{name}}", name)
        .replace("{{array}}", &format!("0-{}", tasks - 1))
        .replace("{{cpus}}", &res.cpus.unwrap_or(1).to_string())
        .replace("{{mem}}", res.mem.as_deref().unwrap_or("4G"))
        .replace("{{time}}", res.time.as_deref().unwrap_or("24:00:00"))
        .replace(
            "{{log_dir}}",
            &logs.display().to_string().replace('%', "%%"),
        )
        .replace("{{extra}}", &extra.join("\n"))
        .replace("{{command}}", &command.join(" "));
    let path = dir.join(format!("{name}.sbatch"));
    std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    let mut sbatch = Command::new("sbatch");
    sbatch.arg("--parsable");
    if let Some(dep) = after {
        sbatch.arg(format!("--dependency=afterok:{dep}"));
    }
    let out = sbatch
        .arg(&path)
        .output()
        .context("running sbatch (is Slurm installed and SLURM_CONF set?)")?;
    if !out.status.success() {
        bail!(
            "sbatch {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let job_id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    if job_id.is_empty() {
        bail!("sbatch {} printed no job id", path.display());
    }
    let sub = Submission {
        job_id,
        tasks,
        script: path,
    };
    let json = dir.join(format!("{name}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&sub)?)
        .with_context(|| format!("writing {}", json.display()))?;
    Ok(sub)
}

/// Waits until none of `jobs` is queued or running. Jobs left pending on a
/// dependency that can no longer be met (an upstream stage failed) are
/// cancelled. Returns after `timeout` at the latest.
pub fn wait(jobs: &[String], timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-o", "%i %T %r", "-j", &jobs.join(",")])
            .output()
            .context("running squeue")?;
        if !out.status.success() {
            // A busy or restarting controller: ask again.
            if started.elapsed() > timeout {
                bail!(
                    "squeue kept failing: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return Ok(());
        }
        // An upstream stage failed: its dependants (and theirs) can never start.
        let stuck = lines.iter().any(|l| l.contains("DependencyNeverSatisfied"));
        let running = lines
            .iter()
            .any(|l| l.contains(" RUNNING ") || l.contains(" COMPLETING "));
        if stuck && !running {
            let _ = Command::new("scancel").args(jobs).status();
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("jobs {} still queued after {:?}", jobs.join(","), timeout);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The `sbatch` command that reruns the tasks owning `missing` shards.
pub fn resubmit_hint(work: &Path, stage: &str, missing: &[u32]) -> Option<String> {
    let json = std::fs::read(slurm_dir(work).join(format!("{stage}.json"))).ok()?;
    let sub: Submission = serde_json::from_slice(&json).ok()?;
    let mut tasks: Vec<u32> = missing.iter().map(|s| s % sub.tasks).collect();
    tasks.sort();
    tasks.dedup();
    let list: Vec<String> = tasks.iter().map(u32::to_string).collect();
    Some(format!(
        "sbatch --array={} {}",
        list.join(","),
        sub.script.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("/a/b-c.parquet"), "/a/b-c.parquet");
        assert_eq!(quote("it's here"), r"'it'\''s here'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn resources_fall_back_to_defaults() {
        let d = Resources {
            tasks: Some(4),
            mem: Some("8G".into()),
            ..Default::default()
        };
        let s = Resources {
            tasks: Some(2),
            ..Default::default()
        }
        .or(&d);
        assert_eq!((s.tasks, s.mem.as_deref()), (Some(2), Some("8G")));
    }
}
