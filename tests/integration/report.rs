//! `curate report` on the demo run: the pages' content against the
//! tables, and every page loaded in headless Chromium (every thumbnail
//! loaded, charts present, no console messages, no load or script errors).
//!
//! Chromium is Debian's `chromium` (`.ci/run` installs it and sets
//! CURATE_REQUIRE_CHROMIUM); `$CURATE_CHROMIUM` names another binary.
//! Without one the test skips, unless CI or CURATE_REQUIRE_CHROMIUM is set:
//! then it fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type};
use arrow_array::Array;

use crate::common::*;

/// Flags that keep headless Chromium off the network (the sandbox here refuses its connections).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

fn chromium() -> Option<PathBuf> {
    let required = std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var_os("CURATE_REQUIRE_CHROMIUM").is_some();
    let candidates: Vec<PathBuf> = match std::env::var_os("CURATE_CHROMIUM") {
        Some(p) => vec![PathBuf::from(p)],
        None => [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    };
    let found = candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        found.is_some() || !required,
        "CI / CURATE_REQUIRE_CHROMIUM is set but no headless Chromium was found \
         (install Debian's `chromium`, as .ci/run does, or set CURATE_CHROMIUM)"
    );
    if found.is_none() {
        eprintln!("skipped: no chromium (install Debian's `chromium`, or set CURATE_CHROMIUM)");
    }
    found
}

/// A page as Chromium left it: the DOM after `load`, and its console messages.
struct Loaded {
    dom: String,
    console: Vec<String>,
}

/// Loads `page` in headless Chromium with virtual time (the DOM is dumped
/// once the page and its images have loaded and virtual time ran out:
/// deterministic, no sleeping).
fn load(chrome: &Path, page: &Path) -> Loaded {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chrome)
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args([
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chromium failed on {}:\n{stderr}",
        page.display()
    );
    Loaded {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        // Chromium logs every console message (log, warning, error, uncaught
        // exception) as `…:CONSOLE…] "message", source: …`; the pages log nothing.
        console: stderr
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(str::to_string)
            .collect(),
    }
}

/// The value of attribute `name` in the tag starting at `tag` (text up to `>`).
fn attr(tag: &str, name: &str) -> Option<String> {
    let end = tag.find('>').unwrap_or(tag.len());
    let tag = &tag[..end];
    let pat = format!(" {name}=\"");
    let at = tag.find(&pat)? + pat.len();
    Some(tag[at..at + tag[at..].find('"')?].to_string())
}

/// Every tag starting with `start` (e.g. `<figure class="member`), as the text from there on.
fn tags<'a>(html: &'a str, start: &str) -> Vec<&'a str> {
    html.match_indices(start).map(|(i, _)| &html[i..]).collect()
}

/// The dedup clusters table: key → (cluster_id, kept, nearest_key, nearest_cosine).
type ClusterRows = BTreeMap<String, (Option<i64>, bool, Option<String>, Option<f32>)>;

