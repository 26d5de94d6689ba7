//! `curate run PIPELINE.toml`: the listed stages in order, in-process.
//!
//! A pipeline file is the same settings as the command line, written down:
//! each `[[stage]]` table becomes that subcommand's flags (`key = value` →
//! `--key value`, `true` → `--key`, arrays → repeated), so a stage behaves
//! identically from a pipeline and from the shell. Relative paths in the
//! file (`input`, and values starting with `./` or `../`) are relative to
//! the file's folder; `"@name"` (as `input` or any flag's value) is the output of stage `name`.
//! Stages whose shards are all complete are skipped shard by shard, so a
//! rerun after a crash continues where it stopped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;

use crate::cli::{Cli, Command, Executor, RunArgs};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    pipeline: PipelineHeader,
    #[serde(default)]
    stage: Vec<StageTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineHeader {
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// Relative to the pipeline file's folder.
    work_dir: PathBuf,
    /// Serve this folder on 127.0.0.1 while the pipeline runs (the demo's
    /// stand-in for Flickr); `fetch` stages get its address as --base-url.
    #[serde(default)]
    serve: Option<PathBuf>,
    /// Default Slurm resources of every stage.
    #[serde(default)]
    slurm: super::slurm::Resources,
}

#[derive(Debug, Deserialize)]
struct StageTable {
    /// The subcommand (`ingest`, `fetch`, …).
    run: String,
    /// Output folder name under the work directory [default: `run`].
    name: Option<String>,
    /// The stage's positional input (one path, or a list for stages that take several).
    #[serde(default, deserialize_with = "one_or_many")]
    input: Vec<String>,
    /// Slurm resources of this stage (`[stage.slurm]`).
    #[serde(default)]
    slurm: super::slurm::Resources,
    /// Everything else: the subcommand's flags.
    #[serde(flatten)]
    flags: toml::Table,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.pipeline)
        .with_context(|| format!("reading pipeline {}", args.pipeline.display()))?;
    let file: PipelineFile = toml::from_str(&text)
        .with_context(|| format!("pipeline {} is not valid", args.pipeline.display()))?;
    let base = args
        .pipeline
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    // Absolute, so Slurm tasks (and logs, and status hints) see the same paths.
    let base = normalize(&std::path::absolute(&base).context("resolving the pipeline's folder")?);
    let work = match &args.work_dir {
        Some(w) => normalize(&std::path::absolute(w).context("resolving --work-dir")?),
        None => normalize(&base.join(&file.pipeline.work_dir)),
    };
    if !args.dry_run {
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    }
    if file.stage.is_empty() {
        bail!("pipeline {} lists no [[stage]]", args.pipeline.display());
    }
    check_stage_names(&file.stage)
        .map_err(|e| anyhow::anyhow!("pipeline {}: {e}", args.pipeline.display()))?;
    let names: Vec<String> = file
        .stage
        .iter()
        .map(|s| s.name.clone().unwrap_or_else(|| s.run.clone()))
        .collect();
    for o in &args.only {
        if !names.contains(o) {
            bail!("--only {o}: no such stage in {}", args.pipeline.display());
        }
    }

    let server = match &file.pipeline.serve {
        Some(_) if args.dry_run => None,
        Some(dir) => {
            let dir = normalize(&base.join(dir));
            let server = curate_fetch::testing::TestServer::start(&dir)
                .with_context(|| format!("serving {}", dir.display()))?;
            tracing::info!("serving {} at {}", dir.display(), server.base_url());
            Some(server)
        }
        None => None,
    };
    let started = Instant::now();
    tracing::info!(
        "pipeline {}{}: {} stages into {}",
        file.pipeline.name,
        file.pipeline
            .description
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        file.stage.len(),
        work.display()
    );
    let slurm = args.executor == Executor::Slurm;
    if slurm && server.is_some() && !args.wait {
        bail!("pipeline {} serves files for its stages: with --executor slurm, add --wait so the server outlives the jobs", args.pipeline.display());
    }
    let mut previous_job: Option<String> = None;
    let mut jobs = Vec::new();
    let mut submitted = Vec::new();
    let total = file.stage.len();
    for (i, stage) in file.stage.iter().enumerate() {
        let name = stage.name.clone().unwrap_or_else(|| stage.run.clone());
        if !args.only.is_empty() && !args.only.contains(&name) {
            continue;
        }
        let out = work.join(&name);
        // Array tasks must not discard each other's work: with Slurm the
        // stage directory is cleared here, once, before submitting.
        let mut argv = stage_argv(stage, &base, &work, &out, args.overwrite && !slurm, !slurm)?;
        if let Some(server) = &server {
            if stage.run == "fetch" && !stage.flags.contains_key("base_url") {
                argv.extend(["--base-url".to_string(), server.base_url()]);
            }
        }
        tracing::debug!("stage {name}: {}", argv.join(" "));
        let cli = Cli::try_parse_from(&argv).map_err(|e| {
            anyhow::anyhow!(
                "pipeline {}, stage `{name}`: {}",
                args.pipeline.display(),
                e.to_string().trim_end()
            )
        })?;
        if args.dry_run {
            let res = stage.slurm.or(&file.pipeline.slurm);
            println!(
                "[{}/{total}] {name}: {}{}",
                i + 1,
                argv.join(" "),
                if slurm {
                    format!(" (slurm: {} tasks)", res.tasks.unwrap_or(1))
                } else {
                    String::new()
                }
            );
            continue;
        }
        if slurm {
            if !matches!(
                cli.command,
                Command::Ingest(_)
                    | Command::Fetch(_)
                    | Command::Embed(_)
                    | Command::Dedup(_)
                    | Command::Score(_)
                    | Command::Caption(_)
                    | Command::EncodeLatents(_)
                    | Command::EncodeText(_)
                    | Command::Export(_)
                    | Command::ImportEmbeddings(_)
                    | Command::Train(_)
                    | Command::Sample(_)
            ) {
                bail!("stage `{name}`: `{}` is not a pipeline stage", stage.run);
            }
            let res = stage.slurm.or(&file.pipeline.slurm);
            if args.overwrite {
                curate_core::stage::StageDir::remove(&out)?;
            }
            let sub = super::slurm::submit(&name, &argv, &res, previous_job.as_deref(), &work)?;
            println!(
                "{name}: job {} ({} tasks), {}",
                sub.job_id,
                sub.tasks,
                sub.script.display()
            );
            previous_job = Some(sub.job_id.clone());
            jobs.push(sub.job_id);
            // train and sample keep no shard journal: their outputs are checked instead.
            let sharded = !matches!(cli.command, Command::Train(_) | Command::Sample(_));
            submitted.push((name, out, sharded));
            continue;
        }
        let t = Instant::now();
        let summary = match &cli.command {
            Command::Ingest(a) => super::ingest::run(a),
            Command::Fetch(a) => super::fetch::run(a),
            Command::Embed(a) => super::embed::run(a),
            Command::Dedup(a) => super::dedup::run(a),
            Command::Score(a) => super::score::run(a),
            Command::Caption(a) => super::caption::run(a),
            Command::EncodeLatents(a) => super::encode_latents::run(a),
            Command::EncodeText(a) => super::encode_text::run(a),
            Command::Export(a) => super::export::run(a),
            Command::ImportEmbeddings(a) => super::import_embeddings::run(a),
            Command::Train(a) => super::train::run_stage(a),
            Command::Sample(a) => super::sample::run_stage(a),
            _ => bail!("stage `{name}`: `{}` is not a pipeline stage", stage.run),
        }
        .with_context(|| format!("stage `{name}` ({})", stage.run))?;
        let what = if summary.shards_written == 0 {
            format!(
                "already complete ({} shards), skipped",
                summary.shards_total
            )
        } else {
            format!(
                "{} shards written, {} already complete",
                summary.shards_written, summary.shards_skipped
            )
        };
        tracing::info!(
            "[{}/{total}] {name} → {}: {what}; {} records, {} failed ({:.1} s)",
            i + 1,
            out.display(),
            summary.records,
            summary.failures,
            t.elapsed().as_secs_f64()
        );
    }
    if args.dry_run {
        return Ok(());
    }
    if slurm {
        if !args.wait {
            println!("submitted; follow with `curate status {}`", work.display());
            return Ok(());
        }
        super::slurm::wait(&jobs, std::time::Duration::from_secs(24 * 3600))?;
        let mut problems = Vec::new();
        for (name, out, sharded) in &submitted {
            if !sharded {
                let wrote = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
                if !wrote {
                    problems.push(format!(
                        "stage `{name}` wrote nothing into {}; see {}",
                        out.display(),
                        super::slurm::slurm_dir(&work).join("logs").display()
                    ));
                }
                continue;
            }
            let (manifest, journal) =
                curate_core::stage::StageDir::inspect(out)?.with_context(|| {
                    format!(
                        "stage `{name}` wrote no manifest; see {}",
                        super::slurm::slurm_dir(&work).join("logs").display()
                    )
                })?;
            let done: std::collections::HashSet<u32> = journal.iter().map(|r| r.shard).collect();
            let missing: Vec<u32> = (0..manifest.num_shards)
                .filter(|s| !done.contains(s))
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "stage `{name}`: {} of {} shards missing; resubmit with `{}`",
                    missing.len(),
                    manifest.num_shards,
                    super::slurm::resubmit_hint(&work, name, &missing).unwrap_or_default()
                ));
            }
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("\n"));
        }
    }
    tracing::info!(
        "pipeline {} done in {:.1} s; see `curate status {}`",
        file.pipeline.name,
        started.elapsed().as_secs_f64(),
        work.display()
    );
    Ok(())
}

