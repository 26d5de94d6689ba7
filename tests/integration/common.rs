//! Helpers shared by the integration tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use curate_core::record::ImageRecord;
use curate_core::stage::StageDir;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures_images() -> PathBuf {
    repo().join("fixtures/images")
}

/// A `curate` command with a clean environment: no Slurm variables, log lines.
pub fn curate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_curate"));
    for (k, _) in std::env::vars() {
        // SLURM_CONF stays: the Slurm tests need it.
        if k.starts_with("SLURM_ARRAY")
            || k.starts_with("SLURM_JOB")
            || k.starts_with("CURATE_TEST_")
        {
            c.env_remove(k);
        }
    }
    c.env("CURATE_LOG", "info").arg("--progress").arg("log");
    c.stdin(Stdio::null());
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("curate runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// The demo pipeline (`pipelines/demo.toml`), run once per test process and
/// shared by the tests that check its outputs (cli, slurm, report): a full
/// run embeds, dedups, captions, encodes latents, trains and samples, which
/// takes minutes on CI's two cores. `first` is that run's output.
pub struct Demo {
    pub work: PathBuf,
    pub first: Run,
}

pub fn demo() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shared-demo");
        let _ = std::fs::remove_dir_all(&root);
        let work = root.join("demo");
        let first = run(curate()
            .arg("run")
            .arg(repo().join("pipelines/demo.toml"))
            .arg("--work-dir")
            .arg(&work));
        assert_eq!(first.code, 0, "{}", first.stderr);
        Demo { work, first }
    })
}

/// Held by a test that runs a command writing into the shared demo's work
/// directory (a rerun, a report), so that no other test sees it half way.
pub fn demo_exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `curate ingest INPUT -o OUT ARGS…` and insists on exit 0.
pub fn ingest(input: &Path, out: &Path, args: &[&str]) -> Run {
    let r = run(curate()
        .arg("ingest")
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(args));
    assert_eq!(r.code, 0, "ingest failed:\n{}", r.stderr);
    r
}

/// Every record of every complete shard of a stage, in shard order.
pub fn read_images(stage: &Path) -> Vec<ImageRecord> {
    let (manifest, journal) = StageDir::inspect(stage)
        .unwrap()
        .expect("a stage directory");
    assert_eq!(manifest.schema.name, "images");
    let table = curate_io::images::table();
    let mut out = Vec::new();
    for rec in journal {
        let path = stage.join(&rec.file);
        for b in curate_io::read_shard(&path, table).unwrap() {
            out.extend(curate_io::images::from_batch(&b).unwrap());
        }
    }
    out
}

/// `exact_duplicates.parquet` as key → duplicate_of.
pub fn read_duplicates(stage: &Path) -> BTreeMap<String, String> {
    use arrow_array::{Array, StringArray};
    let table = curate_core::schema::get("exact_duplicates").unwrap();
    let mut out = BTreeMap::new();
    for b in curate_io::read_shard(&stage.join("exact_duplicates.parquet"), table).unwrap() {
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let (k, d) = (col("key"), col("duplicate_of"));
        for i in 0..b.num_rows() {
            out.insert(k.value(i).to_string(), d.value(i).to_string());
        }
    }
    out
}

/// Files (relative paths) of a folder that ingest should take: image extensions.
pub fn image_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(root) {
        let ext = e
            .extension()
            .and_then(|x| x.to_str())
            .unwrap_or("")
            .to_lowercase();
        if ["jpg", "jpeg", "png", "webp", "gif"].contains(&ext.as_str()) {
            out.push(
                e.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
        }
    }
    out.sort();
    out
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The shard files (`part-*.parquet`) of a stage directory, in shard order.
pub fn shard_files(stage: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(stage)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("part-") && name.ends_with(".parquet")
        })
        .collect();
    files.sort();
    files
}
