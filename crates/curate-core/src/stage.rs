//! The stage directory and its resume contract.
//!
//! ```text
//! <work>/<stage>/
//!   manifest.json            stage, curate version, schema, config (+ hash), inputs,
//!                            shard count, and the per-shard records consolidated
//!   part-00000.parquet       complete output shards
//!   .part-00003.parquet.tmp-<host>-<pid>   a shard being written (never read;
//!                            open() removes those of dead writers)
//!   journal/part-00000.json  one completion record per shard: the source of truth
//! ```
//!
//! A shard is complete when its journal record exists and its file passes
//! the caller's check (for parquet: the footer reads and the row count
//! matches). Output is written under a temporary name, flushed, renamed,
//! and only then journalled, so `kill -9` at any moment leaves either a
//! complete shard or one that the next run redoes. Several processes (Slurm
//! array tasks) may work in one stage directory at once: each writes only
//! its own shards and journal records; `manifest.json` is created once
//! (atomically, first writer wins) and consolidated with rename.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{hash, CoreError, CURATE_VERSION};

pub const MANIFEST: &str = "manifest.json";
const JOURNAL_DIR: &str = "journal";

/// What a stage declares before writing: everything that decides its output.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub stage: String,
    /// Name of the table in `schemas/` its shards follow.
    pub schema: String,
    /// The configuration that matters for the output (not threads, not the split).
    pub config: serde_json::Value,
    pub inputs: Inputs,
    pub num_shards: u32,
}

/// What the stage reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// `directory`, `url_list`, `stage`, …
    pub kind: String,
    /// Where: a folder, files, or an upstream stage directory.
    pub location: String,
    /// Number of input items (files, URLs, records).
    pub items: u64,
    /// Hash over the input listing; a changed listing is a changed run.
    pub fingerprint: String,
    /// Input shard names, where the input is sharded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaRef {
    pub name: String,
    pub version: u32,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub curate_version: String,
    pub schema: SchemaRef,
    pub config_hash: String,
    pub config: serde_json::Value,
    pub inputs: Inputs,
    pub num_shards: u32,
    pub created_unix: u64,
    /// Consolidated copy of the journal; may lag behind it while tasks run.
    #[serde(default)]
    pub shards: Vec<ShardRecord>,
    #[serde(default)]
    pub complete: bool,
    /// Stage-level outputs written once every shard is complete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

/// The journal record of one complete shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub shard: u32,
    pub file: String,
    /// Rows written (successes and recorded failures).
    pub records: u64,
    /// Rows recorded as failures.
    pub failures: u64,
    /// Failures by reason.
    #[serde(default)]
    pub reasons: BTreeMap<String, u64>,
    pub bytes: u64,
    pub duration_s: f64,
    /// The slice of the input this shard covers (input shard names, or first/last item).
    #[serde(default)]
    pub inputs: Vec<String>,
    pub completed_unix: u64,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub slurm_job: Option<String>,
}

/// State of one shard on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardState {
    Complete(ShardRecord),
    /// Never started, or started and not finished.
    Missing,
    /// Journalled but its file fails the check (truncated, deleted, corrupt).
    Corrupt(String),
}

/// How [`StageDir::open`] found the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    Created,
    Resumed,
    Overwritten,
}

/// An open stage directory.
#[derive(Debug)]
pub struct StageDir {
    dir: PathBuf,
    manifest: Manifest,
}

impl StageSpec {
    fn manifest(&self) -> Result<Manifest, CoreError> {
        let schema = crate::schema::get(&self.schema)?;
        let schema = SchemaRef {
            name: schema.name.clone(),
            version: schema.version,
        };
        let config_hash = hash::json_hash(&serde_json::json!({
            "stage": self.stage,
            "schema": schema,
            "config": self.config,
            "inputs": self.inputs.fingerprint,
            "num_shards": self.num_shards,
        }));
        Ok(Manifest {
            stage: self.stage.clone(),
            curate_version: CURATE_VERSION.into(),
            schema,
            config_hash,
            config: self.config.clone(),
            inputs: self.inputs.clone(),
            num_shards: self.num_shards,
            created_unix: now_unix(),
            shards: Vec::new(),
            complete: false,
            outputs: Vec::new(),
        })
    }
}

