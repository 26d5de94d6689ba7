//! Any other stage with per-record outcomes (embed).

use polars::prelude::*;

use super::common::{config_table, has, header, outcomes, throughput, what};
use crate::error::ReportError;
use crate::html::{self, esc, thousands};
use crate::run::Run;
use crate::stage::Stage;
use crate::stats;
use crate::writer::Writer;

/// Any other stage with per-record outcomes (embed, unknown tables).
pub fn generic_page(
    w: &mut Writer,
    run: &Run,
    stage: &Stage,
    name: &str,
) -> Result<(), ReportError> {
    let file = format!("{name}.html");
    let mut body = header(stage, run);
    let cols = stats::columns(stage)?;
    if has(&cols, "status") && has(&cols, "reason") && has(&cols, "error") {
        body.push_str(&outcomes(
            stage,
            stats::scan(stage)?.select([col("status"), col("reason"), col("error")]),
            None,
            &format!("{name}-outcomes"),
        )?);
    }
    if has(&cols, "model") {
        let models = stats::value_counts(
            stats::scan(stage)?.select([col("model")]),
            "model",
            &what(stage, "models"),
        )?;
        body.push_str(&html::table(
            "models",
            &["model", "records"],
            &models
                .iter()
                .map(|(m, n)| vec![esc(m.as_deref().unwrap_or("–")), thousands(*n)])
                .collect::<Vec<_>>(),
        ));
    }
    body.push_str(&throughput(stage, &format!("{name}-tput")));
    body.push_str(&config_table(stage));
    w.page(
        &file,
        &format!("{}: {}", stage.manifest.stage, stage.name),
        &file,
        &body,
    )
}
