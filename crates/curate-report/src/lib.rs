//! The static HTML report of a curate run (issue #6).
//!
//! [`write_report`] reads a work directory's stage folders (manifests,
//! journals, complete shards; never writing into them) and writes a folder
//! of plain HTML pages that works offline from the file system:
//!
//! * `index.html`: every stage, its shards, records, failures, throughput;
//! * a page per stage: fetch/ingest outcomes by reason, sizes, download
//!   times and throughput; caption lengths per task; the aesthetic score
//!   histogram with the tag bands; the latent bucket distribution; the
//!   training loss curve; outcomes of any other stage;
//! * per dedup stage an overview (rounds, cluster sizes, cosine
//!   histograms with eps marked, the eps sweep) and cluster pages in two
//!   orders (largest first; lowest similarity first), paginated;
//! * `style.css`, and `thumbs/`: small JPEGs made once per key and reused.
//!
//! Statistics are polars queries over the shards (only the needed
//! columns); charts are hand-written SVG ([`svg`]); thumbnails are decoded
//! from the `images` table's bytes read with curate-io's streaming reader.

pub mod dedup;
mod error;
pub mod html;
mod options;
pub mod run;
pub mod stage;
pub mod stages;
pub mod stats;
pub mod svg;
pub mod thumbs;
pub mod train;
mod writer;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

pub use error::ReportError;
use html::{esc, num, thousands, NavItem};
pub use options::{Options, DEFAULT_SWEEP};
use run::Run;
use writer::write_file;
pub use writer::Writer;

/// The file in a report folder listing what the report wrote.
pub const REPORT_FILE: &str = "report.json";

/// What [`write_report`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub out: PathBuf,
    pub index: PathBuf,
    pub pages: Vec<String>,
    pub thumbs_made: u64,
    pub thumbs_reused: u64,
    pub thumbs_failed: u64,
    /// Files and bytes in the report folder afterwards.
    pub files: u64,
    pub bytes: u64,
    /// Pages and thumbnails of an earlier report that this one no longer has.
    pub removed_stale: u64,
}

