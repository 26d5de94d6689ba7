//! The training set of `encode-latents` (polars, every scan through
//! [`curate_io::scan`]): the images in the dedup keep list and not dropped
//! by the aesthetic score, joined with their captions and quality tags.
//! The training text is `caption, tag`; when an image has captions of
//! several tasks, one is picked per key with the caption-mix weights.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use curate_core::schema::TableSchema;
use curate_io::{captions, dedup_keep, scan, scores};
use curate_stage::{bail, Context, Result, StageError, Upstream};
use curate_vision::buckets::{crop_rng, Resolution};
use polars::prelude::*;

const CAPTION_TASKS: [&str; 3] = ["caption", "detailed", "more-detailed"];

/// What the selection reads.
#[derive(Debug, Clone)]
pub struct SelectSettings {
    /// A dedup stage folder: only the images in its keep list.
    pub keep: Option<PathBuf>,
    /// A score stage: only images scored and not dropped; score and tag are joined.
    pub scores: Option<PathBuf>,
    /// Caption stages whose captions are joined.
    pub captions: Vec<PathBuf>,
    /// `caption=1,detailed=2,…`: weights of the caption tasks.
    pub caption_mix: String,
    /// Leave the quality tag out of the training text.
    pub no_tag: bool,
    /// Only images that have a caption.
    pub require_caption: bool,
    /// Seed of the caption choices.
    pub seed: u64,
}

/// What the selection joined to an image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Joined {
    pub caption: Option<String>,
    pub caption_task: Option<String>,
    pub score: Option<f32>,
    pub tag: Option<String>,
}

/// The training set: which keys, and what each one trains on.
pub struct Selection {
    /// `None`: every image of the input (no keep list, scores or required captions).
    pub keys: Option<HashSet<String>>,
    pub joined: HashMap<String, Joined>,
    pub summary: String,
}

/// A polars error as the stage's.
fn pl<T>(r: PolarsResult<T>) -> Result<T> {
    r.map_err(StageError::other)
}

fn collect(lf: LazyFrame, what: &str) -> Result<DataFrame> {
    Ok(scan::collect(lf, what)?)
}

/// `caption=1,detailed=2` → weights per task.
pub fn parse_mix(s: &str) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (task, w) = part
            .split_once('=')
            .with_context(|| format!("--caption-mix `{part}`: expected TASK=WEIGHT"))?;
        let task = task.trim();
        if !CAPTION_TASKS.contains(&task) {
            bail!("--caption-mix: unknown task `{task}` (expected one of {CAPTION_TASKS:?})");
        }
        let w: f64 = w
            .trim()
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .with_context(|| format!("--caption-mix `{part}`: the weight must be a number ≥ 0"))?;
        out.insert(task.to_string(), w);
    }
    if out.values().all(|w| *w == 0.0) {
        bail!("--caption-mix `{s}`: at least one task needs a weight > 0");
    }
    Ok(out)
}

/// A lazy scan of every complete shard of a stage writing `table`.
fn scan_stage(dir: &Path, table: &'static TableSchema) -> Result<LazyFrame> {
    let up = Upstream::open(dir, &[table.name.as_str()])?;
    Ok(scan::scan(table, &up.files())?)
}

/// The keep list of a finished dedup stage.
fn scan_keep(dir: &Path) -> Result<LazyFrame> {
    let path = dir.join(dedup_keep::FILE);
    if !path.is_file() {
        bail!(
            "expected {} (a finished dedup stage's keep list)",
            path.display()
        );
    }
    Ok(scan::scan(dedup_keep::table(), &[path])?)
}

/// Picks one caption of `key` by the mix weights (seeded by key).
pub fn pick_caption<'a, S: AsRef<str> + Ord>(
    options: &'a [(S, S)],
    mix: &BTreeMap<String, f64>,
    key: &str,
    seed: u64,
) -> Option<&'a (S, S)> {
    let weighted: Vec<(&(S, S), f64)> = options
        .iter()
        .map(|o| (o, mix.get(o.0.as_ref()).copied().unwrap_or(0.0)))
        .filter(|(_, w)| *w > 0.0)
        .collect();
    let total: f64 = weighted.iter().map(|(_, w)| w).sum();
    if weighted.is_empty() {
        return None;
    }
    let mut rng = crop_rng(seed ^ 0x6361_7074_696f_6e00, Resolution::S256, key);
    let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (o, w) in &weighted {
        if u < *w {
            return Some(o);
        }
        u -= w;
    }
    weighted.last().map(|(o, _)| *o)
}

