//! caption: outcomes and lengths per task, examples.

use polars::prelude::*;

use super::common::{config_table, header, no_shards_page, outcomes, size_range, throughput, what};
use crate::error::ReportError;
use crate::html::{self, esc, pct, thousands};
use crate::run::Run;
use crate::stage::Stage;
use crate::stats::{self, collect, i64s, strs};
use crate::svg;
use crate::writer::Writer;

/// caption: lengths per task.
pub fn captions_page(
    w: &mut Writer,
    run: &Run,
    stage: &Stage,
    name: &str,
) -> Result<(), ReportError> {
    let file = format!("{name}.html");
    if let Some(done) = no_shards_page(w, run, stage, &file, "Captions") {
        return done;
    }
    let mut body = header(stage, run);
    let lf = || stats::scan(stage);
    body.push_str(&outcomes(
        stage,
        lf()?.select([col("task"), col("status"), col("reason"), col("error")]),
        Some("task"),
        &format!("{name}-outcomes"),
    )?);
    let tasks: Vec<String> =
        stats::value_counts(lf()?.select([col("task")]), "task", &what(stage, "tasks"))?
            .into_iter()
            .filter_map(|(t, _)| t)
            .collect();
    let order = ["caption", "detailed", "more-detailed"];
    let mut tasks = tasks;
    tasks.sort_by_key(|t| {
        (
            order.iter().position(|o| o == t).unwrap_or(order.len()),
            t.clone(),
        )
    });
    body.push_str("<h2>Caption lengths per task</h2>");
    let ok = |task: &str| -> Result<LazyFrame, ReportError> {
        Ok(lf()?.filter(
            col("status")
                .eq(lit("ok"))
                .and(col("task").eq(lit(task.to_string()))),
        ))
    };
    let mut rows = Vec::new();
    let mut figs = String::new();
    for (i, task) in tasks.iter().enumerate() {
        let tok = stats::summary(
            ok(task)?.select([col("num_tokens")]),
            "num_tokens",
            &what(stage, "tokens"),
        )?;
        let chars_lf = || -> Result<LazyFrame, ReportError> {
            Ok(ok(task)?.select([col("caption").str().len_chars().alias("chars")]))
        };
        let ch = stats::summary(chars_lf()?, "chars", &what(stage, "characters"))?;
        let tr = collect(
            ok(task)?.select([col("truncated").cast(DataType::Int64).sum().alias("t")]),
            &what(stage, "truncated"),
        )?;
        let truncated = i64s(&tr, "t")?[0].unwrap_or(0) as u64;
        rows.push(vec![
            esc(task),
            thousands(tok.count),
            html::opt(tok.mean),
            html::opt(tok.median),
            html::opt(tok.p95),
            html::opt(tok.max),
            html::opt(ch.mean),
            format!("{} ({})", thousands(truncated), pct(truncated, tok.count)),
        ]);
        let max = tok.max.unwrap_or(1.0).max(1.0);
        let (hi, bins) = if max <= 60.0 {
            (max.ceil() + 1.0, (max.ceil() + 1.0) as usize)
        } else {
            size_range(max)
        };
        let h = stats::histogram(
            ok(task)?.select([col("num_tokens")]),
            "num_tokens",
            0.0,
            hi,
            bins,
            &what(stage, "token histogram"),
        )?;
        figs.push_str(&html::figure(
            &svg::histogram(
                &format!("{name}-len-{i}"),
                &format!("Caption length: {task}"),
                "generated tokens",
                "captions",
                &h,
                &[],
            ),
            &format!(
                "Task “{}”: {} captions, median {} tokens / {} characters.",
                esc(task),
                thousands(tok.count),
                html::opt(tok.median),
                html::opt(ch.median)
            ),
            &html::hist_table(&h, "count"),
        ));
    }
    body.push_str(&html::table(
        "lengths",
        &[
            "task",
            "captions",
            "mean tokens",
            "median",
            "p95",
            "max",
            "mean characters",
            "cut at --max-new-tokens",
        ],
        &rows,
    ));
    body.push_str(&figs);
    // A few examples per task.
    body.push_str("<h2>Examples</h2>");
    let mut ex_rows = Vec::new();
    for task in &tasks {
        let df = collect(
            ok(task)?.select([col("key"), col("caption")]).limit(3),
            &what(stage, "examples"),
        )?;
        for (k, c) in strs(&df, "key")?.into_iter().zip(strs(&df, "caption")?) {
            ex_rows.push(vec![
                esc(task),
                format!("<code>{}</code>", esc(k.as_deref().unwrap_or(""))),
                esc(c.as_deref().unwrap_or("")),
            ]);
        }
    }
    body.push_str(&html::table(
        "examples",
        &["task", "key", "caption"],
        &ex_rows,
    ));
    body.push_str(&throughput(stage, &format!("{name}-tput")));
    body.push_str(&config_table(stage));
    w.page(&file, &format!("Captions: {}", stage.name), &file, &body)
}