/// Stage names are unique, and every `@name` (as `input` or a flag's value)
/// is an earlier stage: a typo stops the pipeline before anything runs.
fn check_stage_names(stages: &[StageTable]) -> Result<(), String> {
    let mut earlier: Vec<String> = Vec::new();
    for s in stages {
        let name = s.name.clone().unwrap_or_else(|| s.run.clone());
        if earlier.contains(&name) {
            return Err(format!("two stages named `{name}` (set `name`)"));
        }
        let mut refs: Vec<&str> = s.input.iter().map(String::as_str).collect();
        for v in s.flags.values() {
            match v {
                toml::Value::String(v) => refs.push(v),
                toml::Value::Array(a) => refs.extend(a.iter().filter_map(|x| x.as_str())),
                _ => {}
            }
        }
        for r in refs.into_iter().filter_map(|r| r.strip_prefix('@')) {
            if !earlier.iter().any(|e| e == r) {
                return Err(format!(
                    "stage `{name}`: `@{r}` names no earlier stage (earlier: {})",
                    if earlier.is_empty() {
                        "none".to_string()
                    } else {
                        earlier.join(", ")
                    }
                ));
            }
        }
        earlier.push(name);
    }
    Ok(())
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The command line a stage table stands for.
fn stage_argv(
    stage: &StageTable,
    base: &Path,
    work: &Path,
    out: &Path,
    overwrite: bool,
    local: bool,
) -> anyhow::Result<Vec<String>> {
    let mut argv = vec!["curate".to_string(), stage.run.clone()];
    for input in &stage.input {
        let path = match input.strip_prefix('@') {
            Some(upstream) => work.join(upstream),
            None => normalize(&base.join(input)),
        };
        argv.push(path.display().to_string());
    }
    argv.extend(["--output".into(), out.display().to_string()]);
    if local {
        // The local executor runs every shard in this process, whatever
        // Slurm variables the environment holds; array tasks take theirs
        // from SLURM_ARRAY_TASK_ID/COUNT.
        argv.extend([
            "--task-index".into(),
            "0".into(),
            "--num-tasks".into(),
            "1".into(),
        ]);
    }
    if overwrite {
        argv.push("--overwrite".into());
    }
    for (key, value) in &stage.flags {
        let flag = format!("--{}", key.replace('_', "-"));
        let mut push = |v: &toml::Value| -> anyhow::Result<()> {
            match v {
                toml::Value::Boolean(true) => argv.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => {
                    argv.push(flag.clone());
                    argv.push(if let Some(upstream) = s.strip_prefix('@') {
                        work.join(upstream).display().to_string()
                    } else if s.starts_with("./") || s.starts_with("../") {
                        normalize(&base.join(s)).display().to_string()
                    } else {
                        s.clone()
                    });
                }
                toml::Value::Integer(n) => {
                    argv.push(flag.clone());
                    argv.push(n.to_string());
                }
                toml::Value::Float(x) => {
                    argv.push(flag.clone());
                    argv.push(x.to_string());
                }
                other => bail!("`{key}`: unsupported value {other}"),
            }
            Ok(())
        };
        match value {
            toml::Value::Array(items) => {
                for v in items {
                    push(v)?;
                }
            }
            v => push(v)?,
        }
    }
    Ok(argv)
}

/// `a/b/../c` → `a/c`, lexically (no file system access), so logs and
/// manifests show the paths a person would write.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_must_name_an_earlier_stage() {
        let t: PipelineFile = toml::from_str(
            r#"
            [pipeline]
            name = "t"
            work_dir = "work"
            [[stage]]
            run = "ingest"
            name = "images"
            input = "x"
            [[stage]]
            run = "caption"
            input = "@images"
            keep = "@dedup"
            [[stage]]
            run = "dedup"
            input = "@images"
            "#,
        )
        .unwrap();
        let err = check_stage_names(&t.stage).unwrap_err();
        assert_eq!(
            err,
            "stage `caption`: `@dedup` names no earlier stage (earlier: images)"
        );
        assert!(check_stage_names(&t.stage[..1]).is_ok());
        let twice: PipelineFile = toml::from_str(
            "[pipeline]\nname = \"t\"\nwork_dir = \"w\"\n[[stage]]\nrun = \"ingest\"\ninput = \"x\"\n[[stage]]\nrun = \"ingest\"\ninput = \"y\"\n",
        )
        .unwrap();
        assert_eq!(
            check_stage_names(&twice.stage).unwrap_err(),
            "two stages named `ingest` (set `name`)"
        );
    }

    #[test]
    fn tables_become_flags() {
        let t: PipelineFile = toml::from_str(
            r#"
            [pipeline]
            name = "t"
            work_dir = "../work/t"
            [[stage]]
            run = "ingest"
            name = "images"
            input = "../fixtures/images"
            shard_size = 8
            overwrite = false
            store = "auto"
            [[stage]]
            run = "embed"
            input = "@images"
            model = "./models/clip"
            "#,
        )
        .unwrap();
        let base = Path::new("pipelines");
        let work = Path::new("work/t");
        let a = stage_argv(&t.stage[0], base, work, &work.join("images"), false, true).unwrap();
        assert_eq!(
            a,
            [
                "curate",
                "ingest",
                "fixtures/images",
                "--output",
                "work/t/images",
                "--task-index",
                "0",
                "--num-tasks",
                "1",
                "--shard-size",
                "8",
                "--store",
                "auto"
            ]
        );
        let b = stage_argv(&t.stage[1], base, work, &work.join("embed"), true, true).unwrap();
        assert_eq!(&b[2], "work/t/images");
        assert!(b.contains(&"--overwrite".to_string()));
        assert!(b
            .windows(2)
            .any(|w| w == ["--model", "pipelines/models/clip"]));
        assert_eq!(
            normalize(Path::new("../a/./b/../c")),
            PathBuf::from("../a/c")
        );
        assert_eq!(normalize(Path::new("/x/../y")), PathBuf::from("/y"));
    }
}