impl StageDir {
    /// Opens `dir` for `spec`: creates the manifest, or checks that the
    /// existing one was written with the same configuration and inputs.
    /// A different one is refused unless `overwrite`, which discards the
    /// stage's files (only files curate recognises as its own).
    pub fn open(
        dir: &Path,
        spec: &StageSpec,
        overwrite: bool,
    ) -> Result<(Self, Opened), CoreError> {
        fs::create_dir_all(dir.join(JOURNAL_DIR)).map_err(|e| CoreError::io(dir, e))?;
        clear_stale_temporaries(dir)?;
        clear_stale_temporaries(&dir.join(JOURNAL_DIR))?;
        let wanted = spec.manifest()?;
        let mut opened = Opened::Resumed;
        let existing = match read_manifest(dir)? {
            Some(m) => Some(m),
            None => {
                if create_new(&dir.join(MANIFEST), &to_json(&wanted))? {
                    opened = Opened::Created;
                }
                read_manifest(dir)?
            }
        };
        let existing = existing.ok_or_else(|| {
            CoreError::io(
                dir.join(MANIFEST),
                std::io::Error::new(std::io::ErrorKind::NotFound, "manifest vanished"),
            )
        })?;
        if existing.stage != wanted.stage && !overwrite {
            return Err(CoreError::WrongStage {
                dir: dir.to_path_buf(),
                expected: wanted.stage,
                found: existing.stage,
            });
        }
        if existing.config_hash != wanted.config_hash {
            if !overwrite {
                return Err(CoreError::ConfigChanged {
                    dir: dir.to_path_buf(),
                    found_stage: existing.stage.clone(),
                    differences: describe_differences(&existing, &wanted),
                });
            }
            let stage = StageDir {
                dir: dir.to_path_buf(),
                manifest: existing,
            };
            stage.discard()?;
            fs::create_dir_all(dir.join(JOURNAL_DIR)).map_err(|e| CoreError::io(dir, e))?;
            write_atomic(&dir.join(MANIFEST), to_json(&wanted).as_bytes())?;
            return Ok((
                StageDir {
                    dir: dir.to_path_buf(),
                    manifest: wanted,
                },
                Opened::Overwritten,
            ));
        }
        Ok((
            StageDir {
                dir: dir.to_path_buf(),
                manifest: existing,
            },
            opened,
        ))
    }

