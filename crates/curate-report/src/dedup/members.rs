//! The members of the clusters the pages show, joined with their images'
//! source facts (one polars query).

use std::collections::{BTreeSet, HashMap};

use polars::prelude::*;

use crate::error::ReportError;
use crate::run::Run;
use crate::stage::Stage;
use crate::stats::{self, collect, f64s, i64s, strs};

/// A member as a cluster page shows it.
#[derive(Debug, Clone)]
pub struct Member {
    pub key: String,
    pub cluster_id: i64,
    pub round: Option<i64>,
    pub role: Option<String>,
    pub merged_into: Option<String>,
    pub representative: Option<String>,
    pub cos: Option<f64>,
    pub kept: bool,
    pub source: Option<String>,
    pub url: Option<String>,
    pub page_url: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub format: Option<String>,
}

/// The members of the `shown` clusters, with their images' source facts.
pub fn read_members(
    run: &Run,
    stage: &Stage,
    shown: &BTreeSet<i64>,
    what: &str,
) -> Result<HashMap<i64, Vec<Member>>, ReportError> {
    let mut out: HashMap<i64, Vec<Member>> = HashMap::new();
    if shown.is_empty() {
        return Ok(out);
    }
    let ids = DataFrame::new(
        shown.len(),
        vec![Column::new(
            "cluster_id".into(),
            shown.iter().copied().collect::<Vec<i64>>(),
        )],
    )
    .map_err(|e| ReportError::polars(what, e))?;
    let mut lf = stats::scan(stage)?
        .select([
            col("key"),
            col("cluster_id"),
            col("round"),
            col("role"),
            col("merged_into"),
            col("representative"),
            col("cosine_to_representative"),
            col("kept"),
        ])
        .join(
            ids.lazy(),
            [col("cluster_id")],
            [col("cluster_id")],
            JoinArgs::new(JoinType::Semi),
        );
    let image_cols = ["source", "url", "page_url", "width", "height", "format"];
    let images = run.images_of(stage).filter(|i| !i.files.is_empty());
    if let Some(images) = images {
        let mut sel = vec![col("key")];
        sel.extend(image_cols.iter().map(|c| col(*c)));
        lf = lf.join(
            stats::scan(images)?.select(sel),
            [col("key")],
            [col("key")],
            JoinArgs::new(JoinType::Left),
        );
    }
    let df = collect(lf, what)?;
    let opt_strs = |c: &str| -> Result<Vec<Option<String>>, ReportError> {
        if images.is_some() {
            strs(&df, c)
        } else {
            Ok(vec![None; df.height()])
        }
    };
    let opt_ints = |c: &str| -> Result<Vec<Option<i64>>, ReportError> {
        if images.is_some() {
            i64s(&df, c)
        } else {
            Ok(vec![None; df.height()])
        }
    };
    let key = strs(&df, "key")?;
    let cid = i64s(&df, "cluster_id")?;
    let round = i64s(&df, "round")?;
    let role = strs(&df, "role")?;
    let merged = strs(&df, "merged_into")?;
    let rep = strs(&df, "representative")?;
    let cos = f64s(&df, "cosine_to_representative")?;
    let kept = stats::bools(&df, "kept")?;
    let source = opt_strs("source")?;
    let url = opt_strs("url")?;
    let page_url = opt_strs("page_url")?;
    let width = opt_ints("width")?;
    let height = opt_ints("height")?;
    let format = opt_strs("format")?;
    for i in 0..df.height() {
        let Some(cluster_id) = cid[i] else { continue };
        out.entry(cluster_id).or_default().push(Member {
            key: key[i].clone().unwrap_or_default(),
            cluster_id,
            round: round[i],
            role: role[i].clone(),
            merged_into: merged[i].clone(),
            representative: rep[i].clone(),
            cos: cos[i],
            kept: kept[i].unwrap_or(false),
            source: source[i].clone(),
            url: url[i].clone(),
            page_url: page_url[i].clone(),
            width: width[i],
            height: height[i],
            format: format[i].clone(),
        });
    }
    for ms in out.values_mut() {
        ms.sort_by(|a, b| {
            b.kept
                .cmp(&a.kept)
                .then(b.cos.unwrap_or(0.0).total_cmp(&a.cos.unwrap_or(0.0)))
                .then(a.key.cmp(&b.key))
        });
    }
    Ok(out)
}
