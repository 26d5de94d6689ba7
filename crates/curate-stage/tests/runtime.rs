//! A stage defined only here — it writes generated `url_list` rows — gets
//! resume, the kill -9 contract, task splits and stage-level outputs from
//! the runtime without a line of its own for them.
//!
//! The kill -9 case re-runs this test binary as a child (`CHILD_ENV` names
//! the role): the child runs the stage with the runtime's stall hook, which
//! parks it mid-shard once rows are on disk and says so on stderr; the
//! parent reads that line (no sleeps), SIGKILLs it, and resumes in-process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{RecordBatch, StringArray};
use curate_core::schema::TableSchema;
use curate_core::split::ShardSplit;
use curate_core::stage::{Inputs, ShardRecord, StageDir, StageSpec};
use curate_stage::{run, Result, RunOptions, ShardOutput, Stage};

const CHILD_ENV: &str = "CURATE_STAGE_TEST_CHILD_OUT";
const SHARDS: u32 = 4;
const ROWS: u64 = 10;
/// Rows per row group, so a shard reaches the disk in pieces.
const GROUP: usize = 3;

/// `SHARDS` shards of `ROWS` generated URLs each, and a stage-level file
/// counting the shards it saw.
struct UrlStage {
    /// Shards this process wrote, in order.
    written: Vec<u32>,
}

impl UrlStage {
    fn new() -> Self {
        UrlStage {
            written: Vec::new(),
        }
    }
}

fn url(shard: u32, row: u64) -> String {
    format!("http://127.0.0.1/{shard}/{row}.jpg")
}

impl Stage for UrlStage {
    fn name(&self) -> &str {
        "urls"
    }

    fn table(&self) -> &'static TableSchema {
        curate_core::schema::get("url_list").unwrap()
    }

    fn spec(&self) -> Result<StageSpec> {
        Ok(StageSpec {
            stage: "urls".into(),
            schema: "url_list".into(),
            config: serde_json::json!({ "rows": ROWS }),
            inputs: Inputs {
                kind: "generated".into(),
                location: "test".into(),
                items: SHARDS as u64 * ROWS,
                fingerprint: "test".into(),
                shards: Vec::new(),
            },
            num_shards: SHARDS,
        })
    }

    fn shard_items(&self, _shard: u32) -> u64 {
        ROWS
    }

    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord> {
        let schema = Arc::new(self.table().arrow_schema()?);
        let mut file = out.begin(shard, self.table(), schema.clone(), GROUP)?;
        let rows: Vec<u64> = (0..ROWS).collect();
        for chunk in rows.chunks(GROUP) {
            let urls: Vec<String> = chunk.iter().map(|&r| url(shard, r)).collect();
            let n = urls.len();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(urls)),
                    Arc::new(StringArray::from(vec![None::<&str>; n])),
                    Arc::new(StringArray::from(vec![None::<&str>; n])),
                ],
            )?;
            file.write(&batch, std::iter::empty())?;
            out.wrote(n);
        }
        self.written.push(shard);
        file.commit(vec![format!("generated {shard}")], 0.0)
    }

    fn finish(&mut self, stage: &StageDir, _changed: bool) -> Result<Vec<String>> {
        let n = stage.journal()?.len();
        curate_core::stage::write_atomic(&stage.dir().join("count.txt"), n.to_string().as_bytes())?;
        Ok(vec!["count.txt".into()])
    }
}

fn options(out: &Path, task: u32, tasks: u32) -> RunOptions {
    RunOptions {
        output: out.to_path_buf(),
        overwrite: false,
        split: ShardSplit::new(task, tasks).unwrap(),
    }
}

/// Every row of every shard, in shard order.
fn rows(dir: &Path) -> Vec<String> {
    let table = curate_core::schema::get("url_list").unwrap();
    let mut out = Vec::new();
    for s in 0..SHARDS {
        let path = dir.join(StageDir::shard_name(s));
        for b in curate_io::read_columns(&path, table, Some(&["url"])).unwrap() {
            out.extend(
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_string()),
            );
        }
    }
    out
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp-"))
        .collect()
}