    /// Reads a stage directory without opening it for writing.
    /// `Ok(None)` when there is no manifest.
    pub fn inspect(dir: &Path) -> Result<Option<(Manifest, Vec<ShardRecord>)>, CoreError> {
        let Some(manifest) = read_manifest(dir)? else {
            return Ok(None);
        };
        let journal = read_journal(dir)?;
        Ok(Some((manifest, journal)))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn num_shards(&self) -> u32 {
        self.manifest.num_shards
    }

    pub fn shard_name(shard: u32) -> String {
        format!("part-{shard:05}.parquet")
    }

    /// Final path of a shard.
    pub fn shard_path(&self, shard: u32) -> PathBuf {
        self.dir.join(Self::shard_name(shard))
    }

    /// Temporary path a shard is written to by this process.
    pub fn tmp_path(&self, shard: u32) -> PathBuf {
        self.dir
            .join(format!(".{}.tmp-{}", Self::shard_name(shard), tmp_suffix()))
    }

    fn journal_path(&self, shard: u32) -> PathBuf {
        self.dir
            .join(JOURNAL_DIR)
            .join(format!("part-{shard:05}.json"))
    }

    /// The shard's state; `check` verifies the file against its record.
    pub fn shard_state(
        &self,
        shard: u32,
        check: impl Fn(&Path, &ShardRecord) -> Result<(), String>,
    ) -> Result<ShardState, CoreError> {
        let path = self.journal_path(shard);
        let record: ShardRecord = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(ShardState::Corrupt(format!(
                        "journal record unreadable: {e}"
                    )))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ShardState::Missing),
            Err(e) => return Err(CoreError::io(path, e)),
        };
        match check(&self.dir.join(&record.file), &record) {
            Ok(()) => Ok(ShardState::Complete(record)),
            Err(why) => Ok(ShardState::Corrupt(why)),
        }
    }

    /// Clears whatever a previous attempt left of `shard`: stale temporary
    /// files, its journal record and file. Call before (re)writing it.
    pub fn begin_shard(&self, shard: u32) -> Result<(), CoreError> {
        remove_if_exists(&self.journal_path(shard))?;
        remove_if_exists(&self.shard_path(shard))?;
        self.clear_temporaries(shard)
    }

    /// Removes temporary files a killed attempt at `shard` left behind.
    pub fn clear_temporaries(&self, shard: u32) -> Result<(), CoreError> {
        let prefix = format!(".{}.tmp-", Self::shard_name(shard));
        for entry in fs::read_dir(&self.dir).map_err(|e| CoreError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| CoreError::io(&self.dir, e))?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                remove_if_exists(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Journals a shard whose file is already in place under its final name.
    pub fn commit_shard(&self, mut record: ShardRecord) -> Result<(), CoreError> {
        record.completed_unix = now_unix();
        record.host = record.host.or_else(hostname);
        record.slurm_job = record.slurm_job.or_else(slurm_job);
        write_atomic(
            &self.journal_path(record.shard),
            to_json(&record).as_bytes(),
        )
    }

    /// All journal records, by shard.
    pub fn journal(&self) -> Result<Vec<ShardRecord>, CoreError> {
        read_journal(&self.dir)
    }

    /// Rewrites `manifest.json` with the journal's records; `complete`
    /// when every shard is journalled. Returns the new manifest.
    pub fn consolidate(&mut self, outputs: &[String]) -> Result<&Manifest, CoreError> {
        let shards = self.journal()?;
        self.manifest.complete = shards.len() as u32 == self.manifest.num_shards;
        self.manifest.shards = shards;
        for o in outputs {
            if !self.manifest.outputs.contains(o) {
                self.manifest.outputs.push(o.clone());
            }
        }
        write_atomic(&self.dir.join(MANIFEST), to_json(&self.manifest).as_bytes())?;
        Ok(&self.manifest)
    }

    /// Removes a stage directory's own files (see [`discard`](Self::discard));
    /// nothing when there is no stage there.
    pub fn remove(dir: &Path) -> Result<(), CoreError> {
        match read_manifest(dir)? {
            Some(manifest) => StageDir {
                dir: dir.to_path_buf(),
                manifest,
            }
            .discard(),
            None => Ok(()),
        }
    }

    /// Removes the stage's own files (manifest, shards, temporaries,
    /// journal, stage-level outputs) and nothing else.
    fn discard(&self) -> Result<(), CoreError> {
        for entry in fs::read_dir(&self.dir).map_err(|e| CoreError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| CoreError::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name == MANIFEST
                || (name.starts_with("part-") && name.ends_with(".parquet"))
                || (name.starts_with(".part-") && name.contains(".tmp-"))
                || self.manifest.outputs.contains(&name);
            if ours {
                remove_if_exists(&entry.path())?;
            }
        }
        let journal = self.dir.join(JOURNAL_DIR);
        if journal.exists() {
            fs::remove_dir_all(&journal).map_err(|e| CoreError::io(&journal, e))?;
        }
        Ok(())
    }
}

fn describe_differences(old: &Manifest, new: &Manifest) -> String {
    let mut out = Vec::new();
    if old.stage != new.stage {
        out.push(format!("stage `{}` → `{}`", old.stage, new.stage));
    }
    if old.schema != new.schema {
        out.push(format!(
            "schema {} v{} → {} v{}",
            old.schema.name, old.schema.version, new.schema.name, new.schema.version
        ));
    }
    match (old.config.as_object(), new.config.as_object()) {
        (Some(a), Some(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let (x, y) = (a.get(k), b.get(k));
                if x != y {
                    let show = |v: Option<&serde_json::Value>| {
                        v.map_or("(unset)".into(), |v| v.to_string())
                    };
                    out.push(format!("{k}: {} → {}", show(x), show(y)));
                }
            }
        }
        _ if old.config != new.config => out.push("configuration".into()),
        _ => {}
    }
    if old.inputs.fingerprint != new.inputs.fingerprint {
        out.push(format!(
            "inputs at {}: {} items (fingerprint {}) → {} items (fingerprint {})",
            new.inputs.location,
            old.inputs.items,
            &old.inputs.fingerprint[..old.inputs.fingerprint.len().min(12)],
            new.inputs.items,
            &new.inputs.fingerprint[..new.inputs.fingerprint.len().min(12)]
        ));
    }
    if old.num_shards != new.num_shards {
        out.push(format!("shards: {} → {}", old.num_shards, new.num_shards));
    }
    if out.is_empty() {
        out.push(format!(
            "configuration hash {} → {}",
            &old.config_hash[..12],
            &new.config_hash[..12]
        ));
    }
    out.join("; ")
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, CoreError> {
    let path = dir.join(MANIFEST);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CoreError::Json { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoreError::io(path, e)),
    }
}

fn read_journal(dir: &Path) -> Result<Vec<ShardRecord>, CoreError> {
    let jdir = dir.join(JOURNAL_DIR);
    let entries = match fs::read_dir(&jdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CoreError::io(&jdir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| CoreError::io(&jdir, e))?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                // Another task is redoing that shard right now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CoreError::io(&path, e)),
            };
            match serde_json::from_slice::<ShardRecord>(&bytes) {
                Ok(r) => out.push(r),
                // A record torn by a crash cannot exist (records are renamed
                // into place), but a hand-edited one is skipped, not fatal:
                // its shard will be redone.
                Err(_) => continue,
            }
        }
    }
    out.sort_by_key(|r| r.shard);
    Ok(out)
}