/// `YYYY-MM-DD HH:MM` UTC of a Unix time.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Refuses an output folder inside a stage folder, or a folder that holds
/// something other than a report.
fn check_out(out: &Path) -> Result<(), ReportError> {
    let abs = std::path::absolute(out).map_err(|e| ReportError::io(out, e))?;
    for a in abs.ancestors() {
        if a.join(curate_core::stage::MANIFEST).is_file() {
            return Err(ReportError::OutInsideStage {
                out: out.to_path_buf(),
                stage: a.to_path_buf(),
            });
        }
    }
    if abs.is_dir() && !abs.join(REPORT_FILE).is_file() {
        let mut entries = std::fs::read_dir(&abs).map_err(|e| ReportError::io(&abs, e))?;
        if entries.next().is_some() {
            return Err(ReportError::OutNotReport {
                out: out.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// The report's own record of what it wrote.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Listing {
    curate_version: String,
    generated_unix: u64,
    source: String,
    pages: Vec<String>,
    thumbs: Vec<String>,
}

/// Writes the report of `opts.dir`. Reads only; reruns reuse thumbnails
/// and remove pages and thumbnails the new report no longer has.
pub fn write_report(opts: &Options) -> Result<Written, ReportError> {
    if opts.page_size == 0 || opts.max_clusters == 0 || opts.max_members == 0 {
        return Err(ReportError::Options(
            "--page-size, --max-clusters and --max-members must be at least 1".into(),
        ));
    }
    if !(16..=1024).contains(&opts.thumb_size) {
        return Err(ReportError::Options(format!(
            "--thumb-size {}: expected 16 to 1024 pixels",
            opts.thumb_size
        )));
    }
    if let Some(bad) = opts.sweep.iter().find(|s| !(-1.0..=1.0).contains(*s)) {
        return Err(ReportError::Options(format!(
            "eps-sweep threshold {bad}: a cosine is within [-1, 1]"
        )));
    }
    let started = std::time::Instant::now();
    let run = Run::discover(&opts.dir)?;
    if run.reported().next().is_none() && run.metrics.is_empty() {
        return Err(ReportError::NoStages {
            dir: opts.dir.clone(),
        });
    }
    let out = opts.out_dir();
    check_out(&out)?;
    std::fs::create_dir_all(&out).map_err(|e| ReportError::io(&out, e))?;
    let previous: Listing = std::fs::read(out.join(REPORT_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    tracing::info!(
        "report: {} stages in {} → {}",
        run.reported().count(),
        opts.dir.display(),
        out.display()
    );

    let names = run.page_names();
    let mut used: BTreeSet<String> = names.values().cloned().collect();
    used.extend(["index".to_string(), "style".to_string()]);
    // Metrics files not inside a train stage folder get their own page.
    let train_dirs: Vec<&Path> = run
        .reported()
        .filter(|s| train::is_train(s))
        .map(|s| s.dir.as_path())
        .collect();
    let mut loose = Vec::new();
    for m in &run.metrics {
        if train_dirs.iter().any(|d| m.path.starts_with(d)) {
            continue;
        }
        let mut name = format!("{}-metrics", sanitize(&m.name));
        let mut n = 2;
        while used.contains(&name) {
            name = format!("{}-metrics-{n}", sanitize(&m.name));
            n += 1;
        }
        used.insert(name.clone());
        loose.push((m, name));
    }
    let mut nav = vec![NavItem {
        href: "index.html".into(),
        label: "run".into(),
    }];
    for s in run.reported() {
        nav.push(NavItem {
            href: format!("{}.html", names[&s.dir]),
            label: s.name.clone(),
        });
    }
    for (m, name) in &loose {
        nav.push(NavItem {
            href: format!("{name}.html"),
            label: format!("{} (training)", m.name),
        });
    }
    let now = curate_core::stage::now_unix();
    let mut w = Writer {
        out: out.clone(),
        nav,
        footer: format!(
            "curate {} report of <code>{}</code> · generated {} UTC · reads the stage folders, never writes them",
            curate_core::CURATE_VERSION,
            esc(&opts.dir.display().to_string()),
            utc(now)
        ),
        pages: Vec::new(),
    };
    write_file(&out.join("style.css"), html::STYLE.as_bytes())?;
    let thumbs = thumbs::Thumbs::new(&out, opts.thumb_size);

    let mut dedup_facts = std::collections::HashMap::new();
    for s in run.reported() {
        let name = &names[&s.dir];
        tracing::info!("report: stage {} ({})", s.name, s.schema());
        match s.schema() {
            "images" => stages::images_page(&mut w, &run, s, name)?,
            "dedup_clusters" => {
                let f = dedup::write(&mut w, &run, s, name, &thumbs, opts)?;
                dedup_facts.insert(s.dir.clone(), f);
            }
            "captions" => stages::captions_page(&mut w, &run, s, name)?,
            "scores" => stages::scores_page(&mut w, &run, s, name, &thumbs)?,
            "latents" => stages::latents_page(&mut w, &run, s, name)?,
            _ if train::is_train(s) => {
                let file = format!("{name}.html");
                let mut body = String::new();
                let mine: Vec<_> = run
                    .metrics
                    .iter()
                    .filter(|m| m.path.starts_with(&s.dir))
                    .collect();
                if mine.is_empty() {
                    body.push_str("<p>No training metrics (metrics.jsonl) in this folder yet.</p>");
                }
                for (i, m) in mine.iter().enumerate() {
                    let metrics = train::read_metrics(&m.path)?;
                    body.push_str(&train::body(m, &metrics, &format!("{name}-{i}")));
                }
                w.page(&file, &format!("Training: {}", s.name), &file, &body)?;
            }
            _ => stages::generic_page(&mut w, &run, s, name)?,
        }
    }
    for (m, name) in &loose {
        let file = format!("{name}.html");
        let metrics = train::read_metrics(&m.path)?;
        let body = train::body(m, &metrics, name);
        w.page(&file, &format!("Training: {}", m.name), &file, &body)?;
    }
    let index_body = index_body(&run, &names, &dedup_facts, &loose);
    w.page("index.html", "Run overview", "index.html", &index_body)?;

    // What this report references; remove what an earlier one left.
    let referenced = thumbs.referenced.lock().expect("no panics").clone();
    let mut removed_stale = 0u64;
    for p in &previous.pages {
        if !w.pages.contains(p)
            && is_plain_name(p)
            && p.ends_with(".html")
            && std::fs::remove_file(out.join(p)).is_ok()
        {
            removed_stale += 1;
        }
    }
    let thumbs_root = out.join("thumbs");
    if let Ok(dirs) = std::fs::read_dir(&thumbs_root) {
        for d in dirs.flatten() {
            let dir = d.path();
            let Some(dname) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let fname = f.file_name().to_string_lossy().into_owned();
                let rel = format!("thumbs/{dname}/{fname}");
                if fname.ends_with(".jpg") && !referenced.contains(&rel) {
                    if std::fs::remove_file(f.path()).is_ok() {
                        removed_stale += 1;
                    }
                } else if fname.starts_with('.') && fname.contains(".tmp-") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
            let _ = std::fs::remove_dir(&dir); // only when empty
        }
    }
    let listing = Listing {
        curate_version: curate_core::CURATE_VERSION.into(),
        generated_unix: now,
        source: opts.dir.display().to_string(),
        pages: w.pages.clone(),
        thumbs: referenced.into_iter().collect(),
    };
    write_file(
        &out.join(REPORT_FILE),
        serde_json::to_string_pretty(&listing)
            .expect("plain data")
            .as_bytes(),
    )?;
    let (files, bytes) = folder_size(&out);
    let written = Written {
        index: out.join("index.html"),
        out,
        pages: w.pages,
        thumbs_made: thumbs.made.load(Ordering::Relaxed),
        thumbs_reused: thumbs.reused.load(Ordering::Relaxed),
        thumbs_failed: thumbs.failed.load(Ordering::Relaxed),
        files,
        bytes,
        removed_stale,
    };
    tracing::info!(
        "report: {} pages, thumbnails {} made / {} reused / {} failed, {} files ({}) in {}; {:.1} s",
        written.pages.len(),
        written.thumbs_made,
        written.thumbs_reused,
        written.thumbs_failed,
        written.files,
        html::bytes(written.bytes),
        written.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(written)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn is_plain_name(p: &str) -> bool {
    !p.is_empty() && !p.contains('/') && !p.contains('\\') && !p.starts_with('.')
}

fn folder_size(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}

fn index_body(
    run: &Run,
    names: &std::collections::HashMap<PathBuf, String>,
    dedup: &std::collections::HashMap<PathBuf, dedup::DedupFacts>,
    loose: &[(&train::MetricsFile, String)],
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<p class="note">Work directory <code>{}</code>: {} stage folders, in the order they were created. Numbers count complete shards; a stage still running shows what it has finished.</p>"#,
        esc(&run.dir.display().to_string()),
        run.reported().count()
    );
    let mut rows = Vec::new();
    for s in run.reported() {
        let name = &names[&s.dir];
        let work = s.work_seconds();
        let records = s.records();
        let extra = match dedup.get(&s.dir) {
            Some(f) => format!(
                r#"{} → {} kept, {} clusters, <a href="{}">{} chained</a>"#,
                thousands(f.images_in),
                thousands(f.kept),
                thousands(f.clusters),
                dedup::cluster_page(name, "by-min-cos", 1),
                thousands(f.chained)
            ),
            None => String::new(),
        };
        rows.push(vec![
            format!(r#"<a href="{name}.html">{}</a>"#, esc(&s.name)),
            esc(&s.manifest.stage),
            format!("<code>{}</code>", esc(&s.manifest.schema.name)),
            format!("{}/{}", s.shards.len(), s.manifest.num_shards),
            thousands(records),
            format!(
                "{} ({})",
                thousands(s.failures()),
                html::pct(s.failures(), records)
            ),
            if work > 0.0 {
                format!("{} /s", num(records as f64 / work))
            } else {
                "–".into()
            },
            s.wall_seconds().map(html::duration).unwrap_or("–".into()),
            if s.complete() {
                "complete".into()
            } else {
                r#"<span class="warn">incomplete</span>"#.into()
            },
            extra,
        ]);
    }
    out.push_str(&html::table(
        "stages",
        &[
            "stage folder",
            "stage",
            "table",
            "shards",
            "records",
            "failed",
            "records/s of work",
            "wall time",
            "state",
            "",
        ],
        &rows,
    ));
    for (m, name) in loose {
        let _ = write!(
            out,
            r#"<p>Training metrics: <a href="{name}.html">{}</a> (<code>{}</code>)</p>"#,
            esc(&m.name),
            esc(&m.path.display().to_string())
        );
    }
    let present: BTreeSet<&str> = run.reported().map(|s| s.manifest.stage.as_str()).collect();
    let has_train = !run.metrics.is_empty() || present.contains("train");
    let missing: Vec<&str> = [
        "embed",
        "dedup",
        "caption",
        "score",
        "encode-latents",
        "train",
    ]
    .into_iter()
    .filter(|s| !(present.contains(s) || (*s == "train" && has_train)))
    .collect();
    if !missing.is_empty() {
        let _ = write!(
            out,
            r#"<p class="note">Not in this run (yet): {}. Their pages appear when their folders do; rerun <code>curate report</code> any time.</p>"#,
            missing.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_unix_times() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13");
    }

    #[test]
    fn out_folder_must_not_be_a_stage_or_someone_elses() {
        let tmp = tempfile::tempdir().unwrap();
        let stage = tmp.path().join("s");
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(stage.join("manifest.json"), "{}").unwrap();
        assert!(matches!(
            check_out(&stage.join("report")),
            Err(ReportError::OutInsideStage { .. })
        ));
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        assert!(check_out(&other).is_ok(), "empty is fine");
        std::fs::write(other.join("notes.txt"), "mine").unwrap();
        assert!(matches!(
            check_out(&other),
            Err(ReportError::OutNotReport { .. })
        ));
        std::fs::write(other.join(REPORT_FILE), "{}").unwrap();
        assert!(check_out(&other).is_ok());
    }
}