/// Joins keep list, scores and captions with polars.
pub fn select(settings: &SelectSettings) -> Result<Selection> {
    let mix = parse_mix(&settings.caption_mix)?;
    let mut lines = Vec::new();
    // The key filter: keep ∩ (scored ok and not dropped).
    let mut filter: Option<LazyFrame> = None;
    if let Some(dir) = &settings.keep {
        let keep = scan_keep(dir)
            .with_context(|| format!("--keep {}", dir.display()))?
            .select([col("key")]);
        let counted = collect(keep.clone().select([len()]), "counting the keep list")?;
        let n = pl(counted
            .column("len")
            .and_then(|c| c.u32().map(|c| c.get(0))))?;
        lines.push(format!("{} in the keep list", n.unwrap_or(0)));
        filter = Some(keep);
    }
    let mut score_frame: Option<LazyFrame> = None;
    if let Some(dir) = &settings.scores {
        let scores = scan_stage(dir, scores::table())
            .with_context(|| format!("--scores {}", dir.display()))?
            .select([
                col("key"),
                col("status"),
                col("score"),
                col("tag"),
                col("dropped"),
            ]);
        let counts = collect(
            scores.clone().select([
                col("status").eq(lit("ok")).sum().alias("ok"),
                col("dropped").fill_null(lit(false)).sum().alias("dropped"),
            ]),
            "counting the scores",
        )?;
        let get = |c: &str| -> Result<u64> {
            pl(counts
                .column(c)
                .and_then(|c| c.cast(&polars::prelude::DataType::UInt64))
                .and_then(|c| Ok(c.u64()?.get(0).unwrap_or(0))))
        };
        lines.push(format!(
            "{} scored, {} dropped by score",
            get("ok")?,
            get("dropped")?
        ));
        let ok = scores
            .filter(
                col("status")
                    .eq(lit("ok"))
                    .and(col("dropped").eq(lit(false))),
            )
            .select([col("key"), col("score"), col("tag")]);
        filter = Some(match filter {
            Some(f) => f.join(
                ok.clone(),
                [col("key")],
                [col("key")],
                JoinArgs::new(JoinType::Inner),
            ),
            None => ok.clone(),
        });
        score_frame = Some(ok);
    }
    let mut caption_frame: Option<LazyFrame> = None;
    for dir in &settings.captions {
        let c = scan_stage(dir, captions::table())
            .with_context(|| format!("--captions {}", dir.display()))?
            .filter(col("status").eq(lit("ok")))
            .select([col("key"), col("task"), col("caption")]);
        caption_frame = Some(match caption_frame {
            Some(prev) => pl(concat([prev, c], UnionArgs::default()))?,
            None => c,
        });
    }
    // Captions of the selected keys (all captions when there is no filter).
    let caption_rows = match (&caption_frame, &filter) {
        (Some(c), Some(f)) => Some(collect(
            c.clone().join(
                f.clone().select([col("key")]),
                [col("key")],
                [col("key")],
                JoinArgs::new(JoinType::Semi),
            ),
            "the captions of the selected images",
        )?),
        (Some(c), None) => Some(collect(c.clone(), "the captions")?),
        _ => None,
    };
    // Borrowed from the frame: owned copies of every caption of every
    // selected image doubled the selection's memory.
    let mut options: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    if let Some(df) = &caption_rows {
        let column = |n: &str| pl(df.column(n).and_then(|c| c.str()));
        let (k, t, c) = (column("key")?, column("task")?, column("caption")?);
        for i in 0..df.height() {
            if let (Some(k), Some(t), Some(c)) = (k.get(i), t.get(i), c.get(i)) {
                options.entry(k).or_default().push((t, c));
            }
        }
        for v in options.values_mut() {
            v.sort();
            v.dedup();
        }
    }
    let mut joined: HashMap<String, Joined> = HashMap::new();
    let mut keys: Option<HashSet<String>> = None;
    if let Some(f) = filter {
        let df = collect(f, "the selected images")?;
        let k = pl(df.column("key").and_then(|c| c.str()))?;
        let mut set = HashSet::with_capacity(df.height());
        let (score, tag) = if score_frame.is_some() {
            (
                Some(pl(df.column("score").and_then(|c| c.f32()))?.clone()),
                Some(pl(df.column("tag").and_then(|c| c.str()))?.clone()),
            )
        } else {
            (None, None)
        };
        for i in 0..df.height() {
            let Some(key) = k.get(i) else { continue };
            set.insert(key.to_string());
            joined.insert(
                key.to_string(),
                Joined {
                    score: score.as_ref().and_then(|s| s.get(i)),
                    tag: tag.as_ref().and_then(|t| t.get(i)).map(str::to_string),
                    ..Default::default()
                },
            );
        }
        keys = Some(set);
    }
    let mut with_caption = 0usize;
    for (key, opts) in &options {
        if let Some((task, text)) = pick_caption(opts, &mix, key, settings.seed) {
            let j = joined.entry(key.to_string()).or_default();
            j.caption = Some(text.to_string());
            j.caption_task = Some(task.to_string());
            with_caption += 1;
        }
    }
    for j in joined.values_mut() {
        if let (Some(c), Some(t), false) = (&j.caption, &j.tag, settings.no_tag) {
            j.caption = Some(format!("{c}, {t}"));
        }
    }
    if !settings.captions.is_empty() {
        lines.push(format!("{with_caption} with a caption"));
        if settings.require_caption {
            let set: HashSet<String> = match keys {
                Some(k) => k
                    .into_iter()
                    .filter(|k| options.contains_key(k.as_str()))
                    .collect(),
                None => options.keys().map(|k| k.to_string()).collect(),
            };
            keys = Some(set);
        }
    }
    if let Some(k) = &keys {
        lines.push(format!("{} selected", k.len()));
    }
    Ok(Selection {
        keys,
        joined,
        summary: lines.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_mix_parses_and_names_bad_parts() {
        let mix = parse_mix("caption=1, detailed=2").unwrap();
        assert_eq!(mix["detailed"], 2.0);
        let bad = |s: &str| parse_mix(s).unwrap_err().to_string();
        assert!(bad("caption").contains("expected TASK=WEIGHT"));
        assert!(bad("short=1").contains("unknown task `short`"));
        assert!(bad("caption=-1").contains("≥ 0"));
        assert!(bad("caption=0").contains("at least one task"));
    }

    #[test]
    fn caption_pick_is_a_function_of_key_and_seed() {
        let options = vec![
            ("caption".to_string(), "a".to_string()),
            ("detailed".to_string(), "b".to_string()),
        ];
        let mix = parse_mix("caption=1,detailed=1").unwrap();
        let only = parse_mix("caption=0,detailed=1").unwrap();
        for key in ["k1", "k2", "k3"] {
            assert_eq!(
                pick_caption(&options, &mix, key, 3),
                pick_caption(&options, &mix, key, 3)
            );
            assert_eq!(pick_caption(&options, &only, key, 3).unwrap().1, "b");
        }
    }
}