fn to_json<T: Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("manifest types serialise");
    s.push('\n');
    s
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CoreError> {
    let tmp = tmp_sibling(path);
    let mut f = fs::File::create(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| CoreError::io(&tmp, e))?;
    f.sync_all().map_err(|e| CoreError::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))?;
    sync_parent(path)
}

/// Creates `path` with `contents` only if it does not exist (atomically:
/// written aside, then hard-linked into place). Returns whether it created it.
fn create_new(path: &Path, contents: &str) -> Result<bool, CoreError> {
    let tmp = tmp_sibling(path);
    let mut f = fs::File::create(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| CoreError::io(&tmp, e))?;
    drop(f);
    let created = match fs::hard_link(&tmp, path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(CoreError::io(path, e));
        }
    };
    let _ = fs::remove_file(&tmp);
    sync_parent(path)?;
    Ok(created)
}

/// A temporary whose writer cannot finish it any more: `.NAME.tmp-HOST-PID`
/// written on this host by a process that is gone, or a manifest or journal
/// temporary (a write of milliseconds) older than [`STALE_AFTER_SECS`] from
/// any host. A shard temporary of a live process on another node may be
/// hours into its write, so only its own shard's redo removes it.
fn is_stale_temporary(name: &str, age_secs: Option<u64>, this_host: Option<&str>) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((target, suffix)) = rest.split_once(".tmp-") else {
        return false;
    };
    let Some((host, pid)) = suffix.rsplit_once('-') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if this_host == Some(host) && !process_alive(pid) {
        return true;
    }
    let small = !(target.starts_with("part-") && target.ends_with(".parquet"));
    small && age_secs.is_some_and(|a| a >= STALE_AFTER_SECS)
}