fn clusters_table(dedup: &Path) -> ClusterRows {
    let table = curate_core::schema::get("dedup_clusters").unwrap();
    let mut out = BTreeMap::new();
    for b in curate_io::read_columns(
        &dedup.join("part-00000.parquet"),
        table,
        Some(&["key", "cluster_id", "kept", "nearest_key", "nearest_cosine"]),
    )
    .unwrap()
    {
        let key = b.column_by_name("key").unwrap().as_string::<i32>().clone();
        let cid = b
            .column_by_name("cluster_id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        let kept = b.column_by_name("kept").unwrap().as_boolean().clone();
        let nk = b
            .column_by_name("nearest_key")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let nc = b
            .column_by_name("nearest_cosine")
            .unwrap()
            .as_primitive::<Float32Type>()
            .clone();
        for i in 0..b.num_rows() {
            out.insert(
                key.value(i).to_string(),
                (
                    cid.is_valid(i).then(|| cid.value(i)),
                    kept.value(i),
                    nk.is_valid(i).then(|| nk.value(i).to_string()),
                    nc.is_valid(i).then(|| nc.value(i)),
                ),
            );
        }
    }
    out
}

/// Removals the sweep estimates at `s`, computed here a second way:
/// connected components (depth-first) of the nearest-neighbour links ≥ s.
fn removed_estimate(rows: &ClusterRows, s: f32) -> u64 {
    let mut adj: HashMap<&str, Vec<&str>> = HashMap::new();
    for (k, (_, _, nk, nc)) in rows {
        if let (Some(nk), Some(nc)) = (nk, nc) {
            if *nc >= s {
                adj.entry(k).or_default().push(nk);
                adj.entry(nk).or_default().push(k);
            }
        }
    }
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut components = 0u64;
    for start in adj.keys() {
        if !seen.insert(start) {
            continue;
        }
        components += 1;
        let mut stack = vec![*start];
        while let Some(n) = stack.pop() {
            for m in &adj[n] {
                if seen.insert(m) {
                    stack.push(m);
                }
            }
        }
    }
    adj.len() as u64 - components
}

/// Every file under `dir` except the folder `skip`, with its bytes.
fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p == skip {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn pages_of(report: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(report)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(".html")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn report_of_the_demo_run_loads_in_chromium() {
    let chrome = chromium();
    let work = &demo().work;
    // The report is the only writer while this test looks at the folder.
    let _writing = demo_exclusive();
    let report = work.join("report");
    let _ = std::fs::remove_dir_all(&report);
    let before = snapshot(work, &report);

    let started = std::time::Instant::now();
    let r = run(curate().arg("report").arg(work).arg("--page-size").arg("3"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("curate report: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(
        r.stdout.trim(),
        report.join("index.html").display().to_string()
    );
    assert_eq!(
        snapshot(work, &report),
        before,
        "curate report changed a stage folder"
    );

    // Cluster pages: every member of every cluster, each cluster complete,
    // the kept image marked, in both orders.
    let rows = clusters_table(&work.join("dedup"));
    let mut members: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    let mut kept_of: BTreeMap<i64, String> = BTreeMap::new();
    for (k, (cid, kept, _, _)) in &rows {
        if let Some(c) = cid {
            members.entry(*c).or_default().insert(k.clone());
            if *kept {
                kept_of.insert(*c, k.clone());
            }
        }
    }
    assert!(members.len() >= 2, "the demo has clusters: {members:?}");
    let in_clusters: usize = members.values().map(BTreeSet::len).sum();
    for order in ["by-size", "by-min-cos"] {
        let pages = pages_of(&report, &format!("dedup-{order}-"));
        assert_eq!(pages.len(), members.len().div_ceil(3), "{order}: {pages:?}");
        let mut shown: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        let mut sequence = Vec::new();
        for page in &pages {
            let html = std::fs::read_to_string(page).unwrap();
            for section in html.split("<section class=\"cluster").skip(1) {
                let section = &section[..section.find("</section>").unwrap()];
                let id: i64 = attr(section, "data-cluster-id").unwrap().parse().unwrap();
                let size: usize = attr(section, "data-size").unwrap().parse().unwrap();
                let min: f64 = attr(section, "data-min-cos").unwrap().parse().unwrap();
                sequence.push((size, min));
                let figs = tags(section, "<figure class=\"member");
                assert_eq!(size, figs.len(), "cluster {id} shows all its members");
                let kept: Vec<String> = figs
                    .iter()
                    .filter(|f| f.starts_with("<figure class=\"member kept"))
                    .map(|f| attr(f, "data-key").unwrap())
                    .collect();
                assert_eq!(
                    kept,
                    vec![kept_of[&id].clone()],
                    "cluster {id}: the kept one"
                );
                for f in figs {
                    assert!(shown
                        .entry(id)
                        .or_default()
                        .insert(attr(f, "data-key").unwrap()));
                }
            }
        }
        assert_eq!(
            shown, members,
            "{order}: members shown = the clusters table"
        );
        assert_eq!(
            shown.values().map(BTreeSet::len).sum::<usize>(),
            in_clusters
        );
        let sorted = match order {
            "by-size" => sequence.windows(2).all(|w| w[0].0 >= w[1].0),
            _ => sequence.windows(2).all(|w| w[0].1 <= w[1].1),
        };
        assert!(sorted, "{order}: {sequence:?}");
    }

    // The eps sweep equals counts made here from the parquet.
    let overview = std::fs::read_to_string(report.join("dedup.html")).unwrap();
    let sweep = tags(&overview, "<tr");
    let sweep: Vec<&str> = sweep
        .into_iter()
        .filter(|t| attr(t, "data-threshold").is_some())
        .collect();
    assert!(sweep.len() >= 8, "{overview}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("dedup/summary.json")).unwrap())
            .unwrap();
    let eps = summary["settings"]["eps"].as_f64().unwrap() as f32;
    let mut saw_eps = false;
    for row in sweep {
        let s: f32 = attr(row, "data-threshold").unwrap().parse().unwrap();
        let with: u64 = attr(row, "data-with-neighbour").unwrap().parse().unwrap();
        let removed: u64 = attr(row, "data-removed").unwrap().parse().unwrap();
        let expected = rows
            .values()
            .filter(|r| r.3.is_some_and(|c| c >= s))
            .count() as u64;
        assert_eq!(with, expected, "images with a neighbour ≥ {s}");
        assert_eq!(
            removed,
            removed_estimate(&rows, s),
            "removal estimate at {s}"
        );
        if s == eps {
            saw_eps = true;
            let actual = summary["removed"].as_u64().unwrap();
            assert!(removed <= actual && removed > 0, "{removed} vs {actual}");
        }
    }
    assert!(saw_eps, "the run's eps is a row of the sweep");

    // Thumbnails: small JPEGs, one per member, made once.
    let thumbs: Vec<PathBuf> = walk_files(&report.join("thumbs"));
    assert!(thumbs.len() >= in_clusters, "{} thumbnails", thumbs.len());
    for t in &thumbs {
        let b = std::fs::read(t).unwrap();
        assert!(
            b.starts_with(&[0xFF, 0xD8]) && b.len() < 30_000,
            "{}: {} bytes",
            t.display(),
            b.len()
        );
    }
    let total: u64 = walk_files(&report)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    eprintln!(
        "report: {} files, {total} bytes, {} thumbnails",
        walk_files(&report).len(),
        thumbs.len()
    );
    assert!(total < 3_000_000, "{total} bytes");
    // Offline: images are the report's own files, no external scripts, styles or inlined blobs.
    for page in pages_of(&report, "") {
        let html = std::fs::read_to_string(&page).unwrap();
        for img in tags(&html, "<img ") {
            let src = attr(img, "src").unwrap();
            assert!(
                src.starts_with("thumbs/") && report.join(&src).is_file(),
                "{src}"
            );
        }
        for link in tags(&html, "<link ") {
            assert_eq!(attr(link, "href").as_deref(), Some("style.css"));
        }
        assert!(
            !html.contains("<script src") && !html.contains("@import") && !html.contains("base64,")
        );
    }

    // Rerun: nothing remade, nothing changed outside the report.
    let mtimes: Vec<_> = thumbs
        .iter()
        .map(|t| std::fs::metadata(t).unwrap().modified().unwrap())
        .collect();
    let again = run(curate().arg("report").arg(work).arg("--page-size").arg("3"));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("thumbnails 0 made"),
        "{}",
        again.stderr
    );
    assert_eq!(
        thumbs
            .iter()
            .map(|t| std::fs::metadata(t).unwrap().modified().unwrap())
            .collect::<Vec<_>>(),
        mtimes
    );
    assert_eq!(snapshot(work, &report), before);
    // Never into a stage folder.
    let bad = run(curate()
        .arg("report")
        .arg(work)
        .arg("--out")
        .arg(work.join("dedup/report")));
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("never writes into a stage's folder"),
        "{}",
        bad.stderr
    );

    let Some(chrome) = chrome else { return };
    // The first cluster page: every thumbnail loaded.
    let first = load(&chrome, &report.join("dedup-by-size-001.html"));
    let imgs = first.dom.matches("<img ").count();
    let members_on_page = first.dom.matches("<figure class=\"member").count();
    assert!(
        imgs > 0 && imgs == members_on_page,
        "{imgs} images, {members_on_page} members"
    );
    let body = tags(&first.dom, "<body")[0];
    assert_eq!(
        attr(body, "data-images-loaded"),
        Some(format!("{imgs}/{imgs}")),
        "every thumbnail on the first cluster page loaded"
    );
    // Every page: loaded, its images loaded, no errors, no console messages;
    // the overview and the stage pages have their charts.
    let charts = |dom: &str| {
        tags(dom, "<svg class=\"chart\"")
            .iter()
            .filter(|s| s.contains("<title id="))
            .count()
    };
    for page in pages_of(&report, "") {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        let l = load(&chrome, &page);
        assert!(l.console.is_empty(), "{name}: console: {:?}", l.console);
        let html = tags(&l.dom, "<html")[0];
        assert_eq!(
            attr(html, "data-errors"),
            None,
            "{name}: load or script errors"
        );
        let body = tags(&l.dom, "<body")[0];
        let n = l.dom.matches("<img ").count();
        assert_eq!(
            attr(body, "data-images-loaded"),
            Some(format!("{n}/{n}")),
            "{name}"
        );
        let want = match name.as_str() {
            "dedup.html" => 5,  // rounds, sizes, cosine, nearest, sweep
            "images.html" => 5, // outcomes, sizes, HTTP status, fetch time, throughput
            "local.html" | "caption.html" => 3,
            "score.html" => 3, // outcomes, scores with bands, throughput
            n if n.starts_with("latents-") => 3, // outcomes, buckets, throughput
            n if n.ends_with("-metrics.html") => 1, // the loss curve
            _ => 0,
        };
        assert!(charts(&l.dom) >= want, "{name}: {} charts", charts(&l.dom));
    }
    let score = std::fs::read_to_string(report.join("score.html")).unwrap();
    assert!(score.contains("excellent score") && score.contains("class=\"marker\""));
    let latents = std::fs::read_to_string(report.join("latents-256.html")).unwrap();
    assert!(latents.contains("256×256"), "{latents}");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