fn expected() -> Vec<String> {
    (0..SHARDS)
        .flat_map(|s| (0..ROWS).map(move |r| url(s, r)))
        .collect()
}

#[test]
fn a_stage_gets_resume_splits_and_outputs_from_the_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("urls");

    // Two tasks: the first writes shards 0 and 2; outputs wait for the rest.
    let mut first = UrlStage::new();
    let s = run(&mut first, &options(&out, 0, 2)).unwrap();
    assert_eq!(first.written, vec![0, 2]);
    assert_eq!((s.shards_written, s.records), (2, 2 * ROWS));
    assert!(
        !out.join("count.txt").exists(),
        "outputs before every shard is complete"
    );

    // A damaged complete shard is redone by the task that owns it.
    let victim = out.join(StageDir::shard_name(1));
    let mut second = UrlStage::new();
    run(&mut second, &options(&out, 1, 2)).unwrap();
    assert_eq!(second.written, vec![1, 3]);
    assert_eq!(std::fs::read_to_string(out.join("count.txt")).unwrap(), "4");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();

    let mut again = UrlStage::new();
    let s = run(&mut again, &options(&out, 0, 1)).unwrap();
    assert_eq!(again.written, vec![1], "only the truncated shard is redone");
    assert_eq!((s.shards_written, s.shards_skipped), (1, 3));
    assert_eq!(rows(&out), expected());

    // A rerun with nothing to do writes nothing.
    let mut idle = UrlStage::new();
    let s = run(&mut idle, &options(&out, 0, 1)).unwrap();
    assert!(idle.written.is_empty() && !s.changed());
    assert!(leftovers(&out).is_empty());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["outputs"], serde_json::json!(["count.txt"]));
}

#[test]
fn kill_9_mid_shard_loses_nothing_and_duplicates_nothing() {
    if let Ok(out) = std::env::var(CHILD_ENV) {
        // The child: runs until the stall hook parks it; the parent kills it.
        run(&mut UrlStage::new(), &options(Path::new(&out), 0, 1)).unwrap();
        panic!("the stall hook should have stopped this run");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("urls");
    // Stall after 13 rows: shard 0 complete, shard 1 with one row group of 3 on disk.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_mid_shard_loses_nothing_and_duplicates_nothing",
            "--nocapture",
        ])
        .env(CHILD_ENV, &out)
        .env(
            "CURATE_TEST_STALL_AFTER_ROWS",
            (ROWS + GROUP as u64).to_string(),
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let stalled = line.contains("test hook: stalled after");
        said.push(line);
        if stalled {
            break;
        }
    }
    assert!(
        said.last()
            .is_some_and(|l| l.contains("stalled after 13 rows")),
        "the child never reached the stall point: {said:?}"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    assert!(
        out.join(StageDir::shard_name(0)).exists(),
        "shard 0 was complete"
    );
    assert!(
        !out.join(StageDir::shard_name(1)).exists(),
        "shard 1 was partial"
    );
    assert_eq!(
        leftovers(&out).len(),
        1,
        "the killed shard's temporary file"
    );

    let mut resumed = UrlStage::new();
    let s = run(&mut resumed, &options(&out, 0, 1)).unwrap();
    assert_eq!(
        resumed.written,
        vec![1, 2, 3],
        "the complete shard is skipped"
    );
    assert_eq!((s.shards_skipped, s.records), (1, SHARDS as u64 * ROWS));
    assert_eq!(rows(&out), expected(), "nothing lost, nothing twice");
    assert!(leftovers(&out).is_empty(), "nothing left behind");
    assert_eq!(std::fs::read_to_string(out.join("count.txt")).unwrap(), "4");
}