/// Age past which a manifest or journal temporary from another host is
/// taken as left by a killed process.
pub const STALE_AFTER_SECS: u64 = 3600;

fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the temporaries in `dir` that killed processes left behind (a
/// kill between a manifest's write and its rename, for one), so a rerun
/// leaves nothing behind however the last one ended.
fn clear_stale_temporaries(dir: &Path) -> Result<(), CoreError> {
    let host = hostname();
    let now = std::time::SystemTime::now();
    for entry in fs::read_dir(dir).map_err(|e| CoreError::io(dir, e))? {
        let entry = entry.map_err(|e| CoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') || !name.contains(".tmp-") {
            continue;
        }
        let age = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|m| now.duration_since(m).ok())
            .map(|d| d.as_secs());
        if is_stale_temporary(&name, age, host.as_deref()) {
            remove_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", tmp_suffix()))
}

/// `<host>-<pid>`: unique among the processes (on several nodes) that share
/// a stage directory.
pub fn tmp_suffix() -> String {
    format!(
        "{}-{}",
        hostname().unwrap_or_else(|| "host".into()),
        std::process::id()
    )
}

/// fsyncs the directory holding `path`, so a rename survives a power cut.
pub fn sync_parent(path: &Path) -> Result<(), CoreError> {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), CoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CoreError::io(path, e)),
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn slurm_job() -> Option<String> {
    let job = std::env::var("SLURM_ARRAY_JOB_ID")
        .or_else(|_| std::env::var("SLURM_JOB_ID"))
        .ok()?;
    Some(match std::env::var("SLURM_ARRAY_TASK_ID") {
        Ok(task) => format!("{job}_{task}"),
        Err(_) => job,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shard_size: u64, fingerprint: &str) -> StageSpec {
        StageSpec {
            stage: "ingest".into(),
            schema: "images".into(),
            config: serde_json::json!({ "shard_size": shard_size, "store": "auto" }),
            inputs: Inputs {
                kind: "directory".into(),
                location: "/data".into(),
                items: 10,
                fingerprint: fingerprint.into(),
                shards: vec![],
            },
            num_shards: 3,
        }
    }

    fn record(shard: u32) -> ShardRecord {
        ShardRecord {
            shard,
            file: StageDir::shard_name(shard),
            records: 4,
            failures: 1,
            reasons: BTreeMap::from([("empty".into(), 1)]),
            bytes: 10,
            duration_s: 0.5,
            inputs: vec![],
            completed_unix: 0,
            host: None,
            slurm_job: None,
        }
    }

    fn file_exists(p: &Path, _: &ShardRecord) -> Result<(), String> {
        p.exists().then_some(()).ok_or_else(|| "missing".into())
    }

    #[test]
    fn create_resume_and_refuse_changed_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ingest");
        let (_, how) = StageDir::open(&dir, &spec(4, "aaaa"), false).unwrap();
        assert_eq!(how, Opened::Created);
        let (_, how) = StageDir::open(&dir, &spec(4, "aaaa"), false).unwrap();
        assert_eq!(how, Opened::Resumed);

        let e = StageDir::open(&dir, &spec(8, "aaaa"), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shard_size: 4 → 8") && e.contains("--overwrite"),
            "{e}"
        );
        let e = StageDir::open(&dir, &spec(4, "bbbb"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inputs at /data"), "{e}");

        let (_, how) = StageDir::open(&dir, &spec(8, "aaaa"), true).unwrap();
        assert_eq!(how, Opened::Overwritten);
        let (m, _) = StageDir::inspect(&dir).unwrap().unwrap();
        assert_eq!(m.config["shard_size"], 8);
    }

    #[test]
    fn open_removes_temporaries_of_dead_writers_and_keeps_live_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        StageDir::open(&dir, &spec(4, "aaaa"), false).unwrap();
        let host = tmp_suffix().rsplit_once('-').unwrap().0.to_string();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let live = std::process::id();
        let stale = [
            format!(".manifest.json.tmp-{host}-{dead}"),
            format!("journal/.part-00001.json.tmp-{host}-{dead}"),
            format!(".part-00002.parquet.tmp-{host}-{dead}"),
        ];
        let kept = [
            format!(".manifest.json.tmp-{host}-{live}"),
            // Another node's writer may be alive: its shard is left to the redo.
            format!(".part-00002.parquet.tmp-othernode-{dead}"),
            format!(".manifest.json.tmp-othernode-{dead}"),
            "notes.txt".to_string(),
        ];
        for name in stale.iter().chain(&kept) {
            fs::write(dir.join(name), b"half").unwrap();
        }
        StageDir::open(&dir, &spec(4, "aaaa"), false).unwrap();
        for name in &stale {
            assert!(!dir.join(name).exists(), "{name} left behind");
        }
        for name in &kept {
            assert!(dir.join(name).exists(), "{name} removed");
        }
        // An hour-old manifest temporary of another host is stale too; a shard's is not.
        assert!(is_stale_temporary(
            &format!(".manifest.json.tmp-othernode-{dead}"),
            Some(STALE_AFTER_SECS),
            Some(&host)
        ));
        assert!(!is_stale_temporary(
            &format!(".part-00002.parquet.tmp-othernode-{dead}"),
            Some(10 * STALE_AFTER_SECS),
            Some(&host)
        ));
    }

    #[test]
    fn shard_lifecycle() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let (mut stage, _) = StageDir::open(&dir, &spec(4, "aaaa"), false).unwrap();
        assert_eq!(
            stage.shard_state(1, file_exists).unwrap(),
            ShardState::Missing
        );

        // A crashed attempt leaves a temporary file; begin_shard clears it.
        fs::write(dir.join(".part-00001.parquet.tmp-99999"), b"half").unwrap();
        stage.begin_shard(1).unwrap();
        assert!(!dir.join(".part-00001.parquet.tmp-99999").exists());

        fs::write(stage.shard_path(1), b"data").unwrap();
        stage.commit_shard(record(1)).unwrap();
        match stage.shard_state(1, file_exists).unwrap() {
            ShardState::Complete(r) => assert_eq!(r.records, 4),
            other => panic!("{other:?}"),
        }
        // File gone behind the journal's back: corrupt, to be redone.
        fs::remove_file(stage.shard_path(1)).unwrap();
        assert!(matches!(
            stage.shard_state(1, file_exists).unwrap(),
            ShardState::Corrupt(_)
        ));

        let m = stage.consolidate(&[]).unwrap();
        assert!(!m.complete);
        assert_eq!(m.shards.len(), 1);
        for s in [0, 2] {
            fs::write(stage.shard_path(s), b"data").unwrap();
            stage.commit_shard(record(s)).unwrap();
        }
        let m = stage.consolidate(&["dups.parquet".into()]).unwrap();
        assert!(m.complete);
        assert_eq!(m.outputs, vec!["dups.parquet".to_string()]);
    }

    #[test]
    fn overwrite_removes_only_our_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let (stage, _) = StageDir::open(&dir, &spec(4, "aaaa"), false).unwrap();
        fs::write(stage.shard_path(0), b"x").unwrap();
        stage.commit_shard(record(0)).unwrap();
        fs::write(dir.join("notes.txt"), b"mine").unwrap();
        StageDir::open(&dir, &spec(5, "aaaa"), true).unwrap();
        assert!(!stage.shard_path(0).exists());
        assert!(dir.join("notes.txt").exists());
        assert!(StageDir::inspect(&dir).unwrap().unwrap().1.is_empty());
    }

    #[test]
    fn wrong_stage_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        StageDir::open(tmp.path(), &spec(4, "aaaa"), false).unwrap();
        let mut other = spec(4, "aaaa");
        other.stage = "fetch".into();
        let e = StageDir::open(tmp.path(), &other, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds stage `ingest`, expected stage `fetch`"),
            "{e}"
        );
    }
}
